"""Requests: one line in, one answer out. A request is checked against its entry in
OPERATIONS (its arguments, which are required, root only or not), then its handler gathers
the facts, asks policy.py and returns a Grant (a token to make) or the answer's fields.
Anything refused is a `Refusal`, raised where it is found; `Operations.refuse` is the one
place that counts, audits and encodes it, for answers made inline and in the signer's
worker threads alike. The loop in server.py frames requests and decides nothing.
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
from .nss import nss
from .policy import (Account, Caller, Decision, decide_mint, decide_session_change, slurm_name,
                     unknown_names)
from .protocol import (Code, ProtocolError, Refusal, Request, encode_error, encode_ok,
                       parse_number, parse_request)
from .sessions import Session
from .signer import SignerError, Token
from .state import DaemonState

log = logging.getLogger("slurmjwtd")
_SIGNING_WORKERS = 4  # concurrent `scontrol token` runs at most
_INTERNAL = encode_error(Code.INTERNAL, "internal error; see the slurmjwtd log")


def lookup_account(key: str | int, policy_groups: frozenset[str],
                   check_alias: bool = False) -> Account | None:
    """The account named (str) or numbered (int) KEY, with those of POLICY_GROUPS it is in,
    primary or supplementary; None if NSS does not know it. CHECK_ALIAS: for a name, also ask
    which name its uid has (getpwuid), to tell a second passwd entry of that uid (`useradd -o`)."""
    pw = nss(pwd.getpwnam, key) if isinstance(key, str) else nss(pwd.getpwuid, key)
    if pw is None:
        return None
    alias_of = ""
    if check_alias and isinstance(key, str):
        # NSS changed between the two lookups: no name to compare with ("?")
        primary = getattr(nss(pwd.getpwuid, pw.pw_uid), "pw_name", "?")
        alias_of = "" if primary == pw.pw_name else primary
    groups: frozenset[str] = frozenset()
    if policy_groups:  # initgroups through NSS only when the policy names groups
        gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
        groups = frozenset(g for g in policy_groups
                           if (entry := nss(grp.getgrnam, g)) is not None and entry.gr_gid in gids)
    return Account(pw.pw_name, pw.pw_uid, groups, pw.pw_gid, alias_of)


def warn_unknown_names(config: Config) -> int:
    """Log one warning per user or group the policy names that NSS does not know; not fatal:
    NSS may be down, or the account made later. Return how many; at startup and each reload."""
    unknown = unknown_names(config, lambda name: nss(pwd.getpwnam, name) is not None,
                            lambda name: nss(grp.getgrnam, name) is not None)
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


@dataclass(frozen=True)
class Grant:
    """What a handler allowed: a token to make for TARGET as DECISION says, and for OPEN the
    SESSION it opened, which is closed again if no token comes of it."""

    target: Account
    decision: Decision
    session: Session | None = None


@dataclass(eq=False)
class Pending:
    """A grant whose token a blocking signer is making in a worker thread."""

    future: Future
    op: str
    caller: Caller
    grant: Grant


Handler = Callable[["Operations", Caller, Request], "Grant | Fields"]


@dataclass(frozen=True)
class Operation:
    """One request's entry in OPERATIONS, checked in this order by `Operations._admit`."""

    handler: Handler
    args: frozenset[str]  # the arguments it takes
    root_socket: bool = False  # root asks it only through the root socket (logins' OPEN, CLOSE)
    root_only: bool = False  # only root may ask (policy.decide_session_change)
    audited: tuple[str, ...] = ()  # the arguments a not-root refusal records
    required: tuple[str, ...] = ()  # those it cannot do without (given and not empty)


