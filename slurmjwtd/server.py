"""The daemon's life: startup, serve, graceful shutdown on signals.

One thread runs an epoll loop. It accepts, asks the kernel who connected
(SO_PEERCRED), reads one request line under a deadline, decides, answers and
closes. Each decision takes tens of microseconds and never waits on a client,
so a client that hangs or floods costs the others nothing: it is dropped at
its deadline. `_answer` is the one place where errors become protocol codes.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import grp
import os
import pwd
import resource
import selectors
import signal
import socket
import struct
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from . import __version__
from .audit import AuditLog
from .config import Config
from .policy import (Account, Caller, Decision, decide_mint, decide_session_change, refuse,
                     slurm_name)
from .protocol import (MAX_REQUEST, Code, ProtocolError, Request, encode_error, encode_ok,
                       parse_request)
from .service import Notifier
from .ratelimit import RateLimiter
from .sessions import SessionRegistry
from .signer import Signer, SignerError, Token

log = logging.getLogger("slurmjwtd")
_PEERCRED = struct.Struct("3i")
_ACCEPT_BURST = 64  # connections taken per wakeup before serving other ready sockets
_ACCEPT_PAUSE = 0.1  # seconds without accepting after running out of file descriptors
_PRUNE_INTERVAL = 60.0  # seconds between sweeps for sessions whose leader has gone
_SIGNING_WORKERS = 4  # concurrent `scontrol token` runs at most
_STATUS_INTERVAL = 1.0  # seconds between STATUS= updates to systemd, when the counters moved
_NOWAIT = socket.MSG_DONTWAIT  # per call, which spares a fcntl per connection
_OPERATIONS: dict[str, frozenset[str]] = {
    "MINT": frozenset({"user", "lifetime"}),
    "OPEN": frozenset({"user", "lifetime", "tty", "rhost", "service"}),
    "CLOSE": frozenset({"session"}),
    "STATUS": frozenset(),
    "EXPLAIN": frozenset({"user", "lifetime"}),
}


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


@dataclass
class Counters:
    granted: int = 0
    refused: int = 0


@dataclass
class DaemonState:
    """Everything the daemon knows; the one piece of mutable state."""

    config: Config
    signer: Signer
    registry: SessionRegistry
    audit: AuditLog = field(default_factory=AuditLog)
    limiter: RateLimiter = field(init=False)
    counters: Counters = field(default_factory=Counters)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.config.rate_limit, self.config.rate_window)


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    caller: Caller
    deadline: float
    buf: bytes = b""


def peer_caller(sock: socket.socket) -> Caller:
    pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                     _PEERCRED.size))
    return Caller(uid=uid, gid=gid, pid=pid)


def lookup_account(key: str | int, policy_groups: frozenset[str]) -> Account | None:
    """The account named (str) or numbered (int) KEY, with those of POLICY_GROUPS it is in,
    primary or supplementary; None if NSS does not know it."""
    try:
        pw = pwd.getpwnam(key) if isinstance(key, str) else pwd.getpwuid(key)
    except KeyError:
        return None
    groups: frozenset[str] = frozenset()
    if policy_groups:  # initgroups through NSS only when the policy names groups
        gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
        groups = frozenset(g for g in policy_groups if _gid(g) in gids)
    return Account(pw.pw_name, pw.pw_uid, groups, pw.pw_gid)


def _gid(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def parse_lifetime(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or len(text) > 9 or int(text) == 0:
        raise ProtocolError(Code.BAD_REQUEST, "lifetime must be a whole number of seconds, 1 or more")
    return int(text)


def bind_socket(path: str) -> socket.socket:
    """Bind PATH (mode 0666), refusing to steal it from a daemon that still answers."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if os.path.lexists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # stale: left by a daemon that died
        except OSError as exc:
            raise StartupError(f"socket {path}: exists and is not a usable socket ({exc.strerror}); "
                               f"remove it: rm {path}") from None
        else:
            raise StartupError(f"socket {path}: another slurmjwtd is already listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)
    sock.listen(512)
    return sock


Loader = Callable[[], tuple[Config, Signer]]
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


class Server:
    """Startup, serve until SIGTERM, shutdown; SIGHUP reloads the configuration and key."""

    def __init__(self, state: DaemonState, load: Loader | None = None,
                 notifier: Notifier | None = None) -> None:
        self.state = state
        self._load = load
        self._notifier = notifier or Notifier()
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._bound_path: str | None = None
        # deadlines are now + a constant, so insertion order is deadline order
        self._pending: collections.OrderedDict[int, Connection] = collections.OrderedDict()
        self._per_uid: collections.Counter[int] = collections.Counter()
        self._signals: list[int] = []
        self._stopping = False
        self._timers: dict[str, float] = {"prune": time.monotonic() + _PRUNE_INTERVAL}
        if self._notifier.enabled:
            self._timers["status"] = time.monotonic() + _STATUS_INTERVAL
        if self._notifier.watchdog_interval:
            self._timers["watchdog"] = time.monotonic()
        self._status_shown = ""
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._signed_r, self._signed_w = socket.socketpair()  # worker threads: "a token is ready"
        self._signing: dict[Connection, Pending] = {}
        self._workers: ThreadPoolExecutor | None = None

    # -- life -------------------------------------------------------------------------------
    def startup(self, listener: socket.socket | None = None) -> None:
        """Load the registry, listen (on LISTENER if systemd passed one), then say READY=1."""
        config = self.state.config
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:  # each waiting client holds a descriptor: allow as many as we may
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        try:
            os.makedirs(os.path.dirname(config.session_file), mode=0o755, exist_ok=True)
            live = self.state.registry.load()
        except (OSError, ValueError) as exc:
            raise StartupError(str(exc)) from None
        if listener is None:
            listener = bind_socket(config.socket)
            self._bound_path = config.socket
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, "signal")
        self._signed_r.setblocking(False)
        self._signed_w.setblocking(False)
        self._selector.register(self._signed_r, selectors.EVENT_READ, "signed")
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        log.info("slurmjwtd %s ready: socket=%s signer=%s sessions=%d", __version__,
                 config.socket, self.state.signer.name, live)
        self._notifier.send("READY=1", "STATUS=" + self._status_text())

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def serve(self) -> None:
        while not (self._stopping and not self._pending and not self._signing):
            due = min(self._timers.values())
            for key, _ in self._selector.select(self._next_timeout(due)):
                if key.data is None:
                    self._accept()
                elif key.data == "signal":
                    self._handle_signals()
                elif key.data == "signed":
                    self._complete_signing()
                else:
                    self._read(key.data)
            now = time.monotonic()
            if self._pending:
                self._expire(now)
            if now >= due:
                self._run_timers(now)
            if self.state.registry.dirty:
                self._keep_registry()

    def shutdown(self) -> None:
        """Stop listening, let requests in flight finish (serve() did), save the registry."""
        if self._listener is not None:
            self._close_listener()
        try:
            self.state.registry.save()
        except OSError as exc:
            log.error("could not save sessions to %s: %s", self.state.registry.path, exc)
        signal.set_wakeup_fd(-1)
        if self._workers is not None:
            self._workers.shutdown(wait=True)
        log.info("slurmjwtd stopped: granted=%d refused=%d", self.state.counters.granted,
                 self.state.counters.refused)

    def _handle_signals(self) -> None:
        try:
            while self._wakeup_r.recv(64):
                pass
        except BlockingIOError:
            pass
        signals, self._signals = self._signals, []
        if signal.SIGHUP in signals and not self._stopping:
            self.reload()
        if any(s in (signal.SIGTERM, signal.SIGINT) for s in signals) and not self._stopping:
            log.info("stopping: finishing %d request(s) in flight", len(self._pending))
            self._notifier.send("STOPPING=1")
            self._stopping = True
            self._close_listener()

    def reload(self) -> None:
        """Re-read the configuration and the key; on any error keep both old ones.
        Requests in flight finish, sessions stay, new tokens use the new key."""
        if self._load is None:
            log.warning("reload asked for, but this daemon has nothing to reload from")
            return
        self._notifier.send("RELOADING=1")
        old = self.state.config
        try:
            config, signer = self._load()
        except Exception as exc:  # ConfigError, KeyFileError, or anything a loader raises
            log.error("reload refused, still serving with the old configuration and key: %s", exc)
        else:
            fixed = [k for k in ("socket", "session_file") if getattr(config, k) != getattr(old, k)]
            if fixed:
                log.warning("%s changed: that takes a restart; keeping %s until then",
                            " and ".join(fixed), ", ".join(getattr(old, k) for k in fixed))
                config = dataclasses.replace(config, socket=old.socket, session_file=old.session_file)
            if (config.rate_limit, config.rate_window) != (old.rate_limit, old.rate_window):
                self.state.limiter = RateLimiter(config.rate_limit, config.rate_window)
            self.state.config, self.state.signer = config, signer
            log.info("reloaded: signer=%s lifetime=%d max_lifetime=%d", signer.name,
                     config.lifetime, config.max_lifetime)
        self._notifier.send("READY=1", "STATUS=" + self._status_text())

    def _close_listener(self) -> None:
        assert self._listener is not None
        if "resume_accept" not in self._timers:
            self._selector.unregister(self._listener)
        self._timers.pop("resume_accept", None)
        self._listener.close()
        self._listener = None
        if self._bound_path is not None:
            try:
                os.unlink(self._bound_path)
            except FileNotFoundError:
                pass

    # -- timers -----------------------------------------------------------------------------
    def _next_timeout(self, due: float) -> float:
        """Until the next timer (DUE) or client deadline, whichever comes first."""
        if self._pending:
            due = min(due, next(iter(self._pending.values())).deadline)
        return max(0.0, due - time.monotonic())

    def _run_timers(self, now: float) -> None:
        for name, due in list(self._timers.items()):
            if due <= now:
                getattr(self, "_on_" + name)(now)

    def _on_prune(self, now: float) -> None:
        self._timers["prune"] = now + _PRUNE_INTERVAL
        self.state.registry.prune()
        self.state.limiter.forget_idle(now)

    def _on_resume_accept(self, now: float) -> None:
        del self._timers["resume_accept"]
        if self._listener is not None:
            self._selector.register(self._listener, selectors.EVENT_READ, None)

    def _on_status(self, now: float) -> None:
        self._timers["status"] = now + _STATUS_INTERVAL
        text = self._status_text()
        if text != self._status_shown:
            self._status_shown = text
            self._notifier.send("STATUS=" + text)

    def _on_watchdog(self, now: float) -> None:
        assert self._notifier.watchdog_interval
        self._timers["watchdog"] = now + self._notifier.watchdog_interval
        self._notifier.send("WATCHDOG=1")

    def _status_text(self) -> str:
        counters = self.state.counters
        return (f"{counters.granted} granted, {counters.refused} refused, "
                f"{len(self.state.registry)} open sessions")

    def _keep_registry(self) -> None:
        """Save once per turn of the loop, whatever changed in it."""
        registry = self.state.registry
        try:
            registry.save()
        except OSError as exc:
            log.error("could not save sessions to %s: %s", registry.path, exc.strerror)

    # -- connections ------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(_ACCEPT_BURST):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: serve those we have, retry shortly
                log.error("accept: %s; pausing new connections for %g s", exc.strerror,
                          _ACCEPT_PAUSE)
                self._selector.unregister(self._listener)
                self._timers["resume_accept"] = time.monotonic() + _ACCEPT_PAUSE
                return
            caller = peer_caller(sock)
            if not caller.is_root and self._per_uid[caller.uid] >= self.state.config.max_clients_per_uid:
                self._refuse_quietly(sock, caller, Code.BUSY, "too many connections from this uid")
                continue
            conn = Connection(sock, caller, time.monotonic() + self.state.config.client_timeout)
            self._per_uid[caller.uid] += 1
            self._read(conn, fresh=True)

    def _read(self, conn: Connection, fresh: bool = False) -> None:
        try:
            data = conn.sock.recv(MAX_REQUEST + 1 - len(conn.buf), _NOWAIT)
        except BlockingIOError:
            if fresh:  # the request has not arrived yet: wait for it
                self._pending[conn.sock.fileno()] = conn
                self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            return
        except OSError:
            data = b""
        if not data:  # hung up before a whole request: nothing to answer
            self._finish(conn, None)
            return
        conn.buf += data
        end = conn.buf.find(b"\n")
        if end >= 0:
            reply = self._answer(conn.caller, conn.buf, end)
            if isinstance(reply, Pending):  # no client deadline, no reading, while signing
                if self._pending.pop(conn.sock.fileno(), None) is not None:
                    self._selector.unregister(conn.sock)
                self._signing[conn] = reply
                reply.future.add_done_callback(self._wake_signed)
            else:
                self._finish(conn, reply)
        elif len(conn.buf) > MAX_REQUEST - 1:
            self._finish(conn, self._refusal(conn.caller, Code.TOO_LARGE,
                                             f"request longer than {MAX_REQUEST} bytes"))
        elif fresh:
            self._pending[conn.sock.fileno()] = conn
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _expire(self, now: float) -> None:
        while self._pending:
            conn = next(iter(self._pending.values()))
            if conn.deadline > now:
                return
            self._finish(conn, self._refusal(conn.caller, Code.TIMEOUT,
                                             "no complete request within the deadline"))

    def _finish(self, conn: Connection, reply: bytes | None) -> None:
        if self._pending.pop(conn.sock.fileno(), None) is not None:
            self._selector.unregister(conn.sock)
        self._per_uid[conn.caller.uid] -= 1
        if self._per_uid[conn.caller.uid] <= 0:
            del self._per_uid[conn.caller.uid]
        if reply is not None:
            try:
                conn.sock.send(reply, _NOWAIT)  # <= MAX_RESPONSE into an empty socket buffer
            except OSError:
                pass
        conn.sock.close()

    def _refuse_quietly(self, sock: socket.socket, caller: Caller, code: Code, message: str) -> None:
        reply = self._refusal(caller, code, message)
        try:
            sock.send(reply, _NOWAIT)
        except OSError:
            pass
        sock.close()

    def _refusal(self, caller: Caller, code: Code, message: str) -> bytes:
        """Audit and encode a refusal that happened before any operation was read."""
        self._refuse("-", caller, code, code.value, message)
        return encode_error(code, message)

    # -- requests ---------------------------------------------------------------------------
    def _answer(self, caller: Caller, buf: bytes, end: int) -> bytes | Pending:
        """Turn one request into one answer line; every refusal becomes its code here."""
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
        target = lookup_account(caller.uid if name is None else name, groups)
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
        connection then waits off the loop and `_complete_signing` answers it."""
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

    def _wake_signed(self, future: Future) -> None:  # runs in the worker thread
        try:
            self._signed_w.send(b"\0")
        except OSError:
            pass  # the pair is full: the loop is already due to look

    def _complete_signing(self) -> None:
        try:
            while self._signed_r.recv(256):
                pass
        except BlockingIOError:
            pass
        for conn, pending in [(c, p) for c, p in self._signing.items() if p.future.done()]:
            del self._signing[conn]
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
            self._finish(conn, reply)

    def _op_mint(self, caller: Caller, request: Request) -> Fields | Pending:
        target, decision = self._mint_for("mint", caller, request)

        def answer(token: Token) -> Fields:
            self._grant("mint", caller, user=target.name, uid=target.uid,
                        slurm_user=token.user if token.user != target.name else None,
                        reason=decision.reason, rule=decision.rule, lifetime=decision.lifetime,
                        exp=token.exp, jti=token.jti)
            return {"token": token.jwt, "user": target.name, "slurm_user": token.user,
                    "exp": token.exp, "jti": token.jti, "lifetime": decision.lifetime}
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
            self._grant("open", caller, user=target.name, uid=target.uid,
                        slurm_user=token.user if token.user != target.name else None,
                        reason=decision.reason, rule=decision.rule, lifetime=decision.lifetime,
                        exp=token.exp, jti=token.jti, session=session.id, **where)
            return {"session": session.id, "token": token.jwt, "user": target.name,
                    "slurm_user": token.user, "exp": token.exp, "jti": token.jti,
                    "lifetime": decision.lifetime, "uid": target.uid, "gid": target.gid}
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
