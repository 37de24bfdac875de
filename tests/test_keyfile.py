"""The key file is checked as munged checks its key: each unsafe case stops the daemon
with a message naming the file, the problem and the command that fixes it."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SLURMJWT, SLURMJWTD, make_key, run_as
from test_hostile_files import daemon_account  # noqa: F401 (a fixture)


@pytest.fixture
def keydir(scratch) -> Path:
    return scratch


def check(key: Path, tmp: Path) -> subprocess.CompletedProcess:
    config = tmp / "check.toml"
    config.write_text(f'key_file = "{key}"\nsocket = "{tmp}/s.sock"\n'
                      f'session_file = "{tmp}/sessions.json"\n')
    return subprocess.run([SLURMJWTD, "--config", str(config), "--check-config"],
                          capture_output=True, text=True)


@pytest.mark.parametrize("owner, group, mode", [
    ("slurm", "slurmjwt", 0o640),  # the site guide's own setup
    ("root", "slurmjwt", 0o440),
])
def test_safe_keys_pass(keydir, daemon_account, owner, group, mode):
    """Safe, and readable by the unit's User= (slurm:slurm 0600 is safe but not: see
    test_hostile_files.py)."""
    key = keydir / "jwt_hs256.key"
    make_key(key, owner, group, mode)
    result = check(key, keydir)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("owner, group, mode", [("slurm", "slurm", 0o600), ("root", "root", 0o400)])
def test_keys_only_their_owner_reads_start_a_daemon_run_as_root(keydir, users, owner, group, mode):
    key = keydir / "jwt_hs256.key"
    make_key(key, owner, group, mode)
    config = keydir / "run.toml"
    config.write_text(f'key_file = "{key}"\nsocket = "{keydir}/run.sock"\n'
                      f'session_file = "{keydir}/sessions.json"\nroot_socket = "{keydir}/root.sock"\n'
                      f'token_dir = "{keydir}/tokens"\nrevocation_file = "{keydir}/revoked.json"\n')
    daemon = subprocess.Popen([SLURMJWTD, "--config", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if (keydir / "run.sock").exists() or daemon.poll() is not None:
                break
            time.sleep(0.05)
        assert (keydir / "run.sock").exists(), daemon.stderr.read() if daemon.poll() is not None else ""
    finally:
        daemon.terminate()
        daemon.wait(10)


def case_other_bits(d, users):
    key = d / "k"
    make_key(key, mode=0o644)
    return key, "gives other users access", f"chmod o-rwx {key}"


def case_group_write(d, users):
    key = d / "k"
    make_key(key, mode=0o660)
    return key, "lets its group write it", f"chmod g-w {key}"


def case_too_short(d, users):
    key = d / "k"
    make_key(key, size=16)
    return key, "16 bytes, at least 32 needed", f"slurmjwt keygen --force {key}"


def case_wrong_owner(d, users):
    key = d / "k"
    make_key(key, owner=users["alice"].pw_name)
    return key, f"owned by {users['alice'].pw_name}", f"chown root {key}"


def case_symlink(d, users):
    real = d / "real"
    make_key(real)
    link = d / "k"
    link.symlink_to(real)
    return link, "is a symbolic link", "readlink -f"


def case_missing(d, users):
    return d / "k", "not found", f"slurmjwt keygen {d / 'k'}"


def case_directory(d, users):
    (d / "k").mkdir()
    os.chmod(d / "k", 0o750)
    return d / "k", "not a regular file", "key_file"


def case_writable_dir(d, users):
    sub = d / "open"
    sub.mkdir()
    os.chmod(sub, 0o777)
    key = sub / "k"
    make_key(key)
    return key, f"directory {sub} is writable by others", f"chmod o-w {sub}"


@pytest.mark.parametrize("case", [case_other_bits, case_group_write, case_too_short,
                                  case_wrong_owner, case_symlink, case_missing, case_directory,
                                  case_writable_dir], ids=lambda f: f.__name__[5:])
def test_insecure_key_is_refused_with_its_fix(keydir, users, case):
    key, problem, fix = case(keydir, users)
    result = check(key, keydir)
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"key file {key}" in result.stderr and problem in result.stderr and fix in result.stderr


def test_sticky_world_writable_directory_is_accepted(keydir):
    sub = keydir / "sticky"
    sub.mkdir()
    os.chmod(sub, 0o1777)
    key = sub / "k"
    make_key(key)
    assert check(key, keydir).returncode == 0


def test_daemon_does_not_start_on_an_insecure_key(keydir):
    key = keydir / "k"
    make_key(key, mode=0o644)
    config = keydir / "run.toml"
    config.write_text(f'key_file = "{key}"\nsocket = "{keydir}/run.sock"\n'
                      f'session_file = "{keydir}/sessions.json"\n')
    result = subprocess.run([SLURMJWTD, "--config", str(config)], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 3 and "chmod o-rwx" in result.stderr
    assert not (keydir / "run.sock").exists()


def test_bad_configuration_stops_the_daemon_naming_the_key(keydir):
    config = keydir / "bad.toml"
    config.write_text("lifetime = 99999\nmax_lifetime = 3600\n")
    result = subprocess.run([SLURMJWTD, "--config", str(config), "--check-config"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "'lifetime'" in result.stderr
    assert result.stderr.count("\n") == 1


def test_keygen_makes_the_site_guide_key_and_never_overwrites(keydir, users):
    key = keydir / "new.key"
    made = subprocess.run([SLURMJWT, "keygen", str(key)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    st = key.stat()
    assert st.st_size == 32 and oct(st.st_mode & 0o777) == "0o640"
    assert (st.st_uid, st.st_gid) == (pwd.getpwnam("slurm").pw_uid, grp.getgrnam("slurmjwt").gr_gid)
    assert check(key, keydir).returncode == 0
    before = key.read_bytes()
    again = subprocess.run([SLURMJWT, "keygen", str(key)], capture_output=True, text=True)
    assert again.returncode == 8 and "--force" in again.stderr and key.read_bytes() == before
    forced = subprocess.run([SLURMJWT, "keygen", "--force", str(key)], capture_output=True,
                            text=True)
    assert forced.returncode == 0 and key.read_bytes() != before
    assert not [p for p in keydir.iterdir() if ".tmp" in p.name]  # no temporary left behind
    denied = run_as(users["alice"].pw_name, SLURMJWT, "keygen", str(keydir / "mine.key"))
    assert denied.returncode == 8 and not (keydir / "mine.key").exists()

