"""Who gets a token, through the real socket, as real users made with useradd."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import jwt

from conftest import PYTHON, SLURMJWT, run_as
from slurmjwtd.client import call
from slurmjwtd.sessions import Session


def token_of(result) -> str:
    assert result.returncode == 0, result.stderr
    name, _, token = result.stdout.strip().partition("=")
    assert name == "SLURM_JWT"
    return token


def claims(daemon, token: str) -> dict:
    return jwt.decode(token, daemon.key_file.read_bytes(), algorithms=["HS256"])


def test_test_users_can_run_the_cli(daemon, users):
    result = run_as(users["alice"].pw_name, SLURMJWT, "--version")
    assert result.returncode == 0 and "slurmjwt" in result.stdout, result.stderr


def test_user_without_a_session_is_refused(daemon, users):
    result = daemon.token_as(users["alice"].pw_name)
    assert result.returncode == 5
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "no-session" in result.stderr


def test_root_opens_a_session_then_the_user_gets_their_own_token(daemon, users, leaders):
    alice = users["alice"].pw_name
    leader = leaders(daemon.root_socket, alice, tty="/dev/pts/9", rhost="10.0.0.5", service="sshd")
    c = claims(daemon, token_of(daemon.token_as(alice)))
    assert c["sun"] == alice and c["exp"] - c["iat"] == 3600 and len(c["jti"]) == 16
    short = claims(daemon, token_of(daemon.token_as(alice, "--lifetime", "600")))
    assert short["exp"] - short["iat"] == 600
    refresh = run_as(alice, SLURMJWT, "refresh", env={"SLURMJWT_SOCKET": daemon.socket})
    assert refresh.returncode == 0
    assert refresh.stdout.startswith("export SLURM_JWT=")
    claims(daemon, refresh.stdout.strip().split("=", 1)[1])
    assert leader.close() == "OK"
    assert daemon.token_as(alice).returncode == 5  # the last session closed


def test_a_session_counts_only_for_its_own_user(daemon, users, leaders):
    leaders(daemon.root_socket, users["alice"].pw_name)
    assert daemon.token_as(users["bob"].pw_name).returncode == 5


def test_a_user_cannot_get_a_token_for_another(daemon, users, leaders):
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    leaders(daemon.root_socket, alice)
    leaders(daemon.root_socket, bob)
    result = daemon.token_as(alice, "--user", bob)
    assert result.returncode == 4 and "permission-denied" in result.stderr
    assert result.stdout == ""
    assert claims(daemon, token_of(daemon.token_as(alice, "--user", alice)))["sun"] == alice


def test_a_session_whose_leader_died_stops_counting(daemon, users, leaders):
    alice = users["alice"].pw_name
    leader = leaders(daemon.root_socket, alice)
    assert daemon.token_as(alice).returncode == 0
    leader.die()
    assert daemon.token_as(alice).returncode == 5


def test_a_reused_pid_is_not_the_leader(users):
    start = int(open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19])
    same = Session("x", "alice", 1001, os.getpid(), start, "", "", "", 0)
    reused = Session("x", "alice", 1001, os.getpid(), start + 1, "", "", "", 0)
    assert same.is_live() and not reused.is_live()


def raw_call_as(caller: str, socket: str, op: str, **args: str):
    """Send one request as CALLER with the project's client, return (ok, code)."""
    code = ("import sys; from slurmjwtd.client import call; "
            f"a = call({socket!r}, {op!r}, {args!r}); print(a.ok, a.code)")
    result = run_as(caller, PYTHON, "-c", code)
    assert result.returncode == 0, result.stderr
    ok, _, err = result.stdout.strip().partition(" ")
    return ok == "True", err


def test_only_root_opens_and_closes_sessions(daemon, users, leaders):
    alice = users["alice"].pw_name
    assert raw_call_as(alice, daemon.socket, "OPEN", user=alice) == (False, "permission-denied")
    leader = leaders(daemon.root_socket, alice)
    assert raw_call_as(alice, daemon.socket, "CLOSE", session=leader.session) == (
        False, "permission-denied")
    assert daemon.token_as(alice).returncode == 0  # the session is still open


def test_unknown_low_uid_and_greedy_requests_are_refused(daemon, users):
    env = {"SLURMJWT_SOCKET": daemon.socket}
    unknown = run_as("root", SLURMJWT, "token", "--user", "sjt-nosuchuser", env=env)
    assert unknown.returncode == 4 and "unknown-user" in unknown.stderr
    low = run_as("root", SLURMJWT, "token", "--user", users["sys"].pw_name, env=env)
    assert low.returncode == 4 and "below-min-uid" in low.stderr
    root = run_as("root", SLURMJWT, "token", env=env)
    assert root.returncode == 4 and "below-min-uid" in root.stderr
    greedy = run_as("root", SLURMJWT, "token", "--user", users["alice"].pw_name,
                    "--lifetime", "43201", env=env)
    assert greedy.returncode == 4 and "lifetime-too-long" in greedy.stderr
    answer = call(daemon.root_socket, "OPEN", {"user": users["sys"].pw_name})
    assert not answer.ok and answer.code == "below-min-uid"


