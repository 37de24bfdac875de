"""Revocation across login nodes: two real daemons on this machine, each with its own sockets,
sessions and token files, sharing one revocation file as two nodes share it on /etc/slurm.
A revocation on one is in force on the other within seconds (its live user's token file goes,
the user's own request is refused `revoked`, its audit says so, naming the node that revoked);
an unrevoke on the other lifts it on the first; revocations made at the same moment on both
nodes are all kept (the writers' lock); and a node whose file vanishes (its share unmounted)
or cannot be parsed keeps refusing what it last knew, says so once in its log, in STATUS and
in doctor, and says once when it can read the file again. Pure parts: tests/unit/test_revocation.py."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import SLURMJWT

SETTLE = 3.0  # seconds within which a change on one node holds on the other (it looks once a second)


def cli(d, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SLURMJWT, "--socket", d.socket, *args], capture_output=True, text=True,
                          timeout=30)


def token_file(d, uid: int) -> Path:
    return d.dir / "tokens" / str(uid) / "token"


def wait_for(what, seconds: float = SETTLE, step: float = 0.05):
    deadline = time.monotonic() + seconds
    while True:
        value = what()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def refused_revoked(d, user: str) -> bool:
    own = d.token_as(user)
    return own.returncode == 4 and "refused (revoked)" in own.stderr


def granted(d, user: str) -> bool:
    return d.token_as(user).returncode == 0


def audit(d, *words: str) -> list[str]:
    return [line for line in d.log.splitlines() if " AUDIT " in line and all(w in line for w in words)]


@pytest.fixture
def share(workdir):
    """The shared directory (as /etc/slurm/slurmjwt on every node), and for node B a path to
    it through a link it can lose (its share unmounted) while A keeps it."""
    shared = workdir / "fleet"
    mount_b = workdir / "fleet-b"
    for path in (shared, mount_b):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    shared.mkdir(mode=0o755)
    mount_b.symlink_to(shared)
    yield shared, mount_b
    mount_b.unlink(missing_ok=True)
    subprocess.run(["rm", "-rf", str(shared)], check=True)


@pytest.fixture
def nodes(make_daemon, share):
    shared, mount_b = share
    a = make_daemon(revocation_file=str(shared / "revoked.json"))
    b = make_daemon(revocation_file=str(mount_b / "revoked.json"))
    return a, b


@pytest.fixture
def logged_in(nodes, leaders, users):
    """alice and bob logged in on both nodes."""
    for d in nodes:
        for user in ("alice", "bob"):
            leaders(d.root_socket, users[user].pw_name)
    return nodes


def test_a_revocation_on_one_node_holds_on_the_other_and_an_unrevoke_there_lifts_it(
        logged_in, users, share):
    a, b = logged_in
    alice = users["alice"]
    name, uid = alice.pw_name, alice.pw_uid
    assert granted(b, name) and token_file(b, uid).exists()

    revoked = cli(a, "revoke", name, "--reason", "laptop stolen")
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()
    assert wait_for(lambda: refused_revoked(b, name)), b.log
    assert time.monotonic() - started < SETTLE
    assert wait_for(lambda: not token_file(b, uid).exists()), "B kept the revoked user's token file"
    assert granted(b, users["bob"].pw_name)  # nobody else
    lines = audit(b, "op=revoke", f"user={name}")
    assert len(lines) == 1, b.log
    assert "reason=revocation-file" in lines[0] and 'detail="laptop stolen"' in lines[0]
    assert f"revoked_on={socket.gethostname()}" in lines[0]
    explained = cli(b, "policy", name)
    assert explained.returncode == 4
    assert f"by uid 0 on {socket.gethostname()}: laptop stolen" in explained.stdout
    assert "1 user(s) revoked" in cli(b, "status").stdout
    assert len(audit(a, "op=revoke")) == 1  # A audits its own once, not again from the file

    lifted = cli(b, "unrevoke", name)
    assert lifted.returncode == 0 and lifted.stdout.strip().endswith("unrevoked"), lifted.stderr
    assert wait_for(lambda: granted(a, name)), a.log
    assert wait_for(lambda: token_file(a, uid).exists()), "A did not renew the lifted user's file"
    assert len(audit(a, "op=unrevoke", "reason=revocation-file", f"user={name}")) == 1
    assert json.loads((share[0] / "revoked.json").read_text()) == []


def test_revocations_made_at_the_same_moment_on_two_nodes_are_all_kept(nodes, users, share):
    a, b = nodes
    shared, _ = share
    alice, bob = users["alice"].pw_name, users["bob"].pw_name

    def at_once(*calls):
        barrier = threading.Barrier(len(calls))
        results: list[subprocess.CompletedProcess] = []

        def run(d, *args):
            barrier.wait()
            results.append(cli(d, *args))

        threads = [threading.Thread(target=run, args=c) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]

    for _ in range(5):
        at_once((a, "revoke", alice), (b, "revoke", bob))
        assert sorted(r["user"] for r in json.loads((shared / "revoked.json").read_text())) == [alice, bob]
        for d in (a, b):
            assert wait_for(lambda: cli(d, "policy", alice).returncode == 4
                            and cli(d, "policy", bob).returncode == 4), d.log
        at_once((a, "unrevoke", bob), (b, "unrevoke", alice))
        assert json.loads((shared / "revoked.json").read_text()) == []
        for d in (a, b):
            assert wait_for(lambda: cli(d, "policy", alice).returncode == 0
                            and cli(d, "policy", bob).returncode == 0), d.log


def doctor(d) -> dict[str, dict]:
    run = subprocess.run([SLURMJWT, "--socket", d.socket, "doctor", "--config",
                          str(d.dir / "slurmjwtd.toml"), "--json"], capture_output=True, text=True,
                         timeout=60)
    return {f["topic"]: f for f in json.loads(run.stdout) if f["topic"] in ("daemon", "tokens")}


def test_a_node_that_loses_the_file_keeps_refusing_what_it_knew_says_so_once_and_recovers(
        logged_in, users, share):
    a, b = logged_in
    shared, mount_b = share
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    assert cli(a, "revoke", alice).returncode == 0
    assert wait_for(lambda: refused_revoked(b, alice))

    mount_b.unlink()  # B's share is unmounted; A's is fine, and A lifts the revocation
    assert cli(a, "unrevoke", alice).returncode == 0 and granted(a, alice)
    assert wait_for(lambda: "revocation file: missing" in cli(b, "status").stdout), b.log
    time.sleep(2.5)  # looked at a few more times
    assert refused_revoked(b, alice) and granted(b, bob)  # never grants what it last knew revoked
    broken = [line for line in b.log.splitlines() if "keeping the last good list" in line]
    assert len(broken) == 1 and "missing (deleted, or its share not mounted?)" in broken[0], b.log
    status = cli(b, "status").stdout
    assert "revocation file: missing" in status and "last good list" in status
    found = doctor(b)
    assert found["daemon"]["level"] == "PROBLEM" and "cannot read its revocation file" in found["daemon"]["what"]
    assert found["tokens"]["level"] == "PROBLEM" and "does not exist" in found["tokens"]["what"]
    assert doctor(a)["daemon"]["level"] == "ok"
    # B cannot write what it cannot read: refused, nothing changed
    refused = cli(b, "revoke", bob)
    assert refused.returncode != 0 and "nothing changed" in refused.stderr
    assert granted(b, bob)

    mount_b.symlink_to(shared)  # mounted again: A's unrevoke is in force on B
    assert wait_for(lambda: granted(b, alice)), b.log
    assert len([line for line in b.log.splitlines() if "readable again" in line]) == 1
    assert len(audit(b, "op=unrevoke", "reason=revocation-file", f"user={alice}")) == 1
    assert "revocation file" not in cli(b, "status").stdout
    assert len([line for line in b.log.splitlines() if "keeping the last good list" in line]) == 1

    # a file garbled (a bad hand edit) on the share: both nodes keep their list
    assert cli(b, "revoke", bob).returncode == 0
    assert wait_for(lambda: refused_revoked(a, bob))
    (shared / "revoked.json").write_text('[{"user": "')
    for d in (a, b):
        assert wait_for(lambda: "unreadable (not JSON" in cli(d, "status").stdout), d.log
        assert refused_revoked(d, bob)
    # clearing every revocation is writing an empty list
    (shared / "revoked.json").write_text("[]\n")
    for d in (a, b):
        assert wait_for(lambda: granted(d, bob)), d.log
        assert "revocation file" not in cli(d, "status").stdout
        assert len(audit(d, "op=unrevoke", f"user={bob}")) == 1


def test_a_node_does_not_start_without_a_file_that_was_made(make_daemon, users, share):
    """At start a node cannot know the list: a file that cannot be read, or is missing though
    its lock file shows it was made (deleted, or the share not mounted), stops it (exit 4)."""
    shared, _ = share
    a = make_daemon(revocation_file=str(shared / "revoked.json"))
    assert cli(a, "revoke", users["alice"].pw_name).returncode == 0
    (shared / "revoked.json").unlink()
    with pytest.raises(RuntimeError, match="exited 4") as failed:
        make_daemon(revocation_file=str(shared / "revoked.json"))
    assert "missing, though" in str(failed.value) and "write [] to it" in str(failed.value)
    (shared / "revoked.json").write_text("[]")
    assert make_daemon(revocation_file=str(shared / "revoked.json")).alive()
