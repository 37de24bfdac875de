"""What the shell integration's prompt hook costs per prompt, in bash, zsh and tcsh.

Issue 12: a shell picks the fresh token up from $SLURMJWT_TOKEN_FILE at the prompt, with no
socket round trip and no new process while nothing changed, in under 1 ms per prompt. Each
shell sources shell/slurmjwt.sh (or .csh) from this checkout and runs the hook the prompt runs
(bash and zsh: `_slurmjwt_prompt`; tcsh: the precmd alias's `eval $_sjwt_pc:q`) N times in a
loop, and the same loop once more with a builtin in its place; the difference divided by N is
the hook's cost per prompt (medians over the rounds). Under strace, the processes the hook
starts (clone, fork, vfork) are counted: with a fifth of the prompts, less with a tenth. Rows:

- off: SLURMJWT_FOLLOW_FILE=0, no autorenewal (the hook's floor);
- unchanged: the file holds a token, its modification time a minute ago, nothing changes;
- changed: every prompt sees another file (the loop switches SLURMJWT_TOKEN_FILE between two,
  which costs no process), the worst case, as if the daemon replaced it before every prompt
  (N/10 prompts).

No daemon is needed; the tokens are dummies of a JWT's shape. Any user can run it:

    /opt/slurmjwt/venv/bin/python bench/prompt.py [--prompts N] [--rounds R]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SH_FILE = HERE.parent / "shell" / "slurmjwt.sh"
CSH_FILE = HERE.parent / "shell" / "slurmjwt.csh"
SHELLS = {"bash": "/bin/bash", "zsh": "/usr/bin/zsh", "tcsh": "/usr/bin/tcsh"}
FLAGS = {"bash": ["--norc", "--noprofile"], "zsh": ["-f"], "tcsh": ["-f"]}  # no startup files
GOAL_US = 1000  # the issue: under 1 ms per prompt


def dummy_token(mark: str) -> str:
    """A JWT's shape and an RS256 token's length (about 540 bytes, the longest a signer makes:
    zsh's `read` would cost a system call per byte), signed by nobody; MARK ends its signature."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")
    header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "login1"}).encode())
    claims = b64(json.dumps({"iat": 1700000000, "exp": 1700003600, "sun": "sjt-alice",
                             "jti": "0123456789abcdef0123456789abcdef"}).encode())
    signature = b64(bytes(256))
    return f"{header}.{claims}.{signature[:-len(mark)]}{mark}"


# The loops: {hook} N times with the file {one}; for `changed`, {switch} alternates {one} and {two}.
SH_LOOP = """. {file}
export SLURM_JWT={token} SLURMJWT_TOKEN_FILE={one} SLURMJWT_FOLLOW_FILE={follow}
i=0
while [ $i -lt {n} ]; do
    {switch}
    {hook}
    i=$((i + 1))
done
"""
SH_SWITCH = ('if [ $((i % 2)) -eq 0 ]; then SLURMJWT_TOKEN_FILE={one}; '
             'else SLURMJWT_TOKEN_FILE={two}; fi')
CSH_LOOP = """set prompt = 'bench> '
source {file}
setenv SLURM_JWT {token}
setenv SLURMJWT_TOKEN_FILE {one}
setenv SLURMJWT_FOLLOW_FILE {follow}
@ i = 0
while ($i < {n})
    {switch}
    {hook}
    @ i++
end
"""
CSH_SWITCH = ('@ _b = $i % 2\n    if ($_b == 0) setenv SLURMJWT_TOKEN_FILE {one}\n'
              '    if ($_b == 1) setenv SLURMJWT_TOKEN_FILE {two}')


def script(shell: str, case: str, hook: bool, n: int, one: Path, two: Path) -> str:
    csh = shell == "tcsh"
    switch = (CSH_SWITCH if csh else SH_SWITCH).format(one=one, two=two) if case == "changed" else ""
    if csh:
        body = "eval $_sjwt_pc:q" if hook else "set _b = 0"
    else:
        body = "_slurmjwt_prompt" if hook else ":"
    return (CSH_LOOP if csh else SH_LOOP).format(
        file=CSH_FILE if csh else SH_FILE, token=dummy_token("variable"), one=one,
        follow=0 if case == "off" else 1, n=n, switch=switch, hook=body)


