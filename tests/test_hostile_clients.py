"""What surrounds the clients is hostile too: a fake daemon on $SLURMJWT_SOCKET answering the CLI
with terminal escape sequences; an environment carrying the shell integration's internal
variables; a curl that fails; typos on the command line; a socket path too long for a Unix
socket; and, for the daemon, anything that would read the key out of its memory.

The CLI is the installed one (conftest.SLURMJWT); the shell file is the checkout's, read by a
real interactive bash and zsh running as a test user; the daemon is a real slurmjwtd.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import FakeDaemon, SLURMJWT, run_as

SHELL_FILE = Path(__file__).resolve().parent.parent / "shell" / "slurmjwt.sh"
CLEAN = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
ONE_USAGE_LINE = re.compile(r"slurmjwt: \S.* \(see slurmjwt( [a-z]+)? --help\)\n\Z")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(claims: dict) -> str:
    """A token of the right shape whose claims say CLAIMS (the CLI decodes, never verifies)."""
    header = b64(json.dumps({"alg": "HS256"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}.{b64(b'signature')}"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed CLI as root; output as bytes, so that nothing is decoded away."""
    return subprocess.run([SLURMJWT, *args], capture_output=True, timeout=30, env=CLEAN | (env or {}))


def assert_printable(data: bytes) -> None:
    """Only printable ASCII and newlines: nothing a terminal would act on."""
    bad = sorted({b for b in data if not (0x20 <= b <= 0x7e or b == 0x0a)})
    assert not bad, f"unprintable bytes {bad} in {data!r}"


# -- 12: daemon text reaches the terminal as printable ASCII ---------------------------------
ESCAPES = b"\x1b]0;owned\x07\x1b[2J\x1b[31mred"  # a window title, clear screen, colour
C1_AND_BIDI = "%C2%9B2J%E2%80%AEdlrow"  # CSI as one C1 byte, a right-to-left override


@pytest.mark.parametrize("args, answer, status, stream, shown", [
    (("status",), b"SJWT/1 ERR internal " + ESCAPES + b"\n", 6, "stderr", "\\x1b]0;owned\\x07"),
    (("refresh",), b"SJWT/1 ERR policy-denied " + ESCAPES + b"\n", 4, "stderr", "\\x1b[2J"),
    (("token",), b"SJWT/1 ERR no-session " + ESCAPES + b"\n", 5, "stderr", "\\x1b[31mred"),
    (("token",), b"SJWT/1 ERR bad-request " + ESCAPES + b"\n", 6, "stderr", "\\x1b[31mred"),
    (("status",), f"SJWT/1 OK version={C1_AND_BIDI} signer=hs256\n".encode(), 0, "stdout",
     "\\x9b2J\\u202edlrow"),
    (("policy", "sjt-alice"), f"SJWT/1 OK decision=refused reason={C1_AND_BIDI} rule=r "
     f"code=policy-denied message={C1_AND_BIDI} uid={C1_AND_BIDI}\n".encode(), 4, "stdout",
     "\\x9b2J\\u202edlrow"),
], ids=["status-err", "refresh-err", "token-err", "token-fault", "status-fields", "policy-fields"])
def test_cli_prints_daemon_text_as_printable_ascii(workdir, args, answer, status, stream, shown):
    path = str(workdir / "liar-cli.sock")
    fake = FakeDaemon(path, answer)
    try:
        result = cli(*args, env={"SLURMJWT_SOCKET": path})
    finally:
        fake.close()
    assert result.returncode == status, result
    assert_printable(result.stdout + result.stderr)
    assert shown in getattr(result, stream).decode(), result
    if stream == "stderr":
        assert result.stderr.count(b"\n") == 1 and result.stdout == b""


def test_show_prints_token_claims_as_printable_ascii():
    token = unsigned_token({"sun": "x\x1b[2Jy\u202e", "exp": int(time.time()) + 600,
                            "iat": int(time.time()), "jti": "\x9b31m"})
    result = subprocess.run([SLURMJWT, "show", "-"], input=token.encode(), capture_output=True,
                            timeout=30, env=CLEAN)
    assert result.returncode == 0, result
    assert_printable(result.stdout)
    assert b"user:    x\\x1b[2Jy\\u202e" in result.stdout and b"jti:     \\x9b31m" in result.stdout


