"""Requests: one line in, one answer out. `Operations.answer` is the one place where
every refusal becomes its protocol code and its audit line; the loop in server.py
never decides anything.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from . import __version__
from .config import Config
from .policy import (Account, Caller, Decision, decide_mint, decide_session_change, refuse,
                     slurm_name, unknown_names)
from .protocol import (Code, ProtocolError, Request, encode_error, encode_ok, parse_number,
                       parse_request)
from .signer import SignerError, Token
from .state import DaemonState

log = logging.getLogger("slurmjwtd")
_SIGNING_WORKERS = 4  # concurrent `scontrol token` runs at most
_OPERATIONS: dict[str, frozenset[str]] = {
    "MINT": frozenset({"user", "lifetime"}),
    "OPEN": frozenset({"user", "lifetime", "tty", "rhost", "service"}),
    "CLOSE": frozenset({"session"}),
    "STATUS": frozenset(),
    "EXPLAIN": frozenset({"user", "lifetime"}),
}


def lookup_account(key: str | int, policy_groups: frozenset[str],
                   check_alias: bool = False) -> Account | None:
    """The account named (str) or numbered (int) KEY, with those of POLICY_GROUPS it is in,
    primary or supplementary; None if NSS does not know it. CHECK_ALIAS: for a name, also ask
    which name its uid has (getpwuid), to tell a second passwd entry of that uid (`useradd -o`)."""
    try:
        pw = pwd.getpwnam(key) if isinstance(key, str) else pwd.getpwuid(key)
    except KeyError:
        return None
    alias_of = ""
    if check_alias and isinstance(key, str):
        try:
            primary = pwd.getpwuid(pw.pw_uid).pw_name
        except KeyError:  # NSS changed between the two lookups: no name to compare with
            primary = "?"
        alias_of = "" if primary == pw.pw_name else primary
    groups: frozenset[str] = frozenset()
    if policy_groups:  # initgroups through NSS only when the policy names groups
        gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
        groups = frozenset(g for g in policy_groups if _gid(g) in gids)
    return Account(pw.pw_name, pw.pw_uid, groups, pw.pw_gid, alias_of)


def _gid(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def warn_unknown_names(config: Config) -> int:
    """Log one warning per user or group the policy names that NSS does not know; not fatal:
    NSS may be down, or the account made later. Return how many; at startup and each reload."""
    unknown = unknown_names(config, user_exists, lambda name: _gid(name) is not None)
    for key, name in unknown:
        kind = "user" if key.endswith("_users") else "group"
        log.warning("config key '%s': no %s %r in NSS (a typo, not made yet, or NSS down); "
                    "its rule matches no one until it exists; `slurmjwt doctor` lists them",
                    key, kind, name)
    return len(unknown)


def parse_lifetime(text: str | None) -> int | None:
    if text is None:
        return None
    seconds = parse_number(text)
    if not seconds:  # None (not 1 to 9 ASCII digits) or 0
        raise ProtocolError(Code.BAD_REQUEST, "lifetime must be a whole number of seconds, 1 or more")
    return seconds


Fields = dict[str, object]


@dataclass(eq=False)
class Pending:
    """A request whose token a blocking signer is making in a worker thread."""

    future: Future
    op: str
    caller: Caller
    user: str
    answer: Callable[[Token], Fields]
    undo: Callable[[], object]


class Operations:
    """MINT, OPEN, CLOSE, STATUS, EXPLAIN: facts gathered, policy asked, answer encoded."""

    def __init__(self, state: DaemonState) -> None:
        self.state = state
        self._workers: ThreadPoolExecutor | None = None

    def refusal(self, caller: Caller, code: Code, message: str) -> bytes:
        """Audit and encode a refusal that happened before any operation was read."""
        self._refuse("-", caller, code, code.value, message)
        return encode_error(code, message)

    def answer(self, caller: Caller, buf: bytes, end: int,
               root_socket: bool = False) -> bytes | Pending:
        """Turn one request into one answer line; every refusal becomes its code here.
        ROOT_SOCKET: it came through the root socket, the only one taking OPEN and CLOSE."""
        op = "-"
        try:
            if end + 1 != len(buf):
                raise ProtocolError(Code.BAD_REQUEST, "one request per connection")
            request = parse_request(buf[:end])
            op = request.op.lower()
            allowed = _OPERATIONS.get(request.op)
            if allowed is None:
                raise ProtocolError(Code.BAD_REQUEST, f"unknown operation {request.op}")
            extra = set(request.args) - allowed
            if extra:
                raise ProtocolError(Code.BAD_REQUEST, f"{request.op} takes no argument {min(extra)}")
            if request.op in ("OPEN", "CLOSE") and caller.is_root and not root_socket:
                raise self._refuse(op, caller, Code.PERMISSION_DENIED, "public-socket",
                                   f"{request.op} is taken only on the root socket "
                                   f"{self.state.config.root_socket}; point pam_slurmjwt's "
                                   f"socket= at it", user=request.args.get("user"),
                                   session=request.args.get("session"))
            result = getattr(self, "_op_" + op)(caller, request)
            return result if isinstance(result, Pending) else encode_ok(result)
        except ProtocolError as exc:
            if not exc.audited:  # malformed requests, refused before any decision was made
                self._refuse(op, caller, exc.code, exc.code.value, exc.message)
            return encode_error(exc.code, exc.message)
        except Exception:
            log.exception("internal error answering uid %d pid %d", caller.uid, caller.pid)
            self.state.counters.refused += 1
            return encode_error(Code.INTERNAL, "internal error; see the slurmjwtd log")

    def _refuse(self, op: str, caller: Caller, code: Code, reason: str, message: str,
                **fields: object) -> ProtocolError:
        """Count and audit a refusal; return the error to raise."""
        self.state.counters.refused += 1
        self.state.audit(decision="refused", op=op, caller_uid=caller.uid, caller_pid=caller.pid,
                         **fields, reason=reason, code=code.value, detail=message)
        return ProtocolError(code, message, audited=True)

    def _granted(self, op: str, caller: Caller, target: Account, decision: Decision, token: Token,
                 **audited: object) -> Fields:
        """Audit a token just made for TARGET; return the answer's fields about it."""
        self._grant(op, caller, user=target.name, uid=target.uid,
                    slurm_user=token.user if token.user != target.name else None,
                    reason=decision.reason, rule=decision.rule, lifetime=decision.lifetime,
                    exp=token.exp, jti=token.jti, **audited)
        return {"token": token.jwt, "user": target.name, "slurm_user": token.user,
                "exp": token.exp, "jti": token.jti, "lifetime": decision.lifetime}

    def _grant(self, op: str, caller: Caller, **fields: object) -> None:
        self.state.audit(decision="granted", op=op, caller_uid=caller.uid, caller_pid=caller.pid,
                         **fields)

    def _deny(self, op: str, caller: Caller, decision: Decision, **fields: object) -> ProtocolError:
        assert decision.code is not None
        return self._refuse(op, caller, decision.code, decision.reason, decision.message, **fields)

    def _mint_for(self, op: str, caller: Caller, request: Request) -> tuple[Account, Decision]:
        """Resolve the account asked for and decide; raise the refusal if refused."""
        lifetime = parse_lifetime(request.args.get("lifetime"))
        name = request.args.get("user")
        groups = self.state.config.policy_groups
        # a user naming herself is checked against her uid's name: another entry of that uid
        # (useradd -o) would be another Slurm user, with other associations and limits
        target = lookup_account(caller.uid if name is None else name, groups,
                                check_alias=not caller.is_root)
        shown = name if name is not None else f"uid {caller.uid}"
        has_session = (not caller.is_root and target is not None and target.uid == caller.uid
                       and self.state.registry.has_live_session(target.uid))
        decision = decide_mint(caller, target, shown, lifetime, has_session, self.state.config)
        # the limit is on users' own requests: root's follow logins, which sshd already bounds
        if (decision.granted and not caller.is_root
                and not self.state.limiter.allow(target.uid, time.monotonic())):
            config = self.state.config
            decision = refuse(Code.RATE_LIMITED, "rate-limit",
                              f"{target.name} had {config.rate_limit} tokens in {config.rate_window} s; "
                              f"try again shortly", f"rate_limit:{config.rate_limit}/{config.rate_window}s")
        if not decision.granted:
            raise self._deny(op, caller, decision, user=target.name if target else shown,
                             uid=target.uid if target else None, rule=decision.rule)
        assert target is not None
        return target, decision

    def _sign(self, op: str, caller: Caller, target: Account, decision: Decision,
              answer: Callable[[Token], Fields], undo: Callable[[], object] = lambda: None
              ) -> Fields | Pending:
        """Mint now, or, for a signer that blocks (scontrol), in a worker thread: the
        connection then waits off the loop until `complete` makes its answer."""
        signer = self.state.signer
        user = slurm_name(target.name, self.state.config)
        if not signer.blocking:
            self.state.counters.granted += 1
            return answer(signer.mint(user, decision.lifetime, int(time.time())))
        if self._workers is None:
            self._workers = ThreadPoolExecutor(max_workers=_SIGNING_WORKERS,
                                               thread_name_prefix="signer")
        # the signer's timeout counts from now: time queued behind slow calls is part of it
        future = self._workers.submit(signer.mint, user, decision.lifetime, int(time.time()),
                                      time.monotonic() + signer.timeout)
        return Pending(future, op, caller, target.name, answer, undo)

    def complete(self, pending: Pending) -> bytes:
        """The answer to a request whose blocking signer has finished, failed or not."""
        try:
            reply = encode_ok(pending.answer(pending.future.result()))
            self.state.counters.granted += 1
        except SignerError as exc:
            pending.undo()
            refusal = self._refuse(pending.op, pending.caller, Code.SIGNER_UNAVAILABLE,
                                   "signer", str(exc), user=pending.user)
            reply = encode_error(refusal.code, refusal.message)
        except Exception:
            log.exception("internal error signing for %s", pending.user)
            pending.undo()
            reply = encode_error(Code.INTERNAL, "internal error; see the slurmjwtd log")
        return reply

    def shutdown(self) -> None:
        if self._workers is not None:
            self._workers.shutdown(wait=True)

    def _op_mint(self, caller: Caller, request: Request) -> Fields | Pending:
        target, decision = self._mint_for("mint", caller, request)

        def answer(token: Token) -> Fields:
            return self._granted("mint", caller, target, decision, token)
        return self._sign("mint", caller, target, decision, answer)

    def _op_explain(self, caller: Caller, request: Request) -> dict[str, object]:
        """What MINT would decide for a user, asked by root; mints nothing, takes no grant."""
        allowed = decide_session_change(caller, "EXPLAIN")
        if not allowed.granted:
            raise self._deny("explain", caller, allowed)
        name = request.args.get("user")
        if not name:
            raise ProtocolError(Code.BAD_REQUEST, "EXPLAIN needs user=")
        config = self.state.config
        target = lookup_account(name, config.policy_groups)
        lifetime = parse_lifetime(request.args.get("lifetime"))
        decision = decide_mint(caller, target, name, lifetime, False, config)
        answer: dict[str, object] = {
            "decision": "granted" if decision.granted else "refused", "reason": decision.reason,
            "rule": decision.rule, "code": decision.code.value if decision.code else "-",
            "message": decision.message or "-"}
        if target is not None:
            now = time.monotonic()
            answer |= {"uid": target.uid, "slurm_user": slurm_name(target.name, config),
                       "groups": ",".join(sorted(target.groups)) or "-",
                       "sessions": self.state.registry.remaining(target.uid),
                       "rate_left": self.state.limiter.left(target.uid, now)}
        if decision.granted:
            answer |= {"lifetime": decision.lifetime, "max_lifetime": decision.max_lifetime}
        return answer

    def _op_open(self, caller: Caller, request: Request) -> Fields | Pending:
        args = request.args
        allowed = decide_session_change(caller, "OPEN")
        if not allowed.granted:
            raise self._deny("open", caller, allowed, user=args.get("user"))
        if "user" not in args:
            raise ProtocolError(Code.BAD_REQUEST, "OPEN needs user=")
        target, decision = self._mint_for("open", caller, request)
        where = {"tty": args.get("tty", ""), "rhost": args.get("rhost", ""),
                 "service": args.get("service", "")}
        session = self.state.registry.open(target.name, target.uid, caller.pid, **where)
        if session is None:
            raise ProtocolError(Code.BAD_REQUEST, "the calling process exited before its session opened")

        def answer(token: Token) -> Fields:
            fields = self._granted("open", caller, target, decision, token, session=session.id,
                                   **where)
            return {"session": session.id, **fields, "uid": target.uid, "gid": target.gid}
        # no token, no session: a failed signer leaves nothing open
        return self._sign("open", caller, target, decision, answer,
                          undo=lambda: self.state.registry.close(session.id))

    def _op_close(self, caller: Caller, request: Request) -> dict[str, object]:
        allowed = decide_session_change(caller, "CLOSE")
        if not allowed.granted:
            raise self._deny("close", caller, allowed)
        session_id = request.args.get("session")
        if not session_id:
            raise ProtocolError(Code.BAD_REQUEST, "CLOSE needs session=")
        session = self.state.registry.close(session_id)
        if session is None:
            raise self._refuse("close", caller, Code.NO_SUCH_SESSION, "no-such-session",
                               f"no open session {session_id}", session=session_id)
        self._grant("close", caller, user=session.user, uid=session.uid, session=session.id,
                    reason="root-request")
        remaining = self.state.registry.remaining(session.uid)
        return {"session": session.id, "user": session.user, "remaining": remaining}

    def _op_status(self, caller: Caller, request: Request) -> dict[str, object]:
        state = self.state
        return {"version": __version__, "protocol": 1, "signer": state.signer.name,
                "sessions": len(state.registry), "granted": state.counters.granted,
                "refused": state.counters.refused,
                "uptime": int(time.monotonic() - state.started)}
