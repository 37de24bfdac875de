"""A real systemd as PID 1, booted for the tests inside new namespaces (no VM, no container
runtime), with the project's Debian package installed inside it.

    with Pid1() as sd:                   # boot (well under a second), tolerate a crashed run
        sd.install_deb(path)             # apt-get install inside the namespace, never the host
        sd.run("systemctl", "start", "slurmjwtd.socket")
        sd.systemctl("show", "-p", "StatusText", "slurmjwtd")
    # shut down: poweroff.target, then checks that no process, mount or cgroup is left
    # and that nothing in the host's /etc or /usr changed

How the machine is made (launcher, then `inner` as PID 1 of the new PID namespace, which
execs systemd):

- namespaces: PID, mount, cgroup, UTS, IPC and network (inside: loopback only, so nothing
  started inside can reach or take a host port). The cgroup namespace is rooted at a cgroup of
  our own, CGROUP under the host's cgroup2 hierarchy, removed at shutdown.
- files: every host mount but /, /proc, /sys and /dev is dropped (lazily, in the namespace
  only); / is read-only (a per-mount flag of the namespace's copy: the host's / is not
  touched); /etc, /var and /usr are overlays whose writes land in a tmpfs, so dpkg, its maintainer
  scripts and the tests' edits never reach the host's files (nor its dpkg database); /run, /tmp, /var/tmp,
  /dev and an empty /home are private; /proc/sys and /sys read-only. SHARED (a host directory) is bind-mounted
  at the same path, the way files come in.
- units: systemd's search path holds a curated copy of the base units (journald, dbus,
  the targets, poweroff) and what the tests install into /etc/systemd/system; generators
  are off. The project's units are installed by its package into the real unit directory
  (/lib/systemd/system, inside the namespace).
- PID 1 has no CAP_SYS_MODULE, CAP_SYS_TIME, CAP_SYS_RAWIO, CAP_SYSLOG...: nothing inside
  can load modules, set the host's clock or read its kernel log.
- the launcher is the only host process; PID 1 and the process between dies with it
  (PR_SET_PDEATHSIG). A crashed run's machine is found by the pid files in STATE and
  stopped before a new one boots.

Installing: `install_deb(path)` runs `apt-get install` of the .deb inside (no network: its
dependencies are installed on the host, which the overlays show); its maintainer scripts run
under this systemd, as on a booted Debian machine.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
REPO = Path(__file__).resolve().parent.parent
DROP_CAPS = ("-sys_module,-sys_time,-sys_rawio,-syslog,-wake_alarm,-block_suspend,-mac_admin,"
             "-mac_override,-sys_pacct,-audit_control,-audit_read,-perfmon")
BASE_UNITS = (
    "sysinit.target basic.target sockets.target paths.target timers.target slices.target "
    "local-fs.target local-fs-pre.target swap.target shutdown.target umount.target final.target "
    "poweroff.target halt.target reboot.target exit.target network.target nss-user-lookup.target "
    "systemd-poweroff.service systemd-halt.service systemd-reboot.service systemd-exit.service "
    "systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket "
    "dbus.socket dbus.service").split()
INSIDE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", "SYSTEMD_PAGER": "cat",
              "PAGER": "cat", "SYSTEMD_COLORS": "0"}
# host paths that nothing done inside may change (checked at shutdown)
HOST_UNTOUCHED = ("/etc", "/usr", "/var/lib/dpkg")

# PID 1 of the new PID namespace: makes the file system view, then execs systemd
INNER = r"""#!/bin/bash
set -eu
STATE=$1; SHARED=$2; MID=$3; DROP_CAPS=$4; SYSTEMD=$5
[ $$ = 1 ] || { echo "inner: not pid 1" >&2; exit 90; }
[ "$(readlink /proc/self/ns/mnt)" != "$(cat "$STATE/host_mntns")" ] || { echo "inner: host mntns" >&2; exit 91; }
mount --make-rprivate /
# a procfs for the new PID namespace, in place of the host's (not stacked on it)
umount -l /proc
mount -t proc -o nosuid,nodev,noexec proc /proc
for mp in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
    mp=$(printf '%b' "$mp")
    case "$mp" in /|/proc|/proc/*|/sys|/sys/*|/dev|/dev/*) ;; *) umount -l "$mp" 2>/dev/null || true;; esac
done
mount -t tmpfs -o mode=755,nosuid,nodev,size=25% tmpfs /run
mkdir -p /run/pid1/ovl /run/pid1/share /run/systemd /run/host
mount -t tmpfs -o mode=700,size=50% tmpfs /run/pid1/ovl
echo slurmjwt-pid1 >/run/host/container-manager
# /etc, /var, /usr: overlays, writes land in a tmpfs (the host's files are never modified)
for d in etc var usr; do
    mkdir -p /run/pid1/ovl/$d/upper /run/pid1/ovl/$d/work
    mount -t overlay overlay -o lowerdir=/$d,upperdir=/run/pid1/ovl/$d/upper,workdir=/run/pid1/ovl/$d/work /$d
done
# the unit search path: the curated base units and what is installed later; no generators
mount -t tmpfs -o mode=755,size=16m tmpfs /usr/lib/systemd/system
cp -a "$STATE/base/." /usr/lib/systemd/system/
for d in /usr/lib/systemd/system-generators /usr/lib/systemd/system-environment-generators \
         /usr/lib/systemd/system-shutdown /usr/local/lib/systemd/system /etc/systemd/system-generators \
         /usr/local/lib/systemd/system-generators; do
    [ -d "$d" ] && mount -t tmpfs -o mode=755,size=1m,ro tmpfs "$d"
done
mount -t tmpfs -o mode=755,size=16m tmpfs /etc/systemd/system
mount -t tmpfs -o mode=1777,nosuid,nodev,size=25% tmpfs /var/tmp
echo slurmjwt-pid1 >/etc/hostname
mkdir -p /etc/systemd/journald.conf.d /etc/systemd/system.conf.d
printf '[Journal]\nStorage=volatile\nForwardToSyslog=no\nForwardToKMsg=no\nForwardToConsole=no\nForwardToWall=no\nReadKMsg=no\nRuntimeMaxUse=64M\n' \
    >/etc/systemd/journald.conf.d/00-pid1.conf
printf '[Manager]\nShowStatus=yes\nLogColor=no\nDefaultTimeoutStopSec=15s\nDefaultTimeoutStartSec=60s\n' \
    >/etc/systemd/system.conf.d/00-pid1.conf
D=/run/pid1/dev; mkdir -p $D
mount -t tmpfs -o mode=755,nosuid,size=1m tmpfs $D
for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name ma mi <<<"$n"; mknod -m 666 "$D/$name" c "$ma" "$mi"
done
mkdir -p $D/pts $D/shm $D/mqueue
ln -s pts/ptmx $D/ptmx; ln -s /proc/self/fd $D/fd
ln -s /proc/self/fd/0 $D/stdin; ln -s /proc/self/fd/1 $D/stdout; ln -s /proc/self/fd/2 $D/stderr
if [ -t 0 ]; then touch $D/console; mount --bind /proc/self/fd/0 $D/console; fi
umount -l /dev
mount --move $D /dev
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev,size=25% tmpfs /dev/shm
mount -t mqueue -o nosuid,nodev,noexec mqueue /dev/mqueue
mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro,nosuid,nodev,noexec /proc/sys
if [ -e /proc/sysrq-trigger ]; then mount --bind /proc/sysrq-trigger /proc/sysrq-trigger; mount -o remount,bind,ro /proc/sysrq-trigger; fi
if [ -e /proc/kmsg ]; then mount --bind /dev/null /proc/kmsg; fi
# a sysfs of our own (read-only, as a container's), not the host's with its cgroup v1 mounts
umount -l /sys
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
mount --bind "$SHARED" /run/pid1/share
mount -t tmpfs -o mode=1777,nosuid,nodev,size=25% tmpfs /tmp
mkdir -p "$SHARED"; mount --move /run/pid1/share "$SHARED"
# an empty /home, writable, as on a node whose homes come from elsewhere
mount -t tmpfs -o mode=755,nosuid,nodev,size=16m tmpfs /home
mount -o remount,bind,ro /
mount --make-rshared /
exec env -i container=slurmjwt-pid1 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    TERM=vt220 LANG=C.UTF-8 setpriv --bounding-set="$DROP_CAPS" -- \
    "$SYSTEMD" --unit=pid1.target --machine-id="$MID" --log-level=info --show-status=yes
"""

# The host-side monitor: owns the pty that is /dev/console inside (logged to console.log), forks
# the "unsharer" which enters our cgroup, unshares, leaves the cgroup again (so that the
# namespace's cgroup root holds only its own processes) and forks PID 1. PID 1 and the unsharer
# die with the monitor (PR_SET_PDEATHSIG); once PID 1 is gone it removes the empty cgroup tree.
LAUNCHER = r"""
import ctypes, os, pty, select, signal, sys
state, cg, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
libc = ctypes.CDLL(None, use_errno=True)
FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x20000000 | 0x40000000
def starttime(pid): return open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[19]
def record(name, pid):
    with open(os.path.join(state, name + ".pid"), "w") as f: f.write("%d %s\n" % (pid, starttime(pid)))
record("launcher", os.getpid())
cg2 = os.path.dirname(cg)
orig = [l.split("::", 1)[1].strip() for l in open("/proc/self/cgroup") if l.startswith("0::")][0]
orig_procs = os.path.join(cg2, orig.lstrip("/"), "cgroup.procs")
m, s = pty.openpty()
ppid = os.getpid()
pid = os.fork()
if pid == 0:
    try:
        os.setsid()
        libc.prctl(1, signal.SIGKILL)
        if os.getppid() != ppid: os._exit(1)
        for fd in (0, 1, 2): os.dup2(s, fd)
        os.close(m); os.close(s)
        open(cg + "/cgroup.procs", "w").write("0")
        if libc.unshare(FLAGS) != 0: raise OSError(ctypes.get_errno(), "unshare")
        open(orig_procs, "w").write("0")
        child = os.fork()
        if child == 0:
            libc.prctl(1, signal.SIGKILL)
            open(cg + "/cgroup.procs", "w").write("0")
            os.execvp(cmd[0], cmd)
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM): signal.signal(sig, signal.SIG_IGN)
        _, st = os.waitpid(child, 0)
        os._exit(os.waitstatus_to_exitcode(st) & 0xff)
    except BaseException as e:
        os.write(2, ("unsharer: %r\n" % (e,)).encode()); os._exit(127)
record("unshare", pid)
os.close(s)
log = open(os.path.join(state, "console.log"), "ab", buffering=0)
for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE): signal.signal(sig, signal.SIG_IGN)
status = None
while status is None:
    if select.select([m], [], [], 0.3)[0]:
        try: log.write(os.read(m, 65536))
        except OSError: pass
    done, st = os.waitpid(pid, os.WNOHANG)
    if done: status = st
for root, dirs, files in os.walk(cg, topdown=False):
    try: os.rmdir(root)
    except OSError: pass
log.write(b"\n[launcher: namespace ended, wait status %d]\n" % status)
"""


class Pid1Error(RuntimeError):
    pass


def _starttime(pid: int) -> str | None:
    """PID's start time (field 22 of /proc/PID/stat), None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


CGROUP2_FALLBACK = Path("/var/tmp/slurmjwt-pid1-cgroup2")


def _cgroup2_root() -> Path:
    """Where the host's cgroup2 hierarchy is mounted. A host with none mounted (cgroup v1 only,
    no systemd) gets it mounted at CGROUP2_FALLBACK, once: later runs find it there."""
    for line in open("/proc/self/mountinfo"):
        left, right = line.split(" - ", 1)
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    CGROUP2_FALLBACK.mkdir(mode=0o755, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "cgroup2", "-o", "nosuid,nodev,noexec", "cgroup2",
                              str(CGROUP2_FALLBACK)], capture_output=True, text=True)
    if mounted.returncode != 0:
        raise Pid1Error(f"no cgroup2 hierarchy on the host, and mounting one failed: "
                        f"{mounted.stderr.strip()}")
    return CGROUP2_FALLBACK


class Pid1:
    """One systemd as PID 1 of its own namespaces. STATE (host) holds pid files and logs;
    SHARED (host) is visible inside at the same path."""

    def __init__(self, state: Path = Path("/var/tmp/slurmjwt-pid1"),
                 shared: Path = Path("/tmp/slurmjwt-pid1"), cgroup: str = "slurmjwt-pid1",
                 boot_timeout: float = 30) -> None:
        self.state, self.shared = Path(state), Path(shared)
        self.cgroup = _cgroup2_root() / cgroup
        self.boot_timeout = boot_timeout
        self.launcher: subprocess.Popen | None = None
        self.marker = self.state / "booted-at"

    # -- processes we recorded -------------------------------------------------------------
    def _recorded(self, name: str) -> int | None:
        """The pid recorded as NAME if that very process (same start time) is still alive."""
        try:
            pid, start = (self.state / f"{name}.pid").read_text().split()
        except (OSError, ValueError):
            return None
        return int(pid) if _starttime(int(pid)) == start else None

    @property
    def pid(self) -> int:
        """PID 1's host pid."""
        pid = self._recorded("pid1")
        if pid is None:
            raise Pid1Error("systemd is not running")
        return pid

    def running(self) -> bool:
        pid = self._recorded("pid1")
        return pid is not None and os.readlink(f"/proc/{pid}/ns/pid") == self._ns("pidns")

    def _ns(self, name: str) -> str:
        try:
            return (self.state / name).read_text().strip()
        except OSError:
            return ""

    def leftover_processes(self) -> list[int]:
        """Live processes in the recorded PID or mount namespace."""
        wanted = {ns for ns in (self._ns("pidns"), self._ns("mntns")) if ns}
        found = []
        if not wanted:
            return found
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                spaces = {os.readlink(f"/proc/{entry}/ns/pid"), os.readlink(f"/proc/{entry}/ns/mnt")}
            except OSError:
                continue
            if spaces & wanted and _starttime(int(entry)) is not None:
                found.append(int(entry))
        return found

    # -- boot ------------------------------------------------------------------------------
    def boot(self) -> Pid1:
        if os.geteuid() != 0:
            raise Pid1Error("booting systemd needs root")
        if not os.access(SYSTEMD, os.X_OK):
            raise Pid1Error(f"{SYSTEMD} missing: apt-get install systemd")
        self.shutdown(check=False)  # a crashed run's machine, if any
        problems = self.problems(check_host_files=False)
        if problems:
            raise Pid1Error("a previous machine could not be cleaned: " + "; ".join(problems))
        shutil.rmtree(self.state, ignore_errors=True)
        shutil.rmtree(self.shared, ignore_errors=True)
        self.state.mkdir(mode=0o700, parents=True)
        self.shared.mkdir(mode=0o755, parents=True)
        os.chmod(self.shared, 0o755)
        (self.state / "host_mntns").write_text(os.readlink("/proc/self/ns/mnt") + "\n")
        (self.state / "inner.sh").write_text(INNER)
        (self.state / "launcher.py").write_text(LAUNCHER)
        self._write_base_units()
        self.marker.touch()
        time.sleep(0.01)  # host files changed from here on are changes we made
        self.cgroup.mkdir()
        machine_id = os.urandom(16).hex()
        with open(self.state / "launcher.log", "ab") as log:
            self.launcher = subprocess.Popen(
                [sys.executable if sys.executable else "/usr/bin/python3", "-I",
                 str(self.state / "launcher.py"), str(self.state), str(self.cgroup),
                 "/bin/bash", str(self.state / "inner.sh"), str(self.state), str(self.shared),
                 machine_id, DROP_CAPS, SYSTEMD],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                cwd="/", env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        try:
            self._wait_for_pid1()
            self._wait_until_up()
        except BaseException:
            self.shutdown(check=False)
            raise
        return self

    def _write_base_units(self) -> None:
        base = self.state / "base"
        base.mkdir()
        for unit in BASE_UNITS:
            source = Path("/usr/lib/systemd/system") / unit
            if source.exists():
                shutil.copyfile(source, base / unit)
        (base / "pid1.target").write_text(
            "[Unit]\nDescription=slurmjwt test system\nRequires=basic.target\nAfter=basic.target\n"
            "Wants=systemd-journald.service dbus.socket\nAllowIsolate=yes\n")
        for alias in ("default.target", "multi-user.target"):
            (base / alias).symlink_to("pid1.target")
        (base / "ctrl-alt-del.target").symlink_to("poweroff.target")

    def _wait_for_pid1(self) -> None:
        """Find PID 1 (a child of the unsharer that has exec'd systemd) and record it."""
        systemd = os.path.realpath(SYSTEMD)
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            unsharer = self._recorded("unshare")
            if unsharer is not None:
                try:
                    children = Path(f"/proc/{unsharer}/task/{unsharer}/children").read_text().split()
                except OSError:
                    children = []
                for child in map(int, children):
                    try:
                        if os.readlink(f"/proc/{child}/exe") == systemd:
                            (self.state / "pid1.pid").write_text(f"{child} {_starttime(child)}\n")
                            (self.state / "pidns").write_text(os.readlink(f"/proc/{child}/ns/pid"))
                            (self.state / "mntns").write_text(os.readlink(f"/proc/{child}/ns/mnt"))
                            return
                    except OSError:
                        continue
            elif self.launcher.poll() is not None:
                break
            time.sleep(0.02)
        raise Pid1Error(f"systemd did not start:\n{self.logs()}")

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while time.monotonic() < deadline and self.running():
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.05)
        raise Pid1Error(f"boot did not finish (is-system-running: {state!r}):\n{self.logs()}")

    def logs(self, lines: int = 40) -> str:
        out = []
        for name in ("launcher.log", "console.log"):
            try:
                text = (self.state / name).read_text(errors="replace")
            except OSError:
                continue
            out.append(f"--- {name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)

    # -- inside ----------------------------------------------------------------------------
    def argv(self, *args: str, env: dict[str, str] | None = None) -> list[str]:
        """ARGS as a command line entering every namespace of the machine, with a clean
        environment and PID 1's capability bounding set."""
        return ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "-C", "--",
                "setpriv", f"--bounding-set={DROP_CAPS}", "--", "env", "-i",
                *(f"{k}={v}" for k, v in (INSIDE_ENV | (env or {})).items()), *args]

    def run(self, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ARGS inside; CHECK: raise with its output if it fails."""
        result = subprocess.run(self.argv(*args, env=env), capture_output=True, text=True,
                                input=input, timeout=timeout, cwd="/",
                                stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise Pid1Error(f"{shlex.join(args)} exited {result.returncode}:\n"
                            f"{result.stdout}{result.stderr}")
        return result

    def spawn(self, *args: str, **kw) -> subprocess.Popen:
        """ARGS started inside and left running (a Popen of nsenter, which waits for it)."""
        return subprocess.Popen(self.argv(*args), cwd="/", **kw)

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        return self.run("/bin/sh", "-ec", script, **kw)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("systemctl", "--no-pager", *args, check=check)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """systemctl show UNIT's PROPERTIES, as a dict."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", *args).stdout

    def path(self, inside: str) -> Path:
        """The host path through which the file INSIDE is read and written (PID 1's root)."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644, owner: str = "root:root") -> None:
        """Write TEXT to the file INSIDE (through /etc, /var, /usr's overlays or the tmpfses)."""
        self.run("install", "-D", "-m", f"{mode:o}", "-o", owner.split(":")[0],
                 "-g", owner.split(":")[1], "/dev/stdin", inside, input=text)

    def copy_in(self, source: Path, inside: str) -> None:
        """Copy the host file or tree SOURCE to INSIDE (via SHARED)."""
        staged = self.shared / "copy-in"
        shutil.rmtree(staged, ignore_errors=True)
        if Path(source).is_dir():
            shutil.copytree(source, staged, symlinks=True)
        else:
            staged.mkdir()
            shutil.copy2(source, staged / Path(source).name)
            staged = staged / Path(source).name
        self.run("cp", "-a", "--no-preserve=ownership", "-T", str(staged), inside)
        shutil.rmtree(self.shared / "copy-in", ignore_errors=True)

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    # -- installing the project --------------------------------------------------------------
    def install_deb(self, deb: Path, *options: str) -> None:
        """apt-get install DEB inside (its dependencies are the host's installed packages,
        which the overlays show): its maintainer scripts run under this systemd."""
        self.copy_in(Path(deb), f"/var/tmp/{Path(deb).name}")
        self.apt("install", *options, f"/var/tmp/{Path(deb).name}")

    def apt(self, *args: str) -> subprocess.CompletedProcess:
        # a container image's /usr/sbin/policy-rc.d (exit 101: start nothing) would stop the
        # maintainer scripts' deb-systemd-invoke; a booted Debian has none (removed inside only)
        self.run("rm", "-f", "/usr/sbin/policy-rc.d")
        return self.run("apt-get", "-y", *args, env={"DEBIAN_FRONTEND": "noninteractive"},
                        timeout=300)

    # -- shutdown --------------------------------------------------------------------------
    def shutdown(self, check: bool = True, timeout: float = 20) -> None:
        """poweroff.target (SIGRTMIN+4 to PID 1); SIGKILL what is left after TIMEOUT; then,
        with CHECK, raise if any process, cgroup or mount is left or a host file changed."""
        pid1 = self._recorded("pid1")
        if pid1 is not None:
            os.kill(pid1, signal.SIGRTMIN + 4)
            self._wait_gone(("unshare",), timeout)
            if self._recorded("pid1") is not None:
                os.kill(pid1, signal.SIGKILL)  # kills the whole PID namespace
        self._wait_gone(("unshare", "launcher"), 10)
        for name in ("unshare", "launcher"):
            pid = self._recorded(name)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        for pid in self.leftover_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.leftover_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.launcher is not None:
            try:
                self.launcher.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.cgroup.exists():
            for root, _dirs, _files in os.walk(self.cgroup, topdown=False):
                try:
                    os.rmdir(root)
                except OSError:
                    pass
        problems = self.problems()
        if not problems:
            for name in ("pid1.pid", "unshare.pid", "launcher.pid", "pidns", "mntns"):
                (self.state / name).unlink(missing_ok=True)
        shutil.rmtree(self.shared, ignore_errors=True)
        if check and problems:
            raise Pid1Error("after shutdown: " + "; ".join(problems))

    def _wait_gone(self, names: tuple[str, ...], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(self._recorded(n) is not None for n in names) and time.monotonic() < deadline:
            time.sleep(0.05)

    def problems(self, check_host_files: bool = True) -> list[str]:
        """What a shutdown left behind (empty when clean)."""
        found = []
        left = self.leftover_processes()
        if left:
            found.append(f"processes left in its namespaces: {left}")
        for name in ("pid1", "unshare", "launcher"):
            if self._recorded(name) is not None:
                found.append(f"{name} process {self._recorded(name)} still alive")
        if self.cgroup.exists():
            found.append(f"cgroup {self.cgroup} left")
        mounts = [line for line in open("/proc/self/mountinfo")
                  if any(p == s or p.startswith(s + "/") for p in line.split()[3:5]
                         for s in (str(self.shared), "/run/pid1"))]
        if mounts:
            found.append(f"host mounts left: {mounts}")
        root = next(line.split() for line in open("/proc/self/mountinfo") if line.split()[4] == "/")
        if "ro" in root[5].split(","):
            found.append("the host's / is read-only")
        if check_host_files:
            changed = self.host_files_changed()
            if changed:
                found.append(f"host files changed: {changed[:20]}")
        return found

    def host_files_changed(self) -> list[str]:
        """Files and directories of the host's /etc, /usr and dpkg database modified or changed (content,
        owner, mode) since boot: must be none, everything inside goes to the overlays."""
        if not self.marker.exists():
            return []
        result = subprocess.run(["find", *HOST_UNTOUCHED, "-xdev", "(", "-newer", str(self.marker),
                                 "-o", "-cnewer", str(self.marker), ")", "-print"],
                                capture_output=True, text=True)
        return result.stdout.split()

    def __enter__(self) -> Pid1:
        return self.boot()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
