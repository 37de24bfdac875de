"""Talking to slurmrestd with the current token: `slurmjwt curl` and `slurmjwt headers`,
and `slurmjwt show` for people and for scripts."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from conftest import SLURMJWT, run_as
from slurmjwtd.slurm_versions import format_version, newest_api


@pytest.fixture
def alice_token(daemon, users, leaders) -> str:
    leaders(daemon.root_socket, users["alice"].pw_name)
    result = daemon.token_as(users["alice"].pw_name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split("=", 1)[1]


@pytest.fixture
def curl_spy(workdir):
    """A `curl` first on PATH that records its argv, then runs the real one."""
    spy_dir = workdir / "curl-spy"
    spy_dir.mkdir(mode=0o755, exist_ok=True)
    log = spy_dir / "argv"
    log.write_text("")
    os.chmod(log, 0o666)
    (spy_dir / "curl").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {log}\nexec /usr/bin/curl "$@"\n')
    os.chmod(spy_dir / "curl", 0o755)
    yield spy_dir, log


def all_cmdlines() -> list[bytes]:
    lines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            pass
    return lines


def test_curl_reaches_slurmrestd_without_the_token_in_any_argv(slurm, users, alice_token,
                                                               curl_spy):
    spy_dir, argv_log = curl_spy
    seen_in_argv = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen_in_argv.extend(c for c in all_cmdlines() if alice_token.encode() in c)

    watcher = threading.Thread(target=watch)
    watcher.start()
    env = {"SLURM_JWT": alice_token, "SLURMRESTD_URL": slurm.rest_url,
           "PATH": f"{spy_dir}:/usr/bin:/bin"}
    ping = slurm.path("ping")
    try:
        results = [run_as(users["alice"].pw_name, SLURMJWT, "curl", "-s", "-o", "/dev/null",
                          "-w", "%{http_code}", ping, env=env) for _ in range(5)]
    finally:
        stop.set()
        watcher.join()
    assert all(r.returncode == 0 and r.stdout == "200" for r in results), results[0].stderr
    recorded = argv_log.read_text()
    assert recorded.count(slurm.rest_url + ping) == 5  # the spy saw every call
    assert alice_token not in recorded and "X-SLURM-USER-TOKEN" not in recorded
    assert not seen_in_argv


def test_curl_with_an_expired_or_missing_token_fails_before_curl_runs(slurm, users, curl_spy):
    spy_dir, argv_log = curl_spy
    env = {"SLURMRESTD_URL": slurm.rest_url, "PATH": f"{spy_dir}:/usr/bin:/bin",
           "SLURMJWT_TOKEN_DIR": "/nonexistent"}
    missing = run_as(users["alice"].pw_name, SLURMJWT, "curl", slurm.path("ping"), env=env)
    assert missing.returncode == 7 and missing.stderr.count("\n") == 1
    not_a_path = run_as(users["alice"].pw_name, SLURMJWT, "curl", "http://elsewhere/", env=env)
    assert not_a_path.returncode == 2
    assert argv_log.read_text() == ""


def test_headers_work_with_another_http_client(slurm, users, alice_token):
    result = run_as(users["alice"].pw_name, SLURMJWT, "headers", env={"SLURM_JWT": alice_token})
    assert result.returncode == 0
    name, token = result.stdout.splitlines()
    assert name == f"X-SLURM-USER-NAME: {users['alice'].pw_name}"
    assert token == f"X-SLURM-USER-TOKEN: {alice_token}"
    assert slurm.rest_get(users["alice"].pw_name, alice_token) == 200


def test_show_speaks_to_people_and_scripts(daemon, users, alice_token):
    alice = users["alice"].pw_name
    human = run_as(alice, SLURMJWT, "show", env={"SLURM_JWT": alice_token})
    assert human.returncode == 0 and f"user:    {alice}" in human.stdout
    assert "expires: " in human.stdout and "left:    " in human.stdout
    data = json.loads(run_as(alice, SLURMJWT, "show", "--json",
                             env={"SLURM_JWT": alice_token}).stdout)
    assert data["user"] == alice and data["expired"] is False and 3590 < data["left"] <= 3600
    assert data["expires"] - data["issued"] == 3600
    expired = run_as("root", SLURMJWT, "token", "--user", alice, "--lifetime", "1",
                     env={"SLURMJWT_SOCKET": daemon.socket}).stdout.strip().split("=", 1)[1]
    time.sleep(2.1)
    old = json.loads(run_as(alice, SLURMJWT, "show", "--json", env={"SLURM_JWT": expired}).stdout)
    assert old["expired"] is True and old["left"] < 0
    said = run_as(alice, SLURMJWT, "show", env={"SLURM_JWT": expired}).stdout
    assert "expired" in said and "slurmjwt refresh" in said


def test_the_variable_name_is_the_sites(daemon, users, alice_token):
    env = {"SLURMJWT_SOCKET": daemon.socket, "SLURMJWT_VARIABLE": "SLURM_JWT_TOKEN"}
    alice = users["alice"].pw_name
    refresh = run_as(alice, SLURMJWT, "refresh", env=env)
    assert refresh.stdout.startswith("export SLURM_JWT_TOKEN=")
    csh = run_as(alice, SLURMJWT, "refresh", "--csh", env=env)
    assert csh.stdout.startswith("setenv SLURM_JWT_TOKEN ") and csh.stdout.count(" ") == 2
    token = run_as(alice, SLURMJWT, "token", env=env)
    assert token.stdout.startswith("SLURM_JWT_TOKEN=")
    shown = run_as(alice, SLURMJWT, "show", env=env | {"SLURM_JWT_TOKEN": alice_token})
    assert shown.returncode == 0 and alice in shown.stdout


# -- what differs between releases: the API version, the status for a bad token -------------
def test_curl_without_an_api_version_uses_the_newest_slurmrestd_serves(slurm, users, alice_token,
                                                                      curl_spy):
    """/slurm/diag becomes /slurm/<newest>/diag: v0.0.38 with 22.05, v0.0.42 with 24.11, as
    slurmrestd's own /openapi/v3 says (asked in-process: the token is in no argv there either)."""
    spy_dir, argv_log = curl_spy
    env = {"SLURM_JWT": alice_token, "SLURMRESTD_URL": slurm.rest_url,
           "PATH": f"{spy_dir}:/usr/bin:/bin"}
    run = run_as(users["alice"].pw_name, SLURMJWT, "curl", "-s", "-o", "/dev/null", "-w",
                 "%{http_code}", "/slurm/diag", env=env)
    assert run.returncode == 0 and run.stdout == "200", run.stderr
    newest = newest_api(slurm.release.api)
    assert argv_log.read_text().splitlines()[-1] == f"{slurm.rest_url}/slurm/{newest}/diag"
    assert alice_token not in argv_log.read_text()

    # nothing answers there: one line naming the fix, and curl never runs
    argv_log.write_text("")
    gone = run_as(users["alice"].pw_name, SLURMJWT, "curl", "/slurm/diag",
                  env=env | {"SLURMRESTD_URL": "http://127.0.0.1:9"})
    assert gone.returncode == 9 and gone.stderr.count("\n") == 1, gone.stderr
    assert "cannot reach http://127.0.0.1:9/openapi/v3" in gone.stderr
    assert "/slurm/vX.Y.Z/diag" in gone.stderr and argv_log.read_text() == ""


