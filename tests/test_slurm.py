"""The real thing: tokens from slurmjwtd against a real slurmctld and slurmrestd.

Debian 12's Slurm 22.05 runs on loopback (tests/slurm_cluster.py), or under
`make test-slurm24` Debian 13's 24.11 in a root (tests/slurm24_cluster.py), with the shared
daemon's HS256 key. What differs between the two (the API versions, the HTTP status for a
bad token, whether /ping checks the token at all, `Authorization: Bearer`) is read from
slurmjwtd.slurm_versions.RELEASES, and these tests check that table against the Slurm running. A token is good only if Slurm itself accepts it: squeue and
sbatch (auth/jwt, chosen by the client whenever SLURM_JWT is set) and slurmrestd
(rest_auth/jwt). Every refusal is checked next to an acceptance on the same path,
so that a refusal means the token was refused, not that the path is broken.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time

from conftest import SLURMJWT
from slurm_cluster import RestClient
from slurmjwtd.slurm_versions import ask_server


# -- helpers ----------------------------------------------------------------------------
def parse_token(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 0, f"slurmjwt token failed ({run.returncode}): {run.stderr}"
    line = run.stdout.strip()
    assert line.startswith("SLURM_JWT="), f"unexpected output: {line[:40]!r}"
    token = line.removeprefix("SLURM_JWT=")
    assert token.count(".") == 2, "not a JWT"
    return token


def session_token(daemon, leaders, user: str) -> str:
    """Log USER in (a live leader), then mint as USER through the socket."""
    leaders(daemon.root_socket, user)
    return parse_token(daemon.token_as(user))


def root_token(daemon, user: str, lifetime: int | None = None) -> str:
    args = [SLURMJWT, "token", "--user", user]
    if lifetime is not None:
        args += ["--lifetime", str(lifetime)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin", "SLURMJWT_SOCKET": daemon.socket})
    return parse_token(run)


def b64d(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(token: str) -> dict:
    return json.loads(b64d(token.split(".")[1]))


def flip_signature_char(token: str) -> str:
    """Change one character in the middle of the signature: its bits all count
    (the last character of a 32-byte signature carries two padding bits)."""
    head, payload, sig = token.split(".")
    i = len(sig) // 2
    new = "A" if sig[i] != "A" else "B"
    tampered = f"{head}.{payload}.{sig[:i]}{new}{sig[i + 1:]}"
    assert b64d(tampered.split(".")[2]) != b64d(sig)
    return tampered


def with_claims(token: str, **changes: object) -> str:
    """The same header and signature over changed claims (not re-signed)."""
    head, _, sig = token.split(".")
    body = claims(token) | changes
    return f"{head}.{b64e(json.dumps(body, separators=(',', ':')).encode())}.{sig}"


def assert_refused(slurm: RestClient, unix_user: str, name: str, token: str) -> None:
    """squeue exits non-zero; slurmrestd answers /jobs and /diag with its release's status for a
    bad token (22.05: 500, 24.11: 511). /ping refuses it only where it checks tokens at all
    (24.11: 200 whatever the token), which is why rejection is never judged by /ping."""
    run = slurm.squeue_as(unix_user, token)
    assert run.returncode != 0, f"squeue accepted the token: {run.stdout}"
    release = slurm.release
    for path in (slurm.path("jobs"), slurm.path("diag")):
        status = slurm.rest_get(name, token, path)
        assert status == release.bad_token, f"slurmrestd {path} answered {status}"
    ping = slurm.rest_get(name, token, slurm.path("ping"))
    assert ping == (release.bad_token if release.ping_checks_token else 200), ping


def assert_accepted(slurm: RestClient, unix_user: str, name: str, token: str) -> None:
    run = slurm.squeue_as(unix_user, token)
    assert run.returncode == 0, f"squeue refused the token ({run.returncode}): {run.stderr}"
    for path in (slurm.path("ping"), slurm.path("jobs"), slurm.path("diag")):
        status, body = slurm.rest_request(name, token, path)
        assert status == 200, f"slurmrestd {path} answered {status}: {body[:300]!r}"


def job_ids(slurm: RestClient, unix_user: str, token: str) -> dict[str, tuple[str, str]]:
    """{job id: (user name, uid)} as slurmctld reports them."""
    run = slurm.squeue_as(unix_user, token, "--noheader", "--format=%i|%u|%U")
    assert run.returncode == 0, run.stderr
    return {i: (u, uid) for i, u, uid in (line.split("|") for line in run.stdout.split())}


# -- tests ------------------------------------------------------------------------------
def test_cluster_is_up_and_refuses_without_a_token(slurm):
    assert slurm.ping()
    for path in (slurm.path("ping"), slurm.path("jobs"), "/openapi/v3"):
        assert slurm.rest_get("nobody", None, path) == 401  # a missing header: 401 (22.05, 24.11)


def test_slurmrestd_says_its_release_and_api_versions_as_the_table_has_them(slurm, daemon, users):
    """What `slurmjwt curl` and doctor learn from slurmrestd (/openapi/v3) is the release
    `scontrol --version` names, serving the API versions slurm_versions.RELEASES lists."""
    alice = users["alice"].pw_name
    token = root_token(daemon, alice)
    server = ask_server(slurm.rest_url, {"X-SLURM-USER-NAME": alice, "X-SLURM-USER-TOKEN": token})
    # 22.05 names no release there ("version": "0.0.38"); 24.11 does ("Slurm-24.11.5&openapi/slurmctld")
    assert server.version == (slurm.version if slurm.version >= (23, 2, 0) else None)
    assert server.api == slurm.release.api, server.describe()


def test_bearer_header_as_the_release_takes_it(slurm, daemon, users):
    """`Authorization: Bearer` is taken from 23.02 (RELEASES' bearer); 22.05 wants both
    X-SLURM headers and answers 401 without them."""
    alice = users["alice"].pw_name
    token = root_token(daemon, alice)
    jobs = slurm.path("jobs")
    if slurm.release.bearer:
        assert slurm.rest_get(None, token, jobs, bearer=True) == 200
        assert slurm.rest_get(None, flip_signature_char(token), jobs, bearer=True) == \
            slurm.release.bad_token
    else:
        assert slurm.rest_get(None, token, jobs, bearer=True) == 401
    assert slurm.rest_get(alice, token, jobs) == 200


def test_session_token_works_with_squeue_sbatch_and_slurmrestd(slurm, daemon, users, leaders):
    alice = users["alice"].pw_name
    token = session_token(daemon, leaders, alice)
    assert claims(token)["sun"] == alice

    run = slurm.squeue_as(alice, token)
    assert run.returncode == 0, f"squeue: {run.stderr}"
    assert "JOBID" in run.stdout

    sub = slurm.sbatch_as(alice, token)
    assert sub.returncode == 0, f"sbatch: {sub.stderr}"
    job = sub.stdout.strip().split(";")[0]
    try:
        assert job.isdigit(), sub.stdout
        for path in (slurm.path("ping"), slurm.path("jobs")):
            status, body = slurm.rest_request(alice, token, path)
            assert status == 200, f"slurmrestd {path} answered {status}: {body[:300]!r}"
        pings = slurm.rest_json(alice, token, slurm.path("ping"))["pings"]
        assert pings and pings[0].get("pinged", pings[0].get("ping")) == "UP"  # 24.11: pinged
    finally:
        slurm.scancel_as(alice, token, job)


def test_sbatch_job_belongs_to_the_token_user(slurm, daemon, users, leaders):
    alice = users["alice"]
    token = session_token(daemon, leaders, alice.pw_name)
    sub = slurm.sbatch_as(alice.pw_name, token)
    assert sub.returncode == 0, f"sbatch: {sub.stderr}"
    job = sub.stdout.strip().split(";")[0]
    try:
        seen = job_ids(slurm, alice.pw_name, token)
        assert seen.get(job) == (alice.pw_name, str(alice.pw_uid)), seen
        rest_jobs = {str(j["job_id"]): j for j in slurm.rest_json(alice.pw_name, token, slurm.path("jobs"))["jobs"]}
        assert rest_jobs[job]["user_name"] == alice.pw_name
        assert rest_jobs[job]["user_id"] == alice.pw_uid
    finally:
        cancel = slurm.scancel_as(alice.pw_name, token, job)
    assert cancel.returncode == 0, f"scancel: {cancel.stderr}"
    deadline = time.monotonic() + 10
    while job in job_ids(slurm, alice.pw_name, token) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job not in job_ids(slurm, alice.pw_name, token), "cancelled job still queued"


def test_token_with_a_flipped_signature_character_is_refused(slurm, daemon, users, leaders):
    alice = users["alice"].pw_name
    token = session_token(daemon, leaders, alice)
    assert_accepted(slurm, alice, alice, token)
    assert_refused(slurm, alice, alice, flip_signature_char(token))


def test_token_with_claims_changed_to_another_user_is_refused(slurm, daemon, users, leaders):
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    token = session_token(daemon, leaders, alice)
    forged = with_claims(token, sun=bob)
    assert claims(forged)["sun"] == bob
    assert_refused(slurm, bob, bob, forged)
    assert_refused(slurm, alice, bob, forged)
    # a longer life without re-signing is refused too
    assert_refused(slurm, alice, alice, with_claims(token, exp=claims(token)["exp"] + 3600))
    assert_accepted(slurm, alice, alice, token)


def test_expired_token_is_refused_and_a_fresh_one_accepted(slurm, daemon, users):
    alice = users["alice"].pw_name
    short = root_token(daemon, alice, lifetime=1)
    body = claims(short)
    assert body["sun"] == alice and body["exp"] - body["iat"] == 1
    # Slurm refuses once now > exp (no leeway): wait past it with a margin
    time.sleep(max(0.0, body["exp"] + 1.5 - time.time()))
    assert_refused(slurm, alice, alice, short)
    assert_accepted(slurm, alice, alice, root_token(daemon, alice))
