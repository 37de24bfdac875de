"""Shared fixtures: real users, real keys, a real slurmjwtd on a test socket.

Everything runs as root (CI does): users are made with useradd, clients run as
them with runuser, and each piece is stopped and removed afterwards. Leftovers
of a crashed run are removed before anything is made.

Except tests/unit: in-process, no fixture of this file, they run as any user
(`pytest tests/unit`). Importing this file makes nothing; only its fixtures do, and the
check for root comes once the tests are collected, only if some are not unit tests.
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from slurmjwtd.client import call
from slurmjwtd.config import toml_value

VENV = Path(os.environ.get("SLURMJWT_VENV", "/opt/slurmjwt/venv"))
SLURMJWT = str(VENV / "bin" / "slurmjwt")
SLURMJWTD = str(VENV / "bin" / "slurmjwtd")
PYTHON = str(VENV / "bin" / "python")
WORK = Path("/tmp/slurmjwt-test")
LEADER = str(Path(__file__).with_name("leader.py"))
MODULE = str(Path(__file__).resolve().parent.parent / "pam" / "pam_slurmjwt.so")
USERS = {"alice": "sjt-alice", "bob": "sjt-bob"}
SYSTEM_USER = "sjt-sys"
KEY_GROUP = "slurmjwt"
GROUP_MARK = Path("/var/tmp/slurmjwt-test-made-group")


UNIT = Path(__file__).resolve().parent / "unit"  # tests that need neither root nor the build
CHECKOUT = Path(__file__).resolve().parent.parent


_CONFIG: list[pytest.Config] = []  # pytest's, once it has started


def pytest_configure(config: pytest.Config) -> None:
    _CONFIG.append(config)


_SHOWN: set[str] = set()


def progress(message: str) -> None:
    """One line on the terminal, past pytest's capture, once per run: what a fixture starts that
    takes a while (slurmctld, sshd), so that a run does not look hung. Outside pytest (demo.py):
    stderr."""
    if message in _SHOWN:
        return
    _SHOWN.add(message)
    plugins = _CONFIG[-1].pluginmanager if _CONFIG else None
    reporter = plugins.get_plugin("terminalreporter") if plugins else None
    if reporter is None:
        print(message, file=sys.stderr, flush=True)
        return
    capture = plugins.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        at_line_start = getattr(getattr(reporter, "_tw", None), "width_of_current_line", 1) == 0
        reporter.write(("" if at_line_start else "\n") + f"[{message}]\n")


def pytest_collection_finish(session: pytest.Session) -> None:
    if all(UNIT in item.path.resolve().parents for item in session.items):
        return
    if os.geteuid() != 0:
        pytest.exit("the tests run as root (they make users and start services): sudo make test; "
                    "as any user: pytest tests/unit", 2)
    for needed in (SLURMJWT, MODULE):
        if not os.path.exists(needed):
            pytest.exit(f"{needed} missing: run the tests through `make test`", 2)


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def run_as(user: str, *args: str, env: dict[str, str] | None = None,
           input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ARGS as USER with a clean environment plus ENV (passed as the environment,
    never in argv, where a token would show in ps)."""
    clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    return subprocess.run(["/usr/sbin/runuser", "-u", user, "--", *args], capture_output=True, text=True,
                          input=input, timeout=timeout, env=clean | (env or {}))


