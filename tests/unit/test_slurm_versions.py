"""What differs between Slurm releases (slurmjwtd.slurm_versions.RELEASES) and the code that
reads it: the release from Slurm's own words, the API version `slurmjwt curl` puts in a path,
and doctor's slurmrestd and jwt_key checks for 22.05 and 24.11. In-process, as any user; the
same checks against real 22.05 and 24.11 are in tests/test_slurm.py and tests/test_rest.py."""

from __future__ import annotations

import os

import pytest

from slurmjwtd import doctor
from slurmjwtd.slurm_versions import (RELEASES, Server, ServerUnknown, api_path, ask_server,
                                      newest_api, parse_openapi, parse_version, release_of,
                                      versionless)


@pytest.mark.parametrize("text, version", [
    ("slurm 24.11.5\n", (24, 11, 5)),
    ("slurm-wlm 22.05.8\n", (22, 5, 8)),
    ("Slurm-24.11.5&openapi/slurmctld", (24, 11, 5)),
    ("Slurm-22.05.8", (22, 5, 8)),
    ("slurm 25.05", (25, 5, 0)),
    ("no version here", None),
    ("", None),
])
def test_parse_version(text, version):
    assert parse_version(text) == version


def test_releases_are_in_order_and_each_serves_api_versions():
    assert [r.since for r in RELEASES] == sorted(r.since for r in RELEASES)
    assert all(r.api and r.bad_token in (401, 500, 511) for r in RELEASES)


@pytest.mark.parametrize("version, bad_token, ping_checks, bearer, key_refused, scrubs, newest", [
    ((22, 5, 8), 500, True, False, False, False, "v0.0.38"),
    ((23, 2, 7), 500, True, True, False, False, "v0.0.39"),
    ((23, 11, 10), 500, True, True, True, False, "v0.0.40"),
    ((24, 5, 4), 500, True, True, True, False, "v0.0.41"),
    ((24, 5, 5), 511, True, True, True, False, "v0.0.41"),
    ((24, 11, 5), 511, False, True, True, False, "v0.0.42"),
    ((25, 5, 1), 511, False, True, True, False, "v0.0.43"),
    ((25, 11, 0), 401, False, True, True, False, "v0.0.44"),
    ((26, 5, 0), 401, False, True, True, True, "v0.0.44"),
])
def test_release_of(version, bad_token, ping_checks, bearer, key_refused, scrubs, newest):
    r = release_of(version)
    assert (r.bad_token, r.ping_checks_token, r.bearer, r.key_refused_for_others,
            r.sbatch_scrubs_jwt, newest_api(r.api)) == (bad_token, ping_checks, bearer,
                                                         key_refused, scrubs, newest)


def test_release_of_an_unknown_or_older_slurm_is_none():
    assert release_of(None) is None and release_of((21, 8, 8)) is None


def test_newest_api_compares_numbers_not_text():
    assert newest_api(["v0.0.9", "v0.0.10", "v0.0.40"]) == "v0.0.40"
    assert newest_api(["v0.0.9", "v0.0.10"]) == "v0.0.10"
    assert newest_api([]) is None


def test_parse_openapi_for_22_05_and_24_11():
    old = {"info": {"version": "Slurm-22.05.8"},
           "paths": {f"/slurm/v0.0.{n}/{e}": {} for n in (36, 37, 38) for e in ("ping", "jobs")}
           | {"/openapi/v3": {}}}
    assert parse_openapi(old) == Server((22, 5, 8), ("v0.0.36", "v0.0.37", "v0.0.38"))
    new = {"info": {"version": "Slurm-24.11.5&openapi/slurmctld"},
           "paths": {f"/slurm/v0.0.{n}/diag/": {} for n in (42, 40, 41)}
           | {"/slurmdb/v0.0.42/jobs/": {}}}
    assert parse_openapi(new) == Server((24, 11, 5), ("v0.0.40", "v0.0.41", "v0.0.42"))
    assert parse_openapi({"info": {"x-slurm": {"release": "25.05.1"}}, "paths": {}}).version == (25, 5, 1)
    assert parse_openapi([]) == Server(None, ())


@pytest.mark.parametrize("path, expected", [
    ("/slurm/jobs", "/slurm/v0.0.42/jobs"),
    ("/slurm/job/12", "/slurm/v0.0.42/job/12"),
    ("/slurm/diag/", "/slurm/v0.0.42/diag/"),
])
def test_a_versionless_path_gets_the_api_version(path, expected):
    assert versionless(path) and api_path(path, "v0.0.42") == expected


@pytest.mark.parametrize("path", ["/slurm/v0.0.38/ping", "/slurm/", "/slurm", "/slurmdb/v0.0.42/jobs",
                                  "/openapi/v3", "/"])
def test_other_paths_are_kept(path):
    assert not versionless(path)


# -- doctor: slurmrestd, by release ---------------------------------------------------------
URL = "http://127.0.0.1:6820"


def rest(server: Server | Exception, forged: int, own: int | None, token: str | None = "a.b.c"):
    """check_rest against a slurmrestd describing itself as SERVER, answering a forged token with
    FORGED and the login's token with OWN; the URLs it was asked, in order."""
    asked: list[str] = []

    def ask(url, headers):
        asked.append(url + "/openapi/v3")
        if isinstance(server, Exception):
            raise server
        return server

    def probe(url, headers):
        asked.append(url)
        return forged if headers["X-SLURM-USER-TOKEN"] != token else own

    return doctor.check_rest(URL, "slurmrestd_url", "alice", token, None, ask, probe), asked


S22 = Server((22, 5, 8), ("v0.0.36", "v0.0.37", "v0.0.38"))
S24 = Server((24, 11, 5), ("v0.0.40", "v0.0.41", "v0.0.42"))


