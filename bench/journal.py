"""The tokens section as a login node runs it: slurmjwtd as its systemd unit, its audit lines in
the journal (one native-protocol datagram each, with its SLURMJWT_* fields), against munged in the same
run. A benchmark, not a test.

It boots systemd as PID 1 in new namespaces (tests/pid1.py: overlays, the host's files are not
written), installs this checkout's Debian package in it (`make deb`, lintian off), gives the
daemon a fresh key and no rate limit, makes a user `sjwt-bench` with a login (a session led
by a transient unit that lives through the bench), and then, in turn, with 1 and 8 client
threads and a new connection per operation:

- loadgen inside the machine as that user, on the unit's public socket /run/slurmjwt/slurmjwtd.sock:
  the user's own MINT, which the fast path answers (bench.py's `slurmjwtd` row);
- remunge on the host, on a throwaway munged (bench.py's).

CPU is utime+stime of all threads (10 ms ticks), of slurmjwtd and, apart, of systemd-journald,
which stores each audit line: the daemon's cost and the cost it puts on the journal. munged
writes no line per credential. At the end it counts the journal's `op=mint` entries: every
token has its line (the unit sets LogRateLimitIntervalSec=0), or the figures would flatter.

    /opt/slurmjwt/venv/bin/python bench/journal.py [--count N] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (bench.py: munged, remunge, loadgen's output, the table)
from pid1 import Pid1  # noqa: E402

UNIT = "slurmjwtd.service"
ROOT_SOCKET = "/run/slurmjwt/slurmjwtd-root.sock"
SOCKET = "/run/slurmjwt/slurmjwtd.sock"
LOADGEN = "/usr/local/bin/sjwt-loadgen"  # copied in: the user may not reach the checkout
# a login of the bench user: OPEN on the root socket, then live as its leader until stopped
LEADER = f"""
import socket, time
s = socket.socket(socket.AF_UNIX)
s.connect("{ROOT_SOCKET}")
s.sendall(b"SJWT/1 OPEN user={bench.BENCH_USER} tty=bench service=bench\\n")
assert s.recv(4096).startswith(b"SJWT/1 OK")
s.close()
time.sleep(86400)
"""
STATUS = (f"import socket; s = socket.socket(socket.AF_UNIX); s.connect('{SOCKET}'); "
          f"s.sendall(b'SJWT/1 STATUS\\n'); print(s.recv(4096).decode())")
KEY = "/var/lib/slurm/jwt_hs256.key"
# journald's cost per line whoever writes it: N lines of a fast-path grant, from a transient unit,
# the daemon's way (JournalAuditLog: MESSAGE and the SLURMJWT_* fields, one datagram each), as
# MESSAGE alone (the least a native entry can be), and as a line on stdout (journald's stream:
# no fields, so no `slurmjwt audit` journal matches, no rsyslog selection on them)
FLOOR = """
import sys
sys.path.insert(0, "/usr/lib/slurmjwt")
from slurmjwtd.audit import JournalAuditLog, format_audit
how, n = sys.argv[1], int(sys.argv[2])
log = JournalAuditLog()
from systemd.journal import sendv
for i in range(n):
    fields = dict(decision="granted", op="mint", caller_uid=1001, caller_pid=4000 + i % 30000,
                  user="alice", uid=1001, reason="own-session", rule="default", lifetime=3600,
                  exp=1800000000 + i, jti="%s%015x" % (how[0], i))
    if how == "fields":
        log(**fields)
    elif how == "message":
        sendv("MESSAGE=" + format_audit({**fields, "node": log.node}), "PRIORITY=6",
              "SYSLOG_IDENTIFIER=slurmjwtd")
    else:
        sys.stdout.write(format_audit({**fields, "node": log.node}) + "\\n")
