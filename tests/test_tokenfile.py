"""The per-user token file: written by the daemon at login, readable by its user alone (a POSIX
ACL on a file the daemon owns), replaced atomically, removed at the last logout (its directory
stays, empty, for the next login); the PAM module exports its path in SLURMJWT_TOKEN_FILE."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
import time

import jwt
import pam
import pytest

from conftest import SLURMJWT, run_as
from test_pam import SERVICES, write_service

from slurmjwtd.atomicfile import ACL_XATTR
from slurmjwtd.tokenfile import R, X, acl_users


@pytest.fixture
def service(daemon):
    write_service(SERVICES[0], daemon.root_socket, "optional")
    yield SERVICES[0]
    if os.path.exists(f"/etc/pam.d/{SERVICES[0]}"):
        os.unlink(f"/etc/pam.d/{SERVICES[0]}")


class Login:
    """A PAM login through the test service (the module on the suite's daemon)."""

    def __init__(self, service: str, user: str) -> None:
        self.p = pam.PamAuthenticator()
        assert self.p.authenticate(user, "", service=service, call_end=False)
        assert self.p.open_session() == pam.PAM_SUCCESS
        self.token = self.p.getenv("SLURM_JWT")
        self.file = self.p.getenv("SLURMJWT_TOKEN_FILE")

    def logout(self) -> None:
        assert self.p.close_session() == pam.PAM_SUCCESS
        self.p.end()


def wait_gone(path, seconds: float = 5.0) -> bool:
    """The daemon removes a file at the end of the loop's turn that closed the last session."""
    deadline = time.monotonic() + seconds
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not path.exists()


def test_login_gets_a_file_only_its_user_reads_the_last_logout_removes_it(daemon, users, service):
    alice, bob = users["alice"], users["bob"]
    tokens = daemon.dir / "tokens"
    path = tokens / str(alice.pw_uid) / "token"
    first = Login(service, alice.pw_name)
    assert first.file == str(path)
    second = Login(service, alice.pw_name)
    assert path.read_text() == second.token + "\n"  # each login's token becomes the file's

    # the daemon's files (root's here), 0700 and 0600, and alice's by ACL: no chown needed
    st, directory = path.stat(), path.parent.stat()
    assert (st.st_uid, directory.st_uid, tokens.stat().st_uid) == (0, 0, 0)
    assert stat.S_IMODE(directory.st_mode) & 0o007 == 0 and stat.S_IMODE(st.st_mode) & 0o027 == 0
    assert acl_users(os.getxattr(path, ACL_XATTR)) == {alice.pw_uid: R}
    assert acl_users(os.getxattr(path.parent, ACL_XATTR)) == {alice.pw_uid: R | X}
    assert "user:" + alice.pw_name + ":r--" in subprocess.run(
        ["getfacl", "-p", str(path)], capture_output=True, text=True, check=True).stdout

    read = run_as(alice.pw_name, "cat", str(path))
    assert read.returncode == 0 and read.stdout == second.token + "\n"
    for who in (alice.pw_name, bob.pw_name):  # nobody but the daemon writes it
        tamper = run_as(who, "sh", "-c", f"echo x > {path}")
        assert tamper.returncode != 0 and "Permission denied" in tamper.stderr
    denied = run_as(bob.pw_name, "cat", str(path))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr

    env = {"SLURMJWT_SOCKET": daemon.socket, "SLURMJWT_TOKEN_FILE": str(path)}
    shown = run_as(alice.pw_name, SLURMJWT, "token", "--file", env=env)
    assert shown.returncode == 0 and shown.stdout.strip() == str(path)
    from_file = run_as(alice.pw_name, SLURMJWT, "show", "--json", env=env)  # no variable set
    assert from_file.returncode == 0 and f'"user": "{alice.pw_name}"' in from_file.stdout
    refreshed = run_as(alice.pw_name, SLURMJWT, "refresh", env=env)  # the file stays the daemon's
    assert refreshed.returncode == 0 and path.read_text() == second.token + "\n"
    jwt.decode(path.read_text().strip(), daemon.key_file.read_bytes(), algorithms=["HS256"])

    first.logout()
    time.sleep(0.2)
    assert path.exists()  # one session left
    second.logout()
    # the file goes; the directory stays, empty, the daemon's, for her next login
    assert wait_gone(path) and os.listdir(path.parent) == []
    assert path.parent.stat().st_uid == 0 and stat.S_IMODE(path.parent.stat().st_mode) & 0o007 == 0
    assert acl_users(os.getxattr(path.parent, ACL_XATTR)) == {alice.pw_uid: R | X}
    listed = run_as(bob.pw_name, "ls", str(path.parent))
    assert listed.returncode != 0 and "Permission denied" in listed.stderr
    gone = run_as(alice.pw_name, SLURMJWT, "token", "--file", env=env)
    assert gone.returncode == 7 and gone.stdout.strip() == str(path)


def test_a_reader_never_sees_half_a_token(daemon, users, service):
    alice = users["alice"]
    first = Login(service, alice.pw_name)
    path = daemon.dir / "tokens" / str(alice.pw_uid) / "token"
    seen: set[str] = set()
    bad: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            text = path.read_text()
            if not text.endswith("\n") or text.count(".") != 2:
                bad.append(text)
            seen.add(text)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(40):  # each login rewrites the file
            Login(service, alice.pw_name).logout()
    finally:
        stop.set()
        reader.join()
    first.logout()
    assert not bad and len(seen) > 1


def test_a_directory_the_daemon_does_not_own_is_not_written(daemon, users, service):
    """A <uid> directory left by an older version (the user's own) or planted is not written
    through: the login still gets its token, and no SLURMJWT_TOKEN_FILE."""
    alice, bob = users["alice"], users["bob"]
    squatted = daemon.dir / "tokens" / str(alice.pw_uid)
    first = Login(service, alice.pw_name)  # the daemon has made and checked her directory
    assert first.file == str(squatted / "token")
    shutil.rmtree(squatted, ignore_errors=True)  # replaced while she is logged in
    squatted.mkdir(mode=0o777)
    shutil.chown(squatted, bob.pw_name)
    try:
        login = Login(service, alice.pw_name)
        assert login.token and login.file is None
        assert list(squatted.iterdir()) == []
        assert f"{squatted} is owned by uid {bob.pw_uid}" in daemon.log
        login.logout()
    finally:
        first.logout()
        shutil.rmtree(squatted, ignore_errors=True)


def test_a_link_in_place_of_the_directory_is_not_followed(daemon, users, service, tmp_path):
    alice = users["alice"]
    planted = daemon.dir / "tokens" / str(alice.pw_uid)
    shutil.rmtree(planted, ignore_errors=True)
    target = tmp_path / "elsewhere"
    target.mkdir()
    planted.symlink_to(target)
    try:
        login = Login(service, alice.pw_name)
        assert login.token and login.file is None and list(target.iterdir()) == []
        login.logout()
    finally:
        planted.unlink()
