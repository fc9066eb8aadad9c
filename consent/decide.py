"""The decision: facts and a request in, permit or deny out. Pure, total, deny by default.

The rules (docs/consent.md has them as a table):

1. The purpose must be one we know, the NHS number valid, and the facts read
   for that same person; otherwise deny.
2. The requester's kind must be allowed the purpose at all: direct care for
   providers, the HIE, sources and operators; secondary uses for analysts and
   operators; the IG board never receives care records. Otherwise deny.
3. A local shared-care-record opt-out in force denies every purpose: the person
   objected to concord sharing their record.
4. A national data opt-out in force denies secondary uses; it never applies to
   direct care.
5. Only then permit.

Any exception inside the rules is a deny (``Reason.ERROR``), never a permit.
"""

from __future__ import annotations

from typing import Final

from consent.model import Decision, Facts, OptOutKind, Purpose, Reason, Requester, RequesterKind, Verdict
from mappings import nhs_number as nhs

#: Which requester kinds may receive data for which purposes, before any opt-out is considered.
ALLOWED: Final[dict[Purpose, frozenset[RequesterKind]]] = {
    Purpose.DIRECT_CARE: frozenset(
        {RequesterKind.PROVIDER, RequesterKind.HIE, RequesterKind.SOURCE, RequesterKind.OPERATOR}
    ),
    Purpose.PLANNING: frozenset({RequesterKind.ANALYST, RequesterKind.OPERATOR}),
    Purpose.COMMISSIONING: frozenset({RequesterKind.ANALYST, RequesterKind.OPERATOR}),
    Purpose.RESEARCH: frozenset({RequesterKind.ANALYST, RequesterKind.OPERATOR}),
}


def decide(facts: Facts | None, nhs_number: str, purpose: str, requester: Requester) -> Decision:
    """Decide whether ``requester`` may receive ``nhs_number``'s data for ``purpose``.

    ``facts`` is None when the register could not be read: that is a deny.
    Never raises.
    """
    try:
        return _decide(facts, nhs_number, purpose, requester)
    except Exception:  # noqa: BLE001 - a failing rule must deny, whatever it raised
        return Decision(Verdict.DENY, Reason.ERROR, str(purpose))


def _decide(facts: Facts | None, nhs_number: str, purpose: str, requester: Requester) -> Decision:
    try:
        wanted = Purpose(purpose)
    except ValueError:
        return Decision(Verdict.DENY, Reason.UNKNOWN_PURPOSE, str(purpose))
    if not nhs.is_valid(nhs_number):
        return Decision(Verdict.DENY, Reason.INVALID_NHS_NUMBER, wanted.value)
    if facts is None:
        return Decision(Verdict.DENY, Reason.FACTS_UNAVAILABLE, wanted.value)
    if facts.nhs_number != nhs_number:
        return Decision(Verdict.DENY, Reason.FACTS_MISMATCH, wanted.value)
    epoch = facts.epoch
    if requester.kind not in ALLOWED[wanted]:
        return Decision(Verdict.DENY, Reason.REQUESTER_NOT_PERMITTED, wanted.value, epoch)
    local = facts.active(OptOutKind.LOCAL)
    if local is not None:
        return Decision(Verdict.DENY, Reason.LOCAL_OPT_OUT, wanted.value, epoch, local.id)
    if wanted.secondary:
        national = facts.active(OptOutKind.NATIONAL)
        if national is not None:
            return Decision(Verdict.DENY, Reason.NATIONAL_OPT_OUT, wanted.value, epoch, national.id)
    return Decision(Verdict.PERMIT, Reason.NO_OBJECTION, wanted.value, epoch)
