"""Benchmark slurmjwtd against munged on this machine. A benchmark, not a test.

Starts a throwaway slurmjwtd (own socket, key, session file; min_uid = 0 so root
mints for root) and a throwaway munged (own socket and key, run as the munge user;
the system's munged is not touched). Drives slurmjwtd with bench/loadgen (the PAM
module's C client, one connection per token) and munged with remunge (one
connection per credential), each with 1 and 8 client threads, and reports
throughput and the daemon's CPU time per operation (utime+stime of all its threads,
from /proc/PID/stat). Everything started is stopped by PID and removed afterwards.

    /opt/slurmjwt/venv/bin/python bench/bench.py [--count N] [--repeat R] [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SLURMJWT_VENV", "/opt/slurmjwt/venv"))
SLURMJWTD = str(VENV / "bin" / "slurmjwtd")
LOADGEN = str(HERE / "loadgen")
MUNGED = shutil.which("munged") or "/usr/sbin/munged"
REMUNGE = shutil.which("remunge") or "/usr/bin/remunge"
CLK_TCK = os.sysconf("SC_CLK_TCK")
THREADS = (1, 8)

# Runs slurmjwtd's own entry point under cProfile; cProfile.run swallows the SystemExit.
PROFILED_DAEMON = """
import cProfile, sys
from slurmjwtd.main import main
config, out = sys.argv[1:3]
sys.argv = ["slurmjwtd", "--config", config]
cProfile.run("main()", out)
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of PID, all threads, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    fields = data[data.rindex(b")") + 2:].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_socket(path: str, proc: subprocess.Popen, probe: bytes | None, what: str,
                    log: Path) -> None:
    """Until PATH accepts a connection (and answers PROBE with an OK line, if given)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{what} exited with status {proc.returncode}; its log:\n{tail}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(path)
                if probe is None or (s.sendall(probe) or s.recv(4096)).startswith(b"SJWT/1 OK"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer on {path} within 20 s")


def run_measured(pid: int, argv: list[str]) -> tuple[str, float]:
    """Run ARGV to completion; return its stdout and the CPU seconds PID spent meanwhile."""
    before = cpu_seconds(pid)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    spent = cpu_seconds(pid) - before
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return result.stdout, spent


def loadgen(pid: int, sock: str, count: int, threads: int) -> dict[str, float]:
    out, cpu = run_measured(pid, [LOADGEN, "-S", sock, "-n", str(count), "-t", str(threads)])
    line = out.strip().splitlines()[-1]
    fields = {k: float(v) for k, v in (w.split("=", 1) for w in line.split())}
    return {"ops": fields["tokens"], "rate": fields["rate"], "cpu_us": cpu * 1e6 / fields["tokens"],
            "p50_us": fields["p50_us"], "p99_us": fields["p99_us"]}


def remunge(pid: int, sock: str, count: int, threads: int) -> dict[str, float]:
    out, cpu = run_measured(pid, [REMUNGE, "-S", sock, "-T", str(threads), "-N", str(count)])
    m = re.search(r"Processed (\d+) credentials? in ([\d.]+)s \(([\d.]+) creds/sec\)", out)
    if m is None:
        raise RuntimeError(f"cannot parse remunge output: {out!r}")
    ops = int(m.group(1))
    return {"ops": ops, "rate": float(m.group(3)), "cpu_us": cpu * 1e6 / ops}


def start_slurmjwtd(tmp: Path, profile_out: Path | None = None) -> tuple[subprocess.Popen, str]:
    d = tmp / "slurmjwtd"
    d.mkdir(mode=0o700)
    key = d / "jwt_hs256.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    sock = str(d / "sock")
    config = d / "slurmjwtd.toml"
    config.write_text(f'socket = "{sock}"\nsession_file = "{d}/sessions.json"\n'
                      f'key_file = "{key}"\nmin_uid = 0\n')
    argv = ([str(VENV / "bin" / "python"), "-c", PROFILED_DAEMON, str(config), str(profile_out)]
            if profile_out else [SLURMJWTD, "--config", str(config)])
    # stderr (the audit log, one line per token) goes to a file, as journald would take it;
    # cwd=d, so that `python -c` imports the installed slurmjwtd, not a source tree in the cwd
    with open(d / "slurmjwtd.log", "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=d)
    try:
        wait_for_socket(sock, proc, b"SJWT/1 STATUS\n", "slurmjwtd", d / "slurmjwtd.log")
    except BaseException:
        stop(proc)
        raise
    return proc, sock


def start_munged(tmp: Path) -> tuple[subprocess.Popen, str]:
    d = tmp / "munge"
    d.mkdir(mode=0o755)  # munged wants its socket directory searchable by all
    key = d / "munge.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(1024))
    os.close(fd)
    shutil.chown(d, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    sock = str(d / "munge.sock")
    argv = [MUNGED, "--foreground", f"--socket={sock}", f"--key-file={key}",
            f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"]
    with open(d / "munged.stderr", "wb") as log:  # Popen's pid is munged's own: no runuser
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                user="munge", group="munge", extra_groups=[])
    try:
        wait_for_socket(sock, proc, None, "munged", d / "munged.stderr")
    except BaseException:
        stop(proc)
        raise
    return proc, sock


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median of each figure over the runs, and the range of rates."""
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["rate_lo"], out["rate_hi"] = min(r["rate"] for r in runs), max(r["rate"] for r in runs)
    return out


