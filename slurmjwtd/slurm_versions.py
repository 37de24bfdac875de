"""What differs between Slurm releases for slurmjwt, in one table (RELEASES), and how to learn
which release is running from Slurm itself: `scontrol --version` (or any client's --version),
or slurmrestd's OpenAPI description (/openapi/v3), which names the release and the API
versions it serves.

Rows marked "verified" were checked against a running Slurm by the tests (tests/test_slurm.py,
test_rest.py, test_jobs.py and test_signers.py with Debian 12's 22.05 and, under
`make test-slurm24`, Debian 13's 24.11). The others are not tested here: the bad-token statuses,
Bearer, the key check, sbatch's scrubbing and the API ranges of 23.11 and 25.05 follow the
project's field notes; the API ranges of 23.02, 24.05 and 25.11 and /ping in 23.02 to 24.05
follow Slurm's release notes as remembered, and are the first thing to check when a site runs
them (slurmjwt curl itself always asks slurmrestd). A release between two rows behaves as the
earlier row.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

Version = tuple[int, int, int]


@dataclass(frozen=True)
class Release:
    since: Version  # the first release this row describes
    api: tuple[str, ...]  # the OpenAPI (data_parser) versions its slurmrestd serves, oldest first
    bad_token: int  # slurmrestd's HTTP status for a token it cannot verify (/jobs, /diag)
    ping_checks_token: bool  # False: /ping answers 200 whatever the token (never test with it)
    bearer: bool  # slurmrestd takes `Authorization: Bearer TOKEN` (besides X-SLURM-USER-TOKEN)
    key_refused_for_others: bool  # slurmctld refuses to start if jwt_key has any bit for others
    sbatch_scrubs_jwt: bool  # sbatch leaves SLURM_JWT out of the job's environment (in part)


def _api(first: int, last: int) -> tuple[str, ...]:
    return tuple(f"v0.0.{n}" for n in range(first, last + 1))


RELEASES = (
    Release((22, 5, 0), _api(36, 38), 500, True, False, False, False),  # verified 22.05.8
    Release((23, 2, 0), _api(37, 39), 500, True, True, False, False),
    Release((23, 11, 0), _api(38, 40), 500, True, True, True, False),
    Release((24, 5, 0), _api(39, 41), 500, True, True, True, False),
    Release((24, 5, 5), _api(39, 41), 511, True, True, True, False),
    Release((24, 11, 0), _api(40, 42), 511, False, True, True, False),  # verified 24.11.5
    Release((25, 5, 0), _api(40, 43), 511, False, True, True, False),
    Release((25, 11, 0), _api(41, 44), 401, False, True, True, False),
    Release((26, 5, 0), _api(41, 44), 401, False, True, True, True),
)

_VERSION = re.compile(r"\b(\d{2})\.(\d{1,2})(?:\.(\d+))?")


def parse_version(text: str) -> Version | None:
    """The first Slurm release number in TEXT ("slurm 24.11.5", "slurm-wlm 22.05.8",
    "Slurm-24.11.5", "24.11"), as (24, 11, 5); None if there is none."""
    found = _VERSION.search(text or "")
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2)), int(found.group(3) or 0)


def format_version(version: Version) -> str:
    return f"{version[0]}.{version[1]:02d}.{version[2]}"


def release_of(version: Version | None) -> Release | None:
    """The row for VERSION: the last one at or before it; None if it is older than them all
    (or unknown)."""
    if version is None:
        return None
    rows = [r for r in RELEASES if r.since <= tuple(version)]
    return rows[-1] if rows else None


def _api_key(api: str) -> tuple[int, ...]:
    return tuple(int(n) for n in api.lstrip("v").split("."))


def newest_api(apis: list[str] | tuple[str, ...]) -> str | None:
    return max(apis, key=_api_key, default=None)


_API_PATH = re.compile(r"/slurm/(v\d+\.\d+\.\d+)/")
_API = re.compile(r"v\d+\.\d+\.\d+\Z")


def versionless(path: str) -> bool:
    """Whether PATH is under /slurm/ without an API version: /slurm/jobs, /slurm/job/12."""
    parts = path.split("/")
    return len(parts) > 2 and parts[1] == "slurm" and parts[2] != "" and not _API.match(parts[2])


def api_path(path: str, api: str) -> str:
    """/slurm/ENDPOINT as /slurm/API/ENDPOINT."""
    return f"/slurm/{api}/{path[len('/slurm/'):]}"


@dataclass(frozen=True)
class Server:
    """What slurmrestd says of itself in its OpenAPI description."""

    version: Version | None  # the Slurm release, if the description names it
    api: tuple[str, ...]  # the versions it serves under /slurm/, oldest first

    @property
    def release(self) -> Release | None:
        return release_of(self.version)

    def describe(self) -> str:
        slurm = f"Slurm {format_version(self.version)}" if self.version else "Slurm (release not named)"
        return f"{slurm}, API {', '.join(self.api) or 'none under /slurm/'}"


def parse_openapi(spec: dict) -> Server:
    """The release and /slurm/ API versions in slurmrestd's /openapi/v3 answer. The release is
    in info.x-slurm.release (23.02+) or info.version ("Slurm-22.05.8" in 22.05)."""
    info = spec.get("info") if isinstance(spec, dict) else None
    info = info if isinstance(info, dict) else {}
    extra = info.get("x-slurm")
    named = extra.get("release") if isinstance(extra, dict) else None
    version = parse_version(str(named)) if named else parse_version(str(info.get("version", "")))
    paths = spec.get("paths") if isinstance(spec, dict) else None
    found = {m.group(1) for p in (paths if isinstance(paths, dict) else {})
             if (m := _API_PATH.match(p))}
    return Server(version, tuple(sorted(found, key=_api_key)))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the HTTP error it is: urllib would send the token on to
    wherever it points (curl, too, follows none unless told)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


OPENER = urllib.request.build_opener(_NoRedirect)  # for every request that carries a token


class ServerUnknown(Exception):
    """slurmrestd's description could not be had; the message says why."""


def ask_server(base_url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> Server:
    """GET BASE_URL/openapi/v3 (with HEADERS, in-process: a token there is in no argv)."""
    url = base_url.rstrip("/") + "/openapi/v3"
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with OPENER.open(request, timeout=timeout) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        raise ServerUnknown(f"{url} answered HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise ServerUnknown(f"cannot reach {url}: {getattr(exc, 'reason', None) or exc}") from None
    try:
        return parse_openapi(json.loads(body))
    except ValueError:
        raise ServerUnknown(f"{url} did not answer with JSON") from None
