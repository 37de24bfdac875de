"""The compiled fast path: `_fastpath.so` (fastpath.c), driven from here with ctypes.

Its threads accept on the public socket and answer a user's MINT of their own token alone,
from an entry the Python side put in its table after granting that uid the same request:
what policy decided (lifetime, maximum, rule), the session leaders to find alive, a lease of
the rate limit's grants, templates of the token's claims, the answer and the audit line, and
an expiry. Every other connection comes back to the Python loop with the bytes read
(`receive`), and is decided there as it always was: Python stays the reference, and every
refusal is Python's. What the fast path answers is exactly what Python would have, except
that NSS and group changes reach it only when the entry is next made (ENTRY_SECONDS).

Entries are taken out (and their unspent lease given back to the rate limiter) whenever what
they were made from changes: the uid's sessions (OPEN, CLOSE), a revocation, a reload; and
when they expire. bench/README.md ("tokens") has the figures.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import socket
import struct
import time
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from .audit import format_audit
from .protocol import MAGIC, quote
from .sessions import process_start_time

LIBRARY = Path(__file__).with_name("_fastpath.so")
THREADS = 2  # 1 to 4 measured: 2 does the 2-CPU reference machine's best, within noise of 4
ENTRY_SECONDS = 10.0  # an entry's life: NSS and group changes reach the fast path within it
LEASE = 16  # rate-limit grants lent to an entry at most; the rest stay in Python's bucket
MAX_LEADERS = 16  # fastpath.c's MAX_LEADERS: the first sessions' leaders are the entry's
_BUCKETS = 4096  # hash buckets of the table (a power of two)
_FORWARD = struct.Struct("<iiiiiqI")  # fastpath.c's struct forward, then the bytes read
_MAX_RECORD = _FORWARD.size + 1025
_TAKE = 1024  # entries taken per call
# the slots fastpath.c fills in a template (its enum: S_CALLER_PID, ...)
PID, LIFETIME, EXP, JTI, TOKEN, IAT = "\x01", "\x02", "\x03", "\x04", "\x05", "\x06"


class FastPathError(Exception):
    """The fast path cannot run here; the daemon serves everything in Python."""


def load() -> ctypes.CDLL:
    """The library, its functions typed; FastPathError if it is missing or unloadable."""
    # dh_python3 gives it the interpreter's tag in the Debian package (_fastpath.cpython-...so)
    names = [LIBRARY] + [LIBRARY.with_name("_fastpath" + s) for s in EXTENSION_SUFFIXES]
    path = next((p for p in names if p.exists()), LIBRARY)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise FastPathError(f"{exc}; build it with: make -C pam") from None  # exc names it
    c = ctypes
    lib.sjf_start.argtypes = [c.c_int, c.c_int, c.c_int, c.c_int, c.POINTER(c.c_double), c.c_int,
                              c.c_size_t]
    lib.sjf_stop.argtypes = []
    lib.sjf_stop.restype = None
    lib.sjf_set_key.argtypes = [c.c_char_p, c.c_size_t]
    lib.sjf_take.argtypes = [c.c_uint32]
    lib.sjf_put.argtypes = [c.c_uint32, c.c_int64, c.c_int32, c.c_int32, c.c_int32,
                            c.POINTER(c.c_int), c.c_int, c.c_char_p, c.c_char_p, c.c_char_p,
                            c.c_char_p]
    lib.sjf_take_all.argtypes = [c.POINTER(c.c_uint32), c.POINTER(c.c_int32), c.c_int]
    lib.sjf_take_expired.argtypes = [c.c_int64, c.POINTER(c.c_uint32), c.POINTER(c.c_int32), c.c_int]
    lib.sjf_take_counters.argtypes = [c.POINTER(c.c_uint64)]
    lib.sjf_take_counters.restype = None
    return lib


def templates(name: str, uid: int, slurm_user: str, rule: str, node: str) -> list[bytes] | None:
    """The claims, answer, audit line and journal fields of a user's own MINT granted for NAME
    (uid UID, Slurm name SLURM_USER, lifetime rule RULE) on NODE, as signer.claims_json,
    protocol.encode_ok, audit.format_audit and audit.JournalAuditLog make them, with slots
    for what each token changes; None if a value could be mistaken for a slot or a journal
    field's end (the fast path then leaves that uid to Python)."""
    fixed = (name, slurm_user, rule, node)
    if any(c < " " for value in fixed for c in value):
        return None
    claims = '{"iat":%s,"exp":%s,"sun":%s,"jti":"%s"}' % (IAT, EXP, json.dumps(slurm_user), JTI)
    answer = (f"{MAGIC} OK token={TOKEN} user={quote(name)} slurm_user={quote(slurm_user)} "
              f"exp={EXP} jti={JTI} lifetime={LIFETIME}\n")
    mapped = slurm_user if slurm_user != name else None
    head = {"decision": "granted", "op": "mint", "caller_uid": uid}
    middle = {"user": name, "uid": uid, "slurm_user": mapped, "reason": "own-session", "rule": rule}
    line = (f"{format_audit(head)} caller_pid={PID} {format_audit(middle)} lifetime={LIFETIME} "
            f"exp={EXP} jti={JTI} {format_audit({'node': node})}")
    fields = {**head, "caller_pid": PID, **middle, "lifetime": LIFETIME, "exp": EXP, "jti": JTI,
              "node": node}
    journal = "\n".join(f"SLURMJWT_{k.upper()}={v}" for k, v in fields.items() if v is not None)
    return [t.encode() for t in (claims, answer, line, journal)]