def run(shell: str, text: str, trace: Path | None = None, strace: str = "strace") -> float:
    """Seconds the shell took to run TEXT (from a file: tcsh -c cannot hold a loop)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as fh:
        fh.write(text)
    args = [SHELLS[shell], *FLAGS[shell], fh.name]
    if trace:
        args = [strace, "-f", "-qq", "-o", str(trace),
                "-e", "trace=clone,clone3,fork,vfork,execve", *args]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8",  # as a login's
           "SLURMJWT_AUTORENEW": "0"}
    try:
        started = time.perf_counter()
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
    finally:
        os.unlink(fh.name)
    if done.returncode != 0 or done.stderr:
        raise SystemExit(f"{shell}: exit {done.returncode}: {done.stderr.strip()[:500]}")
    return elapsed


def processes(shell: str, case: str, n: int, one: Path, two: Path, tmp: Path,
              strace: str) -> float:
    """Processes started per prompt (clone, fork, vfork; an exec starts none): strace's count
    with 2N prompts minus with N, over N (so that tcsh's first read of the file, once per
    shell, does not count)."""
    counts = []
    for prompts in (2 * n, n):
        trace = tmp / "trace"
        run(shell, script(shell, case, True, prompts, one, two), trace, strace)
        counts.append(sum(1 for line in trace.read_text().splitlines()
                          if re.match(r"\d+ +(clone3?|fork|vfork)\(", line)))
    return (counts[0] - counts[1]) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2000, help="hook calls per run [2000]")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each loop [3]")
    args = parser.parse_args()
    n = args.prompts
    strace = shutil.which("strace")
    print(f"per prompt, median of {args.rounds} runs of {n} prompts; processes counted by "
          + ("strace" if strace else "nothing (no strace)"))
    print(f"{'shell':6} {'case':10} {'us/prompt':>10} {'range':>14} {'processes/prompt':>17}")
    worst, spawned = 0.0, 0.0  # while nothing changed
    with tempfile.TemporaryDirectory(prefix="sjwt-prompt-") as tmp_name:
        tmp = Path(tmp_name)
        one, two = tmp / "token", tmp / "token2"
        one.write_text(dummy_token("one") + "\n")
        two.write_text(dummy_token("two") + "\n")
        past = time.time() - 60  # as the daemon's file is between renewals
        for path in (one, two):
            os.utime(path, (past, past))
        for shell in SHELLS:
            if not os.access(SHELLS[shell], os.X_OK):
                print(f"{shell:6} missing")
                continue
            for case in ("off", "unchanged", "changed"):
                prompts = n if case != "changed" else max(1, n // 10)  # tcsh: 5 ms each
                per = []
                for _ in range(args.rounds):
                    with_hook = run(shell, script(shell, case, True, prompts, one, two))
                    without = run(shell, script(shell, case, False, prompts, one, two))
                    per.append((with_hook - without) / prompts * 1e6)
                procs = (processes(shell, case, max(1, prompts // 10), one, two, tmp, strace)
                         if strace else None)
                med = statistics.median(per)
                if case != "changed":
                    worst, spawned = max(worst, med), max(spawned, procs or 0.0)
                shown = "-" if procs is None else f"{procs:.2f}"
                print(f"{shell:6} {case:10} {med:10.1f} {min(per):6.1f}-{max(per):<7.1f} {shown:>17}")
    verdict = "met" if worst < GOAL_US and spawned == 0 else "NOT met"
    print(f"goal: under {GOAL_US} us and no process per prompt while nothing changed: {verdict} "
          f"(worst {worst:.1f} us, {spawned:.2f} processes"
          f"{'' if strace else ', not counted: no strace'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
