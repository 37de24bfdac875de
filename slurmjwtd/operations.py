"""Requests: one line in, one answer out. A request is checked against its entry in
OPERATIONS (its arguments, which are required, root only or not), then its handler gathers
the facts, asks policy.py and returns a Grant (a token to make) or the answer's fields.
Anything refused is a `Refusal`, raised where it is found; `Operations.refuse` is the one
place that counts, audits and encodes it, for answers made inline and in the signer's
worker threads alike. The loop in server.py frames requests and decides nothing.

Token files: OPEN writes the user's (tokenfile.py) and plans its renewal (renewal.py);
`renew_due` renews those due, asking policy each time as OPEN does (a revoked or newly denied
user's file goes); `forget_emptied` removes the file once the user's last session has gone.
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

from . import __version__, fastpath
from .config import Config
from .nss import nss
from .policy import (Account, Caller, Decision, decide_mint, decide_session_change, lifetimes,
                     slurm_name, unknown_names)
from .protocol import (Code, ProtocolError, Refusal, Request, encode_error, encode_ok,
                       parse_number, parse_request)
from .renewal import RETRY_MIN
from .revocation import Diff, Revocation, RevocationError
from .sessions import Session
from .signer import SignerError, Token, unverified_claims
from .state import LATENCY_BUCKETS, DaemonState
from .tokenfile import token_path

log = logging.getLogger("slurmjwtd")
_SIGNING_WORKERS = 4  # concurrent `scontrol token` runs at most
_RENEW_BATCH = 64  # renewals per turn of the loop at most: logins never wait behind many
_RENEW_IN_FLIGHT = 2  # blocking renewals at once: the other workers stay free for logins
_MAX_REASON = 200  # characters of a revocation's reason kept
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
    """MINT, OPEN, CLOSE, STATUS, METRICS, EXPLAIN, REVOKE, UNREVOKE: facts gathered, policy asked,
    answer encoded; and the renewal of the token files."""

    def __init__(self, state: DaemonState) -> None:
        self.state = state
        self._workers: ThreadPoolExecutor | None = None
        self._renewing: dict[int, tuple[Future, Grant]] = {}  # uid: a blocking signer's renewal
        self.wake: Callable[[Future], None] = lambda future: None  # the loop's "a token is ready"
        self.renewer = Caller(0, 0, os.getpid())  # who renewals are audited as: the daemon, for root
        self.fast: fastpath.FastPath | None = None  # the compiled fast path, if it runs

    def refuse(self, caller: Caller, refusal: Refusal, op: str = "-") -> bytes:
        """The one place a refusal is counted, audited and encoded; OP "-": refused before any
        operation was read (the server's framing, deadlines and caps)."""
        self.state.counters.refusal(refusal.code.value)
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
            self.state.counters.refusal(Code.INTERNAL.value)
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
        return Pending(self._submit(user, lifetime), op, caller, grant)

    def _submit(self, user: str, lifetime: int) -> Future:
        """Mint in a worker thread (a blocking signer)."""
        signer = self.state.signer
        if self._workers is None:
            self._workers = ThreadPoolExecutor(max_workers=_SIGNING_WORKERS,
                                               thread_name_prefix="signer")
        # the signer's timeout counts from now: time queued behind slow calls is part of it
        return self._workers.submit(signer.mint, user, lifetime, int(time.time()),
                                    time.monotonic() + signer.timeout)

    def complete(self, pending: Pending) -> bytes:
        """The answer to a request whose blocking signer has finished, failed or not; no token,
        no session: a failed signer leaves nothing open."""
        grant = pending.grant
        try:
            return encode_ok(self._granted(pending.op, pending.caller, grant,
                                           pending.future.result()))
        except SignerError as exc:
            self._undo(grant)
            self.state.counters.signer_failures += 1
            return self.refuse(pending.caller, Refusal(Code.SIGNER_UNAVAILABLE, "signer", str(exc),
                                                       user=grant.target.name), pending.op)
        except Exception:
            log.exception("internal error signing for %s", grant.target.name)
            self._undo(grant)
            self.state.counters.refusal(Code.INTERNAL.value)
            return _INTERNAL

    def _undo(self, grant: Grant) -> None:
        if grant.session is not None:
            self.state.registry.close(grant.session.id)

    def _granted(self, op: str, caller: Caller, grant: Grant, token: Token) -> Fields:
        """Count and audit a token just made; return the answer's fields. A login's (OPEN)
        also becomes the user's token file."""
        self.state.counters.granted += 1
        target, decision, session = grant.target, grant.decision, grant.session
        file = self._keep(target.uid, token) if session is not None else None
        where: Fields = {} if session is None else {
            "session": session.id, "tty": session.tty, "rhost": session.rhost,
            "service": session.service}
        self._audit_grant(op, caller, grant, token, decision.reason, **where)
        fields: Fields = {"token": token.jwt, "user": target.name, "slurm_user": token.user,
                          "exp": token.exp, "jti": token.jti, "lifetime": decision.lifetime}
        if session is None:
            return fields
        opened: Fields = {"session": session.id, **fields, "uid": target.uid, "gid": target.gid}
        return opened if file is None else {**opened, "file": file}

    def _audit_grant(self, op: str, caller: Caller, grant: Grant, token: Token, reason: str,
                     **where: object) -> None:
        """The audit line of a token made: for a request (MINT, OPEN) or a renewal."""
        target, decision = grant.target, grant.decision
        self.state.audit(decision="granted", op=op, caller_uid=caller.uid, caller_pid=caller.pid,
                         user=target.name, uid=target.uid,
                         slurm_user=token.user if token.user != target.name else None,
                         reason=reason, rule=decision.rule, lifetime=decision.lifetime,
                         exp=token.exp, jti=token.jti, **where)

    # -- the fast path (fastpath.py) --------------------------------------------------------
    def _offer(self, target: Account) -> None:
        """After granting TARGET its own MINT (own-session): let the fast path answer its next
        ones, with what policy decided for a MINT without a lifetime, its session leaders, and
        a lease of its rate limit (given back when the entry goes)."""
        assert self.fast is not None
        state, uid = self.state, target.uid
        leaders = state.registry.leaders(uid)[:fastpath.MAX_LEADERS]
        default, cap, rule = lifetimes(target, state.config)
        texts = fastpath.templates(target.name, uid, slurm_name(target.name, state.config), rule,
                                   getattr(state.audit_log, "node", ""))
        if not leaders or texts is None:
            return
        self._reclaim(uid)  # the entry there, its lease back: the new one leases afresh
        now = time.monotonic()
        budget = state.limiter.lease(uid, now, fastpath.LEASE)
        if not budget:
            return
        if not self.fast.put(uid, budget, default, cap, leaders, texts):
            state.limiter.give_back(uid, budget, now)

    def _reclaim(self, uid: int) -> None:
        """Take UID's entry out of the fast path; its unspent lease back to the rate limit."""
        assert self.fast is not None
        left = self.fast.take(uid)
        if left > 0:
            self.state.limiter.give_back(uid, left, time.monotonic())

    def reclaim_all(self, expired_only: bool = False) -> None:
        """Take every entry (EXPIRED_ONLY: those past their time) out of the fast path."""
        if self.fast is None:
            return
        now = time.monotonic()
        for uid, left in self.fast.take_expired() if expired_only else self.fast.take_all():
            if left > 0:
                self.state.limiter.give_back(uid, left, now)

    def count_fast(self) -> None:
        """Add what the fast path granted since the last call to the counters."""
        if self.fast is None:
            return
        granted, passed, seconds, latency, unaudited, errno = self.fast.counters()
        if unaudited:
            log.error("fast path: the journal refused %d audit line(s) (%s); those requests "
                      "were handed to the Python loop, no token went out unaudited", unaudited,
                      os.strerror(errno))
        counters = self.state.counters
        counters.granted += granted
        counters.fast_granted += granted
        counters.fast_passed += passed
        counters.latency_sum += seconds
        counters.latency = [a + b for a, b in zip(counters.latency, latency)]

    # -- token files ------------------------------------------------------------------------
    def _keep(self, uid: int, token: Token) -> str | None:
        """Make TOKEN UID's token file and plan its renewal; the file's path, or None if it
        could not be written (logged; retried as a renewal)."""
        state = self.state
        try:
            state.files.write(uid, token.jwt)
        except OSError as exc:  # names the file, never the token
            log.error("token file of uid %d not written: %s", uid, exc)
            state.schedule.failed(uid, time.time())
            return None
        state.schedule.issued(uid, token.iat, token.exp)
        return token_path(state.files.base, uid)

    def _drop_file(self, uid: int) -> None:
        self.state.schedule.cancel(uid)
        try:
            self.state.files.remove(uid)
        except OSError as exc:
            log.error("token file of uid %d not removed: %s", uid, exc)

    def resume(self, now: float) -> None:
        """At startup: plan the renewal of each live session's file from the token it holds
        (a missing or expiring one is renewed within seconds: catching up after downtime);
        remove the files no session keeps."""
        state = self.state
        live = set(state.registry.uids())
        for uid in live:
            try:
                claims = unverified_claims(state.files.read(uid) or "")
                iat, exp = int(claims["iat"]), int(claims["exp"])  # type: ignore[arg-type]
            except (ValueError, KeyError, TypeError):
                iat = exp = 0
            if exp > now + RETRY_MIN:
                state.schedule.issued(uid, iat, exp)
            else:
                state.schedule.overdue(uid, now)
        for uid in set(state.files.users()) - live:
            self._drop_file(uid)

    def replan(self, now: float) -> None:
        """Plan a renewal for each live uid that has none (after a reload: policy may now
        allow those it refused)."""
        schedule = self.state.schedule
        for uid in self.state.registry.uids():
            if uid not in schedule and uid not in self._renewing:
                schedule.overdue(uid, now)

    def forget_emptied(self) -> None:
        """Remove the token file of each uid whose last session has gone."""
        for uid in self.state.registry.take_emptied():
            self._drop_file(uid)

    def renew_due(self, now: float, ahead: float = 0.0) -> bool:
        """Renew the token files due by NOW + AHEAD, a batch at most per call; whether some
        due are left for the next call. Each renewal asks policy as a login does; one it
        refuses removes the file (revoked, denied), except an unknown account (NSS down?),
        retried while a session lives."""
        state = self.state
        blocking = state.signer.blocking
        limit = max(0, _RENEW_IN_FLIGHT - len(self._renewing) if blocking else _RENEW_BATCH)
        due = state.schedule.pop_due(now + ahead, limit)
        for uid in due:
            grant = self._renewal(uid, now)
            if grant is None:
                continue
            user = slurm_name(grant.target.name, state.config)
            if blocking:
                future = self._submit(user, grant.decision.lifetime)
                self._renewing[uid] = (future, grant)
                future.add_done_callback(self.wake)
                continue
            try:
                token = state.signer.mint(user, grant.decision.lifetime, int(time.time()))
            except SignerError as exc:
                self._renew_failed(grant, str(exc))
            else:
                self._renewed(grant, token)
        return len(due) == limit and not blocking

    def renewals_done(self) -> None:
        """Finish the blocking signer's renewals that are done."""
        for uid, (future, grant) in list(self._renewing.items()):
            if not future.done():
                continue
            del self._renewing[uid]
            try:
                token = future.result()
            except SignerError as exc:
                self._renew_failed(grant, str(exc))
            except Exception:
                log.exception("internal error renewing the token of uid %d", uid)
                self.state.schedule.failed(uid, time.time())
            else:
                # the last session may have closed, or root revoked the user, meanwhile
                if (self.state.registry.has_live_session(uid)
                        and self.state.revocations.of(uid) is None):
                    self._renewed(grant, token)

    def _renewal(self, uid: int, now: float) -> Grant | None:
        """What policy says of renewing UID's file now; None if it is not to be renewed."""
        state = self.state
        if not state.registry.has_live_session(uid):
            self._drop_file(uid)
            return None
        config = state.config
        target = lookup_account(uid, config.policy_groups)
        revoked = state.revocations.of(uid) is not None
        decision = decide_mint(self.renewer, target, f"uid {uid}", None, True, config, revoked)
        if decision.granted:
            assert target is not None
            return Grant(target, decision)
        assert decision.code is not None
        self.refuse(self.renewer, Refusal(decision.code, decision.reason, decision.message,
                                          decision.rule, user=target.name if target else None,
                                          uid=uid), "renew")
        if decision.code is Code.UNKNOWN_USER:
            state.schedule.failed(uid, now)
        else:
            self._drop_file(uid)
        return None

    def _renewed(self, grant: Grant, token: Token) -> None:
        state, target = self.state, grant.target
        if self._keep(target.uid, token) is None:
            return
        state.counters.renewed += 1
        self._audit_grant("renew", self.renewer, grant, token, "renewal")

    def _renew_failed(self, grant: Grant, why: str) -> None:
        """The signer failed: the old token stays in the file; try again later."""
        uid = grant.target.uid
        self.state.counters.signer_failures += 1
        self.refuse(self.renewer, Refusal(Code.SIGNER_UNAVAILABLE, "signer", why,
                                          user=grant.target.name, uid=uid), "renew")
        self.state.schedule.failed(uid, time.time())

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
        revoked = target is not None and self.state.revocations.of(target.uid) is not None
        decision = decide_mint(caller, target, shown, lifetime, has_session, config, revoked)
        if not decision.granted:
            assert decision.code is not None
            raise Refusal(decision.code, decision.reason, decision.message, decision.rule,
                          user=target.name if target else shown, uid=target.uid if target else None)
        assert target is not None
        # the limit is on users' own requests: root's follow logins, which sshd already bounds
        if not caller.is_root and not self._allow(target.uid):
            raise Refusal(Code.RATE_LIMITED, "rate-limit",
                          f"{target.name} had {config.rate_limit} tokens in {config.rate_window} s; "
                          f"try again shortly", f"rate_limit:{config.rate_limit}/{config.rate_window}s",
                          user=target.name, uid=target.uid)
        return Grant(target, decision)

    def _allow(self, uid: int) -> bool:
        """A grant off UID's rate limit. The fast path's entry keeps serving meanwhile: taking it
        out on every request the Python loop answers would send the uid's next ones here too,
        a queue that feeds itself under load (100 clients of one user: 27,000 of 30,000 passed
        on, 4,400 tokens/s, against 28,000/s with the entry kept; bench.py's `100 in flight`).
        Its lease is taken back only when the bucket alone has none: the limit counts it all."""
        limiter, now = self.state.limiter, time.monotonic()
        if limiter.allow(uid, now):
            return True
        if self.fast is None:
            return False
        self._reclaim(uid)
        return limiter.allow(uid, now)

    def _op_mint(self, caller: Caller, request: Request) -> Grant:
        grant = self._mint_for(caller, request)
        if self.fast is not None and grant.decision.reason == "own-session":
            self._offer(grant.target)
        return grant

    def _op_open(self, caller: Caller, request: Request) -> Grant:
        grant = self._mint_for(caller, request)
        args, target = request.args, grant.target
        if self.fast is not None:
            self._reclaim(target.uid)  # its leaders change
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
        revoked = None if target is None else self.state.revocations.of(target.uid)
        decision = decide_mint(caller, target, name, lifetime, False, config, revoked is not None)
        answer: Fields = {
            "decision": "granted" if decision.granted else "refused", "reason": decision.reason,
            "rule": decision.rule, "code": decision.code.value if decision.code else "-",
            "message": decision.message or "-"}
        if target is not None:
            now = time.monotonic()
            answer |= {"uid": target.uid, "slurm_user": slurm_name(target.name, config),
                       "groups": ",".join(sorted(target.groups)) or "-",
                       "sessions": self.state.registry.remaining(target.uid),
                       "rate_left": self.state.limiter.left(target.uid, now),
                       "revoked": "yes" if revoked else "no"}
        if revoked is not None:
            answer |= {"revoked_since": revoked.since, "revoked_by": revoked.by_uid,
                       "revoked_node": revoked.node or "-", "revoked_reason": revoked.reason or "-"}
        if decision.granted:
            answer |= {"lifetime": decision.lifetime, "max_lifetime": decision.max_lifetime}
        return answer

    def _op_close(self, caller: Caller, request: Request) -> Fields:
        session_id = request.args["session"]
        session = self.state.registry.close(session_id)
        if session is None:
            raise Refusal(Code.NO_SUCH_SESSION, "no-such-session", f"no open session {session_id}",
                          session=session_id)
        if self.fast is not None:
            self._reclaim(session.uid)  # the leader may live on after its session closed
        self.state.audit(decision="granted", op="close", caller_uid=caller.uid,
                         caller_pid=caller.pid, user=session.user, uid=session.uid,
                         session=session.id, reason="root-request")
        remaining = self.state.registry.remaining(session.uid)
        return {"session": session.id, "user": session.user, "remaining": remaining}

    def _op_status(self, caller: Caller, request: Request) -> Fields:
        state = self.state
        self.count_fast()
        return {"version": __version__, "protocol": 1, "signer": state.signer.name,
                "sessions": len(state.registry), "granted": state.counters.granted,
                "refused": state.counters.refused, "renewed": state.counters.renewed,
                "token_files": len(state.schedule) + len(self._renewing),
                "revoked": len(state.revocations),
                "revocation_file": state.revocations.problem or "ok",
                "fast_path": "on" if self.fast is not None and self.fast.signing else "off",
                "uptime": int(time.monotonic() - state.started)}

    def _op_metrics(self, caller: Caller, request: Request) -> Fields:
        """The counters for monitoring (`slurmjwt metrics`): numbers and protocol codes only,
        never a user's name or a token. `refusals` and `latency` are lists of KEY:COUNT, the
        latency buckets' counts not cumulative, the last one's bound `inf`."""
        self.count_fast()
        state, counters = self.state, self.state.counters
        bounds = [f"{b:g}" for b in LATENCY_BUCKETS] + ["inf"]
        return {"version": __version__, "signer": state.signer.name,
                "sessions": len(state.registry), "granted": counters.granted,
                "refused": counters.refused, "renewed": counters.renewed,
                "token_files": len(state.schedule) + len(self._renewing),
                "revoked": len(state.revocations), "signer_failures": counters.signer_failures,
                "fast_path_granted": counters.fast_granted, "fast_path_passed": counters.fast_passed,
                "refusals": ",".join(f"{code}:{n}" for code, n in sorted(counters.refusals.items())),
                "latency": ",".join(f"{b}:{n}" for b, n in zip(bounds, counters.latency)),
                "latency_sum": f"{counters.latency_sum:.6f}",
                "uptime": int(time.monotonic() - state.started)}

    def revocations_changed(self, change: Diff) -> None:
        """Put in force here what the revocation file says changed, written by another node
        (or by hand): as a local REVOKE, a newly revoked user's file goes (no renewal); as a
        local UNREVOKE, a lifted user still logged in has one again within a second. Each is
        audited on this node (`reason=revocation-file`, with who revoked, where and why)."""
        self.reclaim_all()
        for r in change.revoked:
            self._drop_file(r.uid)
            self.state.audit(decision="granted", op="revoke", caller_uid=r.by_uid, user=r.user,
                             uid=r.uid, reason="revocation-file", revoked_on=r.node or None,
                             detail=r.reason or None)
        for r in change.lifted:
            self.state.audit(decision="granted", op="unrevoke", user=r.user, uid=r.uid,
                             reason="revocation-file")
            if self.state.registry.has_live_session(r.uid):
                self.state.schedule.overdue(r.uid, time.time(), spread=0.0)

    def _revoked_account(self, request: Request) -> Account:
        name = request.args["user"]
        target = lookup_account(name, frozenset())
        if target is None:
            raise Refusal(Code.UNKNOWN_USER, "unknown-user", f"no such user: {name}", user=name)
        return target

    def _op_revoke(self, caller: Caller, request: Request) -> Fields:
        """Root stops every grant and renewal for a user, at once and across restarts; the
        user's token file goes (tokens already out die at their exp)."""
        target = self._revoked_account(request)
        reason = request.args.get("reason", "")[:_MAX_REASON]
        revocations = self.state.revocations
        revocation = Revocation(target.name, target.uid, int(time.time()), caller.uid, reason,
                                revocations.node)
        try:
            others = revocations.revoke(revocation)
        except RevocationError as exc:
            raise Refusal(Code.INTERNAL, "revocation-file", str(exc), user=target.name,
                          uid=target.uid) from None
        self.revocations_changed(others.without(target.uid))  # the fast path's entries go too
        self._drop_file(target.uid)
        self.state.audit(decision="granted", op="revoke", caller_uid=caller.uid,
                         caller_pid=caller.pid, user=target.name, uid=target.uid,
                         reason="root-request", detail=reason or None)
        return {"user": target.name, "uid": target.uid, "revoked": "yes",
                "since": revocation.since,
                "sessions": self.state.registry.remaining(target.uid)}

    def _op_unrevoke(self, caller: Caller, request: Request) -> Fields:
        """Root lifts a revocation; a user still logged in has a token file again within a
        turn of the loop. Lifting one that is not there is not an error."""
        target = self._revoked_account(request)
        try:
            lifted, others = self.state.revocations.unrevoke(target.uid)
        except RevocationError as exc:
            raise Refusal(Code.INTERNAL, "revocation-file", str(exc), user=target.name,
                          uid=target.uid) from None
        self.revocations_changed(others.without(target.uid) if lifted else others)
        if lifted is not None:
            self.state.audit(decision="granted", op="unrevoke", caller_uid=caller.uid,
                             caller_pid=caller.pid, user=target.name, uid=target.uid,
                             reason="root-request")
            if self.state.registry.has_live_session(target.uid):
                self.state.schedule.overdue(target.uid, time.time(), spread=0.0)
        return {"user": target.name, "uid": target.uid,
                "was_revoked": "yes" if lifted else "no"}


def _args(*names: str) -> frozenset[str]:
    return frozenset(names)


OPERATIONS: dict[str, Operation] = {
    "MINT": Operation(Operations._op_mint, _args("user", "lifetime")),
    "OPEN": Operation(Operations._op_open, _args("user", "lifetime", "tty", "rhost", "service"),
                      root_socket=True, root_only=True, audited=("user",), required=("user",)),
    "CLOSE": Operation(Operations._op_close, _args("session"), root_socket=True, root_only=True,
                       required=("session",)),
    "STATUS": Operation(Operations._op_status, _args()),
    "METRICS": Operation(Operations._op_metrics, _args()),
    "EXPLAIN": Operation(Operations._op_explain, _args("user", "lifetime"), root_only=True,
                         required=("user",)),
    "REVOKE": Operation(Operations._op_revoke, _args("user", "reason"), root_only=True,
                        audited=("user",), required=("user",)),
    "UNREVOKE": Operation(Operations._op_unrevoke, _args("user"), root_only=True,
                          audited=("user",), required=("user",)),
}
