"""What the daemon does differently under systemd: an inherited listening socket,
sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING) and the journal.

Each falls back to the plain behaviour when systemd did not ask for it, so the
same daemon runs in a terminal, under systemd-socket-activate, or as a unit.
"""

from __future__ import annotations

import os
import socket

from .pysystemd import systemd_module

daemon = systemd_module("daemon")  # python-systemd's, never this checkout's folder of units


def journal_stream() -> bool:
    """Whether stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:ino)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


LISTENER_NAMES = ("public", "root")  # FileDescriptorName= of the two socket units


def inherited_listeners() -> tuple[socket.socket, socket.socket] | None:
    """The public and the root listening sockets systemd passed (LISTEN_FDS, told apart by
    LISTEN_FDNAMES), or None to bind our own."""
    named = daemon.listen_fds_with_names()  # also unsets LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES
    if not named:
        return None
    by_name = {name: fd for fd, name in named.items()}
    if sorted(named.values()) != sorted(LISTENER_NAMES):
        raise ValueError(f"systemd passed sockets named {', '.join(map(str, named.values()))}; "
                         f"slurmjwtd needs two, FileDescriptorName=public (slurmjwtd.socket) and "
                         f"FileDescriptorName=root (slurmjwtd-root.socket): install both units "
                         f"of this version and run systemctl daemon-reload")
    for name, fd in by_name.items():
        if not daemon.is_socket_unix(fd, socket.SOCK_STREAM, 1):
            raise ValueError(f"the socket systemd passed as {name} is not a listening Unix "
                             f"stream socket")
    public, root = (socket.socket(fileno=by_name[name]) for name in LISTENER_NAMES)
    return public, root


class Notifier:
    """sd_notify, if NOTIFY_SOCKET is set; nothing otherwise."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", str(os.getpid()))
        self.watchdog_interval = (int(usec) / 2e6 if usec.isascii() and usec.isdigit()
                                  and pid == str(os.getpid()) else None)  # twice per WatchdogSec=

    def send(self, *assignments: str) -> None:
        if self.enabled:
            daemon.notify("\n".join(assignments))

