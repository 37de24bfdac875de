"""Files a user could plant or change: the configuration, the key's directories and group, the
directories the runtime files are made in. Each hostile setup is refused with one line naming
the file, the rule it breaks and the fix; each safe one next to it is accepted, so that every
test fails if its check is removed or loosened. Root's `--check-config` also checks that the
unit's User= (slurmjwt) could read the key."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import KEY_GROUP, PYTHON, SLURMJWT, SLURMJWTD, make_key, run_as, sh

from slurmjwtd import doctor
from slurmjwtd.config import Config

DAEMON = "slurmjwt"  # keyfile.DAEMON_ACCOUNT, the unit's User=


@pytest.fixture
def files(scratch) -> Path:
    return scratch


@pytest.fixture
def daemon_account(users):
    """The unit's account, slurmjwt in group slurmjwt, as slurmjwtd.sysusers makes it: made if
    missing and removed afterwards (its group kept, with its gid); one that was there before (the
    package's) is used as it is and left alone. Root's --check-config checks that this account
    can read the key whenever it exists, so a test of a key that --check-config may accept asks
    for it: its outcome then does not depend on whether the host had the account."""
    if pwd_exists(DAEMON):
        yield DAEMON
        return
    gid = grp.getgrnam(KEY_GROUP).gr_gid
    sh("useradd", "-r", "-M", "-g", KEY_GROUP, "-s", "/usr/sbin/nologin", DAEMON)
    yield DAEMON
    subprocess.run(["userdel", DAEMON], capture_output=True)
    try:  # userdel removes a group named as the user
        grp.getgrnam(KEY_GROUP)
    except KeyError:
        sh("groupadd", "-r", "-g", str(gid), KEY_GROUP)


def pwd_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture
def member_group(users):
    """A group listing sjt-bob as a member (not his primary group)."""
    name = "sjt-keyreaders"
    subprocess.run(["groupdel", name], capture_output=True)
    sh("groupadd", "-U", users["bob"].pw_name, name)
    yield name
    subprocess.run(["groupdel", name], capture_output=True)


def mkdir(path: Path, mode: int = 0o755, owner: str = "root", group: str = "root") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, owner, group)
    os.chmod(path, mode)
    return path


def write_config(path: Path, text: str, mode: int = 0o644, owner: str = "root",
                 group: str = "root") -> Path:
    path.write_text(text)
    shutil.chown(path, owner, group)
    os.chmod(path, mode)
    return path


def runtime_lines(d: Path, **override: Path) -> str:
    paths = {"socket": d / "s.sock", "root_socket": d / "r.sock",
             "session_file": d / "sessions.json", "token_dir": d / "tokens",
             "revocation_file": d / "revoked.json"} | override
    return "".join(f'{key} = "{path}"\n' for key, path in paths.items())


def check_config(config: Path, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([SLURMJWTD, "--config", str(config), "--check-config"],
                          capture_output=True, text=True, timeout=timeout)


def assert_refused(result: subprocess.CompletedProcess, status: int, *phrases: str) -> None:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, (phrase, result.stderr)


def safe_key(d: Path) -> Path:
    key = d / "jwt_hs256.key"
    if not key.exists():
        make_key(key)
    return key


# -- the configuration file ------------------------------------------------------------------
HOSTILE = "require_session = false\nmin_uid = 0\n"


def config_mode_666(d, users):
    return write_config(d / "c.toml", HOSTILE, 0o666), "mode 0666 lets others change who gets tokens", "chmod go-w"


def config_mode_664(d, users):
    return write_config(d / "c.toml", HOSTILE, 0o664), "mode 0664 lets its group change", "chmod go-w"


def config_owned_by_user(d, users):
    alice = users["alice"].pw_name
    return write_config(d / "c.toml", HOSTILE, owner=alice), f"owned by {alice}, who could change", "chown root"


def config_dir_owned_by_user(d, users):
    alice = users["alice"].pw_name
    sub = mkdir(d / "alice", owner=alice)
    return (write_config(sub / "c.toml", HOSTILE), f"directory {sub} is owned by {alice}",
            f"chown root {sub}")


def config_dir_group_writable(d, users):
    sub = mkdir(d / "team", 0o775, group="users")
    return (write_config(sub / "c.toml", HOSTILE), f"directory {sub} is writable by its group (mode 0775)",
            f"chmod g-w {sub}")


def config_dir_world_writable(d, users):
    sub = mkdir(d / "open", 0o777)
    return (write_config(sub / "c.toml", HOSTILE), f"directory {sub} is writable by others (mode 0777)",
            f"chmod o-w {sub}")


def config_sticky_dir_of_a_user(d, users):
    alice = users["alice"].pw_name
    sub = mkdir(d / "sticky", 0o1777, owner=alice)
    return write_config(sub / "c.toml", HOSTILE), f"directory {sub} is owned by {alice}", "chown root"


def config_link_in_a_users_dir(d, users):
    """A safe file, named through a link that alice could point elsewhere."""
    alice = users["alice"].pw_name
    real = write_config(d / "real.toml", HOSTILE)
    sub = mkdir(d / "links", owner=alice)
    (sub / "c.toml").symlink_to(real)
    return sub / "c.toml", f"directory {sub} is owned by {alice}", "chown root"


def config_link_to_an_open_dir(d, users):
    sub = mkdir(d / "open", 0o777)
    real = write_config(sub / "real.toml", HOSTILE)
    (d / "c.toml").symlink_to(real)
    return d / "c.toml", f"directory {sub} is writable by others", f"chmod o-w {sub}"


def config_under_a_linked_dir_in_a_users_dir(d, users):
    """/etc/x -> elsewhere: the directory holding the link counts, not only the target's."""
    alice = users["alice"].pw_name
    target = mkdir(d / "target")
    write_config(target / "c.toml", HOSTILE)
    holder = mkdir(d / "holder", owner=alice)
    (holder / "conf").symlink_to(target)
    return holder / "conf" / "c.toml", f"directory {holder} is owned by {alice}", "chown root"


def config_fifo(d, users):
    os.mkfifo(d / "c.toml", 0o644)
    return d / "c.toml", "not a regular file", "name the configuration file itself"


def config_directory(d, users):
    return mkdir(d / "conf.d"), "is a directory", f"{d / 'conf.d'}/slurmjwtd.toml"


def config_not_utf8(d, users):
    path = d / "c.toml"
    path.write_bytes(b"# slurmjwtd\nrate_limit = 10 # caf\xe9\n")
    return path, "line 2: byte 0xe9 is not UTF-8", "UTF-8 text"


CONFIG_CASES = [config_mode_666, config_mode_664, config_owned_by_user, config_dir_owned_by_user,
                config_dir_group_writable, config_dir_world_writable, config_sticky_dir_of_a_user,
                config_link_in_a_users_dir, config_link_to_an_open_dir,
                config_under_a_linked_dir_in_a_users_dir, config_fifo, config_directory,
                config_not_utf8]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda f: f.__name__[7:])