def _remove_user(name: str) -> None:
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture(scope="session")
def users() -> dict[str, pwd.struct_passwd]:
    """Two ordinary users (uid >= 1000) and one system user (uid < 1000)."""
    made = {}
    for name in [*USERS.values(), SYSTEM_USER]:
        _remove_user(name)
        extra = ["-r"] if name == SYSTEM_USER else []
        sh("useradd", "-M", "-s", "/bin/sh", *extra, name)
        made[name] = pwd.getpwnam(name)
    made_group = GROUP_MARK.exists()  # made by a run that crashed before removing it
    try:
        grp.getgrnam(KEY_GROUP)
    except KeyError:
        sh("groupadd", "-r", KEY_GROUP)
        GROUP_MARK.touch()
        made_group = True
    yield {key: made[name] for key, name in USERS.items()} | {"sys": made[SYSTEM_USER]}
    for name in made:
        _remove_user(name)
    if made_group:
        sh("groupdel", KEY_GROUP, check=False)
        GROUP_MARK.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def workdir() -> Path:
    # a crashed run may have left daemons serving sockets under WORK
    subprocess.run(["pkill", "-TERM", "-f", f"slurmjwtd --config {WORK}/"], capture_output=True)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(mode=0o755)
    os.chmod(WORK, 0o755)
    yield WORK
    shutil.rmtree(WORK, ignore_errors=True)


@pytest.fixture
def scratch(workdir, users):
    """A fresh root-owned 0755 directory for one test (in the tests' workdir), removed after."""
    d = workdir / "scratch"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_key(path: Path, owner: str = "slurm", group: str = KEY_GROUP, mode: int = 0o640,
             size: int = 32, key: bytes | None = None) -> bytes:
    """Write KEY (or SIZE random bytes) to PATH with OWNER, GROUP and MODE."""
    key = os.urandom(size) if key is None else key
    path.write_bytes(key)
    shutil.chown(path, owner, group)
    os.chmod(path, mode)
    return key


@dataclass
class Daemon:
    """A slurmjwtd process on its own socket, key and session file."""

    dir: Path
    settings: dict[str, object] = field(default_factory=dict)
    prefix: tuple[str, ...] = ()  # a command to run the daemon under, e.g. prlimit
    env: dict[str, str] = field(default_factory=dict)  # added to the daemon's environment
    proc: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return str(self.settings.get("socket", self.dir / "sock"))

    @property
    def root_socket(self) -> str:
        """Root's socket (0600): the only one taking OPEN and CLOSE, so the PAM module's;
        next to the public one unless set."""
        return str(self.settings.get("root_socket", Path(self.socket).with_name("root.sock")))

    @property
    def key_file(self) -> Path:
        return Path(str(self.settings.get("key_file", self.dir / "jwt_hs256.key")))

    @property
    def log(self) -> str:
        return (self.dir / "daemon.log").read_text()

    def config_text(self) -> str:
        values = {"socket": self.socket, "root_socket": self.root_socket,
                  "session_file": str(self.dir / "sessions.json"),
                  "token_dir": str(self.dir / "tokens"),
                  "revocation_file": str(self.dir / "revoked.json"),
                  "key_file": str(self.key_file)} | self.settings
        return "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())

    def prepare(self) -> list[str]:
        """Make the directory, key and configuration; return the daemon's command line."""
        self.dir.mkdir(mode=0o755, exist_ok=True)
        if not self.key_file.exists():
            make_key(self.key_file)
        (self.dir / "slurmjwtd.toml").write_text(self.config_text())
        return [SLURMJWTD, "--config", str(self.dir / "slurmjwtd.toml")]

    def start(self) -> "Daemon":
        argv = self.prepare()
        with open(self.dir / "daemon.log", "a") as log:
            self.proc = subprocess.Popen([*self.prefix, *argv], stdout=log, stderr=log,
                                         env=os.environ | self.env)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slurmjwtd exited {self.proc.returncode}: {self.log}")
            try:
                if call(self.socket, "STATUS", timeout=1).ok:
                    return self
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("slurmjwtd did not answer within 15 s")

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def token_as(self, user: str, *args: str) -> subprocess.CompletedProcess:
        return run_as(user, SLURMJWT, "token", *args, env={"SLURMJWT_SOCKET": self.socket})


@pytest.fixture(scope="session")
def daemon(users, workdir) -> Daemon:
    """The suite's shared daemon: default policy, HS256 key slurm:slurmjwt 0640."""
    d = Daemon(workdir / "main").start()
    yield d
    d.stop()


