"""The daemon's life: startup, serve, graceful shutdown on signals.

One thread runs an epoll loop. It accepts, asks the kernel who connected
(SO_PEERCRED), reads one request line under a deadline, decides, answers and
closes. Each decision takes tens of microseconds and never waits on a client,
so a client that hangs or floods costs the others nothing: it is dropped at
its deadline. What a request means, and every refusal, is operations.py's.

It listens on two sockets: the public one (0666) and the root one (0600), where
the logins' OPEN and CLOSE come, with its own backlog, served first in each turn:
users flooding the public socket cannot make a login wait for a place in a queue.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import resource
import selectors
import signal
import socket
import struct
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from . import __version__, fastpath
from .audit import AuditLog
from .config import Config
from .operations import Operations, Pending, warn_unknown_names
from .revocation import RevocationError
from .policy import Caller
from .protocol import MAX_REQUEST, Code, ProtocolError
from .service import Notifier
from .signer import HS256Signer, Signer
from .state import LATENCY_BUCKETS, DaemonState

log = logging.getLogger("slurmjwtd")
_PEERCRED = struct.Struct("3i")
_ACCEPT_BURST = 64  # root's connections taken per wakeup before serving other ready sockets
# users' connections answered per turn of the loop (accepted, or passed on by the fast path):
# root's socket, served first in each turn, is looked at again after at most these. At 64,
# a login waited behind up to 64 refusals of a user's flood (bench.py `flood`: 4 took the
# login's p50 and p99 from 2.2 and 6 ms to 0.9-1.1 and 2.1; quiet, 0.7 and 1.5)
_USER_BURST = 4
_ACCEPT_PAUSE = 0.1  # seconds without accepting after running out of file descriptors
_PRUNE_INTERVAL = 60.0  # seconds between sweeps for sessions whose leader has gone
_STATUS_INTERVAL = 1.0  # seconds between STATUS= updates to systemd, when the counters moved
_NOWAIT = socket.MSG_DONTWAIT  # per call, which spares a fcntl per connection
_AUDIT_FLUSH = 0.5  # seconds between writing the counts of refusal summaries that are due
# Renewals are taken once a second, each that falls due within the next second: one wakeup
# renews them all. A renewal alone, after the daemon sat idle, costs about three times one
# that follows another (cold caches): bench.py's `renewals`.
_RENEW_CHECK = 1.0
# The revocation file, which other login nodes may write, is looked at once a second (an open
# and an fstat, about 8 us; read only when it changed): a revocation on any node is in force
# on this one within a second or so. Not per request: on a share, that would put the file
# server on every login's path for no fresher answer than the timer's.
_REVOCATIONS_CHECK = 1.0


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    caller: Caller
    deadline: float
    accepted: float = 0.0  # time.monotonic() at accept: the answer's latency counts from it
    buf: bytes = b""
    root_socket: bool = False  # came through the root socket
    refused: bool = False  # answered `busy` at once; kept only until the client has written


def peer_caller(sock: socket.socket) -> Caller:
    pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                     _PEERCRED.size))
    return Caller(uid=uid, gid=gid, pid=pid)


def bind_socket(path: str, mode: int = 0o666) -> socket.socket:
    """Bind PATH (MODE), refusing to steal it from a daemon that still answers."""
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
    umask = os.umask(0o177)  # no moment in which the root socket is open to others
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise StartupError(f"socket {path}: cannot make it ({exc.strerror}); its directory must "
                           f"be writable by the daemon's user") from None
    finally:
        os.umask(umask)
    os.chmod(path, mode)
    sock.listen(512)
    return sock


class Connections:
    """The clients the loop holds: per-uid counts (the cap on open connections, and the `busy`
    ones kept until they have written), those waiting for their request in deadline order, and
    those waiting for a blocking signer."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        # deadlines are now + a constant, so insertion order is deadline order
        self.waiting: collections.OrderedDict[int, Connection] = collections.OrderedDict()
        self.signing: dict[Connection, Pending] = {}
        self._per_uid: collections.Counter[int] = collections.Counter()
        self._refused_per_uid: collections.Counter[int] = collections.Counter()  # `busy`, waiting

    def in_flight(self) -> bool:
        return bool(self.waiting or self.signing)

    def full(self, uid: int, limit: int, refused: bool = False) -> bool:
        """UID has LIMIT connections open (REFUSED: `busy` ones waiting for their request)."""
        return (self._refused_per_uid if refused else self._per_uid)[uid] >= limit

    def add(self, conn: Connection) -> None:
        (self._refused_per_uid if conn.refused else self._per_uid)[conn.caller.uid] += 1

    def wait(self, conn: Connection, handler: Callable[[], None]) -> None:
        """Until its deadline, call HANDLER when CONN can be read."""
        self.waiting[conn.sock.fileno()] = conn
        self._selector.register(conn.sock, selectors.EVENT_READ, handler)

    def sign(self, conn: Connection, pending: Pending) -> None:
        """No deadline, no reading, while its token is made."""
        self._stop_waiting(conn)
        self.signing[conn] = pending

    def signed(self) -> list[tuple[Connection, Pending]]:
        """The connections whose signer has finished, no longer signing."""
        done = [(c, p) for c, p in self.signing.items() if p.future.done()]
        for conn, _ in done:
            del self.signing[conn]
        return done

    def first_deadline(self) -> float | None:
        return next(iter(self.waiting.values())).deadline if self.waiting else None

    def expired(self, now: float) -> Connection | None:
        """The waiting connection whose deadline has passed first, if any."""
        if self.waiting:
            conn = next(iter(self.waiting.values()))
            if conn.deadline <= now:
                return conn
        return None

    def release(self, conn: Connection) -> None:
        """Forget CONN (its socket is the caller's to answer on and close)."""
        self._stop_waiting(conn)
        counts = self._refused_per_uid if conn.refused else self._per_uid
        counts[conn.caller.uid] -= 1
        if counts[conn.caller.uid] <= 0:
            del counts[conn.caller.uid]

    def _stop_waiting(self, conn: Connection) -> None:
        if self.waiting.pop(conn.sock.fileno(), None) is not None:
            self._selector.unregister(conn.sock)


