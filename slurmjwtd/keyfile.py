"""Key file security checks, after munged's path.c: a key is loaded only from a
file that no one but its owner (and a reading group) can touch.

Every check runs on the open file descriptor, so what is checked is what is read.
Each failure names the file, what is wrong and the command that fixes it.
"""

from __future__ import annotations

import os
import pwd
import stat

MIN_KEY_BYTES = 32
MAX_KEY_BYTES = 64 * 1024


class KeyFileError(Exception):
    """An insecure or unusable key file; the message says how to fix it."""


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def allowed_owners(slurm_user: str) -> dict[int, str]:
    """Uids that may own the key: root, SlurmUser and the daemon's own user."""
    owners = {0: "root", os.geteuid(): _user_name(os.geteuid())}
    try:
        owners[pwd.getpwnam(slurm_user).pw_uid] = slurm_user
    except KeyError:
        pass
    return owners


def check_key_stat(path: str, st: os.stat_result, owners: dict[int, str]) -> None:
    """Refuse a key whose type, size, owner or mode is unsafe."""
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"key file {path}: not a regular file; point key_file at the key itself")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in owners:
        names = ", ".join(sorted(set(owners.values())))
        raise KeyFileError(
            f"key file {path}: owned by {_user_name(st.st_uid)}, must be owned by one of {names}; "
            f"fix: chown {owners.get(0, 'root')} {path}")
    if mode & stat.S_IRWXO:
        raise KeyFileError(
            f"key file {path}: mode {mode:04o} gives other users access; fix: chmod o-rwx {path}")
    if mode & stat.S_IWGRP:
        raise KeyFileError(
            f"key file {path}: mode {mode:04o} lets its group write it; fix: chmod g-w {path}")
    if st.st_size < MIN_KEY_BYTES:
        raise KeyFileError(
            f"key file {path}: {st.st_size} bytes, at least {MIN_KEY_BYTES} needed; "
            f"fix: slurmjwt keygen --force {path} (then restart slurmctld)")
    if st.st_size > MAX_KEY_BYTES:
        raise KeyFileError(f"key file {path}: {st.st_size} bytes, larger than any key; "
                           f"is key_file the right file?")


def check_parent_dirs(path: str) -> None:
    """Refuse a key under a directory others could write (sticky directories excepted)."""
    directory = os.path.dirname(os.path.realpath(path))
    while True:
        st = os.stat(directory)
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            raise KeyFileError(
                f"key file {path}: directory {directory} is writable by others, who could replace "
                f"the key; fix: chmod o-w {directory}")
        parent = os.path.dirname(directory)
        if parent == directory:
            return
        directory = parent


def read_key(path: str, owners: dict[int, str]) -> bytes:
    """Open PATH without following a symlink, check it, and return its raw bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path}: not found; create it with: slurmjwt keygen {path}") from None
    except PermissionError:
        me = _user_name(os.geteuid())
        raise KeyFileError(
            f"key file {path}: {me} may not read it; fix: chgrp slurmjwt {path} && chmod 0640 {path} "
            f"(with {me} in group slurmjwt)") from None
    except OSError as exc:
        if os.path.islink(path):
            raise KeyFileError(
                f"key file {path}: is a symbolic link; set key_file to the real file "
                f"($(readlink -f {path}))") from None
        raise KeyFileError(f"key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        check_key_stat(path, st, owners)
        check_parent_dirs(path)
        key = os.read(fd, MAX_KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != st.st_size:
        raise KeyFileError(f"key file {path}: changed while being read; try again")
    return key


def pwd_uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def check_program(path: str) -> None:
    """A program the daemon runs on others' behalf: root's, writable by no one else."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeyFileError(f"program {path}: {exc.strerror}; apt-get install slurm-client") from None
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IXUSR:
        raise KeyFileError(f"program {path}: not an executable file")
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KeyFileError(f"program {path}: must be root's and writable by no one else; "
                           f"fix: chown root {path} && chmod go-w {path}")
    check_parent_dirs(path)
