"""The audit trail read back: parse_audit is the exact inverse of format_audit whatever a client
put in a value; lines with a log's prefix (the daemon's stderr, syslog, rsyslog's formats);
--since and --until; the filters, for files and as journal matches; the output."""

from __future__ import annotations

import datetime
import json
import os
import socket

import pytest
from click.testing import CliRunner

from slurmjwtd import cli
from slurmjwtd.audit import (AUDIT_FIELDS, MAX_QUOTED, AuditLog, _escape, format_audit, node_name,
                             parse_audit)
from slurmjwtd.auditread import (DECISIONS, AuditReadError, Entry, FileReader, Filters,
                                 check_journal, journal_entry, journal_files, parse_when,
                                 prefix_time, split_line)

HOSTILE = [
    'x y', 'say "hi"', 'back\\slash', '\\"', '\\', '"', 'a=b', 'decision=granted', ' lead',
    'trail ', 'new\nline', 'cr\rlf', 'tab\tbed', '\x00nul', '\x1b[31mred', '\x7fdel', 'caf\xe9',
    '\u2603 snowman', '\U0001f600 face', '\ud800 lone surrogate', '\\x41', '\\u0041', '=', '""',
    'user="root" forged=1', 'x\n2026-11-30T10:00:00+0000 slurmjwtd AUDIT decision=granted',
    'a' * (MAX_QUOTED - 3) + ' ' + '\\', '\x01' * 60, 'ok.bare:value/with@all+chars,-_',
]


@pytest.mark.parametrize("value", HOSTILE)
def test_parse_is_the_exact_inverse_of_format(value):
    fields = {"decision": "refused", "op": "mint", "caller_uid": 1001, "user": value,
              "detail": value, "node": "login1"}
    line = format_audit(fields)
    assert "\n" not in line and "\r" not in line
    parsed = parse_audit(line)
    assert list(parsed) == list(fields)
    assert parsed["caller_uid"] == "1001" and parsed["node"] == "login1"
    assert value.startswith(parsed["user"]) and parsed["detail"] == parsed["user"]
    if sum(len(_escape(c)) for c in value) <= MAX_QUOTED:  # not cut
        assert parsed["user"] == value
    assert format_audit(parsed) == line  # and back: one line, one meaning


@pytest.mark.parametrize("value", ["\\" * 150, '"' * 150, "\x01" * 80, "a" * 199 + "\\",
                                   "\U0001f600" * 30, "a" * 499 + " "])
def test_a_long_value_is_cut_between_escapes_never_inside_one(value):
    line = format_audit({"decision": "granted", "user": value, "node": "n"})
    parsed = parse_audit(line)  # the closing quote survived: node= is still its own field
    assert parsed["node"] == "n" and value.startswith(parsed["user"])
    assert len(line.split(" user=", 1)[1].rsplit(" node=", 1)[0]) <= MAX_QUOTED + 2


@pytest.mark.parametrize("line", [
    "", "decision", "decision=", 'decision="open', 'decision="a\\q"', "decision=a  op=b",
    "decision=a ", "decision=a op=b decision=c", 'decision="\x1b"', 'Decision=a',
    'decision="a"op=b', "decision=a\top=b", 'decision="\\x4"', 'decision="caf\xe9"'])
def test_what_format_audit_cannot_write_is_not_an_audit_line(line):
    with pytest.raises(ValueError):
        parse_audit(line)


def test_the_daemons_line_ends_with_this_nodes_short_name(tmp_path):
    assert node_name() == socket.gethostname().split(".")[0] and "." not in node_name()
    path = tmp_path / "log"
    with open(path, "w") as log:
        AuditLog(log.fileno())(decision="granted", op="mint", user="alice", jti="j1")
        AuditLog(log.fileno(), node="login7")(decision="refused", op="mint", user='a "b"')
    first, second = path.read_text().splitlines()
    assert first.endswith(f" node={node_name()}")
    prefix, logfmt = split_line(second)
    assert prefix.endswith(" slurmjwtd AUDIT ") and prefix_time(prefix) is not None
    assert parse_audit(logfmt) == {"decision": "refused", "op": "mint", "user": 'a "b"',
                                   "node": "login7"}


def test_node_is_an_audit_field_and_a_token_is_not():
    assert "node" in AUDIT_FIELDS and not {"token", "jwt", "key"} & set(AUDIT_FIELDS)


