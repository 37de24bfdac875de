"""A real Slurm on loopback for the tests: munged, slurmctld, slurmd and slurmrestd.

Debian 12's packages (Slurm 22.05). One node, `localhost`, whose slurmd runs jobs and
steps for real (proctrack/linuxproc, task/none: no cgroups needed); no slurmdbd.
slurmrestd only has to answer for a user whose token slurmctld accepts. The helpers run
Slurm's commands by absolute path, so that slurmjwt-exec links on PATH (tests/exec_links.py)
never stand between a test and the command it means.

Everything started here is a child of the test process, stopped by its pid.
munged is left alone if one already answers; it is stopped at stop() only if
this harness started it (or an earlier, crashed run of it: see MUNGE_MARK).
Leftovers of a crashed run (a slurmctld, slurmscriptd or slurmrestd still running
with this cluster's configuration) are killed before starting.

slurmrestd runs as the unprivileged system user `slurmrest` (Slurm refuses root
and SlurmUser there), added to group `slurmjwt` to read the 0640 key. The user is
created if missing and left in place, like the `slurm` user the package makes.

Ports: slurmctld 16817, slurmd 16818, slurmrestd 16820 on 127.0.0.1.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

import exec_links
from conftest import progress, run_as
from slurmjwtd.slurm_versions import parse_version, release_of

SLURMCTLD = "/usr/sbin/slurmctld"
SLURMRESTD = "/usr/sbin/slurmrestd"
SLURMD = "/usr/sbin/slurmd"
SLURM_BIN = "/usr/bin"  # Slurm's client commands
MUNGED = "/usr/sbin/munged"
MUNGE_DIR = Path("/run/munge")
MUNGE_SOCKET = MUNGE_DIR / "munge.socket.2"
MUNGE_PIDFILE = MUNGE_DIR / "munged.pid"
# Records that munged was started by this harness, so a later run can stop one
# a crashed run left behind (its pid is checked against the pidfile first).
MUNGE_MARK = MUNGE_DIR / "slurmjwt-test.started"
SLURM_USER = "slurm"
REST_USER = "slurmrest"
KEY_GROUP = "slurmjwt"
OPENAPI = "v0.0.38"  # the newest API version 22.05 serves
# every API version 22.05 serves (v0.0.36 to v0.0.38); without -s it wants slurmdbd's too, and dies
REST_PLUGINS = "openapi/v0.0.36,openapi/v0.0.37,openapi/v0.0.38"
CTLD_PORT, SLURMD_PORT, REST_PORT = 16817, 16818, 16820
_OUR_BINARIES = {"slurmctld", "slurmscriptd", "slurmrestd", "slurmd", "slurmstepd"}


# slurm.conf lines both test clusters share (22.05 here, 24.11 in slurm24_cluster.py)
COMMON_CONF = (
    "AuthType=auth/munge",
    "CredType=cred/munge",
    "AuthAltTypes=auth/jwt",
    "SlurmctldDebug=info",
    "ProctrackType=proctrack/linuxproc",
    "TaskPlugin=task/none",
    "SelectType=select/cons_tres",
    "SelectTypeParameters=CR_Core",
    "SchedulerType=sched/builtin",
    "MpiDefault=none",
    "JobAcctGatherType=jobacct_gather/none",
    "AccountingStorageType=accounting_storage/none",
    "JobCompType=jobcomp/none",
    "ReturnToService=2",
    "SlurmdTimeout=300",
    "MinJobAge=5",  # sbatch --wait then polls every 2 s (8 s after a first miss otherwise)
    "MailProg=/bin/true",
)


class SlurmError(RuntimeError):
    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM PID (not our child), wait up to TIMEOUT, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _stop_child(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _slurm_processes(conf: Path) -> list[int]:
    """Pids of live slurmctld, slurmscriptd, slurmd, slurmstepd and slurmrestd processes
    started with CONF: named in their argv (-f CONF) or in their environment (SLURM_CONF=CONF,
    which slurmscriptd inherits from slurmctld; its argv is only "slurmctld: slurmscriptd")."""
    found = []
    conf_b, env_b = str(conf).encode(), f"SLURM_CONF={conf}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                if fh.read().strip() not in _OUR_BINARIES:
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue
        if (conf_b in argv or env_b in environ) and _pid_alive(int(entry)):
            found.append(int(entry))
    return found


def munge_answers() -> bool:
    """True if a munged answers on the default socket (a credential round trip)."""
    if not MUNGE_SOCKET.exists():
        return False
    try:
        made = subprocess.run(["munge", "-n"], capture_output=True, timeout=5)
        if made.returncode != 0:
            return False
        back = subprocess.run(["unmunge"], input=made.stdout, capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return back.returncode == 0


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class RestClient:
    """What the tests use of either cluster (this one, 22.05 on the host; slurm24_cluster.py's,
    24.11 in a root): Slurm's commands as a user (`client_as`, by name), slurmrestd's paths
    (`path`, in the newest API version the cluster's slurmrestd serves) and requests. Each
    cluster sets rest_url, env, version and api, and defines client_as and shell_as, and the
    steps `running` and `restart` take (its daemons ctld, slurmd and rest, how each starts and
    stops, write_conf)."""

    rest_url: str
    env: dict[str, str]
    api: str = OPENAPI

    def running(self) -> bool:
        return all(p is not None and p.poll() is None for p in (self.ctld, self.slurmd, self.rest))

    def restart(self) -> Self:
        """Stop slurmctld, slurmd and slurmrestd and start them again (state kept; keys re-read)."""
        self._stop_slurm()
        self.write_conf()
        try:
            self._start_slurmctld(clear_state=False)
            self._start_slurmd()
            self._start_slurmrestd()
        except BaseException:
            self.stop()
            raise
        return self

    def path(self, endpoint: str) -> str:
        """/slurm/<api>/ENDPOINT."""
        return f"/slurm/{self.api}/{endpoint}"

    @property
    def release(self):
        """This Slurm's row of slurmjwtd.slurm_versions.RELEASES."""
        return release_of(self.version)

    def tail(self, path: Path, lines: int = 30) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"({path} unreadable)"

    def wait_for_rest(self, proc: subprocess.Popen) -> None:
        """Until slurmrestd (PROC) answers HTTP; its spec then names the API versions it serves."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SlurmError(f"slurmrestd exited {proc.returncode}:\n{self.tail(self.rest_log)}")
            try:
                urllib.request.urlopen(f"{self.rest_url}/openapi/v3", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # it answers HTTP
            except OSError:
                time.sleep(0.1)
        raise SlurmError(f"slurmrestd did not answer within 15 s:\n{self.tail(self.rest_log)}")

    def client_env(self, token: str) -> dict[str, str]:
        return {**self.env, "SLURM_JWT": token}

    def squeue_as(self, user: str, token: str, *args: str) -> subprocess.CompletedProcess:
        return self.client_as(user, "squeue", *args, env={"SLURM_JWT": token})

    def sbatch_as(self, user: str, token: str, *args: str,
                  wrap: str = "sleep 300") -> subprocess.CompletedProcess:
        return self.client_as(user, "sbatch", "--parsable", "--chdir=/tmp", "--output=/dev/null",
                              "--job-name=sjt-test", *args, "--wrap", wrap, env={"SLURM_JWT": token})

    def scancel_as(self, user: str, token: str, *job_ids: str) -> subprocess.CompletedProcess:
        return self.client_as(user, "scancel", *job_ids, env={"SLURM_JWT": token})

    def scancel_all(self) -> None:
        """Cancel every job the helpers submitted (as root, over munge)."""
        if self.ctld is None or self.ctld.poll() is not None:
            return
        self.client_as("root", "scancel", "--full", "--quiet", "--name=sjt-test")

    def rest_request(self, user_name: str | None, token: str | None, path: str | None = None,
                     bearer: bool = False) -> tuple[int, bytes]:
        """GET PATH (default: ping) with the slurmrestd headers, or with BEARER the token as
        `Authorization: Bearer` (in-process: the token is in no argv)."""
        headers = {}
        if user_name is not None:
            headers["X-SLURM-USER-NAME"] = user_name
        if token is not None:
            headers["Authorization" if bearer else "X-SLURM-USER-TOKEN"] = (
                f"Bearer {token}" if bearer else token)
        req = urllib.request.Request(self.rest_url + (path or self.path("ping")), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def rest_get(self, user_name: str | None, token: str | None, path: str | None = None,
                 bearer: bool = False) -> int:
        return self.rest_request(user_name, token, path, bearer)[0]

    def rest_json(self, user_name: str, token: str, path: str) -> dict:
        status, body = self.rest_request(user_name, token, path)
        if status != 200:
            raise SlurmError(f"GET {path}: HTTP {status}: {body[:300]!r}")
        return json.loads(body)


class SlurmCluster(RestClient):
    """slurmctld + slurmrestd on 127.0.0.1, verifying tokens with JWT_KEY (and JWKS)."""

    def __init__(self, workdir: Path, jwt_key: Path, jwks: Path | None = None,
                 cluster_name: str = "sjt") -> None:
        self.workdir = Path(workdir)
        self.jwt_key = Path(jwt_key)
        self.jwks = Path(jwks) if jwks else None
        self.cluster_name = cluster_name
        self.conf = self.workdir / "slurm.conf"
        self.state_dir = self.workdir / "state"
        self.log_dir = self.workdir / "log"
        self.run_dir = self.workdir / "run"
        self.spool_dir = self.workdir / "slurmd"
        self.ctld_log = self.log_dir / "slurmctld.log"
        self.rest_log = self.log_dir / "slurmrestd.log"
        self.client_conf = str(self.conf)  # the path Slurm's commands are given
        self.env = {"SLURM_CONF": str(self.conf)}
        self.rest_url = f"http://127.0.0.1:{REST_PORT}"
        self.scontrol_program = f"{SLURM_BIN}/scontrol"  # for the daemon's scontrol signer
        self.version: tuple[int, int, int] | None = None  # `scontrol --version`, once started
        self.ctld: subprocess.Popen | None = None
        self.rest: subprocess.Popen | None = None
        self.slurmd: subprocess.Popen | None = None
        self.munged_pid: int | None = None  # set only if this harness started munged
        self._started_once = False
        self._made_rest_user = False

    # -- life ---------------------------------------------------------------------------
    def start(self) -> "SlurmCluster":
        if self.running():
            return self
        for binary in (SLURMCTLD, SLURMD, SLURMRESTD, MUNGED):
            if not os.access(binary, os.X_OK):
                raise SlurmError(f"{binary} missing: apt-get install slurmctld slurmd slurmrestd "
                                 f"slurm-wlm-jwt-plugin munge slurm-client")
        progress(f"starting munged, slurmctld, slurmd and slurmrestd (cluster {self.cluster_name})")
        self.kill_leftovers()
        self._start_munged()
        self._prepare_dirs()
        self.write_conf()
        self._ensure_rest_user()
        try:
            self._start_slurmctld(clear_state=not self._started_once)
            self._started_once = True
            self._start_slurmd()
            self._start_slurmrestd()
            self.version = parse_version(self.client_as("root", "scontrol", "--version").stdout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop what this harness started, newest first; munged only if we started it."""
        self._stop_slurm()
        if self.munged_pid is not None:
            _kill_pid(self.munged_pid)
            try:
                MUNGE_MARK.unlink()
            except FileNotFoundError:
                pass
            self.munged_pid = None
        if self._made_rest_user:
            subprocess.run(["userdel", REST_USER], capture_output=True)
            self._made_rest_user = False

    def kill_leftovers(self) -> None:
        """Kill slurm daemons a crashed run left with this configuration; refuse to start
        if anything else holds our ports (it is not ours to kill)."""
        mine = {p.pid for p in (self.ctld, self.slurmd, self.rest)
                if p is not None and p.poll() is None}
        for pid in _slurm_processes(self.conf):
            if pid not in mine:
                _kill_pid(pid)
        for port in (CTLD_PORT, SLURMD_PORT, REST_PORT):
            # a killed daemon's listener can linger a moment after the process is gone
            deadline = time.monotonic() + 5
            while _port_answers(port) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _port_answers(port):
                ss = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True,
                                    text=True).stdout.strip()
                raise SlurmError(f"127.0.0.1:{port} is in use by a process this harness does not "
                                 f"know: {ss or '(ss shows nothing)'}")

    # -- munged -------------------------------------------------------------------------
    def _start_munged(self) -> None:
        if munge_answers():
            # adopt a munged that an earlier (crashed) run of this harness started
            marked, running = _read_pid(MUNGE_MARK), _read_pid(MUNGE_PIDFILE)
            if marked is not None and marked == running and _pid_alive(marked):
                self.munged_pid = marked
            return
        MUNGE_DIR.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(MUNGE_DIR, "munge", "munge")
        os.chmod(MUNGE_DIR, 0o755)
        # --force: remove a stale socket or lock left by a munged that died
        run = subprocess.run(["runuser", "-u", "munge", "--", MUNGED, "--force"],
                             capture_output=True, text=True, timeout=30)
        if run.returncode != 0:
            raise SlurmError(f"munged failed ({run.returncode}): {run.stderr.strip()}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = _read_pid(MUNGE_PIDFILE)
            if pid is not None and munge_answers():
                self.munged_pid = pid
                MUNGE_MARK.write_text(f"{pid}\n")
                return
            time.sleep(0.05)
        raise SlurmError("munged started but does not answer on " + str(MUNGE_SOCKET))

    # -- configuration ------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        self.workdir.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        for d in (self.state_dir, self.log_dir, self.run_dir):
            d.mkdir(mode=0o755, exist_ok=True)
            shutil.chown(d, SLURM_USER, SLURM_USER)
        self.spool_dir.mkdir(mode=0o755, exist_ok=True)  # slurmd's, as root

    def conf_text(self) -> str:
        alt = f"jwt_key={self.jwt_key}"
        if self.jwks is not None:
            alt += f",jwks={self.jwks}"
        lines = [
            f"ClusterName={self.cluster_name}",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={CTLD_PORT}",
            f"SlurmdPort={SLURMD_PORT}",
            f"SlurmUser={SLURM_USER}",
            "SlurmdUser=root",
            f"AuthAltParameters={alt}",
            f"StateSaveLocation={self.state_dir}",
            f"SlurmdSpoolDir={self.spool_dir}",
            f"SlurmctldPidFile={self.run_dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.run_dir / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.ctld_log}",
            f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
            *COMMON_CONF,
            "NodeName=localhost CPUs=2 State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        ]
        return "\n".join(lines) + "\n"

    def write_conf(self) -> None:
        self.conf.write_text(self.conf_text())
        os.chmod(self.conf, 0o644)  # clients read it as the test users

    # -- slurmctld ----------------------------------------------------------------------
    def _start_slurmctld(self, clear_state: bool) -> None:
        args = [SLURMCTLD, "-D", "-f", str(self.conf)] + (["-c"] if clear_state else [])
        out = open(self.log_dir / "slurmctld.stdout", "ab")
        self.ctld = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                          "SLURM_CONF": str(self.conf)})
        out.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.ctld.poll() is not None:
                raise SlurmError(f"slurmctld exited {self.ctld.returncode}:\n{self.tail(self.ctld_log)}")
            if _port_answers(CTLD_PORT) and self.ping():
                return
            time.sleep(0.05)
        raise SlurmError(f"slurmctld not UP within 20 s:\n{self.tail(self.ctld_log)}")

    def ping(self) -> bool:
        try:
            run = subprocess.run([f"{SLURM_BIN}/scontrol", "ping"], capture_output=True, text=True, timeout=5,
                                 env={"PATH": "/usr/bin:/bin", **self.env})
        except subprocess.TimeoutExpired:
            return False
        return run.returncode == 0 and "is UP" in run.stdout

    def _stop_slurm(self) -> None:
        """Stop slurmrestd, slurmd, then slurmctld; slurmscriptd and any slurmstepd left
        exit with them (checked)."""
        _stop_child(self.rest)
        _stop_child(self.slurmd)
        _stop_child(self.ctld)
        for pid in _slurm_processes(self.conf):
            _kill_pid(pid, timeout=5)

    # -- slurmd -------------------------------------------------------------------------
    def _start_slurmd(self) -> None:
        """slurmd for node localhost, as root; up once slurmctld shows the node idle."""
        log = open(self.log_dir / "slurmd.stdout", "ab")
        self.slurmd = subprocess.Popen(
            [SLURMD, "-D", "-N", "localhost", "-f", str(self.conf)], stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, cwd="/",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": str(self.conf)})
        log.close()
        deadline = time.monotonic() + 20
        while self.node_state() != "idle":
            if self.slurmd.poll() is not None:
                raise SlurmError(f"slurmd exited {self.slurmd.returncode}:\n"
                                 f"{self.tail(self.log_dir / 'slurmd.log')}")
            if time.monotonic() > deadline:
                raise SlurmError(f"node localhost not idle within 20 s ({self.node_state()}):\n"
                                 f"{self.tail(self.log_dir / 'slurmd.log')}")
            time.sleep(0.1)

    def node_state(self) -> str:
        run = subprocess.run([f"{SLURM_BIN}/sinfo", "-h", "-n", "localhost", "-o", "%t"],
                             capture_output=True, text=True, timeout=10,
                             env={"PATH": "/usr/bin:/bin", **self.env})
        return run.stdout.strip()

    # -- slurmrestd ---------------------------------------------------------------------
    def _ensure_rest_user(self) -> None:
        try:
            pwd.getpwnam(REST_USER)
        except KeyError:
            subprocess.run(["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                            REST_USER], check=True, capture_output=True)
            self._made_rest_user = True
        try:
            members = grp.getgrnam(KEY_GROUP).gr_mem
        except KeyError:
            return  # no key group: the key must then be readable some other way
        if REST_USER not in members:
            subprocess.run(["usermod", "-aG", KEY_GROUP, REST_USER], check=True, capture_output=True)

    def _start_slurmrestd(self) -> None:
        pw = pwd.getpwnam(REST_USER)
        groups = os.getgrouplist(REST_USER, pw.pw_gid)
        log = open(self.rest_log, "ab")
        self.rest = subprocess.Popen(
            [SLURMRESTD, "-f", str(self.conf), "-s", REST_PLUGINS, "-a", "rest_auth/jwt",
             f"127.0.0.1:{REST_PORT}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
            user=pw.pw_uid, group=pw.pw_gid, extra_groups=groups,
            env={"PATH": "/usr/bin:/bin", "SLURM_JWT": "daemon", "SLURM_CONF": str(self.conf)})
        log.close()
        self.wait_for_rest(self.rest)

    # -- Slurm's commands -------------------------------------------------------------------
    def client_as(self, user: str, command: str, *args: str, env: dict[str, str] | None = None,
                  input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        """Slurm's COMMAND (by name, from SLURM_BIN: never a slurmjwt-exec link) as USER, ENV in its
        environment (never in argv)."""
        return run_as(user, f"{SLURM_BIN}/{command}", *args, env={**self.env, **(env or {})},
                      input=input, timeout=timeout)

    def shell_as(self, user: str, script: str, env: dict[str, str] | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        """SCRIPT (sh -c) as USER in a login's environment: PATH with /usr/local/bin first, where
        install_exec links Slurm's commands to slurmjwt-exec."""
        return run_as(user, "/bin/sh", "-c", script, env={**self.env, **(env or {})}, timeout=timeout)

    def read_file(self, path: str) -> str:
        """A file a job wrote."""
        return Path(path).read_text(errors="replace")

    def install_exec(self) -> None:
        exec_links.install()

    def remove_exec(self) -> None:
        exec_links.remove()

    def client_conf_variant(self, name: str, extra: str) -> str:
        """A copy of slurm.conf with EXTRA lines, for Slurm's commands only: its path."""
        path = self.workdir / f"{name}.conf"
        path.write_text(self.conf_text() + extra)
        os.chmod(path, 0o644)
        return str(path)