def drain(sock: socket.socket) -> None:
    """Empty a non-blocking wakeup socket: only that it woke the loop matters."""
    try:
        while sock.recv(256):
            pass
    except BlockingIOError:
        pass


Loader = Callable[[], tuple[Config, Signer]]


class Server:
    """Startup, serve until SIGTERM, shutdown; SIGHUP reloads the configuration and key."""

    def __init__(self, state: DaemonState, load: Loader | None = None,
                 notifier: Notifier | None = None) -> None:
        self.state = state
        self._load = load
        self._notifier = notifier or Notifier()
        self._selector = selectors.DefaultSelector()
        self._listeners: dict[str, socket.socket] = {}  # "public", "root"
        self._paused: set[str] = set()  # listeners not accepting for _ACCEPT_PAUSE (EMFILE)
        self._bound_paths: list[str] = []
        self._accepts = {name: functools.partial(self._accept, name) for name in ("public", "root")}
        self._conns = Connections(self._selector)
        self._signals: list[int] = []
        self._stopping = False
        # timer handler: when it is due next; each handler sets its next time or removes itself
        self._timers: dict[Callable[[float], None], float] = {
            self._on_prune: time.monotonic() + _PRUNE_INTERVAL}
        if self._notifier.enabled:
            self._timers[self._on_status] = time.monotonic() + _STATUS_INTERVAL
        if self._notifier.watchdog_interval:
            self._timers[self._on_watchdog] = time.monotonic()
        self._timers[self._on_audit] = time.monotonic() + _AUDIT_FLUSH
        self._timers[self._on_revocations] = time.monotonic() + _REVOCATIONS_CHECK
        self._timers[self._on_renew] = time.monotonic()
        self._status_shown = ""
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._signed_r, self._signed_w = socket.socketpair()  # worker threads: "a token is ready"
        self.ops = Operations(state)
        self.ops.wake = self._wake_signed
        self._fast: fastpath.FastPath | None = None

    # -- life -------------------------------------------------------------------------------
    def startup(self, listeners: tuple[socket.socket, socket.socket] | None = None) -> None:
        """Load the registry, listen (on LISTENERS, public and root, if systemd passed them),
        then say READY=1."""
        config = self.state.config
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:  # each waiting client holds a descriptor: allow as many as we may
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        try:
            os.makedirs(os.path.dirname(config.session_file), mode=0o755, exist_ok=True)
            live = self.state.registry.load()
            self.state.revocations.load()
            self.state.files.open()
        except (OSError, ValueError, RevocationError) as exc:
            raise StartupError(str(exc)) from None
        self.ops.resume(time.time())
        if listeners is None:
            public = bind_socket(config.socket)
            try:
                listeners = (public, bind_socket(config.root_socket, 0o600))
            except BaseException:
                public.close()
                os.unlink(config.socket)
                raise
            self._bound_paths += [config.socket, config.root_socket]
        for name, listener in zip(("public", "root"), listeners):
            listener.setblocking(False)
            self._listeners[name] = listener
            self._selector.register(listener, selectors.EVENT_READ, self._accepts[name])
        if config.fast_path:
            self._start_fast_path()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, self._handle_signals)
        self._signed_r.setblocking(False)
        self._signed_w.setblocking(False)
        self._selector.register(self._signed_r, selectors.EVENT_READ, self._complete_signing)
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        log.info("slurmjwtd %s ready: socket=%s root_socket=%s signer=%s sessions=%d fast_path=%s",
                 __version__, config.socket, config.root_socket, self.state.signer.name, live,
                 "on" if self._fast is not None and self._fast.signing else "off")
        warn_unknown_names(config)
        self._notifier.send("READY=1", "STATUS=" + self._status_text())

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def serve(self) -> None:
        root = self._accepts["root"]
        while not (self._stopping and not self._conns.in_flight()):
            due = min(self._timers.values())
            ready = self._selector.select(self._next_timeout(due))
            if len(ready) > 1:  # the root socket first: logins never wait behind users
                ready.sort(key=lambda event: event[0].data is not root)
            for key, _ in ready:
                key.data()  # each registered object's handler: accept, read, signals, signed
            now = time.monotonic()
            if self._conns.waiting:
                self._expire(now)
            if now >= due:
                self._run_timers(now)
            if self.state.registry.dirty:
                self.ops.forget_emptied()
                self._keep_registry()

    def shutdown(self) -> None:
        """Stop listening, let requests in flight finish (serve() did), save the registry."""
        if self._listeners:
            self._close_listeners()
        try:
            self.state.registry.save()
        except OSError as exc:
            log.error("could not save sessions to %s: %s", self.state.registry.path, exc)
        signal.set_wakeup_fd(-1)
        self.ops.shutdown()
        self.state.files.close()
        self.state.audit.flush(time.monotonic(), everything=True)
        counters = self.state.counters
        log.info("slurmjwtd stopped: granted=%d refused=%d fast_path_granted=%d "
                 "fast_path_passed_on=%d", counters.granted, counters.refused,
                 counters.fast_granted, counters.fast_passed)

    def _handle_signals(self) -> None:
        drain(self._wakeup_r)
        signals, self._signals = self._signals, []
        if signal.SIGHUP in signals and not self._stopping:
            self.reload()
        if any(s in (signal.SIGTERM, signal.SIGINT) for s in signals) and not self._stopping:
            log.info("stopping: finishing %d request(s) in flight", len(self._conns.waiting))
            self._notifier.send("STOPPING=1")
            self._stopping = True
            self._close_listeners()

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
        except Exception as exc:  # ConfigError, FileCheckError, or anything a loader raises
            log.error("reload refused, still serving with the old configuration and key: %s", exc)
        else:
            fixed = self.state.apply(config, signer)
            if fixed:
                log.warning("%s changed: that takes a restart; keeping %s until then",
                            " and ".join(fixed), ", ".join(getattr(old, k) for k in fixed))
            if self._fast is not None:  # policy, key or limits may have changed: start afresh
                self.ops.reclaim_all()
                self._fast.set_key(_fast_key(signer))
            log.info("reloaded: signer=%s lifetime=%d max_lifetime=%d", signer.name,
                     config.lifetime, config.max_lifetime)
            self.ops.replan(time.time())
            warn_unknown_names(config)
        self._notifier.send("READY=1", "STATUS=" + self._status_text())

    def _close_listeners(self) -> None:
        if self._fast is not None and self._fast.running:
            self.ops.count_fast()
            self._fast.stop()  # its threads have finished with the public socket
            while self._forwarded():  # what they passed on last is served before the loop ends
                pass
            self._selector.unregister(self._fast.channel)  # at its end: always readable now
        for name, listener in self._listeners.items():
            if name not in self._paused and not (name == "public" and self._fast is not None):
                self._selector.unregister(listener)
            listener.close()
        self._listeners.clear()
        self._paused.clear()
        self._timers.pop(self._on_resume_accept, None)
        for path in self._bound_paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._bound_paths.clear()

    # -- timers -----------------------------------------------------------------------------
    def _next_timeout(self, due: float) -> float:
        """Until the next timer (DUE) or client deadline, whichever comes first."""
        deadline = self._conns.first_deadline()
        if deadline is not None:
            due = min(due, deadline)
        return max(0.0, due - time.monotonic())

    def _run_timers(self, now: float) -> None:
        for handler, due in list(self._timers.items()):
            if due <= now:
                handler(now)

    def _on_prune(self, now: float) -> None:
        self._timers[self._on_prune] = now + _PRUNE_INTERVAL
        self.state.registry.prune()
        self.ops.reclaim_all(expired_only=True)  # leases back before idle buckets are forgotten
        self.state.limiter.forget_idle(now)

    def _on_renew(self, now: float) -> None:
        """Renew the token files due within the next _RENEW_CHECK seconds; look again then,
        or at once if a batch left some due."""
        more = self.ops.renew_due(time.time(), ahead=_RENEW_CHECK)
        self._timers[self._on_renew] = now + (0.0 if more else _RENEW_CHECK)

    def _on_revocations(self, now: float) -> None:
        """Put in force what another node (or root by hand) changed in the revocation file."""
        self._timers[self._on_revocations] = now + _REVOCATIONS_CHECK
        change = self.state.revocations.refresh()
        if change:
            self.ops.revocations_changed(change)

    def _on_resume_accept(self, now: float) -> None:
        del self._timers[self._on_resume_accept]
        for name in self._paused:
            self._selector.register(self._listeners[name], selectors.EVENT_READ, self._accepts[name])
        self._paused.clear()

    def _on_audit(self, now: float) -> None:
        self._timers[self._on_audit] = now + _AUDIT_FLUSH
        self.state.audit.flush(now)

    def _on_status(self, now: float) -> None:
        self._timers[self._on_status] = now + _STATUS_INTERVAL
        self.ops.count_fast()
        text = self._status_text()
        if text != self._status_shown:
            self._status_shown = text
            self._notifier.send("STATUS=" + text)

    def _on_watchdog(self, now: float) -> None:
        assert self._notifier.watchdog_interval
        self._timers[self._on_watchdog] = now + self._notifier.watchdog_interval
        self._notifier.send("WATCHDOG=1")

    def _status_text(self) -> str:
        counters = self.state.counters
        trouble = ("; revocation file unreadable: last good list kept"
                   if self.state.revocations.problem else "")
        return (f"{counters.granted} granted, {counters.refused} refused, "
                f"{counters.renewed} renewed, {len(self.state.registry)} open sessions{trouble}")

    def _keep_registry(self) -> None:
        """Save once per turn of the loop, whatever changed in it."""
        registry = self.state.registry
        try:
            registry.save()
        except OSError as exc:
            log.error("could not save sessions to %s: %s", registry.path, exc.strerror)

    # -- the fast path ----------------------------------------------------------------------
    def _start_fast_path(self) -> None:
        """Hand the public socket to the fast path's threads; what they pass on comes back
        through its channel. If it cannot run, say so once and serve everything here."""
        audit = self.state.audit_log
        try:
            fast = fastpath.FastPath(fastpath.load(), self._listeners["public"],
                                     audit.fd if isinstance(audit, AuditLog) else -1,
                                     LATENCY_BUCKETS)
        except fastpath.FastPathError as exc:
            log.warning("fast path off, serving every request in Python: %s", exc)
            return
        fast.set_key(_fast_key(self.state.signer))
        self._selector.unregister(self._listeners["public"])
        self._selector.register(fast.channel, selectors.EVENT_READ, self._forwarded)
        self._fast = self.ops.fast = fast

    def _forwarded(self) -> int:
        """The connections the fast path passed on, each with what it read of the request; how
        many records there were (a full batch: there may be more)."""
        assert self._fast is not None
        records = self._fast.receive(_USER_BURST)
        for fd, uid, gid, pid, ahead, accepted, data in records:
            if fd < 0:  # its accept failed (EMFILE and friends): it waits, then tries again
                log.error("accept: %s; pausing new connections for %g s", os.strerror(uid),
                          _ACCEPT_PAUSE)
                continue
            self._admit(socket.socket(fileno=fd), Caller(uid=uid, gid=gid, pid=pid), accepted,
                        False, data, ahead)
        return len(records)

    # -- connections ------------------------------------------------------------------------
    def _accept(self, name: str) -> None:
        listener = self._listeners[name]
        root_socket = name == "root"
        for _ in range(_ACCEPT_BURST if root_socket else _USER_BURST):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: serve those we have, retry shortly
                log.error("accept: %s; pausing new connections for %g s", exc.strerror,
                          _ACCEPT_PAUSE)
                self._selector.unregister(listener)
                self._paused.add(name)
                self._timers[self._on_resume_accept] = time.monotonic() + _ACCEPT_PAUSE
                return
            self._admit(sock, peer_caller(sock), time.monotonic(), root_socket)

    def _admit(self, sock: socket.socket, caller: Caller, accepted: float, root_socket: bool,
               data: bytes = b"", ahead: int = 0) -> None:
        """A new connection (DATA: what the fast path already read of its request; AHEAD: the
        uid's connections still on their way from the fast path, counted against its cap)."""
        deadline = accepted + self.state.config.client_timeout
        if not caller.is_root and self._conns.full(caller.uid,
                                                   self.state.config.max_clients_per_uid - ahead):
            self._refuse_busy(sock, caller, deadline)
            return
        conn = Connection(sock, caller, deadline, accepted, buf=data, root_socket=root_socket)
        self._conns.add(conn)
        if data:
            self._frame(conn, fresh=True)
        else:
            self._read(conn, fresh=True)

    def _read(self, conn: Connection, fresh: bool = False) -> None:
        try:
            data = conn.sock.recv(MAX_REQUEST + 1 - len(conn.buf), _NOWAIT)
        except BlockingIOError:
            if fresh:  # the request has not arrived yet: wait for it
                self._conns.wait(conn, functools.partial(self._read, conn))
            return
        except OSError:
            data = b""
        if not data:  # hung up before a whole request: nothing to answer
            self._finish(conn, None)
            return
        conn.buf += data
        self._frame(conn, fresh)

    def _frame(self, conn: Connection, fresh: bool) -> None:
        """Answer the request in CONN's buffer if it is whole; else wait for the rest."""
        end = conn.buf.find(b"\n", 0, MAX_REQUEST)  # at most MAX_REQUEST bytes, newline included
        if end >= 0:
            if end + 1 != len(conn.buf):  # framing: one request per connection
                reply: bytes | Pending = self.ops.refuse(conn.caller, ProtocolError(
                    Code.BAD_REQUEST, "one request per connection"))
            else:
                reply = self.ops.answer(conn.caller, conn.buf[:end], conn.root_socket)
            if isinstance(reply, Pending):
                self._conns.sign(conn, reply)
                reply.future.add_done_callback(self._wake_signed)
            else:
                self._finish(conn, reply)
        elif len(conn.buf) >= MAX_REQUEST:
            self._finish(conn, self.ops.refuse(conn.caller, ProtocolError(
                Code.TOO_LARGE, f"request longer than {MAX_REQUEST} bytes")))
        elif fresh:
            self._conns.wait(conn, functools.partial(self._read, conn))

    def _expire(self, now: float) -> None:
        while (conn := self._conns.expired(now)) is not None:
            if conn.refused:
                self._drop_refused(conn)
            else:
                self._finish(conn, self.ops.refuse(conn.caller, ProtocolError(
                    Code.TIMEOUT, "no complete request within the deadline")))

    def _finish(self, conn: Connection, reply: bytes | None) -> None:
        self._conns.release(conn)
        if reply is not None:
            try:
                conn.sock.send(reply, _NOWAIT)  # <= MAX_RESPONSE into an empty socket buffer
            except OSError:
                pass
            self.state.counters.answered(time.monotonic() - conn.accepted)
        conn.sock.close()

    def _refuse_busy(self, sock: socket.socket, caller: Caller, deadline: float) -> None:
        """Answer `busy` now, before reading, but close only once the client has written its
        request (or hung up, or its deadline passed): closing first would fail its write
        (EPIPE) before it reads the answer. At most max_clients_per_uid such connections
        per uid wait; beyond them, close at once (clients read after a failed write)."""
        try:
            sock.send(self.ops.refuse(caller, ProtocolError(
                Code.BUSY, "too many connections from this uid")), _NOWAIT)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if self._conns.full(caller.uid, self.state.config.max_clients_per_uid, refused=True):
            sock.close()
            return
        conn = Connection(sock, caller, deadline, refused=True)
        self._conns.add(conn)
        # its request (or hang-up) is in: it has read, or can read, its `busy`
        self._conns.wait(conn, functools.partial(self._drop_refused, conn))

    def _drop_refused(self, conn: Connection) -> None:
        try:
            conn.sock.recv(MAX_REQUEST + 1, _NOWAIT)  # what it wrote; unread, it would get a reset
        except OSError:
            pass
        self._conns.release(conn)
        conn.sock.close()

    def _wake_signed(self, future: Future) -> None:  # runs in the worker thread
        try:
            self._signed_w.send(b"\0")
        except OSError:
            pass  # the pair is full: the loop is already due to look

    def _complete_signing(self) -> None:
        drain(self._signed_r)
        for conn, pending in self._conns.signed():
            self._finish(conn, self.ops.complete(pending))
        self.ops.renewals_done()



def _fast_key(signer: Signer) -> bytes | None:
    """The key the fast path signs with: the hs256 signer's; None for the others (rs256,
    scontrol), whose requests are all Python's."""
    return signer.fast_path_key() if isinstance(signer, HS256Signer) else None
