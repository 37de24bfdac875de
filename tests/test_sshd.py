"""Real SSH logins: OpenSSH's sshd with pam_slurmjwt.so in its PAM session stack.

The sshd runs on 127.0.0.1 under its own PAM service (tests/sshd_server.py), and the
tests log in with /usr/bin/ssh and a key, as a user would. The token a session gets is
checked with the daemon's key, used by squeue against the real slurmctld (tests/slurm_cluster.py)
from inside the session, refreshed there, and refused once the user has logged out.
Needs `make -C pam` (the module) and the venv's CLI.
"""

from __future__ import annotations

import re
import time

import jwt
import pytest

from conftest import SLURMJWT
from sshd_server import SshServer, pam_stack

PORT, SECOND_PORT = 2222, 2224
SERVICE = "sshd-sjt"
JWT = r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"


@pytest.fixture(scope="module")
def sshd(daemon, users, workdir):
    """sshd on 127.0.0.1:2222, the module in its session stack pointing at the shared daemon;
    every test user (the system user too) has an authorized key."""
    server = SshServer(workdir / "sshd", pam_stack(daemon.root_socket), port=PORT, service=SERVICE)
    for pw in users.values():
        server.add_key(pw.pw_name)
    server.start()
    yield server
    server.stop()


# -- helpers ----------------------------------------------------------------------------
def login(server: SshServer, user: str, command: str | None = None, **kw):
    run = server.ssh(user, command, **kw)
    assert run.returncode == 0, (f"ssh {user} exited {run.returncode}: {run.stderr}\n"
                                 f"sshd log:\n{server.tail()}")
    return run


def value(output: str, name: str) -> str | None:
    """NAME=VALUE printed by the remote side (not the pty's echo of `echo "NAME=..."`)."""
    found = re.search(rf"(?<![\w\"]){name}=(?!\$)([^\s\"]*)", output)
    return found.group(1) if found else None


def verified(daemon, token: str, user: str) -> dict:
    """The token's claims, its HS256 signature checked with the daemon's key."""
    claims = jwt.decode(token, daemon.key_file.read_bytes(), algorithms=["HS256"])
    assert claims["sun"] == user
    assert claims["exp"] - claims["iat"] == 3600
    return claims


def audit_lines(daemon, **fields: str) -> list[dict[str, str]]:
    """The daemon's audit lines having all FIELDS, as dicts (values here are never quoted)."""
    found = []
    for line in daemon.log.splitlines():
        if " AUDIT " in line:
            words = dict(w.split("=", 1) for w in line.split(" AUDIT ", 1)[1].split() if "=" in w)
            if all(words.get(k) == v for k, v in fields.items()):
                found.append(words)
    return found


