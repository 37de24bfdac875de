"""pam_slurmjwt.so in a real PAM stack, driven by python-pam and pamtester.

A token after open_session, the session gone after close_session, and every
failure (daemon down, refusal, garbage, an over-long answer, a daemon that never
answers) bounded by the timeout, logged in one authpriv line, no variable set,
and the documented PAM code: `optional` stacks go on, `required` ones deny
where the module says PAM_SESSION_ERR.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import socket
import subprocess
import time
from pathlib import Path

import jwt
import pam
import pytest

from conftest import FakeDaemon, MODULE, SLURMJWT, run_as

TIMEOUT_MS = 400
SERVICES = ("sjt-pam-optional", "sjt-pam-required")
SYSLOG = Path("/dev/log")
SYSLOG_MARK = Path("/run/slurmjwt-test-devlog")
LOG_AUTHPRIV = 10


def write_service(name: str, socket_path: str, control: str, extra: str = "") -> None:
    Path("/etc/pam.d", name).write_text(
        "auth required pam_permit.so\n"
        "account required pam_permit.so\n"
        "session required pam_permit.so\n"
        f"session {control} {MODULE} socket={socket_path} timeout={TIMEOUT_MS} {extra}\n")


@pytest.fixture
def stacks():
    """Write the two test PAM services for a socket; remove them afterwards."""
    def point_at(socket_path: str, extra: str = "") -> None:
        write_service(SERVICES[0], socket_path, "optional", extra)
        write_service(SERVICES[1], socket_path, "required", extra)

    yield point_at
    for name in SERVICES:
        Path("/etc/pam.d", name).unlink(missing_ok=True)


class SyslogCapture:
    """A datagram socket at /dev/log: what the module sends to syslog lands here."""

    def __init__(self) -> None:
        if SYSLOG_MARK.exists():  # ours, left by a crashed run
            SYSLOG.unlink(missing_ok=True)
        self.saved = None
        if SYSLOG.exists():  # a real syslog: step it aside for the test, then put it back
            self.saved = SYSLOG.with_name("log.slurmjwt-test")
            SYSLOG.rename(self.saved)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(SYSLOG))
        SYSLOG_MARK.touch()
        os.chmod(SYSLOG, 0o666)
        self.sock.setblocking(False)

    def records(self) -> list[tuple[int, str]]:
        """(facility, message) of everything logged since the last call."""
        out = []
        while True:
            try:
                data = self.sock.recv(8192).decode(errors="replace")
            except BlockingIOError:
                return out
            priority, _, message = data[1:].partition(">")
            out.append((int(priority) // 8, message))

    def module_lines(self) -> list[str]:
        return [m for facility, m in self.records()
                if "pam_slurmjwt" in m and facility == LOG_AUTHPRIV]

    def close(self) -> None:
        self.sock.close()
        SYSLOG.unlink(missing_ok=True)
        SYSLOG_MARK.unlink(missing_ok=True)
        if self.saved is not None:
            self.saved.rename(SYSLOG)


@pytest.fixture
def syslog():
    capture = SyslogCapture()
    yield capture
    capture.close()


def pamtester(service: str, user: str, *ops: str, prefix: tuple[str, ...] = ()):
    started = time.monotonic()
    result = subprocess.run([*prefix, "pamtester", "-v", "-I", "rhost=198.51.100.4", service, user,
                             *(ops or ("open_session",))], capture_output=True, text=True,
                            timeout=60)
    return result, time.monotonic() - started


# -- the working path ----------------------------------------------------------------------
def test_open_session_puts_a_token_in_the_pam_environment(daemon, users, stacks):
    alice = users["alice"].pw_name
    stacks(daemon.root_socket)
    p = pam.PamAuthenticator()
    assert p.authenticate(alice, "", service=SERVICES[1], call_end=False), p.reason
    p.pam_set_item(p.handle, pam.PAM_RHOST, ctypes.c_char_p(b"203.0.113.9"))
    try:
        assert p.open_session() == pam.PAM_SUCCESS
        token = p.getenv("SLURM_JWT")
        claims = jwt.decode(token, daemon.key_file.read_bytes(), algorithms=["HS256"])
        assert claims["sun"] == alice and claims["exp"] - claims["iat"] == 3600
        refresh = run_as(alice, SLURMJWT, "refresh", env={"SLURMJWT_SOCKET": daemon.socket})
        assert refresh.returncode == 0, refresh.stderr  # the login's session counts
        assert p.close_session() == pam.PAM_SUCCESS
    finally:
        p.end()
    after = run_as(alice, SLURMJWT, "refresh", env={"SLURMJWT_SOCKET": daemon.socket})
    assert after.returncode == 5 and "no-session" in after.stderr  # the last session closed
    opened = [line for line in daemon.log.splitlines() if f"session={claims['jti']}" in line
              or ("op=open" in line and f"jti={claims['jti']}" in line)]
    assert opened and "rhost=203.0.113.9" in opened[0] and f"service={SERVICES[1]}" in opened[0]


def test_env_argument_names_the_variable(daemon, users, stacks):
    stacks(daemon.root_socket, "env=SLURM_JWT_TOKEN")
    p = pam.PamAuthenticator()
    assert p.authenticate(users["bob"].pw_name, "", service=SERVICES[0], call_end=False)
    try:
        assert p.open_session() == pam.PAM_SUCCESS
        assert p.getenv("SLURM_JWT") is None
        jwt.decode(p.getenv("SLURM_JWT_TOKEN"), daemon.key_file.read_bytes(), algorithms=["HS256"])
        assert p.close_session() == pam.PAM_SUCCESS
    finally:
        p.end()


def test_pamtester_opens_and_closes(daemon, users, stacks):
    stacks(daemon.root_socket)
    result, _ = pamtester(SERVICES[1], users["alice"].pw_name, "open_session", "close_session")
    assert result.returncode == 0, result.stderr
    lines = [line for line in daemon.log.splitlines() if "rhost=198.51.100.4" in line]
    assert lines and "op=open" in lines[-1]
    session = lines[-1].split("session=")[1].split()[0]
    assert "op=close caller_uid=0" in daemon.log and f"session={session}" in daemon.log.split(
        "op=close")[-1]


def test_user_refused_by_policy_logs_in_without_a_token(daemon, users, stacks, syslog):
    stacks(daemon.root_socket)
    for service in SERVICES:  # PAM_IGNORE: even a `required` stack lets them in
        p = pam.PamAuthenticator()
        assert p.authenticate(users["sys"].pw_name, "", service=service, call_end=False)
        try:
            assert p.open_session() == pam.PAM_SUCCESS
            assert p.getenv("SLURM_JWT") is None
            assert p.close_session() == pam.PAM_SUCCESS
        finally:
            p.end()
    lines = syslog.module_lines()
    assert len(lines) == 2 and all("below-min-uid" in line for line in lines), lines


# -- failures: bounded, logged once, no variable, the documented code -----------------------
FAILURES = {
    # name: (what the daemon does, PAM code the module returns, what the log line says)
    "never-answers": (None, "PAM_SESSION_ERR", "did not answer in time"),
    "garbage": (b"HTTP/1.1 200 OK\r\n\r\n", "PAM_SESSION_ERR", "garbled answer"),
    "over-long": (b"SJWT/1 OK token=" + b"a" * 5000, "PAM_SESSION_ERR", "garbled answer"),
    "no-newline": (b"SJWT/1 OK token=a.b.c", "PAM_SESSION_ERR", "did not answer in time"),
    "nul-byte": (b"SJWT/1 OK token=a\0b session=x\n", "PAM_SESSION_ERR", "garbled answer"),
    "internal-error": (b"SJWT/1 ERR internal boom\n", "PAM_SESSION_ERR", "refused (internal)"),
    "bad-request": (b"SJWT/1 ERR bad-request boom\n", "PAM_SESSION_ERR", "refused (bad-request)"),
    "unknown-code": (b"SJWT/1 ERR a-later-code boom\n", "PAM_SESSION_ERR", "refused (a-later-code)"),
    "ok-without-token": (b"SJWT/1 OK session=abc\n", "PAM_SESSION_ERR", "lacks a token"),
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_misbehaving_daemon(workdir, users, stacks, syslog, name):
    behaviour, code, says = FAILURES[name]
    path = str(workdir / f"fake-{name}.sock")
    fake = FakeDaemon(path, behaviour)
    stacks(path)
    try:
        optional, took = pamtester(SERVICES[0], users["alice"].pw_name)
        required, took_required = pamtester(SERVICES[1], users["alice"].pw_name)
    finally:
        fake.close()
    assert optional.returncode == 0, optional.stderr  # `optional`: the login goes on
    assert required.returncode != 0  # `required`: PAM_SESSION_ERR denies
    assert "Cannot make/remove an entry for the specified session" in required.stderr
    for elapsed in (took, took_required):
        assert elapsed < TIMEOUT_MS / 1000 + 1.0  # the timeout, plus pamtester's own start
    if says == "did not answer in time":
        assert took >= TIMEOUT_MS / 1000
    lines = syslog.module_lines()
    assert len(lines) == 2 and all(says in line for line in lines), lines
    assert "a" * 50 not in " ".join(lines)


@pytest.mark.parametrize("code", ["no-session", "lifetime-too-long", "policy-denied"])
def test_refusal_codes_leave_the_login_alone(workdir, users, stacks, syslog, code):
    """A code of class refusal (protocol.Code) is PAM_IGNORE: even a `required` stack logs in,
    with one notice line naming the code."""
    path = str(workdir / f"fake-{code}.sock")
    fake = FakeDaemon(path, f"SJWT/1 ERR {code} no token for you\n".encode())
    stacks(path)
    try:
        required, _ = pamtester(SERVICES[1], users["alice"].pw_name)
    finally:
        fake.close()
    assert required.returncode == 0, required.stderr
    lines = syslog.module_lines()
    assert len(lines) == 1 and f"refused ({code})" in lines[0], lines


# -- a daemon that lies: the module checks what it can itself --------------------------------
SHAPED = "eyJhbGciOiJIUzI1NiJ9.eyJzdW4iOiJ4In0.c2lnbmF0dXJl"  # a JWT's shape; nothing verifies it


def lying_answers(alice, bob) -> dict[str, str]:
    """name: an OK answer for alice's login that is wrong in one way the module can see."""
    ids = f"uid={alice.pw_uid} gid={alice.pw_gid}"
    return {
        "empty-token": f"session=s1 token= user={alice.pw_name} {ids}",
        "not-a-jwt": f"session=s1 token=abc user={alice.pw_name} {ids}",
        "two-parts": f"session=s1 token=abc.def user={alice.pw_name} {ids}",
        "four-parts": f"session=s1 token={SHAPED}.x user={alice.pw_name} {ids}",
        "empty-part": f"session=s1 token=abc..def user={alice.pw_name} {ids}",
        "not-base64url": f"session=s1 token=a.b~c.d user={alice.pw_name} {ids}",
        "too-long": f"session=s1 token={'a' * 1500}.{'b' * 1500}.{'c' * 100} {ids}",
        "empty-session": f"session= token={SHAPED} user={alice.pw_name} {ids}",
        "bobs-uid": f"session=s1 token={SHAPED} user={alice.pw_name} uid={bob.pw_uid} gid={bob.pw_gid}",
        "root-uid": f"session=s1 token={SHAPED} user={alice.pw_name} uid=0 gid=0",
        "other-gid": f"session=s1 token={SHAPED} user={alice.pw_name} uid={alice.pw_uid} gid=0",
        "uid-not-a-number": f"session=s1 token={SHAPED} user={alice.pw_name} uid=-1 gid={alice.pw_gid}",
        "bobs-name": f"session=s1 token={SHAPED} user={bob.pw_name} {ids}",
    }


