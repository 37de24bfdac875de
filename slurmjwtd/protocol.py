"""The slurmjwtd socket protocol, version 1 (docs/protocol.md).

One request line per connection, one answer line, then the daemon closes:

    SJWT/1 OP key=value ...\\n
    SJWT/1 OK key=value ...\\n
    SJWT/1 ERR code human message\\n

Values are percent-encoded outside a small safe set, so a C client needs no
JSON library and no line ever carries a space or newline inside a value.
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from dataclasses import dataclass, field

from .wire import MAGIC, MAX_REQUEST, MAX_RESPONSE, SAFE  # noqa: F401  (the constants' one place)

# urllib.parse.quote always keeps letters, digits and "-._~"; it is told the rest of SAFE
_QUOTE_SAFE = SAFE.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SAFE_TEXT = re.compile(f"[{re.escape(SAFE)}]+\\Z")  # fast path: a value needing no escapes
_WIRE_VALUE = re.compile(f"[{re.escape(SAFE)}%]*\\Z")
_KEY = re.compile(r"[a-z][a-z_]{0,31}\Z")
_OP = re.compile(r"[A-Z]{1,16}\Z")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NUMBER = re.compile(r"[0-9]{1,9}\Z")  # ASCII only: str.isdigit() also takes "²" and "٣"


REFUSAL = "refusal"  # policy gave this caller no token: a login goes on without one (PAM_IGNORE)
FAULT = "fault"  # the daemon, or the exchange with it, failed: an admin should look (PAM_SESSION_ERR)


class Code(str, enum.Enum):
    """Stable error codes: clients branch on these, never on the message. Each has its class,
    REFUSAL or FAULT (docs/protocol.md, "Error codes"): the one table the CLI's exit statuses
    and the PAM module's `refusals` list follow (tests/test_units.py checks the C list)."""

    kind: str

    def __new__(cls, value: str, kind: str) -> "Code":
        member = str.__new__(cls, value)
        member._value_ = value
        member.kind = kind
        return member

    BAD_REQUEST = "bad-request", FAULT
    UNSUPPORTED_VERSION = "unsupported-version", FAULT
    TOO_LARGE = "too-large", FAULT
    TIMEOUT = "timeout", FAULT
    BUSY = "busy", FAULT
    PERMISSION_DENIED = "permission-denied", REFUSAL
    NO_SESSION = "no-session", REFUSAL
    UNKNOWN_USER = "unknown-user", REFUSAL
    BELOW_MIN_UID = "below-min-uid", REFUSAL
    LIFETIME_TOO_LONG = "lifetime-too-long", REFUSAL
    POLICY_DENIED = "policy-denied", REFUSAL
    RATE_LIMITED = "rate-limited", REFUSAL
    SIGNER_UNAVAILABLE = "signer-unavailable", FAULT
    NO_SUCH_SESSION = "no-such-session", REFUSAL
    REVOKED = "revoked", REFUSAL
    INTERNAL = "internal", FAULT


REFUSALS = frozenset(code.value for code in Code if code.kind == REFUSAL)
"""The codes that mean "no token for this caller"; any other code, or one not in the table
(a later daemon's), is a fault."""


class Refusal(Exception):
    """A request the daemon refuses, raised wherever that is found: CODE and MESSAGE go on the
    wire; REASON (the check that refused), RULE and AUDIT (user=, uid=, session=, ...) go into
    its one audit line, written where it is caught (operations.Operations.refuse)."""

    def __init__(self, code: Code, reason: str, message: str, rule: str | None = None,
                 **audit: object) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.rule = rule
        self.audit = audit


