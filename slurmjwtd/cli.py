"""`slurmjwt`: the user's and admin's command line.

Tokens go to stdout only; every error is one line on stderr and a distinct
exit status (docs/cli.md):

  0 success                      5 refused: no live login session
  1 unexpected error; doctor     6 daemon error: a code of class FAULT (busy, timeout, internal,
    found a problem                signer unavailable, bad request, ...), garbled answer
  2 usage error; a socket path    7 no token to show, or not a JWT, or it has expired
    too long for a Unix socket   8 keygen or jwks could not write or read the key
  3 daemon unreachable           9 curl ran but failed (its status in the message)
  4 refused by policy: a code of class REFUSAL (protocol.Code) but no-session

Text that comes from the daemon (or from whatever listens on $SLURMJWT_SOCKET) is printed as
printable ASCII only (printable()): a fake daemon cannot send escape sequences to a terminal.

The `slurmjwt` launcher enters through fastcli.main, which runs `token` and `refresh` without
click when their options allow and hands everything else to the group here; what those two
commands do, the exit statuses and Failure live in fastcli.py, for both paths.
"""

from __future__ import annotations

import datetime
import grp
import json
import os
import pwd
import re
import secrets
import signal
import socket
import subprocess
import sys
import time

import click

from . import __version__
from .atomicfile import write_atomic
from .auditread import (DECISIONS, HEADER as AUDIT_HEADER, WHEN_FORMS, AuditReadError,
                        FileReader, Filters, parse_when, read_journal)
from .config import DEFAULT_CONFIG, DEFAULT_ROOT_SOCKET, DEFAULT_SOCKET, Config
# the exit statuses, exit_status and Failure are fastcli.py's, for both paths (re-exported)
from .fastcli import (EXIT_CURL, EXIT_DAEMON, EXIT_ERROR, EXIT_KEYGEN, EXIT_NO_SESSION,  # noqa: F401
                      EXIT_NO_TOKEN, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, LIFETIME_RANGE,
                      SOCKET_VARIABLE, TIMEOUT_DEFAULT, TIMEOUT_RANGE, Failure, exit_status,
                      printable, run_refresh, run_token, site_config, socket_of, token_file,
                      variable_name)
from .fastcli import ask as ask_socket
from .jwks import (KID, MAX_FILE, RESTART, JwksError, parse_input, public_entry, read_set,
                   update)
from .nss import nss
from .protocol import Code, parse_number
from .signer import rs256_kid, unverified_claims
from .slurm_versions import ServerUnknown, api_path, ask_server, newest_api, versionless
from .tokenfile import read_token_file

_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2: help, not an error


class Shown(click.ClickException):
    """A Failure (fastcli.py) as click shows an error: its one line on stderr, its exit status."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.exit_code = failure.status
        self.failure = failure

    def show(self, file: object = None) -> None:
        click.echo(self.failure.line(), err=True)


def usage_failure(exc: click.UsageError) -> Shown:
    """Click's usage error as one line: `slurmjwt: MESSAGE (see slurmjwt [COMMAND] --help)`."""
    where = exc.ctx.command_path if exc.ctx is not None else "slurmjwt"
    return Shown(Failure(EXIT_USAGE, f"{exc.format_message().rstrip('.')} (see {where} --help)"))


class OneLineUsage(click.Group):
    """A group whose usage errors, its own and its commands', are one line with exit status 2,
    as docs/cli.md promises, instead of click's usage, hint and error lines."""

    def make_context(self, *args: object, **kwargs: object) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except _NO_ARGS_IS_HELP:
            raise
        except click.UsageError as exc:
            raise usage_failure(exc) from None

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except _NO_ARGS_IS_HELP:
            raise
        except click.UsageError as exc:
            raise usage_failure(exc) from None
        except Failure as exc:  # raised by the commands and by fastcli.py's pieces they call
            raise Shown(exc) from None


def ask(ctx: click.Context, op: str, args: dict[str, object] | None = None,
        timeout: float = 5.0) -> dict[str, str]:
    """The fields of the daemon's OK answer (fastcli.ask, on the socket the group chose)."""
    return ask_socket(ctx.obj, op, args, timeout)


def expiry(token: str) -> int:
    """TOKEN's exp, -1 if it has none that can be read."""
    try:
        exp = unverified_claims(token).get("exp")
    except ValueError:
        return -1
    return exp if isinstance(exp, int) else -1


