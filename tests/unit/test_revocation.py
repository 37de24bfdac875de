"""The fleet-wide revocation list in process (revocation.py): parsing, the difference between
two lists, the health of the file (logged once when it breaks, once when it recovers), the
last good list kept while the file cannot be read, the missing file at start, the writers'
lock, and Operations putting another node's change in force. Two real daemons sharing one
file: tests/test_fleet_revoke.py."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from slurmjwtd import revocation as rv
from slurmjwtd.operations import Operations
from slurmjwtd.protocol import parse_response
from slurmjwtd.revocation import Diff, Revocation, RevocationError, Revocations, diff, health_news, parse

from .conftest import NOBODY, ROOT

UID = NOBODY.pw_uid
A = Revocation("alice", 2001, 10, 0, "stolen", "node-a")
B = Revocation("bob", 2002, 11, 0, "", "node-b")


def record(r: Revocation, **changes: object) -> dict:
    return {**r.__dict__, **changes}


# -- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("[]", {}),
    ("{}", {}),  # an explicit "none", as []
    (json.dumps([record(A), record(B)]), {2001: A, 2002: B}),
    (json.dumps([{k: v for k, v in record(A).items() if k != "node"}]),  # written before nodes
     {2001: Revocation("alice", 2001, 10, 0, "stolen")}),
    (json.dumps([record(A), record(A, reason="again")]), {2001: Revocation("alice", 2001, 10, 0, "again", "node-a")}),
])
def test_parse_takes_a_list_of_revocations(text, expected):
    assert parse(text.encode()) == expected


@pytest.mark.parametrize("text, why", [
    ("", "not JSON"), ("[", "not JSON"), (b"\xff[]", "not JSON"), ('{"a": 1}', "not a JSON list"),
    ('"x"', "not a JSON list"), ("null", "not a JSON list"), ("[1]", "entry 1"),
    (json.dumps([record(A), {"user": "x"}]), "entry 2"),
    (json.dumps([record(A, uid="2001")]), "entry 1"), (json.dumps([record(A, uid=True)]), "entry 1"),
    (json.dumps([record(A, extra=1)]), "entry 1"), (json.dumps([record(A, node=None)]), "entry 1"),
])
def test_parse_refuses_anything_else_saying_what(text, why):
    with pytest.raises(ValueError, match=why):
        parse(text if isinstance(text, bytes) else text.encode())


# -- the difference -----------------------------------------------------------------------------
@pytest.mark.parametrize("old, new, revoked, lifted", [
    ({}, {}, (), ()),
    ({}, {2001: A}, (A,), ()),
    ({2001: A}, {}, (), (A,)),
    ({2001: A}, {2002: B}, (B,), (A,)),
    ({2001: A}, {2001: Revocation("alice", 2001, 99, 0, "new reason")}, (), ()),  # replaced: no change
])
def test_diff_names_the_uids_newly_revoked_and_lifted(old, new, revoked, lifted):
    change = diff(old, new)
    assert (change.revoked, change.lifted) == (revoked, lifted)
    assert bool(change) == bool(revoked or lifted)


def test_without_leaves_one_uid_out():
    assert Diff((A, B), (A,)).without(2001) == Diff((B,), ())


# -- the file's health: one line when it breaks, one when it recovers ------------------------------
@pytest.mark.parametrize("before, after, level", [
    ("", "", None), ("gone", "gone", None),
    ("", "gone", logging.ERROR), ("gone", "unreadable (not JSON)", logging.ERROR),
    ("gone", "", logging.WARNING),
])
def test_health_news_only_when_the_state_changes(before, after, level):
    news = health_news("/x/revoked.json", before, after, 3)
    assert (news and news[0]) == level
    if level == logging.ERROR:
        assert after in news[1] and "last good list (3 user(s) revoked)" in news[1]
        assert "write [] to it" in news[1]
    if level == logging.WARNING:
        assert "readable again (3 user(s) revoked)" in news[1]


@pytest.fixture
def path(tmp_path):
    return tmp_path / "revoked.json"


def write(path, records) -> None:
    """Another node's (or root's) change: a new file put in place, as a writer does."""
    tmp = path.with_name("other.tmp")
    tmp.write_text(json.dumps([record(r) for r in records]))
    os.replace(tmp, path)


@pytest.mark.parametrize("breakage", ["deleted", "garbage", "directory", "unparsable entry"])
def test_a_broken_file_keeps_the_last_good_list_logs_once_and_recovers(path, caplog, breakage):
    write(path, [A])
    revocations = Revocations(str(path), node="here")
    assert revocations.load() == 1
    caplog.set_level(logging.INFO, "slurmjwtd")
    if breakage == "deleted":
        path.unlink()
    elif breakage == "directory":
        path.unlink()
        path.mkdir()
    else:
        path.write_text("{" if breakage == "garbage" else "[1]")
    for _ in range(3):  # looked at three times: logged once
        assert not revocations.refresh()
        assert revocations.of(A.uid) == A and len(revocations) == 1
    assert revocations.problem
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "keeping the last good list (1 user(s) revoked)" in errors[0].getMessage()
    # a revocation cannot be written over a file that cannot be read: refused, nothing changed
    with pytest.raises(RevocationError, match="nothing changed"):
        revocations.revoke(B)
    assert revocations.of(B.uid) is None
    if path.is_dir():
        path.rmdir()
    write(path, [B])  # recovered, with another node's list: A lifted, B revoked
    assert revocations.refresh() == Diff((B,), (A,))
    assert not revocations.problem and not revocations.refresh()
    recovered = [r for r in caplog.records if "readable again" in r.getMessage()]
    assert len(recovered) == 1 and len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_clearing_is_writing_an_empty_list(path):
    write(path, [A, B])
    revocations = Revocations(str(path))
    revocations.load()
    path.write_text("{}")
    assert revocations.refresh() == Diff((), (A, B)) and len(revocations) == 0 and not revocations.problem


def test_an_unchanged_file_is_not_read_again(path, monkeypatch):
    write(path, [A])
    revocations = Revocations(str(path))
    revocations.load()
    monkeypatch.setattr(rv, "parse", lambda data: pytest.fail("read again"))
    assert not revocations.refresh()


# -- at start -----------------------------------------------------------------------------------
def test_a_missing_file_at_start_is_none_only_if_it_was_never_made(path):
    revocations = Revocations(str(path))
    assert revocations.load() == 0 and not revocations.refresh() and not revocations.problem
    revocations.revoke(A)  # makes the lock file, which stays
    assert path.with_name("revoked.json.lock").exists()
    path.unlink()
    with pytest.raises(RevocationError, match="missing, though .*lock shows it was made"):
        Revocations(str(path)).load()
    with pytest.raises(RevocationError, match="does not exist .*share not mounted"):
        Revocations(str(path.parent / "unmounted" / "revoked.json")).load()


def test_a_file_appearing_after_start_is_read(path):
    revocations = Revocations(str(path))
    assert revocations.load() == 0
    write(path, [A])
    assert revocations.refresh() == Diff((A,), ()) and revocations.of(A.uid) == A


# -- writing: under the lock, after reading the file again ----------------------------------------
def test_a_write_keeps_what_another_node_wrote_meanwhile_and_returns_it(path):
    here = Revocations(str(path), node="here")
    here.load()
    write(path, [A])  # another node, since this one last looked
    assert here.revoke(B) == Diff((A,), ())  # to put in force here too
    assert parse(path.read_bytes()) == {A.uid: A, B.uid: B}
    write(path, [A])  # another node lifted B, and this one lifts A
    lifted, others = here.unrevoke(A.uid)
    assert lifted == A and others == Diff((), (B,)) and parse(path.read_bytes()) == {}


def _hold_lock(lock_path: str, held, seconds: float) -> None:
    import fcntl
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    held.set()
    time.sleep(seconds)
    with open(lock_path.removesuffix(".lock"), "w") as fh:  # its write, made under the lock
        json.dump([record(A)], fh)
    os.close(fd)


def test_a_writer_waits_for_another_process_holding_the_lock_and_keeps_its_write(path):
    here = Revocations(str(path))
    here.load()
    context = multiprocessing.get_context("fork")
    held = context.Event()
    other = context.Process(target=_hold_lock, args=(here.lock_path, held, 0.3))
    other.start()
    try:
        assert held.wait(5)
        started = time.monotonic()
        assert here.revoke(B) == Diff((A,), ())
        assert time.monotonic() - started >= 0.2
        assert parse(path.read_bytes()) == {A.uid: A, B.uid: B}
    finally:
        other.join(5)


def test_a_lock_held_too_long_refuses_the_write(path, monkeypatch):
    here = Revocations(str(path))
    here.load()
    monkeypatch.setattr(rv, "LOCK_TIMEOUT", 0.2)
    context = multiprocessing.get_context("fork")
    held = context.Event()
    other = context.Process(target=_hold_lock, args=(here.lock_path, held, 1.0))
    other.start()
    try:
        assert held.wait(5)
        with pytest.raises(RevocationError, match="held by another writer .*nothing changed"):
            here.revoke(B)
        assert here.of(B.uid) is None
    finally:
        other.join(5)


# -- Operations: another node's change in force here ------------------------------------------------
def ask(ops: Operations, line: str):
    answer = ops.answer(ROOT, line.encode(), root_socket=True)
    assert isinstance(answer, bytes)
    return parse_response(answer.rstrip(b"\n"))


def test_another_nodes_revocation_stops_renewal_removes_the_file_and_is_audited(make_state):
    state = make_state()
    ops = Operations(state)
    assert ask(ops, "SJWT/1 OPEN user=nobody").ok and state.files.read(UID)
    theirs = Revocation("nobody", UID, 5, 0, "laptop stolen", "login7")
    write(Path(state.config.revocation_file), [theirs])
    ops.revocations_changed(state.revocations.refresh())
    assert state.files.read(UID) is None and UID not in state.schedule
    line = state.audit_log.lines[-1]
    assert {k: line.get(k) for k in ("decision", "op", "uid", "reason", "revoked_on", "detail")} == {
        "decision": "granted", "op": "revoke", "uid": UID, "reason": "revocation-file",
        "revoked_on": "login7", "detail": "laptop stolen"}
    refused = ask(ops, "SJWT/1 MINT user=nobody")
    assert not refused.ok and refused.code == "revoked"
    explained = ask(ops, "SJWT/1 EXPLAIN user=nobody").fields
    assert (explained["revoked_node"], explained["revoked_reason"]) == ("login7", "laptop stolen")
    write(Path(state.config.revocation_file), [])  # lifted there: renewed here at once
    ops.revocations_changed(state.revocations.refresh())
    assert state.audit_log.lines[-1]["op"] == "unrevoke" and UID in state.schedule
    ops.renew_due(time.time())
    assert state.files.read(UID) is not None


def test_status_says_when_the_file_cannot_be_read(make_state):
    state = make_state()
    ops = Operations(state)
    assert ask(ops, "SJWT/1 REVOKE user=nobody").ok
    Path(state.config.revocation_file).write_text("garbage")
    state.revocations.refresh()
    status = ask(ops, "SJWT/1 STATUS").fields
    assert status["revocation_file"].startswith("unreadable (not JSON") and status["revoked"] == "1"
    assert ask(ops, "SJWT/1 MINT user=nobody").code == "revoked"
