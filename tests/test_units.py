"""Pure logic, no socket: protocol encoding, configuration checks, policy, audit, signing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from slurmjwtd.audit import format_audit
from slurmjwtd.config import Config, ConfigError, config_from_dict, load_config
from slurmjwtd.policy import Account, Caller, decide_mint, decide_session_change
from slurmjwtd.protocol import (FAULT, REFUSAL, REFUSALS, Code, ProtocolError, encode_error,
                                encode_ok, encode_request, parse_request, parse_response, quote,
                                unquote)
from slurmjwtd.signer import HS256Signer, unverified_claims

ROOT = Caller(0, 0, 100)
ALICE_CALLER = Caller(1001, 1001, 200)
ALICE = Account("alice", 1001)
BOB = Account("bob", 1002)


# -- protocol ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["alice", "/dev/pts/3", "10.0.0.5", "a b", "x=y%z", "é", ""])
def test_quote_round_trips(value):
    encoded = quote(value)
    assert " " not in encoded and "\n" not in encoded and "=" not in encoded
    assert unquote(encoded) == value


def test_quote_escapes_exactly_the_bytes_outside_safe():
    """Every character, one by one: kept if docs/protocol.md's safe set has it, else each of its
    UTF-8 bytes as %XX (what pam/sjwt_client.c decodes)."""
    from slurmjwtd.protocol import SAFE
    for point in [*range(0x800), 0xFFFD, 0x10FFFF]:
        char = chr(point)
        want = char if char in SAFE else "".join("%%%02X" % b for b in char.encode())
        assert quote(char) == want, hex(point)
        assert quote("a" + char + "b") == "a" + want + "b"


def test_request_round_trip():
    line = encode_request("OPEN", {"user": "alice", "tty": "/dev/pts/3", "rhost": "host name"})
    assert line.endswith(b"\n")
    request = parse_request(line[:-1])
    assert request.op == "OPEN"
    assert request.args == {"user": "alice", "tty": "/dev/pts/3", "rhost": "host name"}


@pytest.mark.parametrize("line, code", [
    (b"", Code.BAD_REQUEST),
    (b"GET / HTTP/1.0", Code.BAD_REQUEST),
    (b"SJWT/2 MINT", Code.UNSUPPORTED_VERSION),
    (b"SJWT/1", Code.BAD_REQUEST),
    (b"SJWT/1 mint", Code.BAD_REQUEST),
    (b"SJWT/1 MINT user", Code.BAD_REQUEST),
    (b"SJWT/1 MINT user=a user=b", Code.BAD_REQUEST),
    (b"SJWT/1 MINT user=a%0Ab", Code.BAD_REQUEST),  # control character
    (b"SJWT/1 MINT user=a%zz", Code.BAD_REQUEST),
    (b"SJWT/1 MINT user=\xff", Code.BAD_REQUEST),
    (b"SJWT/1 MINT user=a\"b", Code.BAD_REQUEST),  # unsafe character not encoded
    (b"SJWT/1  MINT", Code.BAD_REQUEST),
])
def test_malformed_requests_are_refused_with_a_code(line, code):
    with pytest.raises(ProtocolError) as err:
        parse_request(line)
    assert err.value.code is code


def test_answers_parse():
    ok = parse_response(encode_ok({"token": "a.b.c", "exp": 5})[:-1])
    assert ok.ok and ok.fields == {"token": "a.b.c", "exp": "5"}
    err = parse_response(encode_error(Code.NO_SESSION, "log in\nagain")[:-1])
    assert not err.ok and err.code == "no-session" and err.message == "log in?again"


# -- configuration -------------------------------------------------------------------------
def test_defaults_are_the_documented_ones():
    c = Config()
    assert (c.socket, c.key_file, c.lifetime, c.require_session, c.min_uid) == (
        "/run/slurmjwt/slurmjwtd.sock", "/var/lib/slurm/jwt_hs256.key", 3600, True, 1000)


@pytest.mark.parametrize("data, key", [
    ({"lifetim": 5}, "lifetim"),
    ({"lifetime": "3600"}, "lifetime"),
    ({"lifetime": True}, "lifetime"),
    ({"lifetime": 0}, "lifetime"),
    ({"lifetime": 7200, "max_lifetime": 3600}, "lifetime"),
    ({"require_session": 1}, "require_session"),
    ({"min_uid": -1}, "min_uid"),
    ({"socket": "relative.sock"}, "socket"),
    ({"client_timeout": 0}, "client_timeout"),
])
def test_bad_configuration_names_the_key(data, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_dict(data)


def test_config_file_errors_are_one_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("lifetime = [\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.toml"))
    assert load_config(str(tmp_path / "missing.toml"), required=False) == Config()


# -- policy --------------------------------------------------------------------------------
def decide(caller, target, lifetime=None, has_session=False, **cfg):
    return decide_mint(caller, target, target.name if target else "ghost", lifetime, has_session,
                       Config(**cfg))


def test_root_mints_for_a_named_user_without_a_session():
    d = decide(ROOT, ALICE)
    assert d.granted and d.lifetime == 3600 and d.reason == "root-request"


def test_user_needs_a_live_session():
    assert decide(ALICE_CALLER, ALICE, has_session=True).granted
    d = decide(ALICE_CALLER, ALICE, has_session=False)
    assert not d.granted and d.code is Code.NO_SESSION
    assert decide(ALICE_CALLER, ALICE, has_session=False, require_session=False).granted


def test_user_never_gets_another_users_token():
    d = decide(ALICE_CALLER, BOB, has_session=True)
    assert not d.granted and d.code is Code.PERMISSION_DENIED


def test_unknown_low_and_greedy_are_refused():
    assert decide(ROOT, None).code is Code.UNKNOWN_USER
    assert decide(ROOT, Account("root", 0)).code is Code.BELOW_MIN_UID
    assert decide(ROOT, Account("root", 0), min_uid=0).granted
    assert decide(ROOT, ALICE, lifetime=43201).code is Code.LIFETIME_TOO_LONG
    assert decide(ROOT, ALICE, lifetime=600).lifetime == 600


def test_only_root_changes_sessions():
    assert decide_session_change(ROOT, "OPEN").granted
    d = decide_session_change(ALICE_CALLER, "CLOSE")
    assert not d.granted and d.code is Code.PERMISSION_DENIED


# -- audit and signing ---------------------------------------------------------------------
def test_audit_line_escapes_client_input_and_takes_no_token():
    line = format_audit({"decision": "refused", "op": "mint", "user": 'x y\nforged=1"'})
    assert "\n" not in line and 'user="x y\\x0aforged=1\\""' in line
    with pytest.raises(ValueError):
        format_audit({"decision": "granted", "token": "a.b.c"})


def test_hs256_token_is_what_slurm_accepts():
    key = b"k" * 32
    token = HS256Signer(key).mint("alice", 600, 1_700_000_000)
    assert jwt.get_unverified_header(token.jwt) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(token.jwt, key, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"iat": 1_700_000_000, "exp": 1_700_000_600, "sun": "alice", "jti": token.jti}
    assert token.jwt not in repr(token) and "k" * 32 not in repr(HS256Signer(key))
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token.jwt, b"x" * 32, algorithms=["HS256"], options={"verify_exp": False})


def _jwt_of(header: bytes, payload: bytes) -> str:
    import base64
    part = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()  # noqa: E731
    return f"{part(header)}.{part(payload)}.{part(b'sig')}"


@pytest.mark.parametrize("token", [
    HS256Signer(b"k" * 32).mint("alice", 600, 1_700_000_000).jwt,
    HS256Signer(b"k" * 32).mint('é "quoted" \\ name', 60, 0).jwt,
    _jwt_of(b'{"alg":"RS256","kid":"n1"}', b'{"sun":"bob","exp":1,"extra":[1,{"a":null}]}'),
    _jwt_of(b'{"alg":"HS256"}', b'{"iat":"not a number"}'),          # read, never checked
    _jwt_of(b'{"alg":"HS256"}', b"[1,2]"),                           # claims not an object
    _jwt_of(b'{"alg":"HS256"}', b"not json"),
    _jwt_of(b'{"alg":"HS256"}', b"\xff\xfe"),                        # not UTF-8
    "a.b", "a.b.c.d", "a.!!!.c", "",
], ids=["hs256", "escaped-name", "rs256-extra", "odd-iat", "array", "not-json", "not-utf8",
        "two-parts", "four-parts", "bad-base64", "empty"])
def test_unverified_claims_match_pyjwt(token):
    """The hand-written reader (signer.unverified_claims: pyjwt's import alone costs 130 ms and
    13 MiB) reads what jwt.decode(verify_signature=False) reads, and refuses what it refuses,
    with a message that never quotes the token."""
    try:
        want = jwt.decode(token, options={"verify_signature": False})
    except jwt.DecodeError:
        with pytest.raises(ValueError, match=r"^not a JWT \(") as refused:
            unverified_claims(token)
        assert token not in str(refused.value) or not token
    else:
        assert unverified_claims(token) == want


# -- error codes: one table, protocol.Code; the CLI and the PAM module follow its classes ------
def c_refusals() -> set[str]:
    """The codes pam_slurmjwt.c's `refusals` table lists (PAM_IGNORE; any other is PAM_SESSION_ERR)."""
    source = (Path(__file__).parent.parent / "pam" / "pam_slurmjwt.c").read_text()
    table = re.search(r"static const char \*const refusals\[\] = \{(.*?)\};", source, re.S)
    assert table, "pam_slurmjwt.c has no `refusals` table"
    body = re.sub(r"/\*.*?\*/", "", table.group(1), flags=re.S)
    codes = re.findall(r'"([^"]*)"', body)
    assert len(codes) == len(set(codes)) and re.fullmatch(r'(\s*"[^"]*"\s*,?)*\s*', body), body
    return set(codes)