def test_hostile_configuration_is_refused_naming_it(files, users, case):
    config, problem, fix = case(files, users)
    result = check_config(config, timeout=10)  # a FIFO must not block
    assert_refused(result, 1, f"config {config}: ", problem, fix)


def test_hostile_configuration_is_refused_by_doctor(files, users):
    config, problem, fix = config_mode_666(files, users)
    cfg, finding = doctor.check_config(str(config))
    assert cfg is None and finding.level == doctor.PROBLEM
    assert problem in finding.what and finding.fix.startswith(f"chmod go-w {config}, then")


@pytest.mark.parametrize("setup", ["plain", "0600", "link", "linked dir", "sticky root dir"])
def test_safe_configuration_passes(files, users, setup):
    """Next to each refusal: root's file, under root's directories (a sticky /tmp among them),
    links included, passes and is used."""
    text = f'key_file = "{safe_key(files)}"\n{runtime_lines(files)}lifetime = 77\n'
    if setup == "link":
        (files / "c.toml").symlink_to(write_config(files / "real.toml", text))
        config = files / "c.toml"
    elif setup == "linked dir":
        write_config(mkdir(files / "target") / "c.toml", text)
        (files / "conf").symlink_to(files / "target")
        config = files / "conf" / "c.toml"
    elif setup == "sticky root dir":
        config = write_config(mkdir(files / "sticky", 0o1777) / "c.toml", text)
    else:
        config = write_config(files / "c.toml", text, 0o600 if setup == "0600" else 0o644)
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    cfg, finding = doctor.check_config(str(config))
    assert cfg.lifetime == 77 and finding.level == doctor.OK


def test_config_named_as_a_directory_or_missing_component(files):
    """--config DIR, or a path through a file: one line naming it, no errno."""
    through_file = files / "plain" / "c.toml"
    (files / "plain").write_text("")
    result = check_config(through_file)
    assert_refused(result, 1, f"config {through_file}: Not a directory")
    assert "Errno" not in result.stderr


def load_config_as(user: str, config: Path) -> subprocess.CompletedProcess:
    """load_config(CONFIG) run as USER: prints slurmrestd_url, or the error (exit 1)."""
    script = ("import sys\nfrom slurmjwtd.config import ConfigError, load_config\n"
              "try: print(load_config(sys.argv[1]).slurmrestd_url)\n"
              "except ConfigError as e: print(e); sys.exit(1)\n")
    return run_as(user, PYTHON, "-c", script, str(config))


