"""slurmjwtd as a systemd service, as far as a machine without a running systemd allows:
the units as systemd-analyze reads them, `make install`, socket activation through
systemd-socket-activate, sd_notify to a socket the test owns, reload on SIGHUP, and
the daemon running under the unit's identity and limits."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import jwt
import pytest

from conftest import KEY_GROUP, PYTHON, Daemon, make_key, run_as, sh
from slurmjwtd.client import call
from slurmjwtd.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "slurmjwtd.service"
DAEMON_USER = "sjt-daemon"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`make install` with PREFIX and the system directories under a temporary root."""
    root = tmp_path_factory.mktemp("prefix")
    os.chmod(root, 0o755)
    result = subprocess.run(
        ["make", "-s", "-C", str(REPO), "install", f"PREFIX={root}/usr", f"SYSCONFDIR={root}/etc",
         f"UNITDIR={root}/units", f"SYSUSERSDIR={root}/sysusers.d",
         f"TMPFILESDIR={root}/tmpfiles.d", f"PAMDIR={root}/security"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root


def test_units_verify(installed):
    units = [str(installed / "units" / n)
             for n in ("slurmjwtd.service", "slurmjwtd.socket", "slurmjwtd-root.socket")]
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_security_exposure_is_at_most_1_5():
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=15",
                             str(UNIT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout).group(1))
    assert score <= 1.5


def test_make_install_puts_everything_in_place(installed):
    expected = ["usr/sbin/slurmjwtd", "usr/bin/slurmjwt", "usr/lib/slurmjwt/slurmjwtd/server.py",
                "units/slurmjwtd.service", "units/slurmjwtd.socket", "units/slurmjwtd-root.socket",
                "sysusers.d/slurmjwt.conf",
                "tmpfiles.d/slurmjwt.conf", "etc/slurmjwt/slurmjwtd.toml",
                "etc/slurmjwt/slurmjwtd.toml.example", "security/pam_slurmjwt.so",
                "usr/share/doc/slurmjwt/README.md"]
    for path in expected:
        assert (installed / path).is_file(), path
    unit = (installed / "units/slurmjwtd.service").read_text()
    assert f"ExecStart={installed}/usr/sbin/slurmjwtd --config {installed}/etc/slurmjwt/" in unit
    example = installed / "etc/slurmjwt/slurmjwtd.toml.example"
    assert load_config(str(example)) == Config()  # every key, commented out at its default
    assert example.read_text().count("\n#") >= len(Config.__dataclass_fields__)
    version = subprocess.run([str(installed / "usr/sbin/slurmjwtd"), "--version"],
                             capture_output=True, text=True)
    assert version.returncode == 0 and "0.1.0" in version.stdout, version.stderr
    cli = subprocess.run([str(installed / "usr/bin/slurmjwt"), "--version"], capture_output=True,
                         text=True)
    assert cli.returncode == 0, cli.stderr


def test_sysusers_and_tmpfiles_entries(tmp_path):
    (tmp_path / "etc").mkdir()
    sh("systemd-sysusers", f"--root={tmp_path}", str(REPO / "systemd/slurmjwtd.sysusers"))
    passwd = (tmp_path / "etc/passwd").read_text()
    assert re.search(r"^slurmjwt:x:\d+:\d+:.*:/nonexistent:/usr/sbin/nologin$", passwd, re.M)
    assert re.search(r"^slurmjwt:x:\d+:", (tmp_path / "etc/group").read_text(), re.M)
    sh("systemd-tmpfiles", f"--root={tmp_path}", "--create", str(REPO / "systemd/slurmjwtd.tmpfiles"))
    assert oct((tmp_path / "run/slurmjwt").stat().st_mode & 0o777) == "0o755"


def fresh_daemon(directory: Path) -> Daemon:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o755)
    return Daemon(directory)


