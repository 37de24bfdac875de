"""Slurm 24.11 on loopback for the tests, from Debian 13 (trixie) in a chroot (tests/trixie_root.py).

The same interface as tests/slurm_cluster.py's SlurmCluster (Debian 12's Slurm 22.05, on the
host), so the Slurm-facing tests run against either: `SLURMJWT_SLURM=24.11` (make test-slurm24)
picks this one. munged (the root's own key), slurmctld, slurmd and slurmrestd run inside the
root, started by this harness as its children (`chroot ... env -i ... DAEMON -D`: the child is
the daemon) and stopped by pid; the daemon and PAM module under test run on the host. Slurm's
commands run inside the root as the same uid as on the host (chroot, then runuser): each test
user is written into the root's passwd and group with its host name, uid and gid.

Files inside the root: /etc/slurm/slurm.conf (clients find it without SLURM_CONF), the HS256 key
copied from the host's as /etc/slurm/jwt_hs256.key (slurm:slurmjwt, the host file's mode:
23.11+ refuses any bit for others), a JWKS copied as /etc/slurm/jwks.json, slurmjwt-exec of this checkout with its
links in /usr/local/bin (install_exec) and its configuration /etc/slurmjwt/slurmjwtd.toml.
The daemon's scontrol signer runs `scontrol` through a wrapper (`scontrol_program`) that runs the
root's: chroot as root, an unprivileged user namespace (unshare --root) as SlurmUser.

Ports: slurmctld 27817, slurmd 27818, slurmrestd 27820 (the 22.05 cluster has 168xx).
At stop, and before a start, every process rooted in the root is stopped and every mount under
it removed, then checked gone (a crashed run's too).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import time
from pathlib import Path

import trixie_root
from conftest import CHECKOUT, progress
from slurm_cluster import COMMON_CONF, RestClient, SlurmError, _port_answers, _stop_child
from slurmjwtd.slurm_versions import newest_api, parse_version, release_of

ROOT = trixie_root.ROOT
CTLD_PORT, SLURMD_PORT, REST_PORT = 27817, 27818, 27820
CONF = "/etc/slurm/slurm.conf"  # inside the root, Slurm's default
KEY = "/etc/slurm/jwt_hs256.key"
JWKS = "/etc/slurm/jwks.json"
STATE, SPOOL, LOGS = "/var/spool/slurmctld-sjt", "/var/spool/slurmd-sjt", "/var/log/slurm-sjt"
REST_USER, REST_UID = "slurmrest", 27010
KEY_GROUP, KEY_GID = "slurmjwt", 27011
PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
EXEC = "/usr/local/lib/slurmjwt/slurmjwt-exec"
EXEC_CONFIG = "/etc/slurmjwt/slurmjwtd.toml"
LINK_DIR = "/usr/local/bin"


def inside(path: str) -> Path:
    """The host's path of PATH inside the root."""
    return ROOT / path.lstrip("/")


