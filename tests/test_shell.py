"""Shell integration (shell/slurmjwt.sh, shell/slurmjwt.csh) in real login shells.

Every test logs in over SSH (tests/sshd_server.py, pam_slurmjwt.so in the session stack) as a
test user whose login shell is bash, zsh or tcsh, on a pty driven from Python, as a person at a
terminal would. The files are installed where `make install` puts them and where Debian's
shells read them: /etc/profile.d/slurmjwt.sh (bash, through /etc/profile) and
/etc/csh/cshrc.d/slurmjwt.csh (tcsh, through /etc/csh.cshrc); Debian's zsh reads neither, so
the user's ~/.zshrc holds the line an admin puts in /etc/zsh/zshrc. The user gets a temporary
home with startup files that put the venv's slurmjwt on PATH, name the test daemon's socket and
set a plain prompt. Tokens are read back through files in that home, never through the
terminal, so a test can assert that the terminal never showed one.

The token file slurmjwtd keeps fresh (issue 12) is played by a file the test replaces by rename,
as the daemon does, holding tokens the daemon minted; the session is pointed at it by typing
SLURMJWT_TOKEN_FILE, which overrides whatever path the PAM module exports. Processes a prompt
starts are counted by strace attached to the shell.

Files a crashed run left are replaced (they carry a marker line); a file that was there before
and is not ours is set aside and put back. Login shells and homes are restored after each test.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SLURMJWT
from logins import PROMPT, account, SHELLS, Account, Terminal, start_sshd, terminals, verified  # noqa: F401 (fixtures)
from sshd_server import pam_stack

SHELL_DIR = Path(__file__).resolve().parent.parent / "shell"
SH_FILE, CSH_FILE = Path("/etc/profile.d/slurmjwt.sh"), Path("/etc/csh/cshrc.d/slurmjwt.csh")
MARK = "# installed for a test by tests/test_shell.py: remove me\n"
SAVED = Path("/var/tmp/slurmjwt-test-shell-saved")
PROMPT_HOOKS = ["bash", "zsh", "tcsh"]  # POSIX sh (dash) has no prompt hook: no auto-renewal
PORT, NAME_PORT, DOWN_PORT = 2226, 2228, 2230
STRACE = shutil.which("strace") or "/usr/bin/strace"


@pytest.fixture(scope="module", autouse=True)
def shells_present():
    missing = [path for path in SHELLS.values() if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: apt-get install zsh tcsh")


# -- the installed files ------------------------------------------------------------------
@pytest.fixture(scope="module")
def install():
    """Both files where `make install` puts them, for this module's tests. A file of an admin's
    is kept outside the tests' workdir (which each run wipes) until it is put back."""
    SAVED.mkdir(mode=0o700, exist_ok=True)
    for src, dest in ((SHELL_DIR / "slurmjwt.sh", SH_FILE), (SHELL_DIR / "slurmjwt.csh", CSH_FILE)):
        if dest.exists() and not dest.read_text(errors="replace").startswith(MARK):
            shutil.copy2(dest, SAVED / dest.name)
        # else: ours, left by a crashed run, and the admin's file (if any) is still in SAVED
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(MARK + src.read_text())
        os.chmod(dest, 0o644)
    yield
    for dest in (SH_FILE, CSH_FILE):
        if (SAVED / dest.name).exists():
            shutil.copy2(SAVED / dest.name, dest)
            (SAVED / dest.name).unlink()
        else:
            dest.unlink(missing_ok=True)
    SAVED.rmdir()


# -- servers ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sshd(daemon, users, workdir, install):
    server = start_sshd(workdir, "shell", PORT, daemon.root_socket, users)
    yield server
    server.stop()


# -- shell syntax -------------------------------------------------------------------------
def set_var(shell: str, name: str, file: str) -> str:
    """The command that sets NAME, exported, to the content of ~/FILE."""
    if shell == "tcsh":
        return f'setenv {name} "`cat ~/{file}`"'
    return f'{name}="$(cat ~/{file})"; export {name}'


