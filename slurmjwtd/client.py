"""A client for the daemon's socket: one request, one answer, a bounded wait."""

from __future__ import annotations

import socket
import time

from .protocol import MAX_RESPONSE, Response, encode_request, parse_response


class DaemonUnreachable(Exception):
    """Nothing answers on the socket."""


class BadAnswer(Exception):
    """Something answered, but not in protocol."""


def call(socket_path: str, op: str, args: dict[str, object] | None = None,
         timeout: float = 5.0) -> Response:
    """Send one request and return the daemon's answer, all within TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except OSError as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise DaemonUnreachable(f"cannot reach slurmjwtd at {socket_path}: {reason}") from None
        try:
            sock.sendall(encode_request(op, args))
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
    try:
        return parse_response(answer[:answer.index(b"\n")])
    except ValueError:
        raise BadAnswer(f"slurmjwtd at {socket_path} sent a garbled answer") from None
