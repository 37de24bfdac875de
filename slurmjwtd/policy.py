"""Who gets what: pure decisions, no sockets, no files, no clock.

The server gathers the facts (the kernel's word on the caller, NSS's word on the
target account and its groups, the session registry's word on live sessions) and
asks here. Every decision names the rule that made it, for the audit log.

Order: the account must exist; only root may ask for someone else, and for a name that is
not its uid's own (a second passwd entry of the uid); min_uid; deny lists (deny wins); allow
lists; lifetimes; root needs no session; others do. The lists apply to the name minted:
deny_users to the login name and to the Slurm name it maps to alike.
Per-group lifetimes: of the user's groups that have a rule, the shortest wins, for
the default and for the maximum alike, so the order of groups never matters and the
most cautious rule holds. A group rule replaces the global lifetime and max_lifetime
(it may be longer); a user in no group with a rule gets the global ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

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
    groups: frozenset[str] = field(default_factory=frozenset)  # those the policy names
    gid: int = -1  # the primary group
    alias_of: str = ""  # NAME is not its uid's name (getpwuid) but another entry's: that name


@dataclass(frozen=True)
class Decision:
    granted: bool
    reason: str  # which check decided: root-request, own-session, no-session, deny-group, ...
    code: Code | None = None
    message: str = ""
    lifetime: int = 0
    max_lifetime: int = 0
    rule: str = "default"  # the policy rule that set the lifetime or denied


def refuse(code: Code, reason: str, message: str, rule: str = "default") -> Decision:
    return Decision(False, reason, code, message, rule=rule)


def lifetimes(account: Account, config: Config) -> tuple[int, int, str]:
    """(default lifetime, maximum, rule) for ACCOUNT: the shortest of its groups' rules."""
    if not account.groups:
        return min(config.lifetime, config.max_lifetime), config.max_lifetime, "default"
    rule = "default"
    default, cap = config.lifetime, config.max_lifetime
    ruled = sorted(g for g in account.groups if g in config.group_lifetime)
    if ruled:
        default, group = min((config.group_lifetime[g], g) for g in ruled)
        rule = f"group:{group}"
    capped = sorted(g for g in account.groups if g in config.group_max_lifetime)
    if capped:
        cap, group = min((config.group_max_lifetime[g], g) for g in capped)
        rule = rule if ruled else f"group:{group}"
    return min(default, cap), cap, rule


def check_lists(account: Account, config: Config) -> Decision | None:
    """The deny and allow lists; None if they let ACCOUNT through."""
    if not (config.deny_users or config.deny_groups or config.allow_users or config.allow_groups):
        return None
    for name in dict.fromkeys((account.name, slurm_name(account.name, config))):
        if name in config.deny_users:  # the login name, or the Slurm name the token would carry
            return refuse(Code.POLICY_DENIED, "deny-user", f"{name} is denied tokens by policy",
                          f"deny-user:{name}")
    denied = sorted(account.groups & set(config.deny_groups))
    if denied:
        return refuse(Code.POLICY_DENIED, "deny-group",
                      f"{account.name} is denied tokens by policy (group {denied[0]})",
                      f"deny-group:{denied[0]}")
    if config.allow_users or config.allow_groups:
        allowed = sorted(account.groups & set(config.allow_groups))
        if account.name not in config.allow_users and not allowed:
            return refuse(Code.POLICY_DENIED, "not-allowed",
                          f"{account.name} is not in the users or groups allowed tokens",
                          "not-allowed")
    return None


def decide_mint(caller: Caller, target: Account | None, requested_name: str,
                lifetime: int | None, has_session: bool, config: Config,
                revoked: bool = False) -> Decision:
    """May CALLER have a token for TARGET (None: NSS does not know REQUESTED_NAME)? REVOKED:
    root revoked TARGET's uid (slurmjwt revoke), which refuses even root's requests."""
    if target is None:
        return refuse(Code.UNKNOWN_USER, "unknown-user", f"no such user: {requested_name}")
    if revoked:
        return refuse(Code.REVOKED, "revoked", f"tokens for {target.name} are revoked by the "
                      f"site's administrators", "revoked")
    if not caller.is_root and caller.uid != target.uid:
        return refuse(Code.PERMISSION_DENIED, "other-user",
                      f"uid {caller.uid} may get only its own token, not {target.name}'s")
    if not caller.is_root and target.alias_of:
        return refuse(Code.PERMISSION_DENIED, "not-primary-name",
                      f"{target.name} is another name of uid {target.uid}; its tokens are for "
                      f"{target.alias_of} only (slurmjwt token without --user)")
    if target.uid < config.min_uid:
        return refuse(Code.BELOW_MIN_UID, "below-min-uid",
                      f"{target.name} (uid {target.uid}) is below min_uid {config.min_uid}")
    listed = check_lists(target, config)
    if listed is not None:
        return listed
    default, cap, rule = lifetimes(target, config)
    granted = default if lifetime is None else lifetime
    if granted > cap:
        return refuse(Code.LIFETIME_TOO_LONG, "lifetime-too-long",
                      f"lifetime {granted} s exceeds the {cap} s allowed ({rule})", rule)
    if caller.is_root:
        return Decision(True, "root-request", lifetime=granted, max_lifetime=cap, rule=rule)
    if config.require_session and not has_session:
        return refuse(Code.NO_SESSION, "no-session",
                      f"{target.name} has no live login session; log in again", rule)
    return Decision(True, "own-session" if has_session else "no-session-required",
                    lifetime=granted, max_lifetime=cap, rule=rule)


_ROOT_SESSION_CHANGE = Decision(True, "root-request")


def decide_session_change(caller: Caller, op: str) -> Decision:
    """Only root (the PAM stack) opens and closes login sessions."""
    if caller.is_root:
        return _ROOT_SESSION_CHANGE  # frozen: one for every OPEN and CLOSE
    return refuse(Code.PERMISSION_DENIED, "not-root",
                  f"only root may {op.lower()} login sessions (uid {caller.uid} asked)")


def slurm_name(login: str, config: Config) -> str:
    """The Slurm user name for a login name: the explicit table, else without @REALM."""
    if login in config.user_map:
        return config.user_map[login]
    if config.strip_realm and "@" in login:
        return login.split("@", 1)[0]
    return login


def unknown_names(config: Config, user_known: Callable[[str], bool],
                  group_known: Callable[[str], bool]) -> list[tuple[str, str]]:
    """(key, name) for each user or group the policy names that the lookups (NSS) do not know:
    a typo, or an account not made yet, whose rule silently matches no one until it exists."""
    lists = (("allow_users", config.allow_users, user_known),
             ("deny_users", config.deny_users, user_known),
             ("allow_groups", config.allow_groups, group_known),
             ("deny_groups", config.deny_groups, group_known),
             ("group_lifetime", config.group_lifetime, group_known),
             ("group_max_lifetime", config.group_max_lifetime, group_known))
    return [(key, name) for key, names, known in lists for name in names if not known(name)]