def current_token(explicit: str | None = None) -> str:
    """TOKEN, or - for stdin; else the freshest of the variable and the token file (the
    daemon renews the file; a shell's variable may be older, or newer after a refresh)."""
    if explicit == "-":
        explicit = sys.stdin.readline()
    token = (explicit or "").strip()
    if not token:
        found = [t for t in (os.environ.get(variable_name(), "").strip(),
                             read_token_file(token_file())) if t]
        token = max(found, key=expiry, default="")
    if not token:
        raise Failure(EXIT_NO_TOKEN, f"no token: {variable_name()} is not set and there is no "
                                     f"token file (run: eval \"$(slurmjwt refresh)\")")
    return token


@click.group(cls=OneLineUsage, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", envvar=SOCKET_VARIABLE, default=None, metavar="PATH",
              help=f"slurmjwtd's socket [env: SLURMJWT_SOCKET; default: {DEFAULT_SOCKET}, "
                   f"as root {DEFAULT_ROOT_SOCKET}].")
@click.version_option(__version__, prog_name="slurmjwt")
@click.pass_context
def main(ctx: click.Context, socket_path: str | None) -> None:
    """Get and inspect short-lived Slurm JWTs from slurmjwtd.

    The token's variable is $SLURMJWT_VARIABLE, else SLURM_JWT."""
    ctx.obj = socket_of(socket_path)


# token's and refresh's options: fastcli.FAST_OPTIONS is their table, for the fast path too
lifetime_option = click.option("--lifetime", type=click.IntRange(*LIFETIME_RANGE),
                               metavar="SECONDS",
                               help="Token lifetime [default: the daemon's].")


@main.command()
@lifetime_option
@click.option("--user", metavar="USER", help="Mint for USER (root only).")
@click.option("--file", "show_file", is_flag=True,
              help="Print the path of your token file instead (exit 7 if there is none).")
@click.pass_context
def token(ctx: click.Context, lifetime: int | None, user: str | None, show_file: bool) -> None:
    """Print SLURM_JWT=<token>, as `scontrol token` does."""
    run_token(ctx.obj, click.echo, lifetime, user, show_file)


@main.command()
@lifetime_option
@click.option("--csh", is_flag=True, help="Print `setenv NAME <token>` for csh and tcsh.")
@click.option("--timeout", type=click.FloatRange(*TIMEOUT_RANGE), default=TIMEOUT_DEFAULT,
              show_default=True, metavar="SECONDS", help="Give up after this long.")
@click.pass_context
def refresh(ctx: click.Context, lifetime: int | None, csh: bool, timeout: float) -> None:
    """Print `export SLURM_JWT=<token>`, for eval "$(slurmjwt refresh)"."""
    run_refresh(ctx.obj, click.echo, lifetime, csh, timeout)


def describe_span(seconds: int) -> str:
    span = abs(seconds)
    if span >= 3600:
        return f"{span // 3600}h {span % 3600 // 60:02d}m {span % 60:02d}s"
    return f"{span // 60}m {span % 60:02d}s"


def local_time(epoch: object) -> str:
    if not isinstance(epoch, int):
        return "unknown"
    return datetime.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def token_facts(token: str) -> dict[str, object]:
    try:
        claims = unverified_claims(token)
    except ValueError as exc:
        raise Failure(EXIT_NO_TOKEN, str(exc))
    exp = claims.get("exp") if isinstance(claims.get("exp"), int) else None
    left = exp - int(time.time()) if exp is not None else None
    return {"user": claims.get("sun", claims.get("username")), "issued": claims.get("iat"),
            "expires": exp, "left": left, "expired": left is not None and left <= 0,
            "jti": claims.get("jti")}


