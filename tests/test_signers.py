"""The three signers against the real slurmctld and slurmrestd (Debian 12's Slurm 22.05, or
Debian 13's 24.11 under `make test-slurm24`: the `slurm` fixture).

- rs256: `slurmjwt keygen --rs256` and `slurmjwt jwks` make a key and its JWKS entry;
  slurmctld, given `jwks=`, accepts the daemon's tokens while the kid is in the JWKS and
  refuses them once it is gone; rotation keeps old and new kids working side by side.
- scontrol: slurmctld mints (`scontrol token`); the daemon holds no key. A controller that
  is down, hung or refusing gives `signer-unavailable` within `scontrol_timeout`, while the
  daemon goes on answering everyone else.
- policy applies whatever signs.

The suite's shared cluster (the `slurm` fixture) is reused: for this module it gets a
`jwks=` file and `disable_token_creation` (what docs/signers.md recommends), and its
configuration is put back when the module ends. slurmctld reads its key files only at start,
so each JWKS change is followed by `slurm.restart()` (state kept). The scontrol signer runs
the cluster's own scontrol (`slurm.scontrol_program`: 24.11's is inside its root).
"""

from __future__ import annotations

import base64
import grp
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import jwt
import pytest

from conftest import KEY_GROUP, SLURMJWT, SLURMJWTD, Daemon
from slurm_cluster import RestClient as SlurmCluster
from slurm_cluster import SlurmError
from slurmjwtd.client import call

CLEAN_ENV = {"PATH": "/usr/bin:/bin", "SLURMJWT_CONFIG": "/nonexistent/slurmjwtd.toml"}


# -- helpers ----------------------------------------------------------------------------
def slurmjwt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SLURMJWT, *args], capture_output=True, text=True, timeout=60,
                          env=CLEAN_ENV)


