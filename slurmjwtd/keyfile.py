"""File security checks, after munged's path.c: a key is loaded only from a file that no one
but its owner (and a reading group of system accounts) can touch, the configuration only from a
file only root can change, and the runtime files only into a directory no one else can write.

Every check of a file runs on its open file descriptor, so what is checked is what is read.
Each failure names the file, what is wrong, the rule it breaks and the command that fixes it.

The rules for directories (munged's): every directory above the file, through any symbolic
link on the way (the link's directory and its target's), is owned by a trusted account and is
writable by no one else unless it is sticky and root's, as /tmp is. The directory a runtime
file (socket, session file) is made in must not be writable by anyone else at all, sticky or
not: there a user could create the entry first.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat

from .nss import nss

MIN_KEY_BYTES = 32
MAX_KEY_BYTES = 64 * 1024
DAEMON_ACCOUNT = "slurmjwt"  # the unit's User=: reads the key through its group
DIR_RULE = "every directory above it must be writable by its owner only, unless sticky and root's"
RUNTIME_RULE = "the directory it is made in must be writable by root or the daemon only, sticky or not"


class FileCheckError(Exception):
    """A file or directory the daemon would trust fails its check (the key, the configuration,
    a program it runs, where its runtime files go), or the daemon's account may not use it;
    the message names the file and says how to fix it."""


KeyFileError = FileCheckError  # its first name, when the key was all it checked


def _user_name(uid: int) -> str:
    return getattr(nss(pwd.getpwuid, uid), "pw_name", str(uid))


def _group_name(gid: int) -> str:
    return getattr(nss(grp.getgrgid, gid), "gr_name", str(gid))


def allowed_owners(slurm_user: str) -> dict[int, str]:
    """Uids that may own the key: root, SlurmUser and the daemon's own user."""
    return trusted_owners(slurm_user)


def trusted_owners(*names: str) -> dict[int, str]:
    """Root, this process's user and those of NAMES that exist: who may own a file or directory
    this process trusts (munged's rule: root or the process's own user)."""
    owners = {0: "root", os.geteuid(): _user_name(os.geteuid())}
    for name in names:
        uid = pwd_uid(name)
        if uid is not None:
            owners[uid] = name
    return owners


def _names(owners: dict[int, str]) -> str:
    return " or ".join(sorted(set(owners.values())))


def check_key_stat(path: str, st: os.stat_result, owners: dict[int, str],
                   keygen: str = "slurmjwt keygen") -> None:
    """Refuse a key whose type, size, owner or mode is unsafe."""
    if not stat.S_ISREG(st.st_mode):
        raise FileCheckError(f"key file {path}: not a regular file; point key_file at the key itself")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in owners:
        names = ", ".join(sorted(set(owners.values())))
        raise FileCheckError(
            f"key file {path}: owned by {_user_name(st.st_uid)}, must be owned by one of {names}; "
            f"fix: chown {owners.get(0, 'root')} {path}")
    if mode & stat.S_IRWXO:
        raise FileCheckError(
            f"key file {path}: mode {mode:04o} gives other users access; fix: chmod o-rwx {path}")
    if mode & stat.S_IWGRP:
        raise FileCheckError(
            f"key file {path}: mode {mode:04o} lets its group write it; fix: chmod g-w {path}")
    if st.st_size < MIN_KEY_BYTES:
        raise FileCheckError(
            f"key file {path}: {st.st_size} bytes, at least {MIN_KEY_BYTES} needed; "
            f"fix: {keygen} --force {path} (then restart slurmctld)")
    if st.st_size > MAX_KEY_BYTES:
        raise FileCheckError(f"key file {path}: {st.st_size} bytes, larger than any key; "
                           f"is key_file the right file?")


