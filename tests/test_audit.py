"""`slurmjwt audit` on a real daemon's log (not under systemd: its stderr, a file): the
decisions of real logins, own requests, root's request and a refusal found again by user, jti,
node, decision and time, as text and JSON, with no token anywhere; the file named by
audit_file read by default; a file the caller may not read is one line. The journal's side
runs under a real systemd in test_pid1.py."""

from __future__ import annotations

import datetime
import json
import os
import socket

import jwt

from conftest import SLURMJWT, run_as, sh

NODE = socket.gethostname().split(".")[0]


def audit(*args: str, user: str | None = None, env: dict[str, str] | None = None):
    if user is None:
        return sh(SLURMJWT, "audit", *args, check=False, env=os.environ | (env or {}))
    return run_as(user, SLURMJWT, "audit", *args, env=env)


def decisions(result) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_audit_finds_each_decision_of_a_real_daemon(make_daemon, users, leaders, scratch):
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    start = datetime.datetime.now().astimezone().replace(microsecond=0)
    d = make_daemon()
    leader = leaders(d.root_socket, alice, tty="/dev/pts/3", rhost="192.0.2.9", service="sshd")
    own = d.token_as(alice)
    assert own.returncode == 0, own.stderr
    token = own.stdout.strip().split("=", 1)[1]
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    by_root = sh(SLURMJWT, "--socket", d.root_socket, "token", "--user", bob)
    root_token = by_root.stdout.strip().split("=", 1)[1]
    assert d.token_as(bob).returncode == 5  # no session: refused
    log = str(d.dir / "daemon.log")

    found = decisions(audit("--file", log, "--json"))
    assert [(e["decision"], e["op"], e["user"], e["caller_uid"]) for e in found] == [
        ("granted", "open", alice, 0), ("granted", "mint", alice, users["alice"].pw_uid),
        ("granted", "mint", bob, 0), ("refused", "mint", bob, users["bob"].pw_uid)]
    assert all(e["node"] == NODE for e in found)
    assert found[0]["jti"] == leader.fields["jti"] and found[0]["rhost"] == "192.0.2.9"
    assert found[0]["session"] == leader.session and found[0]["tty"] == "/dev/pts/3"
    assert found[3]["code"] == "no-session" and "jti" not in found[3]
    end = datetime.datetime.now().astimezone()
    times = [datetime.datetime.fromisoformat(e["time"]) for e in found]
    assert all(start <= t <= end for t in times) and times == sorted(times)

    assert decisions(audit("--file", log, "--json", "--jti", jti)) == [found[1]]
    assert decisions(audit("--file", log, "--json", "--user", alice)) == found[:2]
    assert decisions(audit("--file", log, "--json", "--user", bob, "--decision", "granted")) == [found[2]]
    assert decisions(audit("--file", log, "--json", "--op", "open", "--op", "mint",
                           "--decision", "refused")) == [found[3]]
    assert decisions(audit("--file", log, "--json", "--node", NODE, "--since", "-1h")) == found
    assert decisions(audit("--file", log, "--json", "--node", "not-" + NODE)) == []
    later = (end + datetime.timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S")
    assert decisions(audit("--file", log, "--json", "--since", later)) == []

    text = audit("--file", log, "--jti", jti)
    assert text.returncode == 0 and text.stderr == ""
    header, row = text.stdout.splitlines()
    assert header.split()[:3] == ["TIME", "NODE", "DECISION"]
    assert row.split()[2:8] == [NODE, "granted", "mint", alice, str(users["alice"].pw_uid), jti]

    # every output, as root and as alice, holds no token
    everything = audit("--file", log).stdout + audit("--file", log, "--json").stdout
    everything += audit("--file", log, user=alice).stdout
    for secret in (token, root_token):
        assert secret not in everything and secret.split(".")[2] not in everything
    leader.close()


def test_audit_file_is_read_by_default_and_an_unreadable_source_is_one_line(make_daemon, users,
                                                                            leaders, scratch):
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    d = make_daemon()
    leader = leaders(d.root_socket, alice)
    log = d.dir / "daemon.log"
    config = scratch / "slurmjwtd.toml"
    config.write_text(f'audit_file = "{log}"\n')
    os.chmod(config, 0o644)
    env = {"SLURMJWT_CONFIG": str(config)}
    found = decisions(audit("--json", "--jti", leader.fields["jti"], env=env))
    assert [(e["op"], e["user"], e["node"]) for e in found] == [("open", alice, NODE)]

    os.chmod(log, 0o600)  # as a site keeps its audit log: root's to read
    denied = audit("--user", alice, user=bob, env=env)
    assert (denied.returncode, denied.stdout) == (1, "")
    assert denied.stderr == (f"slurmjwt: cannot read {log}: Permission denied (run as root, or "
                             f"as a user its mode lets read)\n")
    assert decisions(audit("--json", "--user", alice, env=env)) == found  # root still reads it
    leader.close()