def wait_for(predicate, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while not (result := predicate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


# -- tests ------------------------------------------------------------------------------
def test_login_gets_a_token_signed_with_the_daemons_key(sshd, daemon, users):
    alice = users["alice"].pw_name
    run = login(sshd, alice, 'echo "jwt=$SLURM_JWT"; echo "user=$(id -un)"')
    assert value(run.stdout, "user") == alice
    token = value(run.stdout, "jwt")
    assert token and re.fullmatch(JWT, token), f"no SLURM_JWT in the session: {run.stdout[:200]!r}"
    verified(daemon, token, alice)
    # a second login is a second session with a token of its own
    again = value(login(sshd, alice, 'echo "jwt=$SLURM_JWT"').stdout, "jwt")
    assert verified(daemon, again, alice)["jti"] != verified(daemon, token, alice)["jti"]


def test_session_token_runs_squeue_and_refreshes(sshd, daemon, users, slurm):
    alice = users["alice"].pw_name
    squeue = f"SLURM_CONF={slurm.conf} squeue"
    script = f"""
        echo "jwt=$SLURM_JWT"
        {squeue}; echo "squeue=$?"
        SLURM_JWT=$SLURM_JWT.x {squeue} >/dev/null 2>&1; echo "squeue_bad_token=$?"
        fresh=$(SLURMJWT_SOCKET={daemon.socket} {SLURMJWT} refresh); echo "refresh=$?"
        echo "$fresh"
        eval "$fresh"; {squeue} >/dev/null; echo "squeue_refreshed=$?"
    """
    run = login(sshd, alice, script)
    out = run.stdout
    assert "JOBID" in out, out
    assert value(out, "squeue") == "0", run.stderr
    # the same squeue with a spoiled token fails: it was the session's token that authenticated
    assert value(out, "squeue_bad_token") != "0"
    assert value(out, "refresh") == "0", run.stderr
    fresh = re.search(rf"^export SLURM_JWT=({JWT})$", out, re.MULTILINE)
    assert fresh, out
    first = verified(daemon, value(out, "jwt"), alice)
    second = verified(daemon, fresh.group(1), alice)
    assert second["jti"] != first["jti"]
    assert value(out, "squeue_refreshed") == "0", run.stderr


def test_pty_command_session_gets_the_token(sshd, daemon, users):
    alice = users["alice"].pw_name
    run = login(sshd, alice, 'echo "jwt=$SLURM_JWT"; echo "tty=$(tty)"', tty=True)
    assert value(run.stdout, "tty").startswith("/dev/pts/"), run.stdout
    verified(daemon, value(run.stdout, "jwt"), alice)


def test_interactive_login_shell_gets_the_token(sshd, daemon, users):
    alice = users["alice"].pw_name
    run = login(sshd, alice, tty=True, input='echo "jwt=$SLURM_JWT shell=$0 tty=$(tty)"; exit\n')
    out = run.stdout
    assert value(out, "shell") == "-sh", out  # sshd started the login shell, no command
    assert value(out, "tty").startswith("/dev/pts/"), out
    verified(daemon, value(out, "jwt"), alice)


def test_after_logout_the_user_is_refused_and_the_audit_shows_open_and_close(sshd, daemon, users):
    bob = users["bob"]
    assert daemon.token_as(bob.pw_name).returncode == 5, "bob has a session before logging in"
    run = login(sshd, bob.pw_name, f'echo "jwt=$SLURM_JWT"; '
                                   f'SLURMJWT_SOCKET={daemon.socket} {SLURMJWT} token >/dev/null; '
                                   f'echo "own_token=$?"')
    token = verified(daemon, value(run.stdout, "jwt"), bob.pw_name)
    assert value(run.stdout, "own_token") == "0", run.stderr  # while logged in, bob may mint

    opened = [a for a in audit_lines(daemon, decision="granted", op="open", user=bob.pw_name)
              if a.get("jti") == token["jti"]]
    assert len(opened) == 1, daemon.log[-2000:]
    opened = opened[0]
    assert opened["service"] == SERVICE and opened["rhost"] == "127.0.0.1"
    assert opened["caller_uid"] == "0"  # sshd's privileged process opened it
    session = opened["session"]

    # sshd closes the PAM session when the connection ends, just after ssh returns
    closed = wait_for(lambda: audit_lines(daemon, decision="granted", op="close", session=session))
    assert closed, f"no close for session {session}:\n{daemon.log[-2000:]}\n{sshd.tail()}"
    assert closed[0]["user"] == bob.pw_name
    assert closed[0]["caller_pid"] == opened["caller_pid"]  # the same process: the session's leader

    refused = daemon.token_as(bob.pw_name)
    assert refused.returncode == 5, f"{refused.returncode}: {refused.stderr}"


def test_system_user_logs_in_without_a_token(sshd, daemon, users):
    sys_user = users["sys"].pw_name
    run = login(sshd, sys_user, 'echo "jwt=${SLURM_JWT-unset}"; echo "user=$(id -un)"')
    assert value(run.stdout, "user") == sys_user
    assert value(run.stdout, "jwt") == "unset"
    assert audit_lines(daemon, decision="refused", op="open", user=sys_user, code="below-min-uid")


def test_login_works_without_a_token_while_the_daemon_is_down(make_daemon, users, workdir):
    alice = users["alice"].pw_name
    other = make_daemon()
    server = SshServer(workdir / "sshd-down", pam_stack(other.root_socket), port=SECOND_PORT,
                       service=f"{SERVICE}-down")
    server.add_key(alice)
    with server:
        # the control: with its daemon up this sshd hands out tokens
        up = login(server, alice, 'echo "jwt=${SLURM_JWT-unset}"')
        verified(other, value(up.stdout, "jwt"), alice)
        wait_for(lambda: audit_lines(other, op="close"))
        other.stop()
        started = time.monotonic()
        down = login(server, alice, 'echo "jwt=${SLURM_JWT-unset}"; echo "user=$(id -un)"')
        elapsed = time.monotonic() - started
    assert value(down.stdout, "user") == alice
    assert value(down.stdout, "jwt") == "unset"
    assert elapsed < 5, f"login took {elapsed:.1f} s with the daemon down"
