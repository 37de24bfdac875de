"""Token files and their renewal, in process: the schedule (renewal.py), the daemon's writer
(tokenfile.TokenFiles, with its ACL), the revocation list, and Operations renewing, refusing
and removing files on a fake state. The end-to-end tests through sshd and slurmctld are
tests/test_renewal.py."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import time

import jwt
import pytest

from slurmjwtd.atomicfile import ACL_XATTR
from slurmjwtd.operations import Operations
from slurmjwtd.policy import Caller
from slurmjwtd.protocol import parse_response
from slurmjwtd.renewal import (RENEW_FROM, RENEW_TO, RETRY_LATE, RETRY_MAX, RETRY_MIN, Schedule,
                               renew_at, retry_at)
from slurmjwtd.revocation import Revocation, RevocationError, Revocations
from slurmjwtd.tokenfile import R, W, X, TokenFiles, acl, acl_users, token_path

from .conftest import NOBODY, ROOT

UID = NOBODY.pw_uid


# -- the schedule ---------------------------------------------------------------------------
@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
@pytest.mark.parametrize("lifetime", [10, 900, 3600])
def test_renewal_falls_between_half_and_three_quarters_of_the_lifetime(draw, lifetime):
    due = renew_at(1000, 1000 + lifetime, draw)
    assert 1000 + RENEW_FROM * lifetime <= due < 1000 + RENEW_TO * lifetime + 1e-6


def test_a_login_storm_does_not_come_back_as_a_renewal_storm():
    """10,000 tokens issued in the same second: their renewals spread over a quarter of the
    lifetime, no second holding more than twice its share."""
    schedule = Schedule(random.Random(7))
    for uid in range(10_000):
        schedule.issued(uid, 0, 900)
    seconds: dict[int, int] = {}
    while (due := schedule.next_due()) is not None:
        for _ in schedule.pop_due(due, 10_000):
            seconds[int(due)] = seconds.get(int(due), 0) + 1
    assert min(seconds) >= 450 and max(seconds) < 675
    assert max(seconds.values()) <= 2 * 10_000 / 225


@pytest.mark.parametrize("left, wait", [(800, RETRY_MAX), (80, 10), (4, RETRY_MIN), (0, RETRY_LATE),
                                        (-30, RETRY_LATE), (-100, RETRY_LATE)])
def test_a_failed_renewal_is_retried_sooner_as_expiry_nears(left, wait):
    assert retry_at(100, 100 + left) == 100 + wait


def test_pop_due_takes_the_earliest_up_to_a_limit_and_forgets_replaced_entries():
    schedule = Schedule(random.Random(1))
    schedule.overdue(1, 100, spread=0)
    schedule.overdue(2, 101, spread=0)
    schedule.overdue(3, 102, spread=0)
    schedule.overdue(2, 500, spread=0)  # replaced: its old time must not fire
    schedule.cancel(3)
    assert schedule.pop_due(200, 10) == [1]
    assert 2 in schedule and 3 not in schedule and len(schedule) == 1
    assert schedule.next_due() == 500 and schedule.pop_due(499, 10) == []
    for uid in range(10):
        schedule.overdue(uid + 10, 600, spread=0)
    assert len(schedule.pop_due(600, 4)) == 4 and len(schedule) == 7


@pytest.mark.parametrize("churn", ["login-logout", "re-issued", "many-users"])
def test_replaced_and_cancelled_entries_do_not_pile_up(churn):
    """Every login (issued) and last logout (cancel) leaves a stale heap entry, which surfaced
    only when due, half a lifetime on: 100,000 logins and logouts in that time kept 100,000
    entries (bench.py's `memory`). The heap stays within twice the live entries and a constant,
    and still gives the live ones, earliest first."""
    schedule = Schedule(random.Random(3))
    live = {uid: None for uid in range(50)} if churn == "many-users" else {}
    for uid in live:
        live[uid] = schedule.issued(uid, 1000.0, 4600.0)
    for i in range(100_000):
        if churn == "login-logout":
            schedule.issued(7, 1000.0 + i, 4600.0 + i)
            schedule.cancel(7)
        elif churn == "re-issued":
            live[7] = schedule.issued(7, 1000.0 + i, 4600.0 + i)
        else:
            uid = 1000 + i % 5000
            schedule.issued(uid, 1000.0, 4600.0)
            schedule.cancel(uid)
        assert len(schedule._heap) <= 2 * len(schedule) + Schedule.STALE_SLACK
    assert len(schedule) == len(live)
    assert schedule.pop_due(1e9, 1000) == sorted(live, key=lambda uid: (live[uid], uid))


def test_a_failure_is_retried_by_the_expiry_of_the_token_still_in_the_file():
    schedule = Schedule(random.Random(2))
    schedule.issued(5, 0, 100)
    assert schedule.pop_due(100, 1) == [5]  # under way: the expiry is kept
    assert schedule.expiry(5) == 100
    schedule.failed(5, 60)
    entry = schedule.get(5)
    assert entry is not None and entry.due == 60 + 40 / 8
    schedule.failed(5, 101)  # expired meanwhile
    assert schedule.get(5).due == 101 + RETRY_LATE
    schedule.cancel(5)
    assert schedule.expiry(5) == 0 and 5 not in schedule
    schedule.failed(6, 10)  # never issued: no token to protect
    assert schedule.get(6).due == 10 + RETRY_LATE


# -- the daemon's writer ----------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    files = TokenFiles(str(tmp_path / "tokens"))
    files.open()
    yield files
    files.close()


def test_the_file_is_the_daemons_and_its_user_reads_it_by_acl(files, tmp_path):
    files.write(UID, "a.b.c")
    path = tmp_path / "tokens" / str(UID) / "token"
    assert path.read_text() == "a.b.c\n" and files.read(UID) == "a.b.c"
    st, directory = path.stat(), path.parent.stat()
    assert st.st_uid == directory.st_uid == os.geteuid()
    assert stat.S_IMODE(st.st_mode) == 0o640 and stat.S_IMODE(directory.st_mode) == 0o750  # mask
    assert acl_users(os.getxattr(path, ACL_XATTR)) == {UID: R}
    assert acl_users(os.getxattr(path.parent, ACL_XATTR)) == {UID: R | X}
    files.write(UID, "d.e.f")
    assert files.read(UID) == "d.e.f" and os.listdir(path.parent) == ["token"]
    assert files.users() == [UID]
    files.remove(UID)
    # the file goes; its directory stays, empty, the daemon's and 0700 (mask: 0750) with the
    # user's r-x, for her next login (no mkdir, no ACL then)
    assert not path.exists() and os.listdir(path.parent) == []
    directory = path.parent.stat()
    assert directory.st_uid == os.geteuid() and stat.S_IMODE(directory.st_mode) == 0o750
    assert acl_users(os.getxattr(path.parent, ACL_XATTR)) == {UID: R | X}
    files.remove(UID)  # already gone: quietly
    files.write(UID, "g.h.i")
    assert files.read(UID) == "g.h.i" and os.stat(path.parent).st_ino == directory.st_ino
    assert acl_users(os.getxattr(path, ACL_XATTR)) == {UID: R}
    files.remove(UID)
    assert not path.exists() and files.users() == [UID]
    # the next run (a restart) removes a directory it did not make, with all in it
    files.close()
    again = TokenFiles(files.base)
    again.open()
    again.remove(UID)
    assert not path.parent.exists() and again.users() == []
    again.close()


def test_a_dead_writers_temporary_file_never_outlives_the_login(files, tmp_path):
    """A daemon killed between making its temporary file and the rename leaves it (with the
    user's read ACL): the next run takes it, at the user's next login or last logout."""
    directory = tmp_path / "tokens" / str(UID)
    files.write(UID, "a.b.c")
    files.close()
    stale = directory / ".token.tmp-999999999"  # no such pid: an earlier run's
    stale.write_text("d.e.f\n")
    again = TokenFiles(files.base)  # a restart; the user logs in again
    again.open()
    again.write(UID, "g.h.i")
    assert os.listdir(directory) == ["token"]
    again.remove(UID)
    assert os.listdir(directory) == []
    stale.write_text("d.e.f\n")  # the same, and the next run sees no login before the logout
    third = TokenFiles(files.base)
    third.open()
    third.remove(UID)
    assert not directory.exists()
    third.close()
    again.close()


def test_acl_entries_are_what_acl5_says():
    value = acl(R | W, 1234, R)
    assert value[:4] == b"\x02\x00\x00\x00" and len(value) == 4 + 5 * 8
    assert acl_users(value) == {1234: R}


def test_a_base_directory_others_can_write_is_refused(tmp_path):
    base = tmp_path / "open"
    base.mkdir(mode=0o777)
    base.chmod(0o777)
    with pytest.raises(PermissionError, match=r"not writable by others"):
        TokenFiles(str(base)).open()


def test_a_link_planted_for_a_user_directory_is_not_followed(files, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "tokens" / str(UID)).symlink_to(elsewhere)
    with pytest.raises(OSError):
        files.write(UID, "a.b.c")
    assert files.read(UID) is None and list(elsewhere.iterdir()) == []
    files.remove(UID)
    assert elsewhere.exists()


# -- the revocation list ----------------------------------------------------------------------
def test_revocations_are_saved_before_they_count_and_read_back(tmp_path):
    path = tmp_path / "revoked.json"
    revocations = Revocations(str(path))
    assert revocations.load() == 0
    revocations.revoke(Revocation("nobody", UID, 10, 0, "why"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Revocations(str(path))
    assert again.load() == 1 and again.of(UID) == Revocation("nobody", UID, 10, 0, "why")
    assert again.unrevoke(UID)[0] is not None and again.unrevoke(UID)[0] is None
    assert Revocations(str(path)).load() == 0


def test_a_revocation_that_cannot_be_saved_changes_nothing(tmp_path):
    revocations = Revocations(str(tmp_path / "missing-dir" / "revoked.json"))
    with pytest.raises(RevocationError, match="nothing changed"):
        revocations.revoke(Revocation("nobody", UID, 10, 0, ""))
    assert revocations.of(UID) is None and len(revocations) == 0


@pytest.mark.parametrize("text", ["{", "[{\"user\": 1}]", "[1]"])
def test_an_unreadable_revocation_file_is_an_error_not_an_empty_list(tmp_path, text):
    path = tmp_path / "revoked.json"
    path.write_text(text)
    with pytest.raises(RevocationError, match="unreadable"):
        Revocations(str(path)).load()


# -- Operations renewing --------------------------------------------------------------------
def ask(ops: Operations, line: str):
    answer = ops.answer(ROOT, line.encode(), root_socket=True)
    assert isinstance(answer, bytes)
    return parse_response(answer.rstrip(b"\n"))


def opened(make_state, **settings):
    state = make_state(**settings)
    ops = Operations(state)
    answer = ask(ops, "SJWT/1 OPEN user=nobody")
    assert answer.ok, answer
    return state, ops, answer


def test_open_writes_the_file_and_plans_its_renewal(make_state, key_file):
    state, ops, answer = opened(make_state, lifetime=100)
    path = token_path(state.config.token_dir, UID)
    assert answer.fields["file"] == path
    assert open(path).read() == answer.fields["token"] + "\n"
    entry = state.schedule.get(UID)
    iat = int(answer.fields["exp"]) - 100
    assert entry is not None and iat + 50 <= entry.due <= iat + 75


def test_a_due_renewal_replaces_the_file_and_is_audited(make_state, key_file):
    state, ops, answer = opened(make_state, lifetime=100)
    state.schedule.overdue(UID, time.time(), spread=0)
    ops.renew_due(time.time())
    token = state.files.read(UID)
    assert token and token != answer.fields["token"]
    claims = jwt.decode(token, key_file.read_bytes(), algorithms=["HS256"])
    assert claims["sun"] == "nobody" and claims["exp"] - claims["iat"] == 100
    line = state.audit_log.lines[-1]
    assert (line["decision"], line["op"], line["reason"], line["uid"]) == ("granted", "renew", "renewal", UID)
    assert state.counters.renewed == 1 and UID in state.schedule


def test_a_revoked_user_is_not_renewed_and_loses_the_file(make_state):
    state, ops, _ = opened(make_state)
    assert ask(ops, "SJWT/1 REVOKE user=nobody reason=gone").ok
    assert state.files.read(UID) is None and UID not in state.schedule
    state.schedule.overdue(UID, time.time(), spread=0)  # were it planned anyway: refused
    ops.renew_due(time.time())
    assert state.files.read(UID) is None and UID not in state.schedule
    assert state.audit_log.lines[-1]["reason"] == "revoked"
    assert ask(ops, "SJWT/1 UNREVOKE user=nobody").fields["was_revoked"] == "yes"
    ops.renew_due(time.time())
    assert state.files.read(UID) is not None


def test_a_renewal_whose_session_is_gone_removes_the_file(make_state, gone_pid):
    state, ops, answer = opened(make_state)
    session = state.registry.close(answer.fields["session"])
    assert session is not None
    ops.forget_emptied()
    assert state.files.read(UID) is None and UID not in state.schedule


def test_a_failing_signer_leaves_the_old_token_and_retries(make_state, scontrol):
    state, ops, answer = opened(make_state)
    state.signer = scontrol("echo 'scontrol: error: down' >&2; exit 1", timeout=2)
    state.schedule.overdue(UID, time.time(), spread=0)
    ops.renew_due(time.time())
    deadline = time.monotonic() + 5
    while ops._renewing and time.monotonic() < deadline:
        time.sleep(0.01)
        ops.renewals_done()
    assert state.files.read(UID) == answer.fields["token"]
    entry = state.schedule.get(UID)
    assert entry is not None and entry.due <= time.time() + RETRY_MAX
    assert state.audit_log.lines[-1]["code"] == "signer-unavailable"
    ops.shutdown()


def test_resume_plans_from_the_files_and_removes_those_no_session_keeps(make_state):
    state, ops, answer = opened(make_state, lifetime=100)
    state.files.write(4242, "x.y.z")  # no session keeps it
    state.files.close()
    state.files = TokenFiles(state.files.base)  # a restart: a new run resumes
    state.files.open()
    fresh = Operations(state)
    state.schedule.cancel(UID)
    fresh.resume(time.time())
    assert UID in state.schedule and state.schedule.expiry(UID) == int(answer.fields["exp"])
    assert state.files.users() == [UID]


def test_a_login_whose_process_died_without_closing_loses_its_file_at_its_next_renewal(make_state):
    """sshd killed: no CLOSE ever comes; the renewal finds the leader gone and removes the file."""
    state = make_state()
    ops = Operations(state)
    leader = subprocess.Popen(["sleep", "60"])
    try:
        answer = ops.answer(Caller(0, 0, leader.pid), b"SJWT/1 OPEN user=nobody", root_socket=True)
        assert b" file=" in answer and state.files.read(UID) is not None
    finally:
        leader.kill()
        leader.wait()
    state.schedule.overdue(UID, time.time(), spread=0)
    ops.renew_due(time.time())
    assert state.files.read(UID) is None and UID not in state.schedule
    assert not [line for line in state.audit_log.lines if line.get("op") == "renew"]