# -- sd_notify -------------------------------------------------------------------------------
class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, wanted: str, timeout: float = 10) -> str:
        """The first message (since the last match) holding the line WANTED (a prefix)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(message)
            if any(line.startswith(wanted) for line in message.split("\n")):
                return message
        raise AssertionError(f"no {wanted!r} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def notify(workdir):
    n = NotifySocket(workdir / f"notify-{os.getpid()}-{time.monotonic_ns()}")
    yield n
    n.close()


def test_ready_status_watchdog_stopping(make_daemon, notify, users, leaders):
    d = make_daemon(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "300000"})
    ready = notify.wait_for("READY=1", timeout=1)
    assert "STATUS=0 granted, 0 refused, 0 renewed, 0 open sessions" in ready
    notify.wait_for("WATCHDOG=1", timeout=2)
    leaders(d.root_socket, users["alice"].pw_name)
    assert d.token_as(users["alice"].pw_name).returncode == 0
    d.token_as(users["bob"].pw_name)
    assert "STATUS=2 granted, 1 refused, 0 renewed, 1 open sessions" in notify.wait_for(
        "STATUS=2 granted", timeout=3)
    d.proc.send_signal(signal.SIGHUP)
    notify.wait_for("RELOADING=1")
    notify.wait_for("READY=1")
    assert d.stop() == 0
    notify.wait_for("STOPPING=1")


def test_ready_comes_only_once_the_socket_answers(workdir, users, notify):
    d = fresh_daemon(workdir / "ready-order")
    proc = subprocess.Popen(d.prepare(), env=os.environ | {"NOTIFY_SOCKET": str(notify.path)},
                            stderr=subprocess.DEVNULL)
    try:
        notify.wait_for("READY=1")
        assert call(d.socket, "STATUS", timeout=1).ok  # answered at the moment READY arrived
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


# -- socket activation -----------------------------------------------------------------------
def test_socket_activation_serves_the_first_connection_and_every_one_after(workdir, users, leaders):
    d = fresh_daemon(workdir / "activated")
    log = open(d.dir / "daemon.log", "w")
    # the two units' sockets, named as their FileDescriptorName= say
    activator = subprocess.Popen(["systemd-socket-activate", "-l", d.socket, "-l", d.root_socket,
                                  "--fdname=public:root", *d.prepare()], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(d.root_socket) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.chmod(d.socket, 0o666)  # SocketMode=0666 in slurmjwtd.socket
        os.chmod(d.root_socket, 0o600)  # SocketMode=0600 in slurmjwtd-root.socket
        assert "Execing" not in d.log  # nothing started before a client came
        first = call(d.socket, "MINT", {"user": users["alice"].pw_name}, timeout=10)
        assert first.ok  # the connection that started the daemon is served
        leader = leaders(d.root_socket, users["bob"].pw_name)
        for _ in range(20):
            assert d.token_as(users["bob"].pw_name).returncode == 0
        leader.close()
        assert "Execing" in d.log and "ready" in d.log
    finally:
        activator.terminate()  # exec'd: this is the daemon itself
        assert activator.wait(10) == 0
        log.close()


# -- reload ------------------------------------------------------------------------------------
def wait_for_log(d: Daemon, text: str, start: int, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tail = d.log[start:]
        if text in tail:
            return tail
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not logged; log: {d.log[start:]}")


def replace_key(path: Path, key: bytes | None = None, size: int = 32) -> bytes:
    """Atomically replace the key at PATH (slurm:slurmjwt 0640)."""
    tmp = path.with_name(path.name + ".new")
    key = make_key(tmp, size=size, key=key)
    os.replace(tmp, path)
    return key


def test_key_rotation_on_sighup(daemon, slurm, users, leaders):
    """New tokens use the new key, which the real slurmctld restarted on it accepts; a broken
    key at reload leaves the daemon serving with the one it has."""
    alice = users["alice"].pw_name
    leaders(daemon.root_socket, alice)
    old_key = daemon.key_file.read_bytes()
    new_key = replace_key(daemon.key_file)
    mark = len(daemon.log)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for_log(daemon, "reloaded", mark)
    token = daemon.token_as(alice).stdout.strip().split("=", 1)[1]
    jwt.decode(token, new_key, algorithms=["HS256"])
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, old_key, algorithms=["HS256"])
    slurm.restart()  # Slurm reads key files only at start
    assert slurm.squeue_as(alice, token).returncode == 0
    assert slurm.rest_get(alice, token) == 200

    replace_key(daemon.key_file, size=16)  # broken: too short
    mark = len(daemon.log)
    daemon.proc.send_signal(signal.SIGHUP)
    refused = wait_for_log(daemon, "reload refused", mark)
    assert "16 bytes" in refused and daemon.alive()
    still = daemon.token_as(alice).stdout.strip().split("=", 1)[1]
    jwt.decode(still, new_key, algorithms=["HS256"])  # still signing with the key it had
    assert slurm.squeue_as(alice, still).returncode == 0
    replace_key(daemon.key_file, new_key)


def test_bad_configuration_at_reload_keeps_the_old_one(make_daemon, users):
    d = make_daemon(lifetime=600)
    config = d.dir / "slurmjwtd.toml"
    good = config.read_text()
    config.write_text(good.replace("lifetime = 600", "lifetime = 'long'"))
    mark = len(d.log)
    d.proc.send_signal(signal.SIGHUP)
    assert "key 'lifetime'" in wait_for_log(d, "reload refused", mark)
    answer = call(d.socket, "MINT", {"user": users["alice"].pw_name})
    assert answer.ok and answer.fields["lifetime"] == "600"
    config.write_text(good.replace("lifetime = 600", "lifetime = 900"))
    mark = len(d.log)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_log(d, "reloaded", mark)
    assert call(d.socket, "MINT", {"user": users["alice"].pw_name}).fields["lifetime"] == "900"


# -- the unit's identity and limits --------------------------------------------------------------
@pytest.fixture
def daemon_account(users):
    """An unprivileged account in the key's group, as slurmjwtd.sysusers makes."""
    subprocess.run(["userdel", DAEMON_USER], capture_output=True)
    sh("useradd", "-r", "-M", "-g", KEY_GROUP, "-s", "/usr/sbin/nologin", DAEMON_USER)
    yield DAEMON_USER
    subprocess.run(["pkill", "-KILL", "-u", DAEMON_USER], capture_output=True)
    subprocess.run(["userdel", DAEMON_USER], capture_output=True)


