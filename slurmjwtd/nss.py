"""NSS lookups that answer None, not KeyError, for a name or number NSS does not know."""

from __future__ import annotations

from typing import Callable, TypeVar

Key = TypeVar("Key")
Entry = TypeVar("Entry")


def nss(lookup: Callable[[Key], Entry], key: Key) -> Entry | None:
    """LOOKUP(KEY), LOOKUP being pwd.getpwnam, pwd.getpwuid, grp.getgrnam or grp.getgrgid;
    None if NSS does not know KEY."""
    try:
        return lookup(key)
    except KeyError:
        return None
