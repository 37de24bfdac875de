"""SessionRegistry: sessions open while their leader lives, by (pid, start time); saved to
its file in tmp_path and read back as a restarted daemon reads it, stale sessions dropped.
Leaders are this process (live), a child that has exited (gone) and, for a reused pid, this
process's pid with another start time."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from slurmjwtd.sessions import Session, SessionRegistry, process_start_time

UID, OTHER_UID = 65534, 65533
ME = os.getpid()


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "sessions.json")


def open_session(registry: SessionRegistry, pid: int = ME, uid: int = UID) -> Session:
    session = registry.open("nobody", uid, pid, "ssh", "10.0.0.5", "sshd")
    assert session is not None
    return session


def record(session: Session, **changes: object) -> dict:
    return dataclasses.asdict(dataclasses.replace(session, **changes))


def test_a_session_opens_while_its_leader_lives(path):
    registry = SessionRegistry(path)
    session = open_session(registry)
    assert (session.user, session.uid, session.leader_pid, session.tty) == ("nobody", UID, ME, "ssh")
    assert session.leader_start == process_start_time(ME) and session.is_live()
    assert len(session.id) == 16 and abs(session.started - time.time()) < 5
    assert registry.dirty and len(registry) == 1
    assert registry.has_live_session(UID) and not registry.has_live_session(OTHER_UID)
    assert registry.remaining(UID) == 1


def test_no_session_for_a_leader_already_gone(path, gone_pid):
    registry = SessionRegistry(path)
    assert registry.open("nobody", UID, gone_pid, "", "", "") is None
    assert len(registry) == 0 and not registry.dirty


def test_close(path):
    registry = SessionRegistry(path)
    first, second = open_session(registry), open_session(registry)
    assert first.id != second.id
    assert registry.close(first.id) == first and registry.remaining(UID) == 1
    assert registry.close(first.id) is None  # not open any more
    assert registry.close(second.id) == second
    assert registry.remaining(UID) == 0 and not registry.has_live_session(UID) and len(registry) == 0


def test_saved_and_read_back(path):
    registry = SessionRegistry(path)
    sessions = [open_session(registry), open_session(registry, uid=OTHER_UID)]
    registry.save()
    assert not registry.dirty
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(Path(path).read_text()) == [dataclasses.asdict(s) for s in sessions]
    assert [p.name for p in Path(path).parent.iterdir()] == ["sessions.json"]  # no temporary left
    restarted = SessionRegistry(path)
    assert restarted.load() == 2 and not restarted.dirty
    assert restarted.has_live_session(UID) and restarted.has_live_session(OTHER_UID)
    assert restarted.close(sessions[0].id) == sessions[0]


def test_stale_sessions_are_dropped_when_read_back(path, gone_pid):
    registry = SessionRegistry(path)
    live = open_session(registry)
    Path(path).write_text(json.dumps([
        record(live),
        record(live, id="1" * 16, leader_pid=gone_pid),  # its leader has exited
        record(live, id="2" * 16, leader_start=live.leader_start + 1),  # the pid, reused
    ]))
    restarted = SessionRegistry(path)
    assert restarted.load() == 1
    assert restarted.dirty  # the file still names the dead: written again
    assert restarted.close(live.id) == live and len(restarted) == 0


def test_no_file_is_no_sessions(path):
    assert SessionRegistry(path).load() == 0


@pytest.mark.parametrize("text", ["", "{", "[1]", '[{"id": "x"}]', "\xff"])
def test_an_unreadable_file_is_refused(path, text):
    Path(path).write_text(text, encoding="latin-1")
    with pytest.raises(ValueError, match="unreadable .* move it aside"):
        SessionRegistry(path).load()


@pytest.fixture
def child():
    """A live process of our own, to lead a session and then die."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_session_stops_counting_when_its_leader_exits(path, child):
    registry = SessionRegistry(path)
    session = open_session(registry, pid=child.pid)
    registry.save()
    assert registry.has_live_session(UID)
    child.kill()
    child.wait()
    assert not session.is_live()
    assert not registry.has_live_session(UID) and registry.remaining(UID) == 0
    assert len(registry) == 0 and registry.dirty  # dropped when met


def test_the_sweep_drops_only_the_dead(path, child):
    registry = SessionRegistry(path)
    live, dead = open_session(registry), open_session(registry, pid=child.pid, uid=OTHER_UID)
    child.kill()
    child.wait()
    registry.save()
    assert registry.prune() == 1 and registry.dirty
    assert len(registry) == 1 and registry.close(dead.id) is None and registry.close(live.id) == live


@pytest.mark.parametrize("dead_first, remaining", [(False, 2), (True, 1)])
def test_remaining_reads_proc_once_while_a_session_lives(path, child, dead_first, remaining):
    """REMAINING: what the uid has registered once a live one is met; the dead met before it
    are dropped, the rest wait for the sweep (one /proc read per call, not one per session)."""
    registry = SessionRegistry(path)
    for pid in ((child.pid, ME) if dead_first else (ME, child.pid)):
        open_session(registry, pid=pid)
    child.kill()
    child.wait()
    assert registry.remaining(UID) == remaining and registry.has_live_session(UID)
    assert registry.prune() == remaining - 1 and registry.remaining(UID) == 1


def test_a_zombie_leader_has_exited():
    proc = subprocess.Popen(["true"])
    try:
        stat_file = Path(f"/proc/{proc.pid}/stat")
        deadline = time.monotonic() + 10
        while stat_file.read_bytes().rsplit(b") ", 1)[1][:1] != b"Z":  # exited, not reaped
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert process_start_time(proc.pid) is None
    finally:
        proc.wait()
