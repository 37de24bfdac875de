"""`slurmjwt audit`: the daemon's decisions read back, from the journal or from log files, one
login node's or many nodes' gathered in one place.

Sources: the system journal (or a directory of journal files, such as journal-remote's), where
only entries journald itself attributes to slurmjwtd.service count (`_SYSTEMD_UNIT`, a field no
client can set), filtered by journal matches, so that finding one jti in a month of journal
reads that jti's entries, not the month; or text files, where an audit line is anything (a
timestamp, a syslog prefix) followed by the logfmt of audit.format_audit from its `decision=`
field on, parsed back by audit.parse_audit. Nothing here writes anywhere but stdout and stderr.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import IO, Iterable, Iterator

from .audit import AUDIT_FIELDS, parse_audit

UNIT = "slurmjwtd.service"
DECISIONS = ("granted", "refused", "summary")
JOURNAL_DIRS = ("/var/log/journal", "/run/log/journal")
NUMBERS = frozenset({"caller_uid", "caller_pid", "uid", "lifetime", "exp", "count"})  # in --json


class AuditReadError(Exception):
    """A source that cannot be read: the message says which and how to fix it."""


# -- times ---------------------------------------------------------------------------------
_RELATIVE = re.compile(r"-(\d{1,9})([smhd])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
WHEN_FORMS = "2026-11-30, 2026-11-30 10:00[:00], -30m, -2h, -7d, today or yesterday"


def parse_when(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """A point in time as --since and --until take it (local time unless an offset is given):
    an ISO 8601 date or date and time, -N[smhd] before NOW, today or yesterday (midnight);
    ValueError otherwise."""
    now = now or datetime.datetime.now().astimezone()
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return now - datetime.timedelta(seconds=int(relative[1]) * _UNITS[relative[2]])
    if text in ("today", "yesterday"):
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight - datetime.timedelta(days=1 if text == "yesterday" else 0)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give {WHEN_FORMS}") from None
    return when if when.tzinfo is not None else when.astimezone()


_PRI = re.compile(r"<\d{1,3}>(?:1 )?")  # a syslog priority, and RFC 5424's version
_RFC3164 = re.compile(r"([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)(?: |\Z)")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def prefix_time(prefix: str, now: datetime.datetime | None = None) -> datetime.datetime | None:
    """The time at the start of a log line's PREFIX, None if it starts with none: an ISO 8601
    timestamp (slurmjwtd's own stderr, `journalctl -o short-iso`, rsyslog's RSYSLOG_FileFormat
    and RFC 5424), or a traditional syslog `Nov 30 10:00:00`, which has no year: the latest
    such time not more than a day ahead of NOW."""
    text = prefix.lstrip()
    pri = _PRI.match(text)
    text = text[pri.end():] if pri else text
    first = text.split(" ", 1)[0]
    try:
        when = datetime.datetime.fromisoformat(first)
    except ValueError:
        pass
    else:
        return when if when.tzinfo is not None else when.astimezone()
    old = _RFC3164.match(text)
    if old is None or old[1] not in _MONTHS:
        return None
    now = now or datetime.datetime.now().astimezone()
    month, day, hour, minute, second = _MONTHS.index(old[1]) + 1, *map(int, old.groups()[1:])
    for year in (now.year + 1, now.year, now.year - 1):
        try:
            when = datetime.datetime(year, month, day, hour, minute, second).astimezone()
        except ValueError:  # Feb 29 in a year that has none
            continue
        if when <= now + datetime.timedelta(days=1):
            return when
    return None


# -- entries and filters ---------------------------------------------------------------------
@dataclass
class Entry:
    """One decision: when (None if the line gave no time), and its audit fields as strings."""

    time: datetime.datetime | None
    fields: dict[str, str]

    def as_json(self) -> str:
        values: dict[str, object] = {"time": self.time.isoformat() if self.time else None}
        for key, value in self.fields.items():
            values[key] = int(value) if key in NUMBERS and value.isascii() and value.isdigit() else value
        return json.dumps(values)

    def as_text(self) -> str:
        f = self.fields
        when = self.time.strftime("%Y-%m-%d %H:%M:%S") if self.time else "-"
        reason = f.get("reason", f.get("code", ""))
        if f.get("decision") == "summary":
            reason = f"{f.get('count', '?')} more {f.get('code', '?')} in {f.get('seconds', '?')}s"
        elif f.get("decision") == "refused" and "code" in f and f.get("reason") != f["code"]:
            reason = f"{reason} ({f['code']})"
        return " ".join([f"{when:19}", f"{f.get('node', '-'):12}", f"{f.get('decision', '-'):8}",
                         f"{f.get('op', '-'):8}", f"{f.get('user', '-'):12}",
                         f"{f.get('caller_uid', '-'):>6}", f"{f.get('jti', '-'):16}", reason])


HEADER = " ".join([f"{'TIME':19}", f"{'NODE':12}", f"{'DECISION':8}", f"{'OP':8}", f"{'USER':12}",
                   f"{'CALLER':>6}", f"{'JTI':16}", "REASON"])


@dataclass
class Filters:
    """What to keep: each field's accepted values (none given: any), and a time range. Values of
    one field are alternatives, different fields must all hold: as journal matches combine."""

    values: dict[str, tuple[str, ...]] = field(default_factory=dict)  # audit field -> values
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None

    def keeps(self, entry: Entry) -> bool:
        if any(wanted and entry.fields.get(key) not in wanted for key, wanted in self.values.items()):
            return False
        if self.since is None and self.until is None:
            return True
        if entry.time is None:  # a line without a time cannot be shown to be in the range
            return False
        return ((self.since is None or entry.time >= self.since)
                and (self.until is None or entry.time <= self.until))

    def journal_matches(self) -> list[str]:
        """The journal matches that select exactly these entries but for the time range: the
        unit (journald's field), a decision (which the daemon's other log lines have not),
        and each field's values."""
        wanted = {"decision": DECISIONS} | {k: v for k, v in self.values.items() if v}
        return [f"_SYSTEMD_UNIT={UNIT}"] + [f"SLURMJWT_{key.upper()}={value}"
                                             for key, values in wanted.items() for value in values]


