"""`slurmjwt token` and `refresh` without click (fastcli.py), against the click path.

The same argv runs through both, against the same fake daemon (a thread answering one canned
line per connection): stdout, stderr, exit status and the request the daemon read must be the
same, byte for byte. An argv the fast path is not sure of must go to click. The fast path's
options table must be click's, and wire.py's plain lines protocol.py's; `slurmjwt token` must
import neither click nor protocol.py.
"""

from __future__ import annotations

import inspect
import os
import random
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest

from slurmjwtd import cli, fastcli, protocol, wire

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdW4iOiJub2JvZHkifQ.c2lnbmF0dXJl"  # a JWT's shape, no key's
ESCAPES = "\x1b]0;owned\x07\x1b[2J"


class FakeDaemon:
    """A Unix socket in DIRECTORY answering ANSWER (bytes) to each connection after reading its
    request line (recorded in .requests); "close": hang up unanswered; "hang": answer nothing
    until the client gives up."""

    def __init__(self, path: str, answer: bytes | str) -> None:
        self.path, self.answer, self.requests = path, answer, []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                while b"\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                if self.answer == "hang":
                    conn.recv(1)  # until the client closes
                elif self.answer != "close":
                    conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment for the CLI: no socket, variable or token file of the caller's."""
    for name in ("SLURMJWT_SOCKET", "SLURMJWT_VARIABLE", "SLURMJWT_TOKEN_FILE", "SLURMJWT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURMJWT_CONFIG", str(tmp_path / "no-such.toml"))
    return monkeypatch


def run_click(argv: list[str], capfd) -> tuple[int, str, str]:
    """ARGV through click's group, as `from slurmjwtd.cli import main; main()` runs it."""
    with pytest.raises(SystemExit) as exit_:
        cli.main.main(args=list(argv), prog_name="slurmjwt")
    out, err = capfd.readouterr()
    return exit_.value.code or 0, out, err


def run_fast(argv: list[str], capfd) -> tuple[int, str, str]:
    """ARGV through the fast path, which must take it."""
    plan = fastcli.parse(list(argv))
    assert plan is not None, f"the fast path does not take {argv}"
    status = fastcli.run_fast(*plan)
    out, err = capfd.readouterr()
    return status, out, err


def both(argv: list[str], capfd, daemon: FakeDaemon | None = None):
    """Both paths' (status, stdout, stderr), and the requests each sent, which must agree."""
    fast = run_fast(argv, capfd)
    sent = list(daemon.requests) if daemon else []
    slow = run_click(argv, capfd)
    if daemon:
        assert daemon.requests[len(sent):] == sent
    return fast, slow


ANSWERS = {
    "ok": f"SJWT/1 OK token={TOKEN} user=nobody uid=65534\n".encode(),
    "ok-escaped-field": f"SJWT/1 OK token={TOKEN} user=no%20body\n".encode(),
    "ok-bad-escape": f"SJWT/1 OK token={TOKEN} user=%zz\n".encode(),
    "ok-no-token": b"SJWT/1 OK user=nobody\n",
    "ok-not-a-jwt": b"SJWT/1 OK token=$(rm;-rf).x.y\n",
    "ok-two-dots": b"SJWT/1 OK token=a..b\n",
    "ok-repeated": f"SJWT/1 OK token={TOKEN} token=x.y.z\n".encode(),
    "no-session": b"SJWT/1 ERR no-session no live login session for nobody\n",
    "policy-escapes": b"SJWT/1 ERR policy-denied " + ESCAPES.encode() + b"\n",
    "rate-limited": b"SJWT/1 ERR rate-limited slow down\n",
    "busy": b"SJWT/1 ERR busy too many connections\n",
    "unknown-code": b"SJWT/1 ERR from-the-future something new\n",
    "err-no-code": b"SJWT/1 ERR\n",
    "garbled": b"HELLO there\n",
    "not-ascii": b"SJWT/1 OK token=\xff\n",
    "over-long": b"SJWT/1 OK token=" + b"a" * 5000 + b"\n",
    "close": "close",
}

