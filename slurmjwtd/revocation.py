"""Users root revoked (`slurmjwt revoke`): no grant and no renewal for them until unrevoked.

Kept in one JSON file (config `revocation_file`, a state directory: it outlives restarts and
reboots), replaced atomically at each change, read at startup. A file that exists but cannot
be read stops the daemon from starting: it must not grant what root revoked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .atomicfile import write_atomic


@dataclass(frozen=True)
class Revocation:
    user: str  # the account's name when revoked
    uid: int  # and its uid: another name of that uid (useradd -o) is revoked too
    since: int  # epoch seconds
    by_uid: int
    reason: str


class RevocationError(Exception):
    """The revocation file cannot be read or written; the message names it and the fix."""


class Revocations:
    def __init__(self, path: str) -> None:
        self.path = path
        self._by_uid: dict[int, Revocation] = {}

    def __len__(self) -> int:
        return len(self._by_uid)

    def load(self) -> int:
        try:
            with open(self.path, encoding="utf-8") as fh:
                records = json.load(fh)
            revoked = [Revocation(**r) for r in records]
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, TypeError) as exc:
            raise RevocationError(f"revocation file {self.path}: unreadable ({exc}); fix or "
                                  f"remove it (then revoke again) to start") from None
        self._by_uid = {r.uid: r for r in revoked}
        return len(self._by_uid)

    def _save(self, by_uid: dict[int, Revocation]) -> None:
        data = json.dumps([asdict(r) for r in by_uid.values()], indent=1).encode() + b"\n"
        try:
            write_atomic(self.path, data, mode=0o600, fsync=True)
        except OSError as exc:
            raise RevocationError(f"revocation file {self.path}: {exc.strerror}; nothing "
                                  f"changed") from None
        self._by_uid = by_uid

    def revoke(self, revocation: Revocation) -> None:
        """Add (or replace) REVOCATION, saved before it counts; RevocationError changes nothing."""
        self._save({**self._by_uid, revocation.uid: revocation})

    def unrevoke(self, uid: int) -> Revocation | None:
        """Lift UID's revocation; the one lifted, None if it had none."""
        old = self._by_uid.get(uid)
        if old is not None:
            self._save({k: v for k, v in self._by_uid.items() if k != uid})
        return old

    def of(self, uid: int) -> Revocation | None:
        return self._by_uid.get(uid)

    def names(self) -> list[str]:
        return sorted(r.user for r in self._by_uid.values())