def test_pam_module_ignores_exactly_the_refusals():
    assert c_refusals() == REFUSALS


def test_every_code_has_a_class_and_the_docs_say_which():
    assert {code.kind for code in Code} == {REFUSAL, FAULT}
    assert REFUSALS == {c.value for c in Code if c.kind == REFUSAL}
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    documented = dict(re.findall(r"^\| `([a-z-]+)` \| (refusal|fault) \|", doc, re.M))
    assert documented == {c.value: c.kind for c in Code}


@pytest.mark.parametrize("code", [c.value for c in Code] + ["a-later-code"])
def test_cli_exit_status_follows_the_class(code):
    from slurmjwtd.cli import EXIT_DAEMON, EXIT_NO_SESSION, EXIT_REFUSED, exit_status
    expected = (EXIT_NO_SESSION if code == "no-session" else
                EXIT_REFUSED if code in REFUSALS else EXIT_DAEMON)
    assert exit_status(code) == expected
    assert (exit_status(code) in (EXIT_REFUSED, EXIT_NO_SESSION)) == (
        code in ("permission-denied", "no-session", "unknown-user", "below-min-uid",
                 "lifetime-too-long", "policy-denied", "rate-limited", "no-such-session",
                 "revoked"))


# -- python-systemd, never the checkout's systemd/ folder of units --------------------------
CHECKOUT = Path(__file__).resolve().parent.parent
WITHOUT_SYSTEMD = [
    ("service", "import slurmjwtd.service"),
    ("journal audit", "from slurmjwtd.audit import JournalAuditLog; JournalAuditLog()"),
]


