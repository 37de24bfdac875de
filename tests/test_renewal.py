"""Token files that stay valid while the login lives, and revocation, through the real sshd and
the real slurmctld: 10-second tokens, renewed by the daemon with no user action, for a long
`ssh host cmd` and a tmux server started inside it; nothing renewed once the user has logged
out; `slurmjwt revoke` stops renewals and logins' tokens at once, across a restart, and
`unrevoke` brings them back; a daemon that was down catches up."""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
import time
from pathlib import Path

import jwt
import pytest

from conftest import SLURMJWT, run_as
from logins import account, start_sshd, terminals  # noqa: F401 (fixtures)
from test_shell import install, save_var  # noqa: F401 (fixture)

PORT = 2236
LIFETIME = 10  # seconds: renewed 5 to 7.5 s after each issue


@pytest.fixture
def renewing(make_daemon, daemon):
    """A daemon with 10-second tokens, signed with the suite's key (the one slurmctld checks)."""
    return make_daemon(key_file=str(daemon.key_file), lifetime=LIFETIME)


@pytest.fixture
def server(renewing, users, workdir):
    sshd = start_sshd(workdir, "renew", PORT, renewing.root_socket, users)
    yield sshd
    sshd.stop()


@pytest.fixture
def alice(users):
    """alice, whose processes (a command whose ssh client was killed runs on: no pty, no
    SIGHUP; the tmux server) are all gone after the test."""
    yield users["alice"]
    name = users["alice"].pw_name
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    assert wait_for(lambda: subprocess.run(["pgrep", "-u", name], capture_output=True).returncode == 1,
                    10, 0.1), f"processes of {name} outlived the test"


def token_file(d, uid: int) -> Path:
    return d.dir / "tokens" / str(uid) / "token"


def read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def claims(d, token: str) -> dict:
    return jwt.decode(token, d.key_file.read_bytes(), algorithms=["HS256"],
                      options={"verify_exp": False})


def wait_for(what, seconds: float, step: float = 0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    return what()


def renewals(d, user: str) -> int:
    """How many renewals of USER's file the daemon has audited."""
    return sum(1 for line in d.log.splitlines()
               if "decision=granted op=renew " in line and f" user={user} " in line)


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def cli(d, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SLURMJWT, "--socket", d.socket, *args], capture_output=True, text=True,
                          timeout=30)


def test_a_long_ssh_command_keeps_a_valid_token_file_and_tmux_inside_sees_it(
        renewing, server, alice, slurm, workdir):
    """`ssh login 'long command'` (a Jupyter, say) for 2.5 lifetimes: at every moment the file
    holds a token that has not expired, renewed with no user action; slurmctld accepts each;
    a tmux server started inside the login reads the same file. After logout the file goes
    and nothing is renewed any more."""
    seen_dir = workdir / "renew-tmux"
    shutil.rmtree(seen_dir, ignore_errors=True)
    seen_dir.mkdir()
    shutil.chown(seen_dir, alice.pw_name)
    seen = seen_dir / "seen"
    path = token_file(renewing, alice.pw_uid)
    login = server.spawn(alice.pw_name, (
        'printf "file=%s jwt=%s\\n" "$SLURMJWT_TOKEN_FILE" "$(printf %s "$SLURM_JWT" | sha256sum)"; '
        f"tmux -L sjt-renew new-session -d 'while :; do cat \"$SLURMJWT_TOKEN_FILE\" >> {seen}; "
        f"sleep 0.5; done'; sleep {2.5 * LIFETIME}; tmux -L sjt-renew kill-server"))
    samples: list[tuple[float, str]] = []
    accepted: dict[str, int] = {}  # token: squeue's status, asked as soon as the file held it
    try:
        assert wait_for(lambda: read(path), 10), renewing.log
        while login.poll() is None:
            token = read(path)
            if token is not None:
                samples.append((time.time(), token))
                if token not in accepted:  # at least a quarter of its lifetime left
                    accepted[token] = slurm.squeue_as(alice.pw_name, token).returncode
            time.sleep(0.25)
        out, err = login.communicate()
    finally:
        if login.poll() is None:
            login.kill()
    assert login.returncode == 0, err
    first_line = out.splitlines()[0]
    assert first_line.startswith(f"file={path} jwt=")
    tokens = list(dict.fromkeys(token for _, token in samples))
    assert hashlib.sha256(tokens[0].encode()).hexdigest() in first_line  # the login's own token
    assert len(tokens) >= 3, f"{len(tokens)} tokens in {2.5 * LIFETIME} s"
    for at, token in samples:  # while logged in, the file never held an expired token
        c = claims(renewing, token)
        assert c["sun"] == alice.pw_name and c["exp"] > at, (c, at)
    assert list(accepted.values()) == [0] * len(tokens)  # slurmctld took every one
    in_tmux = list(dict.fromkeys(seen.read_text().split()))
    assert len(in_tmux) >= 2 and set(in_tmux) <= set(tokens), [fingerprint(t) for t in in_tmux]

    assert wait_for(lambda: not path.exists(), 3) and list(path.parent.iterdir()) == []
    done = renewals(renewing, alice.pw_name)
    assert done >= 2
    time.sleep(0.8 * LIFETIME)  # past any renewal that was planned: none happens
    assert renewals(renewing, alice.pw_name) == done and not path.exists()