# -- text files ------------------------------------------------------------------------------
_DECISION = re.compile(r"(?:^| )decision=")


def split_line(line: str) -> tuple[str, str] | None:
    """(prefix, logfmt) of a log line whose logfmt starts at its first `decision=` field; None
    for a line with none (the daemon's other messages, other programs' lines). The prefix
    is the log's (a time, a host, a tag); the daemon writes decision= first in every line."""
    found = _DECISION.search(line)
    if found is None:
        return None
    start = found.end() - len("decision=")
    return line[:start], line[start:]


@dataclass
class FileReader:
    """Audit lines of text files, in the files' order; counts the lines that had a decision=
    field but were not audit lines (a cut line, something else)."""

    filters: Filters
    now: datetime.datetime | None = None
    malformed: dict[str, int] = field(default_factory=dict)

    def read(self, name: str, lines: Iterable[str]) -> Iterator[Entry]:
        for line in lines:
            parts = split_line(line.rstrip("\n"))
            if parts is None:
                continue
            try:
                fields = parse_audit(parts[1].rstrip("\r"))
            except ValueError:
                self.malformed[name] = self.malformed.get(name, 0) + 1
                continue
            entry = Entry(prefix_time(parts[0], self.now), fields)
            if self.filters.keeps(entry):
                yield entry

    def read_paths(self, paths: Iterable[str], stdin: IO[str] | None = None) -> Iterator[Entry]:
        for path in paths:
            if path == "-":
                yield from self.read("stdin", stdin if stdin is not None else sys.stdin)
                continue
            try:
                handle = open(path, encoding="utf-8", errors="replace")
            except OSError as exc:
                raise AuditReadError(cannot_read(path, exc)) from None
            with handle:
                try:
                    yield from self.read(path, handle)
                except OSError as exc:  # a directory, an I/O error
                    raise AuditReadError(cannot_read(path, exc)) from None


