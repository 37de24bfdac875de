"""The `slurmjwt` command's entry point: `token` and `refresh` without click, all else through
cli.py's click group; and what those two commands do, which cli.py's commands call as well.

The shell integration runs `slurmjwt refresh`; importing click and the daemon's modules made
it 5.3x a bare `python3 -I -c pass`, and this path imports only _socket, time, client.py and
wire.py (bench.py's `cli` section has the figures). It runs an argv only if it is sure how
click would read it: options of FAST_OPTIONS (tests/unit/test_fastcli.py holds that table
equal to click's), plain values, each option once. Anything else (help, --version, an unknown
option, a value click might take otherwise or refuse, `--`, a shell completion) goes to click,
so that help and usage errors have one source. Both parsers call the same run_token and
run_refresh, and tests/unit/test_fastcli.py compares the two paths' output byte for byte.

Tokens go to stdout only; every error is one line on stderr and a distinct exit status
(docs/cli.md, and cli.py's docstring). Text that comes from the daemon (or from whatever
listens on $SLURMJWT_SOCKET) is printed as printable ASCII only (printable()).
"""

from __future__ import annotations

import errno
import os
import sys

from .client import BadAnswer, DaemonUnreachable, exchange, parse_answer
from .wire import DEFAULT_ROOT_SOCKET, DEFAULT_SOCKET, plain_ok, plain_request

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_NO_SESSION = 1, 2, 3, 4, 5
EXIT_DAEMON, EXIT_NO_TOKEN, EXIT_KEYGEN, EXIT_CURL = 6, 7, 8, 9
MAX_SOCKET_PATH = 107  # bytes: sockaddr_un's sun_path (108) less the terminating NUL
SOCKET_VARIABLE = "SLURMJWT_SOCKET"
_JWT_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_NAME_HEAD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_TAIL = _NAME_HEAD | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
TYPE_CHECKING = False  # typing's own constant, without importing typing (mypy knows the idiom)
if TYPE_CHECKING:
    from typing import Callable

    from .config import Config

# The options of `token` and `refresh` (and the group's --socket) the fast path takes: option ->
# (parameter, kind, bounds). cli.py's click options take their bounds and defaults from here;
# tests/unit/test_fastcli.py checks that click has exactly these options, of these kinds.
LIFETIME_RANGE = (1, 999_999_999)
TIMEOUT_RANGE, TIMEOUT_DEFAULT = (0.01, 60), 5.0
FLAG, TEXT, INT, FLOAT = "flag", "text", "int", "float"
GROUP_OPTIONS = {"--socket": ("socket_path", TEXT, None)}
FAST_OPTIONS = {
    "token": {"--lifetime": ("lifetime", INT, LIFETIME_RANGE), "--user": ("user", TEXT, None),
              "--file": ("show_file", FLAG, None)},
    "refresh": {"--lifetime": ("lifetime", INT, LIFETIME_RANGE), "--csh": ("csh", FLAG, None),
                "--timeout": ("timeout", FLOAT, TIMEOUT_RANGE)},
}


