"""What the daemon does differently under systemd: an inherited listening socket,
sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING) and the journal.

Each falls back to the plain behaviour when systemd did not ask for it, so the
same daemon runs in a terminal, under systemd-socket-activate, or as a unit.
"""

from __future__ import annotations

import os
import socket

from systemd import daemon


def journal_stream() -> bool:
    """Whether stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:ino)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def inherited_listener() -> socket.socket | None:
    """The listening socket systemd passed (LISTEN_FDS), or None to bind our own."""
    fds = daemon.listen_fds()  # also unsets LISTEN_FDS, LISTEN_PID
    if not fds:
        return None
    if len(fds) != 1:
        raise ValueError(f"systemd passed {len(fds)} sockets; slurmjwtd.socket must have exactly one "
                         f"ListenStream=")
    if not daemon.is_socket_unix(fds[0], socket.SOCK_STREAM, 1):
        raise ValueError("the socket systemd passed is not a listening Unix stream socket")
    return socket.socket(fileno=fds[0])


class Notifier:
    """sd_notify, if NOTIFY_SOCKET is set; nothing otherwise."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", str(os.getpid()))
        self.watchdog_interval = (int(usec) / 2e6 if usec.isdigit() and pid == str(os.getpid())
                                  else None)  # ping twice per WatchdogSec=

    def send(self, *assignments: str) -> None:
        if self.enabled:
            daemon.notify("\n".join(assignments))

