"""The daemon's one piece of mutable state: what it knows, shared by the loop and the
request handlers."""

from __future__ import annotations

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


@dataclass
class Counters:
    granted: int = 0  # tokens made for requests: MINT and OPEN
    refused: int = 0
    renewed: int = 0  # token files renewed


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
