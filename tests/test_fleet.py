"""Many login nodes, one JWKS (docs/fleet.md), against the real slurmctld (Slurm 22.05).

Each "node" is a daemon with its own rs256 key and kid; the controller's JWKS is assembled
only with `slurmjwt jwks --add/--remove`, the commands docs/fleet.md gives, and slurmctld
restarted as they say. Checked: tokens of every node in the JWKS are accepted (squeue and
slurmrestd); removing one node's kid refuses all its tokens, new and old, and no other
node's; `scontrol reconfigure` is not enough in 22.05 (a restart is); the rotation runbook
end to end; a refused change leaves the controller's file as it was; doctor on a node finds
its kid and key in the JWKS the controller reads, or says what is wrong.

The suite's shared cluster (the `slurm` fixture) gets a `jwks=` file for this module and its
own configuration back at the end (as in test_signers.py).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SLURMJWT, Daemon
from slurm_cluster import OPENAPI, SLURM_BIN, SlurmCluster
from slurmjwtd.client import call

JOBS = f"/slurm/{OPENAPI}/jobs"


class Controller:
    """slurmctld's side: its slurm.conf (jwks= in AuthAltParameters) and JWKS file."""

    def __init__(self, slurm: SlurmCluster, jwks: Path) -> None:
        self.slurm, self.jwks = slurm, jwks

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "SLURMJWT_CONFIG": "/nonexistent/slurmjwtd.toml",
                "SLURM_CONF": str(self.slurm.conf)}

    def slurmjwt(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([SLURMJWT, *args], capture_output=True, text=True, timeout=60,
                              env=self.env(), input=input)

    def kids(self) -> list[str]:
        return [k["kid"] for k in json.loads(self.jwks.read_text())["keys"]]

    def restart(self) -> None:
        """`systemctl restart slurmctld`, here: the harness's restart (state kept)."""
        self.slurm.restart()


@pytest.fixture(scope="module")
def controller(slurm, workdir, users):
    path = workdir / "fleet-jwks.json"
    path.write_text('{"keys": []}\n')
    os.chmod(path, 0o644)
    slurm.jwks = path
    slurm.restart()
    yield Controller(slurm, path)
    if slurm.ctld is not None and slurm.ctld.poll() is None:
        os.kill(slurm.ctld.pid, signal.SIGCONT)
    slurm.jwks = None
    slurm.restart()
    path.unlink(missing_ok=True)
    (workdir / ".fleet-jwks.json.lock").unlink(missing_ok=True)


class Node:
    """A login node: its key (slurmjwt keygen --rs256), kid and daemon."""

    def __init__(self, controller: Controller, make_daemon, workdir: Path, name: str) -> None:
        self.controller, self.make_daemon = controller, make_daemon
        self.dir = workdir / "fleet" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kid = ""
        self.key = self.dir / "none.pem"
        self.daemon: Daemon | None = None

    def keygen(self, kid: str) -> Path:
        path = self.dir / f"{kid}.pem"
        path.unlink(missing_ok=True)
        run = self.controller.slurmjwt("keygen", "--rs256", str(path), "--kid", kid)
        assert run.returncode == 0, run.stderr
        return path

    def jwks(self, key: Path, kid: str) -> str:
        """What `slurmjwt jwks KEY --kid KID` prints on the node."""
        run = self.controller.slurmjwt("jwks", str(key), "--kid", kid)
        assert run.returncode == 0, run.stderr
        return run.stdout

    def start(self, key: Path, kid: str) -> Daemon:
        self.key, self.kid = key, kid
        self.daemon = self.make_daemon(signer="rs256", rs256_key_file=str(key), rs256_kid=kid)
        return self.daemon

    def switch(self, key: Path, kid: str, user: str) -> None:
        """rs256_key_file and rs256_kid changed in slurmjwtd.toml, then systemctl reload."""
        d = self.daemon
        d.settings.update(rs256_key_file=str(key), rs256_kid=kid)
        (d.dir / "slurmjwtd.toml").write_text(d.config_text())
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while kid_of(self.mint(user)) != kid:
            assert time.monotonic() < deadline, f"no reload: {d.log}"
            time.sleep(0.05)
        self.key, self.kid = key, kid

    def mint(self, user: str, lifetime: int = 600) -> str:
        answer = call(self.daemon.socket, "MINT", {"user": user, "lifetime": lifetime}, timeout=10)
        assert answer.ok, f"{answer.code}: {answer.message}"
        return answer.fields["token"]

    def doctor(self, slurm_conf: Path | None = None) -> dict:
        """doctor's finding about slurm.conf, for this node's configuration."""
        d = self.daemon
        run = subprocess.run(
            [SLURMJWT, "--socket", d.socket, "doctor", "--json", "--config",
             str(d.dir / "slurmjwtd.toml"), "--slurm-conf",
             str(slurm_conf or self.controller.slurm.conf), "--pam-file", "/nonexistent/sshd",
             "--sshd-config", "/nonexistent/sshd_config"],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
        found = [f for f in json.loads(run.stdout) if f["topic"] == "slurm.conf"
                 and "disable_token_creation" not in f["what"]]
        assert len(found) == 1, run.stdout
        return found[0]


def kid_of(token: str) -> str:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))["kid"]