class Operations:
    """MINT, OPEN, CLOSE, STATUS, EXPLAIN: facts gathered, policy asked, answer encoded."""

    def __init__(self, state: DaemonState) -> None:
        self.state = state
        self._workers: ThreadPoolExecutor | None = None

    def refuse(self, caller: Caller, refusal: Refusal, op: str = "-") -> bytes:
        """The one place a refusal is counted, audited and encoded; OP "-": refused before any
        operation was read (the server's framing, deadlines and caps)."""
        self.state.counters.refused += 1
        fields = refusal.audit if refusal.rule is None else {**refusal.audit, "rule": refusal.rule}
        self.state.audit(decision="refused", op=op, caller_uid=caller.uid, caller_pid=caller.pid,
                         **fields, reason=refusal.reason, code=refusal.code.value,
                         detail=refusal.message)
        return encode_error(refusal.code, refusal.message)

    def answer(self, caller: Caller, line: bytes, root_socket: bool = False) -> bytes | Pending:
        """Turn one request LINE (without its newline) into one answer line, or a Pending
        signer call. ROOT_SOCKET: it came through the root socket."""
        op = "-"
        try:
            request = parse_request(line)
            op = request.op.lower()
            operation = OPERATIONS.get(request.op)
            if operation is None:
                raise ProtocolError(Code.BAD_REQUEST, f"unknown operation {request.op}")
            self._admit(operation, caller, request, root_socket)
            result = operation.handler(self, caller, request)
            if type(result) is not Grant:
                return encode_ok(result)
            return self._sign(op, caller, result)
        except Refusal as refusal:
            return self.refuse(caller, refusal, op)
        except Exception:
            log.exception("internal error answering uid %d pid %d", caller.uid, caller.pid)
            self.state.counters.refused += 1
            return _INTERNAL

    def _admit(self, operation: Operation, caller: Caller, request: Request,
               root_socket: bool) -> None:
        """The checks every operation's table entry asks for, in order; raise the first refusal."""
        args = request.args
        extra = args.keys() - operation.args
        if extra:
            raise ProtocolError(Code.BAD_REQUEST, f"{request.op} takes no argument {min(extra)}")
        if operation.root_socket and caller.is_root and not root_socket:
            raise Refusal(Code.PERMISSION_DENIED, "public-socket",
                          f"{request.op} is taken only on the root socket "
                          f"{self.state.config.root_socket}; point pam_slurmjwt's socket= at it",
                          user=args.get("user"), session=args.get("session"))
        if operation.root_only:
            allowed = decide_session_change(caller, request.op)
            if not allowed.granted:
                assert allowed.code is not None
                raise Refusal(allowed.code, allowed.reason, allowed.message,
                              **{k: args.get(k) for k in operation.audited})
        for key in operation.required:
            if not args.get(key):
                raise ProtocolError(Code.BAD_REQUEST, f"{request.op} needs {key}=")

    def _sign(self, op: str, caller: Caller, grant: Grant) -> bytes | Pending:
        """Mint now, or, for a signer that blocks (scontrol), in a worker thread: the
        connection then waits off the loop until `complete` makes its answer."""
        signer = self.state.signer
        user = slurm_name(grant.target.name, self.state.config)
        lifetime = grant.decision.lifetime
        if not signer.blocking:
            return encode_ok(self._granted(op, caller, grant, signer.mint(user, lifetime,
                                                                          int(time.time()))))
        if self._workers is None:
            self._workers = ThreadPoolExecutor(max_workers=_SIGNING_WORKERS,
                                               thread_name_prefix="signer")
        # the signer's timeout counts from now: time queued behind slow calls is part of it
        future = self._workers.submit(signer.mint, user, lifetime, int(time.time()),
                                      time.monotonic() + signer.timeout)
        return Pending(future, op, caller, grant)

    def complete(self, pending: Pending) -> bytes:
        """The answer to a request whose blocking signer has finished, failed or not; no token,
        no session: a failed signer leaves nothing open."""
        grant = pending.grant
        try:
            return encode_ok(self._granted(pending.op, pending.caller, grant,
                                           pending.future.result()))
        except SignerError as exc:
            self._undo(grant)
            return self.refuse(pending.caller, Refusal(Code.SIGNER_UNAVAILABLE, "signer", str(exc),
                                                       user=grant.target.name), pending.op)
        except Exception:
            log.exception("internal error signing for %s", grant.target.name)
            self._undo(grant)
            return _INTERNAL

    def _undo(self, grant: Grant) -> None:
        if grant.session is not None:
            self.state.registry.close(grant.session.id)

    def _granted(self, op: str, caller: Caller, grant: Grant, token: Token) -> Fields:
        """Count and audit a token just made; return the answer's fields."""
        self.state.counters.granted += 1
        target, decision, session = grant.target, grant.decision, grant.session
        where: Fields = {} if session is None else {
            "session": session.id, "tty": session.tty, "rhost": session.rhost,
            "service": session.service}
        self.state.audit(decision="granted", op=op, caller_uid=caller.uid, caller_pid=caller.pid,
                         user=target.name, uid=target.uid,
                         slurm_user=token.user if token.user != target.name else None,
                         reason=decision.reason, rule=decision.rule, lifetime=decision.lifetime,
                         exp=token.exp, jti=token.jti, **where)
        fields: Fields = {"token": token.jwt, "user": target.name, "slurm_user": token.user,
                          "exp": token.exp, "jti": token.jti, "lifetime": decision.lifetime}
        if session is None:
            return fields
        return {"session": session.id, **fields, "uid": target.uid, "gid": target.gid}

    def shutdown(self) -> None:
        if self._workers is not None:
            self._workers.shutdown(wait=True)

    # -- handlers: each a chain of checks, the first refusal raised -------------------------
    def _mint_for(self, caller: Caller, request: Request) -> Grant:
        """Resolve the account asked for and decide; raise the refusal if refused."""
        lifetime = parse_lifetime(request.args.get("lifetime"))
        name = request.args.get("user")
        config = self.state.config
        # a user naming herself is checked against her uid's name: another entry of that uid
        # (useradd -o) would be another Slurm user, with other associations and limits
        target = lookup_account(caller.uid if name is None else name, config.policy_groups,
                                check_alias=not caller.is_root)
        shown = name if name is not None else f"uid {caller.uid}"
        has_session = (not caller.is_root and target is not None and target.uid == caller.uid
                       and self.state.registry.has_live_session(target.uid))
        decision = decide_mint(caller, target, shown, lifetime, has_session, config)
        if not decision.granted:
            assert decision.code is not None
            raise Refusal(decision.code, decision.reason, decision.message, decision.rule,
                          user=target.name if target else shown, uid=target.uid if target else None)
        assert target is not None
        # the limit is on users' own requests: root's follow logins, which sshd already bounds
        if not caller.is_root and not self.state.limiter.allow(target.uid, time.monotonic()):
            raise Refusal(Code.RATE_LIMITED, "rate-limit",
                          f"{target.name} had {config.rate_limit} tokens in {config.rate_window} s; "
                          f"try again shortly", f"rate_limit:{config.rate_limit}/{config.rate_window}s",
                          user=target.name, uid=target.uid)
        return Grant(target, decision)

    def _op_mint(self, caller: Caller, request: Request) -> Grant:
        return self._mint_for(caller, request)

    def _op_open(self, caller: Caller, request: Request) -> Grant:
        grant = self._mint_for(caller, request)
        args, target = request.args, grant.target
        session = self.state.registry.open(target.name, target.uid, caller.pid,
                                           args.get("tty", ""), args.get("rhost", ""),
                                           args.get("service", ""))
        if session is None:
            raise ProtocolError(Code.BAD_REQUEST, "the calling process exited before its session opened")
        return Grant(target, grant.decision, session)

    def _op_explain(self, caller: Caller, request: Request) -> Fields:
        """What MINT would decide for a user, asked by root; mints nothing, takes no grant."""
        name = request.args["user"]
        config = self.state.config
        target = lookup_account(name, config.policy_groups)
        lifetime = parse_lifetime(request.args.get("lifetime"))
        decision = decide_mint(caller, target, name, lifetime, False, config)
        answer: Fields = {
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

    def _op_close(self, caller: Caller, request: Request) -> Fields:
        session_id = request.args["session"]
        session = self.state.registry.close(session_id)
        if session is None:
            raise Refusal(Code.NO_SUCH_SESSION, "no-such-session", f"no open session {session_id}",
                          session=session_id)
        self.state.audit(decision="granted", op="close", caller_uid=caller.uid,
                         caller_pid=caller.pid, user=session.user, uid=session.uid,
                         session=session.id, reason="root-request")
        remaining = self.state.registry.remaining(session.uid)
        return {"session": session.id, "user": session.user, "remaining": remaining}

    def _op_status(self, caller: Caller, request: Request) -> Fields:
        state = self.state
        return {"version": __version__, "protocol": 1, "signer": state.signer.name,
                "sessions": len(state.registry), "granted": state.counters.granted,
                "refused": state.counters.refused,
                "uptime": int(time.monotonic() - state.started)}


def _args(*names: str) -> frozenset[str]:
    return frozenset(names)


OPERATIONS: dict[str, Operation] = {
    "MINT": Operation(Operations._op_mint, _args("user", "lifetime")),
    "OPEN": Operation(Operations._op_open, _args("user", "lifetime", "tty", "rhost", "service"),
                      root_socket=True, root_only=True, audited=("user",), required=("user",)),
    "CLOSE": Operation(Operations._op_close, _args("session"), root_socket=True, root_only=True,
                       required=("session",)),
    "STATUS": Operation(Operations._op_status, _args()),
    "EXPLAIN": Operation(Operations._op_explain, _args("user", "lifetime"), root_only=True,
                         required=("user",)),
}