def export(shell: str, name: str, value: str) -> str:
    """The command that sets NAME, exported, to VALUE (one word, nothing to quote)."""
    return f"setenv {name} {value}" if shell == "tcsh" else f"export {name}={value}"


def unexport(shell: str, name: str) -> str:
    return f"unsetenv {name}" if shell == "tcsh" else f"unset {name}"


def save_var(name: str, file: str) -> str:
    """The command that writes NAME's value to ~/FILE (nothing if NAME is unset)."""
    return f"printenv {name} > ~/{file}"


def mint_short(daemon, user: str, lifetime: int = 30) -> str:
    """A token for USER that expires in LIFETIME seconds, minted by root."""
    run = subprocess.run([SLURMJWT, "token", "--user", user, "--lifetime", str(lifetime)], check=False,
                         capture_output=True, text=True,
                         env={"SLURMJWT_SOCKET": daemon.socket, "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip().split("=", 1)[1]
    assert verified(daemon, token, user)["exp"] - time.time() < lifetime + 5
    return token


class TokenFile:
    """The user's token file as slurmjwtd keeps it: root's file in a directory of root's (here
    in the user's home), which the user reads and cannot write, replaced by rename (a new file
    each time, which a filesystem may give the inode just freed) with the token and a newline."""

    def __init__(self, account: Account) -> None:
        self.dir = account.home / "tokens"
        self.dir.mkdir(mode=0o755)
        self.path = self.dir / "token"

    def replace(self, content: str | bytes, age: float = 0) -> None:
        """CONTENT in the file; AGE seconds old, as the daemon's file is between renewals."""
        new = self.dir / ".token.new"
        new.write_bytes(content.encode() if isinstance(content, str) else content)
        os.chmod(new, 0o644)
        if age:
            os.utime(new, (time.time() - age, time.time() - age))
        os.rename(new, self.path)

    def follow(self, shell: str) -> str:
        """The command pointing the session at the file, as the PAM module will."""
        return export(shell, "SLURMJWT_TOKEN_FILE", str(self.path))


def shell_pid(term: Terminal, account: Account) -> int:
    term.run("echo $$ > ~/pid")
    return int(account.read("pid"))


@contextlib.contextmanager
def traced(pid: int, out: Path):
    """strace -f on PID while the block runs. Yields a list, filled when the block ends with
    what PID and its children started: ("fork", "") for each clone, clone3, fork or vfork,
    ("execve", PATH) for each exec."""
    if not os.access(STRACE, os.X_OK):
        pytest.fail("strace missing: apt-get install strace")
    calls: list[tuple[str, str]] = []
    proc = subprocess.Popen([STRACE, "-f", "-e", "trace=clone,clone3,fork,vfork,execve",
                             "-e", "signal=none", "-o", str(out), "-p", str(pid)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        said, deadline = b"", time.monotonic() + 10  # it traces once it says it has attached
        while b"attached" not in said:
            if not select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise AssertionError(f"strace did not attach to {pid}: {said!r}")
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"strace could not attach to {pid}: {said!r}")
            said += chunk
        yield calls
    finally:
        proc.send_signal(signal.SIGINT)  # detaches
        proc.wait(timeout=10)
        proc.stderr.close()
    for line in out.read_text().splitlines():
        # "PID call(...) = N"; an interrupted call's "<... call resumed>" is not counted twice
        if found := re.match(r"\d+\s+(clone3?|fork|vfork|execve)\((?:\"([^\"]*)\")?", line):
            calls.append(("execve", found[2]) if found[1] == "execve" else ("fork", ""))


def assert_never_shown(term: Terminal, *tokens: str) -> None:
    for token in tokens:
        assert token and token not in term.screen, "the terminal showed a token"
        # nor its signature: a token split by a line wrap would still be on the screen
        assert token.rsplit(".", 1)[1] not in term.screen, "the terminal showed a token's signature"


def assert_quiet(term: Terminal) -> None:
    """The screen shows prompts, what was typed and the markers, nothing else."""
    for raw in term.screen.split("\n"):
        # what stays visible: escape sequences dropped, a carriage return starts the line over
        # (zsh marks a partial last line with "%", spaces and a return before each prompt)
        line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw).rstrip("\r").rsplit("\r", 1)[-1]
        if not line.strip():
            continue
        assert line.startswith(PROMPT) or re.fullmatch(r"@@\d+@@", line), \
            f"the terminal showed {line!r}:\n{term.screen[-2000:]}"


# -- tests --------------------------------------------------------------------------------
@pytest.mark.parametrize("shell", SHELLS)
def test_refresh_updates_the_shells_own_variable(shell, sshd, daemon, account, terminals):
    alice = account.user
    account.setup(shell, daemon.socket)
    term = terminals(sshd, alice)
    term.run(save_var("SLURM_JWT", "login"))
    login = account.read("login")
    first = verified(daemon, login, alice)

    out = term.run("slurmjwt refresh")
    assert "renewed, expires" in out and "SLURM_JWT" in out, out  # a confirmation, on stderr
    term.run(save_var("SLURM_JWT", "fresh"))
    fresh = account.read("fresh")
    second = verified(daemon, fresh, alice)
    assert second["jti"] != first["jti"]
    assert second["exp"] - second["iat"] == 3600

    # any other subcommand runs unchanged: output, pipes, redirections, exit status
    shown = term.run("slurmjwt show")
    assert f"user:    {alice}" in shown and f"jti:     {second['jti']}" in shown, shown
    piped = term.run("slurmjwt show | grep -c jti")
    assert piped.strip().endswith("1"), piped
    term.run("slurmjwt status > ~/status")
    assert account.read("status").startswith("slurmjwtd "), account.read("status")
    status = "$status" if shell == "tcsh" else "$?"
    assert "rc=7" in term.run(f"slurmjwt show not-a-token; echo rc={status}")
    # a quiet refresh still refreshes; a failed one keeps the token and reports its status
    quiet = term.run("slurmjwt refresh >& /dev/null" if shell == "tcsh" else "slurmjwt refresh 2>/dev/null")
    assert "renewed" not in quiet, quiet
    term.run(save_var("SLURM_JWT", "quiet"))
    assert verified(daemon, account.read("quiet"), alice)["jti"] != second["jti"]
    # the idiom without the integration still works: in a subshell the command prints
    term.run("eval `slurmjwt refresh --csh`" if shell == "tcsh" else 'eval "$(slurmjwt refresh)"')
    term.run(save_var("SLURM_JWT", "evaled"))
    assert verified(daemon, account.read("evaled"), alice)["jti"] != \
        verified(daemon, account.read("quiet"), alice)["jti"]
    failed = term.run(f"slurmjwt --socket /nonexistent refresh; echo rc={status}")
    assert "rc=3" in failed and "slurmjwt:" in failed, failed
    term.run(save_var("SLURM_JWT", "after"))
    assert account.read("after") == account.read("evaled")
    assert_never_shown(term, login, fresh, account.read("quiet"), account.read("evaled"))


@pytest.mark.parametrize("shell", SHELLS)
def test_refresh_updates_the_variable_the_site_named(shell, daemon, users, workdir, install,
                                                      account, terminals):
    """The site names the variable in the environment every login gets (on Debian,
    /etc/environment, read by pam_env in sshd's session stack) and in the module's env=."""
    alice = account.user
    environment = workdir / "shell-environment"
    environment.write_text("SLURMJWT_VARIABLE=SLURM_JWT_TOKEN\n")
    stack = pam_stack(daemon.root_socket, "env=SLURM_JWT_TOKEN")
    stack.insert(-1, f"session  required pam_env.so conffile=/dev/null envfile={environment}")
    server = start_sshd(workdir, "shell-name", NAME_PORT, stack, users)
    try:
        account.setup(shell, daemon.socket)
        term = terminals(server, alice)
        term.run(save_var("SLURM_JWT_TOKEN", "login") + "; " + save_var("SLURM_JWT", "plain"))
        login = verified(daemon, account.read("login"), alice)
        assert account.read("plain") == ""  # the module set only the site's name
        out = term.run("slurmjwt refresh")
        assert "SLURM_JWT_TOKEN renewed" in out, out
        term.run(save_var("SLURM_JWT_TOKEN", "fresh") + "; " + save_var("SLURM_JWT", "plain"))
        assert verified(daemon, account.read("fresh"), alice)["jti"] != login["jti"]
        assert account.read("plain") == "", "refresh set SLURM_JWT"
        assert_never_shown(term, account.read("login"), account.read("fresh"))
    finally:
        server.stop()


@pytest.mark.parametrize("shell", PROMPT_HOOKS)
def test_prompt_renews_a_token_about_to_expire_once_and_quietly(shell, sshd, daemon, account,
                                                                 terminals):
    alice = account.user
    account.setup(shell, daemon.socket, autorenew=True)
    term = terminals(sshd, alice)
    # renewal is for a shell without a token file (a file is followed first, and the daemon
    # renews it): whatever the PAM module exported is set aside
    term.run(unexport(shell, "SLURMJWT_TOKEN_FILE"))
    term.run(save_var("SLURM_JWT", "login"))
    login = account.read("login")
    verified(daemon, login, alice)
    term.enter()
    term.run(save_var("SLURM_JWT", "still"))
    assert account.read("still") == login, "a token with an hour left was renewed"

    short = mint_short(daemon, alice, 30)  # 30 s left, the margin is 600 s
    account.give("short", short)
    term.run(set_var(shell, "SLURM_JWT", "short"))  # the prompt drawn after this renews it
    term.run(save_var("SLURM_JWT", "auto"))
    renewed = account.read("auto")
    claims = verified(daemon, renewed, alice)
    assert renewed != short and claims["jti"] != verified(daemon, short, alice)["jti"]
    assert claims["exp"] - claims["iat"] == 3600

    # the fresh token is left alone, and a prompt costs little
    times = [term.enter() for _ in range(5)]
    term.run(save_var("SLURM_JWT", "later"))
    assert account.read("later") == renewed
    assert max(times) < 0.5, times
    assert_quiet(term)
    assert_never_shown(term, login, short, renewed)


@pytest.mark.parametrize("shell", PROMPT_HOOKS)
def test_prompt_is_not_slowed_while_the_daemon_is_down(shell, make_daemon, users, workdir, install,
                                                      account, terminals):
    alice = account.user
    other = make_daemon()
    server = start_sshd(workdir, "shell-down", DOWN_PORT, other.root_socket, users)
    try:
        account.setup(shell, other.socket, autorenew=True)
        term = terminals(server, alice)
        term.run(unexport(shell, "SLURMJWT_TOKEN_FILE"))  # renewal: for a shell without a token file
        term.run(save_var("SLURM_JWT", "login"))
        verified(other, account.read("login"), alice)
        account.give("short", mint_short(other, alice, 30))
        other.stop()
        assert not os.path.exists(other.socket)
        term.run(set_var(shell, "SLURM_JWT", "short"))
        times = [term.enter() for _ in range(5)]
        assert max(times) < 0.5, f"prompts took {times} s with the daemon down"
        term.run(save_var("SLURM_JWT", "kept"))
        assert account.read("kept") == account.read("short")  # untouched
        # nothing was tried while the socket was missing: once the daemon is back (it kept
        # the session), the next prompt renews the token
        other.start()
        term.enter()
        term.run(save_var("SLURM_JWT", "back"))
        claims = verified(other, account.read("back"), alice)
        assert claims["exp"] - claims["iat"] == 3600
        assert_quiet(term)
        assert_never_shown(term, account.read("login"), account.read("short"), account.read("back"))
    finally:
        server.stop()


# -- the token file: the prompt takes the fresh token (issue 12) ----------------------------
def following(shell: str, sshd, daemon, account: Account, terminals, count: int
              ) -> tuple[Terminal, "TokenFile", list[str]]:
    """A login of SHELL whose variable follows a token file (~/...), which holds the first
    of COUNT tokens minted: (the terminal, the file, the tokens)."""
    account.setup(shell, daemon.socket)
    tokens = TokenFile(account)
    minted = [mint_short(daemon, account.user, 600) for _ in range(count)]
    tokens.replace(minted[0] + "\n")
    term = terminals(sshd, account.user)
    term.run(tokens.follow(shell))
    term.run(save_var("SLURM_JWT", "first"))
    assert account.read("first") == minted[0]
    return term, tokens, minted


def next_prompt_takes(term: Terminal, tokens: "TokenFile", account: Account, token: str,
                      name: str) -> None:
    """The token file replaced with TOKEN: the variable at the next prompt is TOKEN (saved
    to ~/NAME)."""
    tokens.replace(token + "\n")
    term.enter()
    term.run(save_var("SLURM_JWT", name))
    assert account.read(name) == token


@pytest.mark.parametrize("shell", PROMPT_HOOKS)
def test_prompt_takes_a_new_token_from_the_token_file(shell, sshd, daemon, account, terminals):
    alice = account.user
    account.setup(shell, daemon.socket)
    tokens = TokenFile(account)
    first, second, third, fourth, fifth = (mint_short(daemon, alice, 600) for _ in range(5))
    tokens.replace(first + "\n")
    term = terminals(sshd, alice)
    term.run(save_var("SLURM_JWT", "login"))
    login = account.read("login")
    verified(daemon, login, alice)
    term.run(tokens.follow(shell))  # the prompt drawn after this reads the file
    term.run(save_var("SLURM_JWT", "first"))
    assert account.read("first") == first

    # replaced: the next prompt has the new token
    next_prompt_takes(term, tokens, account, second, "second")
    # replaced twice at once: likely within the second the file was last read in, the second
    # file getting the inode of the one read (ext4 hands the inode just freed back): a file
    # that looks unchanged to tcsh's -M and -I, unless it is read again
    tokens.replace(third + "\n")
    next_prompt_takes(term, tokens, account, fourth, "fourth")

    # $? is the command's at the next prompt, the file read or not
    tokens.replace(fifth + "\n")
    start = len(term.screen)
    term.send("false\r")
    term.wait(re.escape(PROMPT), start)
    status = "$status" if shell == "tcsh" else "$?"
    term.run(f"echo {status} > ~/status")
    assert account.read("status") == "1"
    term.run(save_var("SLURM_JWT", "fifth"))
    assert account.read("fifth") == fifth
    assert_quiet(term)
    assert_never_shown(term, login, first, second, third, fourth, fifth)


@pytest.mark.parametrize("shell", PROMPT_HOOKS)
def test_prompt_starts_no_process_while_the_token_file_is_unchanged(shell, sshd, daemon, account,
                                                                    terminals, workdir):
    alice = account.user
    account.setup(shell, daemon.socket)
    tokens = TokenFile(account)
    first, second = mint_short(daemon, alice, 600), mint_short(daemon, alice, 600)
    tokens.replace(first + "\n", age=60)
    term = terminals(sshd, alice)
    term.run(tokens.follow(shell))
    pid = shell_pid(term, account)
    term.run(save_var("SLURM_JWT", "first"))
    assert account.read("first") == first

    with traced(pid, workdir / "strace-unchanged") as unchanged:
        for _ in range(5):
            term.enter()
        term.run("/bin/true")  # the one process: strace does see what the shell starts
    assert unchanged == [("fork", ""), ("execve", "/bin/true")], unchanged

    # a change: bash and zsh read it with builtins, tcsh runs one helper
    with traced(pid, workdir / "strace-changed") as changed:
        tokens.replace(second + "\n")
        term.enter()
    if shell == "tcsh":
        assert ("execve", "/bin/sh") in changed, changed
    else:
        assert changed == [], changed
    term.run(save_var("SLURM_JWT", "second"))
    assert account.read("second") == second
    assert_quiet(term)
    assert_never_shown(term, first, second)


@pytest.mark.parametrize("shell", PROMPT_HOOKS)
def test_a_refreshed_token_stays_until_the_token_file_changes(shell, sshd, daemon, account,
                                                              terminals):
    alice = account.user
    term, tokens, (first, second) = following(shell, sshd, daemon, account, terminals, 2)

    assert "renewed" in term.run("slurmjwt refresh")
    for _ in range(3):
        term.enter()
    term.run(save_var("SLURM_JWT", "refreshed"))
    refreshed = account.read("refreshed")
    claims = verified(daemon, refreshed, alice)
    assert claims["jti"] != verified(daemon, first, alice)["jti"], "the file's token came back"
    assert claims["exp"] - claims["iat"] == 3600

    next_prompt_takes(term, tokens, account, second, "second")
    assert_never_shown(term, first, second, refreshed)


@pytest.mark.parametrize("shell", PROMPT_HOOKS)
def test_a_garbled_or_missing_token_file_leaves_the_variable_alone(shell, sshd, daemon, account,
                                                                   terminals):
    term, tokens, (first, second) = following(shell, sshd, daemon, account, terminals, 2)

    head, _, signature = second.rpartition(".")
    garbage = ["", "\n", "not a token\n", f"{head}\n", f".{second}\n", f"{head}..{signature}\n",
               f"{second} {second}\n", f"{second}\r\n", f"{second}$(touch ~/pwned)\n",
               f"{second}`touch ~/pwned`\n", second.encode() + b"\xff\x00\n", b"\x00" * 100]
    for content in garbage:
        tokens.replace(content)
        term.enter()
        term.run(save_var("SLURM_JWT", "kept"))
        assert account.read("kept") == first, f"after {content!r}"
    tokens.path.unlink()
    term.enter()
    tokens.path.mkdir()  # not a regular file
    term.enter()
    tokens.path.rmdir()
    term.run(save_var("SLURM_JWT", "kept"))
    assert account.read("kept") == first
    assert not (account.home / "pwned").exists()

    # the file back: its token
    next_prompt_takes(term, tokens, account, second, "second")
    assert_quiet(term)
    assert_never_shown(term, first, second)


@pytest.mark.parametrize("shell", PROMPT_HOOKS)
def test_follow_file_0_or_an_unset_variable_keep_the_file_out(shell, sshd, daemon, account,
                                                              terminals):
    alice = account.user
    account.setup(shell, daemon.socket)
    tokens = TokenFile(account)
    first, second, third, fourth = (mint_short(daemon, alice, 600) for _ in range(4))
    tokens.replace(first + "\n")
    term = terminals(sshd, alice)
    term.run(save_var("SLURM_JWT", "login"))
    login = account.read("login")
    term.run(export(shell, "SLURMJWT_FOLLOW_FILE", "0"))
    term.run(tokens.follow(shell))
    tokens.replace(second + "\n")
    term.enter()
    term.run(save_var("SLURM_JWT", "off"))
    assert account.read("off") == login

    # back on (any value but 0): the file's token at the next prompt
    term.run(export(shell, "SLURMJWT_FOLLOW_FILE", "1"))
    term.run(save_var("SLURM_JWT", "on"))
    assert account.read("on") == second

    # an unset variable stays unset (as with the renewal), the file changing or not
    term.run(unexport(shell, "SLURM_JWT"))
    tokens.replace(third + "\n")
    term.enter()
    term.run(save_var("SLURM_JWT", "unset"))
    assert account.read("unset") == ""

    # the variable a site named
    term.run(export(shell, "SLURMJWT_VARIABLE", "SJT_TOKEN") + "; " + export(shell, "SJT_TOKEN", "x.y.z"))
    tokens.replace(fourth + "\n")
    term.enter()
    term.run(save_var("SJT_TOKEN", "named") + "; " + save_var("SLURM_JWT", "plain"))
    assert account.read("named") == fourth
    assert account.read("plain") == ""
    assert_quiet(term)
    assert_never_shown(term, login, first, second, third, fourth)