@pytest.mark.parametrize("name", list(lying_answers(pwd.getpwuid(0), pwd.getpwuid(0))))
def test_lying_daemon_sets_nothing(workdir, users, stacks, syslog, name):
    """An OK answer whose token is not a JWT, whose session is empty, or whose account is not
    PAM_USER's passwd entry: one log line, PAM_SESSION_ERR, no variable."""
    alice, bob = users["alice"], users["bob"]
    path = str(workdir / f"liar-{name}.sock")
    file = f"file=/run/slurmjwt-tokens/{alice.pw_uid}/token"
    fake = FakeDaemon(path, f"SJWT/1 OK {lying_answers(alice, bob)[name]} {file}\n".encode())
    stacks(path)
    try:
        p = pam.PamAuthenticator()
        assert p.authenticate(alice.pw_name, "", service=SERVICES[0], call_end=False), p.reason
        try:
            assert p.open_session() == pam.PAM_SUCCESS  # `optional`: the login goes on
            assert p.getenv("SLURM_JWT") is None and p.getenv("SLURMJWT_TOKEN_FILE") is None
            assert p.close_session() == pam.PAM_SUCCESS  # nothing opened: nothing to close
        finally:
            p.end()
        required, _ = pamtester(SERVICES[1], alice.pw_name)
    finally:
        fake.close()
    assert required.returncode != 0  # PAM_SESSION_ERR
    assert "Cannot make/remove an entry for the specified session" in required.stderr
    lines = syslog.module_lines()
    assert len(lines) == 2, lines
    assert all("garbled answer from slurmjwtd" in line and alice.pw_name in line for line in lines), lines
    assert SHAPED.split(".")[2] not in " ".join(lines)  # never the token


