"""slurmjwt-exec installed as `make install` installs it (`make install-exec`, PREFIX /usr/local),
for the tests and the demo, and removed afterwards.

What an installation makes is written to MARK before it is made, so that the removal, or the next
run after a crash, removes exactly that. A file there that is not ours (an admin's own
/usr/local/bin/srun, or slurmjwt installed for real) stops the tests with a message: they never
replace what they did not make.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
EXEC = Path("/usr/local/lib/slurmjwt/slurmjwt-exec")
LINK_DIR = Path("/usr/local/bin")
SLURM_BIN = Path("/usr/bin")
MARK = Path("/var/tmp/slurmjwt-test-exec")


def commands() -> list[str]:
    """The Slurm commands make install links: those of slurmjwt-exec's table that exist."""
    listed = subprocess.run([str(CHECKOUT / "pam" / "slurmjwt-exec"), "--list"], check=True,
                            capture_output=True, text=True).stdout.split()
    return [name for name in listed if (SLURM_BIN / name).exists()]


def _ours(path: Path) -> bool:
    return path.is_symlink() and os.readlink(path) == str(EXEC)


def install() -> list[Path]:
    """Install through the Makefile; the links made."""
    remove()  # a crashed run's
    links = [LINK_DIR / name for name in commands()]
    foreign = [p for p in (EXEC, *links) if p.exists() or p.is_symlink()]
    if foreign:
        raise RuntimeError(f"{foreign[0]} exists and the tests did not make it: they will not "
                           f"replace it (uninstall slurmjwt first, or run the tests elsewhere)")
    MARK.write_text("".join(f"{p}\n" for p in (EXEC, *links)))
    run = subprocess.run(["make", "-s", "-C", str(CHECKOUT), "install-exec"], capture_output=True,
                         text=True, timeout=300)
    if run.returncode != 0:
        remove()
        raise RuntimeError(f"make install-exec failed: {run.stderr.strip()}")
    return links


def remove() -> None:
    """Remove what MARK lists, if it is still ours."""
    try:
        listed = [Path(line) for line in MARK.read_text().split()]
    except FileNotFoundError:
        return
    for path in listed:
        if path == EXEC or _ours(path):
            path.unlink(missing_ok=True)
    for directory in (EXEC.parent,):
        try:
            directory.rmdir()
        except OSError:
            pass
    MARK.unlink()
