"""slurmjwtd configuration: one TOML file, every key optional, every value checked.

The table below is the single source of every key's type, default and meaning;
docs/configuration.md and `slurmjwtd --print-defaults` are made from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CONFIG = "/etc/slurmjwt/slurmjwtd.toml"
DEFAULT_SOCKET = "/run/slurmjwt/slurmjwtd.sock"


class ConfigError(Exception):
    """A configuration the daemon refuses to start with; the message names the key."""


def _doc(text: str, **checks: Any) -> dict[str, Any]:
    return {"doc": text, **checks}


@dataclass(frozen=True)
class Config:
    socket: str = field(default=DEFAULT_SOCKET, metadata=_doc(
        "Path of the Unix socket clients connect to (mode 0666; the daemon decides).", path=True))
    session_file: str = field(default="/run/slurmjwt/sessions.json", metadata=_doc(
        "Where the registry of live login sessions is kept across restarts (a runtime directory).",
        path=True))
    key_file: str = field(default="/var/lib/slurm/jwt_hs256.key", metadata=_doc(
        "The HS256 key Slurm verifies with (AuthAltParameters=jwt_key=...).", path=True))
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
    slurmrestd_url: str = field(default="http://localhost:6820", metadata=_doc(
        "Where `slurmjwt curl` sends requests ($SLURMRESTD_URL overrides it).", url=True))

    def __post_init__(self) -> None:
        if self.lifetime > self.max_lifetime:
            raise ConfigError(
                f"key 'lifetime': {self.lifetime} exceeds max_lifetime ({self.max_lifetime})")


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value)  # a JSON string, number or list is a TOML one


def example_config() -> str:
    """Every key, commented out at its default, with its meaning: an example file."""
    return "".join(f"# {doc} ({kind})\n#{name} = {toml_value(default)}\n\n"
                   for name, kind, default, doc in describe_keys())


def describe_keys() -> list[tuple[str, str, object, str]]:
    """(name, type, default, doc) for every key, in file order."""
    return [(f.name, f.type if isinstance(f.type, str) else f.type.__name__, f.default,
             f.metadata["doc"]) for f in dataclasses.fields(Config)]


def _check_value(f: dataclasses.Field, value: Any) -> Any:
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
    if meta.get("path") and not os.path.isabs(value):
        raise ConfigError(f"key '{f.name}': {value!r} is not an absolute path")
    if kind is str and (not value or "\0" in value):
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


def load_config(path: str, required: bool = True) -> Config:
    """Read and validate PATH. A missing file is an error only if REQUIRED."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config {path}: no such file") from None
        return Config()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
