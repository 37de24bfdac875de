"""The CLI's machine-readable output: `slurmjwt metrics` (Prometheus' text exposition format,
from a METRICS answer) and the numbers of `status --json`."""

from __future__ import annotations

import re
import stat

from click.testing import CliRunner

from slurmjwtd.cli import json_value, main, prometheus_text
from slurmjwtd.protocol import Code

METRICS = {"version": "0.1.0", "signer": "hs256", "sessions": "2", "granted": "7", "refused": "3",
           "renewed": "1", "token_files": "1", "revoked": "0", "signer_failures": "1",
           "refusals": "no-session:2,signer-unavailable:1",
           "latency": "0.0005:4,0.001:2,0.0025:0,0.005:0,0.01:0,0.05:0,0.25:0,1:0,5:0,inf:1",
           "latency_sum": "6.012000", "uptime": "99"}
SAMPLE = re.compile(r'slurmjwt_[a-z_]+(\{[a-z]+="[^"\\\n]*"(,[a-z]+="[^"\\\n]*")*\})? '
                    r'(-?[0-9]+(\.[0-9]+)?|NaN)\Z')


def samples(text: str) -> dict[str, str]:
    """TEXT checked line by line against the exposition format: every family has HELP then TYPE
    before its samples; the samples by name and labels."""
    assert text.endswith("\n")
    found, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name.startswith("slurmjwt_")
            typed.add(name)
            continue
        assert SAMPLE.match(line), line
        key, value = line.rsplit(" ", 1)
        assert re.sub(r"(_bucket|_sum|_count)?(\{.*)?$", "", key) in typed, line
        found[key] = value
    return found


def test_metrics_in_prometheus_text_format():
    got = samples(prometheus_text(METRICS))
    assert got["slurmjwt_up"] == "1" and got["slurmjwt_grants_total"] == "7"
    assert got['slurmjwt_info{version="0.1.0",signer="hs256"}'] == "1"
    # every code is there, counted or not, so that rate() sees the first refusal of each
    assert {k for k in got if k.startswith("slurmjwt_refusals_total")} == {
        f'slurmjwt_refusals_total{{code="{c.value}"}}' for c in Code}
    assert got['slurmjwt_refusals_total{code="no-session"}'] == "2"
    assert got['slurmjwt_refusals_total{code="busy"}'] == "0"
    assert got["slurmjwt_signer_failures_total"] == "1" and got["slurmjwt_sessions"] == "2"
    # buckets are cumulative, +Inf is the count
    assert got['slurmjwt_request_duration_seconds_bucket{le="0.0005"}'] == "4"
    assert got['slurmjwt_request_duration_seconds_bucket{le="0.001"}'] == "6"
    assert got['slurmjwt_request_duration_seconds_bucket{le="5"}'] == "6"
    assert got['slurmjwt_request_duration_seconds_bucket{le="+Inf"}'] == "7"
    assert got["slurmjwt_request_duration_seconds_count"] == "7"
    assert got["slurmjwt_request_duration_seconds_sum"] == "6.012000"


def test_metrics_when_the_daemon_does_not_answer():
    assert samples(prometheus_text(None)) == {"slurmjwt_up": "0"}


def test_a_strange_answer_cannot_break_the_format():
    """A daemon (or whatever listens on the socket) sending odd values gives NaN or escaped
    labels, never a line the collector rejects."""
    odd = METRICS | {"granted": "many", "signer": 'a"b\\c', "latency_sum": "1e9",
                     "refusals": 'x"y:1,\u00e9:2'}
    got = samples(prometheus_text(odd))
    assert got["slurmjwt_grants_total"] == "NaN" and got["slurmjwt_request_duration_seconds_sum"] == "NaN"
    assert got['slurmjwt_info{version="0.1.0",signer="a_b_c"}'] == "1"


def test_status_json_counts_are_numbers():
    assert [json_value(v) for v in ("12", "hs256", "0.1.0", "-1", "1" * 19)] == [
        12, "hs256", "0.1.0", "-1", "1" * 19]


def test_metrics_output_file_when_the_daemon_does_not_answer(tmp_path):
    """--output replaces the file whole (node_exporter never reads half of one), with
    slurmjwt_up 0 when the daemon does not answer; the exit status still says so."""
    out = tmp_path / "slurmjwt.prom"
    out.write_text("stale\n")
    result = CliRunner().invoke(main, ["--socket", str(tmp_path / "none.sock"), "metrics",
                                       "--output", str(out)])
    assert result.exit_code == 3 and result.stdout == ""
    assert samples(out.read_text()) == {"slurmjwt_up": "0"}
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 and sorted(tmp_path.iterdir()) == [out]
    unwritable = CliRunner().invoke(main, ["--socket", str(tmp_path / "none.sock"), "metrics",
                                           "--output", str(tmp_path / "no" / "such.prom")])
    assert unwritable.exit_code == 1 and "cannot write" in unwritable.output