ARGVS = [
    ["token"], ["token", "--lifetime", "600"], ["token", "--lifetime=7200"],
    ["token", "--user", "nobody"], ["token", "--user=a b\u00e9"], ["token", "--user", "x" * 1100],
    ["token", "--lifetime", "60", "--user", "root"], ["refresh"], ["refresh", "--csh"],
    ["refresh", "--lifetime", "900", "--csh", "--timeout", "2.5"], ["refresh", "--timeout=3"],
    ["refresh", "--timeout", "1"], ["refresh", "--csh", "--timeout", "1"],  # the shells' own
]


@pytest.mark.parametrize("answer", list(ANSWERS))
@pytest.mark.parametrize("argv", ARGVS, ids=lambda a: " ".join(a)[:40])
def test_fast_and_click_paths_say_the_same(env, socket_dir, capfd, argv, answer):
    path = str(socket_dir / "d.sock")
    daemon = FakeDaemon(path, ANSWERS[answer])
    try:
        env.setenv("SLURMJWT_SOCKET", path)
        fast, slow = both(argv, capfd, daemon)
    finally:
        daemon.close()
    assert fast == slow
    if answer == "ok" and len(argv[-1]) < 1000:
        assert fast[0] == 0 and TOKEN in fast[1]


@pytest.mark.parametrize("case", ["socket-option", "socket-option-equals", "variable",
                                  "bad-variable", "no-daemon", "socket-too-long", "hang",
                                  "option-beats-environment"])
def test_sockets_variables_and_failures(env, socket_dir, capfd, case):
    path = str(socket_dir / "d.sock")
    daemon = FakeDaemon(path, "hang" if case == "hang" else ANSWERS["ok"])
    argv = ["refresh"]
    try:
        if case == "socket-option":
            argv = ["--socket", path, "token"]
        elif case == "socket-option-equals":
            argv = [f"--socket={path}", "refresh", "--csh"]
        elif case in ("variable", "bad-variable"):
            env.setenv("SLURMJWT_SOCKET", path)
            env.setenv("SLURMJWT_VARIABLE", "MY_JWT" if case == "variable" else "1-BAD")
        elif case == "no-daemon":
            env.setenv("SLURMJWT_SOCKET", str(socket_dir / "none.sock"))
        elif case == "socket-too-long":
            argv = ["--socket", "/tmp/" + "s" * 199, "token"]
        elif case == "hang":
            env.setenv("SLURMJWT_SOCKET", path)
            argv = ["refresh", "--timeout", "0.2"]
        elif case == "option-beats-environment":
            env.setenv("SLURMJWT_SOCKET", str(socket_dir / "none.sock"))
            argv = ["--socket", path, "token"]
        fast, slow = both(argv, capfd, daemon)
    finally:
        daemon.close()
    assert fast == slow
    expected = {"no-daemon": 3, "socket-too-long": 2, "hang": 3}.get(case, 0)
    assert fast[0] == expected, fast
    if case == "variable":
        assert fast[1].startswith("export MY_JWT=")


@pytest.mark.parametrize("exists", [True, False])
@pytest.mark.parametrize("path", ["token", "t\u00e9 ken", "t\x1b[2Jx"])
def test_token_file(env, tmp_path, capfd, exists, path):
    file = tmp_path / path
    if exists:
        file.write_text(TOKEN + "\n")
    env.setenv("SLURMJWT_TOKEN_FILE", str(file))
    fast, slow = both(["token", "--file"], capfd)
    assert fast == slow and fast[0] == (0 if exists else 7)


@pytest.mark.parametrize("argv", [
    [], ["-h"], ["--help"], ["--version"], ["show"], ["status"], ["token", "--help"],
    ["token", "-h"], ["refresh", "--help"], ["token", "--bogus"], ["token", "--lifetime", "x"],
    ["token", "--lifetime", "0"], ["token", "--lifetime", "1000000000"],
    ["token", "--lifetime", "+5"], ["token", "--lifetime", " 5"], ["token", "--lifetime", "1_0"],
    ["token", "--lifetime", "\u0665"], ["token", "--lifetime", "9" * 5000], ["token", "--lifetime"],
    ["token", "--user"], ["token", "--user", "--file"], ["token", "--user", ""],
    ["token", "--user", "-x"], ["token", "--file=yes"], ["token", "--file", "--file"],
    ["token", "--lifetime", "5", "--lifetime", "6"], ["refresh", "--timeout", "99"],
    ["refresh", "--timeout", "0.001"], ["refresh", "--timeout", "1e1"],
    ["refresh", "--timeout", "nan"], ["refresh", "--timeout", ".5"], ["refresh", "--user", "x"],
    ["refresh", "--file"], ["token", "--csh"], ["token", "extra"], ["token", "--", "--file"],
    ["--socket"], ["--socket", "x"], ["--socket", "", "token"], ["--socket=", "token"],
    ["token", "--socket", "x"], ["--bogus", "token"], ["token", "token"], ["-", "token"],
    ["--lifetime", "5", "token"], ["Token"], ["--socket", "x", "--socket", "y", "token"],
], ids=lambda a: " ".join(a)[:40] or "no-args")
def test_anything_else_goes_to_click(env, argv):
    assert fastcli.parse(argv) is None


