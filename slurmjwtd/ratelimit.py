"""The per-uid rate limit on grants: a token bucket per uid, refilled continuously.

RATE grants per WINDOW seconds, with bursts up to RATE; a uid whose bucket is full
again is forgotten, so memory follows the uids active in the last window.
"""

from __future__ import annotations


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

    def left(self, uid: int, now: float) -> int:
        return self.rate if self.rate == 0 else int(self._level(uid, now))

    def forget_idle(self, now: float) -> None:
        for uid in [u for u in self._buckets if self._level(u, now) >= self.rate]:
            del self._buckets[uid]