def fake_login(workdir, stacks, user, answer: str) -> pam.PamAuthenticator:
    """A login through the `required` stack against a fake daemon answering ANSWER."""
    path = str(workdir / "truthful.sock")
    fake = FakeDaemon(path, f"SJWT/1 OK {answer}\n".encode())
    stacks(path)
    try:
        p = pam.PamAuthenticator()
        assert p.authenticate(user, "", service=SERVICES[1], call_end=False), p.reason
        assert p.open_session() == pam.PAM_SUCCESS
        return p
    finally:
        fake.close()


def test_truthful_fake_daemon_sets_the_variable_and_the_file_path(workdir, users, stacks):
    """The control for the test above: the same fake, answering what the module can check
    as true, gets its token and its file's path (SLURMJWT_TOKEN_FILE) set."""
    alice = users["alice"]
    file = f"/srv/tokens/{alice.pw_uid}/token"
    p = fake_login(workdir, stacks, alice.pw_name, f"session=s1 token={SHAPED} user={alice.pw_name} "
                   f"uid={alice.pw_uid} gid={alice.pw_gid} file={file}")
    try:
        assert p.getenv("SLURM_JWT") == SHAPED and p.getenv("SLURMJWT_TOKEN_FILE") == file
    finally:
        p.end()


@pytest.mark.parametrize("file", ["relative/{uid}/token", "/t/{other}/token", "/t/{uid}/token/x",
                                  "/t/../etc/{uid}/token", "/t/./{uid}/token", "/t//{uid}/token",
                                  "/t/{uid}/token%0Ax", "/t/a%20b/{uid}/token", "/{uid}/tokens"])
