"""The per-uid rate limit on grants: a token bucket per uid, refilled continuously.

RATE grants per WINDOW seconds, with bursts up to RATE; a uid whose bucket is full
again is forgotten, so memory follows the uids active in the last window.
"""

from __future__ import annotations


UNLIMITED = 1 << 30  # what a lease of no limit holds


class RateLimiter:
    def __init__(self, rate: int, window: int) -> None:
        self.rate, self.window = rate, window
        self._buckets: dict[int, tuple[float, float]] = {}  # uid: (tokens, when)

    def _level(self, uid: int, now: float) -> float:
        tokens, when = self._buckets.get(uid, (float(self.rate), now))
        return min(float(self.rate), tokens + (now - when) * self.rate / self.window)

    def allow(self, uid: int, now: float) -> bool:
        """Take one grant for UID if its bucket has one; False if it is empty."""
        if self.rate == 0:
            return True
        tokens = self._level(uid, now)
        if tokens < 1:
            return False
        self._buckets[uid] = (tokens - 1, now)
        return True

    def lease(self, uid: int, now: float, most: int) -> int:
        """Take up to MOST grants (all there are) for UID out of its bucket at once, for the fast
        path to spend (fastpath.py); how many. An unlimited rate lends UNLIMITED."""
        if self.rate == 0:
            return UNLIMITED
        tokens = self._level(uid, now)
        taken = min(most, int(tokens))
        self._buckets[uid] = (tokens - taken, now)
        return taken

    def give_back(self, uid: int, unspent: int, now: float) -> None:
        """Return what a lease did not spend; a bucket never holds more than RATE."""
        if self.rate and unspent > 0:
            self._buckets[uid] = (min(float(self.rate), self._level(uid, now) + unspent), now)

    def left(self, uid: int, now: float) -> int:
        return self.rate if self.rate == 0 else int(self._level(uid, now))

    def forget_idle(self, now: float) -> None:
        for uid in [u for u in self._buckets if self._level(u, now) >= self.rate]:
            del self._buckets[uid]
