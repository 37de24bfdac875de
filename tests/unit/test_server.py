"""Server: the real epoll loop on its two sockets (in a temporary directory), run in this, the
main thread (signals reach only it), while clients in another thread connect, send, hang up and
hang as they please; then SIGTERM, which the loop takes as the daemon does, and it finishes
what is in flight. One request per connection, framing refusals (too-large, timeout, busy:
FRAMING_CODES), clients that hang up, sessions kept across a restart, reload on SIGHUP.

The caller is the kernel's (SO_PEERCRED): this test's own user, root or not. Where a test
needs a given caller (root's operations, the per-uid cap, which root is exempt from), `peer`
replaces the uid and gid the server reads for each connection, keeping the kernel's pid.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import signal
import socket
import stat
import threading
import time
import weakref
from pathlib import Path
from typing import Callable

import jwt
import pytest

from slurmjwtd import server as server_module
from slurmjwtd.client import call
from slurmjwtd.config import ConfigError
from slurmjwtd.policy import Caller
from slurmjwtd.protocol import Code
from slurmjwtd.server import Server, peer_caller
from slurmjwtd.service import Notifier
from slurmjwtd.signer import HS256Signer

from .conftest import ROOT, USER

FRAMING_CODES = frozenset({Code.TOO_LARGE, Code.TIMEOUT, Code.BUSY})  # answered by the loop
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM)
SERVED: weakref.WeakSet[Server] = weakref.WeakSet()  # served, and so shut down


@pytest.fixture(autouse=True)
def process(monkeypatch):
    """No systemd here; and the signal handlers startup and serve install are pytest's again
    after."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}
    yield
    signal.set_wakeup_fd(-1)
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def start(make_state):
    """start(state=None, load=None, **settings): a Server started on STATE (or a fresh one with
    SETTINGS), listening, not yet serving (`serve`)."""
    unserved: list[Server] = []

    def start(state=None, load=None, **settings) -> Server:
        server = Server(state or make_state(**settings), load, Notifier())
        server.startup()
        unserved.append(server)
        return server

    yield start
    for server in unserved:
        if server not in SERVED:  # a test that failed first: close its sockets
            server.shutdown()


class Hung(Exception):
    pass


def hung(signum: int, frame: object) -> None:
    raise Hung("the loop still runs 30 s on")


def serve(server: Server, client: Callable[[], None]) -> None:
    """Serve until CLIENT, run in another thread, has returned or failed; then SIGTERM. A loop
    that does not stop fails the test (SIGALRM), rather than hang it."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            client()
        except BaseException as exc:
            failed.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=run)
    thread.start()
    SERVED.add(server)
    signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        server.serve()
    finally:
        signal.alarm(0)
        thread.join(30)
        server.shutdown()
    if failed:
        raise failed[0]


@pytest.fixture
def peer(monkeypatch) -> Callable[[Caller], None]:
    """peer(caller): every client is CALLER's uid and gid; its pid stays the kernel's."""
    real = server_module.peer_caller

    def set_peer(caller: Caller) -> None:
        monkeypatch.setattr(server_module, "peer_caller",
                            lambda sock: dataclasses.replace(real(sock), uid=caller.uid, gid=caller.gid))

    return set_peer


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the daemon sends until it closes."""
    data = b""
    while chunk := sock.recv(8192):
        data += chunk
    return data


def exchange(path: str, data: bytes, shut: bool = False) -> bytes:
    """Send DATA (then, SHUT, nothing more); all the daemon answers until it closes."""
    with connect(path) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within 10 s"
        time.sleep(0.01)


def test_the_caller_is_the_kernels_word():
    left, right = socket.socketpair()
    with left, right:
        assert peer_caller(left) == Caller(os.geteuid(), os.getegid(), os.getpid())


def test_sockets_and_one_answer_per_connection(start):
    server = start()
    config = server.state.config
    assert stat.S_IMODE(os.stat(config.socket).st_mode) == 0o666
    assert stat.S_IMODE(os.stat(config.root_socket).st_mode) == 0o600
    got = []
    serve(server, lambda: got.extend(exchange(path, b"SJWT/1 STATUS\n")
                                     for path in (config.socket, config.root_socket)))
    for answer in got:  # then the daemon closed
        assert answer.startswith(b"SJWT/1 OK version=") and answer.count(b"\n") == 1, answer
        assert answer.endswith(b"\n")
    assert not os.path.exists(config.socket) and not os.path.exists(config.root_socket)