def test_completion_goes_to_click(env):
    env.setenv("_SLURMJWT_COMPLETE", "bash_complete")
    assert fastcli.parse(["token"]) is None


def test_the_options_table_is_clicks():
    """FAST_OPTIONS (and GROUP_OPTIONS) name exactly click's options of token, refresh and the
    group, with their parameters, kinds, bounds and defaults; -h/--help go to click."""

    def table(command: click.Command) -> dict[str, tuple]:
        out = {}
        for param in command.params:
            if not isinstance(param, click.Option) or param.name == "version":
                continue
            kind = (fastcli.FLAG if param.is_flag else
                    fastcli.INT if isinstance(param.type, click.IntRange) else
                    fastcli.FLOAT if isinstance(param.type, click.FloatRange) else
                    fastcli.TEXT if param.type is click.STRING else repr(param.type))
            bounds = (param.type.min, param.type.max) if kind in (fastcli.INT, fastcli.FLOAT) else None
            assert not param.multiple and param.nargs == 1 and not param.secondary_opts
            assert not (kind in (fastcli.INT, fastcli.FLOAT) and (param.type.min_open or param.type.max_open))
            for opt in param.opts:
                out[opt] = (param.name, kind, bounds)
        return out

    assert table(cli.main) == fastcli.GROUP_OPTIONS
    assert cli.main.params[0].envvar == fastcli.SOCKET_VARIABLE
    assert cli.main.context_settings["help_option_names"] == ["-h", "--help"]
    for name, options in fastcli.FAST_OPTIONS.items():
        assert table(cli.main.commands[name]) == options
        assert not [p for p in cli.main.commands[name].params if isinstance(p, click.Argument)]
        # what click passes when an option is not given is what run_token and run_refresh take
        defaults = cli.main.commands[name].make_context(name, []).params
        signature = inspect.signature(fastcli.RUN[name]).parameters
        assert defaults == {k: signature[k].default for k in defaults}


# -- wire.py's plain lines are protocol.py's -------------------------------------------------
@pytest.mark.parametrize("args", [
    {}, {"user": "nobody"}, {"user": "nobody", "lifetime": 600}, {"lifetime": 1},
    {"user": ""}, {"user": "a b"}, {"user": "é"}, {"user": "x%y"}, {"user": "x" * 1000},
    {"user": "x" * 1020}, {"user": "sjt-alice@EXAMPLE.ORG,+~:/"},
], ids=lambda a: repr(a)[:30])
def test_plain_request_is_protocols(args):
    try:
        want = protocol.encode_request("MINT", args)
    except ValueError:
        want = None
    got = wire.plain_request("MINT", args)
    assert got is None or got == want
    if all(set(str(v)) <= set(wire.SAFE) for v in args.values()) and want is not None:
        assert got == want  # the plain case is taken, not handed on


