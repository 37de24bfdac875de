"""slurmjwtd configuration: one TOML file, every key optional, every value checked.

The table below is the single source of every key's type, default and meaning;
docs/configuration.md and `slurmjwtd --print-defaults` are made from it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .wire import DEFAULT_ROOT_SOCKET, DEFAULT_SOCKET  # noqa: F401  (there for the CLI's fast path)

DEFAULT_CONFIG = "/etc/slurmjwt/slurmjwtd.toml"


class ConfigError(Exception):
    """A configuration the daemon refuses to start with; the message names the key."""


def _doc(text: str, **checks: Any) -> dict[str, Any]:
    return {"doc": text, **checks}


@dataclass(frozen=True)
class Config:
    socket: str = field(default=DEFAULT_SOCKET, metadata=_doc(
        "Path of the Unix socket clients connect to (mode 0666; the daemon decides).", path=True,
        restart=True))
    root_socket: str = field(default=DEFAULT_ROOT_SOCKET, metadata=_doc(
        "Path of the socket only root can connect to (mode 0600, its own backlog): the PAM "
        "module's OPEN and CLOSE, accepted only here, and root's CLI.", path=True, restart=True))
    session_file: str = field(default="/run/slurmjwt/sessions.json", metadata=_doc(
        "Where the registry of live login sessions is kept across restarts (a runtime directory).",
        path=True, restart=True))
    token_dir: str = field(default="/run/slurmjwt-tokens", metadata=_doc(
        "Where each user with a live login session finds a token the daemon keeps valid: "
        "<token_dir>/<uid>/token, renewed before it expires, readable by that user (a POSIX ACL) "
        "and root, removed at the last logout. A runtime directory the daemon owns.",
        path=True, restart=True))
    revocation_file: str = field(default="/var/lib/slurmjwt/revoked.json", metadata=_doc(
        "The users root revoked (slurmjwt revoke), kept across restarts and reboots (a state "
        "directory the daemon owns); on many login nodes, one file on a share they all mount "
        "(next to slurm.conf), watched by each node's daemon.", path=True, restart=True))
    signer: str = field(default="hs256", metadata=_doc(
        "How tokens are signed: hs256 (key_file), rs256 (rs256_key_file, checked by slurmctld's "
        "jwks=) or scontrol (`scontrol token`; no key on this node).",
        choices=("hs256", "rs256", "scontrol")))
    key_file: str = field(default="/var/lib/slurm/jwt_hs256.key", metadata=_doc(
        "The HS256 key Slurm verifies with (AuthAltParameters=jwt_key=...).", path=True))
    rs256_key_file: str = field(default="/etc/slurmjwt/rs256.pem", metadata=_doc(
        "This node's RSA private key (PEM) for signer = \"rs256\" (slurmjwt keygen --rs256).",
        path=True))
    rs256_kid: str = field(default="", metadata=_doc(
        "The key's id in slurmctld's JWKS; empty: this node's hostname.", allow_empty=True))
    scontrol: str = field(default="/usr/bin/scontrol", metadata=_doc(
        "The scontrol that signer = \"scontrol\" runs.", path=True))
    scontrol_timeout: float = field(default=1.5, metadata=_doc(
        "Seconds `scontrol token` may take before the request is refused; keep it below "
        "pam_slurmjwt's timeout.", min=0.1, max=30))
    slurm_user: str = field(default="slurm", metadata=_doc(
        "SlurmUser: besides root and the daemon's own user, the one account that may own the key."))
    lifetime: int = field(default=3600, metadata=_doc(
        "Seconds a token lives when the caller does not ask for a lifetime.", min=1))
    max_lifetime: int = field(default=43200, metadata=_doc(
        "The longest lifetime anyone may ask for, in seconds.", min=1))
    require_session: bool = field(default=True, metadata=_doc(
        "Users other than root get a token only while they have a live login session."))
    min_uid: int = field(default=1000, metadata=_doc(
        "Lowest uid that may get a token; lower uids, root included, are refused.", min=0))
    client_timeout: float = field(default=2.0, metadata=_doc(
        "Seconds a client has to send its whole request before it is dropped.", min=0.01, max=60))
    max_clients_per_uid: int = field(default=32, metadata=_doc(
        "Connections one uid may have open at once; more are refused with `busy`.", min=1))
    fast_path: bool = field(default=True, metadata=_doc(
        "Answer users' own MINT requests in the compiled fast path (slurmjwtd/_fastpath.so, "
        "threads of its own), from what the Python side last decided for that uid; every other "
        "request, and these whenever the fast path cannot answer alone, are the Python loop's. "
        "hs256 only; false: Python answers everything.", restart=True))
    audit_summary_interval: float = field(default=10.0, metadata=_doc(
        "A user's refusals of one code: the first is audited in full, then one line per this "
        "many seconds counts the rest, while they go on. Root's refusals and all grants are "
        "always written in full.", min=0.1, max=3600))
    audit_file: str = field(default="", metadata=_doc(
        "Read by `slurmjwt audit`, not the daemon: the file it reads decisions from by default, "
        "where the daemon's stderr goes when it does not run under systemd (e.g. "
        "/var/log/slurmjwtd.log); empty: the journal.", path=True, allow_empty=True))
    slurm_commands_use_token: bool = field(default=False, metadata=_doc(
        "Read by slurmjwt-exec, through which srun, sbatch and Slurm's other commands run: "
        "false, they run as if SLURM_JWT were unset (MUNGE authenticates them, srun works, no job "
        "carries the token); true, on JWT-only login nodes (no MUNGE key), they authenticate "
        "with the login's token, as Slurm itself would. Keep it among the top-level keys."))
    slurmrestd_url: str = field(default="http://localhost:6820", metadata=_doc(
        "Where `slurmjwt curl` sends requests ($SLURMRESTD_URL overrides it).", url=True))
    # -- site policy (docs/policy.md) --
    allow_users: tuple[str, ...] = field(default=(), metadata=_doc(
        "If this or allow_groups lists anyone, only they get tokens."))
    allow_groups: tuple[str, ...] = field(default=(), metadata=_doc(
        "Groups (primary or supplementary, through NSS) whose members get tokens."))
    deny_users: tuple[str, ...] = field(default=(), metadata=_doc(
        "Users who never get a token; deny wins over allow."))
    deny_groups: tuple[str, ...] = field(default=(), metadata=_doc(
        "Groups whose members never get a token; deny wins over allow."))
    group_lifetime: dict[str, int] = field(default_factory=dict, metadata=_doc(
        "Per-group default lifetime, e.g. { hpc = 7200 }; of a user's groups listed, the shortest "
        "wins.", min=1))
    group_max_lifetime: dict[str, int] = field(default_factory=dict, metadata=_doc(
        "Per-group maximum lifetime; of a user's groups listed, the shortest wins.", min=1))
    rate_limit: int = field(default=60, metadata=_doc(
        "Tokens a user may ask for per rate_window seconds (0: no limit); root's requests, "
        "the logins, are not counted.", min=0))
    rate_window: int = field(default=60, metadata=_doc(
        "The window of rate_limit, in seconds.", min=1))
    strip_realm: bool = field(default=False, metadata=_doc(
        "Slurm user name without a login name's @REALM suffix (alice@EXAMPLE.ORG: alice)."))
    user_map: dict[str, str] = field(default_factory=dict, metadata=_doc(
        "Explicit login name to Slurm user name table; wins over strip_realm."))

    def __post_init__(self) -> None:
        if self.root_socket == self.socket:
            raise ConfigError(f"key 'root_socket': {self.root_socket} is also socket; give it a "
                              f"path of its own, e.g. {DEFAULT_ROOT_SOCKET}")
        if self.lifetime > self.max_lifetime:
            raise ConfigError(
                f"key 'lifetime': {self.lifetime} exceeds max_lifetime ({self.max_lifetime})")
        for group, seconds in self.group_lifetime.items():
            cap = self.group_max_lifetime.get(group, self.max_lifetime)
            if seconds > cap:
                raise ConfigError(f"key 'group_lifetime': {group} = {seconds} exceeds its maximum {cap}")

    @functools.cached_property  # read on every request: computed once per configuration
    def policy_groups(self) -> frozenset[str]:
        """Every group the policy names: the only ones a decision needs to look up."""
        return frozenset((*self.allow_groups, *self.deny_groups, *self.group_lifetime,
                          *self.group_max_lifetime))


RESTART_KEYS = tuple(f.name for f in dataclasses.fields(Config) if f.metadata.get("restart"))
"""Keys a reload cannot change (metadata restart=True): the daemon keeps their old values."""


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # a JSON string, number or list is a TOML one


_KINDS = {"tuple[str, ...]": "list of names", "dict[str, int]": "table of seconds",
          "dict[str, str]": "table of names"}


def example_config() -> str:
    """Every key, commented out at its default, with its meaning: an example file."""
    return "".join(f"# {doc} ({_KINDS.get(kind, kind)})\n#{name} = {toml_value(default)}\n\n"
                   for name, kind, default, doc in describe_keys())


def describe_keys() -> list[tuple[str, str, object, str]]:
    """(name, type, default, doc) for every key, in file order."""
    return [(f.name, str(f.type), f.default_factory() if f.default is dataclasses.MISSING
             else list(f.default) if isinstance(f.default, tuple) else f.default,
             f.metadata["doc"]) for f in dataclasses.fields(Config)]


def _check_names(f: dataclasses.Field, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"key '{f.name}': expected a list of names, like [\"alice\", \"bob\"]")
    return tuple(value)


def _check_table(f: dataclasses.Field, value: Any, kind: type) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"key '{f.name}': expected a table, like {{ name = value }}")
    for name, item in value.items():
        if type(item) is not kind:
            raise ConfigError(f"key '{f.name}': {name} must be {kind.__name__}, "
                              f"not {type(item).__name__}")
        if "min" in f.metadata and item < f.metadata["min"]:
            raise ConfigError(f"key '{f.name}': {name} = {item} is below the minimum "
                              f"{f.metadata['min']}")
        if kind is str and not item:
            raise ConfigError(f"key '{f.name}': {name} maps to an empty name")
    return dict(value)


def _check_value(f: dataclasses.Field, value: Any) -> Any:
    if f.type == "tuple[str, ...]":
        return _check_names(f, value)
    if f.type in ("dict[str, int]", "dict[str, str]"):
        return _check_table(f, value, int if f.type == "dict[str, int]" else str)
    kind = {"str": str, "int": int, "bool": bool, "float": float}[str(f.type)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ConfigError(f"key '{f.name}': expected {kind.__name__}, got {type(value).__name__}")
    meta = f.metadata
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"key '{f.name}': {value} is below the minimum {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"key '{f.name}': {value} is above the maximum {meta['max']}")
    if meta.get("url") and not value.startswith(("http://", "https://")):
        raise ConfigError(f"key '{f.name}': {value!r} is not an http:// or https:// URL")
    if meta.get("path") and not os.path.isabs(value) and (value or not meta.get("allow_empty")):
        raise ConfigError(f"key '{f.name}': {value!r} is not an absolute path")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"key '{f.name}': {value!r} is not one of {', '.join(meta['choices'])}")
    if kind is str and ((not value and not meta.get("allow_empty")) or "\0" in value):
        raise ConfigError(f"key '{f.name}': must be a non-empty string")
    return value


def config_from_dict(data: dict[str, Any]) -> Config:
    known = {f.name: f for f in dataclasses.fields(Config)}
    values = {}
    for name, value in data.items():
        if name not in known:
            raise ConfigError(f"key '{name}': unknown key (known: {', '.join(known)})")
        values[name] = _check_value(known[name], value)
    return Config(**values)


MAX_CONFIG_BYTES = 1024 * 1024


def read_config_bytes(path: str, owners: dict[int, str] | None = None) -> bytes | None:
    """PATH's bytes, None if it does not exist; checked on the open descriptor as the key is
    (keyfile.check_config_file): a regular file that only OWNERS (default: root and this
    process's user, munged's rule) can change, under directories only they can write."""
    from .keyfile import FileCheckError, check_config_file, trusted_owners

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"config {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        check_config_file(path, st, trusted_owners() if owners is None else owners)
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path}: {st.st_size} bytes, larger than any configuration; "
                              f"is it the right file?")
        return os.read(fd, MAX_CONFIG_BYTES + 1)
    except FileCheckError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"config {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def load_config(path: str, required: bool = True, owners: dict[int, str] | None = None) -> Config:
    """Read, check and validate PATH. A missing file is an error only if REQUIRED."""
    data = read_config_bytes(path, owners)
    if data is None:
        if required:
            raise ConfigError(f"config {path}: no such file")
        return Config()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"config {path}: line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; "
                          f"TOML files are UTF-8 text (iconv -t UTF-8)") from None
    try:
        return config_from_dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