class FastPath:
    """The running fast path: its threads accept on LISTENER; what they pass on arrives on
    `channel` (`receive`). AUDIT_FD: where audit lines go (-1: the journal)."""

    def __init__(self, lib: ctypes.CDLL, listener: socket.socket, audit_fd: int,
                 bounds: tuple[float, ...]) -> None:
        self._lib = lib
        self.channel, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.channel.setblocking(False)
        self._slots = len(bounds) + 1
        array = (ctypes.c_double * len(bounds))(*bounds)
        rc = lib.sjf_start(listener.fileno(), self._theirs.fileno(), audit_fd, THREADS, array,
                           len(bounds), _BUCKETS)
        if rc:
            lib.sjf_stop()
            self.close()
            raise FastPathError(f"cannot start its threads (error {-rc})")
        self.running = True
        self.signing = False

    def set_key(self, key: bytes | None) -> None:
        """Sign with KEY (an HS256 key) from now on; None: answer nothing, pass everything on.
        A key longer than SHA-256's block is hashed first, as HMAC does (the same tokens)."""
        key = key or b""
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        if self._lib.sjf_set_key(key, len(key)) != 0:  # cannot happen: then pass all on
            self._lib.sjf_set_key(b"", 0)
            key = b""
        self.signing = bool(key)

    def put(self, uid: int, budget: int, lifetime: int, max_lifetime: int,
            leaders: list[tuple[int, int]], texts: list[bytes]) -> bool:
        """Make UID's entry (replacing one there: `take` it first to have its lease back), with
        a pidfd for each of LEADERS (pid, start time) still alive: the fast path's liveness
        check, one poll(2), and no pid reuse can fool it. False if none lives, or it failed."""
        pidfds = []
        for pid, start in leaders:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            if process_start_time(pid) == start:  # opened after: it is that process
                pidfds.append(fd)
            else:
                os.close(fd)
        if not pidfds:
            return False
        array = (ctypes.c_int * len(pidfds))(*pidfds)
        expires = int((time.monotonic() + ENTRY_SECONDS) * 1e9)
        if self._lib.sjf_put(uid, expires, budget, lifetime, max_lifetime, array, len(pidfds),
                             *texts) == 0:
            return True  # the pidfds are the entry's now
        for fd in pidfds:
            os.close(fd)
        return False

    def take(self, uid: int) -> int:
        """Take UID's entry out; the grants left on its lease, -1 if it had no entry."""
        return self._lib.sjf_take(uid)

    def _taken(self, call, *args: object) -> list[tuple[int, int]]:
        uids, left = (ctypes.c_uint32 * _TAKE)(), (ctypes.c_int32 * _TAKE)()
        out: list[tuple[int, int]] = []
        while True:
            n = call(*args, uids, left, _TAKE)
            out += zip(uids[:n], left[:n])
            if n < _TAKE:
                return out

    def take_all(self) -> list[tuple[int, int]]:
        """Take every entry out: (uid, grants left) each."""
        return self._taken(self._lib.sjf_take_all)

    def take_expired(self) -> list[tuple[int, int]]:
        return self._taken(self._lib.sjf_take_expired, int(time.monotonic() * 1e9))

    def counters(self) -> tuple[int, int, float, list[int], int, int]:
        """Since the last call: tokens granted, connections passed on, the granted requests'
        latency sum (seconds) and histogram (state.LATENCY_BUCKETS' slots), audit lines the
        journal refused (their requests were handed over) and the last one's errno."""
        out = (ctypes.c_uint64 * (5 + self._slots))()
        self._lib.sjf_take_counters(out)
        return out[0], out[1], out[2] / 1e9, list(out[5:]), out[3], out[4]

    def receive(self, most: int = 64) -> list[tuple[int, int, int, int, int, float, bytes]]:
        """Connections passed on: (fd, uid, gid, pid, ahead, accepted (time.monotonic), bytes
        read); AHEAD: connections of that uid the other threads held then, on their way here
        (the cap counts them); fd -1: an accept failed, uid its errno."""
        out = []
        for _ in range(most):
            try:
                record = self.channel.recv(_MAX_RECORD)
            except (BlockingIOError, InterruptedError):
                break
            if not record:  # its threads have stopped and closed their end
                break
            fd, uid, gid, pid, ahead, accepted, size = _FORWARD.unpack_from(record)
            out.append((fd, uid, gid, pid, ahead, accepted / 1e9,
                        record[_FORWARD.size:_FORWARD.size + size]))
        return out

    def stop(self) -> None:
        """Stop the threads (each finishes the connection it holds); forget the table and key.
        What they passed on is still to be `receive`d."""
        if self.running:
            self._lib.sjf_stop()
            self.running = False
            self._theirs.close()

    def close(self) -> None:
        self._theirs.close()
        self.channel.close()