def _ids(name: str) -> tuple[int, int]:
    """(uid, gid) of NAME in the root's own passwd."""
    for line in inside("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise SlurmError(f"no user {name} in {ROOT}/etc/passwd")


class Slurm24Cluster(RestClient):
    """slurmctld, slurmd and slurmrestd 24.11 inside the trixie root, verifying with JWT_KEY (and JWKS)."""

    def __init__(self, workdir: Path, jwt_key: Path, jwks: Path | None = None,
                 cluster_name: str = "sjt24") -> None:
        self.workdir = Path(workdir)
        self.jwt_key = Path(jwt_key)
        self.jwks = Path(jwks) if jwks else None
        self.cluster_name = cluster_name
        self.conf = inside(CONF)  # the host's path of the file
        self.client_conf = CONF  # the path Slurm's commands are given
        self.env = {"SLURM_CONF": CONF}
        self.ctld_log = inside(f"{LOGS}/slurmctld.log")
        self.rest_log = self.workdir / "slurmrestd.log"
        self.rest_url = f"http://127.0.0.1:{REST_PORT}"
        self.scontrol_program = str(self.workdir / "bin" / "scontrol")
        self.ctld = self.slurmd = self.rest = self.munged = None
        self._started_once = False
        self.version: tuple[int, int, int] | None = None

    # -- life ---------------------------------------------------------------------------
    def start(self) -> "Slurm24Cluster":
        if self.running():
            return self
        trixie_root.build()  # a complete root is reused at once; a missing one fails loudly here
        progress(f"starting munged, slurmctld, slurmd and slurmrestd 24.11 in {ROOT}")
        trixie_root.clean()  # what a crashed run left
        for port in (CTLD_PORT, SLURMD_PORT, REST_PORT):
            if _port_answers(port):
                raise SlurmError(f"127.0.0.1:{port} is in use by a process outside {ROOT}: "
                                 f"ss -tlnp 'sport = :{port}'")
        try:
            trixie_root.mount_all()
            self._prepare()
            self.write_conf()
            self._start_munged()
            self._start_slurmctld(clear_state=not self._started_once)
            self._started_once = True
            self._start_slurmd()
            self._start_slurmrestd()
            self.version = parse_version(self.client_as("root", "scontrol", "--version").stdout)
            self.api = newest_api(release_of(self.version).api)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stop_slurm()
        _stop_child(self.munged)
        self.munged = None
        trixie_root.clean()

    def _stop_slurm(self) -> None:
        for proc in (self.rest, self.slurmd, self.ctld):
            _stop_child(proc)
        # slurmscriptd and slurmstepd end with them; anything else of Slurm's is not left running
        for pid in trixie_root.processes():
            if self.munged is None or pid != self.munged.pid:
                trixie_root.kill_pid(pid)

    def _daemon(self, name: str, argv: list[str], user: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.Popen:
        """ARGV inside the root as USER (root: None), its output in the workdir's NAME.out."""
        spec = []
        if user is not None:
            uid, gid = _ids(user)
            groups = [g.split(":")[2] for g in inside("/etc/group").read_text().splitlines()
                      if user in g.split(":")[3].split(",")]
            spec = [f"--userspec={uid}:{gid}", f"--groups={','.join(groups or [str(gid)])}"]
        clean = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/", "SLURM_CONF": CONF} | (env or {})
        with open(self.workdir / f"{name}.out", "ab") as out:
            return subprocess.Popen(["/usr/sbin/chroot", *spec, str(ROOT), "/usr/bin/env", "-i",
                                     *(f"{k}={v}" for k, v in clean.items()), *argv],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd="/")

    # -- files ---------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.workdir.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        hosts = f"127.0.0.1 localhost {os.uname().nodename}\n::1 localhost\n"
        inside("/etc/hosts").write_text(hosts)
        self._system_account(REST_USER, REST_UID, KEY_GROUP, KEY_GID)
        for d, owner in ((STATE, "slurm"), (LOGS, "slurm"), (SPOOL, "root"), ("/run/munge", "munge"),
                         ("/run/slurm", "slurm")):
            inside(d).mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chown(inside(d), *_ids(owner))
        os.chown(inside("/etc/munge/munge.key"), *_ids("munge"))
        for d in ("/etc/munge", "/var/lib/munge", "/var/log/munge"):
            os.chown(inside(d), *_ids("munge"))
        inside("/etc/slurm/cgroup.conf").write_text("CgroupPlugin=disabled\n")  # no cgroupfs here
        wrapper = Path(self.scontrol_program)
        wrapper.parent.mkdir(mode=0o755, exist_ok=True)
        wrapper.write_text(
            "#!/bin/sh\n# the Slurm 24.11 root's scontrol, for the daemon's scontrol signer\n"
            f"[ \"$(/usr/bin/id -u)\" = 0 ] && exec /usr/sbin/chroot {ROOT} /usr/bin/scontrol \"$@\"\n"
            f"exec /usr/bin/unshare --user --map-current-user --root={ROOT} /usr/bin/scontrol \"$@\"\n")
        os.chmod(wrapper, 0o755)

    def _system_account(self, user: str, uid: int, group: str, gid: int) -> None:
        """USER (its own group) and GROUP with USER in it, in the root, made once."""
        if trixie_root.in_root("getent", "group", group, check=False).returncode != 0:
            trixie_root.in_root("groupadd", "-g", str(gid), group)
        if trixie_root.in_root("getent", "passwd", user, check=False).returncode != 0:
            trixie_root.in_root("useradd", "-r", "-M", "-u", str(uid), "-d", "/nonexistent",
                                "-s", "/usr/sbin/nologin", "-G", group, user)

    def ensure_user(self, name: str) -> None:
        """NAME in the root's passwd and group with the host's uid and gid. Test users (sjt-*)
        come and go, so their entries are replaced; the root's own accounts (root, slurm, munge,
        slurmrest) are its own."""
        passwd, group = inside("/etc/passwd"), inside("/etc/group")
        if not name.startswith("sjt-"):
            if any(line.split(":")[0] == name for line in passwd.read_text().splitlines()):
                return
        try:
            host = pwd.getpwnam(name)
        except KeyError:
            return  # runuser will say it knows no such user
        entry = f"{name}:x:{host.pw_uid}:{host.pw_gid}::/tmp:/bin/sh"
        lines = passwd.read_text().splitlines()
        if entry in lines:
            return
        try:
            gname = grp.getgrgid(host.pw_gid).gr_name
        except KeyError:
            gname = name
        keep = [line for line in lines
                if line.split(":")[0] != name and line.split(":")[2] != str(host.pw_uid)]
        passwd.write_text("\n".join([*keep, entry]) + "\n")
        glines = [line for line in group.read_text().splitlines()
                  if line.split(":")[0] != gname and line.split(":")[2] != str(host.pw_gid)]
        group.write_text("\n".join([*glines, f"{gname}:x:{host.pw_gid}:"]) + "\n")

    def conf_text(self) -> str:
        alt = f"jwt_key={KEY}" + (f",jwks={JWKS}" if self.jwks is not None else "")
        lines = [
            f"ClusterName={self.cluster_name}",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={CTLD_PORT}",
            f"SlurmdPort={SLURMD_PORT}",
            "SlurmUser=slurm",
            "SlurmdUser=root",
            f"AuthAltParameters={alt}",
            f"StateSaveLocation={STATE}",
            f"SlurmdSpoolDir={SPOOL}",
            "SlurmctldPidFile=/run/slurm/slurmctld.pid",
            "SlurmdPidFile=/run/slurm/slurmd.pid",
            f"SlurmctldLogFile={LOGS}/slurmctld.log",
            f"SlurmdLogFile={LOGS}/slurmd.log",
            *COMMON_CONF,
            "NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        ]
        return "\n".join(lines) + "\n"

    def write_conf(self) -> None:
        self.conf.write_text(self.conf_text())
        os.chmod(self.conf, 0o644)
        key = inside(KEY)  # slurm:slurmjwt, the host key's mode: 23.11+ checks it
        key.unlink(missing_ok=True)
        key.write_bytes(self.jwt_key.read_bytes())
        os.chown(key, _ids("slurm")[0], KEY_GID)
        os.chmod(key, stat.S_IMODE(self.jwt_key.stat().st_mode))
        if self.jwks is not None:
            shutil.copyfile(self.jwks, inside(JWKS))
            os.chmod(inside(JWKS), 0o644)

    def client_conf_variant(self, name: str, extra: str) -> str:
        """A copy of slurm.conf with EXTRA lines, for Slurm's commands only: its path for them."""
        path = f"/etc/slurm/{name}.conf"
        inside(path).write_text(self.conf_text() + extra)
        os.chmod(inside(path), 0o644)
        return path

    # -- daemons --------------------------------------------------------------------------
    def _start_munged(self) -> None:
        if self.munged is not None and self.munged.poll() is None:
            return
        self.munged = self._daemon("munged", ["/usr/sbin/munged", "--foreground", "--force"],
                                   user="munge")
        deadline = time.monotonic() + 10
        while not inside("/run/munge/munge.socket.2").exists():
            if self.munged.poll() is not None or time.monotonic() > deadline:
                raise SlurmError(f"munged in {ROOT} did not start:\n"
                                 f"{self.tail(self.workdir / 'munged.out')}")
            time.sleep(0.05)

    def _start_slurmctld(self, clear_state: bool) -> None:
        self.ctld = self._daemon("slurmctld", ["/usr/sbin/slurmctld", "-D", *(["-c"] if clear_state else [])])
        deadline = time.monotonic() + 30
        while not (_port_answers(CTLD_PORT) and self.ping()):
            if self.ctld.poll() is not None:
                raise SlurmError(f"slurmctld 24.11 exited {self.ctld.returncode}:\n"
                                 f"{self.tail(self.ctld_log)}\n{self.tail(self.workdir / 'slurmctld.out')}")
            if time.monotonic() > deadline:
                raise SlurmError(f"slurmctld 24.11 not UP within 30 s:\n{self.tail(self.ctld_log)}")
            time.sleep(0.1)

    def ping(self) -> bool:
        try:
            run = self.client_as("root", "scontrol", "ping", timeout=5)
        except subprocess.TimeoutExpired:
            return False
        return run.returncode == 0 and "is UP" in run.stdout

    def _start_slurmd(self) -> None:
        self.slurmd = self._daemon("slurmd", ["/usr/sbin/slurmd", "-D", "-N", "localhost"])
        deadline = time.monotonic() + 30
        while self.node_state() != "idle":
            if self.slurmd.poll() is not None or time.monotonic() > deadline:
                raise SlurmError(f"slurmd 24.11 not idle within 30 s ({self.node_state()}):\n"
                                 f"{self.tail(inside(LOGS + '/slurmd.log'))}")
            time.sleep(0.1)

    def node_state(self) -> str:
        return self.client_as("root", "sinfo", "-h", "-n", "localhost", "-o", "%t").stdout.strip()

    def _start_slurmrestd(self) -> None:
        self.rest = self._daemon("slurmrestd", ["/usr/sbin/slurmrestd", "-s", "openapi/slurmctld",
                                                "-a", "rest_auth/jwt", f"127.0.0.1:{REST_PORT}"],
                                 user=REST_USER, env={"SLURM_JWT": "daemon"})
        self.rest_log = self.workdir / "slurmrestd.out"
        self.wait_for_rest(self.rest)

    # -- Slurm's commands -------------------------------------------------------------------
    def client_as(self, user: str, command: str, *args: str, env: dict[str, str] | None = None,
                  input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        """Slurm's COMMAND (by name, from /usr/bin in the root: never a slurmjwt-exec link) as
        USER, ENV in its environment (never in argv)."""
        return self._run(user, [f"/usr/bin/{command}", *args], env, input, timeout)

    def shell_as(self, user: str, script: str, env: dict[str, str] | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        """SCRIPT (sh -c) as USER in a login's environment: PATH with /usr/local/bin first, where
        install_exec links Slurm's commands to slurmjwt-exec."""
        return self._run(user, ["/bin/sh", "-c", script], env, None, timeout)

    def _run(self, user: str, argv: list[str], env: dict[str, str] | None, input: str | None,
             timeout: float) -> subprocess.CompletedProcess:
        """ARGV as USER inside the root (chroot, then runuser as the host's uid)."""
        self.ensure_user(user)
        if user != "root":
            argv = ["/usr/sbin/runuser", "-u", user, "--", *argv]
        clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", **self.env}
        return subprocess.run(["/usr/sbin/chroot", str(ROOT), *argv], capture_output=True, text=True,
                              input=input, timeout=timeout, cwd="/", env=clean | (env or {}))

    def read_file(self, path: str) -> str:
        """A file a job wrote (PATH as the job sees it)."""
        return inside(path).read_text(errors="replace")

    # -- slurmjwt-exec inside the root (make install's links, as tests/exec_links.py does) ---
    def install_exec(self) -> None:
        exe = CHECKOUT / "pam" / "slurmjwt-exec"
        inside(EXEC).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copyfile(exe, inside(EXEC))
        os.chmod(inside(EXEC), 0o755)
        names = subprocess.run([str(exe), "--list"], check=True, capture_output=True,
                               text=True).stdout.split()
        for name in names:
            if inside(f"/usr/bin/{name}").exists():
                link = inside(f"{LINK_DIR}/{name}")
                link.unlink(missing_ok=True)
                link.symlink_to(EXEC)
        self.write_exec_config("")

    def remove_exec(self) -> None:
        for link in inside(LINK_DIR).iterdir():
            if link.is_symlink() and os.readlink(link) == EXEC:
                link.unlink()
        inside(EXEC).unlink(missing_ok=True)
        inside(EXEC_CONFIG).unlink(missing_ok=True)

    def write_exec_config(self, text: str) -> None:
        """slurmjwtd.toml as slurmjwt-exec reads it (slurm_commands_use_token)."""
        inside(EXEC_CONFIG).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        inside(EXEC_CONFIG).write_text(text)
        os.chmod(inside(EXEC_CONFIG), 0o644)