@main.command()
@click.argument("token_arg", metavar="[TOKEN|-]", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def show(token_arg: str | None, as_json: bool) -> None:
    """Who $SLURM_JWT (or TOKEN, or - for stdin, or the token file) is for, and until when.

    Decoded without the key: nothing here is verified."""
    facts = token_facts(current_token(token_arg))
    if as_json:
        click.echo(json.dumps(facts))
        return
    left = facts["left"]
    click.echo(f"user:    {printable(facts['user'] or 'unknown')}")
    click.echo(f"issued:  {local_time(facts['issued'])}")
    click.echo(f"expires: {local_time(facts['expires'])}")
    if left is None:
        click.echo("left:    unknown")
    elif facts["expired"]:
        click.echo(f"left:    none: expired {describe_span(left)} ago (run: eval \"$(slurmjwt refresh)\")")
    else:
        click.echo(f"left:    {describe_span(left)}")
    if facts["jti"]:
        click.echo(f"jti:     {printable(facts['jti'])}")


def usable_token() -> tuple[str, str]:
    """(user, token) of the current token, refusing an expired one."""
    token = current_token()
    facts = token_facts(token)
    if facts["expired"] or not facts["user"]:
        raise Failure(EXIT_NO_TOKEN, "the current token has expired or names no user "
                                     "(run: eval \"$(slurmjwt refresh)\")")
    return str(facts["user"]), token


@main.command()
def headers() -> None:
    """Print the X-SLURM-USER-NAME and X-SLURM-USER-TOKEN header lines for slurmrestd."""
    user, token = usable_token()
    click.echo(f"X-SLURM-USER-NAME: {user}\nX-SLURM-USER-TOKEN: {token}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED, required=True)
def curl(args: tuple[str, ...]) -> None:
    """curl [CURL ARGS] PATH against slurmrestd, with the headers filled in.

    The URL is $SLURMRESTD_URL, else slurmrestd_url in slurmjwtd.toml, followed by PATH.
    A PATH without an API version (/slurm/jobs) gets the newest one slurmrestd serves
    (its /openapi/v3 says which): /slurm/v0.0.42/jobs with Slurm 24.11, v0.0.38 with 22.05.
    The token reaches curl through a pipe (-H @/dev/fd/N), never its command line.
    Exit 9 if curl fails (curl's own status is in the message)."""
    *options, path = args
    if not path.startswith("/"):
        raise Failure(EXIT_USAGE, f"the last argument must be a path on slurmrestd, like "
                                  f"/slurm/ping or /slurm/v0.0.42/ping (got {path!r})")
    base = os.environ.get("SLURMRESTD_URL") or site_config().slurmrestd_url
    user, token = usable_token()
    if versionless(path):
        path = with_newest_api(path, base, user, token)
    read_end, write_end = os.pipe()
    os.write(write_end, f"X-SLURM-USER-NAME: {user}\nX-SLURM-USER-TOKEN: {token}\n".encode())
    os.close(write_end)
    try:
        # curl's own statuses (7: cannot connect, 22: HTTP error with --fail, ...) would collide
        # with ours, so slurmjwt waits for it and maps any failure to one status of its own
        proc = subprocess.Popen(["curl", "-H", f"@/dev/fd/{read_end}", *options,
                                 base.rstrip("/") + path], pass_fds=(read_end,))
    except OSError as exc:
        raise Failure(EXIT_ERROR, f"cannot run curl: {exc.strerror} (apt-get install curl)")
    finally:
        os.close(read_end)
    # Ctrl-C reaches curl (the same process group); this process only waits for it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    status = proc.wait()
    if status < 0:
        raise Failure(EXIT_CURL, f"curl was killed by signal {-status}")
    if status != 0:
        raise Failure(EXIT_CURL, f"curl failed with its exit status {status} (its own message, "
                                 f"unless -s, is above; see man curl, EXIT CODES)")


def with_newest_api(path: str, base: str, user: str, token: str) -> str:
    """PATH (/slurm/ENDPOINT) in the newest API version slurmrestd at BASE says it serves."""
    try:
        server = ask_server(base, {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token})
    except ServerUnknown as exc:
        raise Failure(EXIT_CURL, f"cannot learn slurmrestd's API versions for {path}: {exc}; "
                                 f"name the version in the path: /slurm/vX.Y.Z{path[len('/slurm'):]}")
    if not server.api:
        raise Failure(EXIT_CURL, f"slurmrestd at {base} serves no API under /slurm/ "
                                 f"({server.describe()}): is it run with -s openapi/slurmctld?")
    return api_path(path, newest_api(server.api))


@main.command()
@click.option("--config", "config_path", default=DEFAULT_CONFIG, metavar="PATH",
              help="slurmjwtd's configuration.")
@click.option("--slurm-conf", default="/etc/slurm/slurm.conf", metavar="PATH", help="slurm.conf to check.")
@click.option("--pam-file", default="/etc/pam.d/sshd", metavar="PATH", help="sshd's PAM stack.")
@click.option("--pam-dir", metavar="DIR", help="The other PAM stacks, which should not run "
              "pam_slurmjwt.so [default: the directory of --pam-file].")
@click.option("--sshd-config", default="/etc/ssh/sshd_config", metavar="PATH",
              help="sshd's configuration.")
@click.option("--json", "as_json", is_flag=True,
              help="The findings as one JSON list of {level, topic, what, why, fix}; "
                   "the exit status is the same.")
@click.pass_context
def doctor(ctx: click.Context, config_path: str, slurm_conf: str, pam_file: str,
           pam_dir: str | None, sshd_config: str, as_json: bool) -> None:
    """Check this login node's setup (for admins); non-zero exit when something is wrong."""
    from .doctor import check_rest, run_checks

    def rest(config: Config | None, here: object) -> list:
        """slurmrestd at $SLURMRESTD_URL or slurmrestd_url, with this login's token if it has one."""
        url = os.environ.get("SLURMRESTD_URL")
        where = "SLURMRESTD_URL" if url else f"slurmrestd_url in {config_path}"
        url = url or (config or Config()).slurmrestd_url
        try:
            user, token = usable_token()
        except Failure:
            me = nss(pwd.getpwuid, os.geteuid())
            user, token = (me.pw_name if me else str(os.geteuid())), None
        return check_rest(url, where, user, token, here)

    sys.exit(run_checks(socket=ctx.obj, config=config_path, slurm_conf=slurm_conf,
                        pam_file=pam_file, sshd_config=sshd_config, pam_dir=pam_dir,
                        rest=rest, as_json=as_json))


@main.command()
@click.argument("user")
@click.option("--lifetime", type=click.IntRange(*LIFETIME_RANGE), metavar="SECONDS",
              help="Ask about this lifetime rather than the default.")
@click.pass_context
def policy(ctx: click.Context, user: str, lifetime: int | None) -> None:
    """Explain what slurmjwtd would decide for USER, and why (root); mints nothing.

    Exit 0 if a token would be granted, 4 if refused."""
    args: dict[str, object] = {"user": user} | ({"lifetime": lifetime} if lifetime else {})
    f = ask(ctx, "EXPLAIN", args)
    granted = f.get("decision") == "granted"
    click.echo(printable(f"{user}: {'granted' if granted else 'refused'} ({f.get('reason')}, "
                         f"rule {f.get('rule')})"))
    if not granted:
        click.echo(printable(f"  {f.get('code')}: {f.get('message')}"))
    for label, key in (("slurm user", "slurm_user"), ("uid", "uid"), ("groups", "groups"),
                       ("lifetime", "lifetime"), ("max lifetime", "max_lifetime"),
                       ("sessions", "sessions"), ("rate left", "rate_left")):
        if key in f:
            click.echo(f"  {label + ':':<14}{printable(f[key])}")
    if f.get("revoked") == "yes":
        since = local_time(parse_number(f.get("revoked_since", "")))
        node = f.get("revoked_node", "-")
        click.echo(printable(f"  {'revoked:':<14}since {since} by uid {f.get('revoked_by')}"
                             f"{'' if node == '-' else ' on ' + node}: {f.get('revoked_reason')}"))
    if not granted:
        sys.exit(EXIT_REFUSED)


_COUNT = re.compile(r"[0-9]{1,18}\Z")
_SECONDS = re.compile(r"[0-9]{1,18}(\.[0-9]{1,9})?\Z")


def json_value(value: str) -> object:
    """An answer's field for JSON: a count as a number, anything else as text."""
    return int(value) if _COUNT.match(value) else value


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: the STATUS answer's fields (counts as numbers) and the socket.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Say whether slurmjwtd answers, its version and signer."""
    fields = ask(ctx, "STATUS")
    if as_json:
        click.echo(json.dumps({"socket": ctx.obj} | {k: json_value(v) for k, v in fields.items()}))
        return
    click.echo(printable(
        f"slurmjwtd {fields.get('version', '?')} answers on {ctx.obj}: "
        f"signer {fields.get('signer', '?')}, {fields.get('sessions', '?')} open session(s), "
        f"{fields.get('granted', '?')} granted, {fields.get('refused', '?')} refused, "
        f"up {fields.get('uptime', '?')} s; {fields.get('token_files', '?')} token file(s) kept "
        f"fresh, {fields.get('renewed', '?')} renewal(s), {fields.get('revoked', '?')} user(s) "
        f"revoked; fast path {fields.get('fast_path', '?')}"))
    trouble = fields.get("revocation_file", "ok")
    if trouble != "ok":
        click.echo(printable(f"revocation file: {trouble}; the daemon keeps its last good list "
                             f"(see journalctl -u slurmjwtd, slurmjwt doctor)"))


def _pairs(text: str) -> list[tuple[str, str]]:
    """METRICS' KEY:COUNT,... lists as pairs (the key is everything before the last colon)."""
    return [tuple(item.rsplit(":", 1)) for item in text.split(",") if ":" in item]  # type: ignore[misc]


def _label(text: str) -> str:
    """TEXT as a label value needing no escapes: anything but [A-Za-z0-9._:+-] becomes _."""
    return re.sub(r"[^A-Za-z0-9._:+-]", "_", text)


def prometheus_text(fields: dict[str, str] | None) -> str:
    """The METRICS answer's FIELDS in Prometheus' text exposition format (for node_exporter's
    textfile collector); None: the daemon did not answer, and only slurmjwt_up 0 is known."""
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, object]]) -> None:
        out.append(f"# HELP slurmjwt_{name} {help_text}")
        out.append(f"# TYPE slurmjwt_{name} {kind}")
        out.extend(f"slurmjwt_{name}{labels} {value}" for labels, value in samples)

    metric("up", "gauge", "Whether slurmjwtd answered METRICS.", [("", 0 if fields is None else 1)])
    if fields is None:
        return "\n".join(out) + "\n"

    def number(key: str) -> object:
        value = json_value(fields.get(key, ""))
        return value if isinstance(value, int) else "NaN"

    metric("info", "gauge", "slurmjwtd's version and signer.",
           [(f'{{version="{_label(fields.get("version", ""))}",'
             f'signer="{_label(fields.get("signer", ""))}"}}', 1)])
    metric("grants_total", "counter", "Tokens made for requests (MINT and OPEN).",
           [("", number("granted"))])
    refusals = {code: count for code, count in _pairs(fields.get("refusals", ""))}
    codes = sorted({code.value for code in Code} | refusals.keys())
    metric("refusals_total", "counter", "Requests refused (and renewals refused), by protocol code.",
           [(f'{{code="{_label(code)}"}}', json_value(refusals.get(code, "0")))
            for code in codes])
    metric("fast_path_grants_total", "counter",
           "Of grants_total, the tokens the compiled fast path made (users' own MINT).",
           [("", number("fast_path_granted"))])
    metric("fast_path_handovers_total", "counter",
           "Connections the fast path passed on to the Python loop.",
           [("", number("fast_path_passed"))])
    metric("renewals_total", "counter", "Token files renewed.", [("", number("renewed"))])
    metric("signer_failures_total", "counter",
           "Times the signer failed to make a token (for a request or a renewal).",
           [("", number("signer_failures"))])
    metric("sessions", "gauge", "Open login sessions.", [("", number("sessions"))])
    metric("token_files", "gauge", "Token files kept fresh.", [("", number("token_files"))])
    metric("revoked_users", "gauge", "Users revoked by root.", [("", number("revoked"))])
    metric("uptime_seconds", "gauge", "Seconds since slurmjwtd started.", [("", number("uptime"))])
    buckets, total = [], 0
    for bound, count in _pairs(fields.get("latency", "")):
        total += int(count) if _COUNT.match(count) else 0
        buckets.append((f'{{le="{"+Inf" if bound == "inf" else _label(bound)}"}}', total))
    name = "request_duration_seconds"
    metric(name, "histogram", "Time from accepting a request's connection to sending its answer.",
           [])
    out.extend(f"slurmjwt_{name}_bucket{labels} {value}" for labels, value in buckets)
    latency_sum = fields.get("latency_sum", "")
    if not _SECONDS.match(latency_sum):
        latency_sum = "NaN"
    out.append(f"slurmjwt_{name}_sum {latency_sum}")
    out.append(f"slurmjwt_{name}_count {total}")
    return "\n".join(out) + "\n"


