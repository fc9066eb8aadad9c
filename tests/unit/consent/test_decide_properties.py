"""Properties of the decision over random histories of opt-outs and withdrawals.

A model register (a list of OptOut values) is driven by random operations; at
every "decide" step the decision is checked against the invariants the
consent rules promise, whatever happened before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

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

NHS = "9990000018"
T0 = datetime(2024, 1, 1, tzinfo=UTC)

#: Who may ask for what before any opt-out, written out independently of consent.decide.ALLOWED.
MAY_ASK = {
    Purpose.DIRECT_CARE: {"provider", "hie", "source", "operator"},
    Purpose.PLANNING: {"analyst", "operator"},
    Purpose.COMMISSIONING: {"analyst", "operator"},
    Purpose.RESEARCH: {"analyst", "operator"},
}


@dataclass
class Register:
    """An in-memory register for one person: opt-outs as recorded, withdrawals applied in place."""

    opt_outs: list[OptOut] = field(default_factory=list)
    epoch: int = 0
    minutes: int = 0

    def tick(self, minutes: int) -> datetime:
        self.minutes += minutes
        return T0 + timedelta(minutes=self.minutes)

    def opt_out(self, kind: OptOutKind, minutes: int) -> None:
        self.opt_outs.append(
            OptOut(
                id=f"oo-{len(self.opt_outs):04d}",
                nhs_number=NHS,
                kind=kind,
                authority=Authority.PORTAL,
                recorded_by="portal",
                recorded_by_ods="Y00001",
                recorded_at=self.tick(minutes),
                source="property-test",
            )
        )
        self.epoch += 1

    def withdraw(self, kind: OptOutKind | None, minutes: int) -> None:
        when = self.tick(minutes)
        self.opt_outs = [
            o.withdrawn(when, "portal", Authority.PORTAL) if o.active and kind in (None, o.kind) else o
            for o in self.opt_outs
        ]
        self.epoch += 1

    def withdraw_one(self, index: int, minutes: int) -> None:
        active = [i for i, o in enumerate(self.opt_outs) if o.active]
        if not active:
            return
        at = active[index % len(active)]
        self.opt_outs[at] = self.opt_outs[at].withdrawn(self.tick(minutes), "gp", Authority.GP_EXTRACT)
        self.epoch += 1

    def in_force(self, kind: OptOutKind) -> list[OptOut]:
        return [o for o in self.opt_outs if o.active and o.kind is kind]

    def facts(self) -> Facts:
        return Facts(NHS, tuple(self.opt_outs), self.epoch)


kinds = st.sampled_from(list(OptOutKind))
gaps = st.integers(min_value=0, max_value=3)  # 0: several changes in the same minute (ties)
operations = st.one_of(
    st.tuples(st.just("opt-out"), kinds, gaps),
    st.tuples(st.just("withdraw"), st.one_of(st.none(), kinds), gaps),
    st.tuples(st.just("withdraw-one"), st.integers(min_value=0, max_value=20), gaps),
    st.tuples(st.just("decide"), st.sampled_from(list(Purpose)), st.sampled_from(list(RequesterKind))),
)


def check(register: Register, purpose: Purpose, kind: RequesterKind) -> None:
    who = Requester(kind, "RXX01", "client-1")
    facts = register.facts()
    decision = decide(facts, NHS, purpose.value, who)
    local = register.in_force(OptOutKind.LOCAL)
    national = register.in_force(OptOutKind.NATIONAL)

    # Deterministic: the same facts give the same decision, whatever order the register lists them in.
    assert decide(facts, NHS, purpose.value, who) == decision
    reordered = Facts(NHS, tuple(reversed(register.opt_outs)), register.epoch)
    assert decide(reordered, NHS, purpose.value, who) == decision

    # A local shared-care-record opt-out in force: nothing is ever permitted.
    if local:
        assert not decision.permitted
    # A national opt-out in force: no secondary use is ever permitted.
    if national and purpose.secondary:
        assert not decision.permitted

    # Direct care never depends on national opt-outs: without them (or with all withdrawn) it is the same.
    if purpose is Purpose.DIRECT_CARE:
        no_national = Facts(
            NHS, tuple(o for o in register.opt_outs if o.kind is not OptOutKind.NATIONAL), register.epoch
        )
        assert decide(no_national, NHS, purpose.value, who) == decision
        assert decision.reason is not Reason.NATIONAL_OPT_OUT

    # And the whole decision, from the rules written out independently.
    if kind.value not in MAY_ASK[purpose]:
        expected = Decision(Verdict.DENY, Reason.REQUESTER_NOT_PERMITTED, purpose.value, register.epoch)
    elif local:
        first = min(local, key=lambda o: (o.recorded_at, o.id))
        expected = Decision(Verdict.DENY, Reason.LOCAL_OPT_OUT, purpose.value, register.epoch, first.id)
    elif national and purpose.secondary:
        first = min(national, key=lambda o: (o.recorded_at, o.id))
        expected = Decision(Verdict.DENY, Reason.NATIONAL_OPT_OUT, purpose.value, register.epoch, first.id)
    else:
        expected = Decision(Verdict.PERMIT, Reason.NO_OBJECTION, purpose.value, register.epoch)
    assert decision == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(operations, max_size=40))
def test_random_histories_keep_the_consent_invariants(ops: list[tuple[object, object, object]]) -> None:
    register = Register()
    for op in ops:
        match op:
            case ("opt-out", OptOutKind() as kind, int() as gap):
                register.opt_out(kind, gap)
            case ("withdraw", kind, int() as gap) if kind is None or isinstance(kind, OptOutKind):
                register.withdraw(kind, gap)
            case ("withdraw-one", int() as index, int() as gap):
                register.withdraw_one(index, gap)
            case ("decide", Purpose() as purpose, RequesterKind() as kind):
                check(register, purpose, kind)
            case _:
                raise AssertionError(f"unexpected operation {op!r}")
    # Every history ends with a decision for every purpose and requester.
    for purpose in Purpose:
        for kind in RequesterKind:
            check(register, purpose, kind)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(kinds, st.booleans()), max_size=8),
    st.sampled_from(list(RequesterKind)),
)
def test_direct_care_ignores_national_opt_outs_in_any_state(
    history: list[tuple[OptOutKind, bool]], kind: RequesterKind
) -> None:
    """Adding national opt-outs, active or withdrawn, never changes a direct-care decision."""
    register = Register()
    for opt_kind, withdraw in history:
        if opt_kind is OptOutKind.LOCAL:
            register.opt_out(opt_kind, 1)
            if withdraw:
                register.opt_outs[-1] = register.opt_outs[-1].withdrawn(T0, "gp", Authority.LETTER)
    who = Requester(kind, "RXX01", "client-1")
    before = decide(register.facts(), NHS, "direct-care", who)
    for opt_kind, withdraw in history:
        if opt_kind is OptOutKind.NATIONAL:
            register.opt_out(opt_kind, 1)
            if withdraw:
                register.withdraw(OptOutKind.NATIONAL, 1)
    after = decide(Facts(NHS, register.facts().opt_outs, before.epoch), NHS, "direct-care", who)
    assert after == before
