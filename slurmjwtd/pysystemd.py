"""python-systemd (`systemd.daemon`, `systemd.journal`), imported so that this checkout's own
`systemd/` folder, the unit files, cannot pass for it.

Run with the checkout on sys.path (its root as the current directory, or PYTHONPATH) and
without python-systemd installed, `import systemd` finds that folder and makes a namespace
package of it: the import "succeeds", and the real error, a missing package, only shows as
"cannot import name 'daemon' from 'systemd' (unknown location)". Here it is one line instead.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

UNITS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "systemd")
INSTALL = "apt-get install python3-systemd, or pip install systemd-python"


def shadow(package: ModuleType) -> str | None:
    """The folder that PACKAGE, imported as `systemd`, really is when it is not python-systemd
    but a namespace package (no __init__.py, so no __file__), such as this checkout's units;
    else None. (Installed, python-systemd may well sit at UNITS: beside slurmjwtd/.)"""
    if getattr(package, "__file__", None) is not None:
        return None
    return ([os.path.abspath(p) for p in getattr(package, "__path__", [])] or ["an unknown place"])[0]


def systemd_module(name: str) -> ModuleType:
    """python-systemd's `systemd.NAME`. Exits with one line on stderr if python-systemd is not
    installed, saying so even when a `systemd/` folder on sys.path hides that."""
    try:
        package = importlib.import_module("systemd")
    except ImportError:
        raise SystemExit(f"slurmjwtd: python-systemd is not installed ({INSTALL})") from None
    found = shadow(package)
    if found is not None:
        what = "this checkout's unit files" if found == UNITS else "not python-systemd"
        raise SystemExit(f"slurmjwtd: python-systemd is not installed: `import systemd` found "
                         f"{found} ({what}) ({INSTALL})")
    return importlib.import_module(f"systemd.{name}")