@main.command()
@click.option("--output", metavar="FILE", help="Write FILE (mode 0644) instead of stdout, "
              "replacing it whole, e.g. /var/lib/prometheus/node-exporter/slurmjwt.prom.")
@click.pass_context
def metrics(ctx: click.Context, output: str | None) -> None:
    """Print slurmjwtd's counters in Prometheus' text format, for node_exporter's textfile
    collector (no user names, no tokens).

    If the daemon does not answer, prints (or writes) slurmjwt_up 0 and exits 3 (6 for a
    daemon error)."""
    failure = None
    try:
        fields: dict[str, str] | None = ask(ctx, "METRICS")
    except Failure as exc:
        fields, failure = None, exc
    text = prometheus_text(fields)
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            write_atomic(output, text.encode(), mode=0o644)
        except OSError as exc:
            raise Failure(EXIT_ERROR, f"cannot write {output}: {exc.strerror}")
    if failure is not None:
        raise failure


@main.command()
@click.argument("user")
@click.option("--reason", default="", metavar="TEXT", help="Why, for the audit log and "
              "`slurmjwt policy`.")
@click.pass_context
def revoke(ctx: click.Context, user: str, reason: str) -> None:
    """Stop every grant and renewal for USER at once, across restarts (root).

    The user's token file goes and their logins get no token; tokens already out die at their
    exp (at most one lifetime). `slurmjwt unrevoke USER` lifts it."""
    f = ask(ctx, "REVOKE", {"user": user} | ({"reason": reason} if reason else {}))
    click.echo(printable(f"{f.get('user')} (uid {f.get('uid')}) revoked; "
                         f"{f.get('sessions')} live session(s) keep no token"))


