"""`slurmjwt doctor`: a correct login node passes; each broken piece is named with why and
the fix, and makes the exit status non-zero; key bytes and tokens are never printed.

The real daemon, key and users come from conftest; slurm.conf, the PAM stack and sshd_config
are written per test. The machine's clock may or may not be synchronised: Python-level tests
pass a clock, CLI tests accept what the real clock says and check the other findings.
check_jobs is tested in-process on a node made in tmp_path: slurmjwt-exec built there
(test_exec.build_exec), PATHs of fake directories, a fake sbatch, MUNGE files and
/etc/environment passed in.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MODULE, PYTHON, SLURMJWT, make_key, run_as

from test_exec import Exec, build_exec

from slurmjwtd import doctor
from slurmjwtd.config import Config
from slurmjwtd.doctor import (
    OK,
    PROBLEM,
    SKIP,
    WARNING,
    Finding,
    RunFailed,
    Runner,
    Srun,
    alt_parameters,
    check_config,
    check_jobs,
    check_srun_on_path,
    check_sshd,
    check_tokens,
    find_module,
    parse_pam,
    parse_slurm_conf,
    read_clock,
    run_checks,
    run_program,
    sshd_option,
    sshd_path,
)

def SYNCED() -> tuple[bool, str]:  # noqa: N802 (a constant clock)
    return True, "maximum error 1 ms"


TOPICS = ("daemon", "configuration", "key", "slurm.conf", "pam", "sshd")


@dataclass
class Site:
    """One login node's files: the shared daemon's config and key, our slurm.conf, PAM, sshd."""

    dir: Path
    socket: str
    config: Path
    key_file: Path
    slurm_conf: Path
    pam_file: Path
    sshd_config: Path

    def argv(self, **override: str) -> list[str]:
        paths = {"socket": self.socket, "config": str(self.config), "slurm_conf": str(self.slurm_conf),
                 "pam_file": str(self.pam_file), "sshd_config": str(self.sshd_config)} | override
        return [SLURMJWT, "--socket", paths["socket"], "doctor", "--config", paths["config"],
                "--slurm-conf", paths["slurm_conf"], "--pam-file", paths["pam_file"],
                "--sshd-config", paths["sshd_config"]]

    def cli(self, env: dict[str, str] | None = None, **override: str) -> subprocess.CompletedProcess:
        clean = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"} | (env or {})
        return subprocess.run(self.argv(**override), check=False, capture_output=True, text=True, env=clean,
                              timeout=60)

    def python(self, capsys, clock=SYNCED, jobs=lambda *args: [], **override: str) -> tuple[int, str]:
        """run_checks on this site; the jobs checks (this machine's PATH) only if JOBS is given."""
        paths = {"socket": self.socket, "config": str(self.config), "slurm_conf": str(self.slurm_conf),
                 "pam_file": str(self.pam_file), "sshd_config": str(self.sshd_config)} | override
        status = run_checks(**paths, clock=clock, jobs=jobs)
        return status, capsys.readouterr().out


@pytest.fixture
def site(daemon, workdir, monkeypatch) -> Site:
    d = workdir / "doctor"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o755)
    slurm_conf = d / "slurm.conf"
    slurm_conf.write_text("ClusterName=test\nAuthType=auth/munge\nAuthAltTypes=auth/jwt\n"
                          f"AuthAltParameters=jwt_key={daemon.key_file},disable_token_creation\n")
    pam_file = d / "sshd"
    pam_file.write_text("session required pam_limits.so\n"
                        f"session optional {MODULE} env=SLURM_JWT_TOKEN\n")
    sshd_config = d / "sshd_config"
    sshd_config.write_text("Port 2222\nUsePAM yes\n")
    yield Site(d, daemon.socket, daemon.dir / "slurmjwtd.toml", daemon.key_file, slurm_conf,
               pam_file, sshd_config)
    shutil.rmtree(d, ignore_errors=True)


def lines_of(out: str, level: str, topic: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"{level:<8}{topic}: ")]


def block(out: str, topic: str) -> str:
    """The PROBLEM or WARNING block about TOPIC: its first line and the indented why/fix."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.split(" ", 1)[0] in ("PROBLEM", "WARNING") and line[8:].startswith(f"{topic}: "):
            rest = [x for x in lines[i + 1:i + 3] if x.startswith(" " * 8)]
            return "\n".join([line, *rest])
    raise AssertionError(f"no PROBLEM or WARNING about {topic} in:\n{out}")


def assert_problem(result_or_pair, topic: str, *phrases: str, fix: str = "") -> str:
    if isinstance(result_or_pair, subprocess.CompletedProcess):
        status, out = result_or_pair.returncode, result_or_pair.stdout
    else:
        status, out = result_or_pair
    assert status == 1, out
    text = block(out, topic)
    assert text.startswith("PROBLEM "), text
    assert "\n        why: " in text and "\n        fix: " in text, text
    for phrase in phrases:
        assert phrase in text.splitlines()[0], text
    assert fix in text.split("fix: ", 1)[1], text
    return out


# -- a correct site -------------------------------------------------------------------------

def test_correct_setup_is_all_ok(site, capsys):
    status, out = site.python(capsys)
    assert status == 0, out
    for topic in (*TOPICS, "clock"):
        assert len(lines_of(out, "ok", topic)) == 1, out
    assert "PROBLEM" not in out and "skip" not in out
    assert out.splitlines()[-1] == "0 problems, 0 warnings"
    assert f"answers on {site.socket} (signer hs256, fast path on)" in out
    assert f"{site.pam_file}:2: session optional {MODULE}" in out
    assert f"{site.sshd_config}:2: UsePAM yes" in out


def test_correct_setup_through_the_cli(site):
    """Through the CLI the jobs checks run too: on the test machine, no slurmjwt-exec on PATH
    (tests/test_jobs.py checks them with it installed) and the configuration's default mode."""
    result = site.cli()
    assert result.stderr == ""
    for topic in TOPICS:
        assert len(lines_of(result.stdout, "ok", topic)) == 1, result.stdout
    synced, _ = read_clock()
    problems = [x for x in result.stdout.splitlines() if x.startswith("PROBLEM")]
    assert problems == ([] if synced else [problems[0]]), result.stdout
    assert synced or problems[0].startswith("PROBLEM clock: not synchronised")
    assert result.returncode == (0 if synced else 1), result.stdout
    warned = [x.split(":")[0] for x in result.stdout.splitlines() if x.startswith("WARNING")]
    assert set(warned) <= {"WARNING jobs"}, result.stdout