@pytest.fixture
def node(controller, make_daemon, workdir):
    return lambda name: Node(controller, make_daemon, workdir, name)


def accepted(slurm: SlurmCluster, user: str, token: str) -> bool:
    """squeue and slurmrestd agree on TOKEN: True if both accept it, False if both refuse."""
    by_squeue = slurm.squeue_as(user, token).returncode == 0
    by_rest = slurm.rest_get(user, token, JOBS) == 200
    assert by_squeue == by_rest, f"squeue {by_squeue}, slurmrestd {by_rest}"
    return by_squeue


def add(controller: Controller, text: str, *extra: str) -> subprocess.CompletedProcess:
    """On the controller: slurmjwt jwks --add - (the node's JWKS through a pipe, as over ssh)."""
    run = controller.slurmjwt("jwks", "--file", str(controller.jwks), "--add", "-", *extra,
                              input=text)
    assert run.returncode == 0, run.stderr
    return run


def remove(controller: Controller, kid: str) -> subprocess.CompletedProcess:
    run = controller.slurmjwt("jwks", "--file", str(controller.jwks), "--remove", kid)
    assert run.returncode == 0, run.stderr
    return run


# -- add nodes, revoke one ----------------------------------------------------------------
def test_two_nodes_in_one_jwks_then_one_revoked(controller, node, users):
    slurm, alice, bob = controller.slurm, users["alice"].pw_name, users["bob"].pw_name
    a, b = node("a"), node("b")
    key_a, key_b = a.keygen("sjt-fleet-a"), b.keygen("sjt-fleet-b")
    added = add(controller, a.jwks(key_a, "sjt-fleet-a"))
    assert "added kid sjt-fleet-a" in added.stdout and "systemctl restart slurmctld" in added.stdout
    # without --file: the jwks= of slurm.conf ($SLURM_CONF), as on a controller
    run = controller.slurmjwt("jwks", "--add", "-", input=b.jwks(key_b, "sjt-fleet-b"))
    assert run.returncode == 0 and "added kid sjt-fleet-b" in run.stdout, run.stderr
    assert controller.kids()[-2:] == ["sjt-fleet-a", "sjt-fleet-b"]
    assert os.stat(controller.jwks).st_mode & 0o777 == 0o644
    controller.restart()

    a.start(key_a, "sjt-fleet-a")
    b.start(key_b, "sjt-fleet-b")
    old_a, token_b = a.mint(alice), b.mint(bob)
    assert (kid_of(old_a), kid_of(token_b)) == ("sjt-fleet-a", "sjt-fleet-b")
    assert accepted(slurm, alice, old_a) and accepted(slurm, bob, token_b)
    finding = a.doctor()
    assert finding["level"] == "ok" and "holds kid sjt-fleet-a with this node's key" in finding["what"]

    # revoke node a: its kid leaves the JWKS. scontrol reconfigure does not re-read jwks= in 22.05
    removed = remove(controller, "sjt-fleet-a")
    assert "removed kid sjt-fleet-a" in removed.stdout
    assert "sjt-fleet-a" not in controller.kids()
    reconf = subprocess.run([f"{SLURM_BIN}/scontrol", "reconfigure"], capture_output=True,
                            text=True, timeout=60, env=controller.env())
    assert reconf.returncode == 0, reconf.stderr
    assert accepted(slurm, alice, old_a), "22.05 re-read jwks= at reconfigure: update docs/fleet.md"
    controller.restart()
    assert not accepted(slurm, alice, old_a)
    assert not accepted(slurm, alice, a.mint(alice))  # a's fresh tokens too, at once
    assert accepted(slurm, bob, token_b) and accepted(slurm, bob, b.mint(bob))

    finding = a.doctor()
    assert finding["level"] == "PROBLEM" and "has no key with kid sjt-fleet-a" in finding["what"]
    assert f"slurmjwt jwks --file {controller.jwks} --add" in finding["fix"]
    assert b.doctor()["level"] == "ok"
    remove(controller, "sjt-fleet-b")


