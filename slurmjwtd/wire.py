"""The protocol's constants and its plainest lines, importing nothing: what `slurmjwt token` and
`refresh` need on their fast path (fastcli.py), where importing protocol.py (re, enum,
dataclasses, urllib) would cost more than the whole command may (bench.py's `cli` section).

protocol.py is the protocol (docs/protocol.md) and takes its constants from here. The two
functions below read or write a line only when it needs no escape and nothing protocol.py would
refuse; otherwise they answer None and the caller asks protocol.py. tests/unit/test_fastcli.py
holds them to protocol.py's bytes.
"""

MAGIC = "SJWT/1"
MAX_REQUEST = 1024  # bytes, newline included
MAX_RESPONSE = 4096  # bytes, newline included
DEFAULT_SOCKET = "/run/slurmjwt/slurmjwtd.sock"
DEFAULT_ROOT_SOCKET = "/run/slurmjwt/slurmjwtd-root.sock"

# docs/protocol.md's `safe`: the bytes a value carries as they are (pam/sjwt_client.c's SAFE_CHARS)
SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/@+,"
_SAFE = frozenset(SAFE)
_KEY_HEAD = frozenset("abcdefghijklmnopqrstuvwxyz")  # protocol.py's _KEY: [a-z][a-z_]{0,31}
_KEY_TAIL = _KEY_HEAD | {"_"}


def plain_request(op: str, args: dict[str, object]) -> bytes | None:
    """protocol.encode_request(OP, ARGS) when no value needs an escape and the line fits in
    MAX_REQUEST; else None."""
    line = f"{MAGIC} {op}"
    for key, value in args.items():
        text = str(value)
        if not _SAFE.issuperset(text):
            return None
        line += f" {key}={text}"
    data = (line + "\n").encode()
    return data if len(data) <= MAX_REQUEST else None


def plain_ok(line: bytes) -> dict[str, str] | None:
    """The fields of LINE (an answer without its newline) as protocol.parse_response reads them,
    when it is an OK answer whose keys are well formed, given once, and whose values have no
    escape; else None (an ERR answer, a garbled one, an escape)."""
    if not line.startswith(b"SJWT/1 OK") or not line.isascii():
        return None
    head, _, rest = line.decode("ascii").partition(" ")
    status, _, rest = rest.partition(" ")
    if head != MAGIC or status != "OK":
        return None
    fields: dict[str, str] = {}
    for word in rest.split(" ") if rest else ():
        key, sep, value = word.partition("=")
        if (not sep or not key or len(key) > 32 or key[0] not in _KEY_HEAD
                or not _KEY_TAIL.issuperset(key) or key in fields or not _SAFE.issuperset(value)):
            return None
        fields[key] = value
    return fields