# -- 16: a socket path longer than a Unix socket address -----------------------------------
@pytest.mark.parametrize("how", ["option", "environment"])
def test_over_long_socket_path_is_one_clear_line(how):
    path = "/tmp/" + "s" * 199  # 204 bytes; sun_path holds 107 and a NUL
    args = ("--socket", path, "status") if how == "option" else ("status",)
    result = cli(*args, env={"SLURMJWT_SOCKET": path} if how == "environment" else {})
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.count("\n") == 1 and "None" not in err, err
    assert "is 204 bytes, longer than the 107 a Unix socket allows" in err
    assert "--socket or SLURMJWT_SOCKET" in err


# -- 16: usage errors are one line ---------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("--bogus", "status"), ("nosuch",), ("token", "--lifetime", "x"), ("token", "--lifetime", "0"),
    ("token", "--user"), ("curl",), ("show", "a", "b"), ("policy",), ("refresh", "--timeout", "99"),
    ("refresh", "--bogus"), ("token", "--lifetime", "1000000000"),
    ("policy", "x", "--lifetime", "1000000000"),
], ids=lambda a: " ".join(a))
def test_usage_errors_are_one_line(args):
    result = cli(*args)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert result.stdout == b""
    assert ONE_USAGE_LINE.match(err), err
    assert "Usage:" not in err and "Error:" not in err and "Try " not in err


def test_help_and_version_still_work():
    assert cli("--help").returncode == 0 and b"Usage: slurmjwt" in cli("--help").stdout
    assert cli("token", "--help").returncode == 0
    assert cli("--version").stdout.startswith(b"slurmjwt, version ")


# -- 16: curl's failures have their own status ---------------------------------------------
FAKE_CURL = """#!/bin/sh
# records its argv and what its -H @/dev/fd/N file says, then exits with $FAKE_CURL_STATUS
printf '%s\\n' "$@" > "$FAKE_CURL_DIR/argv"
case $2 in @/dev/fd/*) cat "${2#@}" > "$FAKE_CURL_DIR/headers" ;; esac
echo "curl's own output"
exit "${FAKE_CURL_STATUS:-0}"
"""


@pytest.mark.parametrize("curl_status, status", [(0, 0), (7, 9), (22, 9), (9, 9)])
def test_curl_status_is_mapped_and_the_token_stays_out_of_argv(tmp_path, curl_status, status):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "curl").write_text(FAKE_CURL)
    (bindir / "curl").chmod(0o755)
    token = unsigned_token({"sun": "sjt-alice", "exp": int(time.time()) + 600})
    result = cli("curl", "-s", "/slurm/v0.0.38/ping", env={
        "PATH": f"{bindir}:/usr/bin:/bin", "SLURM_JWT": token, "SLURMRESTD_URL": "http://127.0.0.1:9",
        "FAKE_CURL_DIR": str(tmp_path), "FAKE_CURL_STATUS": str(curl_status)})
    assert result.returncode == status, result
    assert result.stdout == b"curl's own output\n"
    argv = (tmp_path / "argv").read_text()
    assert token not in argv and token.rsplit(".", 1)[1] not in argv
    assert argv.splitlines()[-1] == "http://127.0.0.1:9/slurm/v0.0.38/ping"
    assert (tmp_path / "headers").read_text() == (f"X-SLURM-USER-NAME: sjt-alice\n"
                                                  f"X-SLURM-USER-TOKEN: {token}\n")
    if status:
        err = result.stderr.decode()
        assert err.count("\n") == 1 and f"curl failed with its exit status {curl_status}" in err, err
        assert token not in err
    else:
        assert result.stderr == b""


def test_real_curl_that_cannot_connect_exits_9_naming_curls_7():
    if shutil.which("curl") is None:
        pytest.fail("curl missing: apt-get install curl")
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        token = unsigned_token({"sun": "sjt-alice", "exp": int(time.time()) + 600})
        result = cli("curl", "-sS", "/slurm/v0.0.38/ping", env={
            "SLURM_JWT": token, "SLURMRESTD_URL": f"http://127.0.0.1:{port}"})
    err = result.stderr.decode()
    assert result.returncode == 9, err
    assert err.splitlines()[-1].startswith("slurmjwt: curl failed with its exit status 7"), err
    assert token not in err


