"""The registry of live login sessions.

A session is opened by root (the PAM stack) and names its leader: the process that
opened it, as SO_PEERCRED reports. It counts while that process lives. A pid alone
can be reused, so the leader is the pair (pid, start time from /proc/PID/stat).
The registry is written atomically after each change so it survives a restart.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass

from .atomicfile import write_atomic

_PROC_FLAGS = os.O_RDONLY | os.O_CLOEXEC


def process_start_time(pid: int) -> int | None:
    """Start time of PID in clock ticks since boot, or None if it is gone."""
    try:  # os.open, not open(): no buffered file object (a login reads this twice)
        fd = os.open(f"/proc/{pid}/stat", _PROC_FLAGS)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)  # at most about 1 KiB: 52 numbers and a 16-byte comm
    except OSError:
        return None
    finally:
        os.close(fd)
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] == b"Z":  # a zombie has exited; only its parent has not reaped it
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Session:
    id: str
    user: str
    uid: int
    leader_pid: int
    leader_start: int
    tty: str
    rhost: str
    service: str
    started: int

    def is_live(self) -> bool:
        return process_start_time(self.leader_pid) == self.leader_start


class SessionRegistry:
    """Open sessions by id and by uid. Changes mark the registry dirty; the server
    saves it once per turn of its loop, so a storm of logins costs one write."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dirty = False
        self._sessions: dict[str, Session] = {}
        self._by_uid: dict[int, dict[str, Session]] = {}
        self._json: dict[str, str] = {}  # each session serialised once, when it opens
        self.emptied: set[int] = set()  # uids whose last session went since `take_emptied`

    def __len__(self) -> int:
        return len(self._sessions)

    def _add(self, session: Session) -> None:
        self._sessions[session.id] = session
        self._json[session.id] = json.dumps(vars(session))  # its fields are flat: no deep copy
        self._by_uid.setdefault(session.uid, {})[session.id] = session

    def _remove(self, session: Session) -> None:
        del self._sessions[session.id]
        del self._json[session.id]
        mine = self._by_uid[session.uid]
        del mine[session.id]
        if not mine:
            del self._by_uid[session.uid]
            self.emptied.add(session.uid)
        self.dirty = True

    def load(self) -> int:
        """Read the saved registry, keep the sessions still live; return how many."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                records = json.load(fh)
            sessions = [Session(**r) for r in records]
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"session file {self.path}: unreadable ({exc}); "
                             f"move it aside to start with no sessions") from None
        for session in sessions:
            if session.is_live():
                self._add(session)
        self.dirty = len(self._sessions) != len(sessions)
        return len(self._sessions)

    def save(self) -> None:
        """Replace the file atomically, mode 0600. No fsync: it lives on a runtime (tmpfs)
        directory, and a power loss that could lose it ends every login anyway."""
        write_atomic(self.path, ("[" + ",\n".join(self._json.values()) + "]\n").encode())
        self.dirty = False

    def open(self, user: str, uid: int, leader_pid: int, tty: str, rhost: str,
             service: str) -> Session | None:
        """Register a session led by LEADER_PID; None if that process is already gone."""
        start = process_start_time(leader_pid)
        if start is None:
            return None
        session = Session(secrets.token_hex(8), user, uid, leader_pid, start, tty, rhost,
                          service, int(time.time()))
        self._add(session)
        self.dirty = True
        return session

    def close(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None:
            self._remove(session)
        return session

    def take_emptied(self) -> list[int]:
        """The uids whose last session went since the last call and that have none now."""
        gone = [uid for uid in self.emptied if uid not in self._by_uid]
        self.emptied.clear()
        return gone

    def uids(self) -> list[int]:
        """Every uid with a registered session (live or not yet found dead)."""
        return list(self._by_uid)

    def leaders(self, uid: int) -> list[tuple[int, int]]:
        """(pid, start time) of the leader of each session of UID registered, live or not."""
        return [(s.leader_pid, s.leader_start) for s in self._by_uid.get(uid, {}).values()]

    def remaining(self, uid: int) -> int:
        """0 if UID has no live session left, else how many it has registered. Dead ones met
        before the first live one are dropped; the rest wait for the sweep (one /proc read
        per call, not one per session, when a storm of logins closes)."""
        return len(self._by_uid.get(uid, ())) if self.has_live_session(uid) else 0

    def has_live_session(self, uid: int) -> bool:
        """Whether UID has a session whose leader lives; dead ones met on the way are dropped."""
        for session in list(self._by_uid.get(uid, {}).values()):
            if session.is_live():
                return True
            self._remove(session)
        return False

    def prune(self) -> int:
        """Drop every session whose leader has gone; return how many."""
        dead = [s for s in self._sessions.values() if not s.is_live()]
        for session in dead:
            self._remove(session)
        return len(dead)
