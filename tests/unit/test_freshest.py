"""`slurmjwt headers`, `curl` and `show` use the fresher of the shell's variable and the token
file the daemon renews (by `exp`), in process: the CLI's own command through click's runner."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from slurmjwtd.cli import main
from slurmjwtd.signer import HS256Signer

def token(exp_in: int, user: str = "nobody") -> str:
    """A token expiring EXP_IN seconds from now (the test runs: not from collection)."""
    return HS256Signer(b"k" * 32).mint(user, 600, int(time.time()) + exp_in - 600).jwt


def headers(env: dict[str, str]) -> str:
    result = CliRunner().invoke(main, ["headers"], env={"SLURMJWT_CONFIG": "/nonexistent", **env})
    assert result.exit_code == 0, result.output
    return result.output.splitlines()[1].removeprefix("X-SLURM-USER-TOKEN: ")


@pytest.mark.parametrize("variable, file, wins", [
    (100, 500, "file"),      # the file was renewed since the login
    (500, 100, "variable"),  # slurmjwt refresh gave the shell a newer one
    (100, None, "variable"),  # no file (a login without one)
    (100, "garbled", "variable"),
    (None, 300, "file"),     # a program that never had the variable
], ids=["file-renewed", "refreshed", "no-file", "garbled-file", "no-variable"])
def test_the_fresher_token_is_used(tmp_path, variable, file, wins):
    env: dict[str, str] = {"SLURMJWT_TOKEN_FILE": str(tmp_path / "token")}
    tokens = {}
    if variable is not None:
        env["SLURM_JWT"] = tokens["variable"] = token(variable)
    if file == "garbled":
        (tmp_path / "token").write_text("not.a-token\n")
    elif file is not None:
        tokens["file"] = token(file)
        (tmp_path / "token").write_text(tokens["file"] + "\n")
    assert headers(env) == tokens[wins]


def test_a_site_named_variable_is_compared_too(tmp_path):
    older, newer = token(100), token(400)
    (tmp_path / "token").write_text(older + "\n")
    env = {"SLURMJWT_VARIABLE": "MY_JWT", "MY_JWT": newer, "SLURM_JWT": token(900),
           "SLURMJWT_TOKEN_FILE": str(tmp_path / "token")}
    assert headers(env) == newer