# -- 13: the shell integration takes nothing from the environment --------------------------
def hostile_environment(marker: Path) -> dict[str, str]:
    """A login's environment that would run `touch MARKER` if the shell file read its own
    variables from it: the token's signature matches _sjwt_seen, so the hook would go straight
    to arithmetic on _sjwt_seen_exp."""
    token = unsigned_token({"sun": "sjt-alice", "exp": 4102444800})
    run = f"a[$(touch {marker})]"
    return {"SLURM_JWT": token, "SLURMJWT_AUTORENEW": "1", "_sjwt_seen": token.rsplit(".", 1)[1],
            "_sjwt_seen_exp": run, "_sjwt_exp": run, "_sjwt_now": run, "_sjwt_margin": run,
            "_sjwt_tried": "", "_sjwt_status": run, "SLURMJWT_SOCKET": "/nonexistent"}


@pytest.mark.parametrize("shell", [["/bin/bash", "--noprofile", "--norc", "-i"],
                                   ["/usr/bin/zsh", "-f", "-i"]], ids=["bash", "zsh"])
def test_shell_integration_ignores_its_variables_in_the_environment(users, workdir, shell):
    alice = users["alice"]
    home = workdir / "hostile-shell"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o700)
    os.chown(home, alice.pw_uid, alice.pw_gid)
    copy = home / "slurmjwt.sh"  # the checkout may not be readable by the test user
    shutil.copy(SHELL_FILE, copy)
    os.chmod(copy, 0o644)
    marker = home / "ran"
    # read the file, draw a few prompts (each runs the hook), then show what the hook decided
    script = f". {copy}\ntrue\ntrue\necho \"seen_exp=$_sjwt_seen_exp\"\nexit\n"
    try:
        result = run_as(alice.pw_name, *shell, input=script, env=hostile_environment(marker))
        assert not marker.exists(), "a command from the environment ran"
        # the hook ran: it recomputed the expiry from the token itself
        assert "seen_exp=4102444800" in result.stdout, result.stdout + result.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)


# -- 14: the daemon's memory is not for others -------------------------------------------
def core_limit(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            soft, hard = line.split()[4:6]
            return soft, hard
    raise AssertionError("no core limit in /proc/PID/limits")


def test_daemon_is_not_dumpable_before_and_after_a_reload(make_daemon, users, workdir):
    """Run as an ordinary user (alice, with the key's group), a process of the same uid may read
    a dumpable process's /proc/PID/environ and mem; the daemon's are refused, and stay so after
    SIGHUP. A process alice starts herself shows the check works."""
    alice = users["alice"]
    runtime = workdir / "undumpable"
    shutil.rmtree(runtime, ignore_errors=True)
    runtime.mkdir(mode=0o755)
    os.chown(runtime, alice.pw_uid, alice.pw_gid)
    key_gid = int(subprocess.run(["getent", "group", "slurmjwt"], capture_output=True, text=True,
                                 check=True).stdout.split(":")[2])
    d = make_daemon(prefix=("setpriv", f"--reuid={alice.pw_uid}", f"--regid={key_gid}",
                            "--clear-groups", "--"),
                    socket=str(runtime / "sock"), root_socket=str(runtime / "root.sock"),
                    session_file=str(runtime / "sessions.json"),
                    token_dir=str(runtime / "tokens"))
    pid = d.proc.pid
    assert Path(f"/proc/{pid}/status").read_text().count(f"\t{alice.pw_uid}\t") >= 1

    own = subprocess.Popen(["/usr/sbin/runuser", "-u", alice.pw_name, "--", "sleep", "60"])
    try:
        time.sleep(0.2)
        child = [p for p in os.listdir("/proc") if p.isdigit() and Path(f"/proc/{p}/cmdline").exists()
                 and Path(f"/proc/{p}/cmdline").read_bytes() == b"sleep\x0060\x00"
                 and os.stat(f"/proc/{p}").st_uid == alice.pw_uid]
        assert child, "alice's sleep not found"
        readable = run_as(alice.pw_name, "cat", f"/proc/{child[0]}/environ")
        assert readable.returncode == 0, readable.stderr  # the method: a dumpable process is readable
    finally:
        own.terminate()
        own.wait()

    def assert_undumpable() -> None:
        for name in ("environ", "mem"):
            read = run_as(alice.pw_name, "dd", f"if=/proc/{pid}/{name}", "bs=1", "count=1",
                          "status=none")
            assert read.returncode != 0 and "Permission denied" in read.stderr, (name, read)
        assert os.stat(f"/proc/{pid}/environ").st_uid == 0  # a non-dumpable process's files are root's
        assert core_limit(pid) == ("0", "0")

    assert_undumpable()
    reloads = d.log.count("reloaded")
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while d.log.count("reloaded") == reloads:
        assert time.monotonic() < deadline, d.log[-2000:]
        time.sleep(0.05)
    assert_undumpable()
    assert d.alive()
