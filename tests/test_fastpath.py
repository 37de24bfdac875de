"""The compiled fast path (slurmjwtd/_fastpath.so): real users asking real daemons.

Two daemons with one key and one policy, the fast path on in one and off in the other (the
Python loop, the reference), are asked the same requests by the same users; their answers and
audit lines must be the same but for what each token makes new (token, exp, jti, caller_pid).
And what changes a user's right to a token (logout, a dead leader, revoke, reload, the rate
limit) holds at once on the fast path too."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import jwt
import pytest

from conftest import PYTHON, SLURMJWT, FakeDaemon, make_key, run_as
from slurmjwtd import doctor
from slurmjwtd.audit import parse_audit
from slurmjwtd.client import call
from slurmjwtd.config import Config

# each line a request, sent on a connection of its own; prints each answer line
ASK = """
import socket, sys
for line in sys.argv[2:]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sys.argv[1])
    s.sendall(line.encode().decode("unicode_escape").encode("latin-1"))
    data = b""
    while not data.endswith(b"\\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    print(data.decode().rstrip("\\n") or "-")
"""
VALGRIND = ("valgrind", "--quiet", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect", "--error-exitcode=99")
VARYING = {"token", "exp", "jti", "caller_pid", "session", "node"}


def ask_as(user: str, sock: str, *requests: str) -> list[str]:
    """Each of REQUESTS (escapes allowed: \\n) sent as USER on its own connection; the answers."""
    result = run_as(user, PYTHON, "-c", ASK, sock, *requests)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def masked(answer: str) -> list[str]:
    """An answer's words with what each token makes new masked."""
    return [w.split("=", 1)[0] + "=*" if w.split("=", 1)[0] in VARYING else w for w in answer.split()]


def audit_lines(d, since: int = 0) -> list[dict[str, str]]:
    """The daemon's audit lines (logfmt after `AUDIT `), from the SINCE-th on, varying fields
    masked."""
    lines = [parse_audit(line.split(" AUDIT ", 1)[1]) for line in d.log.splitlines() if " AUDIT " in line]
    return [{k: ("*" if k in VARYING else v) for k, v in fields.items()} for fields in lines[since:]]


def metric(d, key: str) -> int:
    return int(call(d.root_socket, "METRICS", {}, timeout=5).fields[key])


@pytest.fixture
def pair(make_daemon, users, leaders):
    """pair(**settings): (fast, reference), both with SETTINGS and one key, each with a live
    session of alice."""

    def make(**settings: object):
        fast = make_daemon(**settings)
        reference = make_daemon(fast_path=False, key_file=str(fast.key_file), **settings)
        for d in (fast, reference):
            leaders(d.root_socket, users["alice"].pw_name)
        assert call(fast.socket, "STATUS", {}, timeout=5).fields["fast_path"] == "on"
        assert call(reference.socket, "STATUS", {}, timeout=5).fields["fast_path"] == "off"
        return fast, reference

    return make


def logged_in(make_daemon, users, leaders, **settings: object):
    """A daemon with SETTINGS and a live login of alice: (daemon, alice's name, her Leader)."""
    d = make_daemon(**settings)
    alice = users["alice"].pw_name
    return d, alice, leaders(d.root_socket, alice)


def test_a_users_own_tokens_come_from_the_fast_path_and_verify(pair, users):
    fast, _ = pair()
    alice = users["alice"].pw_name
    answers = ask_as(alice, fast.socket, *["SJWT/1 MINT\n"] * 5, "SJWT/1 MINT lifetime=60\n")
    assert all(a.startswith("SJWT/1 OK token=") for a in answers), answers
    # the first was Python's, which made the entry; the fast path answered the rest
    assert metric(fast, "fast_path_granted") == 5
    key = fast.key_file.read_bytes()
    jtis = set()
    for answer, lifetime in zip(answers, [3600] * 5 + [60]):
        fields = dict(w.split("=", 1) for w in answer.split()[2:])
        claims = jwt.decode(fields["token"], key, algorithms=["HS256"])
        assert claims["sun"] == alice and claims["exp"] - claims["iat"] == lifetime
        assert (claims["exp"], claims["jti"]) == (int(fields["exp"]), fields["jti"])
        assert jwt.get_unverified_header(fields["token"]) == {"alg": "HS256", "typ": "JWT"}
        jtis.add(claims["jti"])
    assert len(jtis) == 6
    assert metric(fast, "granted") == 6 + 1  # and alice's login


SCENARIOS = {
    "own tokens": ["SJWT/1 MINT\n"] * 4,
    "lifetimes": ["SJWT/1 MINT\n", "SJWT/1 MINT lifetime=60\n", "SJWT/1 MINT lifetime=43201\n",
                  "SJWT/1 MINT lifetime=0\n", "SJWT/1 MINT lifetime=0060\n",
                  "SJWT/1 MINT lifetime=1234567890\n", "SJWT/1 MINT lifetime=6\\xd9\\xa0\n"],
    "others and garbage": ["SJWT/1 MINT\n", "SJWT/1 MINT user=sjt-bob\n", "SJWT/1 MINT \n",
                           "SJWT/1 MINT lifetime=1 lifetime=2\n", "SJWT/1 MINT\nSJWT/1 MINT\n",
                           "SJWT/1 MINTY\n", "SJWT/1 MINT user=sjt-alice\n", "SJWT/2 MINT\n",
                           "SJWT/1 EXPLAIN user=sjt-alice\n"],
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_answers_and_audit_lines_are_the_python_loops(pair, users, scenario):
    fast, reference = pair()
    alice = users["alice"].pw_name
    out = []
    for d in (fast, reference):
        before = len(audit_lines(d))
        out.append(([masked(a) for a in ask_as(alice, d.socket, *SCENARIOS[scenario])],
                    audit_lines(d, before)))
    assert out[0] == out[1]
    if scenario == "own tokens":
        assert metric(fast, "fast_path_granted") == 3


@pytest.mark.parametrize("rate", [1, 3, 20])
def test_the_rate_limit_is_the_same_on_both(pair, users, rate):
    fast, reference = pair(rate_limit=rate, rate_window=3600)
    alice = users["alice"].pw_name
    codes = [[a.split()[1] if a.startswith("SJWT/1 OK") else a.split()[2]
              for a in ask_as(alice, d.socket, *["SJWT/1 MINT\n"] * (rate + 3))]
             for d in (fast, reference)]
    assert codes[0] == codes[1] == ["OK"] * rate + ["rate-limited"] * 3


def test_a_logout_ends_the_fast_paths_tokens_at_once(make_daemon, users, leaders):
    d, alice, login = logged_in(make_daemon, users, leaders)
    assert all(a.startswith("SJWT/1 OK") for a in ask_as(alice, d.socket, *["SJWT/1 MINT\n"] * 3))
    assert login.close().startswith("OK")  # CLOSE; the leader exits after it
    assert ask_as(alice, d.socket, "SJWT/1 MINT\n")[0].startswith("SJWT/1 ERR no-session")


def test_a_closed_session_whose_leader_lives_on_counts_no_more(make_daemon, users, leaders):
    """sshd's session process closes the PAM session before it exits: the fast path's entry,
    which knew that leader alive, must go with the CLOSE, not with the process."""
    d, alice, login = logged_in(make_daemon, users, leaders)
    assert all(a.startswith("SJWT/1 OK") for a in ask_as(alice, d.socket, *["SJWT/1 MINT\n"] * 3))
    assert call(d.root_socket, "CLOSE", {"session": login.session}, timeout=5).ok
    assert login.proc.poll() is None  # its leader still runs
    assert ask_as(alice, d.socket, "SJWT/1 MINT\n")[0].startswith("SJWT/1 ERR no-session")


def test_a_dead_leader_ends_them_at_once(make_daemon, users, leaders):
    d, alice, login = logged_in(make_daemon, users, leaders)
    assert all(a.startswith("SJWT/1 OK") for a in ask_as(alice, d.socket, *["SJWT/1 MINT\n"] * 3))
    login.die()
    assert ask_as(alice, d.socket, "SJWT/1 MINT\n")[0].startswith("SJWT/1 ERR no-session")


def test_another_login_keeps_them_going(make_daemon, users, leaders):
    d = make_daemon()
    alice = users["alice"].pw_name
    first = leaders(d.root_socket, alice)
    assert ask_as(alice, d.socket, *["SJWT/1 MINT\n"] * 2)[1].startswith("SJWT/1 OK")
    leaders(d.root_socket, alice)
    first.die()
    answers = ask_as(alice, d.socket, *["SJWT/1 MINT\n"] * 4)
    assert all(a.startswith("SJWT/1 OK") for a in answers), answers


def test_revoke_and_unrevoke_hold_at_once(make_daemon, users, leaders):
    d, alice, _ = logged_in(make_daemon, users, leaders)
    assert ask_as(alice, d.socket, *["SJWT/1 MINT\n"] * 2)[1].startswith("SJWT/1 OK")
    assert call(d.root_socket, "REVOKE", {"user": alice}, timeout=5).ok
    assert ask_as(alice, d.socket, "SJWT/1 MINT\n")[0].startswith("SJWT/1 ERR revoked")
    assert call(d.root_socket, "UNREVOKE", {"user": alice}, timeout=5).ok
    assert ask_as(alice, d.socket, "SJWT/1 MINT\n")[0].startswith("SJWT/1 OK")


def reload(d, **settings: object) -> None:
    """New SETTINGS in its configuration, then SIGHUP; wait until it has reloaded."""
    d.settings.update(settings)
    (d.dir / "slurmjwtd.toml").write_text(d.config_text())
    before = d.log.count("reloaded:")
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while d.log.count("reloaded:") == before:
        assert time.monotonic() < deadline, d.log
        time.sleep(0.02)


def test_a_reload_applies_a_new_policy_and_key_at_once(make_daemon, users, leaders):
    d, alice, _ = logged_in(make_daemon, users, leaders)
    assert ask_as(alice, d.socket, *["SJWT/1 MINT\n"] * 3)[2].startswith("SJWT/1 OK")
    reload(d, deny_users=[alice])
    assert ask_as(alice, d.socket, "SJWT/1 MINT\n")[0].startswith("SJWT/1 ERR policy-denied")
    reload(d, deny_users=[], lifetime=120)
    new_key = make_key(d.key_file, size=100)  # longer than SHA-256's block: HMAC hashes it
    reload(d)
    answers = ask_as(alice, d.socket, *["SJWT/1 MINT\n"] * 3)
    for answer in answers:
        token = dict(w.split("=", 1) for w in answer.split()[2:])["token"]
        claims = jwt.decode(token, new_key, algorithms=["HS256"])
        assert claims["exp"] - claims["iat"] == 120
    assert metric(d, "fast_path_granted") >= 2 + 2


def test_silent_connections_cost_others_nothing(make_daemon, users, leaders):
    """A user's connections that never send a request (more than a worker keeps waiting on)
    go to the Python loop, which drops them at their deadline; everyone else's tokens come
    meanwhile, from the fast path."""
    d = make_daemon(client_timeout=3.0)
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    leaders(d.root_socket, alice)
    ask_as(alice, d.socket, "SJWT/1 MINT\n")
    silent = subprocess.Popen(
        ["/usr/sbin/runuser", "-u", bob, "--", PYTHON, "-c",
         "import socket, sys, time\n"
         "socks = []\n"
         "for _ in range(30):\n"
         "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); socks.append(s)\n"
         "print('ready', flush=True); time.sleep(30)\n", d.socket],
        stdout=subprocess.PIPE, text=True)
    try:
        assert silent.stdout.readline().strip() == "ready"
        started = time.monotonic()
        answers = ask_as(alice, d.socket, *["SJWT/1 MINT\n"] * 20)
        assert time.monotonic() - started < 2.5  # well before the silent ones' deadline
        assert all(a.startswith("SJWT/1 OK") for a in answers), answers
    finally:
        silent.kill()
        silent.wait()
    assert d.alive()


def test_a_request_sent_in_pieces_is_answered(make_daemon, users, leaders):
    d, alice, _ = logged_in(make_daemon, users, leaders)
    ask_as(alice, d.socket, "SJWT/1 MINT\n")
    script = ("import socket, sys, time\n"
              "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
              "for piece in (b'SJWT/1 MI', b'NT life', b'time=90', b'\\n'):\n"
              "    s.sendall(piece); time.sleep(0.03)\n"
              "print(s.recv(4096).decode().strip())\n")
    result = run_as(alice, PYTHON, "-c", script, d.socket)
    assert result.stdout.startswith("SJWT/1 OK token=") and " lifetime=90" in result.stdout, result


def test_hanging_up_at_once_leaves_the_daemon_serving(make_daemon, users, leaders):
    d, alice, _ = logged_in(make_daemon, users, leaders)
    for _ in range(200):
        s = socket.socket(socket.AF_UNIX)
        s.connect(d.socket)
        s.close()
    assert ask_as(alice, d.socket, *["SJWT/1 MINT\n"] * 3)[2].startswith("SJWT/1 OK")
    assert d.alive()


def test_a_stop_answers_the_connections_the_fast_path_holds(make_daemon, users, leaders):
    """Connections accepted but not yet asked on, when the daemon is told to stop: the fast
    path's workers hand them over as they stop, and the Python loop answers each, as it does
    every request in flight at a stop, before the daemon exits."""
    d, alice, _ = logged_in(make_daemon, users, leaders)
    ask_as(alice, d.socket, "SJWT/1 MINT\n")
    script = ("import socket, sys\n"
              "socks = [socket.socket(socket.AF_UNIX) for _ in range(10)]\n"
              "for s in socks: s.connect(sys.argv[1])\n"
              "print('connected', flush=True); sys.stdin.readline()\n"
              "for s in socks: s.sendall(b'SJWT/1 MINT\\n')\n"
              "for s in socks: s.settimeout(10); print(s.recv(4096).decode().split()[1], flush=True)\n")
    client = subprocess.Popen(["/usr/sbin/runuser", "-u", alice, "--", PYTHON, "-c", script,
                               d.socket], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "connected"
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    out, _ = client.communicate("go\n", timeout=20)
    assert out.split() == ["OK"] * 10, out
    assert d.proc.wait(timeout=10) == 0, d.log


def test_with_another_signer_python_answers_everything(make_daemon, users, leaders, workdir):
    """The fast path signs HS256 only: with rs256 it passes every connection on, and says so."""
    pem = workdir / "fastpath-rs256.pem"
    pem.unlink(missing_ok=True)
    made = subprocess.run([SLURMJWT, "keygen", "--rs256", str(pem), "--kid", "sjt-fp"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    d = make_daemon(signer="rs256", rs256_key_file=str(pem), rs256_kid="sjt-fp")
    alice = users["alice"].pw_name
    leaders(d.root_socket, alice)
    answers = ask_as(alice, d.socket, *["SJWT/1 MINT\n"] * 3)
    for answer in answers:
        token = dict(w.split("=", 1) for w in answer.split()[2:])["token"]
        assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert call(d.socket, "STATUS", {}, timeout=5).fields["fast_path"] == "off"
    assert metric(d, "fast_path_granted") == 0 and metric(d, "fast_path_passed") >= 3
    assert "fast_path=off" in d.log


@pytest.mark.parametrize("signer, fast_path, configured, level", [
    ("hs256", "off", True, "WARNING"),  # it should be on: the library did not load
    ("hs256", "off", False, "ok"),      # fast_path = false: as asked
    ("hs256", "on", True, "ok"),
    ("rs256", "off", True, "ok"),       # rs256: the fast path passes everything on
])
def test_doctor_warns_when_the_fast_path_should_be_on_and_is_not(workdir, signer, fast_path,
                                                                   configured, level):
    path = str(workdir / "fake-status.sock")
    fake = FakeDaemon(path, f"SJWT/1 OK version=0.1.0 protocol=1 signer={signer} sessions=0 "
                            f"revocation_file=ok fast_path={fast_path} uptime=1\n".encode())
    try:
        finding = doctor.check_daemon(path, Config(fast_path=configured))
    finally:
        fake.close()
    assert finding.level == level, finding
    if level == "WARNING":
        assert finding.what.endswith("but without its fast path")
        assert finding.fix.startswith("see why: journalctl -u slurmjwtd -g 'fast path off'")
    else:
        assert finding.what.endswith(f"(signer {signer}, fast path {fast_path})")


def test_the_library_is_hardened_and_exports_only_its_api():
    library = str(Path(__file__).resolve().parent.parent / "slurmjwtd" / "_fastpath.so")
    dynamic = subprocess.run(["readelf", "-dW", library], capture_output=True, text=True).stdout
    segments = subprocess.run(["readelf", "-lW", library], capture_output=True, text=True).stdout
    assert "BIND_NOW" in dynamic and "GNU_RELRO" in segments
    stack = [line for line in segments.splitlines() if "GNU_STACK" in line]
    assert stack and "RWE" not in stack[0]
    symbols = subprocess.run(["nm", "-D", "--defined-only", library], capture_output=True,
                             text=True).stdout.split()
    functions = {symbols[i + 1] for i, kind in enumerate(symbols) if kind == "T"}
    assert functions == {"sjf_start", "sjf_stop", "sjf_set_key", "sjf_take", "sjf_put",
                         "sjf_take_all", "sjf_take_expired", "sjf_take_counters"}
    libc = subprocess.run(["nm", "-D", "--undefined-only", library], capture_output=True,
                          text=True).stdout
    assert "__stack_chk_fail" in libc and "explicit_bzero" in libc


@pytest.mark.parametrize("audit", ["file", "journal"])
def test_no_errors_or_leaks_under_valgrind(users, workdir, audit):
    """The library's whole API from C (tests/fastpath_check.c: a table entry, a user's MINTs
    answered, a STATUS and MINTs handed over, the counters, the lease, a stop with an entry
    left), under valgrind, with the audit to a file and to the journal's socket."""
    checkout = Path(__file__).resolve().parent.parent
    built = subprocess.run(["make", "-s", "-C", str(checkout / "pam"), "../tests/fastpath_check"],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    d = workdir / "fastpath-check"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o755)
    log = d / "audit.log"
    run = subprocess.run([*VALGRIND, str(checkout / "tests" / "fastpath_check"), str(d / "sock"),
                          str(log) if audit == "file" else "-", str(users["alice"].pw_uid), "20"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    # valgrind is slow: some MINTs were not there yet when accepted, and were handed over
    out = dict(w.split("=") for w in run.stdout.split())
    granted, handed_over = int(out["granted"]), int(out["handed_over"])
    assert granted >= 1 and handed_over >= 1 and granted + handed_over == 20 + 1, out
    if audit == "file":
        lines = log.read_text().splitlines()
        assert len(lines) == granted
        assert all(" slurmjwtd AUDIT decision=granted op=mint " in x for x in lines)
    shutil.rmtree(d)