def run_without_python_systemd(code: str, path: Path) -> subprocess.CompletedProcess:
    """CODE in a Python that has only the standard library (-S: no site-packages, so neither
    python-systemd nor anything else installed), with PATH on sys.path."""
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=path, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("what, code", WITHOUT_SYSTEMD, ids=[w for w, _ in WITHOUT_SYSTEMD])
def test_checkout_units_folder_is_not_taken_for_python_systemd(what, code):
    assert (CHECKOUT / "systemd" / "slurmjwtd.service").is_file()  # the shadow this is about
    result = run_without_python_systemd(code, CHECKOUT)
    assert result.returncode == 1, result
    assert result.stderr == (f"slurmjwtd: python-systemd is not installed: `import systemd` found "
                             f"{CHECKOUT / 'systemd'} (this checkout's unit files) "
                             f"(apt-get install python3-systemd, or pip install systemd-python)\n")


def test_missing_python_systemd_is_one_line(tmp_path):
    (tmp_path / "slurmjwtd").symlink_to(CHECKOUT / "slurmjwtd")  # the package, not the units
    result = run_without_python_systemd("import slurmjwtd.service", tmp_path)
    assert result.returncode == 1, result
    assert result.stderr == ("slurmjwtd: python-systemd is not installed "
                             "(apt-get install python3-systemd, or pip install systemd-python)\n")


def test_daemon_journal_logging_refuses_a_namespace_systemd(monkeypatch):
    """main.setup_logging(journal=True), with `systemd` a namespace package of the units."""
    import types
    from slurmjwtd import main, pysystemd
    fake = types.ModuleType("systemd")
    fake.__path__ = [str(CHECKOUT / "systemd")]  # what the import system makes of the folder
    fake.__file__ = None
    monkeypatch.setitem(sys.modules, "systemd", fake)
    monkeypatch.delitem(sys.modules, "systemd.journal", raising=False)
    monkeypatch.setattr(pysystemd, "UNITS", str(CHECKOUT / "systemd"))
    with pytest.raises(SystemExit, match=r"python-systemd is not installed: `import systemd` found "
                                         + re.escape(str(CHECKOUT / "systemd"))):
        main.setup_logging(True)
    assert pysystemd.shadow(fake) == str(CHECKOUT / "systemd")
    real = types.ModuleType("systemd")  # installed beside slurmjwtd/, as pip does in a venv
    real.__file__ = str(CHECKOUT / "systemd" / "__init__.py")
    real.__path__ = [str(CHECKOUT / "systemd")]
    assert pysystemd.shadow(real) is None


