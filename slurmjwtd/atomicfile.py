"""One way to replace a file all at once: the session registry, the token files, the
revocation list and keygen's key.

A reader sees the old file or the new one, never part of either, and no temporary file stays
behind, whatever fails.
"""

from __future__ import annotations

import os

ACL_XATTR = "system.posix_acl_access"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_atomic(path: str, data: bytes, *, dir_fd: int | None = None, mode: int = 0o600,
                 owner: tuple[int, int] | None = None, acl: bytes | None = None,
                 fsync: bool = False, replace: bool = True) -> None:
    """Make PATH (relative to DIR_FD if given) hold DATA with MODE, OWNER (uid, gid) and ACL
    (a system.posix_acl_access value, tokenfile.acl; given, it sets the mode's bits and MODE
    is not applied: until it is set the file is 0600 at most).

    DATA goes to `.NAME.tmp-PID` beside it, made new (O_EXCL, never through a link) and
    complete with its final owner and mode (and FSYNC'd, for files that must outlive a power
    loss), then renamed over PATH; or, REPLACE false, linked to PATH, which raises
    FileExistsError if PATH exists and so never overwrites it."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, _CREATE, 0o600, dir_fd=dir_fd)
    except FileExistsError:  # left by a writer of this pid that died (a link is not followed)
        os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, _CREATE, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if owner is not None:
                os.fchown(fd, *owner)
            if acl is None:
                os.fchmod(fd, mode)
            else:  # an access ACL sets the mode's bits too (owner, mask as group, other): no chmod
                os.setxattr(fd, ACL_XATTR, acl)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            os.link(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    if not replace:
        os.unlink(tmp, dir_fd=dir_fd)
