"""The registry of live login sessions.

A session is opened by root (the PAM stack) and names its leader: the process that
opened it, as SO_PEERCRED reports. It counts while that process lives. A pid alone
can be reused, so the leader is the pair (pid, start time from /proc/PID/stat).
The registry is written atomically after each change so it survives a restart.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass


def process_start_time(pid: int) -> int | None:
    """Start time of PID in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
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
    def __init__(self, path: str) -> None:
        self.path = path
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

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
        self._sessions = {s.id: s for s in sessions if s.is_live()}
        if len(self._sessions) != len(sessions):
            self.save()
        return len(self._sessions)

    def save(self) -> None:
        directory = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".sessions.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump([dataclasses.asdict(s) for s in self._sessions.values()], fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise

    def open(self, user: str, uid: int, leader_pid: int, tty: str, rhost: str,
             service: str) -> Session | None:
        """Register a session led by LEADER_PID; None if that process is already gone."""
        start = process_start_time(leader_pid)
        if start is None:
            return None
        session = Session(secrets.token_hex(8), user, uid, leader_pid, start, tty, rhost,
                          service, int(time.time()))
        self._sessions[session.id] = session
        self.save()
        return session

    def close(self, session_id: str) -> Session | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            self.save()
        return session

    def live_count(self, uid: int) -> int:
        """Live sessions of UID; sessions whose leader has gone are dropped."""
        mine = [s for s in self._sessions.values() if s.uid == uid]
        dead = [s for s in mine if not s.is_live()]
        for s in dead:
            del self._sessions[s.id]
        if dead:
            self.save()
        return len(mine) - len(dead)
