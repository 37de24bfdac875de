"""When each logged-in user's token file is renewed: pure scheduling, no I/O.

A token issued at IAT for LIFETIME seconds is renewed at a moment drawn at random between
RENEW_FROM and RENEW_TO of its lifetime (50 % and 75 %): the file always holds a token with at
least a quarter of its lifetime left, and the renewals of a login storm, all issued in the
same second, spread over a quarter of a lifetime, and further apart at each round, instead
of coming back together one lifetime later. A renewal that fails is retried after an eighth
of what is left of the token (1 s to 60 s), so a failing signer is asked a few times before
the old token expires, and then every 10 s.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

RENEW_FROM, RENEW_TO = 0.50, 0.75
RETRY_MIN, RETRY_MAX = 1.0, 60.0
RETRY_LATE = 10.0  # no token left to protect: no hurry to ask a failing signer again
CATCH_UP = 5.0  # seconds over which renewals found overdue at startup are spread


def renew_at(iat: float, exp: float, draw: float) -> float:
    """When a token issued at IAT, expiring at EXP, is renewed; DRAW in [0, 1)."""
    return iat + (exp - iat) * (RENEW_FROM + (RENEW_TO - RENEW_FROM) * draw)


def retry_at(now: float, exp: float) -> float:
    """When a failed renewal is tried again: after an eighth of what the old token has left
    (1 s to 60 s); every RETRY_LATE seconds once it has none left (or none is known)."""
    if exp <= now:
        return now + RETRY_LATE
    return now + min(RETRY_MAX, max(RETRY_MIN, (exp - now) / 8))


@dataclass
class Entry:
    uid: int
    due: float  # wall-clock seconds (time.time()): token times are wall-clock too
    seq: int = field(default_factory=itertools.count().__next__)  # tells a heap entry current


class Schedule:
    """The renewal due for each uid with a token file; earliest first. A heap with lazy
    deletion: an entry replaced or cancelled stays in the heap until it surfaces, and is then
    dropped, so every change is O(log n). Stale entries would surface only when due, half a
    lifetime on: every login and logout left one, and the daemon grew by 8.5 MiB over 100,000
    logins (bench.py's `memory` section); once they outnumber the live ones (and STALE_SLACK)
    the heap is rebuilt from the live ones, which keeps each change O(log n) amortised. Beside
    it, the expiry of the token each file holds, kept while a renewal is under way, so that a
    failed one is retried in time."""

    STALE_SLACK = 64  # stale heap entries kept however few are live

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._entries: dict[int, Entry] = {}
        self._heap: list[tuple[float, int, int]] = []  # (due, uid, entry's seq)
        self._exp: dict[int, float] = {}  # uid: its file's token's exp

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, uid: int) -> bool:
        return uid in self._entries

    def _put(self, uid: int, due: float) -> float:
        entry = Entry(uid, due)
        self._entries[uid] = entry
        heapq.heappush(self._heap, (due, uid, entry.seq))
        self._compact()
        return due

    def _compact(self) -> None:
        """Rebuild the heap from the live entries once it holds more stale ones than live."""
        if len(self._heap) > 2 * len(self._entries) + self.STALE_SLACK:
            self._heap = [(entry.due, uid, entry.seq) for uid, entry in self._entries.items()]
            heapq.heapify(self._heap)

    def issued(self, uid: int, iat: float, exp: float) -> float:
        """UID's file now holds a token issued at IAT expiring at EXP: plan its renewal."""
        self._exp[uid] = exp
        return self._put(uid, renew_at(iat, exp, self._rng.random()))

    def failed(self, uid: int, now: float) -> float:
        """UID's renewal failed at NOW: try again later, the old token (if any) still in place."""
        return self._put(uid, retry_at(now, self._exp.get(uid, 0.0)))

    def overdue(self, uid: int, now: float, spread: float = CATCH_UP) -> float:
        """UID has a session but no usable token (startup, reload, unrevoke): renew within
        SPREAD seconds (a restart after downtime finds many: spread, not at once)."""
        return self._put(uid, now + spread * self._rng.random())

    def expiry(self, uid: int) -> float:
        """The exp of the token UID's file holds; 0 if none is known."""
        return self._exp.get(uid, 0.0)

    def cancel(self, uid: int) -> None:
        """UID has no file any more: nothing to renew."""
        self._entries.pop(uid, None)
        self._exp.pop(uid, None)
        self._compact()

    def next_due(self) -> float | None:
        """The earliest due time, None if nothing is scheduled."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float, limit: int) -> list[int]:
        """Up to LIMIT uids whose renewal is due at NOW, earliest first; each is unscheduled
        until `issued`, `failed` or `overdue` plans it again."""
        due: list[int] = []
        while len(due) < limit:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                break
            _, uid, _ = heapq.heappop(self._heap)
            del self._entries[uid]
            due.append(uid)
        return due

    def _drop_stale(self) -> None:
        heap, entries = self._heap, self._entries
        while heap and getattr(entries.get(heap[0][1]), "seq", -1) != heap[0][2]:
            heapq.heappop(heap)

    def get(self, uid: int) -> Entry | None:
        return self._entries.get(uid)