def b64d(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def header(token: str) -> dict:
    return json.loads(b64d(token.split(".")[0]))


def claims(token: str) -> dict:
    return json.loads(b64d(token.split(".")[1]))


def keygen(path: Path, kid: str) -> Path:
    run = slurmjwt("keygen", "--rs256", str(path), "--kid", kid)
    assert run.returncode == 0, run.stderr
    return path


def jwks_entry(path: Path, kid: str) -> dict:
    run = slurmjwt("jwks", str(path), "--kid", kid)
    assert run.returncode == 0, run.stderr
    keys = json.loads(run.stdout)["keys"]
    assert len(keys) == 1
    return keys[0]


def mint(d: Daemon, user: str, lifetime: int | None = None) -> dict[str, str]:
    """Root's MINT for USER: the answer's fields, asserted granted."""
    args = {"user": user} | ({"lifetime": lifetime} if lifetime else {})
    answer = call(d.socket, "MINT", args, timeout=10)
    assert answer.ok, f"{answer.code}: {answer.message}"
    return answer.fields


def user_token(d: Daemon, leaders, user: str) -> str:
    """USER logs in (a live session leader), then asks for a token as USER."""
    leaders(d.root_socket, user)
    run = d.token_as(user)
    assert run.returncode == 0, f"slurmjwt token ({run.returncode}): {run.stderr}"
    return run.stdout.strip().removeprefix("SLURM_JWT=")


def assert_accepted(slurm: SlurmCluster, user: str, token: str) -> None:
    run = slurm.squeue_as(user, token)
    assert run.returncode == 0, f"squeue refused the token ({run.returncode}): {run.stderr}"
    status, body = slurm.rest_request(user, token, slurm.path("jobs"))
    assert status == 200, f"slurmrestd answered {status}: {body[:300]!r}"


def assert_refused(slurm: SlurmCluster, user: str, token: str) -> None:
    run = slurm.squeue_as(user, token)
    assert run.returncode != 0, f"squeue accepted the token: {run.stdout}"
    status = slurm.rest_get(user, token, slurm.path("jobs"))
    assert status == slurm.release.bad_token, f"slurmrestd answered {status}"


def verify_rs256(token: str, entry: dict) -> dict:
    """Check the signature with the JWKS entry's public key, as slurmctld does."""
    return jwt.decode(token, jwt.PyJWK(entry).key, algorithms=["RS256"])


def start_fails(d: Daemon, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run the daemon expecting it to refuse to start."""
    argv = d.prepare()
    run = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=30,
                         env=os.environ | d.env)
    assert run.returncode != 0, f"slurmjwtd started: {run.stderr}"
    return run


def timed(fn, *args, **kw):
    t0 = time.monotonic()
    result = fn(*args, **kw)
    return result, time.monotonic() - t0


# -- the cluster, set up as docs/signers.md says ------------------------------------------
class Jwks:
    """slurmctld's jwks= file; `publish` rewrites it and restarts slurmctld to read it."""

    def __init__(self, path: Path, slurm: SlurmCluster) -> None:
        self.path, self.slurm = path, slurm

    def write(self, *entries: dict) -> None:
        self.path.write_text(json.dumps({"keys": list(entries)}, indent=2))
        os.chmod(self.path, 0o644)  # public keys

    def publish(self, *entries: dict) -> None:
        self.write(*entries)
        self.slurm.restart()


@pytest.fixture(scope="module")
def cluster(slurm, workdir, users):
    """The shared cluster with `jwks=` (next to `jwt_key=`) and `disable_token_creation`;
    restored to its own configuration afterwards, for the tests that follow."""
    jwks = Jwks(workdir / "signers-jwks.json", slurm)
    jwks.write()  # an empty JWKS: slurmctld starts with it
    plain = slurm.conf_text

    def conf_text() -> str:
        return "".join(line + (",disable_token_creation" if line.startswith("AuthAltParameters=")
                               else "") + "\n" for line in plain().splitlines())

    slurm.jwks = jwks.path
    slurm.conf_text = conf_text
    slurm.restart()
    yield jwks
    if slurm.ctld is not None and slurm.ctld.poll() is None:
        os.kill(slurm.ctld.pid, signal.SIGCONT)  # in case a test died with it stopped
    del slurm.conf_text
    slurm.jwks = None
    slurm.restart()
    jwks.path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def keydir(workdir) -> Path:
    path = workdir / "rs256"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o755)
    return path


@pytest.fixture(scope="module")
def key_a(keydir, users) -> tuple[Path, str]:
    return keygen(keydir / "a.pem", "sjt-node-a"), "sjt-node-a"


@pytest.fixture(scope="module")
def key_b(keydir, users) -> tuple[Path, str]:
    return keygen(keydir / "b.pem", "sjt-node-b"), "sjt-node-b"


@pytest.fixture
def ctl_env(cluster) -> dict[str, str]:
    return {"SLURM_CONF": cluster.slurm.client_conf}


@pytest.fixture
def scontrol(cluster) -> dict[str, str]:
    """The daemon's settings for the cluster's own scontrol (24.11's runs inside its root)."""
    program = cluster.slurm.scontrol_program
    return {} if program == "/usr/bin/scontrol" else {"scontrol": program}


# -- rs256: the key and its JWKS entry -----------------------------------------------------
def test_keygen_rs256_makes_a_root_owned_group_readable_pem_and_never_overwrites(keydir, users):
    path = keydir / "fresh.pem"
    path.unlink(missing_ok=True)  # a repeated run's (pytest --count)
    run = slurmjwt("keygen", "--rs256", str(path), "--kid", "sjt-k")
    assert run.returncode == 0, run.stderr
    assert f"slurmjwt jwks {path} --kid sjt-k" in run.stdout  # says what to do next
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        0, grp.getgrnam(KEY_GROUP).gr_gid, 0o640)
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")

    again = slurmjwt("keygen", "--rs256", str(path), "--kid", "sjt-k")
    assert again.returncode == 8 and "--force" in again.stderr
    assert path.read_bytes() == pem

    forced = slurmjwt("keygen", "--rs256", str(path), "--kid", "sjt-k", "--force")
    assert forced.returncode == 0, forced.stderr
    assert path.read_bytes() != pem
    st = path.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o640)
    assert [p.name for p in keydir.iterdir() if ".tmp-" in p.name] == []


def test_jwks_prints_what_slurm_22_05_needs(key_a):
    path, kid = key_a
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    entry = jwks_entry(path, kid)
    assert {"kty", "alg", "kid", "n", "e"} <= set(entry)
    assert (entry["kty"], entry["alg"], entry["kid"]) == ("RSA", "RS256", kid)
    public = load_pem_private_key(path.read_bytes(), None).public_key().public_numbers()
    assert int.from_bytes(b64d(entry["n"]), "big") == public.n
    assert int.from_bytes(b64d(entry["e"]), "big") == public.e == 65537
    assert "=" not in entry["n"] + entry["e"]  # base64url without padding, as RFC 7518 says