def test_users_cli_trusts_root_and_itself_only(files, users):
    """`slurmjwt curl` reads slurmrestd_url from the configuration: a file another user can
    write would send alice's token to them. alice's CLI accepts root's file and her own, and
    refuses bob's, before any token is sent."""
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    url = "http://127.0.0.1:9/steal"
    for owner in (alice, bob, "root"):
        write_config(files / f"{owner}.toml", f'slurmrestd_url = "{url}"\n', owner=owner)
    refused = run_as(alice, SLURMJWT, "curl", "/x",
                     env={"SLURM_JWT": "a.b.c", "SLURMJWT_CONFIG": str(files / f"{bob}.toml")})
    assert refused.returncode != 0 and f"owned by {bob}" in refused.stderr, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    for owner in (alice, "root"):
        run = load_config_as(alice, files / f"{owner}.toml")
        assert run.returncode == 0 and run.stdout.strip() == url, run.stdout + run.stderr
    run = load_config_as(alice, files / f"{bob}.toml")
    assert run.returncode == 1 and f"owned by {bob}, who could change" in run.stdout


# -- the key: its directories and its group ----------------------------------------------------
def key_config(d: Path, key: Path, extra: str = "") -> Path:
    return write_config(d / "c.toml", f'key_file = "{key}"\n{runtime_lines(d)}{extra}')


def key_dir_group_writable(d, users):
    sub = mkdir(d / "team", 0o775, group="users")
    return (safe_key(sub), f"directory {sub} is writable by its group (mode 0775), who could "
            "replace the key", f"chmod g-w {sub}")


def key_dir_owned_by_user(d, users):
    alice = users["alice"].pw_name
    sub = mkdir(d / "alice", owner=alice)
    return safe_key(sub), f"directory {sub} is owned by {alice}, who could replace the key", f"chown root {sub}"


def key_dir_sticky_not_roots(d, users):
    """Sticky excuses a writable directory only when root owns it (slurm may own the key's)."""
    sub = mkdir(d / "sticky", 0o1777, owner="slurm")
    return safe_key(sub), f"directory {sub} is writable by others (mode 1777)", f"chmod o-w {sub}"


def key_under_a_linked_dir_in_a_users_dir(d, users):
    alice = users["alice"].pw_name
    target = mkdir(d / "target")
    safe_key(target)
    holder = mkdir(d / "holder", owner=alice)
    (holder / "keys").symlink_to(target)
    return holder / "keys" / "jwt_hs256.key", f"directory {holder} is owned by {alice}", "chown root"


def key_group_is_a_users_primary(d, users):
    alice = users["alice"]
    key = d / "k"
    make_key(key, group=grp.getgrgid(alice.pw_gid).gr_name)
    return (key, f"has {alice.pw_name} (uid {alice.pw_uid} >= min_uid 1000) in it: a key's group may "
            "hold only", f"chgrp slurmjwt {key}")


def key_group_lists_a_user(d, users, group="sjt-keyreaders"):
    bob = users["bob"]
    key = d / "k"
    make_key(key, group=group)
    return key, f"its group {group} may read it and has {bob.pw_name} (uid {bob.pw_uid}", f"chgrp slurmjwt {key}"


KEY_CASES = [key_dir_group_writable, key_dir_owned_by_user, key_dir_sticky_not_roots,
             key_under_a_linked_dir_in_a_users_dir, key_group_is_a_users_primary,
             key_group_lists_a_user]


@pytest.mark.parametrize("case", KEY_CASES, ids=lambda f: f.__name__[4:])
def test_hostile_key_setup_is_refused(files, users, member_group, case):
    key, problem, fix = case(files, users)
    result = check_config(key_config(files, key))
    assert_refused(result, 3, f"key file {key}: ", problem, fix)


def test_a_user_in_the_slurmjwt_group_is_named_with_the_fix(files, users):
    bob = users["bob"].pw_name
    sh("gpasswd", "-a", bob, KEY_GROUP)
    try:
        key = safe_key(files)
        assert_refused(check_config(key_config(files, key)), 3, f"its group {KEY_GROUP} may read it",
                       f"has {bob}", f"fix: gpasswd -d {bob} {KEY_GROUP}")
    finally:
        sh("gpasswd", "-d", bob, KEY_GROUP)
    assert check_config(key_config(files, key)).returncode == 0