def test_sessions_survive_a_restart(make_daemon, users, leaders):
    alice = users["alice"].pw_name
    d = make_daemon()
    leaders(d.root_socket, alice)
    assert d.stop() == 0
    assert not os.path.exists(d.socket) and not os.path.exists(d.root_socket)
    saved = d.dir / "sessions.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert [s["user"] for s in json.loads(saved.read_text())] == [alice]
    d.start()
    assert d.token_as(alice).returncode == 0


def test_every_decision_is_audited_and_no_token_is_logged(make_daemon, users, leaders):
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    d = make_daemon()
    leader = leaders(d.root_socket, alice, tty="/dev/pts/4", rhost="192.0.2.7", service="sshd")
    token = token_of(d.token_as(alice))
    d.token_as(bob)
    leader.close()
    d.stop()
    log = d.log
    assert token not in log and d.key_file.read_bytes().hex() not in log
    lines = [line for line in log.splitlines() if "decision=" in line]
    assert len(lines) == 4, lines
    opened, granted, refused, closed = lines
    assert "decision=granted op=open caller_uid=0" in opened and f"user={alice}" in opened
    assert "rhost=192.0.2.7" in opened and f"session={leader.session}" in opened
    assert "exp=" in opened and "jti=" in opened
    assert f"op=mint caller_uid={users['alice'].pw_uid}" in granted
    assert f"jti={claims(d, token)['jti']}" in granted and "reason=own-session" in granted
    assert f"decision=refused op=mint caller_uid={users['bob'].pw_uid}" in refused
    assert "reason=no-session" in refused
    assert "decision=granted op=close" in closed


def test_status_json_and_metrics(daemon, users, leaders):
    """status --json: STATUS' fields, counts as numbers, and the socket; metrics: Prometheus'
    text format, refusals by code, latency; no user's name, no token, for any user to read."""
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    env = {"SLURMJWT_SOCKET": daemon.socket}
    before = json.loads(run_as(bob, SLURMJWT, "status", "--json", env=env).stdout)
    leaders(daemon.root_socket, alice)
    token_of(daemon.token_as(alice))
    assert daemon.token_as(bob).returncode == 5  # no-session
    status = run_as(bob, SLURMJWT, "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    now = json.loads(status.stdout)
    assert now["socket"] == daemon.socket and now["signer"] == "hs256" and now["protocol"] == 1
    assert now["granted"] >= before["granted"] + 2 and now["refused"] >= before["refused"] + 1
    assert all(isinstance(now[k], int) for k in ("sessions", "granted", "refused", "uptime"))
    metrics = run_as(bob, SLURMJWT, "metrics", env=env)
    assert metrics.returncode == 0, metrics.stderr
    text = metrics.stdout
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert samples["slurmjwt_up"] == "1"
    assert int(samples['slurmjwt_refusals_total{code="no-session"}']) >= 1
    assert int(samples["slurmjwt_grants_total"]) >= now["granted"]
    assert int(samples['slurmjwt_request_duration_seconds_bucket{le="+Inf"}']) == int(
        samples["slurmjwt_request_duration_seconds_count"]) > 0
    assert "# TYPE slurmjwt_request_duration_seconds histogram" in text
    assert alice not in text and bob not in text and "eyJ" not in text
    down = run_as(bob, SLURMJWT, "metrics", env={"SLURMJWT_SOCKET": "/nonexistent/sock"})
    assert down.returncode == 3 and "slurmjwt_up 0" in down.stdout
    out = daemon.dir / "slurmjwt.prom"
    written = subprocess.run([SLURMJWT, "--socket", daemon.socket, "metrics", "--output", str(out)],
                             capture_output=True, text=True, timeout=30, check=False)
    assert written.returncode == 0 and written.stdout == "", written.stderr
    assert "slurmjwt_up 1\n" in out.read_text() and stat.S_IMODE(out.stat().st_mode) == 0o644


def test_cli_show_status_and_errors(daemon, users, leaders):
    alice = users["alice"].pw_name
    leaders(daemon.root_socket, alice)
    env = {"SLURMJWT_SOCKET": daemon.socket}
    token = token_of(daemon.token_as(alice))
    shown = run_as(alice, SLURMJWT, "show", env={"SLURM_JWT": token})
    assert shown.returncode == 0 and f"user:    {alice}" in shown.stdout
    assert "left:    1h 00m" in shown.stdout or "left:    59m" in shown.stdout
    from_stdin = run_as(alice, SLURMJWT, "show", "-", input=token + "\n")
    assert from_stdin.stdout.split("left:")[0] == shown.stdout.split("left:")[0]
    bad = run_as(alice, SLURMJWT, "show", env={"SLURM_JWT": "not-a-token"})
    assert bad.returncode == 7 and bad.stderr.count("\n") == 1
    status = run_as(alice, SLURMJWT, "status", env=env)
    assert status.returncode == 0 and "signer hs256" in status.stdout
    down = run_as(alice, SLURMJWT, "status", env={"SLURMJWT_SOCKET": "/nonexistent/sock"})
    assert down.returncode == 3 and down.stderr.count("\n") == 1 and down.stdout == ""
