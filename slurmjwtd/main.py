"""`slurmjwtd`: build one validated Config, load the key, hand both to a Server.

Exit status: 0 clean stop or valid configuration, 1 configuration error,
2 usage error, 3 key file error, 4 socket or session file error.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from . import __version__
from .config import DEFAULT_CONFIG, Config, ConfigError, describe_keys, load_config
from .keyfile import KeyFileError, allowed_owners, read_key
from .server import DaemonState, Server, StartupError
from .sessions import SessionRegistry
from .signer import HS256Signer

EXIT_CONFIG, EXIT_KEY, EXIT_RUNTIME = 1, 3, 4


def fail(status: int, message: str) -> None:
    click.echo(f"slurmjwtd: {message}", err=True)
    sys.exit(status)


def load_signer(config: Config) -> HS256Signer:
    return HS256Signer(read_key(config.key_file, allowed_owners(config.slurm_user)))


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value)  # a JSON string or number is a TOML one


def show_defaults() -> None:
    """Every key, commented out at its default: an example configuration file."""
    for name, kind, default, doc in describe_keys():
        click.echo(f"# {doc} ({kind})\n#{name} = {toml_value(default)}\n")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", default=None, metavar="PATH",
              help=f"Configuration file [default: {DEFAULT_CONFIG}, optional].")
@click.option("--check-config", is_flag=True,
              help="Validate the configuration and the key file, then exit.")
@click.option("--print-defaults", is_flag=True, help="Print every key with its default, then exit.")
@click.version_option(__version__, prog_name="slurmjwtd")
def main(config_path: str | None, check_config: bool, print_defaults: bool) -> None:
    """The slurmjwt token daemon (runs in the foreground)."""
    if print_defaults:
        show_defaults()
        return
    try:
        config = load_config(config_path or DEFAULT_CONFIG, required=config_path is not None)
    except ConfigError as exc:
        fail(EXIT_CONFIG, str(exc))
    try:
        signer = load_signer(config)
    except KeyFileError as exc:
        fail(EXIT_KEY, str(exc))
    if check_config:
        click.echo(f"slurmjwtd: configuration {config_path or DEFAULT_CONFIG} and key file "
                   f"{config.key_file} are valid")
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, datefmt="%Y-%m-%dT%H:%M:%S%z",
                        format="%(asctime)s slurmjwtd %(levelname)s %(message)s")
    server = Server(DaemonState(config, signer, SessionRegistry(config.session_file)))
    try:
        server.startup()
    except (StartupError, OSError) as exc:
        fail(EXIT_RUNTIME, str(exc))
    try:
        server.serve()
    finally:
        server.shutdown()
