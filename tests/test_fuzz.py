"""The request path under a mutation fuzzer (tests/fuzz/harness.py), in-process: briefly here
with a fixed seed, at length with `make fuzz`. Its invariants: no exception but the protocol's
own refusal, every answer one well-formed line with a known code, never `internal` nor a
traceback, one audit line per decision."""

from __future__ import annotations

import pytest

from fuzz.harness import Failure, Target, fuzz, load_corpus
from slurmjwtd import operations
from slurmjwtd.protocol import Code, ProtocolError

SEED = 20260601
INPUTS = 30_000  # a few seconds


def test_the_corpus_passes_for_every_caller():
    corpus = load_corpus()
    assert len(corpus) >= 40
    result = fuzz(SEED, iterations=0, corpus=corpus)
    target = Target()
    target.close()
    assert result.inputs == len(corpus) * len(target.callers)


def test_fuzz_briefly(capsys):
    result = fuzz(SEED, iterations=INPUTS)
    assert result.inputs == INPUTS
    ok = {s[1] for s in result.signatures if len(s) > 2 and s[2] == "OK"}
    assert {"MINT", "OPEN", "CLOSE", "STATUS", "METRICS", "EXPLAIN"} <= ok  # it reaches every operation
    with capsys.disabled():
        print(f"\nfuzz: {result.inputs} inputs, {result.rate:.0f} per second, "
              f"{len(result.signatures)} distinct answers")


def _isdigit_lifetime(text: str | None) -> int | None:  # before issue 10: str.isdigit()
    if text is None:
        return None
    if not text.isdigit() or len(text) > 9 or int(text) == 0:
        raise ProtocolError(Code.BAD_REQUEST, "lifetime must be a whole number of seconds, 1 or more")
    return int(text)


@pytest.mark.parametrize("seed_file, why", [
    (b"SJWT/1 MINT user=nobody lifetime=%C2%B2\n", "logged at ERROR"),  # then ERR internal
    (b"SJWT/1 EXPLAIN user=nobody lifetime=%E0%A5%A7\n", "granted as 1"),  # Devanagari one
    (b"SJWT/1 MINT user=nobody lifetime=%D9%A3%D9%A6%D9%A0%D9%A0\n", "granted as 3600"),
])
def test_the_fuzzer_catches_the_lifetime_bug(monkeypatch, seed_file, why):
    """With lifetimes parsed as they were, replaying the corpus breaks an invariant."""
    assert seed_file in load_corpus()
    monkeypatch.setattr(operations, "parse_lifetime", _isdigit_lifetime)
    with pytest.raises(Failure) as failure:
        fuzz(SEED, iterations=0, corpus=[seed_file])
    assert why in str(failure.value)
