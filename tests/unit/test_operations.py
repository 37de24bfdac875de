"""Operations: one request line and a caller in, one answer line out, for every operation in
OPERATIONS and every code in protocol.Code; the state's counters, sessions and audit lines
after it. The caller is given, as the server gives it from SO_PEERCRED (conftest.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import jwt
import pytest

from slurmjwtd.operations import OPERATIONS, Operations, Pending
from slurmjwtd.policy import Caller
from slurmjwtd.protocol import Code, Response, parse_response
from slurmjwtd.revocation import Revocation
from slurmjwtd.signer import HS256Signer

from .conftest import NO_SUCH_USER, NOBODY, ROOT, USER, BrokenSigner
from .test_server import FRAMING_CODES

SESSION = "0123456789abcdef"  # no such session
# a request of each operation that passes its table entry's checks (its required arguments)
REQUESTS = {"MINT": "SJWT/1 MINT user=nobody", "OPEN": "SJWT/1 OPEN user=nobody",
            "CLOSE": f"SJWT/1 CLOSE session={SESSION}", "STATUS": "SJWT/1 STATUS",
            "METRICS": "SJWT/1 METRICS", "EXPLAIN": "SJWT/1 EXPLAIN user=nobody",
            "REVOKE": "SJWT/1 REVOKE user=nobody", "UNREVOKE": "SJWT/1 UNREVOKE user=nobody"}


@pytest.fixture
def ops(state):
    ops = Operations(state)
    yield ops
    ops.shutdown()


def ask(ops: Operations, caller: Caller, line: str, root_socket: bool = True) -> Response:
    """The answer to LINE from CALLER (by default through the root socket, as the PAM module's
    OPEN and CLOSE come), waiting for a blocking signer as the server would."""
    answer = ops.answer(caller, line.encode(), root_socket)
    if isinstance(answer, Pending):
        answer = ops.complete(answer)
    assert answer.endswith(b"\n") and answer.count(b"\n") == 1, answer
    return parse_response(answer[:-1])


def test_every_operation_has_a_request_here():
    assert REQUESTS.keys() == OPERATIONS.keys()


# -- every code ---------------------------------------------------------------------------------
@dataclass
class Case:
    caller: Caller
    requests: list[str]  # the last one's answer is checked
    reason: str | None  # its audit line's; None: not audited
    op: str = "mint"
    settings: dict[str, object] = field(default_factory=dict)
    signer: str = ""  # "down": scontrol failing; "broken": BrokenSigner
    revoked: bool = False  # root revoked nobody first


DOWN = 'echo "scontrol: error: Unable to contact slurm controller (connect failure)" >&2; exit 1'
CODES = {
    Code.BAD_REQUEST: Case(USER, ["SJWT/1 MINT colour=blue"], "bad-request"),
    Code.UNSUPPORTED_VERSION: Case(USER, ["SJWT/2 STATUS"], "unsupported-version", op="-"),
    Code.PERMISSION_DENIED: Case(USER, ["SJWT/1 MINT user=root"], "other-user"),
    Code.NO_SESSION: Case(USER, ["SJWT/1 MINT"], "no-session"),
    Code.UNKNOWN_USER: Case(ROOT, [f"SJWT/1 MINT user={NO_SUCH_USER}"], "unknown-user"),
    Code.BELOW_MIN_UID: Case(ROOT, ["SJWT/1 MINT user=root"], "below-min-uid"),
    Code.LIFETIME_TOO_LONG: Case(ROOT, ["SJWT/1 MINT user=nobody lifetime=43201"],
                                 "lifetime-too-long"),
    Code.POLICY_DENIED: Case(ROOT, ["SJWT/1 MINT user=nobody"], "deny-user",
                             settings={"deny_users": ("nobody",)}),
    Code.RATE_LIMITED: Case(USER, ["SJWT/1 MINT", "SJWT/1 MINT"], "rate-limit",
                            settings={"rate_limit": 1, "require_session": False}),
    Code.SIGNER_UNAVAILABLE: Case(ROOT, ["SJWT/1 MINT user=nobody"], "signer", signer="down"),
    Code.NO_SUCH_SESSION: Case(ROOT, [f"SJWT/1 CLOSE session={SESSION}"], "no-such-session",
                               op="close"),
    Code.INTERNAL: Case(ROOT, ["SJWT/1 MINT user=nobody"], None, signer="broken"),
    Code.REVOKED: Case(ROOT, ["SJWT/1 MINT user=nobody"], "revoked", revoked=True),
}


def test_every_code_is_tested():
    """Each code here, or (framing: too-large, timeout, busy) in test_server.py."""
    assert CODES.keys() | FRAMING_CODES == set(Code)
    assert not CODES.keys() & FRAMING_CODES


@pytest.mark.parametrize("code", list(CODES), ids=lambda code: code.value)
def test_each_code(make_state, scontrol, caplog, code):
    case = CODES[code]
    signer = {"down": lambda: scontrol(DOWN), "broken": BrokenSigner, "": lambda: None}[case.signer]()
    state = make_state(signer, **case.settings)
    if case.revoked:
        state.revocations.revoke(Revocation("nobody", NOBODY.pw_uid, 0, 0, "a test"))
    ops = Operations(state)
    answers = [ask(ops, case.caller, line) for line in case.requests]
    ops.shutdown()
    last = answers[-1]
    assert not last.ok and last.code == code.value and last.message, last
    assert all(a.ok for a in answers[:-1])
    assert (state.counters.granted, state.counters.refused) == (len(answers) - 1, 1)
    refused = [line for line in state.audit_log.lines if line["decision"] == "refused"]
    if case.reason is None:  # a bug: logged with its traceback, not audited as a decision
        assert refused == [] and "internal error" in caplog.text and "RuntimeError" in caplog.text
        return
    expected = {"op": case.op, "caller_uid": case.caller.uid, "reason": case.reason,
                "code": code.value, "detail": last.message}
    assert len(refused) == 1 and {k: refused[0].get(k) for k in expected} == expected


# -- each operation's table entry -----------------------------------------------------------------
@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_root_only_operations_refuse_users(ops, state, op):
    """Before anything is looked up or opened, whatever the request says."""
    answer = ask(ops, USER, REQUESTS[op])
    if not OPERATIONS[op].root_only:
        assert answer.code != Code.PERMISSION_DENIED.value
        return
    assert answer.code == Code.PERMISSION_DENIED.value and f"only root may {op.lower()}" in answer.message
    line = state.audit_log.lines[-1]
    assert (line["reason"], line["op"], line["caller_uid"]) == ("not-root", op.lower(), USER.uid)
    assert all(line.get(key) == "nobody" for key in OPERATIONS[op].audited)
    assert len(state.registry) == 0 and state.counters.granted == 0


@pytest.mark.parametrize("op", [op for op, entry in OPERATIONS.items() if entry.root_socket])
def test_root_socket_operations_come_only_through_it(ops, state, op):
    """Even from root: a PAM stack pointed at the public socket shows at once."""
    public = ask(ops, ROOT, REQUESTS[op], root_socket=False)
    assert public.code == Code.PERMISSION_DENIED.value and "root socket" in public.message
    assert state.audit_log.lines[-1]["reason"] == "public-socket"
    through_it = ask(ops, ROOT, REQUESTS[op], root_socket=True)
    assert through_it.code != Code.PERMISSION_DENIED.value


@pytest.mark.parametrize("op, key", [(op, key) for op, entry in OPERATIONS.items()
                                     for key in entry.required])
@pytest.mark.parametrize("given", ["missing", "empty"])
def test_required_arguments(ops, state, op, key, given):
    line = f"SJWT/1 {op}" + (f" {key}=" if given == "empty" else "")
    answer = ask(ops, ROOT, line)
    assert answer.code == Code.BAD_REQUEST.value and answer.message == f"{op} needs {key}="
    assert len(state.registry) == 0 and state.counters.granted == 0


@pytest.mark.parametrize("op", sorted(OPERATIONS))
@pytest.mark.parametrize("caller", [ROOT, USER], ids=["root", "user"])
def test_unknown_arguments_are_refused(ops, op, caller):
    """A typo never goes unnoticed; checked first, for anyone."""
    answer = ask(ops, caller, REQUESTS[op] + " colour=blue")
    assert answer.code == Code.BAD_REQUEST.value and "takes no argument colour" in answer.message


LIFETIME_OPS = sorted(op for op, entry in OPERATIONS.items() if "lifetime" in entry.args)
BAD_NUMBERS = ["0", "-1", "+1", "1_000", "1e3", "0x10", "1.5", "abc", "9999999999", "%201",
               "%C2%B2", "%D9%A3%D9%A6%D9%A0%D9%A0", "%EF%BC%91"]  # ², Arabic-Indic 3600, fullwidth 1


@pytest.mark.parametrize("op", LIFETIME_OPS)
@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_bad_numbers(ops, state, op, value):
    answer = ask(ops, ROOT, f"{REQUESTS[op]} lifetime={value}")
    assert answer.code == Code.BAD_REQUEST.value and "lifetime must be a whole number" in answer.message
    assert len(state.registry) == 0 and state.counters.granted == 0


@pytest.mark.parametrize("op", LIFETIME_OPS)
@pytest.mark.parametrize("value, seconds", [("1", 1), ("000000060", 60), ("43200", 43200)])
def test_good_numbers(ops, op, value, seconds):
    answer = ask(ops, ROOT, f"{REQUESTS[op]} lifetime={value}")
    assert answer.ok and answer.fields["lifetime"] == str(seconds), answer


# -- grants -----------------------------------------------------------------------------------------
def claims(key_file, token: str) -> dict:
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}  # what Slurm accepts
    return jwt.decode(token, key_file.read_bytes(), algorithms=["HS256"])


@pytest.mark.parametrize("asked, lifetime", [("", 3600), (" lifetime=600", 600)])
def test_root_mints_a_token_for_a_user(ops, state, key_file, asked, lifetime):
    answer = ask(ops, ROOT, f"SJWT/1 MINT user=nobody{asked}")
    assert answer.ok, answer
    fields = answer.fields
    got = claims(key_file, fields["token"])
    assert got["sun"] == "nobody" and got["exp"] - got["iat"] == lifetime
    assert (str(got["exp"]), got["jti"]) == (fields["exp"], fields["jti"])
    assert abs(got["iat"] - time.time()) < 5
    assert (fields["user"], fields["slurm_user"], fields["lifetime"]) == ("nobody", "nobody", str(lifetime))
    [line] = state.audit_log.lines
    assert line == {"decision": "granted", "op": "mint", "caller_uid": 0, "caller_pid": ROOT.pid,
                    "user": "nobody", "uid": NOBODY.pw_uid, "slurm_user": None,
                    "reason": "root-request", "rule": "default", "lifetime": lifetime,
                    "exp": got["exp"], "jti": got["jti"]}
    assert (state.counters.granted, state.counters.refused) == (1, 0)


def test_a_user_gets_her_token_only_while_a_session_lives(ops, state, key_file):
    assert ask(ops, USER, "SJWT/1 MINT").code == Code.NO_SESSION.value
    opened = ask(ops, ROOT, "SJWT/1 OPEN user=nobody tty=ssh rhost=10.0.0.5 service=sshd")
    assert opened.ok, opened
    session = opened.fields["session"]
    assert claims(key_file, opened.fields["token"])["sun"] == "nobody"
    assert (opened.fields["uid"], opened.fields["gid"]) == (str(NOBODY.pw_uid), str(NOBODY.pw_gid))
    assert state.registry.dirty and state.registry.has_live_session(NOBODY.pw_uid)
    assert state.audit_log.lines[-1] | {"jti": None, "exp": None} == {
        "decision": "granted", "op": "open", "caller_uid": 0, "caller_pid": ROOT.pid, "user": "nobody",
        "uid": NOBODY.pw_uid, "slurm_user": None, "reason": "root-request", "rule": "default",
        "lifetime": 3600, "exp": None, "jti": None, "session": session, "tty": "ssh",
        "rhost": "10.0.0.5", "service": "sshd"}
    own = ask(ops, USER, "SJWT/1 MINT lifetime=60")
    assert own.ok and claims(key_file, own.fields["token"])["sun"] == "nobody"
    assert state.audit_log.lines[-1]["reason"] == "own-session"
    by_name = ask(ops, USER, "SJWT/1 MINT user=nobody")  # her own name: the same
    assert by_name.ok
    closed = ask(ops, ROOT, f"SJWT/1 CLOSE session={session}")
    assert closed.fields == {"session": session, "user": "nobody", "remaining": "0"}
    assert ask(ops, USER, "SJWT/1 MINT").code == Code.NO_SESSION.value
    assert ask(ops, ROOT, f"SJWT/1 CLOSE session={session}").code == Code.NO_SUCH_SESSION.value
    assert (state.counters.granted, state.counters.refused) == (3, 3)  # CLOSE is no token


def test_close_says_how_many_sessions_remain(ops):
    first, second = (ask(ops, ROOT, "SJWT/1 OPEN user=nobody").fields["session"] for _ in range(2))
    assert ask(ops, ROOT, f"SJWT/1 CLOSE session={first}").fields["remaining"] == "1"
    assert ask(ops, ROOT, f"SJWT/1 CLOSE session={second}").fields["remaining"] == "0"


def test_no_session_opens_for_a_leader_already_gone(ops, state, gone_pid):
    answer = ask(ops, Caller(0, 0, gone_pid), "SJWT/1 OPEN user=nobody")
    assert answer.code == Code.BAD_REQUEST.value and "exited before its session opened" in answer.message
    assert len(state.registry) == 0 and state.counters.granted == 0


@pytest.mark.parametrize("line, code", [
    ("SJWT/1 OPEN user=root", Code.BELOW_MIN_UID),
    (f"SJWT/1 OPEN user={NO_SUCH_USER}", Code.UNKNOWN_USER),
    ("SJWT/1 OPEN user=nobody lifetime=50000", Code.LIFETIME_TOO_LONG),
])
def test_a_refused_token_opens_no_session(ops, state, line, code):
    assert ask(ops, ROOT, line).code == code.value
    assert len(state.registry) == 0 and not state.registry.dirty


def test_a_failed_signer_leaves_no_session_open(make_state, scontrol):
    state = make_state(scontrol(DOWN))
    ops = Operations(state)
    answer = ask(ops, ROOT, "SJWT/1 OPEN user=nobody")
    ops.shutdown()
    assert answer.code == Code.SIGNER_UNAVAILABLE.value and "Unable to contact" in answer.message
    assert len(state.registry) == 0 and state.counters.granted == 0


def test_a_blocking_signer_mints_in_a_worker(make_state, scontrol, tmp_path):
    """scontrol is run off the loop: the answer is Pending, then complete() makes it."""
    token = HS256Signer(b"k" * 32).mint("nobody", 600, int(time.time())).jwt
    state = make_state(scontrol(f'echo "$@" > {tmp_path}/argv; echo SLURM_JWT={token}'))
    ops = Operations(state)
    pending = ops.answer(ROOT, b"SJWT/1 MINT user=nobody lifetime=600", True)
    assert isinstance(pending, Pending)
    answer = parse_response(ops.complete(pending)[:-1])
    ops.shutdown()
    assert answer.ok and answer.fields["token"] == token
    assert (tmp_path / "argv").read_text() == "token username=nobody lifespan=600\n"
    assert state.audit_log.lines[-1]["decision"] == "granted" and state.counters.granted == 1


def test_users_are_rate_limited_root_is_not(make_state):
    state = make_state(rate_limit=2, require_session=False)
    ops = Operations(state)
    codes = [ask(ops, USER, "SJWT/1 MINT").code or "ok" for _ in range(3)]
    assert codes == ["ok", "ok", Code.RATE_LIMITED.value]
    assert state.audit_log.lines[-1]["rule"] == "rate_limit:2/60s"
    assert all(ask(ops, ROOT, "SJWT/1 MINT user=nobody").ok for _ in range(5))


def test_the_slurm_name_is_mapped(make_state, key_file):
    state = make_state(user_map={"nobody": "nobody-slurm"})
    answer = ask(Operations(state), ROOT, "SJWT/1 MINT user=nobody")
    assert answer.fields["user"] == "nobody" and answer.fields["slurm_user"] == "nobody-slurm"
    assert claims(key_file, answer.fields["token"])["sun"] == "nobody-slurm"
    assert state.audit_log.lines[-1]["slurm_user"] == "nobody-slurm"


def test_a_caller_whose_uid_nss_does_not_know(ops):
    answer = ask(ops, Caller(3_999_999, 3_999_999, 1), "SJWT/1 MINT")
    assert answer.code == Code.UNKNOWN_USER.value and "uid 3999999" in answer.message


# -- STATUS and EXPLAIN: no decision, nothing audited ------------------------------------------------
def test_status(ops, state):
    ask(ops, ROOT, "SJWT/1 MINT user=nobody")
    ask(ops, USER, "SJWT/1 MINT")
    audited = len(state.audit_log.lines)
    answer = ask(ops, USER, "SJWT/1 STATUS", root_socket=False)
    assert answer.ok and answer.fields.keys() == {"version", "protocol", "signer", "sessions",
                                                  "granted", "refused", "renewed", "token_files",
                                                  "revoked", "revocation_file", "fast_path",
                                                  "uptime"}
    assert [answer.fields[k] for k in ("protocol", "signer", "sessions", "granted", "refused",
                                       "revocation_file", "fast_path")] == [
        "1", "hs256", "0", "1", "1", "ok", "off"]
    assert len(state.audit_log.lines) == audited


def test_metrics_count_refusals_by_code_and_signer_failures(make_state, scontrol):
    """METRICS: anyone may ask; numbers and codes only, no user name, no token; not audited."""
    state = make_state(scontrol(DOWN))
    ops = Operations(state)
    try:
        ask(ops, USER, "SJWT/1 MINT user=root")  # permission-denied
        ask(ops, ROOT, "SJWT/1 MINT user=root")  # below-min-uid
        ask(ops, ROOT, "SJWT/1 MINT user=nobody")  # signer-unavailable
        ask(ops, ROOT, "SJWT/1 MINT user=nobody")
        ask(ops, USER, "SJWT/1 NOSUCH")  # bad-request
        audited = len(state.audit_log.lines)
        answer = ask(ops, USER, "SJWT/1 METRICS", root_socket=False)
    finally:
        ops.shutdown()
    f = answer.fields
    assert answer.ok and len(state.audit_log.lines) == audited
    assert f.keys() == {"version", "signer", "sessions", "granted", "refused", "renewed",
                        "token_files", "revoked", "signer_failures", "fast_path_granted",
                        "fast_path_passed", "refusals", "latency", "latency_sum", "uptime"}
    assert f["refusals"] == ("bad-request:1,below-min-uid:1,permission-denied:1,"
                             "signer-unavailable:2")
    assert (f["refused"], f["signer_failures"], f["granted"]) == ("5", "2", "0")
    # the server counts latency (from accept to answer): Operations alone answers none
    assert f["latency"] == "0.0005:0,0.001:0,0.0025:0,0.005:0,0.01:0,0.05:0,0.25:0,1:0,5:0,inf:0"
    line = ops.answer(USER, b"SJWT/1 METRICS")
    assert b"nobody" not in line and b"root" not in line and b"eyJ" not in line


def test_metrics_fit_an_answer_with_every_code_counted(ops, state):
    """The longest METRICS answer (every code counted, huge counts) fits the 4096-byte limit."""
    for code in Code:
        state.counters.refusals[code.value] = 10**15
    state.counters.latency = [10**15] * len(state.counters.latency)
    state.counters.latency_sum = 10.0**12
    line = ops.answer(USER, b"SJWT/1 METRICS")
    assert line.startswith(b"SJWT/1 OK ") and len(line) < 1500  # docs/protocol.md; 4096 at most
    assert len(parse_response(line[:-1]).fields["refusals"].split(",")) == len(Code)


def test_explain_says_what_mint_would_decide(make_state):
    state = make_state(rate_limit=5, require_session=False)
    ops = Operations(state)
    ask(ops, USER, "SJWT/1 MINT")  # takes one from the rate limit
    before = (state.counters.granted, state.counters.refused, len(state.audit_log.lines))
    granted = ask(ops, ROOT, "SJWT/1 EXPLAIN user=nobody lifetime=60")
    assert granted.fields == {"decision": "granted", "reason": "root-request", "rule": "default",
                              "code": "-", "message": "-", "uid": str(NOBODY.pw_uid),
                              "slurm_user": "nobody", "groups": "-", "sessions": "0",
                              "rate_left": "4", "revoked": "no", "lifetime": "60",
                              "max_lifetime": "43200"}
    refused = ask(ops, ROOT, "SJWT/1 EXPLAIN user=root")
    assert refused.ok and refused.fields["decision"] == "refused"
    assert refused.fields["code"] == Code.BELOW_MIN_UID.value and "lifetime" not in refused.fields
    unknown = ask(ops, ROOT, f"SJWT/1 EXPLAIN user={NO_SUCH_USER}")
    assert unknown.fields["code"] == Code.UNKNOWN_USER.value and "uid" not in unknown.fields
    assert ask(ops, ROOT, "SJWT/1 EXPLAIN user=nobody").fields["rate_left"] == "4"  # took none
    assert (state.counters.granted, state.counters.refused, len(state.audit_log.lines)) == before
