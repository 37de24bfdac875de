"""Hostile and careless clients: each gets an error or is dropped at its deadline,
and the daemon goes on serving everyone else."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import pytest

from conftest import PYTHON, run_as
from slurmjwtd.client import call

TIMEOUT = 0.5  # the test daemon's client_timeout


@pytest.fixture
def hostile(make_daemon, users):
    return make_daemon(client_timeout=TIMEOUT, max_clients_per_uid=4)


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def answer_to(path: str, data: bytes) -> bytes:
    with connect(path) as s:
        s.sendall(data)
        return s.recv(8192)


def still_serves(d) -> None:
    assert d.alive()
    answer = call(d.socket, "MINT", {"user": "sjt-alice"}, timeout=2)
    assert answer.ok and answer.fields["user"] == "sjt-alice"


@pytest.mark.parametrize("data, code", [
    (b"\x00\xff\xfe garbage\n", b"bad-request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"bad-request"),
    (b"SJWT/1 MINT\nSJWT/1 MINT\n", b"bad-request"),  # one request per connection
    (b"SJWT/1 MINT user=sjt-alice token=forged\n", b"bad-request"),
    (b"SJWT/1 SHUTDOWN\n", b"bad-request"),
    (b"SJWT/9 MINT\n", b"unsupported-version"),
    (b"A" * 5000, b"too-large"),
    (b"SJWT/1 MINT user=" + b"a" * 2000 + b"\n", b"too-large"),
])
def test_bad_input_gets_a_coded_error(hostile, data, code):
    answer = answer_to(hostile.socket, data)
    assert answer.startswith(b"SJWT/1 ERR " + code + b" ") and answer.endswith(b"\n")
    still_serves(hostile)


def test_silent_client_is_dropped_at_its_deadline_while_others_are_served(hostile):
    with connect(hostile.socket) as silent:
        started = time.monotonic()
        still_serves(hostile)  # answered while the silent client holds its connection
        assert time.monotonic() - started < TIMEOUT
        assert silent.recv(200).startswith(b"SJWT/1 ERR timeout ")
    still_serves(hostile)


def test_client_that_hangs_up_mid_request(hostile):
    for data in (b"", b"SJWT/1 MI", b"SJWT/1 MINT user=sjt-al"):
        s = connect(hostile.socket)
        s.sendall(data)
        s.close()
    with connect(hostile.socket) as s:  # half-close without a newline
        s.sendall(b"SJWT/1 MINT")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(200) == b""
    still_serves(hostile)


def test_client_that_never_reads_its_answer(hostile):
    socks = [connect(hostile.socket) for _ in range(20)]
    for s in socks:
        s.sendall(b"SJWT/1 STATUS\n")
    still_serves(hostile)
    for s in socks:
        s.close()


def test_one_uid_cannot_hog_the_daemon(hostile, users):
    """A user holding max_clients_per_uid idle connections is refused `busy`; root is not."""
    alice = users["alice"].pw_name
    script = (
        "import socket, sys\n"
        "hold = []\n"
        "for _ in range(4):\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); hold.append(s)\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
        "s.sendall(b'SJWT/1 STATUS\\n'); print(s.recv(200).decode().split()[2])\n"
    )
    result = run_as(alice, PYTHON, "-c", script, hostile.socket)
    assert result.stdout.strip() == "busy", result.stderr
    still_serves(hostile)


def test_many_clients_at_once(hostile):
    def mint(_: int) -> bool:
        return call(hostile.socket, "MINT", {"user": "sjt-alice"}, timeout=10).ok

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(mint, range(1000)))
    assert all(results)
    with connect(hostile.socket) as idle:  # and with a slow client among them
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            assert all(pool.map(mint, range(100)))
        idle.sendall(b"SJWT/1 STATUS\n")
        assert idle.recv(500).startswith(b"SJWT/1 OK ")
    still_serves(hostile)


def test_running_out_of_descriptors_pauses_accepting_then_recovers(make_daemon, users):
    d = make_daemon(prefix=("prlimit", "--nofile=48:48"), client_timeout=TIMEOUT)
    idle = [connect(d.socket) for _ in range(80)]  # root: no per-uid cap; more than 48 fds
    try:
        answer = call(d.socket, "MINT", {"user": "sjt-alice"}, timeout=TIMEOUT * 6)
        assert answer.ok  # served once the idle clients were dropped at their deadline
    finally:
        for s in idle:
            s.close()
    assert "pausing new connections" in d.log
    still_serves(d)