def test_a_file_path_the_module_can_refute_is_not_exported(workdir, users, stacks, syslog, file):
    """file= must be a plain absolute path ending in /<uid>/token for this login's uid; else the
    token is still set, the path is not, and one line says why."""
    alice, bob = users["alice"], users["bob"]
    file = file.format(uid=alice.pw_uid, other=bob.pw_uid)
    p = fake_login(workdir, stacks, alice.pw_name, f"session=s1 token={SHAPED} user={alice.pw_name} "
                   f"uid={alice.pw_uid} gid={alice.pw_gid} file={file}")
    try:
        assert p.getenv("SLURM_JWT") == SHAPED and p.getenv("SLURMJWT_TOKEN_FILE") is None
    finally:
        p.end()
    lines = syslog.module_lines()
    assert len(lines) == 1 and "not exporting SLURMJWT_TOKEN_FILE" in lines[0], lines


@pytest.mark.parametrize("kind", ["missing", "not-a-socket", "nobody-listening"])
def test_unreachable_daemon_is_ignored(workdir, users, stacks, syslog, kind):
    path = workdir / f"down-{kind}.sock"
    path.unlink(missing_ok=True)
    if kind == "not-a-socket":
        path.write_text("")
    elif kind == "nobody-listening":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.close()  # bound, never listened: connect is refused
    stacks(str(path))
    try:
        for service in SERVICES:  # PAM_IGNORE: no token, and no one locked out
            result, took = pamtester(service, users["alice"].pw_name, "open_session",
                                     "close_session")
            assert result.returncode == 0, result.stderr
            assert took < TIMEOUT_MS / 1000 + 1.0
    finally:
        path.unlink(missing_ok=True)
    lines = syslog.module_lines()
    assert len(lines) == 2 and all("slurmjwtd is not reachable" in line for line in lines), lines


