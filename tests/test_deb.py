"""The Debian package: `make deb` builds it (lintian clean), `apt-get install ./slurmjwt_*.deb`
installs it, a login through the package's PAM module gets a token from the package's daemon
on Debian's python3, an upgrade keeps open sessions and a changed configuration, `remove` and
`purge` leave nothing behind but the slurmjwt account (README.Debian), and `make uninstall`
removes what `make install` put.

This machine has no systemd as PID 1: the maintainer scripts start nothing (deb-systemd-invoke
does nothing without /run/systemd/system), so the test runs /usr/sbin/slurmjwtd itself, as the
unit would (as the slurmjwt account, on the package's runtime directories), with a
configuration of its own naming its own key. The tests run in order on one installation;
a leftover package or daemon of a crashed run is removed first.
"""

from __future__ import annotations

import ctypes
import grp
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import jwt
import pam
import pytest

from conftest import make_key, run_as
from packages import UPGRADE_SUFFIX
from slurmjwtd.client import call

REPO = Path(__file__).resolve().parent.parent
MULTIARCH = subprocess.run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"], capture_output=True,
                           text=True).stdout.strip() or "x86_64-linux-gnu"
WORK = Path("/tmp/slurmjwt-test-deb")
PID_FILE = Path("/var/tmp/slurmjwt-test-deb.pid")  # the daemon this test started, if it crashed
ACCOUNT_MARK = Path("/var/tmp/slurmjwt-test-deb-account")  # the account and group before the test
SERVICE = "sjt-deb"
PAM_FILE = Path("/etc/pam.d", SERVICE)
SOCKET = "/run/slurmjwt/slurmjwtd.sock"
ROOT_SOCKET = "/run/slurmjwt/slurmjwtd-root.sock"
SESSIONS = Path("/run/slurmjwt/sessions.json")
TOKENS = Path("/run/slurmjwt-tokens")
LINK_PROBE = Path("/usr/local/bin/sjt-deb-probe")  # a link as slurmjwt-exec-links makes
EXEC = "/usr/lib/slurmjwt/slurmjwt-exec"
APT_ENV = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
# what the package may depend on: Debian's runtime, nothing of the test stack
RUNTIME_DEPENDS = {"python3-click", "python3-cryptography", "python3-jwt", "python3-systemd",
                   "python3:any", "python3", "libc6", "libpam0g", "systemd",
                   "systemd-standalone-sysusers", "systemd-sysusers",
                   "libssl3"}  # the fast path's libcrypto
# the package's own paths that must be gone after purge (besides every file it shipped)
LEFT_BEHIND = ["/etc/slurmjwt", "/usr/lib/slurmjwt", "/var/lib/slurmjwt", "/run/slurmjwt",
               "/run/slurmjwt-tokens", "/usr/share/doc/slurmjwt",
               "/etc/systemd/system/sockets.target.wants/slurmjwtd.socket",
               "/etc/systemd/system/sockets.target.wants/slurmjwtd-root.socket",
               "/etc/systemd/system/multi-user.target.wants/slurmjwtd.service"]


def sh(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
       cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=cwd)