def check_key_group(path: str, st: os.stat_result, owners: dict[int, str], min_uid: int) -> None:
    """A key its group may read: that group may hold only OWNERS (root, SlurmUser, the daemon)
    and system accounts, uid below MIN_UID; members are those it lists and the accounts whose
    primary group it is (as far as NSS enumerates them)."""
    if not st.st_mode & stat.S_IRGRP:
        return
    listed = getattr(nss(grp.getgrgid, st.st_gid), "gr_mem", [])
    members = {name: pwd_uid(name) for name in listed}
    members |= {p.pw_name: p.pw_uid for p in pwd.getpwall() if p.pw_gid == st.st_gid}
    for name, uid in sorted(members.items()):
        if uid is None or uid < min_uid or uid in owners:
            continue
        group = _group_name(st.st_gid)
        fix = (f"gpasswd -d {name} {group}" if name in listed and group == DAEMON_ACCOUNT else
               f"chgrp {DAEMON_ACCOUNT} {path}" if group != DAEMON_ACCOUNT else
               f"usermod -g GROUP {name}")
        raise FileCheckError(
            f"key file {path}: its group {group} may read it and has {name} (uid {uid} >= min_uid "
            f"{min_uid}) in it: a key's group may hold only {_names(owners)} and system accounts; "
            f"fix: {fix}")


def directories_above(path: str) -> list[str]:
    """Every directory that holds PATH or a symbolic link on the way to it, nearest first: the
    real directories of PATH's ancestors, and every directory above each of them."""
    found: dict[str, None] = {}
    lexical = os.path.abspath(path)
    prefix = lexical
    while True:
        real = os.path.realpath(prefix)
        if prefix != lexical:
            found.setdefault(real)
        while (up := os.path.dirname(real)) != real:
            found.setdefault(up)
            real = up
        if (up := os.path.dirname(prefix)) == prefix:
            return list(found)
        prefix = up