def test_revoke_stops_renewals_and_tokens_at_once_across_a_restart_unrevoke_restores(
        renewing, server, alice, users):
    path = token_file(renewing, alice.pw_uid)
    user = alice.pw_name
    login = server.spawn(user, f"sleep {6 * LIFETIME}")
    try:
        assert wait_for(lambda: read(path), 10), renewing.log
        revoked = cli(renewing, "revoke", user, "--reason", "laptop stolen")
        assert revoked.returncode == 0, revoked.stderr
        assert revoked.stdout.strip() == f"{user} (uid {alice.pw_uid}) revoked; 1 live session(s) keep no token"
        assert not path.exists()  # at once
        done = renewals(renewing, user)

        # a new login succeeds, without a token; the user's own request is refused
        again = server.ssh(user, 'echo "[${SLURM_JWT-unset}] [${SLURMJWT_TOKEN_FILE-unset}]"')
        assert again.returncode == 0 and again.stdout.strip() == "[unset] [unset]", again.stderr
        own = run_as(user, SLURMJWT, "token", env={"SLURMJWT_SOCKET": renewing.socket})
        assert own.returncode == 4 and "refused (revoked)" in own.stderr
        explained = cli(renewing, "policy", user)
        assert explained.returncode == 4 and "revoked:" in explained.stdout
        assert "laptop stolen" in explained.stdout and "by uid 0" in explained.stdout
        assert "1 user(s) revoked" in cli(renewing, "status").stdout
        audit = [line for line in renewing.log.splitlines() if "op=revoke" in line]
        assert len(audit) == 1 and 'detail="laptop stolen"' in audit[0] and f"user={user}" in audit[0]

        # kept across a restart: the file is root's... the daemon's, 0600
        renewing.stop()
        saved = renewing.dir / "revoked.json"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and user in saved.read_text()
        renewing.start()
        assert cli(renewing, "policy", user).returncode == 4
        time.sleep(0.8 * LIFETIME)  # the live session: still no file, no renewal
        assert not path.exists() and renewals(renewing, user) == done

        lifted = cli(renewing, "unrevoke", user)
        assert lifted.returncode == 0 and lifted.stdout.strip() == f"{user} (uid {alice.pw_uid}) unrevoked"
        token = wait_for(lambda: read(path), 3)  # the live session's file is back
        assert token and claims(renewing, token)["exp"] > time.time()
        assert cli(renewing, "unrevoke", user).stdout.strip().endswith("was not revoked")
        back = server.ssh(user, 'test -n "$SLURM_JWT" && echo has-token')
        assert back.returncode == 0 and back.stdout.strip() == "has-token"
    finally:
        login.kill()
        login.wait()


def test_a_daemon_that_was_down_catches_up_and_renews_on(renewing, server, alice, slurm):
    """The daemon stops for longer than the token lives: the sessions it saved are still
    there when it starts, the expired file is renewed within seconds, and renewals go on."""
    path = token_file(renewing, alice.pw_uid)
    login = server.spawn(alice.pw_name, f"sleep {5 * LIFETIME}")
    try:
        first = wait_for(lambda: read(path), 10)
        assert first, renewing.log
        renewing.stop()
        time.sleep(max(0.0, claims(renewing, first)["exp"] - time.time()) + 0.5)
        stale = read(path)
        assert claims(renewing, stale)["exp"] < time.time()  # nobody renewed it meanwhile
        renewing.start()
        fresh = wait_for(lambda: (t := read(path)) and t != stale and t, 8)
        assert fresh and claims(renewing, fresh)["exp"] > time.time()
        assert slurm.squeue_as(alice.pw_name, fresh).returncode == 0
        later = wait_for(lambda: (t := read(path)) and t != fresh and t, LIFETIME)
        assert later and claims(renewing, later)["iat"] >= claims(renewing, fresh)["iat"]
    finally:
        login.kill()
        login.wait()


@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_the_prompt_picks_up_the_renewed_token(shell, renewing, server, account, alice, terminals,
                                               install):
    """A login shell, left at its prompt while the daemon renews the file: the next prompt's
    variable is the renewed token (from $SLURMJWT_TOKEN_FILE, which the PAM module exported)."""
    account.setup(shell, renewing.socket)
    path = token_file(renewing, alice.pw_uid)
    term = terminals(server, alice.pw_name)
    term.run(save_var("SLURM_JWT", "login"))
    term.run(save_var("SLURMJWT_TOKEN_FILE", "file"))
    login = account.read("login")
    assert account.read("file") == str(path) and read(path) == login
    renewed = wait_for(lambda: (t := read(path)) and t != login and t, LIFETIME)
    assert renewed, renewing.log
    term.enter()
    term.run(save_var("SLURM_JWT", "after"))
    after = account.read("after")
    assert after != login and after in (renewed, read(path))
    assert claims(renewing, after)["exp"] > time.time()
