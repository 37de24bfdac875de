"""slurmctld's JWKS file (slurmjwtd/jwks.py, `slurmjwt jwks --add/--remove/--list`): what is
refused (and that a refusal leaves the file exactly as it was), the merge, the writer's lock,
owner and mode; in-process, as any user. The root tests (tests/test_fleet.py) run the same
commands against the real slurmctld."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from slurmjwtd import jwks
from slurmjwtd.cli import main
from slurmjwtd.jwks import JwksError


def b64(number: int) -> str:
    return base64.urlsafe_b64encode(number.to_bytes((number.bit_length() + 7) // 8, "big")
                                    ).rstrip(b"=").decode()


def entry(key: rsa.RSAPrivateKey, kid: str, /, **changes) -> dict:
    numbers = key.public_key().public_numbers()
    out = {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": b64(numbers.n),
           "e": b64(numbers.e)} | changes
    return {k: v for k, v in out.items() if v is not None}


def doc(*entries: dict) -> bytes:
    return json.dumps({"keys": list(entries)}).encode()


@pytest.fixture(scope="module")
def keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


@pytest.fixture(scope="module")
def small() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


# -- a whole file: parse_set ---------------------------------------------------------------
def test_a_valid_set_parses(keys):
    data = doc(entry(keys[0], "login01"), entry(keys[1], "login02", alg=None, use=None))
    parsed, found = jwks.parse_set(data, "F")
    assert [k.kid for k in found] == ["login01", "login02"]
    assert found[0].bits == 2048 and found[0].n == keys[0].public_key().public_numbers().n
    assert found[0].fingerprint != found[1].fingerprint
    assert jwks.parse_set(b'{"keys": []}', "F")[1] == []


FLAWS = {
    "not-json": (lambda k, s: b'{"keys": [', "not JSON"),
    "not-utf8": (lambda k, s: b'\xff\xfe', "not UTF-8"),
    "no-keys-list": (lambda k, s: b'{"kid": "x"}', "not a JWKS"),
    "keys-not-list": (lambda k, s: b'{"keys": {}}', "not a JWKS"),
    "array": (lambda k, s: b'[]', "not a JWKS"),
    "entry-not-object": (lambda k, s: b'{"keys": ["x"]}', "key 1: not a JSON object"),
    "no-kid": (lambda k, s: doc(entry(k[0], "a", kid=None)), 'no "kid"'),
    "empty-kid": (lambda k, s: doc(entry(k[0], "")), 'no "kid"'),
    "kid-with-space": (lambda k, s: doc(entry(k[0], "login 01")), "is not 1 to 128"),
    "kid-not-string": (lambda k, s: doc(entry(k[0], "a", kid=7)), 'no "kid"'),
    "non-rsa": (lambda k, s: doc({"kty": "EC", "kid": "a", "crv": "P-256", "x": "AA", "y": "AA"}),
                '"kty" is \'EC\', not "RSA"'),
    "no-kty": (lambda k, s: doc(entry(k[0], "a", kty=None)), '"kty" is None'),
    "alg-hs256": (lambda k, s: doc(entry(k[0], "a", alg="HS256")), '"alg" is \'HS256\''),
    "use-enc": (lambda k, s: doc(entry(k[0], "a", use="enc")), '"use" is \'enc\''),
    "private-d": (lambda k, s: doc(entry(k[0], "a", d="AQAB")), "private key material (d)"),
    "no-n": (lambda k, s: doc(entry(k[0], "a", n=None)), '"n" is not a base64url string'),
    "n-padded": (lambda k, s: doc(entry(k[0], "a", n=entry(k[0], "a")["n"] + "==")),
                 '"n" is not a base64url string'),
    "n-number": (lambda k, s: doc(entry(k[0], "a", n=12345)), '"n" is not a base64url string'),
    "no-e": (lambda k, s: doc(entry(k[0], "a", e=None)), '"e" is not a base64url string'),
    "e-even": (lambda k, s: doc(entry(k[0], "a", e="AQAA")), "exponent 65536"),
    "small-key": (lambda k, s: doc(entry(s, "a")), "a 1024-bit modulus; at least 2048"),
    "duplicate-kid": (lambda k, s: doc(entry(k[0], "a"), entry(k[1], "a")), "kid a appears twice"),
    "same-key-two-kids": (lambda k, s: doc(entry(k[0], "a"), entry(k[0], "b")),
                          "kids a and b are the same key"),
}


@pytest.mark.parametrize("flaw", FLAWS)
def test_a_flawed_set_is_refused_in_one_line_naming_the_file(keys, small, flaw):
    make, phrase = FLAWS[flaw]
    with pytest.raises(JwksError) as caught:
        jwks.parse_set(make(keys, small), "/etc/slurm/jwks.json")
    message = str(caught.value)
    assert message.startswith("/etc/slurm/jwks.json") and phrase in message, message
    assert "\n" not in message


# -- what --add is given: parse_input ------------------------------------------------------
def pem_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def test_input_forms_all_become_the_entry_slurm_needs(keys):
    want = entry(keys[0], "login01")
    as_jwks = jwks.parse_input(doc(entry(keys[0], "login01")), "in")
    as_jwk = jwks.parse_input(json.dumps(entry(keys[0], "login01", alg=None, use=None)).encode(), "in")
    as_pem = jwks.parse_input(pem_public(keys[0]), "in", kid="login01")
    for parsed in (as_jwks, as_jwk, as_pem):
        assert [k.entry for k in parsed] == [want]  # alg RS256 filled in: 22.05 skips entries without it


@pytest.mark.parametrize("case", ["private-pem", "pem-without-kid", "json-with-kid", "ec-pem",
                                  "empty-jwks", "garbage-pem", "private-jwk", "small-pem"])
def test_bad_input_is_refused(keys, small, case):
    private = keys[0].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    data, kid, phrase = {
        "private-pem": (private, "a", "a private key; never copy a node's private key"),
        "pem-without-kid": (pem_public(keys[0]), None, "needs --kid"),
        "json-with-kid": (doc(entry(keys[0], "a")), "a", "--kid is for a PEM public key"),
        "ec-pem": (pem_public(ec.generate_private_key(ec.SECP256R1())), "a", "not an RSA key"),
        "empty-jwks": (b'{"keys": []}', None, "a JWKS with no keys"),
        "garbage-pem": (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "a",
                        "not a PEM public key"),
        "private-jwk": (json.dumps(entry(keys[0], "a", d="AQAB")).encode(), None,
                        "private key material"),
        "small-pem": (pem_public(small), "a", "a 1024-bit modulus"),
    }[case]
    with pytest.raises(JwksError, match=None) as caught:
        jwks.parse_input(data, "login01.json", kid)
    assert str(caught.value).startswith("login01.json") and phrase in str(caught.value)


# -- merge ------------------------------------------------------------------------------------
def current(keys, *kids: str) -> tuple[dict, list[jwks.Key]]:
    return jwks.parse_set(doc(*(entry(keys[i], kid) for i, kid in enumerate(kids))), "F")


def adding(keys, index: int, kid: str) -> list[jwks.Key]:
    return jwks.parse_input(doc(entry(keys[index], kid)), "in")


def test_merge_adds_removes_and_keeps_order(keys):
    d, ks = current(keys, "a", "b")
    change = jwks.merge(d, ks, adding(keys, 2, "c"), ["a"], "F")
    assert [e["kid"] for e in change.doc["keys"]] == ["b", "c"]
    assert (change.added, change.removed, change.changed) == (["c"], ["a"], True)
    assert [e["kid"] for e in d["keys"]] == ["a", "b"]  # the input is not changed


def test_merge_the_same_kid_with_the_same_key_changes_nothing(keys):
    d, ks = current(keys, "a")
    change = jwks.merge(d, ks, adding(keys, 0, "a"), [], "F")
    assert (change.changed, change.unchanged, change.doc) == (False, ["a"], d)


def test_merge_a_removed_kid_may_come_back_in_the_same_change(keys):
    d, ks = current(keys, "a")
    change = jwks.merge(d, ks, adding(keys, 0, "a"), ["a"], "F")
    assert change.added == ["a"] and change.removed == ["a"]


@pytest.mark.parametrize("case", ["kid-taken", "key-under-other-kid", "remove-absent",
                                  "remove-twice"])
def test_merge_refusals(keys, case):
    d, ks = current(keys, "a", "b")
    add, remove, phrase = {
        "kid-taken": (adding(keys, 2, "a"), [], "kid a is already there with another key"),
        "key-under-other-kid": (adding(keys, 0, "a2"), [], "the key of kid a2 is already there as kid a"),
        "remove-absent": ([], ["zz"], "no kid zz to remove (it holds: a, b)"),
        "remove-twice": ([], ["a", "a"], "kid a given twice"),
    }[case]
    with pytest.raises(JwksError) as caught:
        jwks.merge(d, ks, add, remove, "F")
    assert phrase in str(caught.value)


# -- the file: update ----------------------------------------------------------------------
def snapshot(path: Path) -> tuple:
    st = path.stat()
    return path.read_bytes(), st.st_ino, st.st_mtime_ns, stat.S_IMODE(st.st_mode)


def test_update_makes_a_new_file_0644_and_leaves_no_temporary(tmp_path, keys):
    path = tmp_path / "jwks.json"
    change = jwks.update(str(path), adding(keys, 0, "a"), [])
    assert change.added == ["a"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text())["keys"] == [entry(keys[0], "a")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".jwks.json.lock", "jwks.json"]


@pytest.mark.parametrize("mode,kept", [(0o640, 0o640), (0o600, 0o600), (0o666, 0o644),
                                       (0o664, 0o644)])
def test_update_keeps_the_mode_but_never_group_or_other_write(tmp_path, keys, mode, kept):
    path = tmp_path / "jwks.json"
    path.write_bytes(doc(entry(keys[0], "a")))
    os.chmod(path, mode)
    jwks.update(str(path), adding(keys, 1, "b"), [])
    assert stat.S_IMODE(path.stat().st_mode) == kept
    assert [e["kid"] for e in json.loads(path.read_text())["keys"]] == ["a", "b"]


def test_update_through_a_symbolic_link_changes_the_file_it_names(tmp_path, keys):
    real = tmp_path / "real.json"
    real.write_bytes(doc(entry(keys[0], "a")))
    (tmp_path / "jwks.json").symlink_to(real)
    jwks.update(str(tmp_path / "jwks.json"), adding(keys, 1, "b"), [])
    assert (tmp_path / "jwks.json").is_symlink()
    assert [e["kid"] for e in json.loads(real.read_text())["keys"]] == ["a", "b"]


REFUSED = {
    "duplicate-kid": lambda keys: (adding(keys, 2, "a"), []),
    "same-key-new-kid": lambda keys: (adding(keys, 0, "a-2027"), []),
    "remove-absent": lambda keys: ([], ["zz"]),
    "remove-ok-add-bad": lambda keys: (adding(keys, 1, "b-copy"), ["a"]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_update_leaves_the_file_as_it_was(tmp_path, keys, case):
    path = tmp_path / "jwks.json"
    path.write_bytes(doc(entry(keys[0], "a"), entry(keys[1], "b")))
    os.chmod(path, 0o644)
    before = snapshot(path)
    add, remove = REFUSED[case](keys)
    with pytest.raises(JwksError):
        jwks.update(str(path), add, remove)
    assert snapshot(path) == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.parametrize("flaw", ["not-json", "small-key", "same-key-two-kids", "private-d"])
def test_a_flawed_existing_file_is_refused_and_left_alone(tmp_path, keys, small, flaw):
    path = tmp_path / "jwks.json"
    path.write_bytes(FLAWS[flaw][0](keys, small))
    before = snapshot(path)
    with pytest.raises(JwksError) as caught:
        jwks.update(str(path), adding(keys, 2, "c"), [])
    assert str(caught.value).startswith(str(path)) and FLAWS[flaw][1] in str(caught.value)
    assert snapshot(path) == before


def _add_one(path: str, entry_json: bytes) -> None:
    jwks.update(path, jwks.parse_input(entry_json, "in"), [])


def test_concurrent_updates_lose_nothing(tmp_path, keys):
    """Writers in separate processes, each adding its own kid: the lock serialises the
    read-modify-write, so every kid lands."""
    extra = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(5)]
    everyone = keys + extra
    path = str(tmp_path / "jwks.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_one, args=(path, doc(entry(k, f"node{i:02d}"))))
             for i, k in enumerate(everyone)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    kids = sorted(e["kid"] for e in json.loads(Path(path).read_text())["keys"])
    assert kids == [f"node{i:02d}" for i in range(len(everyone))]


# -- the command: exit statuses and lines ------------------------------------------------
def cli(*args: str, input: bytes | None = None):
    return CliRunner().invoke(main, list(args), input=input, env={
        "SLURMJWT_CONFIG": "/nonexistent/slurmjwtd.toml", "SLURM_CONF": "/nonexistent/slurm.conf"})


def test_cli_add_list_remove(tmp_path, keys):
    path = tmp_path / "jwks.json"
    node = tmp_path / "login01.jwks.json"
    node.write_bytes(doc(entry(keys[0], "login01")))
    added = cli("jwks", "--file", str(path), "--add", str(node))
    assert added.exit_code == 0, added.output
    assert "added kid login01" in added.output and "systemctl restart slurmctld" in added.output
    again = cli("jwks", "--file", str(path), "--add", str(node))
    assert again.exit_code == 0 and "nothing changed: no restart needed" in again.output
    piped = cli("jwks", "--file", str(path), "--add", "-", input=doc(entry(keys[1], "login02")))
    assert piped.exit_code == 0 and "it holds 2 keys: login01, login02" in piped.output
    listed = cli("jwks", "--file", str(path))
    assert listed.exit_code == 0 and "a valid JWKS, 2 keys" in listed.output
    assert "login02  RSA-2048" in listed.output
    removed = cli("jwks", "--file", str(path), "--remove", "login01")
    assert removed.exit_code == 0 and "removed kid login01" in removed.output
    assert [e["kid"] for e in json.loads(path.read_text())["keys"]] == ["login02"]


@pytest.mark.parametrize("args,status,phrase", [
    (["--remove", "nope"], 8, "no kid nope to remove"),
    (["--add", "/nonexistent/x.json"], 8, "cannot read /nonexistent/x.json"),
    (["--add", "-", "--add", "-", "--kid", "k"], 2, "--kid names the key of one --add"),
], ids=["remove-absent", "add-missing", "kid-two-adds"])
def test_cli_refusals_are_one_line_and_change_nothing(tmp_path, keys, args, status, phrase):
    path = tmp_path / "jwks.json"
    path.write_bytes(doc(entry(keys[0], "login01")))
    before = snapshot(path)
    run = cli("jwks", "--file", str(path), *args)
    assert run.exit_code == status, run.output
    assert phrase in run.output and run.output.count("\n") == 1, run.output
    assert snapshot(path) == before


def test_cli_private_key_path_with_edit_options_is_a_usage_error(tmp_path):
    run = cli("jwks", str(tmp_path / "rs256.pem"), "--add", "x.json")
    assert run.exit_code == 2 and "name slurmctld's JWKS file with --file" in run.output


def test_cli_default_file_is_slurm_conf_jwks(tmp_path, keys):
    conf, path = tmp_path / "slurm.conf", tmp_path / "ctl-jwks.json"
    conf.write_text(f"AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key=/k,jwks={path}\n")
    run = CliRunner().invoke(main, ["jwks", "--add", "-"], input=doc(entry(keys[0], "n1")),
                             env={"SLURMJWT_CONFIG": "/nonexistent", "SLURM_CONF": str(conf)})
    assert run.exit_code == 0, run.output
    assert [e["kid"] for e in json.loads(path.read_text())["keys"]] == ["n1"]
    conf.write_text("AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key=/k\n")
    run = CliRunner().invoke(main, ["jwks", "--list"],
                             env={"SLURMJWT_CONFIG": "/nonexistent", "SLURM_CONF": str(conf)})
    assert run.exit_code == 2 and "has no jwks=" in run.output


def test_cli_prints_the_node_entry_and_refuses_a_kid_add_would_refuse(tmp_path, keys):
    pem = tmp_path / "rs256.pem"
    pem.write_bytes(keys[0].private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    printed = cli("jwks", str(pem), "--kid", "login01")
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == {"keys": [entry(keys[0], "login01")]}
    # what it prints is what --add takes
    assert jwks.parse_input(printed.output.encode(), "out")[0].entry == entry(keys[0], "login01")
    bad = cli("jwks", str(pem), "--kid", "login 01")
    assert bad.exit_code == 2 and "is not 1 to 128" in bad.output


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_jwks_path_that_is_no_regular_file_is_refused_without_hanging(tmp_path, keys, kind):
    path = tmp_path / "jwks.json"
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    with pytest.raises(JwksError, match="not a regular file"):
        jwks.update(str(path), adding(keys, 0, "a"), [])
