"""In-process tests of the daemon's parts, as any user: `pytest tests/unit` (no root, no build,
no users made, a few seconds). The real Operations, Server, SessionRegistry and RateLimiter on
a fake state; tests/ holds the root tests, with real users, sshd and Slurm.

The fake state (`make_state`): a Config from the configuration table with every file in
tmp_path (an HS256 key of this user's, 0600, loaded by signer.load with all its checks; the
session file, the token files' directory, the revocation file) and the two sockets in a short temporary directory (a socket's path must fit in
108 bytes); the audit lines recorded (`Audit`). Callers are Caller records, as the server
makes them from SO_PEERCRED: ROOT (uid 0) and USER, the account `nobody` (uid 65534, every
Debian has it), both with this process as their pid, so the sessions they open stay live.
NSS lookups are real: root, nobody and NO_SUCH_USER, a name no one has.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import pytest

from slurmjwtd import signer as signers
from slurmjwtd.audit import format_audit
from slurmjwtd.config import Config
from slurmjwtd.policy import Caller
from slurmjwtd.sessions import SessionRegistry
from slurmjwtd.signer import ScontrolSigner, Signer
from slurmjwtd.state import DaemonState

NOBODY = pwd.getpwnam("nobody")
ROOT = Caller(0, 0, os.getpid())
USER = Caller(NOBODY.pw_uid, NOBODY.pw_gid, os.getpid())
NO_SUCH_USER = "sjt-no-such-user"


class Audit:
    """The state's audit sink: the fields of every line written, each checked as the daemon's
    log formats it (only known fields: none can carry a token)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []

    def __call__(self, **fields: object) -> None:
        format_audit(fields)  # raises on a field that is not an audit field
        self.lines.append(fields)


class BrokenSigner:
    """A signer failing as none should (not a SignerError): the daemon's `internal`."""

    name = "broken"
    blocking = False

    def mint(self, user: str, lifetime: int, now: int, deadline: float | None = None):
        raise RuntimeError("a bug in the signer")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwt_hs256.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


@pytest.fixture
def socket_dir():
    path = Path(tempfile.mkdtemp(prefix="sjt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_state(tmp_path, key_file, socket_dir) -> Callable[..., DaemonState]:
    """make_state(signer=None, **settings): a DaemonState with SETTINGS over the test's files,
    and SIGNER, or the one the configuration names, loaded as the daemon loads it."""

    def make(signer: Signer | None = None, **settings: object) -> DaemonState:
        config = Config(socket=str(socket_dir / "public.sock"), root_socket=str(socket_dir / "root.sock"),
                        session_file=str(tmp_path / "sessions.json"), key_file=str(key_file),
                        token_dir=str(tmp_path / "tokens"),
                        revocation_file=str(tmp_path / "revoked.json"),
                        **{"fast_path": False, **settings})  # the Python loop: the reference
        state = DaemonState(config, signer or signers.load(config),
                            SessionRegistry(config.session_file), audit_log=Audit())
        state.files.open()  # as the server's startup does: the token files' directory
        made.append(state)
        return state

    made: list[DaemonState] = []
    yield make
    for state in made:
        state.files.close()



@pytest.fixture
def state(make_state) -> DaemonState:
    return make_state()


@pytest.fixture
def scontrol(tmp_path) -> Callable[[str], ScontrolSigner]:
    """scontrol(script): the real scontrol signer running SCRIPT (sh) as its `scontrol`."""

    def make(script: str, timeout: float = 5.0) -> ScontrolSigner:
        path = tmp_path / "scontrol"
        path.write_text(f"#!/bin/sh\n{script}\n")
        path.chmod(0o755)
        return ScontrolSigner(str(path), timeout)

    return make


@pytest.fixture
def gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
