"""Keep the key out of core dumps and out of other processes' reach.

The daemon holds the signing key in memory. A core dump (a crash, `gcore`, a `kill -ABRT` by
whoever may signal it) would write it to disk, and a dumpable process's memory can be read
through /proc/PID/mem by any process of the same uid. `no_dumps()` sets RLIMIT_CORE to 0 (soft
and hard) and PR_SET_DUMPABLE to 0, which also makes /proc/PID/{mem,environ,...} root's and
refuses ptrace to anything without CAP_SYS_PTRACE. The kernel resets the flag only when the
process changes credentials or executes a program; slurmjwtd does neither, and calls this again
at each reload all the same.
"""

from __future__ import annotations

import ctypes
import resource

PR_SET_DUMPABLE, PR_GET_DUMPABLE = 4, 3


def _prctl(option: int, value: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0),
                    ctypes.c_ulong(0))
    if rc < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}) failed")
    return rc


def no_dumps() -> None:
    """No core file, and not dumpable; OSError if the kernel refuses either."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_DUMPABLE, 0)


def dumpable() -> bool:
    return _prctl(PR_GET_DUMPABLE) != 0
