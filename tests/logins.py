"""Logins as a person makes them, for the tests that need a real terminal or a real login shell.

`Account` gives a test user a login shell (bash, zsh, tcsh or sh) and a fresh home with startup
files; `Terminal` is /usr/bin/ssh -tt on a pty of our own, driven as a person at a keyboard would;
`start_sshd` starts an sshd whose session stack runs pam_slurmjwt.so.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import jwt
import pytest

from conftest import VENV, sh
from sshd_server import SSH, SshServer, pam_stack

SHELLS = {"bash": "/bin/bash", "zsh": "/usr/bin/zsh", "tcsh": "/usr/bin/tcsh", "sh": "/bin/sh"}
PROMPT = "SJT> "
JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def verified(daemon, token: str, user: str) -> dict:
    assert JWT.fullmatch(token), f"not a JWT: {token[:40]!r}"
    claims = jwt.decode(token, daemon.key_file.read_bytes(), algorithms=["HS256"])
    assert claims["sun"] == user
    return claims


# -- the user's login shell and home ------------------------------------------------------
class Account:
    """USER with login shell SHELL and a fresh home holding startup files for all three."""

    def __init__(self, user: str, home: Path) -> None:
        self.user = user
        self.home = home
        self.entry = pwd.getpwnam(user)

    def setup(self, shell: str, socket: str, autorenew: bool = False) -> Account:
        """Startup files that put the venv's slurmjwt on PATH, name SOCKET and set the prompt."""
        self.home.mkdir(mode=0o700, parents=True)
        files = {
            ".profile": f"""PATH={VENV}/bin:$PATH
SLURMJWT_SOCKET={socket}; export SLURMJWT_SOCKET
PS1='{PROMPT}'
{'SLURMJWT_AUTORENEW=1' if autorenew else ''}
""",
            # the line an admin adds to /etc/zsh/zshrc (Debian's zsh never reads /etc/profile)
            ".zshrc": f"""[ -r /etc/profile.d/slurmjwt.sh ] && . /etc/profile.d/slurmjwt.sh
path=({VENV}/bin $path)
export SLURMJWT_SOCKET={socket}
PS1='{PROMPT}'
{'SLURMJWT_AUTORENEW=1' if autorenew else ''}
""",
            ".tcshrc": f"""set path = ({VENV}/bin $path)
setenv SLURMJWT_SOCKET {socket}
set prompt = '{PROMPT}'
{'setenv SLURMJWT_AUTORENEW 1' if autorenew else ''}
""",
        }
        return self.make(shell, files)

    def make(self, shell: str, files: dict[str, str]) -> Account:
        """A fresh home holding FILES, and SHELL as the login shell."""
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(mode=0o700, parents=True)
        for name, text in files.items():
            (self.home / name).write_text(text)
        for path in (self.home, *self.home.iterdir()):
            os.chown(path, self.entry.pw_uid, self.entry.pw_gid)
        self._usermod("-s", SHELLS[shell], "-d", str(self.home))
        return self

    def restore(self) -> None:
        try:
            pwd.getpwnam(self.user)
        except KeyError:  # gone already: nothing to restore
            shutil.rmtree(self.home, ignore_errors=True)
            return
        try:
            self._usermod("-s", self.entry.pw_shell, "-d", self.entry.pw_dir)
        finally:
            shutil.rmtree(self.home, ignore_errors=True)

    def _usermod(self, *args: str, timeout: float = 10) -> None:
        """usermod refuses to change the home of a user who has processes: a session that
        just ended may still be exiting, so try again for a while."""
        deadline = time.monotonic() + timeout
        while (run := sh("usermod", *args, self.user, check=False)).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"usermod {' '.join(args)} {self.user}: {run.stderr.strip()}")
            time.sleep(0.05)

    def give(self, name: str, text: str) -> None:
        """A file in the home that only the user reads."""
        path = self.home / name
        path.write_text(text)
        os.chown(path, self.entry.pw_uid, self.entry.pw_gid)
        os.chmod(path, 0o600)

    def read(self, name: str) -> str:
        return (self.home / name).read_text().strip()


@pytest.fixture
def account(users, workdir):
    """Alice, whose login shell and home a test sets up; restored afterwards."""
    acc = Account(users["alice"].pw_name, workdir / "login-home")
    yield acc
    acc.restore()


# -- a terminal ---------------------------------------------------------------------------
class Terminal:
    """/usr/bin/ssh -tt on a pty of our own: what it reads is what the user's screen shows."""

    def __init__(self, server: SshServer, user: str) -> None:
        args = [SSH, "-F", "none", "-i", str(server.keys[user]), "-p", str(server.port), "-tt",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"{user}@127.0.0.1"]
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TERM": "dumb"})
        os.close(slave)
        self.screen = ""  # everything the terminal received
        self.markers = 0

    def _read(self, deadline: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: ssh has gone
            data = b""
        if not data:
            raise AssertionError(f"the session ended; the screen showed:\n{self.screen[-2000:]}")
        self.screen += data.decode("utf-8", "replace")
        return True

    def wait(self, pattern: str, start: int = 0, timeout: float = 15) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (found := re.compile(pattern).search(self.screen, start)):
            if not self._read(deadline) and time.monotonic() >= deadline:
                raise AssertionError(f"no {pattern!r} within {timeout} s; the screen showed:\n"
                                     f"{self.screen[-2000:]}")
        return found

    def prompts(self) -> int:
        return self.screen.count(PROMPT)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def run(self, command: str, timeout: float = 15) -> str:
        """Type COMMAND, wait for it to finish and for the next prompt; what it printed."""
        self.markers += 1
        marker = f"@@{self.markers}@@"
        # the shell prints "@@N@@"; the echo of what was typed shows "@@""N@@"
        self.send(f'{command}; echo "@@""{self.markers}@@"\r')
        start = len(self.screen)
        done = self.wait(re.escape(marker), start, timeout)
        self.wait(re.escape(PROMPT), done.end(), timeout)
        echoed = self.screen.find("\n", start)
        return self.screen[echoed + 1 if echoed >= 0 else start:done.start()]

    def enter(self, timeout: float = 5) -> float:
        """Press Enter on an empty line; seconds until the next prompt is drawn."""
        count = self.prompts()
        started = time.monotonic()
        self.send("\r")
        deadline = started + timeout
        while self.prompts() <= count:
            if not self._read(deadline) and time.monotonic() >= deadline:
                raise AssertionError(f"no prompt within {timeout} s:\n{self.screen[-2000:]}")
        return time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminals():
    opened: list[Terminal] = []

    def open_terminal(server: SshServer, user: str) -> Terminal:
        term = Terminal(server, user)
        opened.append(term)
        term.wait(re.escape(PROMPT))
        return term

    yield open_terminal
    for term in opened:
        term.close()


# -- servers ------------------------------------------------------------------------------
def start_sshd(workdir: Path, name: str, port: int, socket_or_stack: str | list[str],
               users) -> SshServer:
    """sshd in WORKDIR/sshd-NAME on PORT, PAM service sshd-sjt-NAME, its session stack the
    module asking SOCKET (or the lines given)."""
    stack = pam_stack(socket_or_stack) if isinstance(socket_or_stack, str) else socket_or_stack
    server = SshServer(workdir / f"sshd-{name}", stack, port=port, service=f"sshd-sjt-{name}")
    server.add_key(users["alice"].pw_name)
    return server.start()
