"""DaemonState.apply: a reload puts the new configuration and signer in place, keeps the keys
that take a restart, and keeps the rate limiter's counts unless its limits changed."""

from __future__ import annotations

import dataclasses

from slurmjwtd.signer import HS256Signer
from slurmjwtd.state import LATENCY_BUCKETS, Counters


def test_keys_that_take_a_restart_keep_their_old_values(state):
    old = state.config
    new = dataclasses.replace(old, socket="/elsewhere/public.sock", session_file="/elsewhere/s.json",
                              lifetime=900, audit_summary_interval=2.0)
    signer = HS256Signer(b"n" * 32)
    assert state.apply(new, signer) == ["socket", "session_file"]
    assert (state.config.socket, state.config.session_file) == (old.socket, old.session_file)
    assert state.config.lifetime == 900 and state.signer is signer
    assert state.audit.interval == 2.0


def test_the_rate_limiter_survives_a_reload_that_keeps_its_limits(state):
    limiter = state.limiter
    limiter.allow(65534, 100.0)
    state.apply(dataclasses.replace(state.config, lifetime=900), state.signer)
    assert state.limiter is limiter and state.limiter.left(65534, 100.0) == 59
    state.apply(dataclasses.replace(state.config, rate_limit=5), state.signer)
    assert state.limiter.left(65534, 100.0) == 5 and state.limiter.rate == 5


def test_counters_count_refusals_by_code_and_latency_by_bucket():
    counters = Counters()
    counters.refusal("busy")
    counters.refusal("busy")
    counters.refusal("revoked")
    assert counters.refused == 3 and counters.refusals == {"busy": 2, "revoked": 1}
    for seconds in (0.0001, 0.0005, 0.0006, 0.3, 7.0, LATENCY_BUCKETS[-1]):
        counters.answered(seconds)
    # a bucket counts up to and including its bound (Prometheus' le); the last one the rest
    assert counters.latency == [2, 1, 0, 0, 0, 0, 0, 1, 1, 1]
    assert abs(counters.latency_sum - 12.3012) < 1e-9
