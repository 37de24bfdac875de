"""slurmjwt-exec (pam/slurmjwt-exec.c), built per test into tmp_path with its CONFIG_FILE and
SLURM_BINDIR there: it reads slurm_commands_use_token as slurmjwtd does; run as one of Slurm's
commands it removes the token and nothing else, unless told to keep it; and otherwise it is not
there: argv, argv[0], the rest of the environment, the process and its exit status are the real
command's. It refuses what it cannot do with one line on stderr and a distinct exit status.

Pure and in-process: no daemon, no users, no fixture that needs root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from slurmjwtd.config import ConfigError, example_config, load_config
from slurmjwtd.doctor import PROBLEM, Srun, check_exec_token

SOURCE = Path(__file__).resolve().parent.parent / "pam" / "slurmjwt-exec.c"

# A stand-in for Slurm's commands: prints, NUL-separated, its pid, its executable, argc, argv
# (argv[0] included, which a #! script cannot see) and its environment; then exits with
# $FAKE_STATUS, or is killed by SIGTERM if $FAKE_SIGNAL is set.
FAKE = r"""
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
extern char **environ;
static void field(const char *s) { fputs(s, stdout); putchar('\0'); }
int main(int argc, char **argv)
{
	char exe[PATH_MAX] = "", number[32];
	const char *status = getenv("FAKE_STATUS");
	if (readlink("/proc/self/exe", exe, sizeof exe - 1) < 0)
		return 99;
	snprintf(number, sizeof number, "%d", (int)getpid());
	field(number);
	field(exe);
	snprintf(number, sizeof number, "%d", argc);
	field(number);
	for (int i = 0; i < argc; i++)
		field(argv[i]);
	for (char **e = environ; *e != NULL; e++)
		field(*e);
	fflush(stdout);
	if (getenv("FAKE_SIGNAL") != NULL)
		raise(SIGTERM);
	return status != NULL ? atoi(status) : 0;
}
"""


@dataclass
class Exec:
    """slurmjwt-exec built to read CONFIG (not made) and to run Slurm's commands from SLURM."""

    dir: Path
    program: Path
    config: Path
    slurm: Path

    def link(self, name: str, where: Path | None = None) -> Path:
        """NAME in WHERE (dir/local: /usr/local/bin's stand-in), a symbolic link to the program."""
        where = where or self.dir / "local"
        where.mkdir(exist_ok=True)
        (where / name).symlink_to(self.program)
        return where / name

    def script(self, name: str, text: str) -> Path:
        """An executable #!/bin/sh script NAME in SLURM."""
        path = self.slurm / name
        path.write_text(f"#!/bin/sh\n{text}")
        path.chmod(0o755)
        return path

    def mode(self) -> dict[str, str]:
        """The fields of `slurmjwt-exec --mode`, checked for form."""
        result = subprocess.run([self.program, "--mode"], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0 and result.stderr == "", result
        fields = re.fullmatch(r"token=(removed|kept) config=(\S+) slurm=(\S+)\n", result.stdout)
        assert fields, result.stdout
        return dict(zip(("token", "config", "slurm"), fields.groups()))


def build_exec(dir: Path) -> Exec:
    """slurmjwt-exec compiled into DIR, reading DIR/slurmjwtd.toml, running DIR/slurm/NAME."""
    config, slurm, program = dir / "slurmjwtd.toml", dir / "slurm", dir / "slurmjwt-exec"
    slurm.mkdir()
    subprocess.run(["gcc", f'-DCONFIG_FILE="{config}"', f'-DSLURM_BINDIR="{slurm}"', "-o", str(program),
                    str(SOURCE)], check=True, capture_output=True, timeout=60)
    return Exec(dir, program, config, slurm)


@dataclass
class Ran:
    """One run through slurmjwt-exec: what the caller saw, and what the fake command saw."""

    pid: int  # the pid the caller started
    status: int
    stdout: bytes
    stderr: str

    def fields(self) -> list[str]:
        return [x.decode() for x in self.stdout.split(b"\0")[:-1]]

    @property
    def seen_pid(self) -> int:
        return int(self.fields()[0])

    @property
    def exe(self) -> str:
        return self.fields()[1]

    @property
    def argv(self) -> list[str]:
        fields = self.fields()
        return fields[3:3 + int(fields[2])]

    @property
    def env(self) -> dict[str, str]:
        fields = self.fields()
        return dict(x.split("=", 1) for x in fields[3 + int(fields[2]):])


def run(path: Path, *args: str, argv0: str | None = None, env: dict[str, str] | None = None) -> Ran:
    """Run PATH with argv[0] ARGV0 (PATH by default), ARGS and exactly the environment ENV."""
    proc = subprocess.Popen([argv0 or str(path), *args], executable=path, env=env or {},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()  # one that never ends (an exec loop) is stopped; one that ended is left alone
        proc.wait()
    return Ran(proc.pid, proc.returncode, out, err.decode())


def assert_refused(ran: Ran, status: int, *phrases: str) -> None:
    """Nothing ran; one line on stderr, from slurmjwt-exec, saying PHRASES."""
    assert (ran.status, ran.stdout) == (status, b""), ran
    assert ran.stderr.startswith("slurmjwt-exec: ") and ran.stderr.count("\n") == 1, ran.stderr
    assert ran.stderr.endswith("\n") and all(p in ran.stderr for p in phrases), ran.stderr


def source_table() -> list[str]:
    """The command names in the C source's one table."""
    body = re.search(r"commands\[\] = \{(.*?)\};", SOURCE.read_text(), re.S)
    assert body, "no commands[] table in slurmjwt-exec.c"
    return re.findall(r'"([^"]+)"', body.group(1))


@pytest.fixture(scope="session")
def fake_program(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fake")
    (d / "fake.c").write_text(FAKE)
    subprocess.run(["gcc", "-o", str(d / "fake"), str(d / "fake.c")], check=True, capture_output=True,
                   timeout=60)
    return d / "fake"


@pytest.fixture
def built(tmp_path, fake_program) -> Exec:
    """slurmjwt-exec with `srun` linked to it in dir/local and the fake as Slurm's srun and sbatch."""
    exe = build_exec(tmp_path)
    exe.link("srun")
    for name in ("srun", "sbatch"):
        shutil.copy(fake_program, exe.slurm / name)
    return exe


# -- reading the switch ---------------------------------------------------------------------

TRUE = "slurm_commands_use_token = true\n"
# (file text, what slurmjwtd makes of slurm_commands_use_token); None: no file at all
ACCEPTED = {
    "missing-file": (None, False),
    "empty": ("", False),
    "absent": ("lifetime = 600\nrequire_session = true\n", False),
    "true": (TRUE, True),
    "false": ("slurm_commands_use_token = false\n", False),
    "no-spaces": ("slurm_commands_use_token=true\n", True),
    "tabs": ("\tslurm_commands_use_token\t=\ttrue\t\n", True),
    "leading-spaces": ("   slurm_commands_use_token = true\n", True),
    "comment-after": ("slurm_commands_use_token = true   # JWT-only node\n", True),
    "comment-right-after": ("slurm_commands_use_token = true#x\n", True),
    "false-comment-says-true": ("slurm_commands_use_token = false # = true\n", False),
    "commented-out": ("# slurm_commands_use_token = true\n#slurm_commands_use_token = true\n", False),
    "after-other-keys": ('lifetime = 600\nallow_users = [\n  "a",\n  "b",\n]\n' + TRUE, True),
    "before-a-table": (TRUE + "[group_lifetime]\nhpc = 600\n", True),
    "false-before-a-table": ("slurm_commands_use_token = false\n[user_map]\nx = \"y\"\n", False),
    "name-in-user-map": ('[user_map]\nslurm_commands_use_token = "true"\n', False),
    "crlf": ("lifetime = 600\r\nslurm_commands_use_token = true\r\n", True),
    "no-final-newline": (TRUE.rstrip("\n"), True),
    "example-file": (example_config(), False),
    "example-file-switched-on": (example_config().replace("#slurm_commands_use_token = false", TRUE), True),
}


def write(path: Path, text: str | None) -> None:
    if text is not None:
        path.write_bytes(text.encode())


@pytest.mark.parametrize("text, daemon", ACCEPTED.values(), ids=ACCEPTED)
def test_mode_reads_the_switch_as_slurmjwtd_does(built, text, daemon):
    """For every file slurmjwtd accepts, --mode says what slurmjwtd reads, and srun does it."""
    write(built.config, text)
    assert load_config(str(built.config), required=False).slurm_commands_use_token is daemon
    mode = built.mode()
    assert mode == {"token": "kept" if daemon else "removed", "config": str(built.config),
                    "slurm": str(built.slurm)}
    ran = run(built.dir / "local" / "srun", env={"SLURM_JWT": "eyJ.a.b"})
    assert ran.status == 0 and ("SLURM_JWT" in ran.env) is daemon, ran


# TOML that slurmjwtd reads and slurmjwt-exec's line scanner does not (it reads only a bare
# `slurm_commands_use_token = true` line among the first 64 KiB's top-level lines), with what
# slurmjwtd makes of it: doctor reports each as a PROBLEM, with the form to write instead.
UNREAD = {
    "quoted-key": ('"slurm_commands_use_token" = true\n', True),
    "literal-quoted-key": ("'slurm_commands_use_token' = true\n", True),
    "after-64-KiB": ("#" * 70000 + "\n" + TRUE, True),
    "table-line-in-string": ('rs256_kid = """\n[x]\n"""\n' + TRUE, True),
    "key-line-in-string": ('rs256_kid = """\n' + TRUE + '"""\n', False),
}


@pytest.mark.parametrize("text, daemon", UNREAD.values(), ids=UNREAD)
def test_forms_the_scanner_does_not_read_are_a_doctor_problem(built, text, daemon):
    write(built.config, text)
    config = load_config(str(built.config), required=False)
    assert config.slurm_commands_use_token is daemon
    mode = built.mode()
    assert (mode["token"] == "kept") is not daemon
    srun = Srun(str(built.dir / "local" / "srun"), str(built.program), mode)
    finding = check_exec_token(srun, config, str(built.config), same_file=True)
    assert finding.level == PROBLEM and "on a line of its own" in finding.fix, finding


REJECTED = {
    "under-group_lifetime": "[group_lifetime]\n" + TRUE,
    "under-user_map": "[user_map]\n" + TRUE,
    "a-string": 'slurm_commands_use_token = "true"\n',
    "a-number": "slurm_commands_use_token = 1\n",
    "capitalised": "slurm_commands_use_token = True\n",
    "more-after-true": "slurm_commands_use_token = trueish\n",
    "longer-name": "slurm_commands_use_token_x = true\n",
    "directory": None,
}


@pytest.mark.parametrize("text", REJECTED.values(), ids=REJECTED)
def test_files_slurmjwtd_refuses_remove_the_token(built, text):
    """The switch written where or as slurmjwtd refuses it does not keep the token."""
    if text is None:
        built.config.mkdir()
    write(built.config, text)
    with pytest.raises(ConfigError):
        load_config(str(built.config), required=False)
    assert built.mode()["token"] == "removed"


# -- run as a Slurm command -----------------------------------------------------------------

ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "EMPTY": "", "LINES": "a\nb", "EQUALS": "a=b=c",
       "SLURM_JWT": "eyJ.a.b", "SLURM_JWT_TOKEN": "eyJ.c.d", "SLURM_CONF": "/etc/slurm/slurm.conf",
       "SLURM_JWTX": "x", "A": "1", "1A": "not a name, but a variable"}


@pytest.mark.parametrize("variable, removed", [
    (None, {"SLURM_JWT"}),
    ("SLURM_JWT", {"SLURM_JWT"}),
    ("SLURM_JWT_TOKEN", {"SLURM_JWT", "SLURM_JWT_TOKEN"}),
    ("A", {"SLURM_JWT", "A"}),
    ("UNSET_NAME", {"SLURM_JWT"}),
    ("", {"SLURM_JWT"}),
    ("A=B", {"SLURM_JWT"}),  # not a name: nothing but SLURM_JWT goes
    ("1A", {"SLURM_JWT"}),
], ids=["unset", "SLURM_JWT", "other-name", "A", "unset-name", "empty", "not-a-name", "digit-first"])
@pytest.mark.parametrize("keep", [False, True], ids=["removes", "keeps"])
def test_only_the_token_goes(built, variable, removed, keep):
    """SLURM_JWT and the variable SLURMJWT_VARIABLE names go, unless the switch keeps them; every
    other variable, SLURMJWT_VARIABLE included, reaches the command as it was."""
    write(built.config, TRUE if keep else "")
    env = ENV | ({} if variable is None else {"SLURMJWT_VARIABLE": variable})
    ran = run(built.dir / "local" / "srun", env=env)
    assert ran.status == 0, ran
    assert ran.env == (env if keep else {k: v for k, v in env.items() if k not in removed})


ARGS = ["--mode", "--list", "", "a b", "-n", "2", "--export=ALL,SLURM_JWT", "x\ny", "*", "$HOME", "é", ""]


@pytest.mark.parametrize("argv0", ["srun", "LINK", "./srun"], ids=["name", "path", "relative"])
def test_argv_and_argv0_reach_the_command(built, argv0):
    """Run as srun it is Slurm's srun in this very process: the same argv[0] and arguments (its
    own --mode and --list among them), the same pid."""
    link = built.dir / "local" / "srun"
    argv0 = str(link) if argv0 == "LINK" else argv0
    ran = run(link, *ARGS, argv0=argv0, env={"SLURM_JWT": "eyJ.a.b"})
    assert ran.status == 0, ran
    assert ran.argv == [argv0, *ARGS]
    assert ran.exe == str(built.slurm / "srun")
    assert ran.seen_pid == ran.pid  # exec, not a child
    assert ran.stderr == ""


@pytest.mark.parametrize("status", [0, 1, 2, 42, 126, 127, 255])
def test_exit_status_is_the_commands(built, status):
    ran = run(built.dir / "local" / "srun", env={"FAKE_STATUS": str(status)})
    assert ran.status == status and ran.exe == str(built.slurm / "srun"), ran


def test_a_signal_reaches_the_command(built):
    """The command dies of its signal as the caller's own child: no process between them."""
    ran = run(built.dir / "local" / "srun", env={"FAKE_SIGNAL": "1"})
    assert ran.status == -15 and ran.seen_pid == ran.pid, ran


def test_list_is_the_command_table(built, fake_program):
    """--list prints the table, and each name it lists runs Slurm's command of that name."""
    listed = subprocess.run([built.program, "--list"], capture_output=True, text=True, timeout=10)
    assert listed.returncode == 0 and listed.stderr == ""
    names = listed.stdout.splitlines()
    assert names == source_table() and listed.stdout.endswith("\n")
    assert len(set(names)) == len(names) and {"srun", "sbatch", "salloc", "sbcast"} <= set(names)
    for name in names:
        shutil.copy(fake_program, built.slurm / name)
        link = built.link(name, built.dir / "all")
        ran = run(link, "x", env={"SLURM_JWT": "eyJ.a.b", "A": "1"})
        assert (ran.status, ran.exe, ran.argv, ran.env) == (0, str(built.slurm / name), [str(link), "x"],
                                                             {"A": "1"}), name


# -- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, args", [
    ("slurmjwt-exec", []),
    ("slurmjwt-exec", ["--bogus"]),
    ("slurmjwt-exec", ["--mode", "x"]),
    ("slurmjwt-exec", ["--list", "--mode"]),
    ("notslurm", []),
    ("srun2", ["x"]),
    ("SRUN", []),
    ("srun.sh", []),
], ids=["bare", "bogus-option", "mode-and-more", "list-and-more", "other-name", "longer", "upper",
        "suffix"])