LONGEST = b"SJWT/1 MINT user=" + b"a" * (1023 - 17) + b"\n"  # 1024 bytes, newline included


@pytest.mark.parametrize("data, code, op, message", [
    (b"SJWT/1 STATUS\nSJWT/1 STATUS\n", Code.BAD_REQUEST, "-", "one request per connection"),
    (b"SJWT/1 STATUS\nx", Code.BAD_REQUEST, "-", "one request per connection"),
    (b"SJWT/1 STATUS\r\n", Code.BAD_REQUEST, "-", "missing or malformed operation"),
    (b"x" * 1024, Code.TOO_LARGE, "-", "request longer than 1024 bytes"),  # no newline yet
    (b"x" * 1024 + b"\n", Code.TOO_LARGE, "-", "request longer than 1024 bytes"),
    (LONGEST, Code.UNKNOWN_USER, "mint", "no such user"),  # the longest request is read
], ids=["two-requests", "a-byte-after", "crlf", "1024-no-newline", "1025", "1024"])
def test_framing(start, data, code, op, message):
    assert len(LONGEST) == 1024
    server = start()
    got = []
    serve(server, lambda: got.append(exchange(server.state.config.socket, data)))
    assert got[0].startswith(f"SJWT/1 ERR {code.value} {message}".encode()), got
    assert got[0].count(b"\n") == 1
    [line] = server.state.audit_log.lines
    assert (line["code"], line["op"], line["caller_uid"]) == (code.value, op, os.geteuid())


def test_the_root_socket_is_served_first(start, peer):
    """Requests queued on the public socket before a login's on root's: the login's is answered
    first (each is audited as it is answered: root's refusals always are, in full)."""
    peer(ROOT)
    server = start()
    config = server.state.config
    users = [connect(config.socket) for _ in range(3)]  # queued before the loop runs
    login = connect(config.root_socket)
    for sock in users:
        sock.sendall(b"SJWT/1 MINT user=sjt-no-such-user\n")
    login.sendall(b"SJWT/1 CLOSE session=0123456789abcdef\n")
    answers = []
    serve(server, lambda: answers.extend(read_all(sock) for sock in (login, *users)))
    for sock in (login, *users):
        sock.close()
    assert all(answer.startswith(b"SJWT/1 ERR ") for answer in answers)
    assert [line["op"] for line in server.state.audit_log.lines] == ["close", "mint", "mint", "mint"]


def test_a_login_waits_behind_few_of_the_users_requests_queued(start, peer, monkeypatch):
    """A login that comes while users' requests are queued is answered after the few of the
    loop's turn in progress (_USER_BURST), not after all of them: a user's flood costs a login
    a few requests' time, however many it queues (bench.py `flood`)."""
    peer(ROOT)
    server = start()
    config = server.state.config
    users = [connect(config.socket) for _ in range(20)]
    for sock in users:
        sock.sendall(b"SJWT/1 MINT user=sjt-no-such-user\n")
    login: list[socket.socket] = []
    answer = server.ops.answer

    def login_comes(caller, line, root_socket=False):  # as the first user's is answered
        if not login:
            login.append(connect(config.root_socket))
            login[0].sendall(b"SJWT/1 CLOSE session=0123456789abcdef\n")
        return answer(caller, line, root_socket)
    monkeypatch.setattr(server.ops, "answer", login_comes)
    answers: list[bytes] = []

    def clients() -> None:
        answers.extend(read_all(sock) for sock in users)
        answers.append(read_all(login[0]))  # there by the time the first user had her answer
    serve(server, clients)
    for sock in (*users, *login):
        sock.close()
    assert len(answers) == 21 and all(a.startswith(b"SJWT/1 ERR ") for a in answers)
    ops = [line["op"] for line in server.state.audit_log.lines]
    assert ops.count("mint") == 20
    assert 1 <= ops.index("close") <= server_module._USER_BURST <= 8  # not after all 20

