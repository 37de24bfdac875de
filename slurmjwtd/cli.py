"""`slurmjwt`: the user's and admin's command line.

Tokens go to stdout only; every error is one line on stderr and a distinct
exit status (docs/cli.md):

  0 success                      5 refused: no live login session
  1 unexpected error; doctor     6 daemon error: busy, timeout, internal, signer unavailable,
    found a problem                garbled answer
  2 usage error                  7 no token to show, or not a JWT, or it has expired
  3 daemon unreachable           8 keygen or jwks could not write or read the key
  4 refused by policy (permission, unknown user, min_uid, policy-denied, rate-limited,
    lifetime, bad request)
"""

from __future__ import annotations

import base64
import datetime
import grp
import json
import os
import pwd
import re
import secrets
import socket
import sys
import time

import click

from . import __version__
from .client import BadAnswer, DaemonUnreachable, call
from .config import DEFAULT_CONFIG, DEFAULT_SOCKET, Config, ConfigError, load_config
from .protocol import Response
from .tokenfile import read_token_file, token_path, write_token_file

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_NO_SESSION = 1, 2, 3, 4, 5
EXIT_DAEMON, EXIT_NO_TOKEN, EXIT_KEYGEN = 6, 7, 8
_DAEMON_SIDE = {"busy", "timeout", "internal", "too-large", "unsupported-version",
                "signer-unavailable"}
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")


class Failure(click.ClickException):
    """One line on stderr, one exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = status

    def show(self, file: object = None) -> None:
        click.echo(f"slurmjwt: {self.message}", err=True)


def variable_name() -> str:
    """The variable the site keeps the token in: $SLURMJWT_VARIABLE, else SLURM_JWT."""
    name = os.environ.get("SLURMJWT_VARIABLE", "")
    return name if _NAME.match(name) else "SLURM_JWT"


def ask(ctx: click.Context, op: str, args: dict[str, object] | None = None,
        timeout: float = 5.0) -> Response:
    try:
        answer = call(ctx.obj, op, args, timeout=timeout)
    except DaemonUnreachable as exc:
        raise Failure(EXIT_UNREACHABLE, f"{exc} (is slurmjwtd running? systemctl status slurmjwtd)")
    except BadAnswer as exc:
        raise Failure(EXIT_DAEMON, str(exc))
    if not answer.ok:
        status = (EXIT_NO_SESSION if answer.code == "no-session" else
                  EXIT_DAEMON if answer.code in _DAEMON_SIDE else EXIT_REFUSED)
        raise Failure(status, f"refused ({answer.code}): {answer.message}")
    return answer


def get_token(ctx: click.Context, user: str | None, lifetime: int | None,
              timeout: float = 5.0) -> str:
    """A new token from the daemon; one's own also replaces one's token file."""
    args: dict[str, object] = {}
    if user is not None:
        args["user"] = user
    if lifetime is not None:
        args["lifetime"] = lifetime
    token = ask(ctx, "MINT", args, timeout).fields.get("token", "")
    if not _JWT.match(token):  # refresh output is eval'd by shells: accept nothing else
        raise Failure(EXIT_DAEMON, "slurmjwtd answered without a well-formed token")
    if user is None:
        try:
            write_token_file(token, os.getuid())
        except OSError as exc:
            click.echo(f"slurmjwt: warning: token file not replaced: {exc}", err=True)
    return token


def current_token(explicit: str | None = None) -> str:
    """TOKEN, or - for stdin, else the variable, else the token file."""
    if explicit == "-":
        explicit = sys.stdin.readline()
    token = (explicit or os.environ.get(variable_name(), "")).strip()
    token = token or read_token_file(os.getuid()) or ""
    if not token:
        raise Failure(EXIT_NO_TOKEN, f"no token: {variable_name()} is not set and there is no "
                                     f"token file (run: eval \"$(slurmjwt refresh)\")")
    return token


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", envvar="SLURMJWT_SOCKET", default=DEFAULT_SOCKET,
              show_default=True, metavar="PATH", help="slurmjwtd's socket [env: SLURMJWT_SOCKET].")
@click.version_option(__version__, prog_name="slurmjwt")
@click.pass_context
def main(ctx: click.Context, socket_path: str) -> None:
    """Get and inspect short-lived Slurm JWTs from slurmjwtd.

    The token's variable is $SLURMJWT_VARIABLE, else SLURM_JWT."""
    ctx.obj = socket_path


