"""The Debian packages the tests install, each built once per run on first use (about 12 s):

- `first()`: `make deb` of the checkout, lintian on (the package test_deb.py installs on this
  machine, and test_pid1.py under a real systemd);
- `upgrade()`: the same tree with one more changelog entry (VERSION + UPGRADE_SUFFIX), lintian
  off: what `apt-get install` of a newer package does.

Built under WORK (removed at the start, for a crashed run's leftovers, and at the end); `make
deb` also copies the first into the checkout, removed at the end too.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = Path("/var/tmp/slurmjwt-test-debs")
UPGRADE_SUFFIX = "+debtest1"
ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()


@dataclass(frozen=True)
class Build:
    result: subprocess.CompletedProcess  # make deb's: its stdout holds lintian's report
    path: Path  # the .deb
    version: str


def _sh(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=600, cwd=cwd)


class Packages:
    def __init__(self, work: Path = WORK) -> None:
        self.work = work
        self._built: dict[str, Build] = {}
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o755, parents=True)

    def first(self) -> Build:
        if "first" not in self._built:
            self._built["first"] = self._build(REPO, lintian=True, name="first")
        return self._built["first"]

    def upgrade(self) -> Build:
        if "upgrade" not in self._built:
            tree = self.work / "slurmjwt"
            shutil.rmtree(tree, ignore_errors=True)
            shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(
                ".git", "build", "*.deb", "__pycache__", ".pytest_cache"))
            changelog = tree / "debian" / "changelog"
            version = self._version(REPO)
            changelog.write_text(
                f"slurmjwt ({version}{UPGRADE_SUFFIX}) unstable; urgency=medium\n\n"
                "  * Test upgrade.\n\n"
                f" -- slurmjwt tests <root@localhost>  {_sh('date', '-uR').stdout.strip()}\n\n"
                + changelog.read_text())
            self._built["upgrade"] = self._build(tree, lintian=False, name="upgrade")
        return self._built["upgrade"]

    def _build(self, tree: Path, lintian: bool, name: str) -> Build:
        result = _sh("make", "-s", "-C", str(tree), "deb", f"DEB_BUILDDIR={self.work / name}",
                     *([] if lintian else ["LINTIAN="]))
        version = self._version(tree)
        return Build(result, tree / f"slurmjwt_{version}_{ARCH}.deb", version)

    @staticmethod
    def _version(tree: Path) -> str:
        return _sh("dpkg-parsechangelog", "-S", "Version", cwd=tree).stdout.strip()

    def cleanup(self) -> None:
        if "first" in self._built:
            self._built["first"].path.unlink(missing_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)