def test_refuses_other_names(built, fake_program, name, args):
    path = built.program if name == "slurmjwt-exec" else built.link(name)
    shutil.copy(fake_program, built.slurm / name)  # were it run, it would print
    assert_refused(run(path, *args, env=ENV), 2, f'called as "{name}"')


def test_cannot_run_a_missing_command(built):
    (built.slurm / "srun").unlink()
    assert_refused(run(built.dir / "local" / "srun", env=ENV), 127, "cannot run",
                   f"{built.slurm}/srun: No such file")


def test_cannot_run_a_command_that_is_not_executable(built):
    (built.slurm / "srun").chmod(0o644)
    assert_refused(run(built.dir / "local" / "srun", env=ENV), 126, "cannot run", "Permission denied")


@pytest.mark.parametrize("how", ["symlink", "link-to-link", "hard-link"])
def test_refuses_to_run_itself(built, how):
    """SLURM_BINDIR/srun being this program would exec it forever: it stops at once."""
    real = built.slurm / "srun"
    real.unlink()
    if how == "hard-link":
        os.link(built.program, real)
    else:
        real.symlink_to(built.program if how == "symlink" else built.dir / "local" / "srun")
    assert_refused(run(built.dir / "local" / "srun", env=ENV), 126, f"{real} is this program")
