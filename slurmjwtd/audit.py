"""The audit trail: one line per decision, granted or refused, in logfmt.

Fields are the caller as the kernel reports it, the account asked for, the
operation, the rule that decided, and for grants the expiry and jti. Never a
token, never a key: there is no field that could carry one.

Every line ends with `node=`, this host's short name, so that lines gathered from many
login nodes into one log (rsyslog, journal-remote) still say where each decision was made.
`parse_audit` is the exact inverse of `format_audit`: `slurmjwt audit` reads lines back with it.

Audit lines are written with one write(2) each, not through `logging`: they are
the daemon's hot path, and the logging machinery cost more than minting a token.
"""

from __future__ import annotations

import os
import re
import socket
import time
from typing import Callable

AUDIT_FIELDS = ("decision", "op", "caller_uid", "caller_pid", "user", "uid", "slurm_user", "reason",
                "rule", "code", "lifetime", "exp", "jti", "session", "tty", "rhost", "service",
                "count", "seconds", "detail", "revoked_on", "node")
_FIELD_SET = frozenset(AUDIT_FIELDS)
_BARE = re.compile(r"[A-Za-z0-9_.:/@+,-]+\Z")
_bare = _BARE.match
MAX_QUOTED = 200  # characters of a quoted value, escapes included; the rest is cut off


def _escape(c: str) -> str:
    if " " <= c < "\x7f":
        return "\\" + c if c in '"\\' else c
    code = ord(c)
    return f"\\x{code:02x}" if code <= 0xff else f"\\u{code:04x}" if code <= 0xffff else f"\\U{code:08x}"


def _value(value: object) -> str:
    text = str(value)
    return text if _bare(text) else _quote(text)


def _quote(text: str) -> str:
    # quote, and escape anything a client could use to forge another line or field; a long
    # value is cut between two escapes, never inside one (which could swallow the quote)
    quoted, size = [], 0
    for piece in map(_escape, text):
        size += len(piece)
        if size > MAX_QUOTED:
            break
        quoted.append(piece)
    return '"' + "".join(quoted) + '"'


def format_audit(fields: dict[str, object]) -> str:
    """FIELDS in the caller's order, empty ones left out."""
    if not fields.keys() <= _FIELD_SET:  # a programming error the tests catch: no secret field
        raise ValueError(f"not an audit field: {sorted(fields.keys() - _FIELD_SET)}")
    parts = []
    for k, v in fields.items():  # inline: a line has about 15 values, twice per login
        if v is None or v == "":
            continue
        if type(v) is not int:  # an int's digits (and sign) are always bare
            v = str(v)
            if not _bare(v):
                v = _quote(v)
        parts.append(f"{k}={v}")
    return " ".join(parts)


# one field of a line: key=bare or key="quoted", where quoted holds printable ASCII but " and \,
# and the escapes _escape makes; then a space or the end
_FIELD = re.compile(r'([a-z_]+)=(?:([A-Za-z0-9_.:/@+,-]+)|"((?:[ !#-\[\]-~]|\\[\\"]|\\x[0-9a-f]{2}'
                    r'|\\u[0-9a-f]{4}|\\U[0-9a-f]{8})*)")(?: |\Z)')
_ESCAPE = re.compile(r'\\(?:([\\"])|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))')


def _unescape(match: re.Match[str]) -> str:
    quoted, *codes = match.groups()
    return quoted or chr(int(next(c for c in codes if c), 16))


def parse_audit(line: str) -> dict[str, str]:
    """The fields of an audit line as format_audit wrote it (the logfmt alone, no prefix), in
    the line's order, every value a string; ValueError if LINE is not one."""
    fields: dict[str, str] = {}
    at = 0
    while at < len(line):
        match = _FIELD.match(line, at)
        if match is None:
            raise ValueError(f"not an audit line: no key=value at character {at + 1}")
        key, bare, quoted = match.groups()
        if key in fields:
            raise ValueError(f"not an audit line: {key}= twice")
        fields[key] = bare if bare is not None else _ESCAPE.sub(_unescape, quoted)
        at = match.end()
    if line.endswith(" ") or not fields:
        raise ValueError("not an audit line: empty, or a space at its end")
    return fields


