"""Hostile and careless clients: each gets an error or is dropped at its deadline,
and the daemon goes on serving everyone else."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import MODULE, PYTHON, SLURMJWT, run_as
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


@pytest.mark.parametrize("lifetime", [
    b"%C2%B2",  # a superscript two: str.isdigit() says yes, int() raised (ERR internal)
    b"%D9%A3%D9%A6%D9%A0%D9%A0",  # 3600 in Arabic-Indic digits: int() took it
    b"%EF%BC%91%EF%BC%90",  # fullwidth 10
    b"+60", b"%2060", b"60%20", b"1_000", b"0x10", b"-1", b"0", b"1e3", b"9999999999", b"",
])
def test_only_ascii_digits_make_a_lifetime(hostile, lifetime):
    """Each is refused bad-request, audited once, with no traceback in the log."""
    answer = answer_to(hostile.socket, b"SJWT/1 MINT user=sjt-alice lifetime=" + lifetime + b"\n")
    assert answer.startswith(b"SJWT/1 ERR bad-request lifetime must be a whole number"), answer
    still_serves(hostile)
    log = hostile.log
    assert log.count("decision=refused") == 1 and "code=bad-request" in log, log
    assert "Traceback" not in log and "internal" not in log, log


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


# -- the request size limit, at the boundary -------------------------------------------------
def request_of(size: int) -> bytes:
    """A MINT for a user nobody has, SIZE bytes with its newline."""
    head = b"SJWT/1 MINT user="
    return head + b"a" * (size - len(head) - 1) + b"\n"


@pytest.mark.parametrize("size, code", [(1023, b"unknown-user"), (1024, b"unknown-user"),
                                        (1025, b"too-large")])
def test_a_request_may_be_1024_bytes_with_its_newline_not_more(hostile, size, code):
    data = request_of(size)
    assert len(data) == size
    assert answer_to(hostile.socket, data).startswith(b"SJWT/1 ERR " + code + b" ")
    with connect(hostile.socket) as s:  # the same, the newline arriving on its own
        s.sendall(data[:-1])
        time.sleep(0.05)
        try:
            s.sendall(b"\n")
        except BrokenPipeError:  # too large: answered and closed on the 1024th byte already
            pass
        assert s.recv(500).startswith(b"SJWT/1 ERR " + code + b" ")
    still_serves(hostile)


# -- logins have a socket of their own -------------------------------------------------------
def test_open_and_close_are_taken_only_on_the_root_socket(hostile, users, leaders):
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    assert oct(os.stat(hostile.root_socket).st_mode & 0o777) == "0o600"
    assert oct(os.stat(hostile.socket).st_mode & 0o777) == "0o666"
    leader = leaders(hostile.root_socket, alice)
    for op, args in (("OPEN", {"user": bob}), ("CLOSE", {"session": leader.session})):
        refused = call(hostile.socket, op, args)  # root, on the public socket
        assert refused.code == "permission-denied", refused
        assert f"only on the root socket {hostile.root_socket}" in refused.message
    assert "reason=public-socket" in hostile.log
    assert call(hostile.socket, "STATUS").fields["sessions"] == "1"  # none opened, none closed
    assert call(hostile.root_socket, "MINT", {"user": alice}).ok  # root's other requests work there
    # an ordinary user cannot even connect to it
    probe = run_as(alice, PYTHON, "-c", "import socket, sys\n"
                   "try:\n    socket.socket(socket.AF_UNIX).connect(sys.argv[1])\n"
                   "except PermissionError:\n    print('EACCES')\n", hostile.root_socket)
    assert probe.stdout.strip() == "EACCES", probe.stderr
    assert leader.close() == "OK"


FLOOD = """
import errno, socket, sys, threading, time
path, seconds = sys.argv[1], float(sys.argv[2])
stop = time.monotonic() + seconds
totals = [0, 0]
lock = threading.Lock()
def flood():
    made = full = 0
    while time.monotonic() < stop:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(path)
        s.close()
        made += err == 0
        full += err == errno.EAGAIN
    with lock:
        totals[0] += made
        totals[1] += full
threads = [threading.Thread(target=flood) for _ in range(200)]
for t in threads:
    t.start()
print("flooding", flush=True)
for t in threads:
    t.join()