def cannot_read(path: str, exc: OSError) -> str:
    why = exc.strerror or str(exc)
    fix = (" (run as root, or as a user its mode lets read)" if isinstance(exc, PermissionError)
           else "")
    return f"cannot read {path}: {why}{fix}"


# -- the journal -----------------------------------------------------------------------------
def journal_files(place: str) -> tuple[list[str], list[str]]:
    """(readable, denied): the *.journal files in PLACE and its subdirectories (one per machine
    id) that this user can read, and the files and directories there it cannot."""
    readable: list[str] = []
    denied: list[str] = []
    folders = [place]
    for folder in folders:  # PLACE, then its subdirectories as they are found
        try:
            names = sorted(os.listdir(folder))
        except PermissionError:
            denied.append(folder)
            continue
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if folder == place and os.path.isdir(path):
                folders.append(path)
            elif name.endswith(".journal") and os.path.isfile(path):
                (readable if os.access(path, os.R_OK) else denied).append(path)
    return readable, denied


def check_journal(directory: str | None) -> None:
    """AuditReadError unless some journal file of DIRECTORY (else of the system journal) can be
    read: the journal would otherwise show nothing and say nothing. Its permissions decide
    who may read it: root, systemd-journal and adm (Debian's ACLs)."""
    if directory is not None and not os.path.isdir(directory):
        raise AuditReadError(f"--journal-dir {directory}: not a directory")
    readable, denied = [], []
    for place in [directory] if directory is not None else JOURNAL_DIRS:
        files, refused = journal_files(place)
        readable += files if directory else [f for f in files
                                             if os.path.basename(f).startswith("system")]
        denied += refused
    if readable:
        return
    if denied:
        where = os.path.dirname(denied[0]) if denied[0].endswith(".journal") else denied[0]
        raise AuditReadError(f"cannot read the journal files in {where}: run as root or as a "
                             f"member of systemd-journal or adm")
    where = directory or " or ".join(JOURNAL_DIRS)
    raise AuditReadError(f"no journal files in {where}" + (
        "" if directory else " (is systemd-journald running? without systemd give --file, "
                             "or set audit_file in slurmjwtd.toml)"))


def _text(value: object) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def journal_entry(raw: dict[str, object]) -> Entry:
    """An Entry from a journal entry: its SLURMJWT_* fields, in the audit's order, and its time;
    for lines written before audit lines had node=, journald's _HOSTNAME."""
    found = {key[len("SLURMJWT_"):].lower(): _text(value) for key, value in raw.items()
             if key.startswith("SLURMJWT_")}
    if "node" not in found and raw.get("_HOSTNAME"):
        found["node"] = _text(raw["_HOSTNAME"]).split(".", 1)[0]
    order = {name: i for i, name in enumerate(AUDIT_FIELDS)}
    fields = dict(sorted(found.items(), key=lambda kv: order.get(kv[0], len(order))))
    when = raw.get("__REALTIME_TIMESTAMP")
    return Entry(when.astimezone() if isinstance(when, datetime.datetime) else None, fields)


def read_journal(filters: Filters, directory: str | None = None) -> Iterator[Entry]:
    """The entries of the system journal (or of DIRECTORY's journal files) that FILTERS keeps,
    selected by journal matches and a seek to --since: never a scan of the whole journal."""
    from .pysystemd import systemd_module

    check_journal(directory)
    try:
        journal = systemd_module("journal")
    except SystemExit as exc:
        raise AuditReadError(f"{str(exc).removeprefix('slurmjwtd: ')}; or give --file") from None
    with journal.Reader(path=directory) if directory else journal.Reader() as reader:
        for match in filters.journal_matches():
            reader.add_match(match)
        if filters.since is not None:
            reader.seek_realtime(filters.since.timestamp())
        for raw in reader:
            entry = journal_entry(raw)
            if filters.until is not None and entry.time is not None and entry.time > filters.until:
                return  # entries come in time order
            if filters.keeps(entry):
                yield entry
