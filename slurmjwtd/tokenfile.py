"""The per-user token file, TOKEN_DIR/<uid>/token: a token kept valid while the user is logged in.

The daemon writes it (`TokenFiles`): at login, at each renewal, and removes it once the user's
last session has ended or the user is revoked; the user's directory stays, empty, for the next
login (made and given its ACL once per uid and run). It needs no privilege for that. The base
directory is the daemon's (systemd's RuntimeDirectory=); each user's directory and file are the
daemon's too, 0700 and 0600, and a POSIX ACL entry lets that one user in (r-x) and read the
file (r--): readable by the user and root, writable by no user, no CAP_CHOWN or
CAP_DAC_OVERRIDE. A new token replaces the file by rename, so a reader never sees half a token.

Readers (`read_token_file`) are the user's tools: the CLI's curl and headers, and the shells'
prompt hooks, which find the file through $SLURMJWT_TOKEN_FILE (the PAM module exports it).
"""

from __future__ import annotations

import functools
import os
import stat
import struct

from .atomicfile import ACL_XATTR, write_atomic

TOKEN_DIR = "/run/slurmjwt-tokens"
FILE_VARIABLE = "SLURMJWT_TOKEN_FILE"  # the login's path to its token file (pam_slurmjwt sets it)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# acl(5)'s xattr form (linux/posix_acl_xattr.h): version 2, then (tag, perm, id) entries in tag order
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_NO_ID = 0xFFFFFFFF
R, W, X = 4, 2, 1


@functools.lru_cache(maxsize=1024)  # the same few bytes for every write of a uid's file
def acl(owner: int, uid: int, perm: int) -> bytes:
    """An access ACL: the owner OWNER (perm bits), user UID PERM, nobody else anything."""
    entries = ((_USER_OBJ, owner, _NO_ID), (_USER, perm, uid), (_GROUP_OBJ, 0, _NO_ID),
               (_MASK, perm, _NO_ID), (_OTHER, 0, _NO_ID))
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


def acl_users(value: bytes) -> dict[int, int]:
    """The named-user entries (uid: perm bits) of an ACL xattr value, for checks and tests."""
    return {uid: perm for tag, perm, uid in struct.iter_unpack("<HHI", value[4:]) if tag == _USER}


@functools.lru_cache(maxsize=1024)  # every OPEN's answer names it
def token_path(base: str, uid: int) -> str:
    return os.path.join(base, str(uid), "token")