lifetime_option = click.option("--lifetime", type=click.IntRange(min=1), metavar="SECONDS",
                               help="Token lifetime [default: the daemon's].")


@main.command()
@lifetime_option
@click.option("--user", metavar="USER", help="Mint for USER (root only).")
@click.option("--file", "show_file", is_flag=True,
              help="Print the path of your token file instead (exit 7 if there is none).")
@click.pass_context
def token(ctx: click.Context, lifetime: int | None, user: str | None, show_file: bool) -> None:
    """Print SLURM_JWT=<token>, as `scontrol token` does."""
    if show_file:
        path = token_path(os.getuid())
        click.echo(path)
        if not os.path.exists(path):
            raise Failure(EXIT_NO_TOKEN, f"{path} does not exist (it is made at login)")
        return
    click.echo(f"{variable_name()}={get_token(ctx, user, lifetime)}")


@main.command()
@lifetime_option
@click.option("--csh", is_flag=True, help="Print `setenv NAME <token>` for csh and tcsh.")
@click.option("--timeout", type=click.FloatRange(min=0.01, max=60), default=5.0, show_default=True,
              metavar="SECONDS", help="Give up after this long.")
@click.pass_context
def refresh(ctx: click.Context, lifetime: int | None, csh: bool, timeout: float) -> None:
    """Print `export SLURM_JWT=<token>`, for eval "$(slurmjwt refresh)"."""
    token = get_token(ctx, None, lifetime, timeout)
    click.echo(f"setenv {variable_name()} {token}" if csh else f"export {variable_name()}={token}")


def decode_claims(token: str) -> dict[str, object]:
    """The claims of TOKEN, read without the key (nothing here is verified)."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (expected three dot-separated parts)")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except ValueError:
        raise ValueError("not a JWT (its claims do not decode)") from None
    if not isinstance(claims, dict):
        raise ValueError("not a JWT (its claims are not an object)")
    return claims


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
        claims = decode_claims(token)
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
    click.echo(f"user:    {facts['user'] or 'unknown'}")
    click.echo(f"issued:  {local_time(facts['issued'])}")
    click.echo(f"expires: {local_time(facts['expires'])}")
    if left is None:
        click.echo("left:    unknown")
    elif facts["expired"]:
        click.echo(f"left:    none: expired {describe_span(left)} ago (run: eval \"$(slurmjwt refresh)\")")
    else:
        click.echo(f"left:    {describe_span(left)}")
    if facts["jti"]:
        click.echo(f"jti:     {facts['jti']}")


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
    The token reaches curl through a pipe (-H @/dev/fd/N), never its command line."""
    *options, path = args
    if not path.startswith("/"):
        raise Failure(EXIT_USAGE, f"the last argument must be a path on slurmrestd, like "
                                  f"/slurm/v0.0.38/ping (got {path!r})")
    base = os.environ.get("SLURMRESTD_URL") or site_config().slurmrestd_url
    user, token = usable_token()
    read_end, write_end = os.pipe()
    os.write(write_end, f"X-SLURM-USER-NAME: {user}\nX-SLURM-USER-TOKEN: {token}\n".encode())
    os.close(write_end)
    os.set_inheritable(read_end, True)
    try:
        os.execvp("curl", ["curl", "-H", f"@/dev/fd/{read_end}", *options,
                           base.rstrip("/") + path])
    except OSError as exc:
        raise Failure(EXIT_ERROR, f"cannot run curl: {exc.strerror} (apt-get install curl)")


def site_config() -> Config:
    path = os.environ.get("SLURMJWT_CONFIG") or DEFAULT_CONFIG
    try:
        return load_config(path, required=False)
    except ConfigError as exc:
        raise Failure(EXIT_ERROR, str(exc))


@main.command()
@click.option("--config", "config_path", default=DEFAULT_CONFIG, metavar="PATH",
              help="slurmjwtd's configuration.")
