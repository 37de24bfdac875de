"""`make demo`: the real thing, end to end, on a throwaway key, socket, Slurm and sshd.

Starts slurmjwtd; a Slurm on loopback that verifies its tokens (munged, slurmctld, a slurmd
that runs jobs, slurmrestd: tests/slurm_cluster.py); slurmjwt-exec installed as `make install`
does (links in /usr/local/bin: tests/exec_links.py); and OpenSSH's sshd on 127.0.0.1:2223 with
pam_slurmjwt.so in the session stack of a PAM service of its own (the system's sshd and
/etc/pam.d/sshd are left alone). Logs in over SSH as a demo user with a throwaway key and
shows, in that session: the SLURM_JWT the login received (truncated) and its claims; srun and
a batch job working beside it, with no token in the job; slurmrestd accepting the token; the
token file the daemon keeps valid (readable by the user through an ACL), renewed while the
session lasts (20 s tokens here). Then the user's own requests refused after logout, and the
audit trail. Stops and removes
everything it started, also on failure. Needs `make -C pam`.
"""

from __future__ import annotations

import grp
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import exec_links  # noqa: E402
from conftest import KEY_GROUP, SLURMJWT, Daemon, run_as  # noqa: E402
from slurm_cluster import OPENAPI, SlurmCluster, SlurmError  # noqa: E402
from sshd_server import SshError, SshServer, pam_stack  # noqa: E402

DEMO_DIR = Path("/tmp/slurmjwt-demo")
USER = "sjdemo-ann"
PORT = 2223
SERVICE = "sshd-sjdemo"
DEMO_LIFETIME = 20  # seconds: the session sees its token file renewed


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


def session_script(out: Path, rest_url: str, socket: str) -> str:
    """What the demo user runs in the SSH session, each command shown before it runs."""
    commands = [
        "printf 'SLURM_JWT=%.24s... (%d characters; tokens stay out of logs)\\n' "
        '"$SLURM_JWT" "${#SLURM_JWT}"',
        f'printf %s "$SLURM_JWT" | {SLURMJWT} show -',
        'readlink "$(command -v srun)"',
        "srun -n1 hostname",
        f"sbatch --wait -o {out} --wrap 'srun -n1 hostname; env' >/dev/null && head -1 {out} && "
        f"! grep -q SLURM_JWT {out} && echo \"the job's environment has no SLURM_JWT\"",
        f"SLURMRESTD_URL={rest_url} {SLURMJWT} curl -s -o /dev/null -w 'HTTP %{{http_code}}\\n' "
        f"/slurm/{OPENAPI}/jobs",
        f"SLURMJWT_SOCKET={socket} {SLURMJWT} token >/dev/null && echo granted",
        'echo "$SLURMJWT_TOKEN_FILE" && getfacl -pc "$SLURMJWT_TOKEN_FILE" | grep -v "^#"',
        f'{SLURMJWT} show - < "$SLURMJWT_TOKEN_FILE" | grep -E "^(expires|jti)"',
        f"sleep {DEMO_LIFETIME * 3 // 4 + 1}; {SLURMJWT} show - < \"$SLURMJWT_TOKEN_FILE\" | "
        'grep -E "^(expires|jti)"',
    ]
    return "".join(f"printf '%s\\n' {shlex.quote('$ ' + c.replace(SLURMJWT, 'slurmjwt'))}\n{c}\n"
                   for c in commands)


def main() -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir(mode=0o755)
    daemon = Daemon(DEMO_DIR / "slurmjwtd", {"lifetime": DEMO_LIFETIME})
    sshd = slurm = None
    made_user = made_group = linked = False
    try:
        make_user(USER)
        made_user = True
        env = {"SLURMJWT_SOCKET": daemon.socket}
        try:
            grp.getgrnam(KEY_GROUP)
        except KeyError:
            subprocess.run(["groupadd", "-r", KEY_GROUP], check=True)
            made_group = True

        step("a throwaway 32-byte HS256 key, made as the site guide says")
        daemon.dir.mkdir(mode=0o755)
        show(subprocess.run([SLURMJWT, "keygen", str(daemon.key_file)],
                            check=False, capture_output=True, text=True))
        step(f"slurmjwtd on {daemon.socket}")
        daemon.start()
        show(run_as(USER, SLURMJWT, "status", env=env))

        step("Slurm on loopback, verifying that key: munged, slurmctld, slurmd, slurmrestd")
        slurm = SlurmCluster(DEMO_DIR / "slurm", daemon.key_file, cluster_name="sjdemo").start()
        print(f"   {slurm.conf}: AuthType=auth/munge AuthAltTypes=auth/jwt, node localhost idle")
        step("slurmjwt-exec, as make install puts it: Slurm's commands run without the login's token")
        links = exec_links.install()
        linked = True
        print(f"   {', '.join(p.name for p in links)}\n   in {exec_links.LINK_DIR} -> {exec_links.EXEC}")

        step(f"sshd on 127.0.0.1:{PORT}, PAM service {SERVICE}: /etc/pam.d/{SERVICE} reads")
        environment = DEMO_DIR / "environment"  # a site has /etc/slurm/slurm.conf instead
        environment.write_text(f"SLURM_CONF={slurm.conf}\n")
        stack = pam_stack(daemon.root_socket)
        stack.insert(-1, f"session  required pam_env.so conffile=/dev/null envfile={environment}")
        sshd = SshServer(DEMO_DIR / "sshd", stack, port=PORT, service=SERVICE)
        sshd.add_key(USER)
        sshd.start()
        print("   " + sshd.pam_text.rstrip().replace("\n", "\n   "))

        step(f"{USER} has not logged in: their own request is refused")
        show(run_as(USER, SLURMJWT, "token", env=env))

        step(f"{USER} logs in: ssh {USER}@127.0.0.1 (key login; the token is made at PAM open_session)")
        jobs = DEMO_DIR / "jobs"
        jobs.mkdir(mode=0o755)
        shutil.chown(jobs, USER)
        script = session_script(jobs / "job.out", slurm.rest_url, daemon.socket)
        session = sshd.ssh(USER, script, timeout=120)
        show(session)
        if session.returncode != 0:
            raise SshError(f"the SSH login failed; sshd's log:\n{sshd.tail()}")

        step(f"{USER} logged out: sshd closed the PAM session, their own request is refused again")
        deadline = time.monotonic() + 3
        while "op=close" not in daemon.log and time.monotonic() < deadline:
            time.sleep(0.05)
        show(run_as(USER, SLURMJWT, "token", env=env))

        step("the audit log: one line per decision (a user's repeated refusals: the first, then a count), never a token")
        daemon.stop()
        for line in daemon.log.splitlines():
            if "decision=" in line:
                print("   " + line.split(" AUDIT ", 1)[-1])
        return 0
    except (SshError, SlurmError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if sshd is not None:
            sshd.stop()
        if linked:
            exec_links.remove()
        if slurm is not None:
            slurm.scancel_all()
            slurm.stop()
        daemon.stop()
        if made_group:
            subprocess.run(["groupdel", KEY_GROUP], check=False, capture_output=True)
        if made_user:
            subprocess.run(["pkill", "-KILL", "-u", USER], check=False, capture_output=True)
            subprocess.run(["userdel", USER], check=False, capture_output=True)
        shutil.rmtree(DEMO_DIR, ignore_errors=True)
        print(f"\n== stopped sshd, Slurm and slurmjwtd; removed {USER}, /etc/pam.d/{SERVICE}, "
              f"the slurmjwt-exec links, the keys and {DEMO_DIR}")


if __name__ == "__main__":
    sys.exit(main())
