"""The per-user token file, for tools that outlive a token: TOKEN_DIR/<uid>/token.

The daemon runs unprivileged and cannot make files owned by users, so the file is
written by whoever already holds the token as that user or as root: the PAM module
at login (which also makes the user's directory, 0700, and removes it when the
user's last session closes) and the CLI at each grant. Either way it is mode 0600
and replaced by rename, so a reader never sees half a token.
"""

from __future__ import annotations

import os

from .atomicfile import write_atomic

TOKEN_DIR = "/run/slurmjwt-tokens"


def token_dir() -> str:
    return os.environ.get("SLURMJWT_TOKEN_DIR") or TOKEN_DIR


def token_path(uid: int) -> str:
    return os.path.join(token_dir(), str(uid), "token")


def write_token_file(token: str, uid: int) -> str | None:
    """Replace UID's token file with TOKEN; None if UID has no directory (no login made
    one). Refuses a directory that is not UID's."""
    directory = os.path.dirname(token_path(uid))
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = os.fstat(dir_fd)
        if st.st_uid != uid:
            raise PermissionError(f"{directory} is not owned by uid {uid}")
        write_atomic("token", token.encode() + b"\n", dir_fd=dir_fd)  # 0600, by rename
    finally:
        os.close(dir_fd)
    return os.path.join(directory, "token")


def read_token_file(uid: int) -> str | None:
    try:
        with open(token_path(uid), encoding="ascii") as fh:
            return fh.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None