# -- lines with a log's prefix -------------------------------------------------------------------
NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc)
LOGFMT = "decision=granted op=mint caller_uid=1001 user=alice jti=abc node=login3"


@pytest.mark.parametrize("prefix,when", [
    ("2026-11-30T10:00:00+0000 slurmjwtd AUDIT ", "2026-11-30T10:00:00+00:00"),  # its stderr
    ("2026-11-30T10:00:00.123456+01:00 login3 slurmjwtd[7]: ", "2026-11-30T10:00:00.123456+01:00"),
    ("<13>1 2026-11-30T10:00:00Z login3 slurmjwtd 7 - - ", "2026-11-30T10:00:00+00:00"),
    ("<13>2026-11-30T10:00:00+00:00 login3 slurmjwtd[7]: ", "2026-11-30T10:00:00+00:00"),
    ("", None),  # the journal's MESSAGE forwarded alone: no time
    ("login3 slurmjwtd: ", None),
])
def test_prefix_and_time(prefix, when):
    parts = split_line(prefix + LOGFMT)
    assert parts == (prefix, LOGFMT)
    found = prefix_time(parts[0], NOW)
    assert (found.isoformat() if found else None) == when


def test_a_traditional_syslog_time_takes_the_latest_year_not_in_the_future():
    local = NOW.astimezone()
    assert prefix_time("Nov 30 10:00:00 login3 slurmjwtd[7]: ", NOW).replace(tzinfo=None) == \
        datetime.datetime(2026, 11, 30, 10, 0)
    assert prefix_time("Dec 31 23:59:59 login3 x: ", NOW).year == local.year - 1
    assert prefix_time("Nov  2 01:02:03 login3 x: ", NOW).day == 2
    assert prefix_time("Foo 30 10:00:00 login3 x: ", NOW) is None


@pytest.mark.parametrize("line", [
    "2026-11-30T10:00:00+0000 slurmjwtd INFO listening on /run/slurmjwt/slurmjwtd.sock",
    "Nov 30 10:00:00 login3 sshd[9]: Accepted publickey for alice", "",
    "2026-11-30T10:00:00+0000 slurmjwtd AUDIT xdecision=granted"])
def test_lines_without_a_decision_field_are_not_audit_lines(line):
    assert split_line(line) is None


# -- --since and --until ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("-1h", NOW - datetime.timedelta(hours=1)), ("-30m", NOW - datetime.timedelta(minutes=30)),
    ("-7d", NOW - datetime.timedelta(days=7)), ("-90s", NOW - datetime.timedelta(seconds=90)),
    ("today", NOW.replace(hour=0)), ("yesterday", NOW.replace(hour=0, day=29)),
    ("2026-11-30T10:00:00+00:00", NOW.replace(hour=10)),
    ("2026-11-30 10:00+01:00", NOW.replace(hour=9)),
])
def test_when(text, expected):
    assert parse_when(text, NOW) == expected


def test_when_without_an_offset_is_local_time():
    assert parse_when("2026-11-30 10:00") == datetime.datetime(2026, 11, 30, 10, 0).astimezone()
    assert parse_when("2026-11-30") == datetime.datetime(2026, 11, 30).astimezone()


@pytest.mark.parametrize("text", ["", "1h", "-1w", "-h", "now", "tomorrow", "-1h30m", "2026-13-01",
                                  "30/11/2026", "-99999999999d"])
def test_not_a_time(text):
    with pytest.raises(ValueError, match="is not a time: give "):
        parse_when(text, NOW)


# -- filters ---------------------------------------------------------------------------------
LOG = """\
2026-11-30T09:00:00+0000 slurmjwtd INFO listening
2026-11-30T09:00:01+0000 slurmjwtd AUDIT decision=granted op=open caller_uid=0 caller_pid=5 user=alice uid=1001 reason=login lifetime=3600 exp=1796029201 jti=j1 session=s1 node=login1
Nov 30 10:00:00 loghost slurmjwtd[7]: decision=granted op=mint caller_uid=1001 caller_pid=8 user=alice uid=1001 reason=own-session jti=j2 node=login2
<13>1 2026-11-30T11:00:00+00:00 login2 slurmjwtd 7 - - decision=refused op=mint caller_uid=1002 caller_pid=9 user=bob reason=no-session code=no-session node=login2
decision=summary caller_uid=1002 code=rate-limited count=12 seconds=10.0 node=login2
2026-11-30T11:30:00+0000 slurmjwtd AUDIT decision=granted op="mint cut
"""