# -- rs256 against slurmctld ----------------------------------------------------------------
def test_rs256_token_works_while_its_kid_is_in_the_jwks(cluster, make_daemon, key_a, users, leaders):
    slurm, (path, kid) = cluster.slurm, key_a
    alice = users["alice"].pw_name
    entry = jwks_entry(path, kid)
    cluster.publish(entry)
    d = make_daemon(signer="rs256", rs256_key_file=str(path), rs256_kid=kid)
    assert call(d.socket, "STATUS").fields["signer"] == "rs256"

    token = user_token(d, leaders, alice)
    assert header(token) == {"alg": "RS256", "kid": kid, "typ": "JWT"}
    body = verify_rs256(token, entry)
    assert body["sun"] == alice and body["exp"] - body["iat"] == 3600
    assert_accepted(slurm, alice, token)

    # the kid leaves the JWKS: the same kind of token is refused after slurmctld restarts
    cluster.publish()
    fresh = user_token(d, leaders, alice)
    assert header(fresh)["kid"] == kid
    assert_refused(slurm, alice, fresh)
    assert_refused(slurm, alice, token)


def test_rs256_rotation_old_and_new_kid_side_by_side_then_old_revoked(
        cluster, make_daemon, key_a, key_b, users):
    """docs/signers.md's procedure: publish the new kid next to the old, switch the daemon
    (SIGHUP), wait for the old tokens to expire, then remove the old kid."""
    slurm = cluster.slurm
    bob = users["bob"].pw_name
    (old_path, old_kid), (new_path, new_kid) = key_a, key_b
    old_entry, new_entry = jwks_entry(old_path, old_kid), jwks_entry(new_path, new_kid)
    cluster.publish(old_entry)
    d = make_daemon(signer="rs256", rs256_key_file=str(old_path), rs256_kid=old_kid)
    old = mint(d, bob, 600)["token"]
    assert header(old)["kid"] == old_kid
    assert_accepted(slurm, bob, old)

    # 1. both kids in the JWKS; 2. the daemon signs with the new key, reloaded in place
    cluster.publish(old_entry, new_entry)
    d.settings.update(rs256_key_file=str(new_path), rs256_kid=new_kid)
    (d.dir / "slurmjwtd.toml").write_text(d.config_text())
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while header(new := mint(d, bob, 600)["token"])["kid"] != new_kid:
        assert time.monotonic() < deadline, f"no reload: {d.log}"
        time.sleep(0.05)
    verify_rs256(new, new_entry)
    assert_accepted(slurm, bob, old)
    assert_accepted(slurm, bob, new)

    # 3. the old kid is removed (once its last tokens expired): old refused, new still works
    cluster.publish(new_entry)
    assert_refused(slurm, bob, old)
    assert_accepted(slurm, bob, new)


def test_hs256_still_accepted_next_to_jwks(cluster, daemon, users):
    """jwt_key= and jwks= together: a site can move login nodes to rs256 one at a time."""
    bob = users["bob"].pw_name
    token = mint(daemon, bob, 300)["token"]
    assert header(token)["alg"] == "HS256"
    assert_accepted(cluster.slurm, bob, token)


def test_keygen_makes_a_key_slurmctld_starts_with_as_its_release_checks_it(cluster, workdir, users):
    """`slurmjwt keygen`'s key (slurm:slurmjwt 0640) is one slurmctld starts with and verifies
    tokens by; the same key readable by others stops 24.11's slurmctld (23.11+), not 22.05's
    (RELEASES' key_refused_for_others), which is why keygen and doctor give others nothing."""
    slurm, alice = cluster.slurm, users["alice"].pw_name
    path = workdir / "keygen-hs256.key"
    path.unlink(missing_ok=True)
    made = slurmjwt("keygen", str(path))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    now = int(time.time())
    token = jwt.encode({"sun": alice, "iat": now, "exp": now + 300}, path.read_bytes(), algorithm="HS256")
    original = slurm.jwt_key
    try:
        slurm.jwt_key = path
        slurm.restart()
        assert_accepted(slurm, alice, token)
        os.chmod(path, 0o644)
        if slurm.release.key_refused_for_others:
            with pytest.raises(SlurmError, match="exited"):
                slurm.restart()
        else:
            slurm.restart()
            assert_accepted(slurm, alice, token)
    finally:
        slurm.jwt_key = original
        if slurm.running():
            slurm.restart()
        else:
            slurm.start()
    assert_refused(slurm, alice, token)  # the cluster's own key again