def check_directory(what: str, directory: str, st: os.stat_result, owners: dict[int, str],
                    thing: str, sticky_ok: bool = True) -> None:
    """munged's rule for one directory above WHAT (a message prefix naming the file)."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in owners:
        raise FileCheckError(
            f"{what}: directory {directory} is owned by {_user_name(st.st_uid)}, who could replace "
            f"{thing}: every directory above it must be owned by {_names(owners)}; "
            f"fix: chown root {directory}")
    writers = mode & (stat.S_IWGRP | stat.S_IWOTH)
    if not writers or (sticky_ok and mode & stat.S_ISVTX and st.st_uid == 0):
        return
    who, bit = ("others", "o") if mode & stat.S_IWOTH else ("its group", "g")
    if sticky_ok:
        raise FileCheckError(
            f"{what}: directory {directory} is writable by {who} (mode {mode:04o}), who could "
            f"replace {thing}: {DIR_RULE}; fix: chmod {bit}-w {directory}")
    raise FileCheckError(
        f"{what}: directory {directory} is writable by {who} (mode {mode:04o}), who could create "
        f"or replace {thing} there: {RUNTIME_RULE}; fix: use a directory of the daemon's own, "
        f"such as /run/slurmjwt")


def check_parent_dirs(path: str, owners: dict[int, str] | None = None, what: str | None = None,
                      thing: str = "the key") -> None:
    """Refuse a file under a directory someone other than OWNERS could write (sticky root
    directories excepted) or owned by someone else."""
    owners = owners or {0: "root"}
    for directory in directories_above(path):
        check_directory(what or f"key file {path}", directory, os.stat(directory), owners, thing)


def check_readable_by(path: str, st: os.stat_result, account: str) -> None:
    """Whether ACCOUNT (the unit's User=), if it exists, may read the key by owner, group and
    mode, and pass through every directory above it: root checks for the daemon."""
    pw = nss(pwd.getpwnam, account)
    if pw is None or pw.pw_uid == 0:
        return
    groups = set(os.getgrouplist(account, pw.pw_gid))

    def allows(st: os.stat_result, bit: int) -> bool:  # the kernel's owner, group, other classes
        shift = 6 if st.st_uid == pw.pw_uid else 3 if st.st_gid in groups else 0
        return bool(st.st_mode >> shift & bit)

    owner = f"{_user_name(st.st_uid)}:{_group_name(st.st_gid)} {stat.S_IMODE(st.st_mode):04o}"
    if not allows(st, stat.S_IROTH):
        raise FileCheckError(
            f"key file {path}: {account}, the account slurmjwtd.service runs as, may not read it "
            f"({owner}); fix: chgrp {DAEMON_ACCOUNT} {path} && chmod 0640 {path}")
    for directory in directories_above(path):
        dst = os.stat(directory)
        if not allows(dst, stat.S_IXOTH):
            raise FileCheckError(
                f"key file {path}: {account}, the account slurmjwtd.service runs as, may not pass "
                f"through directory {directory} ({_user_name(dst.st_uid)}:"
                f"{_group_name(dst.st_gid)} {stat.S_IMODE(dst.st_mode):04o}); "
                f"fix: chmod o+x {directory}")


def read_key(path: str, owners: dict[int, str], min_uid: int = 1000, reader: str | None = None,
             keygen: str = "slurmjwt keygen") -> bytes:
    """Open PATH without following a symlink, check it, and return its raw bytes. MIN_UID: the
    lowest uid of a user (none may be in the key's group); READER: an account that must be able
    to read it (root checking for the daemon); KEYGEN: the command that makes such a key."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileCheckError(f"key file {path}: not found; create it with: {keygen} {path}") from None
    except PermissionError:
        me = _user_name(os.geteuid())
        raise FileCheckError(
            f"key file {path}: {me} may not read it; fix: chgrp slurmjwt {path} && chmod 0640 {path} "
            f"(with {me} in group slurmjwt)") from None
    except OSError as exc:
        if os.path.islink(path):
            raise FileCheckError(
                f"key file {path}: is a symbolic link; set key_file to the real file "
                f"($(readlink -f {path}))") from None
        raise FileCheckError(f"key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        check_key_stat(path, st, owners, keygen)
        check_parent_dirs(path, owners)
        check_key_group(path, st, owners, min_uid)
        if reader:
            check_readable_by(path, st, reader)
        key = os.read(fd, MAX_KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != st.st_size:
        raise FileCheckError(f"key file {path}: changed while being read; try again")
    return key


def check_config_file(path: str, st: os.stat_result, owners: dict[int, str]) -> None:
    """The configuration decides who gets tokens: a regular file that only OWNERS can change,
    under directories only they can write (munged's rule)."""
    what = f"config {path}"
    if stat.S_ISDIR(st.st_mode):
        raise FileCheckError(f"{what}: is a directory; name the configuration file itself, such as "
                           f"{os.path.join(path, 'slurmjwtd.toml')}")
    if not stat.S_ISREG(st.st_mode):
        raise FileCheckError(f"{what}: not a regular file; name the configuration file itself")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in owners:
        raise FileCheckError(
            f"{what}: owned by {_user_name(st.st_uid)}, who could change who gets tokens: it must "
            f"be owned by {_names(owners)}; fix: chown root {path}")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "others" if mode & stat.S_IWOTH else "its group"
        raise FileCheckError(
            f"{what}: mode {mode:04o} lets {who} change who gets tokens: only its owner may write "
            f"it; fix: chmod go-w {path}")
    check_parent_dirs(path, owners, what, "the configuration")


def check_runtime_path(what: str, path: str, owners: dict[int, str]) -> None:
    """Where the daemon makes a runtime file (socket, session file): the directory it is made in
    (or, not made yet, the nearest one there is) is writable by OWNERS only, sticky or not;
    every directory above it follows munged's rule."""
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    check_directory(f"{what} {path}", directory, os.stat(directory), owners, "it", sticky_ok=False)
    check_parent_dirs(directory, owners, f"{what} {path}", "it")


def pwd_uid(name: str) -> int | None:
    return getattr(nss(pwd.getpwnam, name), "pw_uid", None)


def check_program(path: str) -> None:
    """A program the daemon runs on others' behalf: root's, writable by no one else."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FileCheckError(f"program {path}: {exc.strerror}; apt-get install slurm-client") from None
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IXUSR:
        raise FileCheckError(f"program {path}: not an executable file")
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise FileCheckError(f"program {path}: must be root's and writable by no one else; "
                           f"fix: chown root {path} && chmod go-w {path}")
    check_parent_dirs(path, {0: "root"}, f"program {path}", "the program")