def read(**filters):
    since, until = filters.pop("since", None), filters.pop("until", None)
    reader = FileReader(Filters({k: tuple(v) for k, v in filters.items()}, since, until), NOW)
    found = list(reader.read("log", LOG.splitlines(keepends=True)))
    assert reader.malformed == {"log": 1}
    return [e.fields.get("jti") or e.fields["decision"] for e in found]


@pytest.mark.parametrize("filters,expected", [
    ({}, ["j1", "j2", "refused", "summary"]),
    ({"user": ["alice"]}, ["j1", "j2"]),
    ({"user": ["alice", "bob"]}, ["j1", "j2", "refused"]),
    ({"jti": ["j2"]}, ["j2"]),
    ({"node": ["login2"]}, ["j2", "refused", "summary"]),
    ({"node": ["login2"], "user": ["alice"]}, ["j2"]),
    ({"decision": ["refused", "summary"]}, ["refused", "summary"]),
    ({"op": ["open"]}, ["j1"]),
    ({"user": ["nobody"]}, []),
    ({"since": NOW.replace(hour=10)}, ["j2", "refused"]),  # the line without a time: not shown
    ({"until": NOW.replace(hour=10)}, ["j1", "j2"]),
    ({"since": NOW.replace(hour=9, second=30), "until": NOW.replace(hour=10, second=30)}, ["j2"]),
])
def test_file_filters(filters, expected):
    assert read(**filters) == expected


def test_journal_matches_select_the_daemons_decisions_and_each_filter():
    assert Filters().journal_matches() == ["_SYSTEMD_UNIT=slurmjwtd.service"] + [
        f"SLURMJWT_DECISION={d}" for d in DECISIONS]
    matches = Filters({"user": ("alice", "bob"), "jti": ("j1",), "decision": ("granted",),
                       "node": ()}).journal_matches()
    assert matches == ["_SYSTEMD_UNIT=slurmjwtd.service", "SLURMJWT_DECISION=granted",
                       "SLURMJWT_USER=alice", "SLURMJWT_USER=bob", "SLURMJWT_JTI=j1"]


def test_a_journal_entry_becomes_the_same_entry_as_its_line():
    when = datetime.datetime(2026, 11, 30, 10, 0, tzinfo=datetime.timezone.utc)
    raw = {"MESSAGE": "ignored", "_HOSTNAME": "login9.example.org", "SLURMJWT_JTI": "j2",
           "SLURMJWT_USER": "al\x1bice", "SLURMJWT_DECISION": "granted", "SLURMJWT_OP": "mint",
           "SLURMJWT_CALLER_UID": "1001", "__REALTIME_TIMESTAMP": when, "SLURMJWT_NODE": "login2",
           "SLURMJWT_DETAIL": b"\xff"}
    entry = journal_entry(raw)
    assert list(entry.fields) == ["decision", "op", "caller_uid", "user", "jti", "detail", "node"]
    assert entry.fields["detail"] == "\\xff" and entry.time == when
    del raw["SLURMJWT_NODE"]  # written before lines had node=: journald's host name
    assert journal_entry(raw).fields["node"] == "login9"


def test_json_has_every_field_numbers_as_numbers_and_the_time():
    fields = parse_audit(format_audit({"decision": "granted", "op": "mint", "caller_uid": 1001,
                                       "user": "1234", "exp": 1796029201, "jti": "j", "node": "n",
                                       "detail": "x\ny"}))
    entry = Entry(NOW, fields)
    shown = json.loads(entry.as_json())
    assert shown == {"time": "2026-11-30T12:00:00+00:00", "decision": "granted", "op": "mint",
                     "caller_uid": 1001, "user": "1234", "exp": 1796029201, "jti": "j", "node": "n",
                     "detail": "x\ny"}
    assert "\n" not in entry.as_json() and json.loads(Entry(None, fields).as_json())["time"] is None


# -- the command -------------------------------------------------------------------------------
@pytest.fixture
def log_file(tmp_path, monkeypatch):
    path = tmp_path / "central.log"
    path.write_text(LOG)
    monkeypatch.setenv("SLURMJWT_CONFIG", str(tmp_path / "none.toml"))
    return path


