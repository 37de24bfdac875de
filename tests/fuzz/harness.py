"""A mutation fuzzer for the daemon's request path, in-process and without a socket.

It drives `protocol.parse_request` and `Operations.answer` (framed as server.py frames a
connection's bytes) with fake callers: root on the public socket and on the root socket (the
PAM stack; its pid is this process, so the sessions it opens stay live), an ordinary user
(nobody, uid 65534) and a uid NSS does not know. The daemon's state is real: an HS256 signer
with a random key, a session registry kept in memory, the rate limiter, and in turn the default
policy and policies that name users and groups and map names.

Invariants, for every input:
- parse_request returns a Request or raises ProtocolError, nothing else; a Request has a
  well-formed op and keys, values without control characters, and encoding it again parses
  back to the same Request;
- the answer is one line: ASCII, at most MAX_RESPONSE bytes, a single `\\n` at its end, either
  `SJWT/1 OK` with well-formed pairs or `SJWT/1 ERR CODE MESSAGE` with a known code, never
  `internal`; nothing is logged at ERROR (log.exception: a traceback);
- a lifetime is granted only as asked, in ASCII digits;
- a refusal writes exactly one audit line, an OK MINT, OPEN or CLOSE one grant line, STATUS,
  METRICS and an OK EXPLAIN none; every audit line is one line of known fields;
- the refusals counted by code (METRICS) add up to the refusals counted.

Seeds come from tests/fuzz/corpus (one request per file, raw bytes). An input that yields an
answer not seen before (caller, operation, code, first words of the message) joins the
corpus for the rest of the run. tests/test_fuzz.py runs it briefly with a fixed seed;
`make fuzz` at length:

    python tests/fuzz/harness.py [--seconds 300] [--seed N] [--save DIR]

Exit status 0 if no invariant broke, 1 otherwise (the input is written to DIR or the
current directory as crash-<sha1>).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import logging
import os
import pwd
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

if __name__ == "__main__":  # fuzz the checkout this file is in, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from slurmjwtd.audit import format_audit  # noqa: E402
from slurmjwtd.config import Config  # noqa: E402
from slurmjwtd.operations import Operations  # noqa: E402
from slurmjwtd.policy import Caller  # noqa: E402
from slurmjwtd.protocol import (MAX_REQUEST, MAX_RESPONSE, Code, ProtocolError,  # noqa: E402
                                Request, encode_request, parse_request, parse_response)
from slurmjwtd.sessions import SessionRegistry  # noqa: E402
from slurmjwtd.signer import HS256Signer  # noqa: E402
from slurmjwtd.state import DaemonState  # noqa: E402

CORPUS = Path(__file__).with_name("corpus")
CODES = frozenset(c.value for c in Code) - {Code.INTERNAL.value}
_OP = re.compile(r"[A-Z]{1,16}\Z")
_KEY = re.compile(r"[a-z][a-z_]{0,31}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]+\Z")
_AUDITED_GRANTS = {"MINT", "OPEN", "CLOSE"}
_OPS = _AUDITED_GRANTS | {"STATUS", "METRICS", "EXPLAIN"}
STATE_EVERY = 2000  # inputs per fresh daemon state: bounds the registry and the rate limiter

# words the mutator splices in: the grammar's pieces and the values that found bugs
DICTIONARY = [
    b"SJWT/1 ", b"SJWT/2 ", b"SJWT/1", b"MINT", b"OPEN", b"CLOSE", b"STATUS", b"EXPLAIN",
    b"METRICS",
    b"user=", b"lifetime=", b"session=", b"tty=", b"rhost=", b"service=", b"token=",
    b" user=nobody", b" user=root", b" user=daemon", b" user=no-such-user", b" user=nobody@EX.ORG",
    b" lifetime=1", b" lifetime=3600", b" lifetime=999999999", b" lifetime=0",
    b"%C2%B2", b"%D9%A3%D9%A6%D9%A0%D9%A0", b"%EF%BC%91", b"%E0%A5%A7", b"%F0%9D%9F%8F",
    b"%00", b"%0A", b"%0D", b"%20", b"%25", b"%7F", b"%C2%85", b"%E2%80%A8", b"%E2%80%AE",
    b"%FF", b"%C0%AE", b"%ED%A0%80", b"%", b"%4", b"%%", b"%G0", b"=", b"==", b" ", b"  ",
    b"\n", b"\r\n", b"\x00", b"\x7f", b"\x80", b"\xff", b"\t", b"+", b"-1", b"0x10", b"1_000",
    b"1e3", b"09", b"9999999999", b"A" * 40, b"a" * 33, b"_",
]
INTERESTING_BYTES = b"\x00\n\r %=+-_.0129AZaz\x7f\x80\xc2\xff"


@dataclass
class Failure(Exception):
    """An invariant broke for DATA."""

    data: bytes
    why: str

    def __str__(self) -> str:
        return f"{self.why}\n  input: {self.data!r}"


class Audit:
    """An audit sink that checks each line: known fields only (format_audit), one line. As
    state.audit it records every decision audited and passes it on to FORWARD (the daemon's
    own, which may summarise a user's repeated refusals before they reach the log)."""

    def __init__(self, forward: Callable[..., None] | None = None) -> None:
        self.lines: list[dict[str, object]] = []
        self.forward = forward

    def __call__(self, **fields: object) -> None:
        line = format_audit(fields)  # raises on a field that is not an audit field
        if "\n" in line or "\r" in line:
            raise AssertionError(f"audit line is not one line: {line!r}")
        self.lines.append(fields)
        if self.forward is not None:
            self.forward(**fields)


class Errors(logging.Handler):
    """Collects what the daemon logs at ERROR: log.exception is a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def unknown_uid() -> int:
    taken = {p.pw_uid for p in pwd.getpwall()}
    return next(uid for uid in range(3_999_000, 4_000_000) if uid not in taken)


SESSIONS = "/nonexistent/sessions.json"  # never written: the registry stays in memory
CONFIGS = [  # one per daemon state, in turn
    Config(session_file=SESSIONS),
    Config(session_file=SESSIONS, deny_users=("daemon",), deny_groups=("sjt-fuzz-no-such-group",),
           group_lifetime={"nogroup": 900}, group_max_lifetime={"nogroup": 7200},
           strip_realm=True, rate_limit=3, rate_window=60),
    Config(session_file=SESSIONS, deny_users=("nobody-slurm",), user_map={"nobody": "nobody-slurm"},
           allow_groups=("nogroup",)),
]


class Target:
    """The request path with a fresh daemon state every STATE_EVERY inputs."""

    def __init__(self) -> None:
        me = os.getpid()
        nobody = pwd.getpwnam("nobody")
        self.callers = [Caller(0, 0, me), Caller(nobody.pw_uid, nobody.pw_gid, me),
                        Caller(unknown_uid(), 4_000_000, me)]
        self.via: list[dict[str, bool]] = [{}, {}, {}]  # the socket each came through
        if "root_socket" in inspect.signature(Operations.answer).parameters:
            self.callers.append(Caller(0, 0, me))  # root, through the root-only socket
            self.via.append({"root_socket": True})
        self.errors = Errors()
        self._logger = logging.getLogger("slurmjwtd")
        self._propagate = self._logger.propagate
        self._logger.addHandler(self.errors)
        self._logger.propagate = False  # the handler sees them; the terminal need not
        self.files = tempfile.mkdtemp(prefix="sjt-fuzz-")  # token files and revocations
        self.sessions: list[bytes] = []  # ids of sessions opened: CLOSE can name them
        self.found: list[bytes] = []  # inputs the corpus should have: CLOSE of those sessions
        self.runs = 0
        self._fresh()

    def close(self) -> None:
        self._logger.removeHandler(self.errors)
        self._logger.propagate = self._propagate
        shutil.rmtree(self.files, ignore_errors=True)

    def _fresh(self) -> None:
        config = CONFIGS[(self.runs // STATE_EVERY) % len(CONFIGS)]
        if hasattr(getattr(self, "state", None), "files"):
            self.state.files.close()
        if "token_dir" in {f.name for f in dataclasses.fields(Config)}:  # each state its own
            shutil.rmtree(self.files, ignore_errors=True)
            os.mkdir(self.files, 0o755)
            config = dataclasses.replace(config, token_dir=f"{self.files}/tokens",
                                         revocation_file=f"{self.files}/revoked.json")
        sink = "audit_log" if "audit_log" in {f.name for f in dataclasses.fields(DaemonState)} else "audit"
        self.state = DaemonState(config, HS256Signer(os.urandom(32)),
                                 SessionRegistry(config.session_file), **{sink: Audit()})
        if hasattr(self.state, "files"):
            self.state.files.open()
        self.audit = self.state.audit = Audit(forward=self.state.audit)
        self.ops = Operations(self.state)
        self.sessions.clear()

    def run(self, data: bytes, caller_index: int) -> tuple:
        """Feed DATA as one connection's bytes; check every invariant; return the answer's
        signature (for the corpus) or raise Failure."""
        self.runs += 1
        if self.runs % STATE_EVERY == 0:
            self._fresh()
        try:
            check_parse(data)
            return self._answer(data, caller_index)
        except Failure:
            raise
        except Exception as exc:  # an invariant's assertion, or anything the code raised
            raise Failure(data, f"{type(exc).__name__}: {exc}") from exc

    def _answer(self, data: bytes, who: int) -> tuple:
        caller = self.callers[who]
        buf = data[:MAX_REQUEST + 1]  # what server.py reads before it gives up on a line
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) < MAX_REQUEST:
                return (who, "waits")  # the client would hang up or time out
            audited = len(self.audit.lines)
            reply = self.ops.refuse(caller, ProtocolError(Code.TOO_LARGE,
                                                          f"request longer than {MAX_REQUEST}"))
            op = "-"
        else:
            audited = len(self.audit.lines)
            del self.errors.records[:]
            if end + 1 != len(buf):  # the server's framing: one request per connection
                reply = self.ops.refuse(caller, ProtocolError(Code.BAD_REQUEST,
                                                              "one request per connection"))
            else:
                reply = self.ops.answer(caller, buf[:end], **self.via[who])
            if self.errors.records:
                raise AssertionError("logged at ERROR: " + self.errors.records[0].getMessage())
            words = buf[:end].split(b" ")
            op = words[1].decode("ascii", "replace") if len(words) > 1 else "-"
            op = op if op in _OPS else "other"
        if not isinstance(reply, bytes):
            raise AssertionError(f"answer is {type(reply).__name__}, not bytes")
        counters = self.ops.state.counters
        if sum(counters.refusals.values()) != counters.refused:
            raise AssertionError(f"refusals by code {counters.refusals} do not add up to "
                                 f"refused={counters.refused}")
        answer = check_answer(reply)
        new = self.audit.lines[audited:]
        if not answer.ok:
            if [f.get("decision") for f in new] != ["refused"]:
                raise AssertionError(f"refusal {answer.code} wrote audit lines {new}")
        elif [f.get("decision") for f in new] != (["granted"] if op in _AUDITED_GRANTS else []):
            raise AssertionError(f"OK {op} wrote audit lines {new}")
        if answer.ok and op in _OPS:
            asked = parse_request(buf[:end]).args.get("lifetime")
            granted = answer.fields.get("lifetime")
            if asked is not None and not (_DIGITS.match(asked)
                                          and (granted is None or int(granted) == int(asked))):
                raise AssertionError(f"lifetime={asked!r} granted as {answer.fields.get('lifetime')}")
        if answer.ok and op == "OPEN":
            self.sessions.append(b"session=" + answer.fields["session"].encode())
            self.found.append(b"SJWT/1 CLOSE " + self.sessions[-1] + b"\n")
        # what was decided, and by which rule: the corpus keeps one input per kind of answer
        audited_as = new[0] if new else {}
        shape = " ".join(w if w.isalpha() and w.islower() else "*" for w in answer.message.split()[:3])
        return (who, op, answer.code or "OK", audited_as.get("reason"),
                str(audited_as.get("rule", "")).split(":")[0], shape)


def check_parse(data: bytes) -> None:
    """parse_request's own invariants on the line as the server would cut it."""
    line = data.split(b"\n", 1)[0][:MAX_REQUEST]
    try:
        request = parse_request(line)
    except ProtocolError as exc:
        if exc.code.value not in CODES:
            raise AssertionError(f"parse_request refused with {exc.code}") from None
        return
    if not _OP.match(request.op) or not all(_KEY.match(k) for k in request.args):
        raise AssertionError(f"malformed request accepted: {request}")
    if any(_CONTROL.search(v) for v in request.args.values()):
        raise AssertionError(f"a control character got through: {request}")
    try:
        again = encode_request(request.op, dict(request.args))
    except ValueError:
        return  # quoting made it longer than a request may be
    if parse_request(again[:-1]) != Request(request.op, request.args):
        raise AssertionError(f"{request} does not survive encoding: {again!r}")


def check_answer(reply: bytes):
    if len(reply) > MAX_RESPONSE:
        raise AssertionError(f"answer of {len(reply)} bytes")
    if not reply.endswith(b"\n") or reply.count(b"\n") != 1 or b"\r" in reply:
        raise AssertionError(f"answer is not one line: {reply!r}")
    answer = parse_response(reply[:-1])  # ASCII, SJWT/1, OK pairs well-formed
    if not answer.ok:
        if answer.code not in CODES:
            raise AssertionError(f"error code {answer.code!r}: {answer.message}")
        if not answer.message or len(answer.message) > 512 or not answer.message.isprintable():
            raise AssertionError(f"error message {answer.message!r}")
    return answer


# -- the mutator ------------------------------------------------------------------------------

def load_corpus(directory: Path = CORPUS) -> list[bytes]:
    return [p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()]


class Mutator:
    def __init__(self, rng: random.Random, target: Target) -> None:
        self.rng = rng
        self.target = target

    def word(self) -> bytes:
        rng = self.rng
        if self.target.sessions and rng.random() < 0.1:
            return b" " + rng.choice(self.target.sessions)
        return rng.choice(DICTIONARY)

    def mutate(self, data: bytes, corpus: list[bytes]) -> bytes:
        rng = self.rng
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(9)
            at = rng.randint(0, len(out))
            if kind == 0 and out:  # flip a bit
                i = rng.randrange(len(out))
                out[i] ^= 1 << rng.randrange(8)
            elif kind == 1 and out:  # an interesting byte
                out[rng.randrange(len(out))] = rng.choice(INTERESTING_BYTES)
            elif kind == 2:  # a word from the dictionary
                out[at:at] = self.word()
            elif kind == 3 and out:  # delete a span
                del out[at:at + rng.randint(1, 16)]
            elif kind == 4 and out:  # duplicate a span
                span = out[at:at + rng.randint(1, 64)]
                out[at:at] = span * rng.randint(1, 8)
            elif kind == 5:  # splice with another input
                other = rng.choice(corpus)
                out = out[:at] + other[rng.randint(0, len(other)):]
            elif kind == 6:  # replace a value after some "="
                eqs = [i for i, b in enumerate(out) if b == 0x3D]
                if eqs:
                    start = rng.choice(eqs) + 1
                    stop = out.find(b" ", start)
                    stop = len(out) if stop < 0 else stop
                    out[start:stop] = self.word().strip(b" ").rsplit(b"=", 1)[-1] or b"x"
            elif kind == 7:  # many arguments
                out[at:at] = self.word() * rng.randint(2, 200)
            else:  # truncate
                del out[at:]
        if rng.random() < 0.9:  # most inputs end as a request does, once
            cut = out.find(b"\n")
            out = out[:cut] if cut >= 0 and rng.random() < 0.7 else out
            if not out.endswith(b"\n"):
                out += b"\n"
        return bytes(out[:4 * MAX_REQUEST])


@dataclass
class Result:
    inputs: int = 0
    seconds: float = 0.0
    signatures: set = field(default_factory=set)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def fuzz(seed: int, iterations: int | None = None, seconds: float | None = None,
         corpus: list[bytes] | None = None) -> Result:
    """Replay CORPUS with every caller, then mutate until ITERATIONS or SECONDS run out;
    raise Failure at the first broken invariant."""
    rng = random.Random(seed)
    target = Target()
    try:
        return _fuzz(rng, target, iterations, seconds, corpus)
    finally:
        target.close()


def _fuzz(rng: random.Random, target: Target, iterations: int | None, seconds: float | None,
          corpus: list[bytes] | None) -> Result:
    pool = list(corpus if corpus is not None else load_corpus())
    result = Result()
    started = time.monotonic()
    for data in list(pool):
        for who in range(len(target.callers)):
            result.signatures.add(target.run(data, who))
            result.inputs += 1
    mutator = Mutator(rng, target)
    deadline = None if seconds is None else started + seconds
    while True:
        if iterations is not None and result.inputs >= iterations:
            break
        if deadline is not None and result.inputs % 256 == 0 and time.monotonic() >= deadline:
            break
        data = mutator.mutate(rng.choice(pool), pool)
        signature = target.run(data, rng.randrange(len(target.callers)))
        result.inputs += 1
        if target.found:
            pool.append(target.found.pop())
        if signature not in result.signatures:
            result.signatures.add(signature)
            pool.append(data)
    result.seconds = time.monotonic() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument("--save", type=Path, default=Path("."), help="where a crashing input goes")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"fuzz: seed {seed}, {args.seconds:g} s, corpus {CORPUS}", flush=True)
    try:
        result = fuzz(seed, seconds=args.seconds)
    except Failure as failure:
        name = args.save / f"crash-{hashlib.sha1(failure.data).hexdigest()}"
        name.write_bytes(failure.data)
        print(f"fuzz: invariant broken (seed {seed}): {failure}\nfuzz: input saved as {name}",
              file=sys.stderr)
        sys.exit(1)
    print(f"fuzz: {result.inputs} inputs in {result.seconds:.1f} s ({result.rate:.0f} per second), "
          f"{len(result.signatures)} distinct answers, no invariant broken")


if __name__ == "__main__":
    main()