@pytest.mark.parametrize("server, bad", [(S22, 500), (S24, 511)])
def test_doctor_rest_all_well_by_release(server, bad):
    found, asked = rest(server, bad, 200)
    api = server.api[-1]
    assert [f.level for f in found] == ["ok", "ok", "ok"], found
    assert found[0].what.endswith(f"`slurmjwt curl /slurm/PATH` uses {api}")
    assert f"HTTP {bad}, as its release does" in found[1].what
    assert asked == [f"{URL}/openapi/v3", f"{URL}/slurm/{api}/diag", f"{URL}/slurm/{api}/diag"]
    assert not [u for u in asked if "ping" in u]  # 24.11's /ping answers 200 to any token


def test_doctor_rest_a_forged_token_accepted_is_a_problem():
    found, _ = rest(S24, 200, 200)
    assert found[1].level == doctor.PROBLEM and "random key" in found[1].what


@pytest.mark.parametrize("server, status", [(S22, 511), (S24, 500)])
def test_doctor_rest_another_release_s_status_is_a_warning(server, status):
    found, _ = rest(server, status, 200)
    assert found[1].level == doctor.WARNING and f"HTTP {status}" in found[1].what


@pytest.mark.parametrize("server, bad", [(S22, 500), (S24, 511)])
def test_doctor_rest_the_login_s_token_refused_is_a_problem(server, bad):
    found, _ = rest(server, bad, bad)
    assert found[2].level == doctor.PROBLEM
    assert found[2].what == f"slurmrestd refuses alice's token (GET {URL}/slurm/{server.api[-1]}/diag: HTTP {bad})"


def test_doctor_rest_without_a_token_or_a_slurmrestd():
    found, _ = rest(S24, 511, None, token=None)
    assert [f.level for f in found] == ["ok", "ok", "skip"]
    found, asked = rest(ServerUnknown(f"cannot reach {URL}/openapi/v3: refused"), 0, None)
    assert [f.level for f in found] == ["skip"] and len(asked) == 1
    found, _ = rest(ServerUnknown(f"{URL}/openapi/v3 answered HTTP 404"), 0, None)
    assert [f.level for f in found] == ["WARNING"]
    found, _ = rest(Server((24, 11, 5), ()), 511, 200)
    assert [f.level for f in found] == ["PROBLEM"] and "-s openapi/slurmctld" in found[0].fix


# -- doctor: slurm.conf's jwt_key, which 23.11+ refuses with any bit for others --------------
@pytest.mark.parametrize("version, says", [
    ((22, 5, 8), "slurmctld 23.11 and later refuse to start with it (Slurm 22.05.8 here)"),
    ((24, 11, 5), "slurmctld refuses to start with it (Slurm 24.11.5 here)"),
    (None, "slurmctld 23.11 and later refuse to start with it (Slurm's release not known here)"),
])
def test_doctor_jwt_key_readable_by_others(tmp_path, version, says):
    key = tmp_path / "jwt_hs256.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o604)
    found = doctor.check_jwt_key("slurm.conf", str(key), None, "cfg", "restart", version)
    assert [f.level for f in found] == [doctor.PROBLEM]
    assert found[0].what == f"jwt_key={key}: mode 0604 gives other users access"
    assert found[0].why.endswith(says) and found[0].fix == f"chmod o-rwx {key}"
    key.chmod(0o640)
    assert [f.level for f in doctor.check_jwt_key("slurm.conf", str(key), None, "cfg", "restart",
                                                  version)] == [doctor.SKIP]  # no config: not compared


def test_doctor_rest_takes_the_release_from_scontrol_when_slurmrestd_names_none():
    """22.05's /openapi/v3 names no release: the commands' own (`scontrol --version`) stands in."""
    unnamed = Server(None, S22.api)
    found = doctor.check_rest(URL, "slurmrestd_url", "alice", "a.b.c", (22, 5, 8),
                                 lambda url, headers: unnamed,
                                 lambda url, headers: 500 if headers["X-SLURM-USER-TOKEN"] != "a.b.c" else 200)
    assert "Slurm 22.05.8 (as `scontrol --version` says here: slurmrestd names no release)" in found[0].what
    assert "HTTP 500, as its release does" in found[1].what
    found = doctor.check_rest(URL, "slurmrestd_url", "alice", None, None,
                                 lambda url, headers: unnamed, lambda url, headers: 500)
    assert "Slurm (release not named)" in found[0].what and found[1].what.endswith("HTTP 500)")


def test_doctor_asks_scontrol_with_slurm_conf(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n")
    seen = []

    def run(argv, env):
        seen.append((argv, dict(env)))
        return "slurm 24.11.5\n"

    assert doctor.slurm_version(str(conf), run) == (24, 11, 5)
    assert seen == [(["scontrol", "--version"], {**doctor.RUN_ENV, "SLURM_CONF": str(conf)})]

    def fails(argv, env):
        raise doctor.RunFailed("scontrol: fatal: Could not establish a configuration source")

    assert doctor.slurm_version(str(conf), fails) is None


def test_a_redirect_never_carries_the_token_on(tmp_path):
    """slurmrestd's description is asked with the login's token: a 3xx is refused, not followed."""
    import http.server
    import threading

    seen: list[str] = []

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(ServerUnknown, match="answered HTTP 302"):
            ask_server(url, {"X-SLURM-USER-TOKEN": "a.b.c"})
        assert doctor.http_status(url + "/slurm/v0.0.42/diag", {"X-SLURM-USER-TOKEN": "a.b.c"}) == 302
    finally:
        server.shutdown()
    assert seen == ["/openapi/v3", "/slurm/v0.0.42/diag"]
