"""slurmjwtd under a real systemd as PID 1 (tests/pid1.py boots one in new namespaces), with
the Debian package installed inside by apt-get: its maintainer scripts under systemd (install,
upgrade, remove), socket activation, Type=notify and its STATUS, reload, the watchdog,
Restart=, a clean stop with requests in flight, the journal's fields, the sandbox really in
effect and every request path working inside it, the scontrol signer's drop-in, and an SSH
login through sshd running as a unit of the same systemd.

The units used are the ones the package installs from systemd/; the tests add drop-ins
only where a test needs a different value (a 2-second watchdog instead of 30 s, and the
scontrol drop-in of docs/signers.md, taken from that file). No sandbox option is changed.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jwt
import pytest

from pid1 import Pid1

REPO = Path(__file__).resolve().parent.parent
UNIT = "slurmjwtd.service"
SOCKET = "/run/slurmjwt/slurmjwtd.sock"
ROOT_SOCKET = "/run/slurmjwt/slurmjwtd-root.sock"
CONFIG = "/etc/slurmjwt/slurmjwtd.toml"
KEY = "/var/lib/slurm/jwt_hs256.key"  # the default key_file
TESTLIB = "/usr/local/lib/slurmjwt-test"  # the tests' helpers, inside
DROPINS = "/run/systemd/system/slurmjwtd.service.d"  # runtime drop-ins, removed by each test
PY = ("/usr/bin/python3", "-I")  # Debian's, as the installed daemon and CLI use

# A client inside: one request, the answer as JSON (never the token in argv). With "--hold",
# it sends the request but its last byte only once a line arrives on stdin: a request in flight.
CALL = r"""
import json, socket, sys
sys.path.insert(0, "/usr/lib/slurmjwt")
from slurmjwtd.client import call
path, op, *args = sys.argv[1:]
hold = "--hold" in args
fields = dict(a.split("=", 1) for a in args if a != "--hold")
if not hold:
    a = call(path, op, fields)
    print(json.dumps({"ok": a.ok, "code": a.code, "message": a.message, "fields": a.fields}))
    sys.exit(0)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(path)
line = ("SJWT/1 " + op + "".join(" %s=%s" % kv for kv in fields.items()) + "\n").encode()
s.sendall(line[:-1])
print("sent", flush=True)
sys.stdin.readline()
s.sendall(line[-1:])
print(s.recv(4096).decode().strip(), flush=True)
"""

# A root process that OPENs a session and lives until told to CLOSE it: sshd's privileged
# child, as tests/leader.py is on the host
LEADER = "import sys\nsys.path.insert(0, '/usr/lib/slurmjwt')\n" + (
    REPO / "tests" / "leader.py").read_text()


# -- the machine ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def machine(users, packages):
    """One systemd for the module, the package installed (its postinst enables and starts the
    sockets), a key, the test helpers. Users are made on the host first: the overlays show
    them inside. At the end, the shutdown checks that nothing is left and that no host file in
    /etc, /usr or dpkg's database changed."""
    deb = packages.first().path
    sd = Pid1()
    sd.boot()
    try:
        sd.install_deb(deb)
        sd.sh(f"install -d -m 0755 /var/lib/slurm && head -c 32 /dev/urandom > {KEY} && "
              f"chown slurm:slurmjwt {KEY} && chmod 0640 {KEY}")
        sd.write(f"{TESTLIB}/call.py", CALL)
        sd.write(f"{TESTLIB}/leader.py", LEADER)
        yield sd
    finally:
        sd.shutdown()


@pytest.fixture
def sd(machine):
    """The machine with slurmjwtd stopped and its state gone (sessions, revocations, token
    files), the default configuration plus SETTINGS, and both sockets listening; any test
    drop-in removed after."""
    reset(machine)
    yield machine
    machine.run("rm", "-rf", DROPINS)
    machine.daemon_reload()
    machine.run("pkill", "-CONT", "-f", "slurmjwtd", check=False)  # a failed watchdog test
    reset(machine)


def reset(sd: Pid1, **settings: object) -> None:
    sd.systemctl("stop", UNIT)
    sd.systemctl("reset-failed", UNIT, check=False)
    sd.run("rm", "-rf", "/run/slurmjwt/sessions.json", "/var/lib/slurmjwt/revoked.json",
           "/var/lib/slurmjwt/revoked.json.lock")  # both: a lock without the file stops the daemon
    sd.sh("rm -rf /run/slurmjwt-tokens/*")
    configure(sd, **settings)
    sd.systemctl("start", "slurmjwtd.socket", "slurmjwtd-root.socket")


def configure(sd: Pid1, **settings: object) -> None:
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    sd.write(CONFIG, text)


def call(sd: Pid1, op: str, caller: str = "root", socket: str | None = None,
         **fields: object) -> dict:
    """One request from inside, as CALLER, on SOCKET (root's for root, else the public one)."""
    socket = socket or (ROOT_SOCKET if caller == "root" else SOCKET)
    argv = [*PY, f"{TESTLIB}/call.py", socket, op, *(f"{k}={v}" for k, v in fields.items())]
    if caller != "root":
        argv = ["runuser", "-u", caller, "--", *argv]
    return json.loads(sd.run(*argv).stdout)


def key(sd: Pid1) -> bytes:
    return sd.path(KEY).read_bytes()


def claims(sd: Pid1, token: str) -> dict:
    return jwt.decode(token, key(sd), algorithms=["HS256"])