def test_installed_daemon_imports_python_systemd():
    """The venv's slurmjwtd, whose python-systemd (pip's) sits beside it in site-packages."""
    result = subprocess.run([sys.executable, "-c", "import slurmjwtd.service as s, slurmjwtd.main;"
                             "print(s.daemon.__file__)"], cwd="/", capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip().endswith("daemon.py"), result


# -- atomicfile: the one writer of whole files (sessions, token file, keygen) ---------------
def test_write_atomic_replaces_or_refuses_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import os
    from slurmjwtd import atomicfile
    path = tmp_path / "key"
    atomicfile.write_atomic(str(path), b"one", mode=0o640)
    assert path.read_bytes() == b"one" and path.stat().st_mode & 0o777 == 0o640
    with pytest.raises(FileExistsError):  # replace=False never overwrites
        atomicfile.write_atomic(str(path), b"two", replace=False)
    assert path.read_bytes() == b"one"
    stale = tmp_path / f".key.tmp-{os.getpid()}"  # a writer of this pid that died
    stale.symlink_to(tmp_path / "elsewhere")
    atomicfile.write_atomic(str(path), b"three", fsync=True)
    assert path.read_bytes() == b"three" and path.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "elsewhere").exists()

    def broken(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(atomicfile.os, "fsync", broken)
    with pytest.raises(OSError):
        atomicfile.write_atomic(str(path), b"four", fsync=True)
    assert path.read_bytes() == b"three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_write_atomic_relative_to_a_directory(tmp_path):
    import os
    from slurmjwtd.atomicfile import write_atomic
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_atomic("token", b"a.b.c\n", dir_fd=fd)
        write_atomic("token", b"d.e.f\n", dir_fd=fd)
    finally:
        os.close(fd)
    assert [p.name for p in tmp_path.iterdir()] == ["token"]
    assert (tmp_path / "token").read_bytes() == b"d.e.f\n"
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600


# -- the safe set, written once per language ---------------------------------------------
def test_safe_set_is_one_set_in_protocol_py_the_c_client_and_the_docs():
    from slurmjwtd.protocol import SAFE, quote
    c_source = (CHECKOUT / "pam" / "sjwt_client.c").read_text()
    c_safe = re.search(r'#define SAFE_CHARS "([^"]*)"', c_source).group(1)
    assert sorted(c_safe) == sorted(SAFE) and len(set(SAFE)) == len(SAFE)
    abnf = re.search(r"^safe += (.*)$", (CHECKOUT / "docs" / "protocol.md").read_text(), re.M).group(1)
    doc_safe = set(re.findall(r'"(.)"', abnf))
    assert abnf.startswith("ALPHA / DIGIT / ")
    doc_safe |= {chr(c) for c in range(0x41, 0x5B)} | {chr(c) for c in range(0x61, 0x7B)}
    doc_safe |= set("0123456789")
    assert doc_safe == set(SAFE)
    for c in map(chr, range(128)):  # each character as it is, or escaped, as the set says
        assert (quote(c) == c) == (c in SAFE), repr(c)
        assert (parse_request(f"SJWT/1 MINT user={c}".encode()).args["user"] == c
                if c in SAFE else True)


# -- nss: the one "NSS lookup or None" ----------------------------------------------------
def test_nss_answers_none_for_what_nss_does_not_know():
    import grp
    import pwd
    from slurmjwtd.nss import nss
    assert nss(pwd.getpwnam, "root").pw_uid == 0 and nss(pwd.getpwuid, 0).pw_name == "root"
    assert nss(grp.getgrgid, 0).gr_name == "root"
    assert nss(pwd.getpwnam, "sjt-no-such-user") is None
    assert nss(grp.getgrnam, "sjt-no-such-group") is None
    assert nss(pwd.getpwuid, 2**31 - 2) is None
    from slurmjwtd.keyfile import allowed_owners, pwd_uid, trusted_owners
    assert pwd_uid("root") == 0 and pwd_uid("sjt-no-such-user") is None
    assert allowed_owners("sjt-no-such-user") == trusted_owners() and 0 in trusted_owners()