"""
FLOOR_WAYS = {"fields": "the daemon's entry (MESSAGE + SLURMJWT_* fields)",
              "message": "MESSAGE alone (no fields)",
              "stream": "a stdout line (journald's stream, no fields)"}


def build_deb(tmp: Path) -> Path:
    """This checkout's package, built under TMP (lintian off: test_deb.py runs it)."""
    result = subprocess.run(["make", "-s", "-C", str(HERE.parent), "deb", "LINTIAN=",
                             f"DEB_BUILDDIR={tmp}/deb"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"make deb failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    deb = next(HERE.parent.glob("slurmjwt_*.deb"))
    return Path(shutil.move(deb, tmp / deb.name))


def cpu_inside(sd: Pid1, pid: str) -> float:
    """utime + stime (seconds) of PID, a process of the machine (its own PID namespace)."""
    data = sd.run("cat", f"/proc/{pid}/stat").stdout
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / bench.CLK_TCK


def loadgen_inside(sd: Pid1, count: int, threads: int) -> dict[str, float]:
    daemon = sd.show(UNIT, "MainPID")["MainPID"]
    journald = sd.show("systemd-journald.service", "MainPID")["MainPID"]
    before = cpu_inside(sd, daemon), cpu_inside(sd, journald)
    out = sd.run("setpriv", f"--reuid={bench.BENCH_USER}", f"--regid={bench.BENCH_USER}",
                 "--clear-groups", LOADGEN, "-S", SOCKET, "-n", str(count), "-t", str(threads),
                 timeout=600).stdout
    after = cpu_inside(sd, daemon), cpu_inside(sd, journald)
    fields = {k: float(v) for k, v in (w.split("=", 1) for w in out.strip().splitlines()[-1].split())}
    ops = fields["tokens"]
    return {"ops": ops, "rate": fields["rate"], "cpu_us": (after[0] - before[0]) * 1e6 / ops,
            "journald_us": (after[1] - before[1]) * 1e6 / ops,
            "p50_us": fields["p50_us"], "p99_us": fields["p99_us"]}


def journald_floor(sd: Pid1, count: int) -> dict[str, float]:
    """journald's CPU per line (us), for each of FLOOR_WAYS, COUNT lines from a transient unit."""
    journald = sd.show("systemd-journald.service", "MainPID")["MainPID"]
    sd.write("/run/sjwt-floor.py", FLOOR)
    out = {}
    for how in FLOOR_WAYS:
        before = cpu_inside(sd, journald)
        sd.run("systemd-run", "--wait", "--quiet", "--unit=sjwt-bench-floor", "/usr/bin/python3",
               "/run/sjwt-floor.py", how, str(count), timeout=600)
        last = f"jti={how[0]}{count - 1:015x}"  # stored: journald has done its work
        deadline = time.monotonic() + 30
        while last not in sd.sh("journalctl _SYSTEMD_UNIT=sjwt-bench-floor.service -n 1 "
                                "-o cat").stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"journald did not store the {how} lines")
            time.sleep(0.2)
        out[how] = (cpu_inside(sd, journald) - before) * 1e6 / count
    return out


def journal_lines(sd: Pid1, expected: int, settle: float = 3.0) -> int:
    """The journal's op=mint entries of the unit, once there are EXPECTED or the count has not
    grown for SETTLE seconds (journald stores what the daemon sent a moment later)."""
    count, last_change = -1, time.monotonic()
    while True:
        now = int(sd.sh(f"journalctl -u {UNIT} -o cat SLURMJWT_OP=mint | wc -l").stdout)
        if now != count:
            count, last_change = now, time.monotonic()
        if count >= expected or time.monotonic() - last_change > settle:
            return count
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=30000, help="operations per run [30000]")
    parser.add_argument("--repeat", type=int, default=3, help="rounds [3]")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("journal.py: run as root (it boots a systemd in namespaces, starts munged)",
              file=sys.stderr)
        return 2
    subprocess.run(["make", "-s", "-C", str(HERE), "all"], check=True)  # loadgen
    tmp = Path(tempfile.mkdtemp(prefix="sjwt-bench-journal-", dir=bench.runtime_dir()))
    os.chmod(tmp, 0o755)
    munged = None
    try:
        deb = build_deb(tmp)
        munged, msock = bench.start_munged(tmp)
        with Pid1() as sd:
            sd.install_deb(deb)
            sd.sh(f"install -d -m 0755 /var/lib/slurm && head -c 32 /dev/urandom > {KEY} && "
                  f"chown slurm:slurmjwt {KEY} && chmod 0640 {KEY}")
            sd.write("/etc/slurmjwt/slurmjwtd.toml", "rate_limit = 0\n")
            sd.run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", bench.BENCH_USER)
            sd.copy_in(Path(bench.LOADGEN), LOADGEN)
            # room for every line (the default, 10 % of the machine's small /run, would rotate
            # the first ones away and the count below would miss them); and no rate limit:
            # the unit's LogRateLimitIntervalSec=0 reaches journald through a cgroup xattr,
            # which this machine's cgroup v1 hierarchy does not carry, so journald applied its
            # default burst (10,000 per 30 s, scaled by free space: 32,500) and dropped the rest
            sd.write("/etc/systemd/journald.conf.d/bench.conf",
                     "[Journal]\nRuntimeMaxUse=1G\nRateLimitIntervalSec=0\n")
            sd.systemctl("restart", "systemd-journald.service")
            sd.systemctl("start", UNIT)  # as the first connection would
            sd.run("systemd-run", "--unit=sjwt-bench-login", "/usr/bin/python3", "-c", LEADER)
            deadline = time.monotonic() + 10
            while " sessions=1 " not in sd.run("/usr/bin/python3", "-c", STATUS).stdout:
                if time.monotonic() > deadline:
                    raise RuntimeError("the bench user's login did not open")
                time.sleep(0.1)
            runners = {"slurmjwtd": lambda n, t: loadgen_inside(sd, n, t),
                       "munged": lambda n, t: bench.remunge(munged.pid, msock, n, t)}
            print(f"tokens under systemd 252 as PID 1 (namespaces): slurmjwtd as its unit, audit "
                  f"to the journal; {args.count} operations per run, {args.repeat} round(s), "
                  f"one connection per operation; load average {os.getloadavg()[0]:.2f}\n")
            results = bench.run_rounds(runners, bench.THREADS, args.count, args.repeat)
            bench.report(results)
            for threads in bench.THREADS:
                journald = statistics.median(r["journald_us"] for r in results[("slurmjwtd", threads)])
                print(f"systemd-journald's CPU per token, {threads} client thread(s): "
                      f"{journald:.0f} us (munged writes no line per credential)")
            minted = min(args.count, bench.WARM_UP) + sum(
                r["ops"] for threads in bench.THREADS for r in results[("slurmjwtd", threads)])
            lines = journal_lines(sd, int(minted))
            print(f"journal: {lines} op=mint entries for {minted:.0f} tokens minted\n")
            floor = [journald_floor(sd, args.count) for _ in range(args.repeat)]
            print(f"systemd-journald's CPU per line, {args.count} lines of a grant from a "
                  f"transient unit, median of {args.repeat}:")
            for how, what in FLOOR_WAYS.items():
                print(f"  {what:<52} {statistics.median(f[how] for f in floor):>5.1f} us")
            # at 8 clients the machine is CPU-bound: a token costs it CPUS / rate, of which
            # journald's line is a part; what a line may cost for slurmjwtd to reach munged's rate
            cpus, top = os.cpu_count() or 1, max(bench.THREADS)
            ours = statistics.median(r["rate"] for r in results[("slurmjwtd", top)])
            theirs = statistics.median(r["rate"] for r in results[("munged", top)])
            journald = statistics.median(r["journald_us"] for r in results[("slurmjwtd", top)])
            room = cpus * 1e6 / theirs - (cpus * 1e6 / ours - journald)
            print(f"at {top} clients a token costs this machine {cpus * 1e6 / ours:.0f} us "
                  f"({journald:.0f} of them journald's), a credential {cpus * 1e6 / theirs:.0f} "
                  f"us: munged's rate needs a journal line of at most {room:.0f} us")
        return 0
    finally:
        bench.stop(munged)
        subprocess.run(["rm", "-rf", str(tmp)])


if __name__ == "__main__":
    sys.exit(main())