def report(results: dict[tuple[str, int], list[dict[str, float]]]) -> None:
    table = {key: summarize(runs) for key, runs in results.items()}
    print(f"{'daemon':<10} {'clients':>7} {'rate/s':>8} {'(min-max)':>15} {'CPU us/op':>10} "
          f"{'p50 us':>7} {'p99 us':>7}")
    for (daemon, threads), r in sorted(table.items(), key=lambda kv: (kv[0][0] != "slurmjwtd", kv[0][1])):
        spread = f"{fmt(r['rate_lo'])}-{fmt(r['rate_hi'])}"
        print(f"{daemon:<10} {threads:>7} {fmt(r['rate']):>8} {spread:>15} {fmt(r['cpu_us']):>10} "
              f"{fmt(r.get('p50_us')):>7} {fmt(r.get('p99_us')):>7}")
    print()
    for threads in THREADS:
        s, m = table.get(("slurmjwtd", threads)), table.get(("munged", threads))
        if s and m:
            print(f"slurmjwtd/munged, {threads} client thread(s): rate x{s['rate'] / m['rate']:.2f}, "
                  f"daemon CPU per op x{s['cpu_us'] / m['cpu_us']:.2f}")


def profile(tmp: Path, count: int) -> None:
    """Run slurmjwtd under cProfile for COUNT single-client tokens; print the top functions."""
    out = tmp / "slurmjwtd.prof"
    proc, sock = start_slurmjwtd(tmp, out)
    try:
        r = loadgen(proc.pid, sock, count, 1)
    finally:
        stop(proc)
    print(f"slurmjwtd under cProfile (slows it down; compare shares, not absolutes): "
          f"{r['rate']:,.0f} tokens/s, {r['cpu_us']:.0f} us CPU/token\n")
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30000, help="operations per run [30000]")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds; the table shows medians [3, or 1 with --quick]")
    parser.add_argument("--quick", action="store_true", help="3000 operations per run, 1 round")
    parser.add_argument("--skip-munged", action="store_true", help="measure slurmjwtd only")
    parser.add_argument("--profile", action="store_true",
                        help="instead: run slurmjwtd under cProfile with 1 client; print the top")
    args = parser.parse_args()
    count, repeat = (3000, 1) if args.quick else (args.count, args.repeat)
    if count < 1 or repeat < 1:
        parser.error("--count and --repeat must be 1 or more")
    if os.geteuid() != 0:
        print("bench.py: run as root (it starts munged as the munge user)", file=sys.stderr)
        return 2
    subprocess.run(["make", "-s", "-C", str(HERE), "loadgen"], check=True)

    tmp = Path(tempfile.mkdtemp(prefix="sjwt-bench-"))
    os.chmod(tmp, 0o755)  # munged (as munge) must reach its directory inside
    procs: list[subprocess.Popen] = []
    try:
        if args.profile:
            profile(tmp, count)
            return 0
        runners = {}
        jwt, sock = start_slurmjwtd(tmp)
        procs.append(jwt)
        runners["slurmjwtd"] = lambda n, t, pid=jwt.pid, sock=sock: loadgen(pid, sock, n, t)
        if not args.skip_munged:
            munge, msock = start_munged(tmp)
            procs.append(munge)
            runners["munged"] = lambda n, t, pid=munge.pid, sock=msock: remunge(pid, sock, n, t)
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
              f"{count} operations per run, {repeat} round(s), one connection per operation;\n"
              f"CPU is the daemon's utime+stime, all threads (clock tick {1000 / CLK_TCK:.0f} ms)\n")
        for run in runners.values():
            run(min(count, 2000), 1)  # warm-up
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for _ in range(repeat):  # interleaved, so that other load on the machine hits both alike
            for threads in THREADS:
                for name, run in runners.items():
                    results.setdefault((name, threads), []).append(run(count, threads))
        report(results)
        return 0
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
