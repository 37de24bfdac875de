"""The per-user token file: written at login by the PAM module and at each grant by the
CLI, 0600 and the user's alone, replaced atomically, removed at the last logout."""

from __future__ import annotations

import os
import shutil
import stat
import threading

import jwt
import pam
import pytest

from conftest import SLURMJWT, run_as
from test_pam import SERVICES, write_service


@pytest.fixture
def tokendir(workdir):
    base = workdir / "tokens"
    shutil.rmtree(base, ignore_errors=True)
    yield base
    shutil.rmtree(base, ignore_errors=True)
    for name in SERVICES:
        if os.path.exists(f"/etc/pam.d/{name}"):
            os.unlink(f"/etc/pam.d/{name}")


class Login:
    """A PAM login through the test service, with the module writing token files to BASE."""

    def __init__(self, daemon, user: str, base) -> None:
        write_service(SERVICES[0], daemon.root_socket, "optional", f"tokendir={base}")
        self.p = pam.PamAuthenticator()
        assert self.p.authenticate(user, "", service=SERVICES[0], call_end=False)
        assert self.p.open_session() == pam.PAM_SUCCESS
        self.token = self.p.getenv("SLURM_JWT")

    def logout(self) -> None:
        assert self.p.close_session() == pam.PAM_SUCCESS
        self.p.end()


def test_login_writes_the_file_the_cli_replaces_it_the_last_logout_removes_it(
        daemon, users, tokendir):
    alice = users["alice"]
    path = tokendir / str(alice.pw_uid) / "token"
    first = Login(daemon, alice.pw_name, tokendir)
    second = Login(daemon, alice.pw_name, tokendir)
    st = path.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.pw_uid, 0o600)
    directory = path.parent.stat()
    assert (directory.st_uid, stat.S_IMODE(directory.st_mode)) == (alice.pw_uid, 0o700)
    assert stat.S_IMODE(tokendir.stat().st_mode) == 0o755 and tokendir.stat().st_uid == 0
    assert path.read_text() == second.token + "\n"

    env = {"SLURMJWT_SOCKET": daemon.socket, "SLURMJWT_TOKEN_DIR": str(tokendir)}
    refreshed = run_as(alice.pw_name, SLURMJWT, "refresh", env=env)
    assert refreshed.returncode == 0, refreshed.stderr
    new = refreshed.stdout.strip().split("=", 1)[1]
    assert path.read_text() == new + "\n"
    jwt.decode(new, daemon.key_file.read_bytes(), algorithms=["HS256"])
    shown = run_as(alice.pw_name, SLURMJWT, "token", "--file", env=env)
    assert shown.returncode == 0 and shown.stdout.strip() == str(path)
    from_file = run_as(alice.pw_name, SLURMJWT, "show", "--json", env=env)  # no variable set
    assert from_file.returncode == 0 and f'"user": "{alice.pw_name}"' in from_file.stdout

    denied = run_as(users["bob"].pw_name, "cat", str(path))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr

    first.logout()
    assert path.exists()  # one session left
    second.logout()
    assert not path.exists() and not path.parent.exists()
    gone = run_as(alice.pw_name, SLURMJWT, "token", "--file", env=env)
    assert gone.returncode == 7 and gone.stdout.strip() == str(path)


def test_a_reader_never_sees_half_a_token(daemon, users, tokendir):
    alice = users["alice"]
    login = Login(daemon, alice.pw_name, tokendir)
    path = tokendir / str(alice.pw_uid) / "token"
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
    env = {"SLURMJWT_SOCKET": daemon.socket, "SLURMJWT_TOKEN_DIR": str(tokendir)}
    script = "for i in $(seq 40); do slurmjwt refresh >/dev/null || exit 1; done"
    result = run_as(alice.pw_name, "sh", "-c", script,
                    env=env | {"PATH": f"{os.path.dirname(SLURMJWT)}:/usr/bin:/bin"})
    stop.set()
    reader.join()
    login.logout()
    assert result.returncode == 0, result.stderr
    assert not bad and len(seen) > 1


def test_a_foreign_directory_is_refused(daemon, users, tokendir):
    """A token directory not owned by the user is neither written by the module nor the CLI."""
    alice, bob = users["alice"], users["bob"]
    tokendir.mkdir(mode=0o755)
    squatted = tokendir / str(alice.pw_uid)
    squatted.mkdir(mode=0o777)
    shutil.chown(squatted, bob.pw_name)
    login = Login(daemon, alice.pw_name, tokendir)
    assert login.token and not (squatted / "token").exists()
    env = {"SLURMJWT_SOCKET": daemon.socket, "SLURMJWT_TOKEN_DIR": str(tokendir)}
    refreshed = run_as(alice.pw_name, SLURMJWT, "refresh", env=env)
    assert refreshed.returncode == 0 and "not owned by" in refreshed.stderr
    assert list(squatted.iterdir()) == []
    login.logout()
