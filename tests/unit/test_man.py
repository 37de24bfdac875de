"""The man pages (man/, tools/mkman.py) and shell completion scripts (completion/,
tools/mkcompletion.py): current with their one source, rendered by groff without a warning, and
completing through the CLI itself in bash and zsh."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from slurmjwtd import cli
from slurmjwtd.config import describe_keys

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("slurmjwt.1", "slurmjwtd.8", "pam_slurmjwt.8", "slurmjwtd.toml.5")
PYTHON = "/usr/bin/python3"  # Debian's, as `make man` and the installed CLI use


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kwargs)


@pytest.mark.parametrize("tool", ["mkman.py", "mkcompletion.py"])
def test_the_generated_files_are_current(tool):
    result = run(PYTHON, "-I", str(ROOT / "tools" / tool), "--check")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("page", PAGES)
def test_groff_renders_each_page_without_a_warning(page):
    result = run("groff", "-ww", "-man", "-z", str(ROOT / "man" / page))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    if shutil.which("man") is None:  # man-db: not on a minimal Debian; groff alone is the check
        return
    shown = run("man", "--warnings", "-l", str(ROOT / "man" / page),
                env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MANPAGER": "cat"})
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert "\\f" not in shown.stdout and "\\e" not in shown.stdout  # no escape left unconverted


def test_slurmjwt_1_has_every_command_and_option():
    page = (ROOT / "man" / "slurmjwt.1").read_text()
    for name, command in cli.main.commands.items():
        assert f".SS {name}\n" in page
        for param in command.params:
            for opt in param.opts if isinstance(param, cli.click.Option) else ():
                assert opt.replace("-", "\\-") in page, (name, opt)
    # docs/cli.md's sections
    assert '.SH "OUTPUT, ERRORS AND EXIT STATUS"' in page and '.SH "MONITORING"' in page


def test_the_configuration_docs_name_every_key_and_no_other():
    """slurmjwtd.toml(5) is docs/configuration.md: its tables must list config.describe_keys."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    documented = set()
    for row in re.findall(r"(?m)^\| (`[a-z0-9_]+`(?:, `[a-z0-9_]+`)*) \|", text):
        documented |= set(re.findall(r"`([a-z0-9_]+)`", row))
    assert documented == {name for name, *_ in describe_keys()}


# -- completion ---------------------------------------------------------------------------------
@pytest.fixture
def on_path(tmp_path) -> dict[str, str]:
    """PATH with a `slurmjwt` that runs this checkout's CLI on Debian's python3."""
    wrapper = tmp_path / "slurmjwt"
    wrapper.write_text(f"#!/bin/sh\nexec {PYTHON} -I -c 'import sys; sys.path.insert(0, \"{ROOT}\"); "
                       f"from slurmjwtd.cli import main; main(prog_name=\"slurmjwt\")' \"$@\"\n")
    wrapper.chmod(0o755)
    return {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}


def bash_complete(env: dict[str, str], *words: str) -> list[str]:
    """What bash offers for WORDS (the last one is being completed), through the installed
    script's function, as bash's programmable completion calls it."""
    script = (f"source {ROOT}/completion/slurmjwt.bash; complete -p slurmjwt >&2; "
              f"COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}; "
              f"_slurmjwt_completion slurmjwt; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    result = run("bash", "--norc", "--noprofile", "-c", script, env=env)
    assert result.returncode == 0 and "-F _slurmjwt_completion slurmjwt" in result.stderr, result.stderr
    return result.stdout.split()


def test_bash_completes_commands_and_options(on_path):
    assert bash_complete(on_path, "slurmjwt", "st") == ["status"]
    assert set(bash_complete(on_path, "slurmjwt", "")) >= {"status", "metrics", "token", "doctor"}
    assert bash_complete(on_path, "slurmjwt", "status", "--") == ["--json", "--help"]
    assert bash_complete(on_path, "slurmjwt", "doctor", "--j") == ["--json"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="no zsh")
def test_zsh_completes_from_vendor_completions(on_path):
    """From fpath, as Debian's zsh loads share/zsh/vendor-completions: autoloaded as _slurmjwt,
    each call completes (compadd and _describe stand in for compsys', printing what they get)."""
    script = (f"fpath=({ROOT}/completion $fpath); autoload -U _slurmjwt; "
              "_describe() { print -rl -- ${(P)3}; }; compadd() { print -rl -- ${(P)${@[-1]}}; }; "
              "words=(slurmjwt st); CURRENT=2; _slurmjwt; print -- ---; "
              "words=(slurmjwt status --); CURRENT=3; _slurmjwt")
    result = run("zsh", "-f", "-c", script, env=on_path)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("---\n")
    assert [x.split(":")[0] for x in first.splitlines() if x] == ["status"]
    assert [x.split(":")[0] for x in second.splitlines() if x] == ["--json", "--help"]