def test_json_findings_and_the_same_exit_status(site):
    """doctor --json: one JSON list of {level, topic, what, why, fix}, the same findings and exit
    status as the text (here with a problem: the daemon's socket is wrong)."""
    missing = str(site.dir / "typo.sock")
    text = site.cli(socket=missing)
    as_json = subprocess.run([*site.argv(socket=missing), "--json"], check=False,
                             capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    findings = json.loads(as_json.stdout)
    assert as_json.returncode == text.returncode == 1 and as_json.stderr == ""
    assert all(f.keys() == {"level", "topic", "what", "why", "fix"} for f in findings)
    assert [f"{f['level']:<8}{f['topic']}: {f['what']}" for f in findings] == [
        line for line in text.stdout.splitlines()[:-1] if not line.startswith(" ")]
    daemon = next(f for f in findings if f["topic"] == "daemon")
    assert daemon["level"] == "PROBLEM" and missing in daemon["what"] and daemon["fix"]


# -- each broken piece ----------------------------------------------------------------------

def test_daemon_down(site, capsys):
    """Nothing at the socket the configuration names: start the daemon."""
    missing = str(site.dir / "nothing.sock")
    config = site.dir / "down.toml"
    config.write_text(re.sub(r'(?m)^socket = .*$', f'socket = "{missing}"', site.config.read_text()))
    out = assert_problem(site.cli(socket=missing, config=str(config)), "daemon",
                         f"cannot reach slurmjwtd at {missing}", fix="systemctl start slurmjwtd.socket")
    assert "journalctl -u slurmjwtd" in block(out, "daemon")
    assert lines_of(out, "ok", "key")  # the other checks still ran


def test_wrong_socket_path(site, capsys):
    """Nothing at a --socket other than the configuration's: the path is wrong, not the daemon."""
    missing = str(site.dir / "typo.sock")
    out = assert_problem(site.cli(socket=missing), "daemon", f"cannot reach slurmjwtd at {missing}",
                         fix=f"nothing is at {missing} (slurmjwtd listens on {site.socket} and ")
    text = block(out, "daemon")
    assert "the socket path is wrong" in text and f"or with --socket {site.socket}" in text
    assert "systemctl start" not in text
    not_a_socket = site.dir / "plain-file"
    not_a_socket.write_text("")
    out = assert_problem(site.python(capsys, socket=str(not_a_socket)), "daemon",
                         fix=f"{not_a_socket} is not a socket (slurmjwtd listens on {site.socket} and ")


def test_over_long_socket_path(site, capsys):
    path = "/tmp/" + "s" * 199
    out = assert_problem(site.cli(socket=path), "daemon", "is 204 bytes, longer than the 107 a Unix "
                         "socket allows", fix=f"run doctor with --socket {site.socket}")
    assert "None" not in block(out, "daemon")


def test_something_else_on_the_socket(site, capsys):
    """A listener that answers out of protocol is not a working daemon."""
    path = str(site.dir / "other.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.sendall(b"HTTP/1.0 200 OK\n")
        conn.close()
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        assert_problem(site.python(capsys, socket=path), "daemon", f"slurmjwtd at {path} sent a garbled answer")
    finally:
        thread.join(10)
        listener.close()


def test_insecure_key_mode(site, capsys):
    copy = site.dir / "open.key"
    make_key(copy, mode=0o644, key=site.key_file.read_bytes())
    config = site.dir / "open.toml"
    config.write_text(f'key_file = "{copy}"\n')
    # ClusterName and SlurmctldHost: enough for 22.05's `scontrol --version`, which reads slurm.conf
    site.slurm_conf.write_text(f"ClusterName=sjt\nSlurmctldHost=localhost\nAuthAltTypes=auth/jwt\n"
                               f"AuthAltParameters=jwt_key={copy}\n")
    out = assert_problem(site.cli(config=str(config)), "key", f"key file {copy}: mode 0644 gives other "
                         "users access", fix=f"chmod o-rwx {copy}")
    assert "mint a token for any user" in block(out, "key")
    # slurm.conf's jwt_key: the same file; slurmctld 23.11+ would not even start with it
    text = block(out, "slurm.conf")
    assert text.startswith(f"PROBLEM slurm.conf: jwt_key={copy}: mode 0644 gives other users access")
    assert re.search(r"slurmctld 23\.11 and later refuse to start with it \(Slurm 22\.05\.\d+ here\)",
                     text), text
    assert f"fix: chmod o-rwx {copy}" in text


def test_key_owned_by_someone_else(site, capsys, users):
    copy = site.dir / "alice.key"
    make_key(copy, owner=users["alice"].pw_name, mode=0o600)
    config = site.dir / "alice.toml"
    config.write_text(f'key_file = "{copy}"\n')
    assert_problem(site.python(capsys, config=str(config)), "key", f"owned by {users['alice'].pw_name}",
                   fix=f"chown root {copy}")


def test_invalid_configuration(site, capsys):
    config = site.dir / "bad.toml"
    config.write_text("lifetime = \"3600\"\n")
    status, out = site.python(capsys, config=str(config))
    assert_problem((status, out), "configuration", f"config {config}: key 'lifetime'",
                   fix=f"slurmjwtd --config {config} --check-config")
    assert lines_of(out, "skip", "key") and lines_of(out, "skip", "slurm.conf")


def test_missing_configuration_means_defaults(site, capsys):
    _, out = site.python(capsys, config=str(site.dir / "none.toml"))
    assert lines_of(out, "ok", "configuration")[0].endswith(
        "does not exist: the defaults apply (key_file /var/lib/slurm/jwt_hs256.key)")


def test_slurm_conf_key_has_other_bytes(site, capsys):
    other = site.dir / "other.key"
    make_key(other)
    site.slurm_conf.write_text(f"AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key={other}\n")
    assert_problem(site.cli(), "slurm.conf", f"jwt_key={other} and slurmjwtd's key_file "
                   f"{site.key_file} hold different keys", fix=f'set key_file = "{other}" in {site.config}')


def test_slurm_conf_key_same_bytes_elsewhere_is_fine(site, capsys):
    copy = site.dir / "copy.key"
    make_key(copy, key=site.key_file.read_bytes())
    site.slurm_conf.write_text(f"AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key={copy}\n")
    status, out = site.python(capsys)
    assert status == 0, out
    assert lines_of(out, "ok", "slurm.conf")


def test_slurm_conf_key_one_byte_longer(site, capsys):
    longer = site.dir / "longer.key"
    make_key(longer, key=site.key_file.read_bytes() + b"\n")  # a trailing newline is part of the key
    site.slurm_conf.write_text(f"AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key={longer}\n")
    assert_problem(site.python(capsys), "slurm.conf", "hold different keys")


def test_slurm_conf_key_missing(site, capsys):
    gone = site.dir / "gone.key"
    site.slurm_conf.write_text(f"AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key={gone}\n")
    assert_problem(site.python(capsys), "slurm.conf", f"jwt_key={gone}: No such file",
                   fix=f"copy the controller's key to {gone}")


@pytest.mark.parametrize("text", [
    "AuthType=auth/munge\n",
    "#AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key=KEY\n",
    "AuthAltTypes=auth/munge\nAuthAltParameters=jwt_key=KEY\n",
    "AuthAltTypes=auth/jwt\nAuthAltTypes=auth/munge\nAuthAltParameters=jwt_key=KEY\n",  # last wins
], ids=["absent", "commented", "other", "overridden"])
def test_auth_alt_types_without_jwt(site, capsys, text):
    site.slurm_conf.write_text(text.replace("KEY", str(site.key_file)))
    assert_problem(site.cli(), "slurm.conf", "AuthAltTypes does not include auth/jwt",
                   fix="AuthAltTypes=auth/jwt")


def test_auth_alt_parameters_without_jwt_key(site, capsys):
    site.slurm_conf.write_text("AuthAltTypes=auth/jwt\nAuthAltParameters=jwks=/etc/slurm/jwks.json\n")
    assert_problem(site.python(capsys), "slurm.conf", "AuthAltParameters has no jwt_key=",
                   fix=f"AuthAltParameters=jwt_key={site.key_file}")


def test_slurm_conf_missing(site, capsys):
    gone = site.dir / "none.conf"
    assert_problem(site.cli(slurm_conf=str(gone)), "slurm.conf", f"{gone}: No such file",
                   fix="--slurm-conf PATH")


def test_slurm_conf_include_is_followed(site, capsys):
    (site.dir / "jwt-test.conf").write_text(f"AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key={site.key_file}\n")
    site.slurm_conf.write_text("ClusterName=test\nInclude jwt-%c.conf\n")
    status, out = site.python(capsys)
    assert status == 0 and lines_of(out, "ok", "slurm.conf"), out


@pytest.mark.parametrize("text", [
    "session required pam_limits.so\n",
    f"#session optional {MODULE}\n",
    f"session required pam_limits.so # session optional {MODULE}\n",
    f"auth optional {MODULE}\n",
], ids=["absent", "commented", "trailing-comment", "not-session"])
def test_pam_line_missing(site, capsys, text):
    site.pam_file.write_text(text)
    out = assert_problem(site.cli(), "pam", f"{site.pam_file} has no session line with pam_slurmjwt.so",
                         fix=f"echo 'session optional pam_slurmjwt.so' >> {site.pam_file}")
    if "#" in text:
        assert f"(commented out at {site.pam_file}:1)" in block(out, "pam")


def test_pam_line_through_include(site, capsys):
    (site.dir / "common-session").write_text(f"-session optional {MODULE}\n")
    site.pam_file.write_text("@include common-session\n")
    status, out = site.python(capsys)
    assert status == 0, out
    assert lines_of(out, "ok", "pam") == [f"ok      pam: {site.dir}/common-session:1: session optional {MODULE}"]


def test_module_in_other_stacks_is_a_warning(site, capsys):
    """Debian's common-session is included by su, login, sudo -i, runuser...: the module there
    opens a login session for each of them. Each stack that runs it is named, with the line."""
    d = site.dir
    (d / "common-session").write_text(f"session required pam_unix.so\nsession optional {MODULE}\n")
    (d / "common-session-noninteractive").write_text("session required pam_unix.so\n")
    site.pam_file.write_text("@include common-session\n")  # sshd's own: fine
    status, out = site.python(capsys)
    assert lines_of(out, "ok", "pam stacks") == [
        f"ok      pam stacks: no PAM stack in {d} but sshd runs pam_slurmjwt.so"], out
    (d / "su").write_text("auth sufficient pam_rootok.so\n@include common-session\n")
    (d / "sudo-i").write_text("session include su\n")
    (d / "cron").write_text("@include common-session-noninteractive\n")  # no module: not named
    (d / "login").write_text(f"session optional {MODULE} debug\n")
    (d / "runuser").write_text(f"# session optional {MODULE}\nauth optional {MODULE}\n")  # not sessions
    (d / "su.dpkg-old").write_text(f"session optional {MODULE}\n")  # no service reads it
    status, out = site.python(capsys)
    assert status == 0, out  # a warning
    text = block(out, "pam stacks")
    assert text.splitlines()[0] == (
        f"WARNING pam stacks: pam_slurmjwt.so runs in stacks other than sshd's: login ({d}/login:1), "
        f"su ({d}/common-session:2), sudo-i ({d}/common-session:2)"), text
    assert "a cron job or an su then counts as a login" in text
    assert f"fix: remove the line from {d}/common-session, {d}/login and keep 'session optional " \
           f"pam_slurmjwt.so' in {site.pam_file} alone" in text
    assert lines_of(out, "ok", "pam")  # sshd's own stack is still right
    # --pam-dir names another directory of stacks
    elsewhere = d / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cron").write_text(f"-session optional {MODULE}\n")
    result = subprocess.run([*site.argv(), "--pam-dir", str(elsewhere)], capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert block(result.stdout, "pam stacks").splitlines()[0].endswith(
        f"other than sshd's: cron ({elsewhere}/cron:1)"), result.stdout


def test_pam_module_not_installed(site, capsys):
    site.pam_file.write_text("session optional /nonexistent/pam_slurmjwt.so\n")
    assert_problem(site.python(capsys), "pam", "/nonexistent/pam_slurmjwt.so is not installed",
                   fix="make install")


def test_pam_file_missing(site, capsys):
    gone = site.dir / "none"
    assert_problem(site.python(capsys, pam_file=str(gone)), "pam", f"{gone}: No such file")


@pytest.mark.parametrize("text, phrase, fix", [
    ("UsePAM no\n", "{cfg}:1: UsePAM no", "make it 'UsePAM yes' there"),
    ("Port 2222\n", "{cfg} does not set UsePAM (sshd's default: no)", "add 'UsePAM yes' near the top of {cfg}"),
    ("#UsePAM yes\n", "{cfg} does not set UsePAM", "add 'UsePAM yes'"),
    ("Include {dir}/early.conf\nUsePAM yes\n", "{dir}/early.conf:1: UsePAM no",  # first value wins
     "make it 'UsePAM yes' there (sshd keeps the first value it reads)"),
], ids=["no", "absent", "commented", "include-first"])
def test_use_pam_not_yes(site, capsys, text, phrase, fix):
    (site.dir / "early.conf").write_text("UsePAM no\n")
    site.sshd_config.write_text(text.format(dir=site.dir))
    out = assert_problem(site.cli(), "sshd", phrase.format(cfg=site.sshd_config, dir=site.dir),
                         fix=fix.format(cfg=site.sshd_config))
    assert "systemctl reload ssh" in block(out, "sshd")


def test_sshd_config_missing(site, capsys):
    gone = site.dir / "none_config"
    assert_problem(site.python(capsys, sshd_config=str(gone)), "sshd", f"{gone}: No such file")


def test_unsynchronised_clock(site, capsys):
    out = assert_problem(site.python(capsys, clock=lambda: (False, "maximum error 16000 ms")), "clock",
                         "not synchronised (maximum error 16000 ms)", fix="timedatectl set-ntp true")
    assert "exp has no leeway" in block(out, "clock")
    assert out.splitlines()[-1] == "1 problem, 0 warnings"


def test_unreadable_clock_is_a_warning(site, capsys):
    def broken():
        raise OSError(1, "Operation not permitted")
    status, out = site.python(capsys, clock=broken)
    assert status == 0 and block(out, "clock").startswith("WARNING clock: cannot read"), out


def test_read_clock_agrees_for_root_and_users(users):
    """adjtimex with modes 0 only reads: an ordinary user gets the same answer as root, and
    the answer is the kernel's, as ntp_gettime(3) reports it (TIME_ERROR when unsynchronised)."""
    synced, detail = read_clock()
    assert detail.startswith("maximum error ")
    libc = ctypes.CDLL(None)
    assert synced is (libc.ntp_gettime(ctypes.create_string_buffer(256)) != 5)
    result = run_as(users["alice"].pw_name, PYTHON, "-c",
                    "from slurmjwtd.doctor import read_clock; print(read_clock()[0])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(synced)


def test_runs_unprivileged_without_checking_the_key(site, users):
    """As an ordinary user the key cannot be read: it is skipped, never a false finding."""
    for path in (site.slurm_conf, site.pam_file, site.sshd_config):
        path.chmod(0o644)
    result = run_as(users["alice"].pw_name, *site.argv())
    assert lines_of(result.stdout, "ok", "daemon"), result.stdout + result.stderr
    assert lines_of(result.stdout, "skip", "key") == [
        "skip    key: not checked: run slurmjwt doctor as root to check the key"]
    assert lines_of(result.stdout, "skip", "slurm.conf")
    assert [x for x in result.stdout.splitlines() if x.startswith("PROBLEM") and "clock" not in x] == []


def test_never_prints_key_bytes_or_tokens(site, daemon):
    other = site.dir / "other.key"
    other_key = make_key(other)
    outputs = [site.cli()]
    site.slurm_conf.write_text(f"AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key={other}\n")
    outputs.append(site.cli())
    open_key = site.dir / "open.key"
    make_key(open_key, mode=0o644, key=site.key_file.read_bytes())
    config = site.dir / "open.toml"
    config.write_text(f'key_file = "{open_key}"\n')
    outputs.append(site.cli(config=str(config)))
    assert "hold different keys" in outputs[1].stdout and "mode 0644" in outputs[2].stdout
    raw = [subprocess.run(site.argv(), check=False, capture_output=True).stdout]
    for key in (site.key_file.read_bytes(), other_key):
        forms = [key.hex(), key.hex().upper(), base64.b64encode(key).decode(),
                 base64.urlsafe_b64encode(key).decode().rstrip("=")]
        for result in outputs:
            text = result.stdout + result.stderr
            assert not any(form in text for form in forms)
            assert key.decode("latin-1") not in text
        assert key not in raw[0]
    for result in outputs:
        assert "eyJ" not in result.stdout  # every JWT starts with the base64 of '{"'


# -- the parsers ----------------------------------------------------------------------------

def test_parse_slurm_conf(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "jwt-c1.conf").write_text("AuthAltParameters=jwt_key=/from/include\n")
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "# comment\n"
        "ClusterName=c1\n"
        "authalttypes = auth/munge   # a trailing comment\n"
        "AUTHALTTYPES=auth/jwt\n"                       # keys are case-insensitive; last wins
        "NodeName=n1 CPUs=2 State=UNKNOWN\n"            # several pairs on one line
        'SlurmctldParameters="a b"\n'                    # quoted value
        "Prolog=/bin/echo\\#x\n"                         # an escaped # is not a comment
        "PartitionName=debug \\\n  Nodes=n1\n"           # a continued line
        "include sub/jwt-%c.conf\n"                      # relative to slurm.conf, %c expanded
    )
    values = parse_slurm_conf(str(conf))
    assert values["authalttypes"] == "auth/jwt"
    assert values["authaltparameters"] == "jwt_key=/from/include"
    assert values["cpus"] == "2" and values["state"] == "UNKNOWN"
    assert values["slurmctldparameters"] == "a b"
    assert values["prolog"] == "/bin/echo#x"
    assert values["nodes"] == "n1"
    with pytest.raises(OSError) as exc:
        conf.write_text("Include missing.conf\n")
        parse_slurm_conf(str(conf))
    assert exc.value.filename == str(tmp_path / "missing.conf")


def test_parse_slurm_conf_include_loop_ends(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("AuthAltTypes=auth/jwt\nInclude slurm.conf\n")
    assert parse_slurm_conf(str(conf))["authalttypes"] == "auth/jwt"


def test_alt_parameters():
    assert alt_parameters("jwt_key=/k, jwks=/j.json,disable_token_creation,,JWT_KEY=/K2") == {
        "jwt_key": "/K2", "jwks": "/j.json", "disable_token_creation": ""}
    assert alt_parameters("") == {}


def test_parse_pam(tmp_path):
    (tmp_path / "common-session").write_text(
        "session required pam_unix.so\n"
        "auth required pam_deny.so\n")
    (tmp_path / "extra").write_text("session optional pam_extra.so\nauth optional pam_auth_extra.so\n")
    (tmp_path / "sshd").write_text(
        "# a comment naming pam_unix.so\n"
        "@include common-session\n"
        "session [success=ok ignore=ignore default=bad] pam_selinux.so open\n"
        "-session optional pam_systemd.so\n"
        "session include extra\n"                      # only extra's session lines
        f"session optional {MODULE} \\\n  env=X debug # trailing\n"
        f"#session optional pam_slurmjwt.so\n"
        "@include missing-file\n")
    stack = parse_pam(str(tmp_path / "sshd"))
    got = [(x.type, x.control, x.module, x.args) for x in stack.lines]
    assert got == [
        ("session", "required", "pam_unix.so", []),
        ("auth", "required", "pam_deny.so", []),
        ("session", "[success=ok ignore=ignore default=bad]", "pam_selinux.so", ["open"]),
        ("session", "optional", "pam_systemd.so", []),
        ("session", "optional", "pam_extra.so", []),
        ("session", "optional", MODULE, ["env=X", "debug"]),
    ]
    assert stack.lines[0].where == f"{tmp_path}/common-session:1"
    assert stack.lines[-1].where == f"{tmp_path}/sshd:6"
    assert stack.commented == [f"{tmp_path}/sshd:8"]


def test_parse_pam_include_loop_ends(tmp_path):
    (tmp_path / "a").write_text("@include a\nsession optional pam_x.so\n")
    assert len(parse_pam(str(tmp_path / "a")).lines) == doctor.MAX_DEPTH + 1


def test_find_module(tmp_path):
    (tmp_path / "pam_slurmjwt.so").write_bytes(b"")
    assert find_module("pam_slurmjwt.so", [str(tmp_path / "none"), str(tmp_path)]) == str(
        tmp_path / "pam_slurmjwt.so")
    assert find_module("pam_slurmjwt.so", [str(tmp_path / "none")]) is None
    assert find_module(MODULE) == MODULE
    assert find_module("pam_unix.so") is not None  # the machine's own module directory is searched


SSHD_CASES = {
    "yes": "UsePAM yes\n",
    "equals": "usepam=yes\n",
    "spaced-equals": "UsePAM = no\n",
    "quoted": 'UsePAM "yes"\n',
    "upper": "UsePAM YES\n",
    "trailing-comment": "UsePAM yes # why\n",
    "commented": "# UsePAM yes\n",
    "absent": "Port 2222\n",
    "first-wins": "UsePAM no\nUsePAM yes\n",
    "include-first": "Include {dir}/no.conf\nUsePAM yes\n",
    "include-glob": "Include {dir}/d/*.conf\nUsePAM no\n",
    "include-nothing": "Include {dir}/none*.conf\nUsePAM yes\n",
    "match-in-include": "Include {dir}/match.conf\nUsePAM yes\n",
}


def _sshd_files(tmp_path: Path, name: str) -> Path:
    (tmp_path / "d").mkdir(exist_ok=True)
    (tmp_path / "d" / "10-a.conf").write_text("UsePAM yes\n")
    (tmp_path / "d" / "20-b.conf").write_text("UsePAM no\n")
    (tmp_path / "no.conf").write_text("UsePAM no\n")
    (tmp_path / "match.conf").write_text("Match User nobody\n  X11Forwarding no\n")
    cfg = tmp_path / "sshd_config"
    cfg.write_text(SSHD_CASES[name].format(dir=tmp_path))
    return cfg


@pytest.mark.parametrize("name", SSHD_CASES)
def test_sshd_option_agrees_with_sshd(tmp_path, name):
    """The parser's UsePAM is what `sshd -T` itself reports (sshd's default is no)."""
    cfg = _sshd_files(tmp_path, name)
    found = sshd_option(str(cfg), "UsePAM")
    result = subprocess.run(["/usr/sbin/sshd", "-T", "-f", str(cfg)], check=False, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    real = next(x.split()[1] for x in result.stdout.splitlines() if x.startswith("usepam "))
    assert (found[0] if found else "no") == real


def _sshd_reports(value: str | None) -> Runner:
    """A runner standing in for `sshd -T`: it prints `usepam VALUE`, or fails when VALUE is None."""
    def run(argv, env):
        assert argv[:2] == [doctor.SSHD, "-T"]
        if value is None:
            raise RunFailed("sshd: no hostkeys available -- exiting.")
        return f"port 22\nusepam {value}\n"
    return run


@pytest.mark.parametrize("text, says, level, phrase", [
    ("UsePAM yes\n", "yes", OK, "{cfg}:1: UsePAM yes"),            # agreeing: the parser names the line
    ("UsePAM yes\n", None, OK, "{cfg}:1: UsePAM yes"),             # sshd cannot run: the parser alone
    ("Port 22\n", None, PROBLEM, "{cfg} does not set UsePAM"),
    ("Port 22\n", "no", PROBLEM, "{cfg} does not set UsePAM"),     # sshd's default, as the parser says
    ("Port 22\n", "yes", OK, "{cfg}, as `sshd -T` reads it: UsePAM yes"),      # sshd knows better
    ("UsePAM yes\n", "no", PROBLEM, "{cfg}, as `sshd -T` reads it: UsePAM no"),
], ids=["agree", "no-sshd", "unset-no-sshd", "unset-default", "sshd-yes", "sshd-no"])
def test_check_sshd_asks_sshd(tmp_path, text, says, level, phrase):
    """sshd -T has the last word on UsePAM; the parser names the line, and answers alone where
    sshd -T cannot run (no host keys as non-root, not installed)."""
    cfg = tmp_path / "sshd_config"
    cfg.write_text(text)
    finding = check_sshd(str(cfg), run=_sshd_reports(says))
    assert finding.level == level and finding.what.startswith(phrase.format(cfg=cfg)), finding


def test_check_sshd_runs_the_real_sshd(tmp_path):
    """The real sshd -T runs (as root, with the host's keys) and agrees with the parser."""
    said: list[str] = []

    def run(argv, env):
        said.append(run_program(argv, env))
        return said[-1]

    cfg = tmp_path / "sshd_config"
    for value, level in (("yes", OK), ("no", PROBLEM)):
        cfg.write_text(f"UsePAM {value}\n")
        finding = check_sshd(str(cfg), run=run)
        assert (finding.level, finding.what) == (level, f"{cfg}:1: UsePAM {value}")
        assert f"\nusepam {value}\n" in said[-1]


def test_sshd_option_locations(tmp_path):
    cfg = _sshd_files(tmp_path, "include-glob")
    assert sshd_option(str(cfg), "UsePAM") == ("yes", f"{tmp_path}/d/10-a.conf:1")
    cfg.write_text("Port 22\nInclude d/20-b.conf\n")  # relative to the ssh directory, as sshd does
    assert sshd_option(str(cfg), "UsePAM", ssh_dir=str(tmp_path)) == ("no", f"{tmp_path}/d/20-b.conf:1")
    assert sshd_option(str(cfg), "UsePAM", ssh_dir=str(tmp_path / "none")) is None
    cfg.write_text("Match User x\nUsePAM yes\n")  # only conditional there: not taken
    assert sshd_option(str(cfg), "UsePAM") is None


def test_finding_render():
    assert Finding("ok", "key", "fine", "w", "f").render() == "ok      key: fine"
    assert Finding("PROBLEM", "key", "bad", "because", "do this").render() == (
        "PROBLEM key: bad\n        why: because\n        fix: do this")


def test_missing_disable_token_creation_is_a_warning(site):
    site.slurm_conf.write_text(f"AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key={site.key_file}\n")
    out = site.cli().stdout
    assert "WARNING slurm.conf" in out and "disable_token_creation" in out
    assert "scontrol token" in out  # why: users could go around the daemon


def test_rs256_signer_checks_its_key_and_the_jwks_kid(site):
    pem = site.dir / "rs256.pem"
    made = subprocess.run([SLURMJWT, "keygen", "--rs256", str(pem)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    jwks = site.dir / "jwks.json"
    jwks.write_text(subprocess.run([SLURMJWT, "jwks", str(pem), "--kid", "login01"],
                                   capture_output=True, text=True, check=True).stdout)
    config = site.dir / "rs256.toml"
    config.write_text(f'signer = "rs256"\nrs256_key_file = "{pem}"\nrs256_kid = "login01"\n')
    site.slurm_conf.write_text(f"AuthAltTypes=auth/jwt\nAuthAltParameters=jwks={jwks},"
                               f"disable_token_creation\n")
    out = site.cli(config=str(config)).stdout
    assert lines_of(out, "ok", "key") and f"{pem} (signer rs256)" in out
    assert lines_of(out, "ok", "slurm.conf") and "holds kid login01" in out
    config.write_text(f'signer = "rs256"\nrs256_key_file = "{pem}"\nrs256_kid = "login02"\n')
    assert_problem(site.cli(config=str(config)), "slurm.conf", "has no key with kid login02",
                   "this node's key is there as kid login01", fix='rs256_kid = "login01"')
    os.chmod(pem, 0o644)
    assert_problem(site.cli(config=str(config)), "key", f"key file {pem}: mode 0644",
                   fix=f"chmod o-rwx {pem}")


# -- Slurm's commands and the token: check_jobs, in-process ----------------------------------

@dataclass
class Node:
    """A login node in tmp_path: slurmjwt-exec built to read DIR/slurmjwtd.toml (also linked as
    DIR/etc/slurmjwtd.toml), `srun` linked to it in DIR/local (/usr/local/bin), Slurm's srun and
    sbatch (22.05.8) in DIR/slurm, a MUNGE key, and /etc/environment's stand-in."""

    exe: Exec
    munge: Path
    environment: Path

    def names(self, text: str) -> str:
        return text.format(dir=self.exe.dir, local=self.exe.dir / "local", slurm=self.exe.slurm,
                           exec=self.exe.program, config=self.exe.config, munge=self.munge,
                           environment=self.environment)

    def jobs(self, config: str = "", shell: str = "{local}:{slurm}", ssh: str = "{local}:{slurm}",
             munge: bool = True, config_path: str = "{config}", slurm_conf: str = "{dir}/slurm.conf",
             run: Runner = run_program) -> list[Finding]:
        """check_jobs as run_checks calls it, with PATH SHELL in the environment and SSH in
        /etc/environment; CONFIG is written to slurmjwt-exec's file."""
        self.exe.config.write_text(config)
        self.environment.write_text(f"PATH={self.names(ssh)}\n")
        cfg, _ = check_config(self.names(config_path))
        return check_jobs(cfg, self.names(config_path), self.names(slurm_conf),
                          environ={"PATH": self.names(shell), "SLURM_JWT": "eyJ.a.b"},
                          etc_environment=str(self.environment),
                          munge_files=(str(self.munge if munge else self.exe.dir / "none"),), run=run)

    def assert_found(self, findings: list[Finding], *expected: tuple[str, str]) -> None:
        """Exactly the findings EXPECTED, in order: (level, words of what), topic jobs; every
        finding but an ok one says why and the fix."""
        got = [(f.level, f.what) for f in findings]
        assert len(got) == len(expected), "\n".join(f.render() for f in findings)
        for (level, what), (want_level, words) in zip(got, expected):
            assert level == want_level and self.names(words) in what, (level, what, words)
        assert {f.topic for f in findings} == {"jobs"}
        assert all(f.why and f.fix for f in findings if f.level in (WARNING, PROBLEM))


@pytest.fixture
def node(tmp_path) -> Node:
    exe = build_exec(tmp_path)
    exe.link("srun")
    exe.script("srun", "exit 0\n")
    exe.script("sbatch", 'echo "slurm 22.05.8"\n')
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "slurmjwtd.toml").symlink_to(exe.config)  # the same file by another name
    munge = tmp_path / "munge.key"
    munge.write_bytes(b"k")
    return Node(exe, munge, tmp_path / "environment")


SHELL_OK = (OK, "this shell: srun is {local}/srun, slurmjwt-exec: the token is removed, then "
            "{slurm}/srun runs")
SSH_OK = (OK, "ssh HOST COMMAND: srun is {local}/srun, slurmjwt-exec: the token is removed")
EXEC_OK = (OK, "{exec} reads slurm_commands_use_token = false from {config}, as slurmjwtd reads {config}: "
           "the token is removed")
SHELL_KEPT = (OK, "this shell: srun is {local}/srun, slurmjwt-exec: the token is kept")
SSH_KEPT = (OK, "ssh HOST COMMAND: srun is {local}/srun, slurmjwt-exec: the token is kept")
EXEC_KEPT = (OK, "{exec} reads slurm_commands_use_token = true from {config}")
VERSION = (OK, "Slurm 22.05.8 ({slurm}/sbatch) does not scrub SLURM_JWT from the environment sbatch "
           "copies into a job: slurmjwt-exec is what keeps the token out of jobs")
FALSE = "slurm_commands_use_token = false: Slurm's commands run without the token: MUNGE authenticates them"
TRUE = "slurm_commands_use_token = true: JWT-only: Slurm's commands use the login's token"
NOT_INSTALLED = "no srun on PATH {dir}/none: Slurm's commands are not installed here"

JOBS_CASES = {
    "munge-node": ({}, [(OK, FALSE + " (MUNGE: {munge})"), SHELL_OK, SSH_OK, EXEC_OK, VERSION]),
    "jwt-only-node": ({"config": "slurm_commands_use_token = true  # no MUNGE here\n", "munge": False},
                      [(OK, TRUE + " (no MUNGE on this host)"), SHELL_KEPT, SSH_KEPT, EXEC_KEPT, VERSION]),
    "jwt-only-with-munge": ({"config": "slurm_commands_use_token = true\n"},
                            [(WARNING, TRUE + ", but MUNGE is on this host ({munge})"), SHELL_KEPT, SSH_KEPT,
                             EXEC_KEPT, VERSION]),
    "no-munge-without-token": ({"munge": False}, [
        (WARNING, FALSE + ", but MUNGE is not on this host (no {dir}/none)"), SHELL_OK, SSH_OK, EXEC_OK,
        VERSION]),
    "shell-path-slurm-first": ({"shell": "{slurm}:{local}"}, [
        (OK, FALSE), (WARNING, "this shell: srun is {slurm}/srun, Slurm's own, not slurmjwt-exec (PATH "
                      "{slurm}:{local})"), SSH_OK, EXEC_OK, VERSION]),
    "ssh-path-slurm-first": ({"ssh": '"{slurm}:/usr/bin:{local}"'}, [
        (OK, FALSE), SHELL_OK, (WARNING, "ssh HOST COMMAND: srun is {slurm}/srun, Slurm's own, not "
                                "slurmjwt-exec (PATH {slurm}:/usr/bin:{local})"), EXEC_OK, VERSION]),
    "jwt-only-without-slurmjwt-exec": (
        {"config": "slurm_commands_use_token = true\n", "munge": False, "shell": "{slurm}", "ssh": "{slurm}"},
        [(OK, TRUE), (OK, "this shell: srun is {slurm}/srun, Slurm's own: it uses the token"),
         (OK, "ssh HOST COMMAND: srun is {slurm}/srun, Slurm's own: it uses the token"), VERSION]),
    "not-installed": ({"shell": "{dir}/none", "ssh": "{dir}/none"},
                      [(OK, FALSE), (SKIP, "this shell: " + NOT_INSTALLED),
                       (SKIP, "ssh HOST COMMAND: " + NOT_INSTALLED)]),
    "only-for-ssh": ({"shell": "{dir}/none"}, [(OK, FALSE), (SKIP, "this shell: " + NOT_INSTALLED), SSH_OK,
                                               EXEC_OK, VERSION]),
    "invalid-configuration": ({"config": "lifetime = \"3600\"\n"},
                              [(SKIP, "slurm_commands_use_token not read: the configuration is invalid"),
                               SHELL_OK, SSH_OK, VERSION]),
    "switch-under-a-table": ({"config": "[group_lifetime]\nslurm_commands_use_token = true\n"},
                             [(SKIP, "slurm_commands_use_token not read"), SHELL_OK, SSH_OK, VERSION]),
    "switch-unread-by-slurmjwt-exec": (
        {"config": '"slurm_commands_use_token" = true\n', "munge": False},
        [(OK, TRUE), SHELL_OK, SSH_OK, (PROBLEM, "{exec} removes the token, but slurmjwtd reads "
                                        "slurm_commands_use_token = true in {config}"), VERSION]),
    "other-file-for-doctor": (
        {"config_path": "{dir}/other.toml", "munge": False},  # doctor reads no file: the defaults
        [(WARNING, FALSE), SHELL_OK, SSH_OK, (WARNING, "{exec} reads {config}, not {dir}/other.toml"),
         (OK, "{exec} reads slurm_commands_use_token = false from {config}, as slurmjwtd reads "
          "{dir}/other.toml"), VERSION]),
    "same-file-through-a-link": ({"config_path": "{dir}/etc/slurmjwtd.toml"}, [
        (OK, FALSE), SHELL_OK, SSH_OK, (OK, "as slurmjwtd reads {dir}/etc/slurmjwtd.toml"), VERSION]),
}


@pytest.mark.parametrize("kwargs, expected", JOBS_CASES.values(), ids=JOBS_CASES)
def test_check_jobs(node, kwargs, expected):
    node.assert_found(node.jobs(**kwargs), *expected)


def test_check_jobs_fixes(node):
    """Each warning and problem names its fix."""
    fixes = {}
    (node.exe.dir / "other.toml").write_text("slurm_commands_use_token = true\n")
    for name, kwargs in [("shell", {"shell": "{slurm}:{local}"}), ("ssh", {"ssh": "{slurm}"}),
                         ("munge", {"config": "slurm_commands_use_token = true\n"}),
                         ("no-munge", {"munge": False}),
                         ("unread", {"config": '"slurm_commands_use_token" = true\n', "munge": False}),
                         ("other-file", {"munge": False, "config_path": "{dir}/other.toml"})]:
        fixes[name] = [f.fix for f in node.jobs(**kwargs) if f.level in (WARNING, PROBLEM)]
    assert fixes["shell"] == [node.names("make install (it links Slurm's commands in /usr/local/bin to "
                                         "slurmjwt-exec), and put /usr/local/bin before {slurm} in this "
                                         "shell's PATH")]
    assert fixes["ssh"] == [node.names("make install (it links Slurm's commands in /usr/local/bin to "
                                       "slurmjwt-exec), and put /usr/local/bin before {slurm} in the PATH "
                                       "set at {environment}:1")]
    assert fixes["munge"] == [node.names("set slurm_commands_use_token = false in {config}")]
    assert fixes["no-munge"] == [node.names("on a JWT-only login node set slurm_commands_use_token = true "
                                            "in {config}; otherwise install munge with the cluster's key")]
    assert fixes["unread"] == [node.names("write `slurm_commands_use_token = true` unquoted on a line of its "
                                          "own among the top-level keys (before any [table]) in {config}: "
                                          "slurmjwt-exec reads only that form")]
    rebuild = node.names("rebuild it to read {dir}/other.toml: make CONFIG_FILE={dir}/other.toml install")
    check = node.names("; or check that file: slurmjwt doctor --config {config}")
    assert fixes["other-file"] == [rebuild + check, rebuild]


@pytest.mark.parametrize("path", ["/usr/local/bin:/usr/bin", "/usr/bin:/usr/local/bin", "/usr/bin"])
def test_srun_fix_names_the_path_order_only_when_wrong(path):
    srun = Srun("/usr/bin/srun", "/usr/bin/srun")
    fix = check_srun_on_path("this shell", path, "this shell's PATH", srun, keep=False).fix
    assert fix.startswith("make install (it links")
    reorder = "put /usr/local/bin before /usr/bin in this shell's PATH" in fix
    assert reorder is not path.startswith("/usr/local")


@pytest.mark.parametrize("packaged, fix", [
    (False, "make install (it links Slurm's commands in /usr/local/bin to slurmjwt-exec)"),
    (True, "/usr/lib/slurmjwt/slurmjwt-exec-links (it links Slurm's commands in /usr/local/bin "
           "to slurmjwt-exec)")])
def test_srun_fix_is_the_packages_helper_when_doctor_is_the_packages(monkeypatch, packaged, fix):
    monkeypatch.setattr(doctor, "PACKAGED", packaged)
    srun = Srun("/usr/bin/srun", "/usr/bin/srun")
    assert check_srun_on_path("x", "/usr/local/bin:/usr/bin", "PATH", srun, keep=False).fix == fix


SBATCH_CASES = {
    "22.05": ('echo "slurm 22.05.8"', OK, "Slurm 22.05.8 ({slurm}/sbatch) does not scrub SLURM_JWT"),
    "debian": ('echo "slurm-wlm 25.11.2"', OK, "Slurm 25.11.2 ({slurm}/sbatch) does not scrub SLURM_JWT"),
    "26.05": ('echo "slurm 26.05.0"', OK, "Slurm 26.05.0 ({slurm}/sbatch) scrubs SLURM_JWT from sbatch's "
              "copy of the environment itself, but only when no --export is given (not with "
              "--export=ALL,...), and its srun refuses auth/jwt: slurmjwt-exec still keeps srun working"),
    "27.11": ('echo "slurm 27.11.1-rc1"', OK, "Slurm 27.11.1 ({slurm}/sbatch) scrubs SLURM_JWT"),
    "garbled": ("echo nonsense", SKIP,
                "Slurm's version not known: {slurm}/sbatch --version answered 'nonsense'"),
    "fails": ('echo "sbatch: error: x" >&2; echo "sbatch: fatal: no configuration" >&2; exit 1', SKIP,
              "Slurm's version not known: {slurm}/sbatch --version exited with 1: sbatch: fatal: no "
              "configuration"),
    "missing": (None, SKIP, "Slurm's version not known: {slurm}/sbatch: No such file or directory"),
}


@pytest.mark.parametrize("script, level, what", SBATCH_CASES.values(), ids=SBATCH_CASES)
@pytest.mark.parametrize("shell", ["{local}:{slurm}", "{slurm}"], ids=["slurmjwt-exec", "slurms-own"])
def test_slurm_version(node, script, level, what, shell):
    """Slurm's sbatch from slurmjwt-exec's slurm= (not the link's directory), or from beside srun."""
    if script is None:
        (node.exe.slurm / "sbatch").unlink()
    else:
        node.exe.script("sbatch", script + "\n")
    last = node.jobs(shell=shell)[-1]
    assert last.level == level and last.what.startswith(node.names(what)), last


def test_what_doctor_runs(node):
    """slurmjwt-exec by its own file name with --mode (as `srun` it would run Slurm's srun), once
    per PATH; then sbatch --version with SLURM_CONF; no shell, a fixed environment, no token."""
    calls: list[tuple[list[str], dict[str, str]]] = []

    def spy(argv: list[str], env) -> str:
        calls.append((argv, dict(env)))
        return run_program(argv, env)
    (node.exe.dir / "slurm.conf").write_text("ClusterName=x\n")
    node.jobs(run=spy)
    mode = [str(node.exe.program), "--mode"]
    assert [argv for argv, _ in calls] == [mode, mode, [f"{node.exe.slurm}/sbatch", "--version"]]
    assert [env for _, env in calls] == [doctor.RUN_ENV, doctor.RUN_ENV,
                                         doctor.RUN_ENV | {"SLURM_CONF": f"{node.exe.dir}/slurm.conf"}]
    assert "SLURM_JWT" not in doctor.RUN_ENV
    calls.clear()
    node.jobs(run=spy, slurm_conf="{dir}/none.conf")  # no such slurm.conf: Slurm's own default
    assert calls[-1][1] == doctor.RUN_ENV


@pytest.mark.parametrize("script, error", [
    ("exit 3", "exited with 3"),
    ('echo "old: unknown option" >&2; exit 2', "exited with 2: old: unknown option"),
    ("echo token=maybe", "--mode answered 'token=maybe'"),
    ("echo token=kept", "--mode answered 'token=kept'"),
], ids=["fails", "says-why", "garbled", "fields-missing"])
def test_slurmjwt_exec_that_does_not_say_what_it_does(node, script, error):
    """An old or broken slurmjwt-exec on PATH: what it does with the token cannot be told."""
    old = node.exe.dir / "old"
    old.mkdir()
    (old / "slurmjwt-exec").write_text(f"#!/bin/sh\n{script}\n")
    (old / "slurmjwt-exec").chmod(0o755)
    node.exe.link("srun", node.exe.dir / "oldbin")
    (node.exe.dir / "oldbin" / "srun").unlink()
    (node.exe.dir / "oldbin" / "srun").symlink_to(old / "slurmjwt-exec")
    shell = node.jobs(shell="{dir}/oldbin:{slurm}")[1]
    assert shell.level == WARNING, shell
    assert shell.what.startswith(node.names("this shell: srun is {dir}/oldbin/srun, slurmjwt-exec "
                                            "({dir}/old/slurmjwt-exec), which does not say what it does: "))
    assert shell.what.endswith(error) and shell.fix == "make -C pam && make install"


ENVIRONMENT_CASES = {
    "absent": (None, None, 0),
    "other-variables": ("LANG=C.UTF-8\nMYPATH=/x\n", None, 0),
    "plain": ("LANG=C\nPATH=/a:/b\n", "/a:/b", 2),
    "double-quoted": ('PATH="/a:/b"\n', "/a:/b", 1),
    "single-quoted": ("PATH='/a'\n", "/a", 1),
    "export": ("export PATH=/a\n", "/a", 1),
    "spaces": ("  PATH=/a  \n", "/a", 1),
    "last-wins": ("#PATH=/x\nPATH=/a\nPATH=/b\n", "/b", 3),
}


@pytest.mark.parametrize("text, path, line", ENVIRONMENT_CASES.values(), ids=ENVIRONMENT_CASES)
def test_sshd_path(tmp_path, text, path, line):
    environment = tmp_path / "environment"
    if text is not None:
        environment.write_text(text)
    found = sshd_path(str(environment))
    if path is None:
        assert found == (doctor.SSHD_PATH, f"sshd's default PATH (PATH= in {environment} overrides it)")
    else:
        assert found == (path, f"the PATH set at {environment}:{line}")


def test_sshd_default_path_is_the_installed_sshds():
    """Debian's OpenSSH gives users this PATH (root gets another): it is compiled into sshd."""
    assert doctor.SSHD_PATH == "/usr/local/bin:/usr/bin:/bin:/usr/games"
    assert doctor.SSHD_PATH.encode() + b"\0" in Path("/usr/sbin/sshd").read_bytes()


def test_run_program(tmp_path, monkeypatch):
    """No shell, exactly the environment given, a time limit, and the reason when it fails."""
    assert run_program(["/bin/echo", "a; echo b", "$HOME"], {}) == "a; echo b $HOME\n"
    assert run_program(["/usr/bin/env"], {"X": "1"}) == "X=1\n"
    with pytest.raises(RunFailed, match=f"^{tmp_path}/none: No such file or directory$"):
        run_program([f"{tmp_path}/none"], {})
    with pytest.raises(RunFailed, match=r"^/bin/sh -c echo x >&2; exit 4 exited with 4: x$"):
        run_program(["/bin/sh", "-c", "echo x >&2; exit 4"], {})
    monkeypatch.setattr(doctor, "RUN_TIMEOUT", 0.3)
    with pytest.raises(RunFailed, match=r"^/bin/sleep gave no answer in 0.3 s$"):
        run_program(["/bin/sleep", "10"], {})


def test_policy_names_unknown_to_nss_are_a_warning(site, capsys, users):
    """Names the policy lists that NSS does not know: one WARNING, topic policy, not a problem."""
    config = site.dir / "policy.toml"
    config.write_text(site.config.read_text() + toml_lines(
        deny_users=["sjt-nosuch-user", users["bob"].pw_name], allow_groups=["sjt-nosuch-group", "root"],
        group_max_lifetime={"sjt-nosuch-g2": 60}))
    status, out = site.python(capsys, config=str(config))
    assert status == 0, out
    text = block(out, "policy")
    assert text.startswith("WARNING policy: NSS knows no such user or group: deny_users: "
                           "sjt-nosuch-user; allow_groups: sjt-nosuch-group; "
                           "group_max_lifetime: sjt-nosuch-g2\n"), text
    assert users["bob"].pw_name not in text and f"correct the name in {config}" in text
    assert out.splitlines()[-1] == "0 problems, 1 warning"
    status, out = site.python(capsys)  # the shared daemon's names no one: ok
    assert len(lines_of(out, "ok", "policy")) == 1, out


def toml_lines(**values: object) -> str:
    from slurmjwtd.config import toml_value
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in values.items())


# -- token files ------------------------------------------------------------------------------
def tokens_config(tmp_path, **settings) -> Config:
    return Config(token_dir=str(tmp_path / "tokens"), revocation_file=str(tmp_path / "revoked.json"),
                  **settings)


def test_tokens_directory_of_the_daemon_with_acls(tmp_path):
    config = tokens_config(tmp_path)
    (tmp_path / "tokens").mkdir(mode=0o755)
    finding = check_tokens(config)
    assert finding.level == OK and "POSIX ACLs supported; 0 users revoked" in finding.what
    (tmp_path / "revoked.json").write_text('[{"user": "x", "uid": 5000, "since": 1, "by_uid": 0, "reason": ""}]')
    assert check_tokens(config).what.endswith("; 1 user revoked")


def test_tokens_directory_not_made_yet_is_a_warning(tmp_path):
    finding = check_tokens(tokens_config(tmp_path))
    assert finding.level == WARNING and finding.what == f"{tmp_path}/tokens does not exist yet"
    assert "RuntimeDirectory=" in finding.fix


@pytest.mark.parametrize("mode, owner", [(0o777, "root"), (0o755, "sjt-alice")])
def test_tokens_directory_others_can_write_is_a_problem(tmp_path, users, mode, owner):
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens").chmod(mode)
    shutil.chown(tmp_path / "tokens", owner)
    finding = check_tokens(tokens_config(tmp_path))
    assert finding.level == PROBLEM and f"mode {mode:04o}" in finding.what and "rm -rf" in finding.fix


def test_tokens_directory_without_acls_is_a_problem(tmp_path):
    """ramfs has no extended attributes: no user could read a token file there."""
    (tmp_path / "tokens").mkdir(mode=0o755)
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(tmp_path / "tokens")], check=True)
    try:
        finding = check_tokens(tokens_config(tmp_path))
    finally:
        subprocess.run(["umount", str(tmp_path / "tokens")], check=True)
    assert finding.level == PROBLEM and "no POSIX ACLs" in finding.what, finding


def test_an_unreadable_revocation_file_is_a_problem(tmp_path):
    (tmp_path / "tokens").mkdir(mode=0o755)
    (tmp_path / "revoked.json").write_text("{")
    finding = check_tokens(tokens_config(tmp_path))
    assert finding.level == PROBLEM and "unreadable" in finding.what and "will not start" in finding.why