class ProtocolError(Refusal):
    """A malformed request, refused before any decision: its reason is its code."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(code, code.value, message)


@dataclass(frozen=True)
class Request:
    op: str
    args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    ok: bool
    fields: dict[str, str] = field(default_factory=dict)
    code: str = ""
    message: str = ""


def quote(value: str) -> str:
    """VALUE percent-encoded as UTF-8 outside SAFE. Names and tokens need no escape; the regex
    check answers them in 0.45 us where urllib.parse.quote alone takes 1.0 us (bench.py's
    `protocol` figures); the library does every escape."""
    if _SAFE_TEXT.match(value):
        return value
    return urllib.parse.quote(value, safe=_QUOTE_SAFE)


def unquote(value: str) -> str:
    if "%" not in value:  # nothing escaped: the wire check already allowed only safe characters
        return value
    raw = value.encode("ascii")
    if raw.count(b"%") != len(_PERCENT.findall(raw)):
        raise ValueError("bad percent-escape")
    text = _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), raw).decode()  # may raise ValueError
    if _CONTROL.search(text):
        raise ValueError("control character")
    return text


def parse_number(value: str) -> int | None:
    """VALUE as a number if it is 1 to 9 ASCII digits, else None. int() alone would also take
    Arabic-Indic digits, " 1", "+1" and "1_000"; str.isdigit() takes "²", which int() rejects."""
    return int(value) if _NUMBER.match(value) else None


def _encode_pairs(pairs: dict[str, object]) -> str:
    # an int's digits and sign need no escape: no regex for them (half of an OPEN's answer)
    return "".join([f" {k}={v}" if type(v) is int else f" {k}={quote(str(v))}"
                    for k, v in pairs.items()])


def _decode_pairs(words: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not _KEY.match(key):
            raise ValueError(f"malformed argument {word[:40]!r}")
        if key in pairs:
            raise ValueError(f"argument {key!r} given twice")
        if not _WIRE_VALUE.match(value):
            raise ValueError(f"argument {key!r}: characters must be percent-encoded")
        pairs[key] = unquote(value)
    return pairs


def encode_request(op: str, args: dict[str, object] | None = None) -> bytes:
    line = f"{MAGIC} {op}{_encode_pairs(args or {})}\n".encode()
    if len(line) > MAX_REQUEST:
        raise ValueError(f"request longer than {MAX_REQUEST} bytes")
    return line


def parse_request(line: bytes) -> Request:
    """Parse one request line (without its newline); raise ProtocolError."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(Code.BAD_REQUEST, "request is not ASCII") from None
    words = text.split(" ")
    if words[0] != MAGIC:
        if words[0].startswith("SJWT/"):
            raise ProtocolError(Code.UNSUPPORTED_VERSION, f"this daemon speaks {MAGIC}")
        raise ProtocolError(Code.BAD_REQUEST, f"request must start with {MAGIC}")
    if len(words) < 2 or not _OP.match(words[1]):
        raise ProtocolError(Code.BAD_REQUEST, "missing or malformed operation")
    try:
        return Request(words[1], _decode_pairs(words[2:]))
    except ValueError as exc:
        raise ProtocolError(Code.BAD_REQUEST, str(exc)) from None


def encode_ok(fields: dict[str, object]) -> bytes:
    return f"{MAGIC} OK{_encode_pairs(fields)}\n".encode()


def encode_error(code: Code, message: str) -> bytes:
    clean = "".join(c if " " <= c < "\x7f" else "?" for c in message)[:512]
    return f"{MAGIC} ERR {code.value} {clean}\n".encode()


def parse_response(line: bytes) -> Response:
    """Parse one answer line (without its newline); raise ValueError if garbled."""
    text = line.decode("ascii")
    head, _, rest = text.partition(" ")
    if head != MAGIC:
        raise ValueError("answer does not start with " + MAGIC)
    status, _, rest = rest.partition(" ")
    if status == "OK":
        return Response(True, _decode_pairs(rest.split(" ")) if rest else {})
    if status == "ERR":
        code, _, message = rest.partition(" ")
        if not code:
            raise ValueError("error answer without a code")
        return Response(False, code=code, message=message)
    raise ValueError("answer is neither OK nor ERR")
