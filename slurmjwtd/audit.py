"""The audit trail: one line per decision, granted or refused, in logfmt.

Fields are the caller as the kernel reports it, the account asked for, the
operation, the rule that decided, and for grants the expiry and jti. Never a
token, never a key: there is no field that could carry one.
"""

from __future__ import annotations

import logging
import re

AUDIT_FIELDS = ("decision", "op", "caller_uid", "caller_pid", "user", "uid", "reason", "code",
                "lifetime", "exp", "jti", "session", "tty", "rhost", "service", "detail")
_BARE = re.compile(r"[A-Za-z0-9_.:/@+,-]+\Z")

log = logging.getLogger("slurmjwtd")


def _value(value: object) -> str:
    text = str(value)
    if _BARE.match(text):
        return text
    # quote, and escape anything a client could use to forge another line or field
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if " " <= c < "\x7f" else f"\\x{ord(c):02x}" for c in text)[:200] + '"'


def format_audit(fields: dict[str, object]) -> str:
    unknown = set(fields) - set(AUDIT_FIELDS)
    if unknown:  # a programming error, caught by the tests: keeps secrets out by construction
        raise ValueError(f"not an audit field: {sorted(unknown)}")
    return " ".join(f"{k}={_value(fields[k])}" for k in AUDIT_FIELDS
                    if fields.get(k) not in (None, ""))


def audit(**fields: object) -> None:
    log.info(format_audit(fields), extra={"audit": fields})