@pytest.mark.parametrize("flaw", ["mode-0644", "symlink", "owner", "group-writable", "not-pem",
                                  "missing"])
def test_insecure_rs256_key_stops_the_daemon(workdir, keydir, key_a, users, flaw):
    path = keydir / f"bad-{flaw}.pem"
    path.unlink(missing_ok=True)  # a repeated run's (pytest --count)
    shutil.copy(key_a[0], path)
    shutil.chown(path, "root", KEY_GROUP)
    os.chmod(path, 0o640)
    expected = {"mode-0644": "gives other users access", "symlink": "symbolic link",
                "owner": "must be owned by", "group-writable": "lets its group write it",
                "not-pem": "not an unencrypted PEM private key", "missing": "not found"}[flaw]
    if flaw == "mode-0644":
        os.chmod(path, 0o644)
    elif flaw == "symlink":
        path.unlink()
        path.symlink_to(key_a[0])
    elif flaw == "owner":
        shutil.chown(path, users["bob"].pw_name)
    elif flaw == "group-writable":
        os.chmod(path, 0o660)
    elif flaw == "not-pem":
        path.write_bytes(os.urandom(64))
    elif flaw == "missing":
        path.unlink()
    d = Daemon(workdir / f"bad-{flaw}", {"signer": "rs256", "rs256_key_file": str(path),
                                          "rs256_kid": "sjt-bad"})
    shutil.rmtree(d.dir, ignore_errors=True)
    run = start_fails(d)
    assert run.returncode == 3, run.stderr
    assert f"key file {path}" in run.stderr and expected in run.stderr, run.stderr
    assert not os.path.exists(d.socket)
    check = subprocess.run([*d.prepare(), "--check-config"], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 3 and expected in check.stderr


@pytest.mark.parametrize("signer", ["rs256", "scontrol"])
def test_check_config_checks_the_signers_own_file(workdir, key_a, signer):
    """--check-config names what it checked; the HS256 key_file, unused, need not exist."""
    d = Daemon(workdir / f"check-{signer}", {"signer": signer, "rs256_key_file": str(key_a[0]),
                                              "key_file": "/nonexistent/jwt_hs256.key"})
    shutil.rmtree(d.dir, ignore_errors=True)
    d.dir.mkdir(mode=0o755)
    (d.dir / "slurmjwtd.toml").write_text(d.config_text())
    run = subprocess.run([SLURMJWTD, "--config", str(d.dir / "slurmjwtd.toml"), "--check-config"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    checked = str(key_a[0]) if signer == "rs256" else "program /usr/bin/scontrol"
    assert checked in run.stdout and f"signer {signer}" in run.stdout, run.stdout


# -- policy applies whatever signs ------------------------------------------------------------
def test_policy_applies_with_rs256(cluster, make_daemon, key_a, users):
    slurm, (path, kid) = cluster.slurm, key_a
    entry = jwks_entry(path, kid)
    cluster.publish(entry)
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    d = make_daemon(signer="rs256", rs256_key_file=str(path), rs256_kid=kid,
                    group_lifetime={alice: 900}, group_max_lifetime={alice: 1200},
                    deny_users=[bob])
    granted = mint(d, alice)
    body = verify_rs256(granted["token"], entry)
    assert body["exp"] - body["iat"] == 900 == int(granted["lifetime"])
    assert_accepted(slurm, alice, granted["token"])
    assert call(d.socket, "MINT", {"user": alice, "lifetime": 1201}).code == "lifetime-too-long"
    assert call(d.socket, "MINT", {"user": users["sys"].pw_name}).code == "below-min-uid"
    assert call(d.socket, "MINT", {"user": bob}).code == "policy-denied"
    assert d.token_as(alice).returncode != 0  # no session: require_session still holds


def test_policy_applies_with_scontrol(cluster, make_daemon, users, ctl_env, scontrol):
    """Refusals never reach slurmctld; a granted lifetime is what slurmctld writes."""
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    d = make_daemon(env=ctl_env, **scontrol, signer="scontrol", scontrol_timeout=5,
                    group_lifetime={alice: 900}, deny_users=[bob])
    token = mint(d, alice)["token"]
    body = claims(token)
    assert body["exp"] - body["iat"] == 900
    assert call(d.socket, "MINT", {"user": users["sys"].pw_name}).code == "below-min-uid"
    assert call(d.socket, "MINT", {"user": bob}).code == "policy-denied"
    assert call(d.socket, "MINT", {"user": alice, "lifetime": 99999}).code == "lifetime-too-long"


# -- scontrol -------------------------------------------------------------------------------
def test_scontrol_tokens_work_and_carry_the_lifetime_asked(cluster, make_daemon, users, leaders,
                                                            ctl_env, scontrol):
    slurm = cluster.slurm
    alice = users["alice"].pw_name
    # a SLURM_JWT in the daemon's environment must not become scontrol's credential
    d = make_daemon(env=ctl_env | {"SLURM_JWT": "not.a.token"}, **scontrol, signer="scontrol",
                    scontrol_timeout=5)
    assert call(d.socket, "STATUS").fields["signer"] == "scontrol"

    leader = leaders(d.root_socket, alice)  # OPEN goes through scontrol too
    assert int(leader.fields["exp"]) - int(time.time()) in range(3590, 3601)
    run = d.token_as(alice, "--lifetime", "777")
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip().removeprefix("SLURM_JWT=")
    body = claims(token)
    assert body["sun"] == alice and body["exp"] - body["iat"] == 777
    # slurmctld signed it with its own HS256 key; this node never had to read it
    jwt.decode(token, slurm.jwt_key.read_bytes(), algorithms=["HS256"])
    assert_accepted(slurm, alice, token)

    fields = mint(d, alice, 1234)
    assert int(fields["exp"]) - claims(fields["token"])["iat"] == 1234
    assert_accepted(slurm, alice, fields["token"])


def test_disable_token_creation_stops_users_not_the_daemon(cluster, users):
    """The recommended AuthAltParameters=disable_token_creation: a user's own
    `scontrol token` is refused, so the daemon (root or SlurmUser) is the only way."""
    alice = users["alice"].pw_name
    run = cluster.slurm.client_as(alice, "scontrol", "token")
    assert run.returncode != 0 and "SLURM_JWT=" not in run.stdout
    for caller in ("root", "slurm"):
        ok = cluster.slurm.client_as(caller, "scontrol", "token", f"username={alice}", "lifespan=60")
        assert ok.returncode == 0 and ok.stdout.startswith("SLURM_JWT="), (caller, ok.stderr)


def _mint_in_thread(d: Daemon, user: str, results: list) -> threading.Thread:
    def run() -> None:
        t0 = time.monotonic()
        answer = call(d.socket, "MINT", {"user": user}, timeout=15)
        results.append((answer, time.monotonic() - t0))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_scontrol_hung_controller_refused_in_time_others_served(cluster, make_daemon, users,
                                                                 ctl_env, scontrol):
    """slurmctld stopped in its tracks (SIGSTOP): it accepts connections and never answers,
    the worst case for a login. The refusal comes within scontrol_timeout; meanwhile the
    daemon answers STATUS and EXPLAIN at once; a burst of requests is bounded too."""
    slurm = cluster.slurm
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    d = make_daemon(env=ctl_env, **scontrol, signer="scontrol", scontrol_timeout=1)
    assert_accepted(slurm, alice, mint(d, alice)["token"])
    os.kill(slurm.ctld.pid, signal.SIGSTOP)
    try:
        results: list = []
        hung = _mint_in_thread(d, alice, results)
        time.sleep(0.2)  # the scontrol call is under way
        status, took = timed(call, d.socket, "STATUS", timeout=5)
        assert status.ok and took < 0.5, took
        explain, took = timed(call, d.socket, "EXPLAIN", {"user": bob}, timeout=5)
        assert explain.ok and explain.fields["decision"] == "granted" and took < 0.5, took
        hung.join(10)
        (answer, took), = results
        assert answer.code == "signer-unavailable", answer
        assert "did not answer in 1 s" in answer.message and "scontrol ping" in answer.message
        assert took < 3, took

        # a burst larger than the signing workers: every one refused in bounded time
        burst: list = []
        threads = [_mint_in_thread(d, alice if i % 2 else bob, burst) for i in range(10)]
        for t in threads:
            t.join(15)
        assert len(burst) == 10
        assert {a.code for a, _ in burst} == {"signer-unavailable"}
        assert max(took for _, took in burst) < 3, sorted(took for _, took in burst)
        assert call(d.socket, "STATUS", timeout=1).ok
    finally:
        os.kill(slurm.ctld.pid, signal.SIGCONT)
    assert_accepted(slurm, alice, mint(d, alice)["token"])  # the controller is back
    assert d.alive()
    assert "refused" in d.log and "signer-unavailable" in d.log


def test_scontrol_controller_down_then_back(cluster, make_daemon, users, ctl_env, scontrol):
    """slurmctld not running (scontrol retries a connect that fails for about 9 s)."""
    slurm = cluster.slurm
    alice = users["alice"].pw_name
    d = make_daemon(env=ctl_env, **scontrol, signer="scontrol", scontrol_timeout=1)
    slurm.ctld.terminate()
    slurm.ctld.wait(10)
    try:
        results: list = []
        down = _mint_in_thread(d, alice, results)
        time.sleep(0.2)
        status, took = timed(call, d.socket, "STATUS", timeout=5)
        assert status.ok and took < 0.5, took
        down.join(10)
        (answer, took), = results
        assert answer.code == "signer-unavailable" and took < 3, (answer, took)
        # no session left behind by a failed OPEN
        opened = call(d.root_socket, "OPEN", {"user": alice}, timeout=10)
        assert opened.code == "signer-unavailable"
        assert call(d.socket, "STATUS").fields["sessions"] == "0"
    finally:
        slurm.restart()
    assert_accepted(slurm, alice, mint(d, alice)["token"])


def test_scontrol_refusing_controller_says_why_at_once(cluster, make_daemon, workdir, users,
                                                       ctl_env):
    """slurmctld answers, but no: here scontrol runs as a user it does not let mint
    (disable_token_creation), through a wrapper standing for a misconfigured host."""
    wrapper_dir = workdir / "fake-scontrol"
    wrapper_dir.mkdir(mode=0o755, exist_ok=True)
    wrapper = wrapper_dir / "scontrol"
    bob = users["bob"].pw_name
    wrapper.write_text(f"#!/bin/sh\nexec /usr/bin/setpriv --reuid={bob} --regid={bob} "
                       f"--clear-groups {cluster.slurm.scontrol_program} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    d = make_daemon(env=ctl_env, signer="scontrol", scontrol=str(wrapper), scontrol_timeout=5)
    answer, took = timed(call, d.socket, "MINT", {"user": users["alice"].pw_name}, timeout=10)
    assert answer.code == "signer-unavailable", answer
    assert answer.message == ("scontrol token failed: slurm_fetch_token: error with request: "
                              "Access/permission denied"), answer.message
    assert took < 2, took


def test_scontrol_signer_needs_root_or_slurmuser(cluster, workdir, users, ctl_env, leaders,
                                                 scontrol):
    """Refused, with the reason, for any other account; SlurmUser runs it."""
    bob = users["bob"].pw_name
    d = Daemon(workdir / "scontrol-as-bob", {"signer": "scontrol", **scontrol}, env=ctl_env)
    shutil.rmtree(d.dir, ignore_errors=True)
    run = start_fails(d, ("setpriv", f"--reuid={bob}", f"--regid={bob}", "--clear-groups"))
    assert run.returncode == 3
    assert "signer scontrol: slurmjwtd must run as root or slurm (SlurmUser)" in run.stderr

    # as SlurmUser, in a runtime directory of its own (RuntimeDirectory= under User=slurm)
    d = Daemon(workdir / "scontrol-as-slurm", env=ctl_env,
               prefix=("setpriv", "--reuid=slurm", "--regid=slurm", "--init-groups",
                       "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"))
    shutil.rmtree(d.dir, ignore_errors=True)
    d.dir.mkdir(mode=0o755)
    runtime = d.dir / "run"
    runtime.mkdir(mode=0o755)
    shutil.chown(runtime, "slurm", "slurm")
    d.settings = {"signer": "scontrol", "socket": str(runtime / "s.sock"),
                  "session_file": str(runtime / "sessions.json"),
                  "token_dir": str(runtime / "tokens"), **scontrol}
    d.start()
    try:
        status = Path(f"/proc/{d.proc.pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE).group(1)
        assert set(uids.split()) == {str(pwd.getpwnam("slurm").pw_uid)}  # setpriv exec'd it
        alice = users["alice"].pw_name
        token = user_token(d, leaders, alice)
        assert claims(token)["sun"] == alice
        assert_accepted(cluster.slurm, alice, token)
    finally:
        assert d.stop() == 0
