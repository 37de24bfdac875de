"""Who gets what: pure decisions, no sockets, no files, no clock.

The server gathers the facts (the kernel's word on the caller, NSS's word on the
target account, the session registry's word on live sessions) and asks here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .protocol import Code


@dataclass(frozen=True)
class Caller:
    """The peer as SO_PEERCRED reports it; nothing the peer says changes this."""

    uid: int
    gid: int
    pid: int

    @property
    def is_root(self) -> bool:
        return self.uid == 0


@dataclass(frozen=True)
class Account:
    name: str
    uid: int


@dataclass(frozen=True)
class Decision:
    granted: bool
    reason: str  # a short word for the audit log: which rule decided
    code: Code | None = None
    message: str = ""
    lifetime: int = 0


def refuse(code: Code, reason: str, message: str) -> Decision:
    return Decision(False, reason, code, message)


def decide_mint(caller: Caller, target: Account | None, requested_name: str,
                lifetime: int | None, has_session: bool, config: Config) -> Decision:
    """May CALLER have a token for TARGET (None: NSS does not know REQUESTED_NAME)?"""
    if target is None:
        return refuse(Code.UNKNOWN_USER, "unknown-user", f"no such user: {requested_name}")
    if not caller.is_root and caller.uid != target.uid:
        return refuse(Code.PERMISSION_DENIED, "other-user",
                      f"uid {caller.uid} may get only its own token, not {target.name}'s")
    if target.uid < config.min_uid:
        return refuse(Code.BELOW_MIN_UID, "below-min-uid",
                      f"{target.name} (uid {target.uid}) is below min_uid {config.min_uid}")
    granted = config.lifetime if lifetime is None else lifetime
    if granted > config.max_lifetime:
        return refuse(Code.LIFETIME_TOO_LONG, "lifetime-too-long",
                      f"lifetime {granted} s exceeds max_lifetime {config.max_lifetime} s")
    if caller.is_root:
        return Decision(True, "root-request", lifetime=granted)
    if config.require_session and not has_session:
        return refuse(Code.NO_SESSION, "no-session",
                      f"{target.name} has no live login session; log in again")
    return Decision(True, "own-session" if has_session else "no-session-required",
                    lifetime=granted)


def decide_session_change(caller: Caller, op: str) -> Decision:
    """Only root (the PAM stack) opens and closes login sessions."""
    if caller.is_root:
        return Decision(True, "root-request")
    return refuse(Code.PERMISSION_DENIED, "not-root",
                  f"only root may {op.lower()} login sessions (uid {caller.uid} asked)")