def rest_findings(user: str, token: str, slurm) -> list[dict]:
    run = run_as(user, SLURMJWT, "doctor", "--json", "--config", "/nonexistent/slurmjwtd.toml",
                 "--slurm-conf", str(slurm.conf), env={"SLURM_JWT": token, "SLURMRESTD_URL": slurm.rest_url})
    return [f for f in json.loads(run.stdout) if f["topic"] == "rest"]


def test_doctor_checks_slurmrestd_as_its_release_answers(slurm, users, alice_token):
    """doctor names slurmrestd's release and API versions, sees a forged token refused with the
    release's own status for a bad token (22.05: 500, 24.11: 511) on /diag (never /ping, which
    24.11 answers 200 whatever the token), and the login's token accepted."""
    alice = users["alice"].pw_name
    newest, bad = newest_api(slurm.release.api), slurm.release.bad_token
    found = rest_findings(alice, alice_token, slurm)
    assert [f["level"] for f in found] == ["ok", "ok", "ok"], found
    # 22.05's slurmrestd names no release: doctor then says scontrol's (here: with --slurm-conf)
    named = slurm.version >= (23, 2, 0)
    release = format_version(slurm.version) + ("" if named else " (as `scontrol --version` says "
                                                              "here: slurmrestd names no release)")
    assert found[0]["what"] == (f"slurmrestd at {slurm.rest_url}: Slurm {release}, API "
                                f"{', '.join(slurm.release.api)}; `slurmjwt curl /slurm/PATH` uses {newest}")
    diag = f"{slurm.rest_url}/slurm/{newest}/diag"
    assert found[1]["what"] == (f"slurmrestd refuses a forged token (GET {diag}: HTTP {bad}, "
                                f"as its release does)")
    assert found[2]["what"] == f"slurmrestd accepts {alice}'s token (GET {diag}: 200)"

    # a token slurmctld cannot verify (here: one signature character changed) is a problem
    head, body, sig = alice_token.split(".")
    wrong = f"{head}.{body}.{sig[:10]}{'A' if sig[10] != 'A' else 'B'}{sig[11:]}"
    refused = rest_findings(alice, wrong, slurm)
    assert refused[2]["level"] == "PROBLEM", refused
    assert refused[2]["what"] == f"slurmrestd refuses {alice}'s token (GET {diag}: HTTP {bad})"
    assert "same jwt_key" in refused[2]["fix"]
