"""`slurmjwt`: the user's and admin's command line.

Tokens go to stdout only; every error is one line on stderr and a distinct
exit status (docs/cli.md):

  0 success                      5 refused: no live login session
  1 unexpected error             6 daemon error: busy, timeout, internal, garbled answer
  2 usage error                  7 no token to show, or not a JWT
  3 daemon unreachable           8 keygen could not write the key
  4 refused by policy (permission, unknown user, min_uid, lifetime, bad request)
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
import sys
import time

import click

from . import __version__
from .client import BadAnswer, DaemonUnreachable, call
from .config import DEFAULT_SOCKET
from .protocol import Response

EXIT_ERROR, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_NO_SESSION = 1, 3, 4, 5
EXIT_DAEMON, EXIT_NO_TOKEN, EXIT_KEYGEN = 6, 7, 8
_DAEMON_SIDE = {"busy", "timeout", "internal", "too-large", "unsupported-version"}
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")
DEFAULT_KEY = "/var/lib/slurm/jwt_hs256.key"


class Failure(click.ClickException):
    """One line on stderr, one exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = status

    def show(self, file: object = None) -> None:
        click.echo(f"slurmjwt: {self.message}", err=True)


def ask(ctx: click.Context, op: str, args: dict[str, object] | None = None) -> Response:
    try:
        answer = call(ctx.obj, op, args)
    except DaemonUnreachable as exc:
        raise Failure(EXIT_UNREACHABLE, f"{exc} (is slurmjwtd running? systemctl status slurmjwtd)")
    except BadAnswer as exc:
        raise Failure(EXIT_DAEMON, str(exc))
    if not answer.ok:
        status = (EXIT_NO_SESSION if answer.code == "no-session" else
                  EXIT_DAEMON if answer.code in _DAEMON_SIDE else EXIT_REFUSED)
        raise Failure(status, f"refused ({answer.code}): {answer.message}")
    return answer


def get_token(ctx: click.Context, user: str | None, lifetime: int | None) -> str:
    args: dict[str, object] = {}
    if user is not None:
        args["user"] = user
    if lifetime is not None:
        args["lifetime"] = lifetime
    token = ask(ctx, "MINT", args).fields.get("token", "")
    if not _JWT.match(token):  # refresh output is eval'd by shells: accept nothing else
        raise Failure(EXIT_DAEMON, "slurmjwtd answered without a well-formed token")
    return token


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", envvar="SLURMJWT_SOCKET", default=DEFAULT_SOCKET,
              show_default=True, metavar="PATH", help="slurmjwtd's socket [env: SLURMJWT_SOCKET].")
@click.version_option(__version__, prog_name="slurmjwt")
@click.pass_context
def main(ctx: click.Context, socket_path: str) -> None:
    """Get and inspect short-lived Slurm JWTs from slurmjwtd."""
    ctx.obj = socket_path


lifetime_option = click.option("--lifetime", type=click.IntRange(min=1), metavar="SECONDS",
                               help="Token lifetime [default: the daemon's].")


@main.command()
@lifetime_option
@click.option("--user", metavar="USER", help="Mint for USER (root only).")
@click.pass_context
def token(ctx: click.Context, lifetime: int | None, user: str | None) -> None:
    """Print SLURM_JWT=<token>, as `scontrol token` does."""
    click.echo(f"SLURM_JWT={get_token(ctx, user, lifetime)}")


@main.command()
@lifetime_option
@click.pass_context
def refresh(ctx: click.Context, lifetime: int | None) -> None:
    """Print `export SLURM_JWT=<token>`, for eval "$(slurmjwt refresh)"."""
    click.echo(f"export SLURM_JWT={get_token(ctx, None, lifetime)}")


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


def describe_left(seconds: int) -> str:
    span = abs(seconds)
    text = f"{span // 3600}h {span % 3600 // 60:02d}m {span % 60:02d}s" if span >= 3600 else \
        f"{span // 60}m {span % 60:02d}s"
    return text if seconds >= 0 else f"expired {text} ago"


def local_time(epoch: object) -> str:
    if not isinstance(epoch, int):
        return "unknown"
    return datetime.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


@main.command()
@click.argument("token_arg", metavar="[TOKEN]", required=False)
def show(token_arg: str | None) -> None:
    """Decode $SLURM_JWT (or TOKEN, or - for stdin) without the key."""
    if token_arg == "-":
        token_arg = sys.stdin.readline()
    token = token_arg or os.environ.get("SLURM_JWT", "")
    if not token.strip():
        raise Failure(EXIT_NO_TOKEN, "no token: SLURM_JWT is not set (run: eval \"$(slurmjwt refresh)\")")
    try:
        claims = decode_claims(token)
    except ValueError as exc:
        raise Failure(EXIT_NO_TOKEN, str(exc))
    exp = claims.get("exp")
    left = describe_left(exp - int(time.time())) if isinstance(exp, int) else "unknown"
    click.echo(f"user:    {claims.get('sun', claims.get('username', 'unknown'))}")
    click.echo(f"issued:  {local_time(claims.get('iat'))}")
    click.echo(f"expires: {local_time(exp)}")
    click.echo(f"left:    {left}")
    if "jti" in claims:
        click.echo(f"jti:     {claims['jti']}")


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
@click.argument("path", default=DEFAULT_KEY, required=False)
@click.option("--owner", metavar="USER", help="Key owner [default: slurm if it exists, else root].")
@click.option("--group", metavar="GROUP",
              help="Group that may read it, mode 0640 [default: slurmjwt if it exists; "
                   "without one the key is 0600].")
@click.option("--force", is_flag=True, help="Replace an existing key.")
def keygen(path: str, owner: str | None, group: str | None, force: bool) -> None:
    """Make a 32-byte HS256 key at PATH, as the site guide does."""
    owner = owner or _default_owner()
    group = group or _default_group()
    try:
        uid = pwd.getpwnam(owner).pw_uid
        gid = grp.getgrnam(group).gr_gid if group else pwd.getpwnam(owner).pw_gid
    except KeyError as exc:
        raise Failure(EXIT_KEYGEN, f"no such user or group: {exc.args[0].split(':')[-1].strip()}")
    mode = 0o640 if group else 0o600
    try:
        write_key(path, secrets.token_bytes(32), uid, gid, mode, force)
    except FileExistsError:
        raise Failure(EXIT_KEYGEN, f"{path} exists; keep it, or replace it with --force "
                                   f"(every token signed with it stops working)")
    except OSError as exc:
        raise Failure(EXIT_KEYGEN, f"cannot write {path}: {exc.strerror}")
    click.echo(f"wrote a 32-byte key to {path} ({owner}:{grp.getgrgid(gid).gr_name} {mode:04o}); "
               f"restart slurmctld and slurmrestd to use it")


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