class TokenFiles:
    """The daemon's writer of BASE/<uid>/token. Every step is relative to a descriptor of
    BASE opened without following links, and checked on the descriptor it opened: a user
    who owns nothing here can change nothing here."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._fd = -1
        self._euid = os.geteuid()
        # uid -> (st_dev, st_ino) of its directory once its mode and ACL were set this run
        self._ready: dict[int, tuple[int, int]] = {}

    def open(self) -> None:
        """Make BASE (0755) if it does not exist; refuse one the daemon does not own or that
        others can write. Raises OSError with a message naming BASE and the fix."""
        try:
            os.mkdir(self.base, 0o755)
        except FileExistsError:
            pass
        self._euid = os.geteuid()
        fd = os.open(self.base, _DIR_FLAGS)
        st = os.fstat(fd)
        if st.st_uid != self._euid or st.st_mode & 0o022:
            os.close(fd)
            raise PermissionError(f"token directory {self.base}: owned by uid {st.st_uid}, mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}; it must be the daemon's (uid "
                                  f"{os.geteuid()}) and not writable by others: systemd's "
                                  f"RuntimeDirectory= makes it so, or chown it")
        self._fd = fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _user_dir(self, uid: int) -> int:
        """A descriptor of BASE/<uid>, made (0700, ACL: UID r-x) if missing; the daemon's own.
        It stays from one login to the next (`remove` takes the file only): a login makes it,
        and sets its mode and ACL, once per uid and run."""
        name = str(uid)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self._fd)
        except FileNotFoundError:  # the user's first login: make it
            try:
                os.mkdir(name, 0o700, dir_fd=self._fd)
            except FileExistsError:
                pass
            fd = os.open(name, _DIR_FLAGS, dir_fd=self._fd)
        try:
            # every time: the directory may have been replaced since (by root, or an older
            # slurmjwt), and a check remembered by uid would then write through someone else's
            st = os.fstat(fd)
            if st.st_uid != self._euid:
                raise PermissionError(f"{self.base}/{name} is owned by uid {st.st_uid}, not "
                                      f"the daemon; remove it (an older slurmjwt made it)")
            if self._ready.get(uid) != (st.st_dev, st.st_ino):  # made now, or new to this run
                os.fchmod(fd, 0o700)
                os.setxattr(fd, ACL_XATTR, acl(R | W | X, uid, R | X))
                # a writer of an earlier run killed mid-write may have left its temporary file;
                # this run's writer leaves none, so the directory is listed once per run
                try:
                    _empty(fd, keep="token")
                except OSError:  # not a writer's file (a directory?): not in the way of one
                    pass
                self._ready[uid] = (st.st_dev, st.st_ino)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write(self, uid: int, token: str) -> None:
        """Replace UID's token file with TOKEN (0600 and ACL: UID r--), by rename."""
        fd = self._user_dir(uid)
        try:
            write_atomic("token", token.encode() + b"\n", dir_fd=fd, mode=0o600,
                         acl=acl(R | W, uid, R))
        finally:
            os.close(fd)

    def _own_dir(self, uid: int) -> int | None:
        """A descriptor of BASE/<uid> if it is a directory of the daemon's, else None."""
        found = self._own_dir_stat(uid)
        return None if found is None else found[0]

    def _own_dir_stat(self, uid: int) -> tuple[int, os.stat_result] | None:
        try:
            fd = os.open(str(uid), _DIR_FLAGS, dir_fd=self._fd)
        except OSError:
            return None
        st = os.fstat(fd)
        if st.st_uid != self._euid:
            os.close(fd)
            return None
        return fd, st

    def read(self, uid: int) -> str | None:
        """UID's current token, None if it has no file (for the renewal schedule at startup)."""
        fd = self._own_dir(uid)
        if fd is None:
            return None
        try:
            file = os.open("token", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                return os.read(file, 8192).decode("ascii", "replace").strip() or None
            finally:
                os.close(file)
        except OSError:
            return None
        finally:
            os.close(fd)

    def remove(self, uid: int) -> None:
        """Remove UID's token file, if its directory is the daemon's; quietly if gone. A
        directory this run made ready (`_user_dir`) stays, empty, for the user's next login;
        any other (a user not logged in this run: the sweep at startup) is emptied and removed."""
        found = self._own_dir_stat(uid)
        if found is None:
            self._ready.pop(uid, None)
            return
        fd, st = found
        try:
            if self._ready.get(uid) == (st.st_dev, st.st_ino):  # holds "token" at most
                try:
                    os.unlink("token", dir_fd=fd)
                except FileNotFoundError:
                    pass
                return
            self._ready.pop(uid, None)
            _empty(fd)  # the token, and a writer's temporary file, if any
        finally:
            os.close(fd)
        try:
            os.rmdir(str(uid), dir_fd=self._fd)
        except OSError:  # gone, or refilled meanwhile: the next removal takes it
            pass

    def users(self) -> list[int]:
        """The uids that have a directory here (for the sweep of files no session keeps)."""
        return [int(n) for n in os.listdir(self._fd) if n.isascii() and n.isdigit()]


def _empty(fd: int, keep: str | None = None) -> None:
    """Unlink every name in the directory FD but KEEP; quietly for names gone meanwhile."""
    for name in os.listdir(fd):
        if name != keep:
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass


def read_token_file(path: str) -> str | None:
    """The token in the file at PATH (a reader's side), None if it cannot be read."""
    try:
        with open(path, encoding="ascii") as fh:
            return fh.readline(8192).strip() or None
    except (OSError, UnicodeDecodeError):
        return None
