"""A client for the daemon's socket: one request, one answer, a bounded wait.

It imports only _socket and wire.py, so that `slurmjwt token` and `refresh` (fastcli.py) can use
it: socket.py's wrapper class (enum, selectors) and protocol.py would cost that path more than
all the rest of it (bench.py's `cli` section); protocol.py is imported when a request or an
answer needs it.
"""

from __future__ import annotations

import time
from _socket import AF_UNIX, SOCK_STREAM, socket

from .wire import MAX_RESPONSE

TYPE_CHECKING = False  # typing's own constant, without importing typing (mypy knows the idiom)
if TYPE_CHECKING:
    from .protocol import Response


class DaemonUnreachable(Exception):
    """Nothing answers on the socket."""


class BadAnswer(Exception):
    """Something answered, but not in protocol."""


def call(socket_path: str, op: str, args: dict[str, object] | None = None,
         timeout: float = 5.0) -> Response:
    """Send one request and return the daemon's answer, all within TIMEOUT seconds."""
    from .protocol import encode_request
    return parse_answer(socket_path, exchange(socket_path, encode_request(op, args), timeout))


def parse_answer(socket_path: str, line: bytes) -> Response:
    """LINE, an answer from SOCKET_PATH without its newline, as a Response; BadAnswer if garbled."""
    from .protocol import parse_response
    try:
        return parse_response(line)
    except ValueError:
        raise BadAnswer(f"slurmjwtd at {socket_path} sent a garbled answer") from None


def exchange(socket_path: str, request: bytes, timeout: float) -> bytes:
    """Send REQUEST (one encoded line) and return the answer line without its newline, all
    within TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    sock = socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except OSError as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise DaemonUnreachable(f"cannot reach slurmjwtd at {socket_path}: {reason}") from None
        try:
            sock.sendall(request)
        except TimeoutError:
            raise DaemonUnreachable(f"slurmjwtd at {socket_path} did not read the request in "
                                    f"{timeout:g} s") from None
        except OSError:  # EPIPE: it answered (`busy`) and closed before we wrote; read it
            pass
        answer = b""
        while b"\n" not in answer:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = sock.recv(MAX_RESPONSE + 1 - len(answer))
            except TimeoutError:
                raise DaemonUnreachable(f"slurmjwtd at {socket_path} did not answer in {timeout:g} s") from None
            except OSError as exc:
                raise BadAnswer(f"slurmjwtd at {socket_path} dropped the connection: {exc.strerror or exc}") from None
            if not chunk:
                raise BadAnswer(f"slurmjwtd at {socket_path} closed the connection without answering")
            answer += chunk
            if len(answer) > MAX_RESPONSE:
                raise BadAnswer(f"slurmjwtd at {socket_path} sent an over-long answer")
    finally:
        sock.close()
    return answer[:answer.index(b"\n")]
