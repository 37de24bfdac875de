"""Token signers, and `load(config)`, the one place that builds the configured one from the
file `source(config)` names. Each is a `Signer`: `mint(user, lifetime, now, deadline=None)
-> Token`, and says whether minting blocks (the server runs blocking signers off its loop).

- hs256: the shared key. Slurm (libjwt 1.10) accepts exactly the header
  {"alg":"HS256","typ":"JWT"} and reads `exp` and `sun`; `iat` is written as `scontrol
  token` does, `jti` for audit. Built with hmac rather than pyjwt.encode: it is the
  daemon's hot path, 5.5 us against 28 us a token (bench.py's `pieces`); tests verify
  every token with pyjwt and with the real Slurm.
- rs256: a private key of this node, checked by slurmctld against its JWKS by `kid`.
- scontrol: `scontrol token`, run as SlurmUser or root; the key stays on the controller.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .keyfile import FileCheckError, allowed_owners, check_program, pwd_uid, read_key, trusted_owners

if TYPE_CHECKING:
    from .config import Config


@dataclass(frozen=True)
class Token:
    jwt: str
    user: str
    iat: int
    exp: int
    jti: str

    def __repr__(self) -> str:  # never let a token reach a log through repr()
        return f"Token(user={self.user!r}, exp={self.exp}, jti={self.jti!r})"


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def unverified_claims(token: str) -> dict[str, object]:
    """The claims of TOKEN, read without the key (nothing here is verified); ValueError, which
    never quotes the token, if it is no JWT. What jwt.decode(verify_signature=False) does, by
    hand: importing pyjwt costs 130 ms and 13 MiB (bench.py's `pieces`), which `slurmjwt show`
    and a daemon with the scontrol signer would pay for a 6 us job; tests compare the two."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (expected three dot-separated parts)")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError alike
        raise ValueError("not a JWT (its claims do not decode)") from None
    if not isinstance(claims, dict):
        raise ValueError("not a JWT (its claims are not an object)")
    return claims


class SignerError(Exception):
    """The signer could not make a token (the controller is down, slow or refusing)."""


class Signer(Protocol):
    """What the daemon mints with. BLOCKING: mint in a worker thread, DEADLINE
    (time.monotonic()) bounding the wait; a signer that does not wait ignores it."""

    name: str
    blocking: bool

    def mint(self, user: str, lifetime: int, now: int, deadline: float | None = None) -> Token: ...


class HS256Signer:
    name = "hs256"
    blocking = False

    def __init__(self, key: bytes) -> None:
        self._hmac = hmac.new(key, digestmod=hashlib.sha256)
        self._key = key
        self._header = b64url(b'{"alg":"HS256","typ":"JWT"}')

    def __repr__(self) -> str:
        return "HS256Signer(<key hidden>)"

    def fast_path_key(self) -> bytes:
        """The key, for the compiled fast path to sign the same tokens (fastpath.py); nothing
        else reads it."""
        return self._key

    def sign(self, payload_json: bytes) -> str:
        signing_input = self._header + b"." + b64url(payload_json)
        mac = self._hmac.copy()
        mac.update(signing_input)
        return (signing_input + b"." + b64url(mac.digest())).decode()

    def mint(self, user: str, lifetime: int, now: int, deadline: float | None = None) -> Token:
        jti = secrets.token_hex(8)
        exp = now + lifetime
        return Token(self.sign(claims_json(user, now, exp, jti)), user, now, exp, jti)


def claims_json(user: str, iat: int, exp: int, jti: str) -> bytes:
    # a fixed template: 0.8 us against json.dumps's 2.9 us (bench.py's `pieces`); the user
    # name, the one value not made here, still goes through json.dumps for its escaping
    return b'{"iat":%d,"exp":%d,"sun":%s,"jti":"%s"}' % (
        iat, exp, json.dumps(user).encode(), jti.encode())



class RS256Signer:
    """RS256 with a `kid` header, as slurmctld's `jwks=` verification needs."""

    name = "rs256"
    blocking = False  # about a millisecond of CPU per token for RSA-2048

    def __init__(self, pem: bytes, kid: str) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        import jwt  # pyjwt[crypto]: only this signer needs it

        try:
            self._key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not an unencrypted PEM private key ({exc.__class__.__name__})") from None
        if getattr(self._key, "key_size", 0) < 2048:
            raise ValueError("an RSA key of at least 2048 bits is needed")
        self._encode = jwt.encode
        self.kid = kid

    def __repr__(self) -> str:
        return f"RS256Signer(kid={self.kid!r}, <key hidden>)"

    def mint(self, user: str, lifetime: int, now: int, deadline: float | None = None) -> Token:
        jti = secrets.token_hex(8)
        exp = now + lifetime
        claims = {"iat": now, "exp": exp, "sun": user, "jti": jti}
        jwt = self._encode(claims, self._key, algorithm="RS256",
                           headers={"kid": self.kid, "typ": "JWT"})
        return Token(jwt, user, now, exp, jti)