def run(*args: str) -> tuple[int, str, str]:
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()  # stderr kept apart
    result = runner.invoke(cli.main, ["audit", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_command_prints_aligned_columns_and_json(log_file):
    status, out, err = run("--file", str(log_file), "--node", "login2")
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["TIME", "NODE", "DECISION", "OP", "USER", "CALLER", "JTI", "REASON"]
    assert [r[20:].split()[:4] for r in rows] == [["login2", "granted", "mint", "alice"],
                                              ["login2", "refused", "mint", "bob"],
                                              ["login2", "summary", "-", "-"]]
    assert len({r.index(" login2 ") for r in rows} | {header.index("NODE") - 1}) == 1
    assert "1 line(s) with decision= are not audit lines" in err
    status, out, _ = run("--file", str(log_file), "--jti", "j2", "--json")
    assert status == 0 and [json.loads(line)["jti"] for line in out.splitlines()] == ["j2"]


def test_the_command_reads_audit_file_by_default_and_says_what_it_cannot_read(log_file, tmp_path,
                                                                              monkeypatch):
    config = tmp_path / "slurmjwtd.toml"
    config.write_text(f'audit_file = "{log_file}"\n')
    os.chmod(config, 0o644)
    monkeypatch.setenv("SLURMJWT_CONFIG", str(config))
    status, out, _ = run("--user", "bob", "--json")
    assert status == 0 and json.loads(out)["code"] == "no-session"
    status, out, err = run("--file", str(tmp_path / "missing.log"))
    assert (status, out) == (1, "") and err == \
        f"slurmjwt: cannot read {tmp_path}/missing.log: No such file or directory\n"
    status, _, err = run("--file", str(log_file), "--journal-dir", str(tmp_path))
    assert status == 2 and "not both" in err
    status, _, err = run("--since", "soon")
    assert status == 2 and err.startswith("slurmjwt: Invalid value for '--since': 'soon' is not a time")
    status, _, err = run("--journal-dir", str(tmp_path))
    assert status == 1 and err == f"slurmjwt: no journal files in {tmp_path}\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_one_line(log_file):
    os.chmod(log_file, 0)
    status, out, err = run("--file", str(log_file))
    assert (status, out) == (1, "") and err == (
        f"slurmjwt: cannot read {log_file}: Permission denied (run as root, or as a user its "
        f"mode lets read)\n")


def test_journal_files_are_found_in_a_directory_and_its_machine_ids(tmp_path):
    (tmp_path / "0123abcd").mkdir()
    for name in ("0123abcd/system.journal", "0123abcd/user-1000.journal", "remote-login1.journal",
                 "0123abcd/notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "0123abcd" / "deeper").mkdir()
    (tmp_path / "0123abcd" / "deeper" / "system.journal").write_bytes(b"")
    readable, denied = journal_files(str(tmp_path))
    assert sorted(os.path.relpath(f, tmp_path) for f in readable) == [
        "0123abcd/system.journal", "0123abcd/user-1000.journal", "remote-login1.journal"]
    assert denied == []
    check_journal(str(tmp_path))  # something to read: no error


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
@pytest.mark.parametrize("locked", ["0123abcd", "0123abcd/system.journal"])
def test_a_journal_this_user_may_not_read_is_one_line_not_an_empty_answer(tmp_path, locked):
    (tmp_path / "0123abcd").mkdir()
    (tmp_path / "0123abcd" / "system.journal").write_bytes(b"")
    os.chmod(tmp_path / locked, 0)
    try:
        with pytest.raises(AuditReadError, match=r"^cannot read the journal files in .*/0123abcd: "
                                                 r"run as root or as a member of systemd-journal or adm$"):
            check_journal(str(tmp_path))
    finally:
        os.chmod(tmp_path / locked, 0o700)


@pytest.mark.parametrize("value,error", [("", None), ("/var/log/slurmjwtd.log", None),
                                         ("slurmjwtd.log", "is not an absolute path"),
                                         (3, "expected str")])
def test_audit_file_is_empty_or_an_absolute_path(value, error):
    from slurmjwtd.config import ConfigError, config_from_dict

    if error is None:
        assert config_from_dict({"audit_file": value}).audit_file == value
    else:
        with pytest.raises(ConfigError, match=f"key 'audit_file': .*{error}"):
            config_from_dict({"audit_file": value})