def test_a_request_not_in_by_the_deadline_is_refused(start):
    server = start(client_timeout=0.2)
    got = []

    def client() -> None:
        began = time.monotonic()
        with connect(server.state.config.socket) as sock:
            sock.sendall(b"SJWT/1 STAT")  # and no more
            got.append((read_all(sock), time.monotonic() - began))

    serve(server, client)
    [(answer, waited)] = got
    assert answer.startswith(b"SJWT/1 ERR timeout ") and 0.2 <= waited < 5, got
    assert server.state.audit_log.lines[0]["code"] == Code.TIMEOUT.value


@pytest.mark.parametrize("who, busy", [(USER, True), (ROOT, False)], ids=["user", "root"])
def test_a_uid_with_all_its_connections_open_is_busy(start, peer, who, busy):
    peer(who)
    server = start(max_clients_per_uid=1)
    path = server.state.config.socket
    got = {}

    def clients() -> None:
        with connect(path) as held:  # accepted first: it holds the uid's one connection
            got["second"] = exchange(path, b"SJWT/1 STATUS\n")
            held.sendall(b"SJWT/1 STATUS\n")
            got["held"] = read_all(held)

    serve(server, clients)
    assert got["held"].startswith(b"SJWT/1 OK ")
    if busy:
        assert got["second"] == b"SJWT/1 ERR busy too many connections from this uid\n"
        assert [line["code"] for line in server.state.audit_log.lines] == ["busy"]
    else:  # logins: root is never capped
        assert got["second"].startswith(b"SJWT/1 OK ") and server.state.audit_log.lines == []


def test_clients_that_hang_up_or_misbehave_do_not_stop_it(start):
    server = start()
    path = server.state.config.socket
    got = {}

    def clients() -> None:
        connect(path).close()  # connects, says nothing, hangs up
        with connect(path) as sock:
            sock.sendall(b"SJWT/1 STA")  # half a request, then gone
        got["half, then no more"] = exchange(path, b"SJWT/1 STA", shut=True)
        got["not ASCII"] = exchange(path, b"\xff\xfe\n")
        with connect(path) as sock:
            sock.sendall(b"SJWT/1 STATUS\n")  # gone before its answer
        got["status"] = call(path, "STATUS")

    serve(server, clients)
    assert got["half, then no more"] == b""  # nothing to answer: no request came
    assert got["not ASCII"].startswith(b"SJWT/1 ERR bad-request request is not ASCII")
    assert got["status"].ok and got["status"].fields["refused"] == "1"  # hang-ups are no refusals
    assert [line["code"] for line in server.state.audit_log.lines] == ["bad-request"]


def test_a_token_for_whoever_runs_the_tests(start, key_file):
    """No fake caller: the kernel names this test's user, root or not, who gets its own token."""
    server = start(min_uid=0, require_session=False)
    me = pwd.getpwuid(os.geteuid()).pw_name
    got = []
    serve(server, lambda: got.append(call(server.state.config.socket, "MINT", {"lifetime": 60})))
    [answer] = got
    assert answer.ok and answer.fields["user"] == me, answer
    claims = jwt.decode(answer.fields["token"], key_file.read_bytes(), algorithms=["HS256"])
    assert claims["sun"] == me and claims["exp"] - claims["iat"] == 60
    [line] = server.state.audit_log.lines
    assert (line["decision"], line["caller_uid"], line["caller_pid"]) == (
        "granted", os.geteuid(), os.getpid())


def test_logins_come_through_the_root_socket_and_outlive_a_restart(start, peer, make_state):
    peer(ROOT)
    server = start()
    config = server.state.config
    got = {}

    def login() -> None:
        got["public"] = call(config.socket, "OPEN", {"user": "nobody"})
        got["open"] = call(config.root_socket, "OPEN", {"user": "nobody", "tty": "ssh"})
        session = got["open"].fields["session"]
        # saved as the loop turns, not only as the daemon stops
        saved = Path(config.session_file)
        wait_for(lambda: saved.exists() and session in saved.read_text(), "saved session")

    serve(server, login)
    assert got["public"].code == Code.PERMISSION_DENIED.value
    assert got["open"].ok and got["open"].fields["user"] == "nobody"
    session = got["open"].fields["session"]

    restarted = start(make_state())  # the same session file: its leader, this process, lives
    assert len(restarted.state.registry) == 1
    serve(restarted, lambda: got.update(
        status=call(config.socket, "STATUS"),
        close=call(config.root_socket, "CLOSE", {"session": session})))
    assert got["status"].fields["sessions"] == "1"
    assert got["close"].fields == {"session": session, "user": "nobody", "remaining": "0"}
    assert Path(config.session_file).read_text() == "[]\n"