def package_status() -> str:
    """dpkg's status letters for slurmjwt ('ii', 'rc'), '' when dpkg does not know it."""
    result = sh("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "slurmjwt")
    return result.stdout.strip() if result.returncode == 0 else ""


def purge_package() -> None:
    if package_status():
        result = sh("apt-get", "purge", "-y", "slurmjwt", env=APT_ENV)
        assert result.returncode == 0, result.stdout + result.stderr


def stop_leftover_daemon() -> None:
    """The daemon a crashed run of this file started (its PID, and only if it is slurmjwtd)."""
    try:
        pid = int(PID_FILE.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        PID_FILE.unlink(missing_ok=True)
        return
    if b"/usr/sbin/slurmjwtd" in cmdline:
        os.kill(pid, signal.SIGKILL)
    PID_FILE.unlink(missing_ok=True)


def account_state() -> str:
    """'user:group' with the group's gid, each '-' when absent."""
    user = "user" if _exists(pwd.getpwnam, "slurmjwt") else "-"
    group = _exists(grp.getgrnam, "slurmjwt")
    return f"{user}:{group.gr_gid if group else '-'}"


def _exists(lookup, name):
    try:
        return lookup(name)
    except KeyError:
        return None


def restore_account(state: str) -> None:
    """Put the slurmjwt account and group back as they were before the test (the package keeps
    them on purge; other tests expect the machine as they found it)."""
    user, gid = state.split(":")
    if user == "-" and _exists(pwd.getpwnam, "slurmjwt"):
        subprocess.run(["userdel", "slurmjwt"], capture_output=True)  # takes its group too
    if gid == "-":
        if _exists(grp.getgrnam, "slurmjwt"):
            subprocess.run(["groupdel", "slurmjwt"], capture_output=True)
    elif not _exists(grp.getgrnam, "slurmjwt"):
        subprocess.run(["groupadd", "-r", "-g", gid, "slurmjwt"], capture_output=True)


class PackagedDaemon:
    """/usr/sbin/slurmjwtd as the unit runs it: as slurmjwt, with the package's sockets,
    session file and token directory; its own configuration names the test's key."""

    def __init__(self, workdir: Path, key: Path) -> None:
        self.config = workdir / "slurmjwtd.toml"
        self.config.write_text(f'key_file = "{key}"\n')
        self.log = workdir / "daemon.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PackagedDaemon":
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                ["setpriv", "--reuid=slurmjwt", "--regid=slurmjwt", "--init-groups",
                 "/usr/sbin/slurmjwtd", "--config", str(self.config)],
                stdout=log, stderr=log, env={"PATH": "/usr/sbin:/usr/bin:/bin", "LANG": "C.UTF-8"})
        PID_FILE.write_text(str(self.proc.pid))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"slurmjwtd exited: {self.log.read_text()}"
            try:
                if call(SOCKET, "STATUS", timeout=1).ok:
                    return self
            except Exception:
                time.sleep(0.05)
        raise AssertionError(f"slurmjwtd did not answer: {self.log.read_text()}")

    def stop(self) -> int:
        """SIGTERM, as systemctl stop and try-restart send it."""
        if self.proc is None or self.proc.poll() is not None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        PID_FILE.unlink(missing_ok=True)
        return code


@pytest.fixture(scope="module")
def deb(packages, users):
    """Both versions built (tests/packages.py), the machine cleared of a crashed run's package
    and daemon; afterwards the package purged and the account, PAM service and links as they
    were."""
    stop_leftover_daemon()
    purge_package()
    PAM_FILE.unlink(missing_ok=True)
    LINK_PROBE.unlink(missing_ok=True)
    if ACCOUNT_MARK.exists():  # a crashed run's account state
        restore_account(ACCOUNT_MARK.read_text())
    ACCOUNT_MARK.write_text(account_state())
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(mode=0o755)
    os.chmod(WORK, 0o755)

    first, upgrade = packages.first(), packages.upgrade()
    state = {"first": first.result, "version": first.version, "v1": first.path,
             "v2": upgrade.path, "second": upgrade.result, "key": WORK / "jwt_hs256.key"}
    yield state
    daemon = state.get("daemon")
    if daemon is not None:
        daemon.stop()
    stop_leftover_daemon()
    handle = state.get("pam")
    if handle is not None:
        handle.end()
    purge_package()
    PAM_FILE.unlink(missing_ok=True)
    LINK_PROBE.unlink(missing_ok=True)
    restore_account(ACCOUNT_MARK.read_text())
    ACCOUNT_MARK.unlink(missing_ok=True)
    shutil.rmtree(WORK, ignore_errors=True)


def test_make_deb_builds_a_lintian_clean_package(deb):
    result = deb["first"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert deb["v1"].is_file() and deb["second"].returncode == 0, deb["second"].stderr[-3000:]
    # lintian ran (make deb fails on its errors and warnings) and said nothing but overrides
    tags = [line for line in result.stdout.splitlines() if re.match(r"[EWIPX]: ", line)]
    assert tags == [], tags


def test_files_are_where_debian_expects_them(deb):
    listing = sh("dpkg-deb", "-c", str(deb["v1"])).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for path in ["/usr/sbin/slurmjwtd", "/usr/bin/slurmjwt", "/usr/lib/slurmjwt/slurmjwtd/server.py",
                 "/usr/lib/slurmjwt/slurmjwtd/_fastpath.cpython-311-x86_64-linux-gnu.so",  # dh_python3
                 EXEC, "/usr/lib/slurmjwt/slurmjwt-exec-links",
                 f"/usr/lib/{MULTIARCH}/security/pam_slurmjwt.so",
                 "/lib/systemd/system/slurmjwtd.service", "/lib/systemd/system/slurmjwtd.socket",
                 "/lib/systemd/system/slurmjwtd-root.socket", "/usr/lib/sysusers.d/slurmjwt.conf",
                 "/usr/lib/tmpfiles.d/slurmjwt.conf", "/etc/slurmjwt/slurmjwtd.toml",
                 "/etc/profile.d/slurmjwt.sh", "/etc/csh/cshrc.d/slurmjwt.csh",
                 "/usr/share/doc/slurmjwt/README.md", "/usr/share/doc/slurmjwt/README.Debian.gz",
                 "/usr/share/doc/slurmjwt/copyright", "/usr/share/man/man1/slurmjwt.1.gz",
                 "/usr/share/man/man5/slurmjwtd.toml.5.gz", "/usr/share/man/man8/slurmjwtd.8.gz",
                 "/usr/share/man/man8/pam_slurmjwt.8.gz",
                 "/usr/share/bash-completion/completions/slurmjwt",
                 "/usr/share/zsh/vendor-completions/_slurmjwt"]:
        assert path in paths, path
    assert not [p for p in paths if p.startswith("/usr/local")]
    assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc")]
    control = WORK / "control"
    sh("dpkg-deb", "-e", str(deb["v1"]), str(control))
    assert sorted((control / "conffiles").read_text().split()) == [
        "/etc/csh/cshrc.d/slurmjwt.csh", "/etc/profile.d/slurmjwt.sh", "/etc/slurmjwt/slurmjwtd.toml"]
    depends = sh("dpkg-deb", "-f", str(deb["v1"]), "Depends").stdout
    names = {re.sub(r"\s*\(.*\)", "", alt).strip() for dep in depends.split(",") for alt in dep.split("|")}
    assert names <= RUNTIME_DEPENDS, names - RUNTIME_DEPENDS
    unit = Path(WORK / "unit")
    sh("dpkg-deb", "-x", str(deb["v1"]), str(unit))
    service = (unit / "lib/systemd/system/slurmjwtd.service").read_text()
    assert "ExecStart=/usr/sbin/slurmjwtd --config /etc/slurmjwt/slurmjwtd.toml" in service
    assert "/usr/local" not in service + (unit / "lib/systemd/system/slurmjwtd.socket").read_text()
    assert (unit / "usr/share/doc/slurmjwt/README.md").is_file()  # Documentation= names it


def test_maintainer_scripts_enable_the_sockets_and_restart_the_service_after_an_upgrade(deb):
    """What the maintainer scripts ask of systemd, which this machine cannot run."""
    control = WORK / "control"
    postinst = (control / "postinst").read_text()
    prerm = (control / "prerm").read_text()
    postrm = (control / "postrm").read_text()
    assert "systemd-sysusers ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} slurmjwt.conf" in postinst
    assert postinst.index("systemd-sysusers") < postinst.index("systemd-tmpfiles")
    assert "deb-systemd-helper enable 'slurmjwtd.socket'" in postinst
    assert "deb-systemd-helper enable 'slurmjwtd-root.socket'" in postinst
    # the service is not enabled on install (--no-enable: only kept enabled if an admin did)
    assert "if deb-systemd-helper debian-installed 'slurmjwtd.service'; then" in postinst
    assert "deb-systemd-invoke start 'slurmjwtd-root.socket' 'slurmjwtd.socket'" in postinst
    assert "deb-systemd-invoke try-restart 'slurmjwtd.service'" in postinst
    # socket activation starts it: never a start or restart of its own
    assert not re.search(r"deb-systemd-invoke (start|restart) [^\n]*'slurmjwtd\.service'", postinst)
    # nothing stops the daemon before an upgrade; remove stops it and both sockets
    assert not (control / "preinst").exists() or "stop" not in (control / "preinst").read_text()
    assert "deb-systemd-invoke stop slurmjwtd.service slurmjwtd.socket slurmjwtd-root.socket" in prerm
    assert re.search(r'if \[ "\$1" = remove \]; then\n\t# the daemon', prerm)
    assert "deb-systemd-helper purge 'slurmjwtd-root.socket' 'slurmjwtd.socket'" in postrm
    assert "deb-systemd-helper purge 'slurmjwtd.service'" in postrm


def test_install_makes_the_account_and_directories_and_enables_the_sockets(deb):
    result = sh("apt-get", "install", "-y", str(deb["v1"]), env=APT_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert package_status() == "ii"
    account = pwd.getpwnam("slurmjwt")
    assert account.pw_uid < 1000 and account.pw_shell == "/usr/sbin/nologin"
    assert grp.getgrgid(account.pw_gid).gr_name == "slurmjwt"
    for path, mode in [("/run/slurmjwt", 0o755), ("/run/slurmjwt-tokens", 0o755),
                       ("/var/lib/slurmjwt", 0o700)]:
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (account.pw_uid, account.pw_gid, mode), path
    wants = Path("/etc/systemd/system/sockets.target.wants")
    for socket_unit in ("slurmjwtd.socket", "slurmjwtd-root.socket"):
        assert os.readlink(wants / socket_unit) == f"/lib/systemd/system/{socket_unit}"
    assert not Path("/etc/systemd/system/multi-user.target.wants/slurmjwtd.service").exists()
    # py3compile ran: the private package is byte-compiled
    assert list(Path("/usr/lib/slurmjwt/slurmjwtd/__pycache__").glob("server.*.pyc"))


def test_daemon_and_cli_run_on_debian_python_and_packages_only(deb):
    for program in ("/usr/sbin/slurmjwtd", "/usr/bin/slurmjwt"):
        assert Path(program).read_text().startswith("#!/usr/bin/python3 -I\n")
        version = sh(program, "--version", env={"PATH": "/usr/bin:/bin"})
        assert version.returncode == 0 and "0.1.0" in version.stdout, version.stderr
    probe = ("import sys; sys.path.insert(0, '/usr/lib/slurmjwt'); "
             "import slurmjwtd.main, slurmjwtd.cli, slurmjwtd.signer, slurmjwtd.pysystemd, "
             "jwt, click, systemd.daemon, systemd.journal, cryptography.hazmat.primitives.asymmetric.rsa; "
             "print('\\n'.join(f'{n} {m.__file__}' for n, m in sys.modules.items() "
             "if n.split('.')[0] in ('slurmjwtd', 'jwt', 'click', 'systemd', 'cryptography') "
             "and getattr(m, '__file__', None)))")
    result = sh("/usr/bin/python3", "-I", "-c", probe, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        name, path = line.split(" ", 1)
        top = "/usr/lib/slurmjwt/" if name.startswith("slurmjwtd") else "/usr/lib/python3/dist-packages/"
        assert path.startswith(top), line


def test_a_login_through_the_packaged_module_gets_a_token_from_the_packaged_daemon(deb, users):
    make_key(deb["key"])
    deb["daemon"] = PackagedDaemon(WORK, deb["key"]).start()
    # the line README.Debian gives for /etc/pam.d/sshd, required so that a failure shows
    PAM_FILE.write_text("auth required pam_permit.so\naccount required pam_permit.so\n"
                        "session required pam_permit.so\nsession required pam_slurmjwt.so\n")
    alice = users["alice"]
    handle = pam.PamAuthenticator()
    assert handle.authenticate(alice.pw_name, "", service=SERVICE, call_end=False), handle.reason
    handle.pam_set_item(handle.handle, pam.PAM_RHOST, ctypes.c_char_p(b"203.0.113.9"))
    deb["pam"] = handle
    assert handle.open_session() == pam.PAM_SUCCESS
    claims = jwt.decode(handle.getenv("SLURM_JWT"), deb["key"].read_bytes(), algorithms=["HS256"])
    assert claims["sun"] == alice.pw_name
    token_file = handle.getenv("SLURMJWT_TOKEN_FILE")
    assert token_file == f"{TOKENS}/{alice.pw_uid}/token"
    read = run_as(alice.pw_name, "/usr/bin/slurmjwt", "token", "--file")
    assert read.returncode == 0, read.stderr
    refresh = run_as(alice.pw_name, "/usr/bin/slurmjwt", "refresh")  # the login counts
    assert refresh.returncode == 0, refresh.stderr
    assert alice.pw_name in SESSIONS.read_text()  # the registry the unit keeps across restarts


def srun_findings(path: str) -> list[dict]:
    """The packaged doctor's findings on `srun` in this shell, with PATH."""
    result = sh("/usr/bin/slurmjwt", "doctor", "--json", env={"PATH": path, "LANG": "C.UTF-8"})
    return [f for f in json.loads(result.stdout) if f["what"].startswith("this shell: srun")]


def test_exec_links_helper_links_slurm_commands_and_removes_them(deb):
    links = WORK / "links"
    # the package's doctor gives the package's fix, not the source tree's `make install`
    [before] = srun_findings(f"{links}:/usr/bin:/bin")
    assert before["level"] == "WARNING" and before["fix"].startswith(
        "/usr/lib/slurmjwt/slurmjwt-exec-links (it links Slurm's commands"), before
    made = sh("/usr/lib/slurmjwt/slurmjwt-exec-links", str(links))
    assert made.returncode == 0, made.stderr
    assert os.readlink(links / "srun") == EXEC
    [after] = srun_findings(f"{links}:/usr/bin:/bin")
    assert after["level"] == "ok" and f"srun is {links}/srun, slurmjwt-exec" in after["what"], after
    mode = sh(EXEC, "--mode")
    assert mode.stdout.strip() == "token=removed config=/etc/slurmjwt/slurmjwtd.toml slurm=/usr/bin", mode
    refused = sh("/usr/lib/slurmjwt/slurmjwt-exec-links", "/usr/bin")
    assert refused.returncode == 2 and not Path("/usr/bin/srun").is_symlink()
    removed = sh("/usr/lib/slurmjwt/slurmjwt-exec-links", "--remove", str(links))
    assert removed.returncode == 0 and list(links.iterdir()) == []


def test_upgrade_keeps_open_sessions_and_a_changed_configuration(deb, users):
    alice = users["alice"]
    conffile = Path("/etc/slurmjwt/slurmjwtd.toml")
    changed = conffile.read_text() + "default_lifetime = 1800\n"
    conffile.write_text(changed)
    result = sh("apt-get", "install", "-y", str(deb["v2"]), env=APT_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version = sh("dpkg-query", "-W", "-f=${Version}", "slurmjwt").stdout
    assert version == deb["version"] + UPGRADE_SUFFIX
    assert conffile.read_text() == changed
    assert not list(conffile.parent.glob("*.dpkg-*"))
    # the package left the runtime directories alone; systemd's try-restart is SIGTERM and a start
    assert SESSIONS.is_file() and Path(f"{TOKENS}/{alice.pw_uid}/token").is_file()
    assert deb["daemon"].stop() == 0
    deb["daemon"].start()
    refresh = run_as(alice.pw_name, "/usr/bin/slurmjwt", "refresh")
    assert refresh.returncode == 0, refresh.stderr  # the login opened before the upgrade still counts
    assert deb["pam"].close_session() == pam.PAM_SUCCESS
    deb["pam"].end()
    deb["pam"] = None
    refused = run_as(alice.pw_name, "/usr/bin/slurmjwt", "refresh")
    assert refused.returncode != 0  # logged out: no session, no token


def test_remove_keeps_conffiles_and_removes_the_rest(deb):
    assert deb["daemon"].stop() == 0  # systemd's stop in prerm; this machine has none
    deb["daemon"] = None
    LINK_PROBE.symlink_to(EXEC)  # as slurmjwt-exec-links makes them
    result = sh("apt-get", "remove", "-y", "slurmjwt", env=APT_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert package_status() == "rc"
    assert not LINK_PROBE.is_symlink()
    for path in ["/usr/sbin/slurmjwtd", "/usr/bin/slurmjwt", "/usr/lib/slurmjwt",
                 f"/usr/lib/{MULTIARCH}/security/pam_slurmjwt.so", "/lib/systemd/system/slurmjwtd.service",
                 "/run/slurmjwt", "/run/slurmjwt-tokens"]:
        assert not os.path.lexists(path), path
    assert Path("/etc/slurmjwt/slurmjwtd.toml").is_file()  # conffiles stay until purge


def test_purge_leaves_nothing_but_the_account(deb):
    Path("/var/lib/slurmjwt").mkdir(exist_ok=True)
    Path("/var/lib/slurmjwt/revoked.json").write_text("{}\n")  # state the daemon made
    Path("/etc/slurmjwt/rs256.pem").write_text("key\n")  # slurmjwt keygen --rs256
    shipped = set()
    for package in (deb["v1"], deb["v2"]):
        for line in sh("dpkg-deb", "-c", str(package)).stdout.splitlines():
            path = line.split()[5].removeprefix(".").rstrip("/")
            if line.startswith("-") or "slurmjwt" in path:
                shipped.add(path)
    result = sh("apt-get", "purge", "-y", "slurmjwt", env=APT_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert package_status() == ""
    left = [p for p in sorted(shipped | set(LEFT_BEHIND)) if os.path.lexists(p)]
    assert left == []
    helper_state = Path("/var/lib/systemd/deb-systemd-helper-enabled")
    assert not [p for p in helper_state.rglob("*slurmjwtd*")] if helper_state.exists() else True
    assert not list(Path("/var/lib/dpkg/info").glob("slurmjwt.*"))
    # README.Debian: the account and group stay, as munge's and sssd's do
    assert pwd.getpwnam("slurmjwt").pw_name == "slurmjwt" and grp.getgrnam("slurmjwt")


def test_make_uninstall_removes_what_make_install_put(tmp_path):
    root = tmp_path / "root"
    root.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    dirs = [f"PREFIX={root}/usr", f"SYSCONFDIR={root}/etc", f"UNITDIR={root}/units",
            f"SYSUSERSDIR={root}/sysusers.d", f"TMPFILESDIR={root}/tmpfiles.d",
            f"PAMDIR={root}/security", f"WRAPDIR={root}/usr/local/bin"]
    install = sh("make", "-s", "-C", str(REPO), "install", *dirs)
    assert install.returncode == 0, install.stderr
    assert (root / "usr/sbin/slurmjwtd").is_file() and (root / "security/pam_slurmjwt.so").is_file()
    assert os.readlink(root / "usr/local/bin/srun") == f"{root}/usr/lib/slurmjwt/slurmjwt-exec"
    (root / "etc/slurmjwt/site.conf").write_text("the admin's\n")
    uninstall = sh("make", "-s", "-C", str(REPO), "uninstall", *dirs)
    assert uninstall.returncode == 0, uninstall.stderr
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
    assert left == ["etc/slurmjwt/site.conf"]  # only what was not make install's
    # a changed configuration stays, as dpkg keeps a changed conffile
    install = sh("make", "-s", "-C", str(REPO), "install", *dirs)
    conf = root / "etc/slurmjwt/slurmjwtd.toml"
    conf.write_text(conf.read_text() + "default_lifetime = 1800\n")
    uninstall = sh("make", "-s", "-C", str(REPO), "uninstall", *dirs)
    assert uninstall.returncode == 0 and "was changed: kept" in uninstall.stdout
    assert conf.is_file()