print(*totals, flush=True)
"""
FLOOD_SECONDS = 10


@pytest.mark.parametrize("fast_path", [False, True], ids=["python-loop", "fast-path"])
def test_a_flood_of_connects_on_the_public_socket_does_not_delay_logins(make_daemon, users,
                                                                        fast_path):
    """200 threads of one user connect without blocking in a tight loop while 100 logins go
    through the PAM module, on the root socket; each gets its token.

    python-loop: the Python loop alone accepts on the public socket, whose backlog the flood
    keeps full (issue 10's case); each login within 100 ms (here: max 2-7 ms).
    fast-path: its workers accept and hang up on the flood as fast as it connects, so the
    backlog fills only now and then, and the flood keeps both CPUs of a 2-CPU machine busy;
    the logins wait for a CPU, not for the flood: median under 20 ms (here 2-7), 95 of 100
    within 100 ms (here 8-22), every one within half the module's 2 s timeout (here 11-86)."""
    import pam  # python-pam

    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    d = make_daemon(fast_path=fast_path)
    service = Path("/etc/pam.d/sjt-flood")
    service.write_text("auth required pam_permit.so\naccount required pam_permit.so\n"
                       f"session required {MODULE} socket={d.root_socket}\n")
    # in a session of its own, as a user's processes are (sshd's setsid), so the scheduler
    # shares the CPU between the user's session and the daemon, not among the 200 threads
    flood = subprocess.Popen(["/usr/sbin/runuser", "-u", alice, "--", PYTHON, "-c", FLOOD,
                              d.socket, str(FLOOD_SECONDS)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    took = []
    try:
        assert flood.stdout.readline().strip() == "flooding"
        time.sleep(0.5)  # the backlog fills
        started = time.monotonic()
        for _ in range(100):
            p = pam.PamAuthenticator()
            assert p.authenticate(bob, "", service=service.name, call_end=False), p.reason
            before = time.monotonic()
            assert p.open_session() == pam.PAM_SUCCESS
            took.append(time.monotonic() - before)
            assert p.getenv("SLURM_JWT").startswith("eyJ")
            assert p.close_session() == pam.PAM_SUCCESS
            p.end()
            time.sleep(0.03)  # spread over the flood
        assert time.monotonic() - started < FLOOD_SECONDS - 1  # all of them during the flood
        out = flood.stdout.read()  # the flood ends on its own, after FLOOD_SECONDS
        assert flood.wait(timeout=20) == 0, flood.stderr.read()[-2000:]
        made, full = map(int, out.split())
    finally:
        flood.kill()
        flood.wait()
        service.unlink()
    took.sort()
    print(f"flood: {made} connects, {full} EAGAIN; logins: median {took[50] * 1000:.1f} ms, "
          f"95th {took[94] * 1000:.1f} ms, max {took[-1] * 1000:.1f} ms")
    if fast_path:
        assert made > 2000 * FLOOD_SECONDS  # 2,000 connects a second at least (here 20,000-40,000)
        assert took[50] < 0.02 and took[94] < 0.1 and took[-1] < 1.0, took[-10:]
    else:
        assert full > 1000  # the public socket's queue was full (here 150,000-250,000 EAGAIN)
        assert took[-1] < 0.1, took[-10:]
    still_serves(d)


# -- the audit log under a flood of refusals -------------------------------------------------
REFUSALS = """
import socket, sys, threading, time
from collections import Counter
path, seconds = sys.argv[1], float(sys.argv[2])
stop = time.monotonic() + seconds
counts = Counter()
lock = threading.Lock()
REQUESTS = (b"garbage\\n", b"SJWT/1 MINT\\n", b"")  # bad-request; no-session; timeout
def refused(kind):
    mine = Counter()
    while time.monotonic() < stop:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        try:
            s.sendall(REQUESTS[kind])
        except BrokenPipeError:
            pass
        mine[s.recv(200).split(b" ")[2].decode()] += 1
        s.close()
    with lock:
        counts.update(mine)
# threads 0-2 hold a connection each, silent until their deadline; 4 is the cap: the
# rest compete for the one place left, most are answered busy
threads = [threading.Thread(target=refused, args=(kind,)) for kind in [2, 2, 2] + [0, 1] * 4]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(" ".join(f"{code}={n}" for code, n in counts.items()), flush=True)
"""
INTERVAL = 1.0  # audit_summary_interval of the test's daemon


def audit_of(log: str) -> list[dict[str, str]]:
    return [dict(word.split("=", 1) for word in line.split(" AUDIT ", 1)[1].split(" ")
                 if "=" in word) for line in log.splitlines() if " AUDIT " in line]


def test_a_flood_of_refusals_is_summarized_and_loses_no_grant(make_daemon, users):
    """One user is refused as fast as the daemon answers for a few seconds (bad-request,
    no-session, busy): the audit log has the first refusal of each code in full, then one
    count per interval, and every OPEN, MINT and CLOSE made for another user meanwhile."""
    alice, bob = users["alice"], users["bob"].pw_name
    d = make_daemon(max_clients_per_uid=4, client_timeout=1, audit_summary_interval=INTERVAL)
    seconds = 4
    flood = subprocess.Popen(["/usr/sbin/runuser", "-u", alice.pw_name, "--", PYTHON, "-c",
                              REFUSALS, d.socket, str(seconds)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    sessions, jtis = [], []
    started = time.monotonic()
    while time.monotonic() - started < seconds:  # a login's OPEN, its MINT, its CLOSE
        opened = call(d.root_socket, "OPEN", {"user": bob})
        minted = call(d.socket, "MINT", {"user": bob})
        closed = call(d.root_socket, "CLOSE", {"session": opened.fields["session"]})
        assert opened.ok and minted.ok and closed.ok
        sessions.append(opened.fields["session"])
        jtis += [opened.fields["jti"], minted.fields["jti"]]
        time.sleep(0.01)
    out = flood.stdout.read()
    assert flood.wait(timeout=20) == 0, flood.stderr.read()[-2000:]
    answered = {code: int(n) for code, n in (word.split("=") for word in out.split())}
    assert {"bad-request", "no-session", "busy", "timeout"} <= answered.keys(), answered
    time.sleep(INTERVAL + 1)  # the last interval's counts are written
    lines = audit_of(d.log)
    for session in sessions:
        assert [a["op"] for a in lines if a.get("session") == session] == ["open", "close"]
    granted = {a["jti"] for a in lines if a["decision"] == "granted" and "jti" in a}
    assert set(jtis) <= granted and len(jtis) > 50
    hers = [a for a in lines if a.get("caller_uid") == str(alice.pw_uid)]
    for code, n in answered.items():
        full = [a for a in hers if a["decision"] == "refused" and a["code"] == code]
        summaries = [a for a in hers if a["decision"] == "summary" and a["code"] == code]
        # the first in full (again after an interval without any: busy, timeout come in bursts)
        continuous = code in ("bad-request", "no-session")
        assert len(full) == 1 if continuous else len(full) <= seconds / INTERVAL + 1
        assert len(full) + sum(int(a["count"]) for a in summaries) == n  # all others counted
        assert len(summaries) <= seconds / INTERVAL + 2  # one count per interval
        assert all(float(a["seconds"]) >= INTERVAL for a in summaries)
    assert len(hers) <= 3 * (seconds / INTERVAL + 3) and sum(answered.values()) > 1000
    print(f"{sum(answered.values())} refusals {answered}: {len(hers)} audit lines; "
          f"{len(jtis)} grants, {len(sessions)} logins of another user, all audited")
    still_serves(d)


HOG = """
import socket, subprocess, sys, time
from slurmjwtd import client
path, cli = sys.argv[1], sys.argv[2]
hold = []
for _ in range(8):  # 4 open (the cap), then 4 answered busy that write nothing
    s = socket.socket(socket.AF_UNIX); s.connect(path); hold.append(s)
time.sleep(0.2)
s = socket.socket(socket.AF_UNIX); s.connect(path); time.sleep(0.3)
try:
    s.sendall(b"SJWT/1 STATUS\\n"); print("wrote")
except BrokenPipeError:  # the condition: closed before the write
    print("EPIPE", s.recv(200).split()[2].decode())
late = socket.socket.sendall
def sendall(self, data):  # writes only once the daemon has answered busy and closed
    time.sleep(0.3)
    return late(self, data)
socket.socket.sendall = sendall
print(client.call(path, "STATUS").code)
socket.socket.sendall = late
run = subprocess.run([cli, "--socket", path, "token"], capture_output=True, text=True)
print(run.returncode, run.stderr.strip())
"""


def test_a_client_reads_the_busy_answer_even_when_its_write_fails(make_daemon, users):
    """Past the cap, `busy` is answered and the connection closed before the client writes:
    its write fails (EPIPE), and it still reads the answer; the CLI says busy, exit 6."""
    d = make_daemon(max_clients_per_uid=4, client_timeout=5)
    result = run_as(users["alice"].pw_name, PYTHON, "-c", HOG, d.socket, SLURMJWT)
    raw, code, cli = result.stdout.splitlines()
    assert raw == "EPIPE busy" and code == "busy", result.stderr
    assert cli.startswith("6 ") and "busy" in cli, cli
    still_serves(d)


def test_counts_of_refusals_not_yet_written_are_written_when_the_daemon_stops(make_daemon, users):
    d = make_daemon(audit_summary_interval=3600)
    alice = users["alice"].pw_name
    for _ in range(3):  # no login: refused, no-session
        assert d.token_as(alice).returncode != 0
    assert d.stop() == 0
    refusals = [a for a in audit_of(d.log) if a.get("caller_uid") == str(users["alice"].pw_uid)]
    assert [(a["decision"], a.get("count")) for a in refusals] == [("refused", None), ("summary", "2")]