class Failure(Exception):
    """One line on stderr, one exit status (cli.py's commands raise it too; its group shows it
    as click would)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def line(self) -> str:
        return f"slurmjwt: {printable(self.message)}"


def printable(text: object) -> str:
    """TEXT with everything but printable ASCII shown as \\xNN (\\uNNNN above 0xff): what a daemon
    or a token says reaches a terminal as plain characters, never as escape sequences."""
    return "".join(c if " " <= c <= "~" and c != "\\" else
                   "\\\\" if c == "\\" else
                   f"\\x{ord(c):02x}" if ord(c) <= 0xff else f"\\u{ord(c):04x}" for c in str(text))


def socket_path_error(path: str) -> str | None:
    """Why PATH cannot be a Unix socket's address, or None: connect(2) would only say
    "AF_UNIX path too long" (and Python's OSError then has no strerror)."""
    size = len(os.fsencode(path))
    if size <= MAX_SOCKET_PATH:
        return None
    shown = path if len(path) <= 60 else path[:57] + "..."
    return f"socket path {shown} is {size} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket allows"


def socket_of(socket_path: str | None) -> str:
    """The socket to ask: SOCKET_PATH (--socket or $SLURMJWT_SOCKET) if not empty, else the
    default; root's own socket for root, whose queue users flooding the public one cannot fill."""
    return socket_path or (DEFAULT_ROOT_SOCKET if os.geteuid() == 0 else DEFAULT_SOCKET)


def variable_name() -> str:
    """The variable the site keeps the token in: $SLURMJWT_VARIABLE, else SLURM_JWT."""
    name = os.environ.get("SLURMJWT_VARIABLE", "")
    if 0 < len(name) <= 64 and name[0] in _NAME_HEAD and _NAME_TAIL.issuperset(name):
        return name
    return "SLURM_JWT"


def is_jwt(token: str) -> bool:
    """Three non-empty parts of base64url letters, joined by dots: nothing a shell evaluating
    `slurmjwt refresh` could read as anything but a word."""
    parts = token.split(".")
    return len(parts) == 3 and all(part and _JWT_ALPHABET.issuperset(part) for part in parts)


def exit_status(code: str) -> int:
    """The exit status for an ERR answer's CODE, by its class in protocol.Code: a refusal 4 (5
    for no-session: log in again), a fault, or a code not in the table, 6."""
    from .protocol import REFUSALS
    if code not in REFUSALS:
        return EXIT_DAEMON
    return EXIT_NO_SESSION if code == "no-session" else EXIT_REFUSED


def ask(socket_path: str, op: str, args: dict[str, object] | None = None,
        timeout: float = 5.0) -> dict[str, str]:
    """The fields of the daemon's OK answer to OP with ARGS; Failure for anything else."""
    too_long = socket_path_error(socket_path)
    if too_long:
        raise Failure(EXIT_USAGE, f"{too_long} (give a shorter --socket or SLURMJWT_SOCKET)")
    request = plain_request(op, args or {})
    if request is None:  # a value to escape, or too long a line: protocol.py says which
        from .protocol import encode_request
        try:
            request = encode_request(op, args)
        except ValueError as exc:
            raise Failure(EXIT_USAGE, f"cannot ask slurmjwtd: {exc}") from None
    try:
        line = exchange(socket_path, request, timeout)
        fields = plain_ok(line)
        if fields is not None:
            return fields
        answer = parse_answer(socket_path, line)
    except DaemonUnreachable as exc:
        raise Failure(EXIT_UNREACHABLE, f"{exc} (is slurmjwtd running? systemctl status slurmjwtd)")
    except BadAnswer as exc:
        raise Failure(EXIT_DAEMON, str(exc))
    if not answer.ok:
        raise Failure(exit_status(answer.code), f"refused ({answer.code}): {answer.message}")
    return answer.fields


def get_token(socket_path: str, user: str | None, lifetime: int | None,
              timeout: float = TIMEOUT_DEFAULT) -> str:
    """A new token from the daemon (the token file is the daemon's: it keeps it fresh)."""
    args: dict[str, object] = {}
    if user is not None:
        args["user"] = user
    if lifetime is not None:
        args["lifetime"] = lifetime
    token = ask(socket_path, "MINT", args, timeout).get("token", "")
    if not is_jwt(token):  # refresh output is eval'd by shells: accept nothing else
        raise Failure(EXIT_DAEMON, "slurmjwtd answered without a well-formed token")
    return token


def site_config() -> Config:
    from .config import DEFAULT_CONFIG, ConfigError, load_config
    path = os.environ.get("SLURMJWT_CONFIG") or DEFAULT_CONFIG
    try:
        return load_config(path, required=False)
    except ConfigError as exc:
        raise Failure(EXIT_ERROR, str(exc))


def token_file() -> str:
    """This user's token file: $SLURMJWT_TOKEN_FILE (the login's), else token_dir/<uid>/token."""
    from .tokenfile import FILE_VARIABLE, token_path
    return os.environ.get(FILE_VARIABLE) or token_path(site_config().token_dir, os.getuid())


def run_token(socket_path: str, echo: Callable[[str], None], lifetime: int | None = None,
              user: str | None = None, show_file: bool = False) -> None:
    """`slurmjwt token`: SLURM_JWT=<token>, or with SHOW_FILE the token file's path."""
    if show_file:
        path = token_file()
        echo(path)
        if not os.path.exists(path):
            raise Failure(EXIT_NO_TOKEN, f"{path} does not exist (it is made at login)")
        return
    echo(f"{variable_name()}={get_token(socket_path, user, lifetime)}")


def run_refresh(socket_path: str, echo: Callable[[str], None], lifetime: int | None = None,
                csh: bool = False, timeout: float = TIMEOUT_DEFAULT) -> None:
    """`slurmjwt refresh`: `export SLURM_JWT=<token>`, or for csh `setenv SLURM_JWT <token>`."""
    token = get_token(socket_path, None, lifetime, timeout)
    echo(f"setenv {variable_name()} {token}" if csh else f"export {variable_name()}={token}")


RUN = {"token": run_token, "refresh": run_refresh}


def _number(kind: str, value: str, bounds: tuple[float, float]) -> int | float | None:
    """VALUE as click's IntRange or FloatRange would take it, if it is plain digits (with one
    dot for a float) within BOUNDS; else None (click decides)."""
    if len(value) > 20:
        return None  # int() refuses over 4300 digits; no bound here needs 20
    whole, dot, fraction = value.partition(".") if kind == FLOAT else (value, "", "")
    if not whole or not _DIGITS.issuperset(whole):
        return None
    if dot and not (fraction and _DIGITS.issuperset(fraction)):
        return None
    number = float(value) if kind == FLOAT else int(value)
    return number if bounds[0] <= number <= bounds[1] else None


def parse(argv: list[str]) -> tuple[str, dict[str, object]] | None:
    """(command, its parameters) if ARGV is `token` or `refresh` with options the fast path
    takes as click would; else None."""
    if any(name.startswith("_") and name.endswith("_COMPLETE") for name in os.environ):
        return None  # click's shell completion (_SLURMJWT_COMPLETE)
    command, options, values = None, GROUP_OPTIONS, {}
    words = iter(argv)
    for word in words:
        if command is None and word in FAST_OPTIONS:
            command, options = word, FAST_OPTIONS[word]
            continue
        name, eq, value = word.partition("=")
        if name not in options or options[name][0] in values:
            return None  # a word not an option of here, or an option given twice
        dest, kind, bounds = options[name]
        if kind == FLAG:
            if eq:
                return None
            values[dest] = True
            continue
        if not eq:
            value = next(words, "")
        if not value or value.startswith("-"):
            return None  # click would take it as the value, or refuse it: let it say which
        values[dest] = value if kind == TEXT else _number(kind, value, bounds)
        if values[dest] is None:
            return None
    return (command, values) if command else None


def echo(text: str, err: bool = False) -> None:
    """click.echo(TEXT, err=ERR) as click writes plain text: the line, then a flush. Text with
    more than printable ASCII (a token file's path) goes to click.echo itself, which strips
    escape sequences before a pipe."""
    if not text.isascii() or "\x1b" in text:
        import click
        click.echo(text, err=err)
        return
    stream = sys.stderr if err else sys.stdout
    if stream is not None:
        stream.write(text + "\n")
        stream.flush()


def run_fast(command: str, values: dict[str, object]) -> int:
    """Run COMMAND with VALUES as click's standalone main would: its exit status, and a
    Failure, ^C, or a closed stdout reported as click reports them."""
    given = values.pop("socket_path", None)  # never empty: parse hands an empty value to click
    socket_path = socket_of(given or os.environ.get(SOCKET_VARIABLE))  # type: ignore[arg-type]
    try:
        RUN[command](socket_path, echo, **values)  # type: ignore[operator]
    except Failure as exc:
        echo(exc.line(), err=True)
        return exc.status
    except (EOFError, KeyboardInterrupt):
        echo("", err=True)
        echo("Aborted!", err=True)
        return 1
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        # click: exit 1, nothing said; what is left unflushed goes nowhere, not to a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def main(args: list[str] | None = None, **extra: object) -> object:
    """The `slurmjwt` command (the launchers' and pyproject's entry point)."""
    plan = parse(sys.argv[1:] if args is None else list(args)) if not extra else None
    if plan is None:
        from .cli import main as group
        return group.main(args=args, **extra)
    sys.exit(run_fast(*plan))
