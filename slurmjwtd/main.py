"""`slurmjwtd`: build one validated Config, load the key, hand both to a Server.

Exit status: 0 clean stop or valid configuration, 1 configuration error,
2 usage error, 3 key file error, 4 socket or session file error.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from . import __version__, service, signer as signers
from .audit import AuditLog, JournalAuditLog
from .config import DEFAULT_CONFIG, Config, ConfigError, example_config, load_config
from .hardening import no_dumps
from .keyfile import DAEMON_ACCOUNT, FileCheckError, check_runtime_path, trusted_owners
from .server import Server, StartupError
from .state import DaemonState
from .sessions import SessionRegistry
from .signer import Signer

EXIT_CONFIG, EXIT_KEY, EXIT_RUNTIME = 1, 3, 4


def fail(status: int, message: str) -> None:
    click.echo(f"slurmjwtd: {message}", err=True)
    sys.exit(status)


RUNTIME_FILES = ("socket", "root_socket", "session_file", "token_dir", "revocation_file")


def check_runtime(config: Config) -> None:
    """The directories the sockets and the session file are made in: root's or the daemon's,
    writable by no one else (not even sticky, as /tmp is); FileCheckError if not."""
    owners = trusted_owners(DAEMON_ACCOUNT)
    for key in RUNTIME_FILES:
        if hasattr(config, key):
            check_runtime_path(key.replace("_", " "), getattr(config, key), owners)


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
        click.echo(example_config(), nl=False)
        return
    try:  # before the key is read: no core file, no /proc/PID/mem for others of this uid
        no_dumps()
    except OSError as exc:
        fail(EXIT_RUNTIME, f"cannot keep the key out of core dumps (prctl, RLIMIT_CORE): {exc.strerror}")
    try:
        config = load_config(config_path or DEFAULT_CONFIG, required=config_path is not None)
    except ConfigError as exc:
        fail(EXIT_CONFIG, str(exc))
    try:  # --check-config as root: could the unit's User= read the key?
        signer = signers.load(config, DAEMON_ACCOUNT if check_config and os.geteuid() == 0 else None)
    except FileCheckError as exc:
        fail(EXIT_KEY, str(exc))
    try:
        check_runtime(config)
    except FileCheckError as exc:
        fail(EXIT_RUNTIME, str(exc))
    except OSError as exc:
        fail(EXIT_RUNTIME, f"{exc.filename}: {exc.strerror}")
    if check_config:
        click.echo(f"slurmjwtd: configuration {config_path or DEFAULT_CONFIG} and "
                   f"{signers.source(config)} (signer {signer.name}) are valid")
        return
    journal = service.journal_stream()
    setup_logging(journal)
    state = DaemonState(config, signer, SessionRegistry(config.session_file),
                        audit_log=JournalAuditLog() if journal else AuditLog())
    path = config_path or DEFAULT_CONFIG

    def reload() -> tuple[Config, Signer]:
        no_dumps()  # still so (nothing here resets it); a failure refuses the reload
        fresh = load_config(path, required=config_path is not None)
        return fresh, signers.load(fresh)

    server = Server(state, reload, service.Notifier())
    try:
        server.startup(service.inherited_listeners())
    except (StartupError, ValueError, OSError) as exc:
        fail(EXIT_RUNTIME, str(exc))
    try:
        server.serve()
    finally:
        server.shutdown()


def setup_logging(journal: bool) -> None:
    """The journal when systemd connected stderr to it, else stderr with timestamps."""
    if journal:
        from .pysystemd import systemd_module
        journal = systemd_module("journal")
        handler: logging.Handler = journal.JournalHandler(SYSLOG_IDENTIFIER="slurmjwtd")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s slurmjwtd %(levelname)s %(message)s",
                                               "%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
