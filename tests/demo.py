"""`make demo`: the real thing, end to end, on a throwaway key, socket and sshd.

Starts slurmjwtd, and OpenSSH's sshd on 127.0.0.1:2223 with pam_slurmjwt.so in the
session stack of a PAM service of its own (the system's sshd and /etc/pam.d/sshd are
left alone); logs in over SSH as a demo user with a throwaway key; shows the SLURM_JWT
that login received (truncated) and its claims, decoded in the session; shows the
user's own requests refused before login and after logout, and the audit trail.
Stops and removes everything it started, also on failure. Needs `make -C pam`.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SLURMJWT, Daemon, run_as  # noqa: E402
from sshd_server import SshError, SshServer, pam_stack  # noqa: E402

DEMO_DIR = Path("/tmp/slurmjwt-demo")
USER = "sjdemo-ann"
PORT = 2223
SERVICE = "sshd-sjdemo"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(result: subprocess.CompletedProcess) -> None:
    # the demo user has no home directory: sshd's warning about it is noise here
    stderr = "\n".join(line for line in result.stderr.splitlines()
                       if not line.startswith("Could not chdir to home directory"))
    for text in filter(None, [result.stdout.rstrip(), stderr.rstrip()]):
        print("   " + text.replace("\n", "\n   "))
    print(f"   (exit status {result.returncode})")


def make_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
        subprocess.run(["userdel", name], check=False, capture_output=True)  # left by a demo that crashed
    except KeyError:
        pass
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=True)


def main() -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir(mode=0o755)
    daemon = Daemon(DEMO_DIR / "slurmjwtd")
    sshd = None
    made_user = False
    try:
        make_user(USER)
        made_user = True
        env = {"SLURMJWT_SOCKET": daemon.socket}

        step("a throwaway 32-byte HS256 key, made as the site guide says")
        daemon.dir.mkdir(mode=0o755)
        show(subprocess.run([SLURMJWT, "keygen", "--owner", "root", str(daemon.key_file)],
                            check=False, capture_output=True, text=True))
        step(f"slurmjwtd on {daemon.socket}")
        daemon.start()
        show(run_as(USER, SLURMJWT, "status", env=env))

        step(f"sshd on 127.0.0.1:{PORT}, PAM service {SERVICE}: /etc/pam.d/{SERVICE} reads")
        sshd = SshServer(DEMO_DIR / "sshd", pam_stack(daemon.socket, tokendir=DEMO_DIR / "tokens"), port=PORT, service=SERVICE)
        sshd.add_key(USER)
        sshd.start()
        print("   " + sshd.pam_text.rstrip().replace("\n", "\n   "))

        step(f"{USER} has not logged in: their own request is refused")
        show(run_as(USER, SLURMJWT, "token", env=env))

        step(f"{USER} logs in: ssh {USER}@127.0.0.1 (key login; the token is made at PAM open_session)")
        script = ("printf 'SLURM_JWT=%.24s... (%d characters; tokens stay out of logs)\\n' "
                  '"$SLURM_JWT" "${#SLURM_JWT}"\n'
                  f'printf %s "$SLURM_JWT" | {SLURMJWT} show -\n'
                  f"SLURMJWT_SOCKET={daemon.socket} {SLURMJWT} token >/dev/null "
                  "&& echo 'while logged in, slurmjwt token is granted'\n")
        print("   in the session: " + script.strip().replace("\n", "\n                   "))
        session = sshd.ssh(USER, script)
        show(session)
        if session.returncode != 0:
            raise SshError(f"the SSH login failed; sshd's log:\n{sshd.tail()}")

        step(f"{USER} logged out: sshd closed the PAM session, their own request is refused again")
        deadline = time.monotonic() + 3
        while "op=close" not in daemon.log and time.monotonic() < deadline:
            time.sleep(0.05)
        show(run_as(USER, SLURMJWT, "token", env=env))

        step("the audit log: one line per decision, never a token")
        daemon.stop()
        for line in daemon.log.splitlines():
            if "decision=" in line:
                print("   " + line.split(" AUDIT ", 1)[-1])
        return 0
    except (SshError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if sshd is not None:
            sshd.stop()
        daemon.stop()
        if made_user:
            subprocess.run(["pkill", "-KILL", "-u", USER], check=False, capture_output=True)
            subprocess.run(["userdel", USER], check=False, capture_output=True)
        shutil.rmtree(DEMO_DIR, ignore_errors=True)
        print(f"\n== stopped sshd and slurmjwtd; removed {USER}, /etc/pam.d/{SERVICE}, "
              f"the keys and {DEMO_DIR}")


if __name__ == "__main__":
    sys.exit(main())