@main.command()
@click.argument("user")
@click.pass_context
def unrevoke(ctx: click.Context, user: str) -> None:
    """Lift USER's revocation (root): their next login, and their live sessions' token
    file, get tokens again."""
    f = ask(ctx, "UNREVOKE", {"user": user})
    click.echo(printable(f"{f.get('user')} (uid {f.get('uid')}) "
                         + ("unrevoked" if f.get("was_revoked") == "yes" else "was not revoked")))


class When(click.ParamType):
    """--since and --until: a time as auditread.parse_when takes it."""

    name = "time"

    def convert(self, value: object, param: object, ctx: object) -> object:
        if isinstance(value, datetime.datetime):
            return value
        try:
            return parse_when(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@main.command()
@click.option("--user", "users", multiple=True, metavar="USER",
              help="Decisions about USER, the account asked for (repeat for more).")
@click.option("--jti", "jtis", multiple=True, metavar="JTI", help="The grant of the token with this jti.")
@click.option("--node", "nodes", multiple=True, metavar="NODE",
              help="Decisions of the login node NODE (its short host name).")
@click.option("--decision", "decisions", multiple=True, type=click.Choice(DECISIONS),
              help="granted, refused or summary (a user's repeated refusals, counted).")
@click.option("--op", "ops", multiple=True, metavar="OP",
              help="open (logins), mint, renew, close, revoke, unrevoke.")
@click.option("--since", type=When(), metavar="TIME", help=f"From TIME on: {WHEN_FORMS}.")
@click.option("--until", type=When(), metavar="TIME", help="Up to TIME.")
@click.option("--file", "files", multiple=True, metavar="PATH",
              help="Read this log file (- for stdin; repeat for more) instead of the journal: "
                   "the daemon's stderr, or a central log gathered from many nodes.")
@click.option("--journal-dir", metavar="DIR",
              help="Read the journal files in DIR, e.g. /var/log/journal/remote (journal-remote).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, every field.")
def audit(users: tuple[str, ...], jtis: tuple[str, ...], nodes: tuple[str, ...],
          decisions: tuple[str, ...], ops: tuple[str, ...], since: datetime.datetime | None,
          until: datetime.datetime | None, files: tuple[str, ...], journal_dir: str | None,
          as_json: bool) -> None:
    """Who minted what for whom: slurmjwtd's decisions, from the journal or a log file.

    Without --file or --journal-dir: the file audit_file in slurmjwtd.toml names, else the
    system journal (readable by root, systemd-journal and adm)."""
    if files and journal_dir:
        raise Failure(EXIT_USAGE, "give --file or --journal-dir, not both (see slurmjwt audit --help)")
    filters = Filters({"user": users, "jti": jtis, "node": nodes, "decision": decisions,
                       "op": ops}, since, until)
    if not files and not journal_dir:
        files = tuple(filter(None, [site_config().audit_file]))
    reader = FileReader(filters) if files else None
    entries = reader.read_paths(files) if reader else read_journal(filters, journal_dir)
    shown = False
    try:
        for entry in entries:
            if not as_json and not shown:
                click.echo(AUDIT_HEADER)
            shown = True
            click.echo(entry.as_json() if as_json else printable(entry.as_text()))
    except AuditReadError as exc:
        raise Failure(EXIT_ERROR, str(exc))
    except BrokenPipeError:  # `slurmjwt audit | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    for name, count in (reader.malformed.items() if reader else ()):
        click.echo(f"slurmjwt: {printable(name)}: {count} line(s) with decision= are not audit "
                   f"lines (cut or garbled); skipped", err=True)


def _default_owner() -> str:
    return "slurm" if nss(pwd.getpwnam, "slurm") else "root"


def _default_group() -> str | None:
    return "slurmjwt" if nss(grp.getgrnam, "slurmjwt") else None


@main.command()
@click.argument("path", required=False)
@click.option("--rs256", is_flag=True, help="An RSA-2048 private key for signer = \"rs256\" "
              "[default path: rs256_key_file].")
@click.option("--kid", metavar="NAME", help="With --rs256: the key id to print the JWKS entry for.")
@click.option("--owner", metavar="USER", help="Key owner [default: slurm if it exists, else root; "
              "root for --rs256].")
@click.option("--group", metavar="GROUP",
              help="Group that may read it, mode 0640 [default: slurmjwt if it exists; "
                   "without one the key is 0600].")
@click.option("--force", is_flag=True, help="Replace an existing key.")
def keygen(path: str | None, rs256: bool, kid: str | None, owner: str | None, group: str | None,
           force: bool) -> None:
    """Make a 32-byte HS256 key at PATH, as the site guide does (or, with --rs256, an RSA key)."""
    config = site_config()
    path = path or (config.rs256_key_file if rs256 else config.key_file)
    owner = owner or ("root" if rs256 else _default_owner())
    group = group or _default_group()
    try:
        uid = pwd.getpwnam(owner).pw_uid
        gid = grp.getgrnam(group).gr_gid if group else pwd.getpwnam(owner).pw_gid
    except KeyError as exc:
        raise Failure(EXIT_KEYGEN, f"no such user or group: {exc.args[0].split(':')[-1].strip()}")
    mode = 0o640 if group else 0o600
    key = rsa_private_pem() if rs256 else secrets.token_bytes(32)
    try:
        write_key(path, key, uid, gid, mode, force)
    except FileExistsError:
        raise Failure(EXIT_KEYGEN, f"{path} exists; keep it, or replace it with --force "
                                   f"(every token signed with it stops working)")
    except OSError as exc:
        raise Failure(EXIT_KEYGEN, f"cannot write {path}: {exc.strerror}")
    what = "an RSA-2048 key" if rs256 else "a 32-byte key"
    click.echo(f"wrote {what} to {path} ({owner}:{grp.getgrgid(gid).gr_name} {mode:04o})")
    if rs256:
        kid = kid or socket.gethostname()
        click.echo(f"add its public key to slurmctld's JWKS: slurmjwt jwks {path} --kid {kid} "
                   f"> {kid}.jwks.json, then on the controller: slurmjwt jwks --add "
                   f"{kid}.jwks.json (docs/fleet.md)")
    else:
        click.echo("restart slurmctld and slurmrestd to use it")


def rsa_private_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@main.command()
@click.argument("path", required=False)
@click.option("--kid", metavar="NAME", help="The key id [default: rs256_kid, else this host's "
              "name]; with --add, the kid of a PEM public key.")
@click.option("--file", "jwks_file", metavar="JWKS", help="slurmctld's JWKS file to change or "
              "list [default: jwks= in slurm.conf's AuthAltParameters ($SLURM_CONF, else "
              "/etc/slurm/slurm.conf)].")
@click.option("--add", "adds", multiple=True, metavar="FILE|-", help="Add a node's key to "
              "the JWKS file: what `slurmjwt jwks` prints on the node, or a PEM public key "
              "with --kid; - reads stdin. Repeatable.")
@click.option("--remove", "removes", multiple=True, metavar="KID", help="Remove KID from the "
              "JWKS file: that node's tokens are refused once slurmctld restarts. Repeatable.")
@click.option("--list", "listing", is_flag=True, help="Check the JWKS file and list its kids "
              "(implied by --file alone).")
def jwks(path: str | None, kid: str | None, jwks_file: str | None, adds: tuple[str, ...],
         removes: tuple[str, ...], listing: bool) -> None:
    """Print the JWKS with the public half of the rs256 key at PATH; or, with --add, --remove,
    --list or --file, check and change slurmctld's JWKS file (one kid per node).

    Changes are checked whole, under a lock, and written atomically; a refused change leaves
    the file as it was (exit 8). Then restart slurmctld, which reads the file only at start."""
    if adds or removes or listing or jwks_file:
        if path is not None:
            raise Failure(EXIT_USAGE, f"PATH ({path}) is a node's private key, for printing its "
                                      f"JWKS; name slurmctld's JWKS file with --file")
        edit_jwks(jwks_file, adds, removes, kid)
        return
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    config = site_config()
    path = path or config.rs256_key_file
    try:
        with open(path, "rb") as fh:
            key = load_pem_private_key(fh.read(), password=None)
    except OSError as exc:
        raise Failure(EXIT_KEYGEN, f"cannot read {path}: {exc.strerror}")
    except (ValueError, TypeError):
        raise Failure(EXIT_KEYGEN, f"{path} is not an unencrypted PEM private key")
    if not isinstance(key, RSAPrivateKey):
        raise Failure(EXIT_KEYGEN, f"{path} is not an RSA key (make one: slurmjwt keygen --rs256)")
    kid = kid or rs256_kid(config)
    if not KID.match(kid):  # slurmjwt jwks --add would refuse it
        raise Failure(EXIT_USAGE, f"kid {kid[:40]!r} is not 1 to 128 of A-Z a-z 0-9 . _ : @ + = - "
                                  f"(give --kid, or set rs256_kid)")
    numbers = key.public_key().public_numbers()
    entry = public_entry(kid, numbers.n, numbers.e)
    click.echo(json.dumps({"keys": [entry]}, indent=2))


def slurm_conf_jwks() -> str:
    """The jwks= of slurm.conf's AuthAltParameters ($SLURM_CONF, else /etc/slurm/slurm.conf)."""
    from .doctor import alt_parameters, parse_slurm_conf

    conf = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    try:
        found = alt_parameters(parse_slurm_conf(conf).get("authaltparameters", "")).get("jwks")
    except OSError as exc:
        raise Failure(EXIT_USAGE, f"cannot read {exc.filename}: {exc.strerror} (name the JWKS "
                                  f"file with --file)")
    if not found:
        raise Failure(EXIT_USAGE, f"{conf}: AuthAltParameters has no jwks= (name the JWKS file "
                                  f"with --file, and add jwks=FILE to AuthAltParameters)")
    return found


def read_input(name: str) -> bytes:
    """--add's FILE, or stdin for -, bounded."""
    try:
        if name == "-":
            return sys.stdin.buffer.read(MAX_FILE + 1)
        with open(name, "rb") as fh:
            return fh.read(MAX_FILE + 1)
    except OSError as exc:
        raise Failure(EXIT_KEYGEN, f"cannot read {name}: {exc.strerror}")


def edit_jwks(jwks_file: str | None, adds: tuple[str, ...], removes: tuple[str, ...],
              kid: str | None) -> None:
    if kid is not None and len(adds) != 1:
        raise Failure(EXIT_USAGE, "--kid names the key of one --add PEM public key")
    path = jwks_file or slurm_conf_jwks()
    try:
        keys = [key for name in adds
                for key in parse_input(read_input(name), "stdin" if name == "-" else name, kid)]
        if not adds and not removes:
            _, listed, st = read_set(path)
            if st is None:
                raise Failure(EXIT_KEYGEN, f"{path}: no such file")
            click.echo(f"{path}: a valid JWKS, {len(listed)} key{'s' * (len(listed) != 1)}")
            for key in listed:
                click.echo(printable(f"  {key.kid}  RSA-{key.bits}  {key.fingerprint}"))
            return
        change = update(path, keys, list(removes))
    except JwksError as exc:
        raise Failure(EXIT_KEYGEN, str(exc))
    except OSError as exc:
        raise Failure(EXIT_KEYGEN, f"cannot update {exc.filename or path}: {exc.strerror}")
    done = [f"removed kid {k}" for k in change.removed] + [f"added kid {k}" for k in change.added]
    done += [f"kid {k} was already there with this key" for k in change.unchanged]
    kids = [e["kid"] for e in change.doc["keys"]]
    click.echo(printable(f"{os.path.realpath(path)}: {'; '.join(done)}; it holds {len(kids)} "
                         f"key{'s' * (len(kids) != 1)}: {', '.join(kids) or 'none'}"))
    click.echo(f"next: {RESTART}" if change.changed else "nothing changed: no restart needed")


def write_key(path: str, key: bytes, uid: int, gid: int, mode: int, force: bool) -> None:
    """Create PATH atomically: a complete file with its final owner and mode, or nothing;
    never overwrite one without --force (FileExistsError)."""
    write_atomic(path, key, mode=mode, owner=(uid, gid), fsync=True, replace=force)