def test_bad_arguments_are_logged_and_ignored(daemon, users, syslog):
    write_service(SERVICES[1], daemon.root_socket, "required", "timeout=soon env=1BAD colour=blue")
    try:
        p = pam.PamAuthenticator()
        assert p.authenticate(users["alice"].pw_name, "", service=SERVICES[1], call_end=False)
        try:
            assert p.open_session() == pam.PAM_SUCCESS
            assert p.getenv("SLURM_JWT")  # defaults used: still a token
            p.close_session()
        finally:
            p.end()
    finally:
        Path("/etc/pam.d", SERVICES[1]).unlink()
    lines = syslog.module_lines()
    assert any("timeout=soon" in line for line in lines)
    assert any("colour=blue" in line for line in lines)


def test_no_token_in_syslog_even_with_debug(daemon, users, stacks, syslog):
    stacks(daemon.root_socket, "debug")
    p = pam.PamAuthenticator()
    assert p.authenticate(users["alice"].pw_name, "", service=SERVICES[0], call_end=False)
    try:
        assert p.open_session() == pam.PAM_SUCCESS
        token = p.getenv("SLURM_JWT")
        p.close_session()
    finally:
        p.end()
    text = " ".join(m for _, m in syslog.records())
    assert "SLURM_JWT set" in text and token not in text and token.split(".")[2] not in text


# -- memory ----------------------------------------------------------------------------------
VALGRIND = ("valgrind", "--quiet", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect", "--error-exitcode=99")


@pytest.mark.parametrize("case", ["token", "garbage", "liar", "down"])
def test_no_leaks_under_valgrind(daemon, workdir, users, stacks, case):
    fake = None
    path = daemon.root_socket
    if case == "garbage":
        path = str(workdir / "fake-valgrind.sock")
        fake = FakeDaemon(path, b"SJWT/1 OK nonsense\n")
    elif case == "liar":  # a JWT-shaped token for another uid: refused after the NSS lookup
        path = str(workdir / "fake-valgrind-liar.sock")
        fake = FakeDaemon(path, f"SJWT/1 OK session=s1 token={SHAPED} uid=0 gid=0\n".encode())
    elif case == "down":
        path = str(workdir / "nothing-here.sock")
    stacks(path)
    try:
        result, _ = pamtester(SERVICES[0], users["alice"].pw_name, "open_session",
                              "close_session", prefix=VALGRIND)
    finally:
        if fake:
            fake.close()
    assert result.returncode == 0, result.stderr
    assert "pam_slurmjwt" not in result.stderr and "Invalid" not in result.stderr, result.stderr


# -- the build -------------------------------------------------------------------------------
def test_module_is_hardened_and_exports_only_its_entry_points():
    dynamic = subprocess.run(["readelf", "-dW", MODULE], capture_output=True, text=True).stdout
    segments = subprocess.run(["readelf", "-lW", MODULE], capture_output=True, text=True).stdout
    assert "BIND_NOW" in dynamic and "GNU_RELRO" in segments  # full RELRO
    stack = [line for line in segments.splitlines() if "GNU_STACK" in line]
    assert stack and "RWE" not in stack[0]
    symbols = subprocess.run(["nm", "-D", "--defined-only", MODULE], capture_output=True,
                             text=True).stdout.split()
    functions = {symbols[i + 1] for i, kind in enumerate(symbols) if kind == "T"}
    assert functions == {"pam_sm_open_session", "pam_sm_close_session"}
    libc = subprocess.run(["nm", "-D", "--undefined-only", MODULE], capture_output=True,
                          text=True).stdout
    assert "__stack_chk_fail" in libc and "explicit_bzero" in libc


def test_install_honours_destdir(tmp_path):
    result = subprocess.run(["make", "-s", "-C", str(Path(MODULE).parent), "install",
                             f"DESTDIR={tmp_path}", "PAMDIR=/lib/security"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    installed = tmp_path / "lib/security/pam_slurmjwt.so"
    assert installed.read_bytes() == Path(MODULE).read_bytes()
    assert oct(installed.stat().st_mode & 0o777) == "0o644"