class Leader:
    """A login's session leader inside: a root process with a session open for USER."""

    def __init__(self, sd: Pid1, user: str) -> None:
        import subprocess
        self.proc = sd.spawn(*PY, f"{TESTLIB}/leader.py", ROOT_SOCKET, user,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line.startswith("OK "), line
        self.fields = dict(w.split("=", 1) for w in line.split()[1:])

    def close(self) -> str:
        out, _ = self.proc.communicate("close\n", timeout=10)
        return out.strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def leaders():
    made: list[Leader] = []

    def open_session(sd: Pid1, user: str) -> Leader:
        made.append(Leader(sd, user))
        return made[-1]

    yield open_session
    for leader in made:
        leader.kill()


def wait_for(predicate, timeout: float = 10, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def unit_log(sd: Pid1, *texts: str, unit: str = UNIT, timeout: float = 5) -> str:
    """UNIT's journal once it holds every one of TEXTS (journald writes what it receives a
    moment later), or as it is after TIMEOUT."""
    log = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = sd.journal("-u", unit, "-o", "cat")
        if all(t in log for t in texts):
            break
        time.sleep(0.1)
    return log


def main_pid(sd: Pid1) -> int:
    return int(sd.show(UNIT, "MainPID")["MainPID"])


# -- installation ----------------------------------------------------------------------------
def packaged(source: str) -> str:
    """A unit of systemd/ as debian/rules installs it (Debian's paths for the daemon and docs)."""
    return source.replace("/usr/local/sbin/", "/usr/sbin/").replace(
        "/usr/local/share/doc/", "/usr/share/doc/")


def test_the_package_installs_and_starts_the_sockets_under_systemd(machine):
    """apt-get alone, with nothing done by the test: the account made (sysusers), the runtime
    and state directories (tmpfiles), both sockets enabled and listening, the service neither
    enabled nor started (the first connection starts it), and the host untouched."""
    assert machine.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "slurmjwt").stdout == "ii "
    for unit in (UNIT, "slurmjwtd.socket", "slurmjwtd-root.socket"):
        shown = machine.show(unit, "FragmentPath", "DropInPaths", "LoadState")
        assert shown["LoadState"] == "loaded" and shown["DropInPaths"] == "", shown
        assert shown["FragmentPath"] == f"/lib/systemd/system/{unit}"
        installed = machine.path(shown["FragmentPath"]).read_text()
        assert installed == packaged((REPO / "systemd" / unit).read_text()), unit
    for unit in ("slurmjwtd.socket", "slurmjwtd-root.socket"):
        assert machine.show(unit, "UnitFileState", "ActiveState") == {
            "UnitFileState": "enabled", "ActiveState": "active"}, unit
    assert machine.show(UNIT, "UnitFileState", "ActiveState") == {
        "UnitFileState": "disabled", "ActiveState": "inactive"}  # --no-enable
    assert machine.run("getent", "passwd", "slurmjwt").stdout.endswith(
        ":/nonexistent:/usr/sbin/nologin\n")
    assert machine.run("stat", "-c", "%U %a", "/run/slurmjwt", "/run/slurmjwt-tokens",
                       "/var/lib/slurmjwt").stdout.split("\n")[:3] == [
        "slurmjwt 755", "slurmjwt 755", "slurmjwt 700"]
    assert machine.host_files_changed() == []  # dpkg's database included


# -- socket activation, Type=notify, STATUS ----------------------------------------------------
def test_socket_activation_and_notify(sd, users, leaders):
    """Nothing runs until a client connects; the first connection is answered by the
    daemon systemd starts for it, which is `active` only once it said READY=1, and its
    STATUS= line counts what it did."""
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    assert sd.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    for path, mode, unit in ((SOCKET, "666", "slurmjwtd.socket"),
                             (ROOT_SOCKET, "600", "slurmjwtd-root.socket")):
        assert sd.run("stat", "-c", "%a %U", path).stdout.split() == [mode, "root"]
        assert sd.show(unit, "ActiveState")["ActiveState"] == "active"
    status = sd.run("runuser", "-u", alice, "--", "slurmjwt", "status")  # the activating client
    assert status.returncode == 0 and "signer hs256" in status.stdout, status.stderr
    shown = sd.show(UNIT, "ActiveState", "SubState", "Type", "StatusText", "MainPID", "User",
                    "TriggeredBy")
    assert shown["ActiveState"] == "active" and shown["Type"] == "notify", shown
    assert shown["StatusText"] == "0 granted, 0 refused, 0 renewed, 0 open sessions", shown
    assert sd.run("ps", "-o", "user=", "-p", shown["MainPID"]).stdout.strip() == "slurmjwt"
    log = unit_log(sd, "ready: socket=", "Started slurmjwtd")
    assert log.rindex("ready: socket=/run/slurmjwt/slurmjwtd.sock") < log.rindex("Started slurmjwtd")

    leaders(sd, alice)
    assert call(sd, "MINT", alice)["ok"]
    assert call(sd, "MINT", bob)["code"] == "no-session"
    text = wait_for(lambda: (t := sd.show(UNIT, "StatusText")["StatusText"]).startswith(
        "2 granted") and t, 5)  # the OPEN and alice's MINT
    assert text == "2 granted, 1 refused, 0 renewed, 1 open sessions"


# -- reload ------------------------------------------------------------------------------------
def test_reload_with_a_good_then_a_bad_configuration(sd, users):
    alice = users["alice"].pw_name
    configure(sd, lifetime=600)
    assert call(sd, "MINT", user=alice)["fields"]["lifetime"] == "600"
    pid = main_pid(sd)
    configure(sd, lifetime=900)
    sd.systemctl("reload", UNIT)
    assert "reloaded" in unit_log(sd, "reloaded")
    assert call(sd, "MINT", user=alice)["fields"]["lifetime"] == "900"
    configure(sd, lifetime="long")
    sd.systemctl("reload", UNIT)  # kill -HUP: systemd cannot know; the daemon says why
    refused = wait_for(lambda: [line for line in sd.journal("-u", UNIT, "-o", "cat").splitlines()
                                if "reload refused" in line], 5)
    assert refused and "key 'lifetime'" in refused[-1]
    shown = sd.show(UNIT, "ActiveState", "SubState", "MainPID", "NRestarts")
    assert shown == {"ActiveState": "active", "SubState": "running", "MainPID": str(pid),
                     "NRestarts": "0"}
    assert call(sd, "MINT", user=alice)["fields"]["lifetime"] == "900"  # the one it had


# -- watchdog, Restart= ----------------------------------------------------------------------------
def test_watchdog_kills_and_restarts_a_stopped_daemon(sd, users, leaders):
    """WatchdogSec=2s here (a runtime drop-in: 30 s in the unit): while the daemon pings, 3 s
    pass without a restart; stopped with SIGSTOP it is killed (SIGABRT) and started again,
    and the session open before is still there."""
    sd.write(f"{DROPINS}/50-test-watchdog.conf", "[Service]\nWatchdogSec=2s\n")
    sd.daemon_reload()
    leaders(sd, users["alice"].pw_name)  # starts it
    assert sd.show(UNIT, "WatchdogUSec")["WatchdogUSec"] == "2s"
    pid = main_pid(sd)
    time.sleep(3)
    assert main_pid(sd) == pid and sd.show(UNIT, "NRestarts")["NRestarts"] == "0"
    sd.run("kill", "-STOP", str(pid))
    assert wait_for(lambda: main_pid(sd) not in (0, pid), 10)
    assert wait_for(lambda: sd.show(UNIT, "ActiveState")["ActiveState"] == "active", 5)
    assert sd.show(UNIT, "NRestarts")["NRestarts"] == "1"
    log = unit_log(sd, "Watchdog timeout", "status=6/ABRT")
    assert "Watchdog timeout" in log and "status=6/ABRT" in log, log
    assert call(sd, "STATUS")["fields"]["sessions"] == "1"


def test_restart_on_failure_not_after_a_clean_exit(sd, users):
    alice = users["alice"].pw_name
    assert call(sd, "STATUS")["ok"]
    pid = main_pid(sd)
    sd.run("kill", "-KILL", str(pid))
    assert wait_for(lambda: main_pid(sd) not in (0, pid), 5)  # RestartSec=1s
    assert wait_for(lambda: sd.show(UNIT, "ActiveState")["ActiveState"] == "active", 5)
    assert sd.show(UNIT, "NRestarts")["NRestarts"] == "1"
    pid = main_pid(sd)
    sd.run("kill", "-TERM", str(pid))  # a clean exit (0): Restart=on-failure leaves it down
    assert wait_for(lambda: sd.show(UNIT, "ActiveState")["ActiveState"] == "inactive", 5)
    time.sleep(1.5)
    shown = sd.show(UNIT, "ActiveState", "Result", "NRestarts", "ExecMainStatus")
    assert shown == {"ActiveState": "inactive", "Result": "success", "NRestarts": "1",
                     "ExecMainStatus": "0"}
    assert call(sd, "MINT", user=alice)["ok"]  # the sockets start it again


# -- a clean stop ------------------------------------------------------------------------------------
def test_clean_stop_with_logins_in_flight(sd, users, leaders):
    """`systemctl stop` while a login's OPEN and a user's MINT are half sent: both are
    answered, the stop ends in success, and the sessions are there after the next start."""
    import subprocess
    alice = users["alice"].pw_name
    leaders(sd, alice)
    in_flight = [
        sd.spawn(*PY, f"{TESTLIB}/call.py", ROOT_SOCKET, "OPEN", f"user={alice}", "--hold",
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True),
        sd.spawn("runuser", "-u", alice, "--", *PY, f"{TESTLIB}/call.py", SOCKET, "MINT",
                 "--hold", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)]
    for client in in_flight:
        assert client.stdout.readline().strip() == "sent"
    stop = sd.spawn("systemctl", "stop", UNIT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True)
    assert wait_for(lambda: sd.show(UNIT, "ActiveState")["ActiveState"] == "deactivating", 2,
                    0.01)
    answers = [client.communicate("go\n", timeout=10)[0].strip() for client in in_flight]
    assert all(a.startswith("SJWT/1 OK ") for a in answers), answers
    assert stop.wait(15) == 0, stop.stdout.read()
    shown = sd.show(UNIT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert shown == {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1",
                     "ExecMainStatus": "0"}, shown
    assert "stopping" in unit_log(sd, "stopping")
    # the half-sent OPEN's session: its leader (the client) has exited, so only the first counts
    assert call(sd, "STATUS")["fields"]["sessions"] == "1"


# -- the journal -------------------------------------------------------------------------------------
def test_the_journal_has_the_audit_fields_and_never_a_token(sd, users, leaders):
    alice = users["alice"].pw_name
    leaders(sd, alice)
    minted = call(sd, "MINT", alice)
    token = minted["fields"]["token"]
    uid = sd.run("id", "-u", "slurmjwt").stdout.strip()

    def grants():
        out = sd.journal("-u", UNIT, "-o", "json", "SLURMJWT_OP=mint", f"SLURMJWT_USER={alice}")
        return [json.loads(line) for line in out.splitlines()]
    entries = wait_for(grants, 5)
    mint = entries[-1]
    assert mint["SLURMJWT_DECISION"] == "granted" and mint["PRIORITY"] == "6"
    assert mint["SLURMJWT_CALLER_UID"] == str(users["alice"].pw_uid)
    assert mint["SLURMJWT_JTI"] == minted["fields"]["jti"] and mint["SLURMJWT_JTI"] in mint["MESSAGE"]
    assert mint["_SYSTEMD_UNIT"] == UNIT and mint["_UID"] == uid  # journald's own, trusted fields
    assert mint["SYSLOG_IDENTIFIER"] == "slurmjwtd"
    opened = sd.journal("-u", UNIT, "-o", "json", "SLURMJWT_OP=open")
    assert json.loads(opened.splitlines()[-1])["SLURMJWT_SESSION"]
    # the next ones come from the fast path (the first made its entry): the same entry, field
    # for field, but what each token makes new
    assert call(sd, "STATUS")["fields"]["fast_path"] == "on"
    more = [call(sd, "MINT", alice)["fields"]["token"] for _ in range(2)]
    assert call(sd, "METRICS")["fields"]["fast_path_granted"] == "2"
    before = len(entries)

    def all_three() -> list | None:
        now = grants()
        return now if len(now) >= before + 2 else None
    entries = wait_for(all_three, 5)
    varying = {"SLURMJWT_JTI", "SLURMJWT_EXP", "SLURMJWT_CALLER_PID", "MESSAGE"}

    def fields(entry: dict) -> dict:
        return {k: v for k, v in entry.items() if k.startswith("SLURMJWT_") and k not in varying
                or k in ("PRIORITY", "SYSLOG_IDENTIFIER", "_SYSTEMD_UNIT", "_UID")}
    assert fields(entries[-1]) == fields(entries[-2]) == fields(mint)
    assert all(claims(sd, t)["sun"] == alice for t in more)
    everything = sd.journal("-o", "export")
    assert not [t for t in [token, *more] if t in everything or t.split(".")[2] in everything]



def test_the_fast_path_audits_to_a_restarted_journald(sd, users, leaders):
    """journald restarted, as an upgrade restarts it: the fast path's grants after it still
    reach the journal, each with its fields (its workers write to journald's socket, which
    systemd holds across the restart)."""
    alice = users["alice"].pw_name
    leaders(sd, alice)
    call(sd, "MINT", alice)  # the Python path's grant makes the entry

    def granted() -> int:
        return int(call(sd, "METRICS")["fields"]["fast_path_granted"])

    def in_journal(jtis: list[str]) -> bool:
        out = sd.journal("-u", UNIT, "-o", "cat", "--output-fields=SLURMJWT_JTI", "SLURMJWT_OP=mint",
                         f"SLURMJWT_USER={alice}")
        return set(jtis) <= set(out.split())
    before = granted()
    jtis = [call(sd, "MINT", alice)["fields"]["jti"]]
    sd.systemctl("restart", "systemd-journald.service")
    jtis += [call(sd, "MINT", alice)["fields"]["jti"] for _ in range(3)]
    assert granted() - before == 4  # all four from the fast path
    assert wait_for(lambda: in_journal(jtis), 10), jtis

def test_slurmjwt_audit_reads_the_daemons_decisions_from_the_journal(sd, users, leaders):
    """`slurmjwt audit` as the package installs it, on journald's files: the login's and the
    user's own grant found by jti and user with node= this machine's name, by journal matches;
    a user's forged journal entry (SYSLOG_IDENTIFIER=slurmjwtd and SLURMJWT_* fields) left
    out; a user who may not read the journal gets one line; never a token."""
    alice = users["alice"].pw_name
    start = sd.run("date", "+%Y-%m-%dT%H:%M:%S%z").stdout.strip()  # the journal outlives tests
    login = leaders(sd, alice)
    minted = call(sd, "MINT", alice)
    token, jti = minted["fields"]["token"], minted["fields"]["jti"]
    node = sd.run("hostname", "-s").stdout.strip()
    forged = (f"MESSAGE=decision=granted op=mint user={alice} jti=forged node=x\n"
              f"SYSLOG_IDENTIFIER=slurmjwtd\nSLURMJWT_DECISION=granted\nSLURMJWT_OP=mint\n"
              f"SLURMJWT_USER={alice}\nSLURMJWT_JTI=forged\n")
    sd.run("runuser", "-u", alice, "--", "logger", "--journald", input=forged)
    assert wait_for(lambda: "forged" in sd.journal("-o", "cat", "SLURMJWT_JTI=forged"), 5)

    def audit(*args: str) -> list[dict]:
        out = sd.run("slurmjwt", "audit", "--json", *args).stdout
        return [json.loads(line) for line in out.splitlines()]
    found = wait_for(lambda: audit("--jti", jti), 5)
    assert [(e["decision"], e["op"], e["user"], e["node"]) for e in found] == [
        ("granted", "mint", alice, node)]
    assert found[0]["caller_uid"] == users["alice"].pw_uid and found[0]["exp"] == int(
        minted["fields"]["exp"])
    mine = audit("--user", alice, "--since", start)
    assert [(e["op"], e["jti"]) for e in mine[-2:]] == [("open", login.fields["jti"]), ("mint", jti)]
    assert all(e["user"] == alice and e["time"] >= start[:19] for e in mine)
    assert audit("--jti", "forged") == [] and audit("--node", "x") == []
    text = sd.run("slurmjwt", "audit", "--jti", jti).stdout
    assert text.splitlines()[1].split()[2:4] == [node, "granted"]

    denied = sd.run("runuser", "-u", alice, "--", "slurmjwt", "audit", check=False)
    assert (denied.returncode, denied.stdout) == (1, "")
    assert denied.stderr.startswith("slurmjwt: cannot read the journal files in ") and \
        denied.stderr.endswith(": run as root or as a member of systemd-journal or adm\n")
    everything = text + json.dumps(mine) + denied.stderr
    assert token not in everything and token.split(".")[2] not in everything

# -- the sandbox ------------------------------------------------------------------------------------
# The daemon's own [Service] lines that are not about how it is started: the probe runs under them.
NOT_SANDBOX = {"Type", "Sockets", "ExecStart", "ExecReload", "Restart", "RestartSec",
               "WatchdogSec", "TimeoutStopSec", "LogRateLimitIntervalSec"}

PROBE = r"""
import errno, json, mmap, os, socket
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
def connect_tcp(family):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.close()
def write(path):
    with open(path, "w") as f:
        f.write("probe")
    os.unlink(path)
attempt("tcp4", lambda: connect_tcp(socket.AF_INET))
attempt("tcp6", lambda: connect_tcp(socket.AF_INET6))
attempt("unix", lambda: connect_tcp(socket.AF_UNIX))
for d in ("/etc/sjt-probe", "/usr/local/sjt-probe", "/var/lib/sjt-probe", "/run/sjt-probe",
          "/home/sjt-probe", "/run/lock", "/run/slurmjwt", "/run/slurmjwt-tokens", "/var/lib/slurmjwt"):
    attempt("write " + d, lambda: write(d + "/f"))
attempt("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, 5))        # @resources
attempt("sched_setaffinity", lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)))
attempt("mmap wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
out["status"] = {k: status[k].strip() for k in KEYS}
out["mounts"] = sorted({(l.split()[4], l.split()[5].split(",")[0]) for l in open("/proc/self/mountinfo")})
print(json.dumps(out))
""".replace("KEYS", repr(("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                          "NoNewPrivs", "Seccomp", "Seccomp_filters")))
PROBE_DIRS = ("/etc/sjt-probe", "/usr/local/sjt-probe", "/var/lib/sjt-probe", "/run/sjt-probe",
              "/home/sjt-probe")


def unit_lines(sd: Pid1) -> list[tuple[str, str]]:
    """The [Service] assignments of the installed slurmjwtd.service, in order."""
    path = sd.show(UNIT, "FragmentPath")["FragmentPath"]
    lines, section = [], None
    for line in sd.path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            lines.append(tuple(line.split("=", 1)))
    return lines


def probe(sd: Pid1, properties: list[str], unit: str) -> dict:
    result = sd.run("systemd-run", "--quiet", "--wait", "--pipe", f"--unit={unit}",
                    *(f"--property={p}" for p in properties), *PY, f"{TESTLIB}/probe.py")
    return json.loads(result.stdout)


def test_the_sandbox_is_in_effect(sd, users):
    """The most honest proof short of making the daemon itself misbehave: a probe program
    runs as a transient unit under the very [Service] lines of the installed unit (all but
    how the daemon is started), parsed by the same systemd. Then
    - systemd reports the same value for every one of those properties on both units;
    - the kernel shows the probe and the running daemon in the same state: uid, gid, all
      five capability sets, no_new_privs, seccomp mode and number of filters, and the same
      mount points with the same read-only flags;
    - in it, the probe cannot make a TCP socket, write outside the runtime and state
      directories (into directories its user owns), or call what SystemCallFilter= and
      MemoryDenyWriteExecute= forbid;
    - the same probe as the same user without those lines can do every one of these: the
      refusals come from the sandbox, not from permissions."""
    sd.write(f"{TESTLIB}/probe.py", PROBE)
    for d in PROBE_DIRS:
        sd.run("install", "-d", "-o", "slurmjwt", "-g", "slurmjwt", "-m", "0755", d)
    try:
        assert call(sd, "STATUS")["ok"]  # the daemon runs
        lines = [(k, v) for k, v in unit_lines(sd) if k not in NOT_SANDBOX]
        keys = sorted({k for k, _ in lines})
        assert {"SystemCallFilter", "RestrictAddressFamilies", "ProtectSystem", "PrivateNetwork",
                "MemoryDenyWriteExecute", "User"} <= set(keys)
        caged = probe(sd, [f"{k}={v}" for k, v in lines], "sjt-probe-sandbox")
        free = probe(sd, ["User=slurmjwt", "Group=slurmjwt"], "sjt-probe-free")

        daemon_props = sd.show(UNIT, *keys)
        # the probe's transient unit is gone once it exited: the same lines on a live one
        sd.run("systemd-run", "--quiet", "--unit=sjt-probe-live",
               *(f"--property={k}={v}" for k, v in lines), "/bin/sleep", "30")
        try:
            live = sd.show("sjt-probe-live.service", *keys)
            # as sets of words: systemd prints a set (IPAddressDeny=, ...) in no fixed order
            assert {k: sorted((live.get(k) or "").split()) for k in keys} == \
                {k: sorted((daemon_props.get(k) or "").split()) for k in keys}
        finally:
            sd.systemctl("stop", "sjt-probe-live.service", check=False)

        pid = main_pid(sd)
        status = dict(line.split(":", 1) for line in sd.run(
            "cat", f"/proc/{pid}/status").stdout.splitlines())
        assert caged["status"] == {k: status[k].strip() for k in caged["status"]}
        assert caged["status"]["Seccomp"] == "2" and caged["status"]["NoNewPrivs"] == "1"
        assert int(caged["status"]["CapBnd"], 16) == 0
        mounts = sorted({(line.split()[4], line.split()[5].split(",")[0]) for line in
                         sd.run("cat", f"/proc/{pid}/mountinfo").stdout.splitlines()})
        assert [list(m) for m in mounts] == caged["mounts"]

        refused = {"tcp4": "EAFNOSUPPORT", "tcp6": "EAFNOSUPPORT",
                   "setpriority": "EPERM", "sched_setaffinity": "EPERM", "mmap wx": "EPERM"}
        refused |= {f"write {d}": ("EACCES" if d == "/home/sjt-probe" else "EROFS")
                    for d in (*PROBE_DIRS, "/run/lock")}
        for name, errno_name in refused.items():
            assert caged[name] == errno_name, (name, caged[name])
            assert free[name] == "ok", (name, free[name])
        for name in ("unix", "write /run/slurmjwt", "write /run/slurmjwt-tokens",
                     "write /var/lib/slurmjwt"):
            assert caged[name] == "ok", (name, caged[name])
    finally:
        sd.run("rm", "-rf", *PROBE_DIRS)


def test_every_request_path_works_inside_the_sandbox(sd, users, leaders):
    """MINT, OPEN and CLOSE on root's socket, STATUS, EXPLAIN, REVOKE and UNREVOKE (the
    revocation list written in the StateDirectory), and the token file renewed on a
    4-second lifetime and readable by its user (a POSIX ACL set from inside the sandbox)."""
    alice, bob = users["alice"], users["bob"]
    configure(sd, lifetime=4)
    sd.systemctl("restart", UNIT)
    assert call(sd, "MINT", alice.pw_name)["code"] == "no-session"
    leader = leaders(sd, alice.pw_name)
    assert leader.fields["file"] == f"/run/slurmjwt-tokens/{alice.pw_uid}/token"
    minted = call(sd, "MINT", alice.pw_name)
    assert minted["ok"] and claims(sd, minted["fields"]["token"])["sun"] == alice.pw_name
    assert call(sd, "MINT", user=bob.pw_name)["ok"]  # root, for another
    status = call(sd, "STATUS", bob.pw_name)["fields"]
    assert status["sessions"] == "1" and status["signer"] == "hs256"

    explained = call(sd, "EXPLAIN", user=alice.pw_name)["fields"]
    assert explained["decision"] == "granted" and explained["sessions"] == "1", explained
    assert call(sd, "EXPLAIN", bob.pw_name, user=alice.pw_name)["code"] == "permission-denied"

    read = ["runuser", "-u", alice.pw_name, "--", "cat", leader.fields["file"]]
    first = sd.run(*read).stdout.strip()
    assert claims(sd, first.removeprefix("SLURM_JWT="))["sun"] == alice.pw_name
    renewed = wait_for(lambda: (t := sd.run(*read).stdout.strip()) != first and t, 8, 0.2)
    assert renewed, "the token file was not renewed"
    assert claims(sd, renewed.removeprefix("SLURM_JWT="))["sun"] == alice.pw_name
    assert sd.run("runuser", "-u", bob.pw_name, "--", "cat", leader.fields["file"],
                  check=False).returncode != 0

    revoked = call(sd, "REVOKE", user=alice.pw_name, reason="test")
    assert revoked["ok"] and revoked["fields"]["revoked"] == "yes", revoked
    assert sd.run("test", "-s", "/var/lib/slurmjwt/revoked.json", check=False).returncode == 0
    assert call(sd, "MINT", alice.pw_name)["code"] == "revoked"
    assert call(sd, "UNREVOKE", user=alice.pw_name)["fields"]["was_revoked"] == "yes"
    assert call(sd, "MINT", alice.pw_name)["ok"]
    assert leader.close().endswith("OK")
    assert call(sd, "STATUS")["fields"]["sessions"] == "0"
    assert "ERR" not in sd.journal("-u", UNIT, "-p", "err", "-o", "cat")


# -- the scontrol signer's drop-in ---------------------------------------------------------------
# Stand-ins: slurmctld cannot be reached from inside (its own loopback), so a fake controller
# listens on the machine's 127.0.0.1:6817 (a unit of its own) and mints with the key, and a fake
# scontrol asks it over TCP: what the drop-in must allow (SlurmUser, AF_INET, an IP address).
FAKE_CTLD = r"""
import json, socket, sys, time
import jwt
key = open(sys.argv[1], "rb").read()
srv = socket.create_server(("127.0.0.1", 6817))
print("listening", flush=True)
while True:
    conn, peer = srv.accept()
    with conn:
        req = json.loads(conn.makefile().readline())
        now = int(time.time())
        token = jwt.encode({"iat": now, "exp": now + int(req["lifespan"]), "sun": req["username"],
                            "jti": "ctld-%d" % now}, key, algorithm="HS256")
        conn.sendall((json.dumps({"token": token, "uid": req["uid"]}) + "\n").encode())
        print("minted for", req["username"], "asked by uid", req["uid"], flush=True)
"""
FAKE_SCONTROL = r"""#!/usr/bin/python3 -I
import json, os, socket, sys
args = dict(a.split("=", 1) for a in sys.argv[2:])
try:
    s = socket.create_connection(("127.0.0.1", 6817), timeout=2)
except OSError as e:
    print("scontrol: error: slurm_fetch_token: %s" % e.strerror, file=sys.stderr)
    sys.exit(1)
s.sendall((json.dumps({"username": args["username"], "lifespan": args["lifespan"],
                       "uid": os.getuid()}) + "\n").encode())
print("SLURM_JWT=" + json.loads(s.makefile().readline())["token"])
"""


def docs_dropin() -> str:
    """The drop-in as docs/signers.md gives it."""
    text = (REPO / "docs" / "signers.md").read_text()
    block = re.search(r"slurmjwtd\.service\.d/scontrol\.conf`:\n\n```ini\n(.*?)```", text, re.S)
    assert block, "docs/signers.md no longer shows the scontrol drop-in"
    return block.group(1)


def test_scontrol_signer_drop_in_works_inside_the_sandbox(sd, users, leaders):
    """The documented drop-in (User=slurm, the network back) is what lets `scontrol token`
    reach the controller: with the shipped unit alone the same configuration is refused
    (no TCP), with the drop-in the login's OPEN and a user's MINT carry the controller's
    token, asked for by SlurmUser. The controller and scontrol are stand-ins (see above);
    the real ones are tested on the host in test_signers.py."""
    alice = users["alice"].pw_name
    sd.write(f"{TESTLIB}/fake-ctld.py", FAKE_CTLD)
    sd.write(f"{TESTLIB}/scontrol", FAKE_SCONTROL, mode=0o755)
    started = sd.journal("-u", "sjt-fake-ctld", "-o", "cat").count("listening")  # earlier runs'
    sd.systemctl("reset-failed", "sjt-fake-ctld", check=False)
    sd.run("systemd-run", "--quiet", "--unit=sjt-fake-ctld", "-p", "User=slurm",
           *PY, f"{TESTLIB}/fake-ctld.py", KEY)
    try:
        assert wait_for(lambda: sd.journal("-u", "sjt-fake-ctld", "-o", "cat").count(
            "listening") > started, 5)
        configure(sd, signer="scontrol", scontrol=f"{TESTLIB}/scontrol", scontrol_timeout=3)
        # the drop-in's account lines alone: SlurmUser, but the shipped unit's network rules
        account = "".join(line + "\n" for line in docs_dropin().splitlines()
                          if line.startswith(("[Service]", "User=", "Group=")))
        assert account == "[Service]\nUser=slurm\nGroup=slurm\n"
        sd.write(f"/etc/systemd/system/{UNIT}.d/scontrol.conf", account)
        sd.daemon_reload()
        answer = call(sd, "OPEN", user=alice)
        assert answer["code"] == "signer-unavailable", answer  # no TCP in the shipped sandbox
        assert "Address family not supported" in answer["message"], answer

        kept = ("ProtectSystem", "ReadOnlyPaths", "NoNewPrivileges", "CapabilityBoundingSet",
                "SystemCallFilter", "MemoryDenyWriteExecute", "ProtectHome", "PrivateTmp")
        before = sd.show(UNIT, *kept)
        sd.write(f"/etc/systemd/system/{UNIT}.d/scontrol.conf", docs_dropin())
        sd.daemon_reload()
        sd.systemctl("restart", UNIT)
        shown = sd.show(UNIT, "User", "PrivateNetwork", "RestrictAddressFamilies", "IPAddressDeny")
        assert shown == {"User": "slurm", "PrivateNetwork": "no", "IPAddressDeny": "",
                         "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX"}, shown
        assert sd.show(UNIT, *kept) == before  # the rest of the sandbox stays
        assert call(sd, "STATUS")["fields"]["signer"] == "scontrol"
        leader = leaders(sd, alice)
        minted = call(sd, "MINT", alice)
        assert minted["ok"], minted
        assert claims(sd, minted["fields"]["token"])["sun"] == alice
        assert minted["fields"]["jti"].startswith("ctld-")
        slurm_uid = sd.run("id", "-u", "slurm").stdout.strip()
        wanted = f"minted for {alice} asked by uid {slurm_uid}"
        assert wanted in unit_log(sd, wanted, unit="sjt-fake-ctld")
        assert leader.close().endswith("OK")
    finally:
        sd.run("rm", "-rf", f"/etc/systemd/system/{UNIT}.d")
        sd.systemctl("stop", "sjt-fake-ctld", check=False)
        sd.daemon_reload()


# -- a revocation file on the share (docs/policy.md, many login nodes) --------------------------
SHARED = "/etc/slurm/slurmjwt"  # as on a share next to slurm.conf


def revocation_dropin() -> str:
    """The drop-in as docs/policy.md gives it."""
    text = (REPO / "docs" / "policy.md").read_text()
    block = re.search(r"slurmjwtd\.service\.d/revocation\.conf`\), then .*?```ini\n(.*?)```", text, re.S)
    assert block, "docs/policy.md no longer shows the revocation drop-in"
    return block.group(1)


def test_a_shared_revocation_file_is_written_only_with_the_documented_drop_in(sd, users):
    """revocation_file outside the unit's StateDirectory: with the shipped unit alone the
    read-only system refuses the write (`internal`, nothing changed, the daemon serves on);
    with the drop-in of docs/policy.md the REVOKE is saved there, its lock beside it, and a
    change written there by another node (here: by hand) is in force within seconds."""
    alice = users["alice"].pw_name
    sd.sh(f"install -d -m 0755 /etc/slurm && install -d -o slurmjwt -g slurmjwt -m 0700 {SHARED}")
    try:
        configure(sd, revocation_file=f"{SHARED}/revoked.json")
        sd.systemctl("restart", UNIT)
        refused = call(sd, "REVOKE", user=alice)
        assert refused["code"] == "internal" and "Read-only file system" in refused["message"], refused
        assert "nothing changed" in refused["message"]
        assert call(sd, "MINT", user=alice)["ok"]

        dropin = revocation_dropin()
        assert f"ReadWritePaths={SHARED}" in dropin and f"RequiresMountsFor={SHARED}" in dropin
        sd.write(f"/etc/systemd/system/{UNIT}.d/revocation.conf", dropin)
        sd.daemon_reload()
        sd.systemctl("restart", UNIT)
        revoked = call(sd, "REVOKE", user=alice, reason="fleet")
        assert revoked["ok"], revoked
        assert call(sd, "MINT", user=alice)["code"] == "revoked"
        saved = json.loads(sd.path(f"{SHARED}/revoked.json").read_text())
        assert [(r["user"], r["reason"], r["node"]) for r in saved] == [(alice, "fleet", sd.run("hostname").stdout.strip())]
        assert sd.run("test", "-e", f"{SHARED}/revoked.json.lock", check=False).returncode == 0
        sd.sh(f"echo [] > {SHARED}/revoked.json")  # another node lifted it
        assert wait_for(lambda: call(sd, "MINT", user=alice)["ok"], 5)
        assert "reason=revocation-file" in unit_log(sd, "op=unrevoke reason=revocation-file")
    finally:
        sd.run("rm", "-rf", f"/etc/systemd/system/{UNIT}.d", SHARED)
        sd.daemon_reload()


# -- a real SSH login ------------------------------------------------------------------------------
SSHD_CONFIG = """\
Port 22
ListenAddress 127.0.0.1
UsePAM yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AuthorizedKeysFile /etc/ssh/sjt-authorized/%u
StrictModes no
PrintMotd no
PrintLastLog no
X11Forwarding no
LogLevel VERBOSE
"""
# key logins: no PAM auth; pam_unix's account check; the module by its bare name, from where
# the package put it (the system's PAM module directory)
PAM_SSHD = """\
account  required pam_unix.so
session  required pam_permit.so
session  optional pam_slurmjwt.so
"""


def test_ssh_login_through_sshd_as_a_unit_gets_its_token(sd, users):
    """Debian's own ssh.service, run by the same systemd, with a PAM stack holding the
    installed module; the login's environment has SLURM_JWT and the token file, the session
    is counted while the login lasts and closed when it ends."""
    alice = users["alice"]
    sd.write("/etc/systemd/system/ssh.service", Path("/lib/systemd/system/ssh.service").read_text())
    sd.write("/etc/ssh/sshd_config", SSHD_CONFIG)
    sd.write("/etc/pam.d/sshd", PAM_SSHD)
    sd.sh("ssh-keygen -A >/dev/null && install -d -m 0700 /run/sjt-ssh && "
          "rm -f /run/sjt-ssh/id && ssh-keygen -q -t ed25519 -N '' -f /run/sjt-ssh/id && "
          f"install -D -m 0644 /run/sjt-ssh/id.pub /etc/ssh/sjt-authorized/{alice.pw_name}")
    sd.daemon_reload()
    sd.systemctl("restart", "ssh.service")
    try:
        assert sd.show("ssh.service", "ActiveState")["ActiveState"] == "active"
        ssh = ["ssh", "-F", "none", "-i", "/run/sjt-ssh/id", "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", f"{alice.pw_name}@127.0.0.1"]
        remote = ('printf "%s\\n" "$SLURM_JWT" "$SLURMJWT_TOKEN_FILE"; cat "$SLURMJWT_TOKEN_FILE"; '
                  f'{PY[0]} -I {TESTLIB}/call.py {SOCKET} STATUS')
        login = sd.run(*ssh, remote, timeout=30)
        env_token, path, file_token, status = login.stdout.splitlines()
        assert env_token.count(".") == 2  # the bare token, as Slurm's clients take it
        assert claims(sd, env_token)["sun"] == alice.pw_name
        assert path == f"/run/slurmjwt-tokens/{alice.pw_uid}/token"
        assert claims(sd, file_token.removeprefix("SLURM_JWT="))["sun"] == alice.pw_name
        assert json.loads(status)["fields"]["sessions"] == "1"  # during the login
        assert wait_for(lambda: call(sd, "STATUS")["fields"]["sessions"] == "0", 5)  # closed
        log = unit_log(sd, "op=open", "op=close")
        assert "op=open" in log and f"user={alice.pw_name}" in log and "op=close" in log
    finally:
        sd.systemctl("stop", "ssh.service", check=False)
        sd.run("rm", "-f", "/etc/systemd/system/ssh.service")
        sd.daemon_reload()


# -- upgrade and remove -------------------------------------------------------------------------
def test_upgrade_restarts_the_daemon_keeping_sessions_and_remove_stops_it(sd, users, leaders,
                                                                          packages):
    """Under systemd, what debian/rules asks of it: an upgrade try-restarts the running daemon
    (a new PID) and the login opened before still counts; remove stops the daemon and both
    sockets. The first package is put back after (a downgrade), as the other tests expect."""
    alice = users["alice"].pw_name
    leader = leaders(sd, alice)  # socket activation starts the daemon
    pid = main_pid(sd)
    upgrade = packages.upgrade()
    assert upgrade.result.returncode == 0, upgrade.result.stderr[-3000:]
    try:
        sd.install_deb(upgrade.path)
        assert sd.run("dpkg-query", "-W", "-f=${Version}", "slurmjwt").stdout == upgrade.version
        shown = sd.show(UNIT, "ActiveState", "MainPID")
        assert shown["ActiveState"] == "active" and shown["MainPID"] not in ("0", str(pid)), shown
        assert call(sd, "STATUS")["fields"]["sessions"] == "1"
        assert call(sd, "MINT", alice)["ok"]  # the login from before the upgrade
        assert leader.close().endswith("OK")

        sd.apt("remove", "slurmjwt")
        for unit in (UNIT, "slurmjwtd.socket", "slurmjwtd-root.socket"):
            assert sd.show(unit, "ActiveState")["ActiveState"] == "inactive", unit
        assert sd.run("test", "-e", SOCKET, check=False).returncode != 0
        assert sd.run("pgrep", "-u", "slurmjwt", check=False).stdout == ""
    finally:
        sd.install_deb(packages.first().path, "--allow-downgrades")
    for unit in ("slurmjwtd.socket", "slurmjwtd-root.socket"):
        assert sd.show(unit, "ActiveState")["ActiveState"] == "active", unit
