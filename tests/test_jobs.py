"""A login's SLURM_JWT never breaks Slurm's own job commands, nor rides into jobs.

slurmjwt-exec is installed as `make install` installs it (tests/exec_links.py): links named
srun, sbatch, salloc, ... in /usr/local/bin, before Slurm's /usr/bin on every default PATH.
Alice logs in through a real sshd whose session stack runs pam_slurmjwt.so, and pam_env for
SLURM_CONF (a site has /etc/slurm/slurm.conf instead), into the tests' real Slurm: slurmctld
and a slurmd that runs the steps, authenticated by MUNGE. Her startup files set a prompt and
nothing else. In every kind of session a person uses (interactive bash, zsh and tcsh login
shells on a terminal, `ssh host cmd`, a Python program, tmux and screen started in the session)
the login keeps its token, srun, srun --pty, salloc and sbatch --wait work, and no job's
environment holds the token. On a JWT-only node (the switch in slurmjwtd.toml), Slurm's
commands use the token instead, as slurmctld's record of the job shows.

The same guarantees, for a login's token in a plain shell (no sshd), run against either Slurm
the `slurm` fixture gives (22.05 on the host; 24.11 in its root under `make test-slurm24`, with
slurmjwt-exec's links in the root's /usr/local/bin): srun, srun --pty, salloc and sbatch work
and no job holds the token, while Slurm's own srun with the token still fails and its sbatch
still copies it (as slurm_versions.RELEASES says of that release). The SSH tests
(`slurm_on_host`) log in through this host's sshd, whose Slurm commands are 22.05's.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

import exec_links
from conftest import SLURMJWT
from logins import PROMPT, account, Account, Terminal, start_sshd, terminals, verified  # noqa: F401 (fixtures)
from slurm_cluster import SLURM_BIN
from sshd_server import pam_stack

PORT = 2234
HOST = socket.gethostname()
SITE_CONFIG = Path("/etc/slurmjwt/slurmjwtd.toml")  # what slurmjwt-exec reads
SAVED = Path("/var/tmp/slurmjwt-test-jobs-saved.toml")
MARK = "# written for a test by tests/test_jobs.py: remove me\n"
# startup files that set the prompt the Terminal waits for, and nothing else
PROMPT_ONLY = {".profile": f"PS1='{PROMPT}'\n", ".zshrc": f"PS1='{PROMPT}'\n",
               ".tcshrc": f"set prompt = '{PROMPT}'\n"}


@pytest.fixture(scope="module")
def links(slurm):
    """slurmjwt-exec and its links where the cluster's Slurm commands run (exec_links on the host)."""
    slurm.install_exec()
    yield
    slurm.remove_exec()


@pytest.fixture(scope="module")
def sshd(daemon, slurm, users, workdir, links):
    environment = workdir / "jobs-environment"
    environment.write_text(f"SLURM_CONF={slurm.conf}\n")
    stack = pam_stack(daemon.root_socket)
    stack.insert(-1, f"session  required pam_env.so conffile=/dev/null envfile={environment}")
    server = start_sshd(workdir, "jobs", PORT, stack, users)
    yield server
    server.stop()


@pytest.fixture
def site_config():
    """Write slurmjwt's site configuration, as an admin would; an admin's own file is set
    aside (outside the tests' workdir, which each run wipes) and put back."""
    if SITE_CONFIG.exists() and not SITE_CONFIG.read_text(errors="replace").startswith(MARK):
        shutil.copy2(SITE_CONFIG, SAVED)
    made_dir = not SITE_CONFIG.parent.exists()

    def write(text: str) -> None:
        SITE_CONFIG.parent.mkdir(mode=0o755, exist_ok=True)
        SITE_CONFIG.write_text(MARK + text)
        os.chmod(SITE_CONFIG, 0o644)

    yield write
    if SAVED.exists():
        shutil.copy2(SAVED, SITE_CONFIG)
        SAVED.unlink()
    else:
        SITE_CONFIG.unlink(missing_ok=True)
        if made_dir:
            SITE_CONFIG.parent.rmdir()