def node_name() -> str:
    """This host's name as Slurm and `hostname -s` show it: up to the first dot."""
    return socket.gethostname().split(".", 1)[0]


class RefusalSummary:
    """Passes every audit line on to WRITE, except a user's repeated refusals: per (caller
    uid, code) the first is written in full, the rest are counted, and one `decision=summary`
    line per INTERVAL seconds gives their count while they go on. Root's refusals (logins)
    and every grant are always written. One user thus makes at most two lines per code per
    interval however fast they are refused, and cannot crowd others' grants out of a
    rate-limited log (journald drops lines beyond its limit, whoever wrote them)."""

    def __init__(self, write: Callable[..., None], interval: float) -> None:
        self.write = write
        self.interval = interval
        self._windows: dict[tuple[object, object], list[float]] = {}  # -> [start, until, count]

    def __call__(self, **fields: object) -> None:
        uid = fields.get("caller_uid")
        if fields.get("decision") != "refused" or not isinstance(uid, int) or uid == 0:
            self.write(**fields)
            return
        key = (uid, fields.get("code"))
        now = time.monotonic()
        window = self._windows.get(key)
        if window is not None and window[1] <= now:
            window = self._close(key, window, now)
        if window is None:  # the first of a run, or the first after a quiet interval
            self._windows[key] = [now, now + self.interval, 0]
            self.write(**fields)
        else:
            window[2] += 1

    def flush(self, now: float, everything: bool = False) -> None:
        """Write the counts of the intervals that have ended (EVERYTHING: of all of them, as the
        daemon stops: no count is lost); forget runs that have stopped."""
        for key, window in list(self._windows.items()):
            if everything or window[1] <= now:
                self._close(key, window, now)

    def _close(self, key: tuple[object, object], window: list[float],
               now: float) -> list[float] | None:
        if not window[2]:
            del self._windows[key]
            return None
        self.write(decision="summary", caller_uid=key[0], code=key[1], count=int(window[2]),
                   seconds=f"{now - window[0]:.1f}")
        window[:] = [now, now + self.interval, 0]
        return window


class AuditLog:
    """Writes audit lines to a file descriptor (stderr by default), timestamped."""

    def __init__(self, fd: int = 2, node: str | None = None) -> None:
        self.fd = fd
        self.node = node_name() if node is None else node
        self._second = -1
        self._stamp = ""

    def __call__(self, **fields: object) -> None:
        now = int(time.time())
        if now != self._second:  # format the time once a second, not once a line
            self._second = now
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))
        line = f"{self._stamp} slurmjwtd AUDIT {format_audit({**fields, 'node': self.node})}\n"
        try:
            os.write(self.fd, line.encode())
        except OSError:
            pass  # a full or closed log must not stop the daemon serving logins


class JournalAuditLog:
    """Writes audit lines to the journal, each field also as SLURMJWT_<FIELD> for
    `journalctl SLURMJWT_USER=alice`; refusals and summaries at priority notice, grants at info."""

    def __init__(self, node: str | None = None) -> None:
        from .pysystemd import systemd_module  # only under systemd
        # sendv, not send: send adds CODE_FILE/LINE/FUNC from a stack walk (this file, every
        # time), which costs more than the rest of the line (bench/README.md, "journal")
        self._sendv = systemd_module("journal").sendv
        self.node = node_name() if node is None else node

    def __call__(self, **fields: object) -> None:
        fields = {**fields, "node": self.node}
        message = format_audit(fields)  # first: it refuses a field that is not an audit field
        self._sendv("MESSAGE=" + message,
                    "PRIORITY=6" if fields.get("decision") == "granted" else "PRIORITY=5",
                    "SYSLOG_IDENTIFIER=slurmjwtd",
                    *[f"SLURMJWT_{k.upper()}={v}" for k, v in fields.items()
                      if v is not None and v != ""])
