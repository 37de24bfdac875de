"""A real OpenSSH sshd on loopback for the tests, with a PAM service of its own.

sshd names its PAM service after the name it was run by, so running
/usr/sbin/sshd through a symlink WORKDIR/SERVICE makes it use /etc/pam.d/SERVICE:
the caller's stack, written at start() and removed at stop(). The system's
/etc/pam.d/sshd and /etc/ssh are never read or touched.

Logins are by key only. Authorized keys are root-owned files WORKDIR/authorized_keys/USER
(0644, in a root-owned 0755 directory), so a test user cannot add keys of its own.
StrictModes is off because the tests' workdir sits under /tmp (mode 1777), which sshd's
strict path check refuses whoever owns the key file.

Locked passwords: the test users are made with `useradd`, whose shadow password is "!".
Under UsePAM sshd leaves that check to the PAM account stack, and pam_unix's account
check looks only at expiry dates, not at a locked password: a key login goes through.

Everything started here is a child of the test process, stopped by its pid together
with its descendants (each connection's "[priv]" monitor and the user's shell).
A listener that a crashed run left running with the same sshd_config is killed at start().
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import progress
from slurm_cluster import _port_answers

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
PAM_DIR = Path("/etc/pam.d")
PRIVSEP_DIR = Path("/run/sshd")  # sshd chroots its pre-auth child here; Debian's tmpfiles make it
PAM_MODULE = Path(__file__).resolve().parent.parent / "pam" / "pam_slurmjwt.so"
CLIENT_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # no SSH_AUTH_SOCK: only -i keys


class SshError(RuntimeError):
    pass


def pam_stack(socket_path: str, *args: str, module: Path = PAM_MODULE,
              timeout_ms: int = 2000) -> list[str]:
    """A minimal sshd PAM stack for key logins with pam_slurmjwt in the session stack.

    sshd runs no PAM auth for a key login; account is pam_unix (expiry only: a locked
    "!" password does not stop a key login); the module is `optional`, as a site would
    install it, so that no answer from slurmjwtd never stops a login."""
    if not module.exists():
        raise SshError(f"{module} missing: run `make -C pam` first")
    return [
        "account  required pam_unix.so",
        "session  required pam_permit.so",
        f"session  optional {module} socket={socket_path} timeout={timeout_ms} "
        f"{' '.join(args)}".rstrip(),
    ]


# -- processes ------------------------------------------------------------------------------
def _ppids() -> dict[int, int]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    found[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return found


def _descendants(pid: int) -> list[int]:
    """PID's children, grandchildren and so on, nearest first."""
    ppids = _ppids()
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, pp in ppids.items() if pp in frontier]
        found += children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal_and_wait(pids: list[int], timeout: float = 5.0) -> None:
    """SIGTERM PIDS, wait up to TIMEOUT for them all, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


class SshServer:
    """sshd -D on 127.0.0.1:PORT with PAM service SERVICE whose stack is PAM_LINES."""

    def __init__(self, workdir: Path, pam_lines: list[str] | str, port: int = 2222,
                 service: str = "sshd-sjt") -> None:
        self.workdir = Path(workdir)
        self.pam_text = pam_lines if isinstance(pam_lines, str) else "\n".join(pam_lines) + "\n"
        self.port = port
        self.service = service
        self.binary = self.workdir / service  # the PAM service name is this file's name
        self.config = self.workdir / "sshd_config"
        self.log_file = self.workdir / "sshd.log"
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.keys_dir = self.workdir / "authorized_keys"
        self.client_dir = self.workdir / "client_keys"
        self.pam_file = PAM_DIR / service
        self.proc: subprocess.Popen | None = None
        self.keys: dict[str, Path] = {}

    # -- life ---------------------------------------------------------------------------
    def start(self) -> SshServer:
        if self.running():
            return self
        for binary in (SSHD, SSH, SSH_KEYGEN):
            if not os.access(binary, os.X_OK):
                raise SshError(f"{binary} missing: apt-get install openssh-server openssh-client")
        progress(f"starting sshd on 127.0.0.1:{self.port} (PAM service {self.service})")
        self.kill_leftovers()
        if _port_answers(self.port):
            ss = subprocess.run(["ss", "-Htlnp", f"sport = :{self.port}"], check=False,
                                capture_output=True, text=True).stdout.strip()
            raise SshError(f"127.0.0.1:{self.port} is in use by a process this harness does not "
                           f"know: {ss or '(ss shows nothing)'}")
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self._make_dirs()
        if not self.host_key.exists():
            _keygen(self.host_key, "sjt-test-host")
        self.config.write_text(self.config_text())
        if self.binary.is_symlink() or self.binary.exists():
            self.binary.unlink()
        self.binary.symlink_to(SSHD)
        self.pam_file.write_text(self.pam_text)
        os.chmod(self.pam_file, 0o644)
        try:
            check = subprocess.run([str(self.binary), "-t", "-f", str(self.config)],
                                   check=False, capture_output=True, text=True, timeout=30)
            if check.returncode != 0:
                raise SshError(f"sshd -t refused {self.config}: {check.stderr.strip()}")
            with open(self.log_file, "ab") as log:
                # an absolute argv[0]: sshd re-executes itself by it for every connection
                self.proc = subprocess.Popen(
                    [str(self.binary), "-D", "-f", str(self.config), "-E", str(self.log_file)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
            deadline = time.monotonic() + 15
            while not _port_answers(self.port):
                if self.proc.poll() is not None:
                    raise SshError(f"sshd exited {self.proc.returncode}:\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise SshError(f"sshd not listening on 127.0.0.1:{self.port} within 15 s:\n{self.tail()}")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the listener and every process under it (open connections), remove the PAM file."""
        if self.proc is not None:
            pids = [self.proc.pid, *_descendants(self.proc.pid)]
            _signal_and_wait(pids)
            self.proc.wait(timeout=5)
            self.proc = None
        self.pam_file.unlink(missing_ok=True)

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill_leftovers(self) -> None:
        """Kill sshd listeners (and what runs under them) that name this config: a crashed run's."""
        needle = str(self.config).encode()
        mine = self.proc.pid if self.proc is not None else None
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == mine:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    argv = fh.read()
            except OSError:
                continue
            # the listener's title keeps its command line: "sshd: /path/sshd-sjt -D -f CFG ... [listener]"
            if needle in argv and b"sshd" in argv and _alive(int(entry)):
                _signal_and_wait([int(entry), *_descendants(int(entry))])

    def _make_dirs(self) -> None:
        for d, mode in ((self.workdir, 0o755), (self.keys_dir, 0o755), (self.client_dir, 0o700)):
            d.mkdir(mode=mode, parents=True, exist_ok=True)
            os.chmod(d, mode)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def config_text(self) -> str:
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            "UsePAM yes",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            f"AuthorizedKeysFile {self.keys_dir}/%u",
            "StrictModes no",  # the workdir is under /tmp (1777): see the module docstring
            "PermitUserEnvironment no",
            # no AcceptEnv line: the client's environment never reaches the session
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "LoginGraceTime 20",
            "LogLevel VERBOSE",
        ]
        return "\n".join(lines) + "\n"

    # -- clients ------------------------------------------------------------------------
    def add_key(self, user: str) -> Path:
        """Make a key pair for USER (private key kept by root) and authorize its public half."""
        self._make_dirs()
        key = self.client_dir / user
        if not key.exists():
            _keygen(key, f"sjt-test-{user}")
        authorized = self.keys_dir / user
        authorized.write_text(Path(f"{key}.pub").read_text())
        os.chown(authorized, 0, 0)
        os.chmod(authorized, 0o644)
        self.keys[user] = key
        return key

    def ssh(self, user: str, command: str | None = None, key: Path | None = None, *,
            tty: bool = False, input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess:
        """/usr/bin/ssh as root to USER@127.0.0.1, by KEY (default: the one add_key made).
        Without COMMAND the remote side starts USER's login shell; TTY forces a pty (-tt)."""
        return subprocess.run(self.ssh_argv(user, command, key, tty), check=False, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, env=CLIENT_ENV)

    def spawn(self, user: str, command: str) -> subprocess.Popen:
        """`ssh USER@127.0.0.1 COMMAND` left running: a login that lasts as long as COMMAND."""
        return subprocess.Popen(self.ssh_argv(user, command), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=CLIENT_ENV)

    def ssh_argv(self, user: str, command: str | None = None, key: Path | None = None,
                 tty: bool = False) -> list[str]:
        key = key or self.keys[user]
        args = [SSH, "-F", "none", "-i", str(key), "-p", str(self.port),
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]
        if tty:
            args.append("-tt")
        args.append(f"{user}@127.0.0.1")
        if command is not None:
            args.append(command)
        return args

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"({self.log_file} unreadable)"


def _keygen(path: Path, comment: str) -> None:
    for p in (path, Path(f"{path}.pub")):
        p.unlink(missing_ok=True)
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
