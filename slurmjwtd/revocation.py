"""Users root revoked (`slurmjwt revoke`): no grant and no renewal for them until unrevoked,
on every login node that shares the file.

Kept in one JSON file (config `revocation_file`): a list of revocations, `[]` (or `{}`) for none.
On one node it sits in the daemon's state directory; on a fleet, on the share every node
already mounts for Slurm (next to slurm.conf), read by each node's daemon. It outlives restarts
and reboots.

Writing (REVOKE, UNREVOKE): under an exclusive POSIX lock (fcntl.lockf, which NFS honours
through NLM or NFSv4 locks) on `<file>.lock` beside it, the file is read again, so that another
node's change since this daemon last looked is kept (and returned, to be applied here), the
change is made, and the whole list replaced atomically (write_atomic: a temporary file in the
same directory, fsync'd, renamed). A revocation counts once it is on disk.

Watching: the daemon looks once a second (`refresh`): it opens the file and compares its
stamp (device, inode, size, mtime, ctime); an open, not a stat, because an NFS client asks the
server on open (close-to-open consistency) while a stat may answer from its attribute cache
(inotify sees no other NFS client's change at all). Only a changed file is read and parsed; the
difference with the list in memory is returned for the daemon to apply and audit.

Failing: a file that cannot be read, or disappears after it was seen, never shortens the list:
the last good one stays in memory (no node grants what another refuses because its share
went away), `problem` says why, and one line is logged when it breaks and one when it
recovers (`health_news`). Clearing every revocation is writing `[]`, never deleting the file.
At start, an unreadable file stops the daemon (it cannot know the list); a missing one is an
empty list only if it was never made: its directory exists and no writer's lock file is there
(the lock file is made with the first revocation and never removed).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

from .atomicfile import write_atomic

log = logging.getLogger("slurmjwtd")
LOCK_TIMEOUT = 2.0  # seconds a writer waits for another node's lock before it gives up
_LOCK_POLL = 0.01
MAX_BYTES = 16 * 1024 * 1024  # far beyond any site's list (about 150 bytes a revocation)


@dataclass(frozen=True)
class Revocation:
    user: str  # the account's name when revoked
    uid: int  # and its uid: another name of that uid (useradd -o) is revoked too
    since: int  # epoch seconds
    by_uid: int
    reason: str
    node: str = ""  # the host whose daemon wrote it (gethostname); "" in files written before


_TYPES = {"user": str, "uid": int, "since": int, "by_uid": int, "reason": str, "node": str}
ByUid = dict[int, Revocation]
Stamp = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


class RevocationError(Exception):
    """The revocation file cannot be read or written; the message names it and the fix."""


def parse(data: bytes) -> ByUid:
    """The revocations in DATA (the file's bytes), by uid; ValueError saying what is wrong."""
    try:
        records = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if records == {}:  # an explicit "no revocations", as [] is
        records = []
    if not isinstance(records, list):
        raise ValueError("not a JSON list of revocations ([] for none)")
    by_uid: ByUid = {}
    for n, record in enumerate(records, 1):
        if (not isinstance(record, dict) or not _TYPES.keys() - {"node"} <= record.keys() <= _TYPES.keys()
                or any(type(record[k]) is not _TYPES[k] for k in record)):
            raise ValueError(f"entry {n} is not a revocation {{{', '.join(_TYPES)}}}")
        revocation = Revocation(**record)
        by_uid[revocation.uid] = revocation
    return by_uid


def encode(by_uid: ByUid) -> bytes:
    return json.dumps([asdict(r) for r in by_uid.values()], indent=1).encode() + b"\n"


@dataclass(frozen=True)
class Diff:
    """What changed between two lists: the uids newly revoked, and those lifted (each with the
    revocation it had). A revocation replaced (a new reason) changes nothing a node does."""

    revoked: tuple[Revocation, ...] = ()
    lifted: tuple[Revocation, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.revoked or self.lifted)

    def without(self, uid: int) -> Diff:
        return Diff(tuple(r for r in self.revoked if r.uid != uid),
                    tuple(r for r in self.lifted if r.uid != uid))


def diff(old: ByUid, new: ByUid) -> Diff:
    return Diff(tuple(r for uid, r in new.items() if uid not in old),
                tuple(r for uid, r in old.items() if uid not in new))


def health_news(path: str, before: str, after: str, count: int) -> tuple[int, str] | None:
    """The one log line (level, text) when the file's health changes from BEFORE to AFTER (each
    "" when readable, else what is wrong), None while it stays as it was: a broken file is
    logged once, not at every look. COUNT: the revocations in force (the last good list)."""
    if after == before:
        return None
    if after:
        return logging.ERROR, (f"revocation file {path}: {after}; keeping the last good list "
                               f"({count} user(s) revoked) until it can be read: no revocation "
                               f"is lifted meanwhile; fix it (to clear every revocation write "
                               f"[] to it, never delete it)")
    return logging.WARNING, f"revocation file {path}: readable again ({count} user(s) revoked)"


def _stamp(st: os.stat_result) -> Stamp:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class Revocations:
    """The list in force on this node: the file's, as last read or written."""

    def __init__(self, path: str, node: str | None = None) -> None:
        self.path = path
        self.lock_path = path + ".lock"
        self.node = socket.gethostname() if node is None else node  # recorded in each revocation
        self._by_uid: ByUid = {}
        self._stamp: Stamp | None = None  # of the file as last read or written; None: none seen
        self.problem = ""  # why the file cannot be read now ("" when it can)

    def __len__(self) -> int:
        return len(self._by_uid)

    def _read(self) -> tuple[ByUid, Stamp]:
        """The file's list and stamp; FileNotFoundError if there is none, RevocationError
        (what is wrong, no fix) if it cannot be read."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise RevocationError(f"cannot be opened ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RevocationError("not a regular file")
            if self._stamp == _stamp(st):  # as last seen: no need to read it again
                return self._by_uid, self._stamp
            data = os.read(fd, MAX_BYTES + 1)
            if len(data) > MAX_BYTES:
                raise RevocationError(f"larger than {MAX_BYTES} bytes")
            return parse(data), _stamp(st)
        except ValueError as exc:
            raise RevocationError(f"unreadable ({exc})") from None
        except OSError as exc:
            raise RevocationError(f"unreadable ({exc.strerror})") from None
        finally:
            os.close(fd)

    def load(self) -> int:
        """At start: read the list; a missing file is none only if it was never made.
        RevocationError says what to fix before the daemon can start."""
        try:
            self._by_uid, self._stamp = self._read()
        except FileNotFoundError:
            directory = os.path.dirname(self.path)
            if not os.path.isdir(directory):
                raise RevocationError(f"revocation file {self.path}: its directory {directory} "
                                      f"does not exist (a share not mounted?); mount it, or make "
                                      f"it (the unit's StateDirectory= for the default)") from None
            if os.path.lexists(self.lock_path):
                raise RevocationError(f"revocation file {self.path}: missing, though "
                                      f"{self.lock_path} shows it was made (deleted, or a share "
                                      f"not mounted?); restore it, or write [] to it to clear "
                                      f"every revocation") from None
            return 0
        except RevocationError as exc:
            raise RevocationError(f"revocation file {self.path}: {exc}; fix it (to clear every "
                                  f"revocation write [] to it) to start") from None
        return len(self._by_uid)

    def _set_problem(self, problem: str) -> None:
        news = health_news(self.path, self.problem, problem, len(self._by_uid))
        self.problem = problem
        if news is not None:
            log.log(*news)

    def refresh(self) -> Diff:
        """Look at the file (the daemon does once a second): what changed in it since the last
        look, now in force here. A file that cannot be read, or is gone once seen, changes
        nothing (the last good list holds); `problem` says why."""
        try:
            by_uid, stamp = self._read()
        except FileNotFoundError:
            # never seen in this run: still none; seen, then gone: deleted or unmounted
            self._set_problem("" if self._stamp is None else
                              "missing (deleted, or its share not mounted?)")
            return Diff()
        except RevocationError as exc:
            self._set_problem(str(exc))
            return Diff()
        change = Diff() if by_uid is self._by_uid else diff(self._by_uid, by_uid)
        self._by_uid, self._stamp = by_uid, stamp
        self._set_problem("")
        return change

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the writers' lock (LOCK_TIMEOUT at most to get it: the loop waits meanwhile)."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
        except OSError as exc:
            raise RevocationError(f"revocation file {self.path}: its lock {self.lock_path}: "
                                  f"{exc.strerror}; nothing changed") from None
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EAGAIN):
                        raise RevocationError(f"revocation file {self.path}: cannot lock "
                                              f"{self.lock_path} ({exc.strerror}: on NFS, is "
                                              f"locking enabled?); nothing changed") from None
                    if time.monotonic() >= deadline:
                        raise RevocationError(f"revocation file {self.path}: {self.lock_path} "
                                              f"held by another writer for {LOCK_TIMEOUT:g} s; "
                                              f"nothing changed; try again") from None
                    time.sleep(_LOCK_POLL)
            yield
        finally:
            os.close(fd)  # which releases the lock

    def _update(self, change: Callable[[ByUid], ByUid]) -> Diff:
        """Under the lock: read the file again, make CHANGE to its list, write it (fsync'd)
        before it counts. Return what others changed in the file since this daemon last looked
        (now in force here too). RevocationError changes nothing."""
        with self._locked():
            try:
                current, stamp = self._read()
            except FileNotFoundError:
                if self._stamp is not None:
                    raise RevocationError(f"revocation file {self.path}: missing (deleted, or its "
                                          f"share not mounted?); nothing changed; restore it, or "
                                          f"write [] to it to clear every revocation") from None
                current, stamp = {}, None
            except RevocationError as exc:
                raise RevocationError(f"revocation file {self.path}: {exc}; nothing changed; "
                                      f"fix it (or write [] to it to clear every revocation)") from None
            updated = change(current)
            if updated != current or stamp is None:
                try:
                    write_atomic(self.path, encode(updated), mode=0o600, fsync=True)
                    stamp = _stamp(os.stat(self.path))
                except OSError as exc:
                    raise RevocationError(f"revocation file {self.path}: {exc.strerror}; "
                                          f"nothing changed") from None
        outside = diff(self._by_uid, current)
        self._by_uid, self._stamp = updated, stamp
        self._set_problem("")
        return outside

    def revoke(self, revocation: Revocation) -> Diff:
        """Add (or replace) REVOCATION, saved before it counts; what other nodes changed
        meanwhile (to apply here). RevocationError changes nothing."""
        return self._update(lambda by_uid: {**by_uid, revocation.uid: revocation})

    def unrevoke(self, uid: int) -> tuple[Revocation | None, Diff]:
        """Lift UID's revocation: the one lifted (None if the file had none), and what other
        nodes changed meanwhile."""
        lifted: list[Revocation] = []

        def lift(by_uid: ByUid) -> ByUid:
            if uid in by_uid:
                lifted.append(by_uid[uid])
            return {k: v for k, v in by_uid.items() if k != uid}

        outside = self._update(lift)
        return (lifted[0] if lifted else None), outside

    def of(self, uid: int) -> Revocation | None:
        return self._by_uid.get(uid)

    def names(self) -> list[str]:
        return sorted(r.user for r in self._by_uid.values())