@pytest.fixture
def exec_config(slurm, request):
    """Write slurmjwt-exec's configuration where the cluster's Slurm commands run: the host's
    /etc/slurmjwt/slurmjwtd.toml (site_config), or the root's."""
    if hasattr(slurm, "write_exec_config"):
        yield slurm.write_exec_config
        slurm.write_exec_config("")
    else:
        yield request.getfixturevalue("site_config")


def job_output(account: Account, name: str = "job.out") -> str:
    """A batch job's output: srun's hostname line inside the job, then the job's environment."""
    text = account.read(name)
    assert text.startswith(HOST), f"srun inside the batch job failed:\n{text[:2000]}"
    assert "SLURM_JOB_ID=" in text, text[:2000]
    return text


def assert_no_token(text: str, *tokens: str) -> None:
    assert "SLURM_JWT" not in text, "the job's environment holds SLURM_JWT"
    for token in tokens:
        assert token.rsplit(".", 1)[1] not in text, "the job's environment holds the token"


# -- interactive login shells on a terminal -------------------------------------------------
SBATCH = "sbatch --wait -o \"$HOME/job.out\" --wrap 'srun -n1 hostname && env'"


def pty_step(term: Terminal) -> str:
    """srun --pty bash, used as a person would: type into the job's shell, then leave it."""
    start = len(term.screen)
    term.send("srun -n1 --pty bash --norc --noprofile -i\r")
    term.wait(r"bash-\d+\.\d+\$ ", start, timeout=30)
    term.send("tty; echo job=$SLURM_JOB_ID jwt=${SLURM_JWT:-none}; exit\r")
    found = term.wait(r"job=\d+ jwt=\S+", start, timeout=30)
    term.wait(re.escape(PROMPT), found.end())
    return term.screen[start:]


@pytest.mark.slurm_on_host
@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_slurm_commands_work_in_a_login_shell_that_holds_the_token(shell, sshd, daemon, account,
                                                                  terminals):
    alice = account.user
    account.make(shell, PROMPT_ONLY)
    term = terminals(sshd, alice)
    status = "$status" if shell == "tcsh" else "$?"
    term.run("printenv SLURM_JWT > ~/login")
    login = account.read("login")
    verified(daemon, login, alice)

    out = term.run(f"srun -n1 hostname; echo rc={status}")
    assert f"{HOST}\r\n" in out and "rc=0" in out, out
    shown = pty_step(term)
    assert "/dev/pts/" in shown and "jwt=none" in shown, shown
    out = term.run(f"salloc -n1 srun -n1 hostname; echo rc={status}", timeout=30)
    assert f"{HOST}\r\n" in out and "rc=0" in out, out
    out = term.run(f"{SBATCH}; echo rc={status}", timeout=60)
    assert "rc=0" in out, out
    assert_no_token(job_output(account), login)

    # the session's own token is untouched, for REST clients and slurmjwt curl
    term.run("printenv SLURM_JWT > ~/after")
    assert account.read("after") == login


