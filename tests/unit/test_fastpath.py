"""The fast path's templates (fastpath.templates) against what the Python path makes for the
same grant: filled as fastpath.c fills them, they must give the Python answer, claims, audit
line and journal fields byte for byte. The compiled path itself runs in tests/test_fastpath.py
(root: real users, real daemons side by side)."""

from __future__ import annotations

import base64

import pytest

from slurmjwtd import fastpath
from slurmjwtd.audit import format_audit
from slurmjwtd.operations import Operations
from slurmjwtd.protocol import parse_response
from slurmjwtd.ratelimit import UNLIMITED, RateLimiter

from .conftest import ROOT, USER

NODE = "login1"


def fill(template: bytes, values: dict[str, object]) -> str:
    """What fastpath.c's expand() does: each slot byte replaced by its value."""
    text = template.decode()
    for slot, value in values.items():
        text = text.replace(slot, str(value))
    return text


@pytest.mark.parametrize("settings, slurm_user, rule", [
    ({}, "nobody", "default"),
    ({"user_map": {"nobody": "nob.ody"}}, "nob.ody", "default"),
    ({"user_map": {"nobody": "no body \"q\" \u00e9"}}, "no body \"q\" \u00e9", "default"),
    ({"group_lifetime": {"nogroup": 600}}, "nobody", "group:nogroup"),
], ids=["plain", "mapped", "quoted", "group-rule"])
def test_the_templates_make_what_python_makes(make_state, settings, slurm_user, rule):
    state = make_state(rate_limit=0, **settings)
    ops = Operations(state)
    assert ops.answer(ROOT, b"SJWT/1 OPEN user=nobody tty=pts/1 service=sshd",
                      root_socket=True).startswith(b"SJWT/1 OK")
    answer = ops.answer(USER, b"SJWT/1 MINT")
    fields = parse_response(answer.rstrip(b"\n")).fields
    line = state.audit_log.lines[-1]
    token = fields["token"]
    claims = base64.urlsafe_b64decode(token.split(".")[1] + "==").decode()
    iat = int(claims.split('"iat":')[1].split(",")[0])

    texts = fastpath.templates("nobody", USER.uid, slurm_user, rule, NODE)
    assert texts is not None
    values = {fastpath.PID: USER.pid, fastpath.LIFETIME: fields["lifetime"],
              fastpath.EXP: fields["exp"], fastpath.JTI: fields["jti"], fastpath.TOKEN: token,
              fastpath.IAT: iat}
    claims_t, answer_t, audit_t, journal_t = (fill(t, values) for t in texts)
    assert claims_t == claims
    assert answer_t.encode() == answer
    assert (line["reason"], line["rule"]) == ("own-session", rule)
    assert audit_t == format_audit({**line, "node": NODE})
    assert journal_t.split("\n") == [f"SLURMJWT_{k.upper()}={v}" for k, v in {**line, "node": NODE}.items()
                                     if v is not None and v != ""]


@pytest.mark.parametrize("name", ["new\nline", "tab\there", "slot\x01", "del\x7f"[:-1] + "\x05"])
def test_a_value_that_could_pass_for_a_slot_or_a_field_end_leaves_the_uid_to_python(name):
    assert fastpath.templates(name, 1000, "alice", "default", NODE) is None
    assert fastpath.templates("alice", 1000, name, "default", NODE) is None
    assert fastpath.templates("alice", 1000, "alice", name, NODE) is None


# -- the rate limit's lease ------------------------------------------------------------------
T = 1000.0


@pytest.mark.parametrize("rate, spent, most, lent", [
    (60, 0, 16, 16), (60, 50, 16, 10), (5, 0, 16, 5), (5, 5, 16, 0), (1, 0, 16, 1)])
def test_a_lease_takes_what_the_bucket_holds_up_to_most(rate, spent, most, lent):
    limiter = RateLimiter(rate, 60)
    for _ in range(spent):
        assert limiter.allow(1, T)
    assert limiter.lease(1, T, most) == lent
    assert limiter.left(1, T) == rate - spent - lent


@pytest.mark.parametrize("rate, lent, spent", [(60, 16, 0), (60, 16, 16), (60, 16, 7), (3, 3, 1)])
def test_what_a_lease_did_not_spend_comes_back_and_no_more(rate, lent, spent):
    limiter = RateLimiter(rate, 60)
    assert limiter.lease(1, T, lent) == lent
    limiter.give_back(1, lent - spent, T)
    assert limiter.left(1, T) == rate - spent
    limiter.give_back(1, 1000, T)  # never over the rate
    assert limiter.left(1, T) == rate


def test_an_unlimited_rate_lends_without_end():
    limiter = RateLimiter(0, 60)
    assert limiter.lease(1, T, 16) == UNLIMITED
    limiter.give_back(1, UNLIMITED, T)
    assert limiter.allow(1, T)


# -- the Python loop beside the fast path's table ---------------------------------------------
class Table:
    """The fast path's table as operations.py sees it (put, take): entries and their leases,
    each call logged with the number of audit lines written before it."""

    signing = True

    def __init__(self, lines: list) -> None:
        self.lines, self.entries, self.calls = lines, {}, []

    def put(self, uid, budget, lifetime, max_lifetime, leaders, texts) -> bool:
        self.calls.append(("put", len(self.lines)))
        self.entries[uid] = budget
        return True

    def take(self, uid) -> int:
        self.calls.append(("take", len(self.lines)))
        return self.entries.pop(uid, -1)


def python_mints(make_state, rate: int, count: int) -> tuple[Table, list, list[bool]]:
    """A session of nobody's, then COUNT of her own MINTs answered by the Python loop (as if
    the fast path had passed them on); the table, the answers, and for each rate-limit check
    whether her entry was in the table then."""
    state = make_state(rate_limit=rate, rate_window=3600)
    ops = Operations(state)
    ops.fast = table = Table(state.audit_log.lines)
    allow, seen = state.limiter.allow, []

    def probe(uid: int, now: float) -> bool:
        seen.append(uid in table.entries)
        return allow(uid, now)

    state.limiter.allow = probe  # type: ignore[method-assign]
    try:
        assert parse_response(ops.answer(ROOT, b"SJWT/1 OPEN user=nobody", True)[:-1]).ok
        answers = [parse_response(ops.answer(USER, b"SJWT/1 MINT", False)[:-1])
                   for _ in range(count)]
        return table, answers, seen
    finally:
        ops.shutdown()


def test_the_python_loop_answers_a_user_with_her_entry_left_serving(make_state):
    """Her own MINTs that the fast path passed on (a slow request, a busy worker) are decided
    with her entry left in the table, replaced only once granted: taken out first, her other
    requests meanwhile went to Python too, a queue that fed itself (bench.py, `100 in
    flight`: 4,400 tokens/s instead of 28,000)."""
    table, answers, seen = python_mints(make_state, 0, 5)
    assert all(a.ok for a in answers)
    assert seen == [False] + [True] * 4  # the first one made it
    assert table.entries == {USER.uid: UNLIMITED}


@pytest.mark.parametrize("rate", [1, 3, 20])
def test_the_lease_still_counts_against_the_rate_limit(make_state, rate):
    """With the entry left in, a request finds the bucket short: the lease comes back, and no
    more than RATE grants go out in all, the fast path's unspent ones included."""
    table, answers, _ = python_mints(make_state, rate, rate + 3)
    assert [a.ok for a in answers] == [True] * rate + [False] * 3
    assert {a.code for a in answers[rate:]} == {"rate-limited"}
    assert table.entries.get(USER.uid, 0) == 0
