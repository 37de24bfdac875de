"""The daemon's one piece of mutable state: what it knows, shared by the loop and the
request handlers."""

from __future__ import annotations

import bisect
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

from .audit import AuditLog, RefusalSummary
from .config import RESTART_KEYS, Config
from .ratelimit import RateLimiter
from .renewal import Schedule
from .revocation import Revocations
from .sessions import SessionRegistry
from .signer import Signer
from .tokenfile import TokenFiles


# upper bounds (seconds) of the request latency histogram's buckets; one more counts the rest
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0)


@dataclass
class Counters:
    """What the daemon counts since it started, for STATUS and METRICS: never a user's name or a
    token, only numbers (and the protocol's codes)."""

    granted: int = 0  # tokens made for requests: MINT and OPEN
    refused: int = 0
    renewed: int = 0  # token files renewed
    refusals: dict[str, int] = field(default_factory=dict)  # refused, by protocol code
    signer_failures: int = 0  # the signer failed to make a token (a request's or a renewal's)
    # answered requests by time from accept to answer: LATENCY_BUCKETS' and one for the rest
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0  # seconds, all answered requests
    fast_granted: int = 0  # of `granted`, by the fast path (fastpath.py)
    fast_passed: int = 0  # connections the fast path passed on to the Python loop

    def refusal(self, code: str) -> None:
        self.refused += 1
        self.refusals[code] = self.refusals.get(code, 0) + 1

    def answered(self, seconds: float) -> None:
        """A request answered SECONDS after it was accepted."""
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


@dataclass
class DaemonState:
    """Everything the daemon knows; the one piece of mutable state."""

    config: Config
    signer: Signer
    registry: SessionRegistry
    audit_log: Callable[..., None] = field(default_factory=AuditLog)  # where audit lines go
    audit: RefusalSummary = field(init=False)  # what decisions are audited through
    limiter: RateLimiter = field(init=False)
    files: TokenFiles = field(init=False)  # each logged-in user's token file (token_dir)
    schedule: Schedule = field(default_factory=Schedule)  # when each of those is renewed
    revocations: Revocations = field(init=False)  # who root revoked (revocation_file)
    counters: Counters = field(default_factory=Counters)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.config.rate_limit, self.config.rate_window)
        self.audit = RefusalSummary(self.audit_log, self.config.audit_summary_interval)
        self.files = TokenFiles(self.config.token_dir)
        self.revocations = Revocations(self.config.revocation_file)

    def apply(self, config: Config, signer: Signer) -> list[str]:
        """Serve with CONFIG and SIGNER from now on, rebuilding what depends on the
        configuration; return the keys (RESTART_KEYS) that changed but take a restart:
        their old values are kept."""
        old = self.config
        fixed = [k for k in RESTART_KEYS if getattr(config, k) != getattr(old, k)]
        if fixed:
            config = dataclasses.replace(config, **{k: getattr(old, k) for k in fixed})
        if (config.rate_limit, config.rate_window) != (old.rate_limit, old.rate_window):
            self.limiter = RateLimiter(config.rate_limit, config.rate_window)
        self.audit.interval = config.audit_summary_interval
        self.config, self.signer = config, signer
        return fixed