@click.option("--slurm-conf", default="/etc/slurm/slurm.conf", metavar="PATH", help="slurm.conf to check.")
@click.option("--pam-file", default="/etc/pam.d/sshd", metavar="PATH", help="sshd's PAM stack.")
@click.option("--sshd-config", default="/etc/ssh/sshd_config", metavar="PATH",
              help="sshd's configuration.")
@click.pass_context
def doctor(ctx: click.Context, config_path: str, slurm_conf: str, pam_file: str,
           sshd_config: str) -> None:
    """Check this login node's setup (for admins); non-zero exit when something is wrong."""
    from .doctor import run_checks
    sys.exit(run_checks(socket=ctx.obj, config=config_path, slurm_conf=slurm_conf,
                        pam_file=pam_file, sshd_config=sshd_config))


@main.command()
@click.argument("user")
@click.option("--lifetime", type=click.IntRange(min=1), metavar="SECONDS",
              help="Ask about this lifetime rather than the default.")
@click.pass_context
def policy(ctx: click.Context, user: str, lifetime: int | None) -> None:
    """Explain what slurmjwtd would decide for USER, and why (root); mints nothing.

    Exit 0 if a token would be granted, 4 if refused."""
    args: dict[str, object] = {"user": user} | ({"lifetime": lifetime} if lifetime else {})
    f = ask(ctx, "EXPLAIN", args).fields
    granted = f.get("decision") == "granted"
    click.echo(f"{user}: {'granted' if granted else 'refused'} ({f.get('reason')}, rule {f.get('rule')})")
    if not granted:
        click.echo(f"  {f.get('code')}: {f.get('message')}")
    for label, key in (("slurm user", "slurm_user"), ("uid", "uid"), ("groups", "groups"),
                       ("lifetime", "lifetime"), ("max lifetime", "max_lifetime"),
                       ("sessions", "sessions"), ("rate left", "rate_left")):
        if key in f:
            click.echo(f"  {label + ':':<14}{f[key]}")
    if not granted:
        sys.exit(EXIT_REFUSED)


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Say whether slurmjwtd answers, its version and signer."""
    fields = ask(ctx, "STATUS").fields
    click.echo(f"slurmjwtd {fields.get('version', '?')} answers on {ctx.obj}: "
               f"signer {fields.get('signer', '?')}, {fields.get('sessions', '?')} open session(s), "
               f"{fields.get('granted', '?')} granted, {fields.get('refused', '?')} refused, "
               f"up {fields.get('uptime', '?')} s")


def _default_owner() -> str:
    try:
        pwd.getpwnam("slurm")
        return "slurm"
    except KeyError:
        return "root"


def _default_group() -> str | None:
    try:
        grp.getgrnam("slurmjwt")
        return "slurmjwt"
    except KeyError:
        return None


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
        click.echo(f"add its public key to slurmctld's JWKS: slurmjwt jwks {path} "
                   f"--kid {kid or socket.gethostname()}")
    else:
        click.echo("restart slurmctld and slurmrestd to use it")


def rsa_private_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def b64url_uint(value: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")
                                    ).rstrip(b"=").decode()


@main.command()
@click.argument("path", required=False)
@click.option("--kid", metavar="NAME", help="The key id [default: rs256_kid, else this host's name].")
def jwks(path: str | None, kid: str | None) -> None:
    """Print the JWKS with the public half of the rs256 key, to merge into slurmctld's jwks= file."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    config = site_config()
    path = path or config.rs256_key_file
    try:
        with open(path, "rb") as fh:
            public = load_pem_private_key(fh.read(), password=None).public_key().public_numbers()
    except OSError as exc:
        raise Failure(EXIT_KEYGEN, f"cannot read {path}: {exc.strerror}")
    except (ValueError, TypeError):
        raise Failure(EXIT_KEYGEN, f"{path} is not an unencrypted PEM private key")
    entry = {"kty": "RSA", "alg": "RS256", "use": "sig",
             "kid": kid or config.rs256_kid or socket.gethostname(),
             "n": b64url_uint(public.n), "e": b64url_uint(public.e)}
    click.echo(json.dumps({"keys": [entry]}, indent=2))


def write_key(path: str, key: bytes, uid: int, gid: int, mode: int, force: bool) -> None:
    """Create PATH atomically: a complete file with its final owner and mode, or nothing."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, key)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if PATH exists: never overwrite without --force
    finally:
        os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)