def test_plain_answers_are_read_as_protocol_reads_them():
    """Random answers over the protocol's alphabet and a few others: plain_ok reads each as
    parse_response does, or hands it on (None); the common answers it reads itself."""
    rng = random.Random(15)
    pieces = ["SJWT/1", "OK", "ERR", " ", "=", "token", "user", "a", "Z", "_", "%", "%41", "%zz",
              "-", ".", "é", "\x00", "\t", "k" * 33, "SJWT/2"]
    lines = [b"SJWT/1 OK", b"SJWT/1 OK ", b"SJWT/1 OK token=a.b.c", b"SJWT/1 OKtoken=x",
             b"SJWT/1 OK  token=x", b"SJWT/1 OK =x", b"SJWT/1 OK Token=x", b"SJWT/1 OK t=1 t=2",
             b"SJWT/1 OK a=" + b"\xff"]
    keys, values = ["token", "user", "uid", "x_y", "A"], ["v", "a.b", "", "%2F", "é", "="]
    for _ in range(20000):
        lines.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))).encode())
        pairs = (f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randint(0, 4)))
        lines.append(("SJWT/1 OK " + " ".join(pairs)).encode())
    for line in lines:
        got = wire.plain_ok(line)
        if got is None:
            continue
        answer = protocol.parse_response(line)
        assert answer.ok and answer.fields == got, line
    assert wire.plain_ok(ANSWERS["ok"].rstrip(b"\n")) == {"token": TOKEN, "user": "nobody",
                                                         "uid": "65534"}


_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")  # cli.py's, before
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")


@pytest.mark.parametrize("text", [
    TOKEN, "a.b.c", "a..c", ".b.c", "a.b.", "a.b", "a.b.c.d", "a.b.c\n", "a b.c.d", "a.b.c$",
    "\u0665.b.c", "", "A_-9.x.y", "SLURM_JWT", "_", "a" * 64, "a" * 65, "1A", "A-B", "é", "A\n",
    "MY_JWT", "A" * 63 + "1",
])
def test_hand_written_checks_are_the_regexes(text, monkeypatch):
    assert fastcli.is_jwt(text) == bool(_JWT.match(text))
    monkeypatch.setenv("SLURMJWT_VARIABLE", text.replace("\n", "") or "x")
    name = os.environ["SLURMJWT_VARIABLE"]
    assert fastcli.variable_name() == (name if _NAME.match(name) else "SLURM_JWT")


# -- as the launcher runs it -------------------------------------------------------------------
LAUNCHER = ("import sys; sys.path.insert(0, {root!r}); sys.argv[0] = 'slurmjwt'\n"
            "{entry}\n")
FAST_ENTRY = ("import atexit\n"
              "atexit.register(lambda: sys.stderr.write(' '.join(sorted(m for m in sys.modules "
              "if m.split('.')[0] in ('click', 're', 'enum', 'socket', 'typing', 'dataclasses') "
              "or m in ('slurmjwtd.protocol', 'slurmjwtd.config')))))\n"
              "from slurmjwtd.fastcli import main; main()")
CLICK_ENTRY = "from slurmjwtd.cli import main; main()"


def launch(entry: str, args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    code = LAUNCHER.format(root=str(ROOT), entry=entry)
    return subprocess.run([sys.executable, "-I", "-c", code, *args],
                          env={"PATH": "/usr/bin:/bin", **env}, timeout=30,
                          **(kwargs or {"capture_output": True}))


def test_token_and_refresh_import_neither_click_nor_protocol(socket_dir):
    path = str(socket_dir / "d.sock")
    daemon = FakeDaemon(path, ANSWERS["ok"])
    try:
        for args in (["token"], ["refresh", "--csh", "--lifetime", "60"]):
            run = launch(FAST_ENTRY, args, {"SLURMJWT_SOCKET": path})
            assert run.returncode == 0 and TOKEN.encode() in run.stdout, run
            assert run.stderr == b"", f"the fast path imported {run.stderr.decode()}"
    finally:
        daemon.close()


@pytest.mark.parametrize("args", [["token"], ["refresh"], ["token", "--bogus"], ["--version"]])
def test_a_closed_stdout_is_status_1_and_silent_on_both_paths(socket_dir, args):
    """click's EPIPE rule: exit 1, nothing on stderr, no traceback at exit."""
    path = str(socket_dir / "d.sock")
    daemon = FakeDaemon(path, ANSWERS["ok"])
    try:
        results = []
        for entry in (FAST_ENTRY.rsplit("\n", 1)[1], CLICK_ENTRY):
            read_end, write_end = os.pipe()
            os.close(read_end)
            try:
                run = launch(entry, args, {"SLURMJWT_SOCKET": path}, stdout=write_end,
                             stderr=subprocess.PIPE)
            finally:
                os.close(write_end)
            results.append((run.returncode, run.stderr))
    finally:
        daemon.close()
    assert results[0] == results[1]
    if args[-1] != "--bogus":
        assert results[0] == (1, b"")