def test_a_slow_signer_holds_up_no_one_and_sigterm_waits_for_it(start, make_state, scontrol,
                                                                 tmp_path):
    token = HS256Signer(b"k" * 32).mint("nobody", 60, int(time.time())).jwt
    began = tmp_path / "began"
    signer = scontrol(f"touch {began}; sleep 0.3; echo SLURM_JWT={token}")
    server = start(make_state(signer, min_uid=0, require_session=False))
    path = server.state.config.socket
    order: list[tuple[str, object]] = []
    slow = threading.Thread(target=lambda: order.append(("mint", call(path, "MINT"))))

    def clients() -> None:
        slow.start()
        wait_for(began.exists, "scontrol run")
        order.append(("status", call(path, "STATUS")))
        # returning sends SIGTERM, the MINT still signing

    serve(server, clients)
    slow.join(10)
    assert [name for name, _ in order] == ["status", "mint"]
    assert order[1][1].ok and order[1][1].fields["token"] == token


def test_sighup_reloads_and_a_failed_reload_keeps_the_old(start, peer, make_state, caplog):
    peer(ROOT)
    new = make_state(lifetime=900)
    moved = dataclasses.replace(new.config, socket="/elsewhere/slurmjwtd.sock")  # takes a restart
    loads: list[str] = []

    def load():
        loads.append("load")
        if len(loads) == 1:
            raise ConfigError("config x: key 'lifetime': expected int, got str")
        return moved, new.signer

    server = start(load=load)
    config = server.state.config
    lifetimes = []

    def clients() -> None:
        for count in (1, 2):
            os.kill(os.getpid(), signal.SIGHUP)
            wait_for(lambda: len(loads) == count, "reload")  # a request now is served after it
            lifetimes.append(call(config.root_socket, "MINT", {"user": "nobody"}).fields["lifetime"])

    serve(server, clients)
    assert lifetimes == ["3600", "900"]
    assert server.state.config.lifetime == 900 and server.state.config.socket == config.socket
    assert "reload refused, still serving with the old configuration" in caplog.text
    assert f"socket changed: that takes a restart; keeping {config.socket}" in caplog.text


def test_latency_is_counted_for_every_answer(start):
    """Each answered request counts once in the latency histogram (from accept to answer);
    a connection that hangs up unanswered does not."""
    server = start()
    path = server.state.config.socket
    got = {}

    def clients() -> None:
        for _ in range(3):
            call(path, "STATUS")
        exchange(path, b"SJWT/1 NOSUCH\n")
        connect(path).close()  # nothing to answer
        got["metrics"] = call(path, "METRICS")

    serve(server, clients)
    fields = got["metrics"].fields
    counts = [int(item.rsplit(":", 1)[1]) for item in fields["latency"].split(",")]
    assert sum(counts) == 4 and fields["refusals"] == "bad-request:1"  # METRICS itself: after
    assert sum(server.state.counters.latency) == 5 and 0 < server.state.counters.latency_sum < 10


def test_without_the_fast_paths_library_python_serves_everything(start, monkeypatch, caplog):
    """A daemon whose _fastpath.so is missing (a checkout not built, a broken package) says so
    once and answers every request itself: the fast path is an accelerator, never a need."""
    from slurmjwtd import fastpath
    monkeypatch.setattr(fastpath, "LIBRARY", Path("/nonexistent/_fastpath.so"))
    with caplog.at_level("WARNING", logger="slurmjwtd"):
        server = start(fast_path=True)
    assert [r.getMessage() for r in caplog.records if "fast path off" in r.getMessage()] == [
        "fast path off, serving every request in Python: /nonexistent/_fastpath.so: cannot "
        "open shared object file: No such file or directory; build it with: make -C pam"]
    path = server.state.config.socket
    got = {}

    def client() -> None:
        got["status"] = call(path, "STATUS", {}, timeout=5)

    serve(server, client)
    assert got["status"].ok and got["status"].fields["fast_path"] == "off"
