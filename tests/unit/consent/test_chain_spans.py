"""Verifying in spans (as worker processes do) reaches exactly the result of one pass over the log.

Every tampered log of ``test_chain`` is cut into 1 to 13 spans; each span is checked apart from
the others, from the stored hash of the entry before it, and the findings joined: the problem
named (seq, code, message), the counts and hashes must equal what ``verify`` finds in one pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from unit.consent.test_chain import (
    CHECKPOINT_AT,
    CHECKPOINTS,
    ENTRIES,
    KEYS,
    LENGTH,
    LOG,
    at,
    checkpoints,
    flipped,
    make_entry,
    rewritten_from,
    with_checkpoint,
)

from consent.chain import (
    ENTRY_FIELDS,
    GENESIS,
    Checkpoint,
    Span,
    SpanChecker,
    SpanMismatch,
    StoredEntry,
    Verification,
    Verifier,
    chained_rows,
    join_spans,
    link,
    plan_spans,
    verify,
)


def row(s: StoredEntry) -> tuple[Any, ...]:
    return (s.seq, *(getattr(s.entry, name) for name in ENTRY_FIELDS), s.entry_hash)


def check_span(stored: dict[int, tuple[Any, ...]], lo: int, hi: int | None, watched: frozenset[int]) -> Span:
    """What ``gateway.audit.spans.check_span`` does against a table keyed on ``seq``."""
    seed = GENESIS.hex() if lo == 0 else (stored[lo][-1] if lo in stored else None)
    if seed is None:
        return Span(lo, None, lo, "")
    checker = SpanChecker(lo, seed, watched)
    checker.feed_rows(stored[seq] for seq in sorted(stored) if seq > lo and (hi is None or seq <= hi))
    after = [seq for seq in stored if hi is not None and seq > hi]
    return checker.finish(hi, min(after) if after else None)


def in_spans(
    log: Sequence[StoredEntry], cps: Sequence[Checkpoint], count: int, expect: Sequence[tuple[int, str]] = ()
) -> Verification:
    stored = {s.seq: row(s) for s in log}
    assert len(stored) == len(log), "a table keyed on seq holds each seq once"
    verifier = Verifier(cps, KEYS, expect)
    plan = plan_spans(max(stored, default=0), count)
    return join_spans(verifier, [check_span(stored, lo, hi, verifier.watched) for lo, hi in plan])


def summary(result: Verification) -> tuple[object, ...]:
    problem = result.problem and (result.problem.seq, result.problem.code, result.problem.message)
    return (
        problem,
        result.entries,
        result.last_seq,
        result.last_hash,
        result.checkpoints,
        result.last_checkpoint,
        result.key_ids,
        result.unsigned,
    )


def edited(seq: int, **changes: Any) -> list[StoredEntry]:
    log = list(LOG)
    log[at(seq)] = dataclasses.replace(log[at(seq)], entry=dataclasses.replace(log[at(seq)].entry, **changes))
    return log


def deleted(*seqs: int) -> list[StoredEntry]:
    return [s for s in LOG if s.seq not in seqs]


def inserted_renumbered(seq: int) -> list[StoredEntry]:
    """A forged entry ``seq`` with a correctly linked hash; the entries from ``seq`` moved up by one."""
    fake = dataclasses.replace(make_entry(seq), request_id="req-forged", org_ods="EVIL1")
    prefix = LOG[: at(seq)]
    previous = bytes.fromhex(prefix[-1].entry_hash) if prefix else GENESIS
    moved = [dataclasses.replace(s, seq=s.seq + 1) for s in LOG[at(seq) :]]
    return [*prefix, StoredEntry(seq, fake, link(previous, seq, fake).hex()), *moved]


def swapped(seq: int) -> list[StoredEntry]:
    log = list(LOG)
    first, second = log[at(seq)], log[at(seq + 1)]
    log[at(seq)] = dataclasses.replace(second, seq=seq)
    log[at(seq + 1)] = dataclasses.replace(first, seq=seq + 1)
    return log


Case = tuple[list[StoredEntry], list[Checkpoint], list[tuple[int, str]]]
NOTED_END = [(LENGTH, LOG[-1].entry_hash)]
OTHER = Ed25519PrivateKey.generate()

CASES: dict[str, Callable[[], Case]] = {
    "intact": lambda: (LOG, CHECKPOINTS, []),
    "intact, noted hashes": lambda: (LOG, CHECKPOINTS, [(3, LOG[at(3)].entry_hash), *NOTED_END]),
    "no checkpoints": lambda: (LOG, [], []),
    "empty": lambda: ([], [], []),
    **{
        f"edit {seq}": (lambda seq=seq: (edited(seq, org_ods="EVIL1"), CHECKPOINTS, []))
        for seq in range(1, 13)
    },
    **{f"delete {seq}": (lambda seq=seq: (deleted(seq), CHECKPOINTS, [])) for seq in range(1, 13)},
    "delete 4-8": lambda: (deleted(4, 5, 6, 7, 8), CHECKPOINTS, []),
    "delete 6-12": lambda: (deleted(*range(6, 13)), CHECKPOINTS, []),
    **{
        f"insert {seq}": (lambda seq=seq: (inserted_renumbered(seq), CHECKPOINTS, []))
        for seq in (1, 4, 6, 11)
    },
    **{f"swap {seq}": (lambda seq=seq: (swapped(seq), CHECKPOINTS, [])) for seq in (1, 4, 5, 9, 11)},
    **{f"truncate to {keep}": (lambda keep=keep: (LOG[:keep], CHECKPOINTS, [])) for keep in (0, 4, 5, 9, 11)},
    "truncate to 11, noted": lambda: (LOG[:11], CHECKPOINTS, NOTED_END),
    "truncate to 7 and its checkpoint, noted": lambda: (LOG[:7], CHECKPOINTS[:1], NOTED_END),
    **{
        f"rewrite from {seq}": (lambda seq=seq: (rewritten_from(seq), CHECKPOINTS, []))
        for seq in (1, 5, 6, 7, 11)
    },
    "rewrite from 11, noted": lambda: (rewritten_from(11), CHECKPOINTS, NOTED_END),
    "bad signature 5": lambda: (LOG, with_checkpoint(0, signature=flipped(CHECKPOINTS[0].signature)), []),
    "bad signature 10": lambda: (LOG, with_checkpoint(1, signature=flipped(CHECKPOINTS[1].signature)), []),
    "checkpoint hash moved": lambda: (LOG, with_checkpoint(1, entry_hash="ab" * 32), []),
    "checkpoint by another key": lambda: (LOG, checkpoints(LOG, CHECKPOINT_AT, (OTHER,)), []),
}


@pytest.mark.parametrize("name", list(CASES))
def test_spans_joined_give_the_result_of_one_pass(name: str) -> None:
    log, cps, expect = CASES[name]()
    whole = verify(log, cps, KEYS, expect)
    for count in range(1, LENGTH + 2):
        assert summary(in_spans(log, cps, count, expect)) == summary(whole), (name, count)


def test_the_cases_cover_every_kind_of_problem() -> None:
    codes = set()
    for make in CASES.values():
        log, cps, expect = make()
        problem = verify(log, cps, KEYS, expect).problem
        codes.add(problem.code if problem else "ok")
    assert codes == {"ok", "altered", "missing", "rewritten", "truncated", "bad-signature", "unknown-key"}


@pytest.mark.parametrize(("last", "count"), [(0, 4), (1, 4), (12, 1), (12, 5), (100_000, 4), (7, 100)])
def test_plan_spans_covers_every_entry_once_the_last_span_open(last: int, count: int) -> None:
    plan = plan_spans(last, count)
    assert plan[0][0] == 0 and plan[-1][1] is None
    assert all(hi == plan[i + 1][0] for i, (_, hi) in enumerate(plan[:-1]))
    assert all(hi is None or lo < hi for lo, hi in plan)
    assert len(plan) == max(1, min(count, last))


def test_spans_that_do_not_join_are_a_mismatch_not_a_verdict() -> None:
    """Spans read at different moments of a changing log must not be trusted to join up."""
    stored = {s.seq: row(s) for s in LOG}
    verifier = Verifier(CHECKPOINTS, KEYS)
    first = check_span(stored, 0, 6, verifier.watched)
    stored[6] = row(edited(6, org_ods="LATER")[at(6)])  # entry 6 changes between the two reads
    stored[6] = (*stored[6][:-1], "00" * 32)
    second = check_span(stored, 6, None, verifier.watched)
    with pytest.raises(SpanMismatch):
        join_spans(verifier, [first, second])
    # A span that ended the log, followed by one holding entries: the log grew under it.
    ended = Span(0, GENESIS.hex(), 0, GENESIS.hex(), ended=True)
    later = check_span(stored, 6, None, Verifier(CHECKPOINTS, KEYS).watched)
    with pytest.raises(SpanMismatch):
        join_spans(Verifier(CHECKPOINTS, KEYS), [ended, later])


def test_a_span_round_trips_through_json() -> None:
    stored = {s.seq: row(s) for s in edited(8, org_ods="EVIL1")}
    span = check_span(stored, 4, 9, frozenset(CHECKPOINT_AT))
    assert span.problem is not None and span.hashes
    assert Span.from_json(span.to_json()) == span


def test_chained_rows_are_the_stored_rows_the_chain_gives() -> None:
    """What an append stores (``chained_rows``) is what ``link`` chains and ``verify`` accepts."""
    rows, last = chained_rows(bytes.fromhex(LOG[at(4)].entry_hash), 4, ENTRIES[4:])
    assert rows == [row(s) for s in LOG[4:]]
    assert last.hex() == LOG[-1].entry_hash