_daemon_numbers = itertools.count()


@pytest.fixture
def make_daemon(users, workdir):
    """Start a daemon with its own directory and SETTINGS; stopped after the test."""
    started: list[Daemon] = []

    def start(prefix: tuple[str, ...] = (), env: dict[str, str] | None = None,
              **settings: object) -> Daemon:
        # a short directory name: a socket path must fit in 108 bytes
        d = Daemon(workdir / f"d{next(_daemon_numbers)}", dict(settings), prefix, env or {})
        shutil.rmtree(d.dir, ignore_errors=True)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.stop()


class Leader:
    """A root process that opens a login session for USER and lives until stopped,
    as sshd's privileged child does for a login."""

    def __init__(self, socket: str, user: str, **extra: str) -> None:
        args = [PYTHON, LEADER, socket, user] + [f"{k}={v}" for k, v in extra.items()]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("OK "):
            self.proc.kill()
            raise RuntimeError(f"OPEN failed: {line}")
        self.fields = dict(w.split("=", 1) for w in line.split()[1:])
        self.session = self.fields["session"]

    def close(self) -> str:
        """Close the session at the daemon, then exit (a normal logout)."""
        out, _ = self.proc.communicate("close\n", timeout=10)
        return out.strip()

    def die(self) -> None:
        """Exit without closing (a crashed or killed login)."""
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def leaders():
    made: list[Leader] = []

    def open_session(socket: str, user: str, **extra: str) -> Leader:
        leader = Leader(socket, user, **extra)
        made.append(leader)
        return leader

    yield open_session
    for leader in made:
        if leader.proc.poll() is None:
            leader.die()


# SLURMJWT_SLURM picks the Slurm the Slurm-facing tests run against: 22.05, Debian 12's on the
# host (the default, `make test`), or 24.11, Debian 13's in a root (`make test-slurm24`)
SLURM_RELEASE = os.environ.get("SLURMJWT_SLURM", "22.05")
SLURM_RELEASES = ("22.05", "24.11")


@pytest.fixture(scope="session")
def slurm(daemon, workdir):
    """slurmctld, slurmd and slurmrestd verifying with the shared daemon's key: the release
    SLURMJWT_SLURM names (tests/slurm_cluster.py, tests/slurm24_cluster.py)."""
    if SLURM_RELEASE not in SLURM_RELEASES:
        pytest.exit(f"SLURMJWT_SLURM={SLURM_RELEASE}: the tests know {' and '.join(SLURM_RELEASES)}", 2)
    if SLURM_RELEASE == "24.11":
        from slurm24_cluster import Slurm24Cluster as Cluster
    else:
        from slurm_cluster import SlurmCluster as Cluster  # it imports run_as from here

    cluster = Cluster(workdir / "slurm", daemon.key_file)
    cluster.start()
    running = ".".join(f"{n:02d}" for n in (cluster.version or (0, 0))[:2])
    if running != SLURM_RELEASE:
        cluster.stop()
        pytest.exit(f"SLURMJWT_SLURM={SLURM_RELEASE} but the cluster runs Slurm {running}", 2)
    yield cluster
    cluster.scancel_all()
    cluster.stop()


@pytest.fixture(scope="session")
def packages():
    """The Debian packages (tests/packages.py), each built on first use, once per run."""
    from packages import Packages

    made = Packages()
    yield made
    made.cleanup()


class FakeDaemon:
    """A socket that misbehaves in one way: it never answers (ANSWER None), or answers every
    request with ANSWER. Connections stay open, as a hung daemon's would, until close()."""

    def __init__(self, path: str, answer: bytes | None) -> None:
        self.path, self.answer = path, answer
        Path(path).unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(16)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)
            if self.answer is not None:
                try:
                    conn.settimeout(5)
                    conn.recv(2048)
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()
        Path(self.path).unlink(missing_ok=True)