@pytest.mark.slurm_on_host
def test_ctrl_c_reaches_srun(sshd, slurm, account, terminals):
    account.make("bash", PROMPT_ONLY)
    term = terminals(sshd, account.user)
    start = len(term.screen)
    term.send("srun -n1 sleep 300; echo rc=$?\r")
    deadline = time.monotonic() + 30
    # the task runs, so srun has launched the step and waits on it with its handlers in place
    # (a step slurmctld lists may still be launching: Ctrl-C then cancels it quietly)
    while subprocess.run(["pgrep", "-u", account.user, "-x", "sleep"],
                         capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, f"no task started:\n{term.screen[start:]}"
        time.sleep(0.1)
    term.send("\x03")
    term.wait(r"srun: interrupt", start)  # only srun prints this: SIGINT reached it
    term.send("\x03")  # a second one within a second aborts the step
    done = term.wait(r"rc=\d+", start, timeout=30)
    assert done.group() != "rc=0", term.screen[start:]
    deadline = time.monotonic() + 15  # the aborted step ends (slurmctld may list it a moment)
    while _steps_of(slurm, account.user):
        assert time.monotonic() < deadline, "the step outlived the aborted srun"
        time.sleep(0.1)


def _steps_of(slurm, user: str) -> list[str]:
    run = subprocess.run([f"{SLURM_BIN}/squeue", "-h", "-s", "-u", user, "-o", "%i"],
                         capture_output=True, text=True, timeout=10,
                         env={"PATH": "/usr/bin:/bin", **slurm.env})
    return run.stdout.split()


# -- ssh host cmd, programs, tmux and screen ------------------------------------------------
SCRIPT = """
printenv SLURM_JWT > "$HOME/login"
srun -n1 hostname; echo "srun rc=$?"
printf 'typed\\n' | srun -n1 cat
srun -n1 sh -c 'exit 7'; echo "exit rc=$?"
srun -n1 printf '[%s]' 'a b' '' -x; echo
salloc -n1 srun -n1 hostname; echo "salloc rc=$?"
{sbatch}; echo "sbatch rc=$?"
python3 -c 'import subprocess; print("python rc=%d" % subprocess.run(["srun", "-n1", "hostname"]).returncode)'
tmux -S "$HOME/tmux.sock" new-session -d 'sbatch --wait -o "$HOME/tmux.out" --wrap "srun -n1 hostname && env" >/dev/null; tmux -S "$HOME/tmux.sock" wait-for -S done'
tmux -S "$HOME/tmux.sock" wait-for done
SCREENDIR="$HOME/.screen" screen -D -m sh -c 'srun -n1 hostname > "$HOME/screen.out" 2>&1'
printenv SLURM_JWT > "$HOME/after"
""".format(sbatch=SBATCH)


@pytest.mark.slurm_on_host
@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_slurm_commands_work_in_ssh_host_cmd(shell, sshd, daemon, account):
    alice = account.user
    account.make(shell, {})
    run = sshd.ssh(alice, SCRIPT, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for expected in (HOST, "srun rc=0", "typed", "exit rc=7", "[a b][][-x]", "salloc rc=0",
                     "sbatch rc=0", "python rc=0"):
        assert expected in lines, f"{expected!r} missing:\n{run.stdout}\n{run.stderr}"
    assert lines.count(HOST) == 3, run.stdout  # srun, salloc, python
    assert account.read("screen.out") == HOST
    login = account.read("login")
    verified(daemon, login, alice)
    assert account.read("after") == login
    assert_no_token(job_output(account), login)
    assert_no_token(job_output(account, "tmux.out"), login)  # submitted from a tmux server


@pytest.mark.slurm_on_host
def test_srun_pty_in_ssh_host_cmd(sshd, account):
    account.make("sh", {})
    run = sshd.ssh(account.user, "srun -n1 --pty sh -c 'tty; echo job=$SLURM_JOB_ID jwt=${SLURM_JWT:-none}'",
                   tty=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "/dev/pts/" in run.stdout and re.search(r"job=\d+ jwt=none", run.stdout), run.stdout


# -- a JWT-only login node ----------------------------------------------------------------
@pytest.mark.slurm_on_host
def test_jwt_only_switch_makes_slurm_commands_use_the_token(sshd, slurm, daemon, users, account,
                                                            site_config, workdir):
    """A login node without MUNGE (here: its slurm.conf points MUNGE at no socket), so a job
    submitted from it can only have been authenticated by the login's token."""
    alice = users["alice"]
    account.make("sh", {})
    node_conf = workdir / "slurm-jwt-only-node.conf"
    node_conf.write_text(slurm.conf_text() + "AuthInfo=socket=/nonexistent/munge.socket.2\n")
    os.chmod(node_conf, 0o644)
    submit = (f"SLURM_CONF={node_conf} sbatch --parsable --hold -o /dev/null --job-name=sjt-test "
              "--wrap true; echo rc=$?")

    site_config("slurm_commands_use_token = false\n")
    without = sshd.ssh(alice.pw_name, submit)
    assert "rc=0" not in without.stdout, "a job was submitted without MUNGE and without the token"

    site_config("lifetime = 3600\nslurm_commands_use_token = true  # a JWT-only login node\n")
    with_token = sshd.ssh(alice.pw_name, submit)
    assert with_token.stdout.strip().endswith("rc=0"), with_token.stdout + with_token.stderr
    job = with_token.stdout.split()[0]
    try:
        shown = subprocess.run([f"{SLURM_BIN}/scontrol", "show", "job", job], capture_output=True,
                               text=True, timeout=10, env={"PATH": "/usr/bin:/bin", **slurm.env})
        assert f"UserId={alice.pw_name}({alice.pw_uid})" in shown.stdout, shown.stdout
    finally:
        subprocess.run([f"{SLURM_BIN}/scancel", job], capture_output=True, timeout=10,
                       env={"PATH": "/usr/bin:/bin", **slurm.env})


# -- slurmjwt doctor, as a user runs it in their session -------------------------------------
@pytest.mark.slurm_on_host
@pytest.mark.parametrize("keep", [False, True])
def test_doctor_in_a_session_says_the_mode_and_that_srun_is_protected(keep, sshd, slurm, daemon,
                                                                     account, site_config):
    site_config(f"slurm_commands_use_token = {'true' if keep else 'false'}\n")
    account.make("bash", {})
    run = sshd.ssh(account.user, f"{SLURMJWT} --socket {daemon.socket} doctor --config {SITE_CONFIG} "
                                 f"--slurm-conf {slurm.conf}")
    jobs = [line for line in run.stdout.splitlines() if line.split(":")[0].endswith(" jobs")]
    state = "kept" if keep else "removed"
    for where in ("this shell", "ssh HOST COMMAND"):
        assert f"ok      jobs: {where}: srun is /usr/local/bin/srun, slurmjwt-exec: the token is " \
               f"{state}, then /usr/bin/srun runs" in jobs, run.stdout
    assert any(line.startswith(f"ok      jobs: {exec_links.EXEC} reads slurm_commands_use_token = "
                               f"{str(keep).lower()} from {SITE_CONFIG}") for line in jobs), run.stdout
    assert any(re.match(r"ok      jobs: Slurm 22\.05\.\d+ \(/usr/bin/sbatch\) does not scrub", line)
               for line in jobs), run.stdout
    # MUNGE is on this host: the JWT-only switch is a mistake here, and doctor says so
    mode = [line for line in jobs if "slurm_commands_use_token = " in line and "reads" not in line]
    assert mode and mode[0].startswith("WARNING" if keep else "ok"), run.stdout
    assert not [line for line in jobs if line.startswith("PROBLEM")], run.stdout


# -- a login's token in a plain shell, against either Slurm ----------------------------------
LOGIN_SCRIPT = """
srun -n1 hostname; echo "srun rc=$?"
printf 'typed\\n' | srun -n1 cat
srun -n1 sh -c 'exit 7'; echo "exit rc=$?"
script -qec "srun -n1 --pty sh -c 'tty; echo jwt=\\${{SLURM_JWT:-none}}'" /dev/null
salloc -n1 srun -n1 hostname; echo "salloc rc=$?"
sbatch --wait -o {out} --wrap 'srun -n1 hostname && env' >/dev/null; echo "sbatch rc=$?"
printenv SLURM_JWT > {after}
"""


def login_token(daemon, leaders, user: str) -> str:
    """USER's token as a login has it: a live session, then the user's own MINT."""
    leaders(daemon.root_socket, user)
    run = daemon.token_as(user)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().removeprefix("SLURM_JWT=")


def fresh_paths(slurm, user, *names: str) -> list[str]:
    """Paths in /tmp (as Slurm's commands and jobs see it) for USER's files, none there yet."""
    paths = [f"/tmp/sjt-{user.pw_name}-{name}" for name in names]
    for path in paths:
        slurm.shell_as("root", f"rm -f {path}")
    return paths


def test_slurm_commands_work_with_a_login_token_and_no_job_holds_it(slurm, links, exec_config,
                                                                    daemon, users, leaders):
    alice = users["alice"]
    exec_config("")  # the default: Slurm's commands run without the token (MUNGE)
    token = login_token(daemon, leaders, alice.pw_name)
    out, after = fresh_paths(slurm, alice, "job.out", "after")
    run = slurm.shell_as(alice.pw_name, LOGIN_SCRIPT.format(out=out, after=after),
                         env={"SLURM_JWT": token}, timeout=120)
    # the terminal script(1) opens echoes the end of its input as "^@" before the next line
    lines = [re.sub(r"^(\^@|\0)+", "", line) for line in run.stdout.replace("\r", "").splitlines()]
    for expected in ("srun rc=0", "typed", "exit rc=7", "jwt=none", "salloc rc=0", "sbatch rc=0"):
        assert expected in lines, f"{expected!r} missing:\n{run.stdout}\n{run.stderr}"
    assert lines.count(HOST) == 2, run.stdout  # srun, salloc
    assert any(re.fullmatch(r"/dev/pts/\d+", line) for line in lines), run.stdout  # --pty: a terminal
    job = slurm.read_file(out)
    assert job.startswith(HOST) and "SLURM_JOB_ID=" in job, job[:2000]  # srun inside the job ran
    assert_no_token(job, token)
    assert slurm.read_file(after).strip() == token  # the login keeps its token for REST clients


def test_slurms_own_commands_with_the_token_fail_or_leak_as_the_release_does(slurm, daemon, users,
                                                                            leaders):
    """Why slurmjwt-exec is there, on this release: Slurm's own srun with SLURM_JWT set fails
    (slurmd takes only MUNGE), and its sbatch copies the token into the job unless the release
    scrubs it (26.05)."""
    alice = users["alice"]
    token = login_token(daemon, leaders, alice.pw_name)
    try:
        srun = slurm.client_as(alice.pw_name, "srun", "-n1", "--job-name=sjt-test", "hostname",
                               env={"SLURM_JWT": token}, timeout=60)
    finally:  # the allocation srun got may outlive it (srun dies of SIGPIPE): not left behind
        slurm.client_as("root", "scancel", "--name=sjt-test", f"--user={alice.pw_name}")
    assert srun.returncode != 0 and HOST not in srun.stdout.splitlines(), srun.stdout
    assert "Zero Bytes were transmitted or received" in srun.stderr, srun.stderr
    out, = fresh_paths(slurm, alice, "plain.out")
    sbatch = slurm.client_as(alice.pw_name, "sbatch", "--wait", "--chdir=/tmp", "-o", out,
                             "--job-name=sjt-test", "--wrap", "env", env={"SLURM_JWT": token},
                             timeout=60)
    assert sbatch.returncode == 0, sbatch.stderr
    copied = f"SLURM_JWT={token}" in slurm.read_file(out).splitlines()
    assert copied == (not slurm.release.sbatch_scrubs_jwt)


def test_jwt_only_switch_makes_slurm_commands_use_the_login_token(slurm, links, exec_config, daemon,
                                                                  users, leaders):
    """A login node without MUNGE (its slurm.conf points MUNGE at no socket): a job submitted
    there can only have been authenticated by the token, which slurmjwt-exec keeps only when
    slurm_commands_use_token = true."""
    alice = users["alice"]
    token = login_token(daemon, leaders, alice.pw_name)
    node_conf = slurm.client_conf_variant("sjt-jwt-only-node",
                                          "AuthInfo=socket=/nonexistent/munge.socket.2\n")
    submit = "sbatch --parsable --hold -o /dev/null --job-name=sjt-test --wrap true; echo rc=$?"
    env = {"SLURM_JWT": token, "SLURM_CONF": node_conf}

    exec_config("slurm_commands_use_token = false\n")
    without = slurm.shell_as(alice.pw_name, submit, env=env)
    assert "rc=0" not in without.stdout, "a job was submitted without MUNGE and without the token"

    exec_config("slurm_commands_use_token = true  # a JWT-only login node\n")
    with_token = slurm.shell_as(alice.pw_name, submit, env=env)
    assert with_token.stdout.strip().endswith("rc=0"), with_token.stdout + with_token.stderr
    job = with_token.stdout.split()[0]
    try:
        shown = slurm.client_as("root", "scontrol", "show", "job", job)
        assert f"UserId={alice.pw_name}({alice.pw_uid})" in shown.stdout, shown.stdout
    finally:
        slurm.client_as("root", "scancel", job)
