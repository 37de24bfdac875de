"""slurmctld's JWKS file (`AuthAltParameters=jwks=`): the public key of every login node that
signs with rs256, one `kid` per node. `slurmjwt jwks --add/--remove` edits it; doctor reads it.

Pure parts (bytes in, values out; `JwksError`, one line saying where and what, on any flaw):
`parse_set` checks a whole file, `parse_input` what `--add` is given (a node's JWKS as
`slurmjwt jwks` prints it, one JWK, or a PEM public key with a kid), `merge` applies removals
then additions and refuses what would make the set ambiguous; `render` is the file's text.
`update` is the one writer: a lock beside the file, read, merge, write_atomic.

Why so strict: Slurm reads this file only at start, and a flaw stops it there. slurmctld 22.05
and 24.11 (src/plugins/auth/jwt/auth_jwt.c, _init_jwks and _build_jwks_keys) fatal() on JSON
they cannot parse and on an RS256 entry without `kid`, `n` or `e` (24.11: any entry without
`kid`); 22.05 silently skips an entry without `"alg": "RS256"`, so every entry written here
carries it. Two kids for one key would make revoking a node by its kid leave it working under
the other; a private member (`d`, `p`, ...) would publish a node's signing key in a 0644 file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from .atomicfile import write_atomic

MIN_BITS = 2048
MAX_FILE = 1 << 20  # a JWKS of thousands of nodes is well under this
KID = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}\Z")  # host names, thumbprints; nothing a shell or log line would mangle
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
RESTART = ("systemctl restart slurmctld (Slurm 22.05 and 23.02 read jwks= only at start; from "
           "23.11 `scontrol reconfigure` re-executes slurmctld, which reads it again), and "
           "slurmdbd if its AuthAltParameters has jwks=")


class JwksError(ValueError):
    """A JWKS, or a key given to add, that must not be written; the message is one line."""


@dataclass(frozen=True)
class Key:
    """One checked entry: its kid, modulus, exponent and the JSON object as it stands."""
    kid: str
    n: int
    e: int
    entry: dict

    @property
    def bits(self) -> int:
        return self.n.bit_length()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the RFC 7638 thumbprint input, first 16 hex digits: the same key shows
        the same fingerprint whatever its kid."""
        canon = json.dumps({"e": _b64(self.e), "kty": "RSA", "n": _b64(self.n)},
                           separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _number(value: object, name: str, where: str) -> int:
    if not isinstance(value, str) or not value or not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise JwksError(f"{where}: \"{name}\" is not a base64url string")
    try:
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")
    except (binascii.Error, ValueError):
        raise JwksError(f"{where}: \"{name}\" is not a base64url string") from None


def check_key(entry: object, where: str) -> Key:
    """ENTRY as a Key, or JwksError naming WHERE and the first flaw."""
    if not isinstance(entry, dict):
        raise JwksError(f"{where}: not a JSON object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwksError(f"{where}: no \"kid\"")
    if not KID.match(kid):
        raise JwksError(f"{where}: kid {kid[:40]!r} is not 1 to 128 of A-Z a-z 0-9 . _ : @ + = -")
    where = f"{where} (kid {kid})"
    if entry.get("kty") != "RSA":
        raise JwksError(f"{where}: \"kty\" is {entry.get('kty')!r}, not \"RSA\" (Slurm verifies "
                        f"RS256 only)")
    if "alg" in entry and entry["alg"] != "RS256":
        raise JwksError(f"{where}: \"alg\" is {entry['alg']!r}, not \"RS256\"")
    if "use" in entry and entry["use"] != "sig":
        raise JwksError(f"{where}: \"use\" is {entry['use']!r}, not \"sig\"")
    private = [m for m in PRIVATE_MEMBERS if m in entry]
    if private:
        raise JwksError(f"{where}: holds private key material ({', '.join(private)}); give the "
                        f"public key only (what `slurmjwt jwks` prints on the node)")
    n, e = _number(entry.get("n"), "n", where), _number(entry.get("e"), "e", where)
    if n.bit_length() < MIN_BITS:
        raise JwksError(f"{where}: a {n.bit_length()}-bit modulus; at least {MIN_BITS} bits are "
                        f"needed (make a key with: slurmjwt keygen --rs256)")
    if e < 3 or e % 2 == 0:
        raise JwksError(f"{where}: exponent {e} is not an odd number of at least 3")
    return Key(kid, n, e, entry)


def _json(data: bytes, where: str) -> object:
    if len(data) > MAX_FILE:
        raise JwksError(f"{where}: larger than {MAX_FILE} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise JwksError(f"{where}: not UTF-8 text") from None
    except ValueError as exc:
        raise JwksError(f"{where}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _unique(keys: list[Key], where: str) -> list[Key]:
    kids: dict[str, Key] = {}
    material: dict[tuple[int, int], Key] = {}
    for key in keys:
        if key.kid in kids:
            raise JwksError(f"{where}: kid {key.kid} appears twice")
        other = material.get((key.n, key.e))
        if other is not None:
            raise JwksError(f"{where}: kids {other.kid} and {key.kid} are the same key "
                            f"(removing one kid would not revoke it)")
        kids[key.kid], material[(key.n, key.e)] = key, key
    return keys


def parse_set(data: bytes, where: str) -> tuple[dict, list[Key]]:
    """A whole JWKS file's text: its JSON object and its keys, each checked; the kids unique,
    no key under two kids."""
    doc = _json(data, where)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError(f"{where}: not a JWKS (a JSON object with a \"keys\" list)")
    keys = [check_key(entry, f"{where}: key {i + 1}") for i, entry in enumerate(doc["keys"])]
    return doc, _unique(keys, where)


def public_entry(kid: str, n: int, e: int) -> dict:
    """The entry written for a node: what Slurm 22.05 needs (kty, alg, kid, n, e) and use."""
    return {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": _b64(n), "e": _b64(e)}


def parse_input(data: bytes, where: str, kid: str | None = None) -> list[Key]:
    """What --add is given: a JWKS (as `slurmjwt jwks` prints it), one JWK, or a PEM public
    key, which needs KID. Each key is normalised to public_entry (alg and use filled in)."""
    text = data.lstrip()
    if text.startswith(b"-----BEGIN"):
        if b"PRIVATE KEY-----" in text:
            raise JwksError(f"{where}: a private key; never copy a node's private key: run "
                            f"`slurmjwt jwks` on the node and add what it prints")
        if kid is None:
            raise JwksError(f"{where}: a PEM public key needs --kid (the node's rs256_kid)")
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        try:
            public = load_pem_public_key(data)
        except (ValueError, TypeError):
            raise JwksError(f"{where}: not a PEM public key") from None
        if not isinstance(public, RSAPublicKey):
            raise JwksError(f"{where}: not an RSA key (Slurm verifies RS256 only)")
        numbers = public.public_numbers()
        keys = [check_key(public_entry(kid, numbers.n, numbers.e), where)]
    else:
        if kid is not None:
            raise JwksError(f"{where}: JSON names its own kid; --kid is for a PEM public key")
        doc = _json(data, where)
        if isinstance(doc, dict) and "keys" in doc:
            if not isinstance(doc["keys"], list) or not doc["keys"]:
                raise JwksError(f"{where}: a JWKS with no keys")
            entries = doc["keys"]
            keys = [check_key(e, f"{where}: key {i + 1}") for i, e in enumerate(entries)]
        else:
            keys = [check_key(doc, where)]
    return [Key(k.kid, k.n, k.e, public_entry(k.kid, k.n, k.e)) for k in _unique(keys, where)]


@dataclass(frozen=True)
class Change:
    doc: dict  # the new JWKS
    added: list[str]
    removed: list[str]
    unchanged: list[str]  # kids asked for that were already there with the same key

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def merge(doc: dict, keys: list[Key], add: list[Key], remove: list[str], where: str) -> Change:
    """DOC (whose checked KEYS they are) less the kids in REMOVE, plus ADD; refused whole if a
    kid to remove is absent, a kid to add is there with another key, or a key to add is there
    under another kid. A kid already there with the same key is left as it is (config
    management may add the same node twice)."""
    kids = {k.kid: k for k in keys}
    missing = [kid for kid in remove if kid not in kids]
    if missing:
        held = ", ".join(sorted(kids)) or "none"
        raise JwksError(f"{where}: no kid {missing[0]} to remove (it holds: {held}); nothing changed")
    if len(set(remove)) != len(remove):
        raise JwksError(f"{where}: kid {next(k for k in remove if remove.count(k) > 1)} given "
                        f"twice to remove")
    kept = [k for k in keys if k.kid not in remove]
    added, unchanged = [], []
    for key in add:
        same_kid = next((k for k in kept if k.kid == key.kid), None)
        same_key = next((k for k in kept if (k.n, k.e) == (key.n, key.e)), None)
        if same_kid is not None and same_key is same_kid:
            unchanged.append(key.kid)
            continue
        if same_kid is not None:
            raise JwksError(f"{where}: kid {key.kid} is already there with another key; a new key "
                            f"takes a new kid (remove the old one with --remove {key.kid}); "
                            f"nothing changed")
        if same_key is not None:
            raise JwksError(f"{where}: the key of kid {key.kid} is already there as kid "
                            f"{same_key.kid} (one key, one kid: revoking one would not revoke "
                            f"the other); nothing changed")
        kept.append(key)
        added.append(key.kid)
    new = dict(doc)
    new["keys"] = [k.entry for k in kept]
    return Change(new, added, list(remove), unchanged)


def render(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


def lock_path(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.lock")


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """An exclusive flock on `.NAME.lock` beside PATH: two admins (or a config-management run
    and an admin) never lose each other's change."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_set(path: str) -> tuple[dict, list[Key], os.stat_result | None]:
    """PATH's JWKS, checked, and its stat; a missing file is an empty set (stat None).
    OSError for an unreadable one, JwksError for a flawed one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not hang it
    except FileNotFoundError:
        return {"keys": []}, [], None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise JwksError(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_FILE + 1)
    doc, keys = parse_set(data, path)
    return doc, keys, st


def update(path: str, add: list[Key], remove: list[str]) -> Change:
    """Apply ADD and REMOVE to the JWKS file PATH under its lock, replaced atomically. An
    existing file keeps its owner, group and mode (less group and other write: whoever writes
    it can add a key); a new one is root's 0644 (public keys; slurmctld reads it as SlurmUser).
    Nothing is written if nothing changes or anything is refused."""
    path = os.path.realpath(path)
    with locked(path):
        doc, keys, st = read_set(path)
        change = merge(doc, keys, add, remove, path)
        if change.changed:
            if st is None:
                mode, owner = 0o644, (os.geteuid(), os.getegid())
            else:
                mode, owner = stat.S_IMODE(st.st_mode) & ~0o022, (st.st_uid, st.st_gid)
            write_atomic(path, render(change.doc), mode=mode, owner=owner, fsync=True)
    return change