# -- rotate a node's key ---------------------------------------------------------------------
def test_rotation_runbook_end_to_end(controller, node, users):
    """docs/fleet.md, "Rotate a node's key", step by step."""
    slurm, bob = controller.slurm, users["bob"].pw_name
    c = node("c")
    key_1 = c.keygen("sjt-fleet-c-1")
    add(controller, c.jwks(key_1, "sjt-fleet-c-1"))
    controller.restart()
    c.start(key_1, "sjt-fleet-c-1")
    old = c.mint(bob)
    assert accepted(slurm, bob, old)

    # 1. a new key, new kid, on the node; 2. added on the controller, restart: both accepted
    key_2 = c.keygen("sjt-fleet-c-2")
    add(controller, c.jwks(key_2, "sjt-fleet-c-2"))
    assert {"sjt-fleet-c-1", "sjt-fleet-c-2"} <= set(controller.kids())
    # doctor on the node, still signing with the old key, is content; so it is once switched
    assert c.doctor()["level"] == "ok"
    controller.restart()
    # 3. the node switches (reload): new tokens carry the new kid; old ones still work
    c.switch(key_2, "sjt-fleet-c-2", bob)
    new = c.mint(bob)
    assert kid_of(new) == "sjt-fleet-c-2"
    assert accepted(slurm, bob, old) and accepted(slurm, bob, new)
    assert c.doctor()["level"] == "ok"
    # 4. (the old tokens' lifetime passes) 5. the old kid removed, restart
    remove(controller, "sjt-fleet-c-1")
    controller.restart()
    assert not accepted(slurm, bob, old)
    assert accepted(slurm, bob, new) and accepted(slurm, bob, c.mint(bob))
    remove(controller, "sjt-fleet-c-2")


# -- refusals leave the controller's file alone --------------------------------------------
@pytest.fixture(scope="module")
def node_d(controller, workdir):
    """Node d, its kid in the JWKS, and a second key of its (not in the JWKS)."""
    d = Node(controller, None, workdir, "d")
    key, other = d.keygen("sjt-fleet-d"), d.keygen("sjt-fleet-other")
    add(controller, d.jwks(key, "sjt-fleet-d"))
    yield d, key, other
    remove(controller, "sjt-fleet-d")


@pytest.mark.parametrize("case", ["same-kid-other-key", "same-key-new-kid", "private-key",
                                  "remove-unknown-kid", "garbled"])
def test_refused_changes_leave_the_controllers_file_alone(controller, node_d, case):
    d, key, other = node_d
    before = controller.jwks.read_bytes(), controller.jwks.stat().st_ino
    args, text, phrase = {
        "same-kid-other-key": (["--add", "-"], d.jwks(other, "sjt-fleet-d"),
                               "kid sjt-fleet-d is already there with another key"),
        "same-key-new-kid": (["--add", "-"], d.jwks(key, "sjt-fleet-d2"),
                             "is already there as kid sjt-fleet-d"),
        "private-key": (["--add", str(key)], None, "never copy a node's private key"),
        "remove-unknown-kid": (["--remove", "sjt-fleet-typo"], None, "no kid sjt-fleet-typo"),
        "garbled": (["--add", "-"], '{"keys": [{"kid": "x"', "not JSON"),
    }[case]
    run = controller.slurmjwt("jwks", "--file", str(controller.jwks), *args, input=text)
    assert run.returncode == 8 and phrase in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and run.stdout == ""
    assert (controller.jwks.read_bytes(), controller.jwks.stat().st_ino) == before
    controller.restart()  # slurmctld still starts with the file
    assert controller.slurm.ping()


# -- doctor's other answers ------------------------------------------------------------------
def test_doctor_names_a_kid_with_another_key_and_a_key_under_another_kid(controller, node, workdir):
    e = node("e")
    key, stray = e.keygen("sjt-fleet-e"), e.keygen("sjt-fleet-stray")
    add(controller, e.jwks(stray, "sjt-fleet-e"))  # the kid, with a key that is not e's
    e.start(key, "sjt-fleet-e")
    finding = e.doctor()
    assert finding["level"] == "PROBLEM", finding
    assert f"kid sjt-fleet-e holds another key than {key}" in finding["what"]
    assert "a new key takes a new kid" in finding["fix"]

    run = controller.slurmjwt("jwks", "--file", str(controller.jwks), "--remove", "sjt-fleet-e",
                              "--add", "-", input=e.jwks(key, "sjt-fleet-e-real"))
    assert run.returncode == 0, run.stderr
    finding = e.doctor()
    assert finding["level"] == "PROBLEM", finding
    assert "this node's key is there as kid sjt-fleet-e-real" in finding["what"]
    assert 'rs256_kid = "sjt-fleet-e-real"' in finding["fix"]

    # a JWKS this node cannot read (it lives on the controller): not checked, not a problem
    conf = workdir / "fleet" / "elsewhere.conf"
    conf.write_text(controller.slurm.conf.read_text().replace(
        f"jwks={controller.jwks}", "jwks=/nonexistent/jwks.json"))
    finding = e.doctor(conf)
    assert finding["level"] == "skip" and "not readable from this node" in finding["what"]
    # and one slurmctld could not read
    bad = workdir / "fleet" / "bad-jwks.json"
    bad.write_text('{"keys": [{"kid": "sjt-fleet-e", "kty": "RSA", "alg": "RS256", "e": "AQAB"}]}')
    conf.write_text(controller.slurm.conf.read_text().replace(f"jwks={controller.jwks}",
                                                              f"jwks={bad}"))
    finding = e.doctor(conf)
    assert finding["level"] == "PROBLEM" and '"n" is not a base64url string' in finding["what"]
    remove(controller, "sjt-fleet-e-real")
