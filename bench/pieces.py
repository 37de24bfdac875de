"""The hand-written pieces against the library calls they stand in for, in one process.

Each row is a piece slurmjwtd or the CLI writes by hand, timed beside the library call that
does the same job, so that the comment beside each piece can name a figure (issue 11: keep a
hand-written piece only where it matters). Any user can run it:

    /opt/slurmjwt/venv/bin/python bench/pieces.py [--number N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import timeit
import urllib.parse

from slurmjwtd import protocol
from slurmjwtd.signer import HS256Signer, claims_json, unverified_claims

KEY = b"k" * 32
NOW = 1_700_000_000


def per_call_us(func, number: int) -> float:
    """Median over 5 rounds of NUMBER calls, in microseconds per call."""
    return statistics.median(timeit.repeat(func, number=number, repeat=5)) / number * 1e6


def import_cost(module: str) -> tuple[float, float]:
    """(ms, MiB) that importing MODULE adds to a fresh interpreter that has slurmjwtd.signer
    loaded: the median wall time of 5 runs, and the peak RSS added (VmHWM: getrusage's maxrss
    would carry this process's peak across fork and exec)."""
    code = ("import re, time, slurmjwtd.signer\n"
            "hwm = lambda: int(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read())[1])\n"
            "r0 = hwm(); t0 = time.perf_counter()\n"
            f"import {module}\n"
            "print(time.perf_counter() - t0, hwm() - r0)")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(5)]
    return (statistics.median(float(r[0]) for r in runs) * 1000,
            statistics.median(int(r[1]) for r in runs) / 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per round [20000]")
    number = parser.parse_args().number
    import jwt  # the library side (import_cost measures its import in a fresh interpreter)

    signer = HS256Signer(KEY)
    token = signer.mint("sjt-alice", 600, NOW).jwt
    claims = {"iat": NOW, "exp": NOW + 600, "sun": "sjt-alice", "jti": "0123456789abcdef"}
    safe = protocol._QUOTE_SAFE
    rows = [
        ("protocol.quote, a name (no escape)", lambda: protocol.quote("sjt-alice"),
         "urllib.parse.quote", lambda: urllib.parse.quote("sjt-alice", safe=safe)),
        ("protocol.quote, 'host name é'", lambda: protocol.quote("host name é"),
         "urllib.parse.quote", lambda: urllib.parse.quote("host name é", safe=safe)),
        ("HS256Signer.mint (hmac, claims template)", lambda: signer.mint("sjt-alice", 600, NOW),
         "jwt.encode", lambda: jwt.encode(claims, KEY, algorithm="HS256")),
        ("signer.claims_json (template)", lambda: claims_json("sjt-alice", NOW, NOW + 600, "0" * 16),
         "json.dumps", lambda: json.dumps(claims, separators=(",", ":")).encode()),
        ("signer.unverified_claims", lambda: unverified_claims(token),
         "jwt.decode(verify_signature=False)",
         lambda: jwt.decode(token, options={"verify_signature": False})),
    ]
    print(f"pieces: hand-written piece against the library call, us per call (median of 5 x "
          f"{number}); Python {sys.version.split()[0]}, PyJWT {jwt.__version__}\n")
    print(f"{'piece':<42} {'us':>6}   {'library call':<36} {'us':>6} {'ours/lib':>8}")
    for name, ours, lib_name, lib in rows:
        a, b = per_call_us(ours, number), per_call_us(lib, number)
        print(f"{name:<42} {a:>6.2f}   {lib_name:<36} {b:>6.2f} {a / b:>7.2f}x")
    ms, mib = import_cost("jwt")
    print(f"\nimport jwt (pyjwt and cryptography) after slurmjwtd.signer: +{ms:.0f} ms, "
          f"+{mib:.1f} MiB peak RSS (what unverified_claims spares `slurmjwt show` and a daemon "
          f"with the hs256 or scontrol signer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
