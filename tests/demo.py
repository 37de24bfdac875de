"""`make demo`: the main job, end to end, on a throwaway key and socket.

Starts slurmjwtd, opens a login session for a demo user as the PAM stack would
(root, the session's leader process), lets that user fetch their own token
through the socket, shows its claims, shows a user without a session refused,
then stops everything it started.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SLURMJWT, Daemon, Leader, run_as  # noqa: E402

DEMO_DIR = Path("/tmp/slurmjwt-demo")
USERS = ("sjdemo-ann", "sjdemo-ben")


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(result: subprocess.CompletedProcess, hide_token: bool = False) -> None:
    out = result.stdout.rstrip()
    if hide_token and "=" in out:
        name, _, token = out.partition("=")
        out = f"{name}={token[:24]}... ({len(token)} characters; tokens stay out of logs)"
    for line in filter(None, [out, result.stderr.rstrip()]):
        print("   " + line.replace("\n", "\n   "))
    print(f"   (exit status {result.returncode})")


def main() -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir(mode=0o755)
    made = []
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True)
            made.append(name)
    ann, ben = USERS
    daemon = Daemon(DEMO_DIR)
    leader = None
    try:
        step("a throwaway 32-byte HS256 key, made as the site guide says")
        key = DEMO_DIR / "jwt_hs256.key"
        show(subprocess.run([SLURMJWT, "keygen", "--owner", "root", str(key)],
                            capture_output=True, text=True))
        step(f"slurmjwtd on {daemon.socket}")
        daemon.start()
        env = {"SLURMJWT_SOCKET": daemon.socket}
        show(run_as(ann, SLURMJWT, "status", env=env))
        step(f"{ann} has not logged in: their own request is refused")
        show(run_as(ann, SLURMJWT, "token", env=env))
        step(f"root (the PAM stack at login) opens a session for {ann}")
        leader = Leader(daemon.socket, ann, tty="/dev/pts/7", rhost="192.0.2.10", service="sshd")
        print(f"   session {leader.session} opened, leader pid {leader.proc.pid}")
        step(f"{ann} now asks for their own token, identified only by SO_PEERCRED")
        token = run_as(ann, SLURMJWT, "token", env=env)
        show(token, hide_token=True)
        step("its claims, decoded without the key (slurmjwt show)")
        show(run_as(ann, SLURMJWT, "show", "-", input=token.stdout.partition("=")[2]))
        step(f"{ann} asks for {ben}'s token: refused")
        show(run_as(ann, SLURMJWT, "token", "--user", ben, env=env))
        step(f"{ann} logs out: the session closes and their requests are refused again")
        print("   " + leader.close())
        leader = None
        show(run_as(ann, SLURMJWT, "refresh", env=env))
        step("the audit log: one line per decision, never a token")
        daemon.stop()
        for line in daemon.log.splitlines():
            if "decision=" in line:
                print("   " + line.split(" INFO ", 1)[-1])
        return 0
    finally:
        if leader is not None:
            leader.die()
        daemon.stop()
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(DEMO_DIR, ignore_errors=True)
        print("\n== stopped slurmjwtd, removed the demo users, key and socket")


if __name__ == "__main__":
    sys.exit(main())