class ScontrolSigner:
    """`scontrol token username=U lifespan=S`: slurmctld mints, no key on this node.
    Runs as SlurmUser or root, in the server's worker threads, bounded by TIMEOUT."""

    name = "scontrol"
    blocking = True

    def __init__(self, scontrol: str, timeout: float) -> None:
        self.scontrol, self.timeout = scontrol, timeout

    @staticmethod
    def _environment() -> dict[str, str]:
        # scontrol must authenticate as the daemon (MUNGE): with SLURM_JWT set it would use that token
        return {k: v for k, v in os.environ.items() if k != "SLURM_JWT"}

    def mint(self, user: str, lifetime: int, now: int, deadline: float | None = None) -> Token:
        """DEADLINE (time.monotonic()) bounds the request's whole wait, its time queued for
        a worker included: a burst on a hung slurmctld is refused in time, not in turn."""
        import subprocess
        import time

        timeout = self.timeout if deadline is None else min(self.timeout, deadline - time.monotonic())
        try:
            if timeout <= 0:  # spent waiting behind other calls to a slow slurmctld
                raise subprocess.TimeoutExpired(self.scontrol, self.timeout)
            done = subprocess.run([self.scontrol, "token", f"username={user}", f"lifespan={lifetime}"],
                                  capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, env=self._environment())
        except subprocess.TimeoutExpired:
            raise SignerError(f"scontrol token did not answer in {self.timeout:g} s "
                              f"(is slurmctld up? scontrol ping)") from None
        except OSError as exc:
            raise SignerError(f"cannot run {self.scontrol}: {exc.strerror}") from None
        token = done.stdout.strip().removeprefix("SLURM_JWT=")
        if done.returncode != 0 or token.count(".") != 2:
            # its last line is a bare "Error fetching token"; the reason is in the error lines
            lines = done.stderr.strip().splitlines()
            errors = [line.removeprefix("scontrol: error: ") for line in lines
                      if line.startswith("scontrol: error: ")]
            reason = (errors or lines or ["no token in its output"])[-1][:200]
            raise SignerError(f"scontrol token failed: {reason}")
        try:
            claims = unverified_claims(token)
        except ValueError as exc:
            raise SignerError(f"scontrol token printed no usable token: {exc}") from None
        return Token(token, user, int(claims.get("iat", now)), int(claims.get("exp", now + lifetime)),
                     str(claims.get("jti", "-")))


def rs256_kid(config: Config) -> str:
    """The rs256 signer's `kid`: rs256_kid, else this host's name."""
    return config.rs256_kid or socket.gethostname()


def source(config: Config) -> str:
    """The file the configured signer is built from, as messages name it."""
    if config.signer == "scontrol":
        return f"program {config.scontrol}"
    return f"key file {config.rs256_key_file if config.signer == 'rs256' else config.key_file}"


def load(config: Config, reader: str | None = None) -> Signer:
    """The configured signer, its file (source()) checked as munged checks its key;
    FileCheckError if unsafe or unusable. Startup, reload, --check-config and doctor all call
    this. READER: an account that must be able to read the key, and so may own it (root
    checking for the unit's User=)."""
    owners = trusted_owners(config.slurm_user, reader) if reader else allowed_owners(config.slurm_user)
    if config.signer == "rs256":
        try:
            return RS256Signer(read_key(config.rs256_key_file, owners, config.min_uid, reader,
                                        keygen="slurmjwt keygen --rs256"), rs256_kid(config))
        except ValueError as exc:
            raise FileCheckError(f"key file {config.rs256_key_file}: {exc}; make one with: "
                               f"slurmjwt keygen --rs256 {config.rs256_key_file}") from None
    if config.signer == "scontrol":
        check_program(config.scontrol)
        if os.geteuid() not in (0, pwd_uid(config.slurm_user)):
            raise FileCheckError(f"signer scontrol: slurmjwtd must run as root or {config.slurm_user} "
                               f"(SlurmUser) to mint for other users; see docs/signers.md")
        return ScontrolSigner(config.scontrol, config.scontrol_timeout)
    return HS256Signer(read_key(config.key_file, owners, config.min_uid, reader))