def test_runs_unprivileged_without_network_and_still_sees_logins(workdir, users, leaders,
                                                                  daemon_account):
    """As the unit runs it: its own user reading the key through group slurmjwt (0640),
    no capabilities, no new privileges, no network (PrivateNetwork=), a read-only system
    but for its runtime directory (ProtectSystem=strict), only the process part of /proc
    (ProcSubset=pid). It still reads the /proc entries of root's session leaders and
    resolves users through NSS."""
    d = fresh_daemon(workdir / "unprivileged")
    make_key(d.key_file, "slurm", KEY_GROUP, 0o640)
    runtime = d.dir / "run"
    runtime.mkdir(mode=0o755)
    shutil.chown(runtime, DAEMON_USER, KEY_GROUP)  # RuntimeDirectory=
    d.settings = {"socket": str(runtime / "s.sock"), "root_socket": str(runtime / "r.sock"),
                  "session_file": str(runtime / "sessions.json"),
                  "token_dir": str(runtime / "tokens")}
    # ProtectSystem=strict with RuntimeDirectory=, ProcSubset=pid, PrivateNetwork=
    sandbox = (f"mount --bind {runtime} {runtime} && mount -o remount,bind,ro / && "
               f"mount -t proc -o subset=pid proc /proc && exec \"$@\"")
    d.prefix = ("unshare", "--mount", "--net", "sh", "-c", sandbox, "sandbox",
                "setpriv", f"--reuid={DAEMON_USER}", f"--regid={KEY_GROUP}",
                "--init-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all")
    d.start()
    try:
        status = open(f"/proc/{d.proc.pid}/status").read()  # unshare and setpriv exec it
        assert re.search(r"^Uid:\s+(\d+)", status, re.M).group(1) == str(
            pwd.getpwnam(DAEMON_USER).pw_uid)
        assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(r"^NoNewPrivs:\s+1", status, re.M)
        mounts = [line.split() for line in open(f"/proc/{d.proc.pid}/mountinfo")]
        assert any(m[4] == "/" and m[5].startswith("ro") for m in mounts)  # the sandbox holds
        assert any(m[4] == "/proc" and "subset=pid" in " ".join(m) for m in mounts)
        alice = users["alice"].pw_name
        assert d.token_as(alice).returncode == 5
        leader = leaders(d.root_socket, alice)  # a root process: its /proc entry proves the login
        token = d.token_as(alice)
        assert token.returncode == 0, token.stderr
        jwt.decode(token.stdout.strip().split("=", 1)[1], d.key_file.read_bytes(),
                   algorithms=["HS256"])
        leader.die()
        assert d.token_as(alice).returncode == 5
        unknown = call(d.socket, "MINT", {"user": "sjt-nosuchuser"})
        assert unknown.code == "unknown-user"
    finally:
        assert d.stop() == 0


