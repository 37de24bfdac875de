"""A Debian 13 (trixie) root with Slurm 24.11, for `make test-slurm24`.

`debootstrap --variant=minbase trixie` into ROOT (a cache directory, reused across runs), then
Slurm's packages installed inside it with the root's own apt. The host's apt sources are never
touched: everything trixie is read and written under ROOT. A root is complete when MARK is
there; one without it (a build that crashed or was stopped) is removed and built again.
The first build downloads about 500 MB; a complete root is reused as it is.

While the cluster runs, ROOT has the kernel's file systems mounted in it (`mounts()`), and
`leftovers()`/`clean()` find and remove whatever a crashed run left: processes whose root
directory is ROOT, mounts under ROOT.

Run as a program (as root): `python3 tests/trixie_root.py build` builds or checks the root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("SLURMJWT_TRIXIE_ROOT", "/var/cache/slurmjwt-tests/trixie"))
MARK = ROOT / ".slurmjwt-tests-complete"
MIRROR = os.environ.get("SLURMJWT_TRIXIE_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("slurmctld", "slurmd", "slurmrestd", "slurm-client", "munge", "slurm-wlm-jwt-plugin",
            "passwd", "util-linux", "procps")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# what the Slurm daemons and clients need of the kernel inside the root; unmounted in reverse
MOUNTS = (("proc", ["-t", "proc", "-o", "nosuid,nodev,noexec", "proc"]),
          ("sys", ["-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs"]),
          ("dev", ["--bind", "/dev"]),
          ("dev/pts", ["--bind", "/dev/pts"]),
          ("dev/shm", ["-t", "tmpfs", "-o", "nosuid,nodev,mode=1777", "tmpfs"]),
          ("run", ["-t", "tmpfs", "-o", "nosuid,nodev,mode=755,size=64m", "tmpfs"]))


class RootError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[trixie root] {message}", file=sys.stderr, flush=True)


def complete() -> bool:
    return MARK.is_file() and (ROOT / "usr/sbin/slurmctld").exists()


def in_root(*argv: str, check: bool = True, timeout: float = 1800,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """ARGV as root inside ROOT, with a clean environment."""
    clean = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
    run = subprocess.run(["/usr/sbin/chroot", str(ROOT), "/usr/bin/env", "-i",
                          *(f"{k}={v}" for k, v in (clean | (env or {})).items()), *argv],
                         capture_output=True, text=True, timeout=timeout)
    if check and run.returncode != 0:
        raise RootError(f"in {ROOT}: {' '.join(argv)} exited {run.returncode}:\n"
                        f"{(run.stdout + run.stderr)[-3000:]}")
    return run


# -- mounts and processes -------------------------------------------------------------------
def mounted() -> list[str]:
    """Mount points under ROOT, deepest last as /proc/self/mounts lists them."""
    prefix = str(ROOT) + "/"
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1].replace("\\040", " ") for line in fh]
    return [p for p in points if p.startswith(prefix)]


def mount_all() -> None:
    for name, args in MOUNTS:
        target = ROOT / name
        if str(target) in mounted():
            continue
        target.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if run.returncode != 0:
            raise RootError(f"mount {target} failed: {run.stderr.strip()}")


def unmount_all() -> None:
    for point in reversed(mounted()):
        for attempt in range(20):
            if subprocess.run(["umount", point], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "--lazy", point], capture_output=True)
    left = mounted()
    if left:
        raise RootError(f"still mounted under {ROOT}: {' '.join(left)} (umount them by hand)")


def processes() -> list[int]:
    """Pids of processes whose root directory is ROOT: only this harness starts any."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/root") == str(ROOT):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def kill_pid(pid: int, timeout: float = 10) -> None:
    """SIGTERM PID if it is still rooted in ROOT; SIGKILL after TIMEOUT."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        if pid not in processes():
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while pid in processes() and time.monotonic() < deadline:
            time.sleep(0.05)


def kill_processes(timeout: float = 10) -> None:
    """SIGTERM each process rooted in ROOT, by pid; SIGKILL those left after TIMEOUT."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        pids = processes()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not processes():
            return
    raise RootError(f"processes rooted in {ROOT} survive SIGKILL: {processes()}")


def clean() -> None:
    """Stop everything rooted in ROOT and unmount; then check that nothing is left."""
    kill_processes()
    unmount_all()
    left_pids, left_mounts = processes(), mounted()
    if left_pids or left_mounts:
        raise RootError(f"{ROOT} not clean: processes {left_pids}, mounts {left_mounts}")


# -- building -------------------------------------------------------------------------------
def build() -> None:
    """Build ROOT unless it is complete; a partial one is removed first."""
    if complete():
        return
    if os.geteuid() != 0:
        raise RootError("building the trixie root needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        raise RootError("debootstrap missing: apt-get install debootstrap (make test-slurm24 does)")
    clean()
    if ROOT.exists():
        log(f"removing the incomplete root {ROOT}")
        shutil.rmtree(ROOT)
    ROOT.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    t0 = time.monotonic()
    log(f"debootstrap --variant=minbase trixie {ROOT} {MIRROR} (downloads; a few minutes)")
    run = subprocess.run(["debootstrap", "--variant=minbase", "trixie", str(ROOT), MIRROR],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RootError(f"debootstrap failed ({run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
    # no service may start from a maintainer script: the harness starts what it needs
    policy = ROOT / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    shutil.copyfile("/etc/resolv.conf", ROOT / "etc/resolv.conf")
    try:
        mount_all()
        log("apt-get install inside the root: " + " ".join(PACKAGES))
        in_root("apt-get", "update", "-qq")
        in_root("apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES)
        in_root("apt-get", "clean")
        versions = in_root("dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *PACKAGES).stdout
    finally:
        clean()
    MARK.write_text(versions)
    log(f"built {ROOT} in {time.monotonic() - t0:.0f} s:\n{versions.strip()}")


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        try:
            build()
        except RootError as exc:
            print(f"trixie root: {exc}", file=sys.stderr)
            sys.exit(1)
        print(f"{ROOT}: complete\n{MARK.read_text().strip()}")
    elif sys.argv[1:] == ["clean"]:
        clean()
    else:
        print("usage: trixie_root.py build|clean", file=sys.stderr)
        sys.exit(2)