@pytest.mark.parametrize("group, min_uid, mode, ok", [
    (KEY_GROUP, None, 0o640, True),          # the site guide's: system accounts only
    ("sjt-keyreaders", None, 0o600, True),   # the group may not read it: its members do not matter
    ("sjt-keyreaders", None, 0o640, False),
    ("sjt-keyreaders", 60001, 0o640, True),  # bob's uid is below min_uid: not a user to slurmjwtd
    ("alice", None, 0o640, False),
    ("alice", 60001, 0o640, True),
])
def test_the_key_group_rule_follows_min_uid(files, users, member_group, daemon_account, group,
                                            min_uid, mode, ok):
    """The daemon's account owns the key, so it may read it whatever the group and mode: only
    the group rule decides (root's --check-config also checks the daemon can read the key)."""
    key = files / "k"
    alices = grp.getgrgid(users["alice"].pw_gid).gr_name
    make_key(key, daemon_account, alices if group == "alice" else group, mode)
    extra = f"min_uid = {min_uid}\n" if min_uid else ""
    result = check_config(key_config(files, key, extra))
    assert result.returncode == (0 if ok else 3), result.stderr
    if not ok:
        assert "a key's group may hold only" in result.stderr


# -- the key as the unit's User= reads it ------------------------------------------------------
@pytest.mark.parametrize("owner, group, mode, readable", [
    ("slurm", KEY_GROUP, 0o640, True),   # the site guide's
    ("root", KEY_GROUP, 0o440, True),
    ("slurm", "slurm", 0o600, False),    # what keygen makes before the slurmjwt group exists
    ("slurm", KEY_GROUP, 0o600, False),  # chgrp alone, as the README said, leaves it 0600
    ("root", "root", 0o400, False),
])
def test_check_config_as_root_checks_the_daemon_account_can_read_the_key(
        files, daemon_account, owner, group, mode, readable):
    key = files / "k"
    make_key(key, owner, group, mode)
    config = key_config(files, key)
    result = check_config(config)
    if readable:
        assert result.returncode == 0, result.stderr
    else:
        assert_refused(result, 3, f"key file {key}: slurmjwt, the account slurmjwtd.service runs as, "
                       f"may not read it ({owner}:{group} {mode:04o})",
                       f"fix: chgrp slurmjwt {key} && chmod 0640 {key}")
    finding = doctor.check_key(Config(key_file=str(key)))
    assert finding.level == (doctor.OK if readable else doctor.PROBLEM), finding
    if not readable:
        assert finding.fix == f"chgrp slurmjwt {key} && chmod 0640 {key}"
        assert "may not read it" in finding.what


def test_the_daemon_account_must_reach_the_key(files, daemon_account):
    closed = mkdir(files / "slurm-only", 0o750, owner="slurm", group="slurm")
    key = safe_key(closed)
    assert_refused(check_config(key_config(files, key)), 3,
                   f"may not pass through directory {closed} (slurm:slurm 0750)", f"chmod o+x {closed}")
    os.chmod(closed, 0o755)
    assert check_config(key_config(files, key)).returncode == 0


def test_a_missing_rs256_key_names_keygen_rs256(files):
    pem = files / "rs256.pem"
    config = write_config(files / "c.toml", f'signer = "rs256"\nrs256_key_file = "{pem}"\n'
                          f"{runtime_lines(files)}")
    assert_refused(check_config(config), 3, f"key file {pem}: not found",
                   f"slurmjwt keygen --rs256 {pem}")


# -- where the socket and the session file are made -------------------------------------------
@pytest.mark.parametrize("key", ["socket", "root_socket", "session_file"])
@pytest.mark.parametrize("where", ["sticky", "sticky, not made yet", "group-writable", "a user's"])
def test_runtime_files_only_in_a_directory_of_roots_or_the_daemons(files, users, key, where):
    alice = users["alice"].pw_name
    d = {"sticky": lambda: mkdir(files / "tmp", 0o1777),
         "sticky, not made yet": lambda: mkdir(files / "tmp", 0o1777) / "slurmjwt",
         "group-writable": lambda: mkdir(files / "team", 0o775, group="users"),
         "a user's": lambda: mkdir(files / "alice", 0o755, owner=alice)}[where]()
    path = d / "file"
    config = write_config(files / "c.toml", f'key_file = "{safe_key(files)}"\n'
                          f"{runtime_lines(files, **{key: path})}")
    shown = d if d.exists() else d.parent
    problem = {"sticky": f"directory {shown} is writable by others (mode 1777), who could create or "
                         "replace it there: the directory it is made in must be writable by root or "
                         "the daemon only, sticky or not",
               "group-writable": f"directory {shown} is writable by its group (mode 0775)",
               "a user's": f"directory {shown} is owned by {alice}"}[where.split(",")[0]]
    assert_refused(check_config(config), 4, f"{key.replace('_', ' ')} {path}: ", problem)
    started = subprocess.run([SLURMJWTD, "--config", str(config)], capture_output=True, text=True,
                             timeout=20)
    assert started.returncode == 4 and not path.exists()


def test_runtime_files_in_the_daemons_own_directory_pass(files, daemon_account):
    own = mkdir(files / "run", 0o755, owner=daemon_account, group=KEY_GROUP)
    config = write_config(files / "c.toml", f'key_file = "{safe_key(files)}"\n{runtime_lines(own)}')
    assert check_config(config).returncode == 0