def test_a_test_user_cannot_read_the_key(users, daemon):
    result = run_as(users["alice"].pw_name, PYTHON, "-c",
                    f"open({str(daemon.key_file)!r}, 'rb').read()")
    assert result.returncode != 0 and "Permission denied" in result.stderr


# -- the journal -------------------------------------------------------------------------------
JOURNAL = Path("/run/systemd/journal/socket")


@pytest.fixture
def journal_socket():
    """A datagram socket where journald's would be; the test reads what the daemon sends."""
    saved = JOURNAL.with_name("socket.slurmjwt-test") if JOURNAL.exists() else None
    if saved:
        JOURNAL.rename(saved)
    made_dir = not JOURNAL.parent.exists()
    JOURNAL.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(JOURNAL))
    sock.settimeout(5)
    yield sock
    sock.close()
    JOURNAL.unlink(missing_ok=True)
    if saved:
        saved.rename(JOURNAL)
    elif made_dir:
        JOURNAL.parent.rmdir()


def journal_entries(sock: socket.socket, until: str) -> list[dict[str, str]]:
    entries = []
    while True:
        fields = dict(line.split("=", 1) for line in sock.recv(65536).decode().splitlines()
                      if "=" in line)
        entries.append(fields)
        if until in fields.get("MESSAGE", ""):
            return entries


def test_under_systemd_decisions_go_to_the_journal_with_fields(workdir, users, leaders,
                                                               journal_socket):
    d = fresh_daemon(workdir / "journal")
    argv = d.prepare()
    with open(d.dir / "daemon.log", "w") as log:
        st = os.fstat(log.fileno())  # what systemd sets when stderr is the journal stream
        d.proc = subprocess.Popen(argv, stdout=log, stderr=log,
                                  env=os.environ | {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    try:
        entries = journal_entries(journal_socket, "ready")
        alice = users["alice"].pw_name
        leaders(d.root_socket, alice)
        token = d.token_as(alice).stdout.strip().split("=", 1)[1]
        entries += journal_entries(journal_socket, "op=mint")
    finally:
        assert d.stop() == 0
    assert d.log == ""  # nothing on stderr: it all went to the journal
    mint = entries[-1]
    assert mint["SYSLOG_IDENTIFIER"] == "slurmjwtd" and mint["PRIORITY"] == "6"
    assert mint["SLURMJWT_DECISION"] == "granted" and mint["SLURMJWT_USER"] == alice
    assert mint["SLURMJWT_CALLER_UID"] == str(users["alice"].pw_uid)
    assert mint["SLURMJWT_JTI"] in mint["MESSAGE"] and "SLURMJWT_EXP" in mint
    opened = [e for e in entries if e.get("SLURMJWT_OP") == "open"]
    assert opened and opened[0]["SLURMJWT_SESSION"]
    assert not any(token in value or token.split(".")[2] in value
                   for entry in entries for value in entry.values())


# -- requests in flight --------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_request_in_flight_finishes_across_a_signal(make_daemon, users, signum):
    d = make_daemon()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(d.socket)
        s.sendall(b"SJWT/1 MINT user=")
        mark = len(d.log)
        d.proc.send_signal(signum)
        wait_for_log(d, "reloaded" if signum == signal.SIGHUP else "stopping", mark)
        s.sendall(users["alice"].pw_name.encode() + b"\n")
        assert s.recv(4096).startswith(b"SJWT/1 OK token=")
    if signum == signal.SIGTERM:
        assert d.proc.wait(10) == 0
    else:
        assert call(d.socket, "STATUS").ok
