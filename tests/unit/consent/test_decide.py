"""The consent decision: every purpose, opt-out state and requester kind, and every way to a deny."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from consent.decide import decide
from consent.model import (
    Authority,
    Decision,
    Facts,
    OptOut,
    OptOutKind,
    Purpose,
    Reason,
    Requester,
    RequesterKind,
    Verdict,
)
from mappings import nhs_number

NHS = "9990000018"
OTHER_NHS = "9990000026"
EPOCH = 7
T0 = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
LOCAL_ID = "optout-local-1"
NATIONAL_ID = "optout-national-1"


def opt_out(
    kind: OptOutKind, id: str, at: datetime = T0, withdrawn: bool = False, nhs_number: str = NHS
) -> OptOut:
    made = OptOut(
        id=id,
        nhs_number=nhs_number,
        kind=kind,
        authority=Authority.PATIENT_AT_GP,
        recorded_by="reception-1",
        recorded_by_ods="Y12345",
        recorded_at=at,
        source="test",
    )
    if withdrawn:
        return made.withdrawn(at + timedelta(days=30), "reception-2", Authority.LETTER)
    return made


def requester(kind: RequesterKind) -> Requester:
    return Requester(kind, "RXX01", f"client-{kind.value}")


LOCAL = opt_out(OptOutKind.LOCAL, LOCAL_ID)
NATIONAL = opt_out(OptOutKind.NATIONAL, NATIONAL_ID, T0 + timedelta(hours=1))

#: The opt-out states a person can be in, as the register would hold them.
STATES: dict[str, tuple[OptOut, ...]] = {
    "none": (),
    "local": (LOCAL,),
    "national": (NATIONAL,),
    "both": (LOCAL, NATIONAL),
    "local-withdrawn": (opt_out(OptOutKind.LOCAL, LOCAL_ID, withdrawn=True),),
    "national-withdrawn": (opt_out(OptOutKind.NATIONAL, NATIONAL_ID, withdrawn=True),),
}

# The expected outcomes, written out by hand from decide.py's docstring (and docs/consent.md):
#   P  permit, no-objection                 R  deny, requester-not-permitted-for-purpose
#   L  deny, local-opt-out (the local id)   N  deny, national-opt-out (the national id)
COLUMNS = ("provider", "hie", "source", "analyst", "ig-auditor", "operator")
TABLE = """
direct-care    none                P P P R R P
direct-care    local               L L L R R L
direct-care    national            P P P R R P
direct-care    both                L L L R R L
direct-care    local-withdrawn     P P P R R P
direct-care    national-withdrawn  P P P R R P
planning       none                R R R P R P
planning       local               R R R L R L
planning       national            R R R N R N
planning       both                R R R L R L
planning       local-withdrawn     R R R P R P
planning       national-withdrawn  R R R P R P
commissioning  none                R R R P R P
commissioning  local               R R R L R L
commissioning  national            R R R N R N
commissioning  both                R R R L R L
commissioning  local-withdrawn     R R R P R P
commissioning  national-withdrawn  R R R P R P
research       none                R R R P R P
research       local               R R R L R L
research       national            R R R N R N
research       both                R R R L R L
research       local-withdrawn     R R R P R P
research       national-withdrawn  R R R P R P
"""
OUTCOMES: dict[str, tuple[Verdict, Reason, str | None]] = {
    "P": (Verdict.PERMIT, Reason.NO_OBJECTION, None),
    "R": (Verdict.DENY, Reason.REQUESTER_NOT_PERMITTED, None),
    "L": (Verdict.DENY, Reason.LOCAL_OPT_OUT, LOCAL_ID),
    "N": (Verdict.DENY, Reason.NATIONAL_OPT_OUT, NATIONAL_ID),
}


def expected_table() -> dict[tuple[str, str, str], tuple[Verdict, Reason, str | None]]:
    table = {}
    for line in TABLE.strip().splitlines():
        purpose, state, *codes = line.split()
        assert len(codes) == len(COLUMNS), line
        for kind, code in zip(COLUMNS, codes, strict=True):
            table[(purpose, state, kind)] = OUTCOMES[code]
    return table


EXPECTED = expected_table()


def test_the_table_covers_every_purpose_state_and_requester_exactly_once() -> None:
    combos = {(p.value, s, k.value) for p in Purpose for s in STATES for k in RequesterKind}
    assert set(EXPECTED) == combos
    assert len(TABLE.strip().splitlines()) == len(Purpose) * len(STATES)


@pytest.mark.parametrize("kind", list(RequesterKind), ids=str)
@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("purpose", list(Purpose), ids=str)
def test_decision_table(purpose: Purpose, state: str, kind: RequesterKind) -> None:
    verdict, reason, consent_id = EXPECTED[(purpose.value, state, kind.value)]
    facts = Facts(NHS, STATES[state], EPOCH)

    decision = decide(facts, NHS, purpose.value, requester(kind))

    assert decision == Decision(verdict, reason, purpose.value, EPOCH, consent_id)
    assert decision.permitted is (verdict is Verdict.PERMIT)


@pytest.mark.parametrize("purpose", ["marketing", "", "Direct-Care", "direct care", "RESEARCH", " research"])
@pytest.mark.parametrize("kind", list(RequesterKind), ids=str)
def test_unknown_purpose_is_denied(purpose: str, kind: RequesterKind) -> None:
    decision = decide(Facts(NHS, (), EPOCH), NHS, purpose, requester(kind))
    assert decision == Decision(Verdict.DENY, Reason.UNKNOWN_PURPOSE, purpose)
    assert not decision.permitted


@pytest.mark.parametrize(
    "number", ["9990000019", "999000001", "99900000180", "", "not-a-number", "1234567890"]
)
def test_invalid_nhs_number_is_denied_even_when_the_facts_match(number: str) -> None:
    # Facts read under the same (invalid) number, no opt-outs: only the number can deny.
    decision = decide(Facts(number, (), EPOCH), number, "direct-care", requester(RequesterKind.PROVIDER))
    assert decision == Decision(Verdict.DENY, Reason.INVALID_NHS_NUMBER, "direct-care")


@pytest.mark.parametrize("purpose", list(Purpose), ids=str)
def test_facts_unavailable_is_denied(purpose: Purpose) -> None:
    decision = decide(None, NHS, purpose.value, requester(RequesterKind.OPERATOR))
    assert decision == Decision(Verdict.DENY, Reason.FACTS_UNAVAILABLE, purpose.value)


@pytest.mark.parametrize("purpose", list(Purpose), ids=str)
def test_facts_for_another_person_are_denied(purpose: Purpose) -> None:
    # The other person has no opt-outs: with their facts the request would have been permitted.
    facts = Facts(OTHER_NHS, (), EPOCH)
    decision = decide(facts, NHS, purpose.value, requester(RequesterKind.OPERATOR))
    assert decision == Decision(Verdict.DENY, Reason.FACTS_MISMATCH, purpose.value)


def test_facts_for_another_person_deny_even_when_this_persons_opt_outs_are_in_them() -> None:
    facts = Facts(OTHER_NHS, (opt_out(OptOutKind.NATIONAL, "x", nhs_number=OTHER_NHS),), EPOCH)
    decision = decide(facts, NHS, "direct-care", requester(RequesterKind.PROVIDER))
    assert decision.reason is Reason.FACTS_MISMATCH
    assert not decision.permitted


class Exploding:
    """Stands where an OptOut should be; reading it raises."""

    @property
    def active(self) -> bool:
        raise RuntimeError("the register handed back something broken")

    @property
    def kind(self) -> OptOutKind:
        raise RuntimeError("the register handed back something broken")


@pytest.mark.parametrize("kind", list(RequesterKind), ids=str)
@pytest.mark.parametrize("purpose", list(Purpose), ids=str)
def test_a_broken_opt_out_in_the_facts_denies_with_decision_error(
    purpose: Purpose, kind: RequesterKind
) -> None:
    facts = Facts(NHS, (cast(OptOut, Exploding()),), EPOCH)
    decision = decide(facts, NHS, purpose.value, requester(kind))
    if EXPECTED[(purpose.value, "none", kind.value)][1] is Reason.REQUESTER_NOT_PERMITTED:
        # The requester check comes before the opt-outs are read: no need to touch them.
        assert decision.reason is Reason.REQUESTER_NOT_PERMITTED
    else:
        assert decision == Decision(Verdict.DENY, Reason.ERROR, purpose.value)
    assert not decision.permitted


@pytest.mark.parametrize("error", [RuntimeError, KeyError, ValueError, TypeError, ZeroDivisionError])
def test_an_exception_in_a_helper_denies_and_never_raises(
    monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    def boom(_value: str | None) -> bool:
        raise error("rule failed")

    monkeypatch.setattr(nhs_number, "is_valid", boom)  # what consent.decide calls
    decision = decide(Facts(NHS, (), EPOCH), NHS, "direct-care", requester(RequesterKind.PROVIDER))
    assert decision == Decision(Verdict.DENY, Reason.ERROR, "direct-care")


def test_an_exception_reading_the_facts_denies(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Facts, kind: OptOutKind) -> OptOut | None:
        raise LookupError("index out of date")

    monkeypatch.setattr(Facts, "active", boom)
    decision = decide(Facts(NHS, (), EPOCH), NHS, "research", requester(RequesterKind.ANALYST))
    assert decision == Decision(Verdict.DENY, Reason.ERROR, "research")


def test_a_requester_of_no_known_kind_is_denied_not_raised() -> None:
    odd = Requester(cast(RequesterKind, "gp"), "A12345", "c")
    decision = decide(Facts(NHS, (), EPOCH), NHS, "direct-care", odd)
    assert not decision.permitted
    assert decision.verdict is Verdict.DENY


# Which opt-out a deny names -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(OptOutKind), ids=str)
def test_of_two_opt_outs_of_a_kind_the_earliest_recorded_is_named_whatever_the_order(
    kind: OptOutKind,
) -> None:
    earlier = opt_out(kind, "zz-recorded-first", T0)
    later = opt_out(kind, "aa-recorded-second", T0 + timedelta(minutes=5))
    for order in ((earlier, later), (later, earlier)):
        decision = decide(Facts(NHS, order, EPOCH), NHS, "research", requester(RequesterKind.ANALYST))
        assert decision.consent_id == "zz-recorded-first"
        assert not decision.permitted


def test_opt_outs_recorded_at_the_same_instant_are_told_apart_by_id() -> None:
    first = opt_out(OptOutKind.LOCAL, "a-opt-out", T0)
    second = opt_out(OptOutKind.LOCAL, "b-opt-out", T0)
    for order in ((first, second), (second, first)):
        decision = decide(Facts(NHS, order, EPOCH), NHS, "direct-care", requester(RequesterKind.HIE))
        assert decision.consent_id == "a-opt-out"


def test_a_withdrawn_earlier_opt_out_is_not_named_the_active_later_one_is() -> None:
    withdrawn = opt_out(OptOutKind.LOCAL, "old", T0, withdrawn=True)
    active = opt_out(OptOutKind.LOCAL, "new", T0 + timedelta(days=60))
    decision = decide(
        Facts(NHS, (withdrawn, active), EPOCH), NHS, "direct-care", requester(RequesterKind.SOURCE)
    )
    assert decision == Decision(Verdict.DENY, Reason.LOCAL_OPT_OUT, "direct-care", EPOCH, "new")


def test_the_local_opt_out_is_named_when_both_deny_a_secondary_use() -> None:
    # The national one is recorded first; the local one still decides (rule 3 before rule 4).
    national = opt_out(OptOutKind.NATIONAL, "nat", T0)
    local = opt_out(OptOutKind.LOCAL, "loc", T0 + timedelta(days=1))
    decision = decide(
        Facts(NHS, (national, local), EPOCH), NHS, "planning", requester(RequesterKind.OPERATOR)
    )
    assert decision == Decision(Verdict.DENY, Reason.LOCAL_OPT_OUT, "planning", EPOCH, "loc")


@pytest.mark.parametrize("epoch", [0, 1, 123456])
def test_the_decision_carries_the_facts_epoch(epoch: int) -> None:
    permit = decide(Facts(NHS, (), epoch), NHS, "direct-care", requester(RequesterKind.PROVIDER))
    deny = decide(Facts(NHS, (LOCAL,), epoch), NHS, "direct-care", requester(RequesterKind.PROVIDER))
    assert (permit.epoch, deny.epoch) == (epoch, epoch)
