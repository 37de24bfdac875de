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
