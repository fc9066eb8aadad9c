"""One small borough for the console's tests: GP and community records, opt-outs, the HIE's state.

- ALICE: a GP diabetes plan (active) and a completed frailty plan; a community integrated care
  plan (active) with a lead professional, a care navigator, goals and activities; the community
  record gives another date of birth (a demographic conflict; the GP's is shown).
- OPTED_OUT: a GP plan, and a local shared-care-record opt-out (by letter).
- WITHDRAWN: a national opt-out recorded and then withdrawn.
- UNKNOWN: a valid NHS number concord has never seen.
- one GP row with an invalid NHS number (quarantined); the HIE holds ALICE, has retracted
  OPTED_OUT, and refused WITHDRAWN's delivery (a dead letter).
- a provider (``epr-a``, ODS RAT) read ALICE (permit) and OPTED_OUT (deny).

Used by ``tests/integration/console`` and ``tests/e2e/test_console_browser.py``.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Final

import orjson

from adapters.registry import adapter_for
from consent.model import Authority, OptOutKind, Requester, RequesterKind
from gateway.bootstrap import Services
from gateway.disclosure import Ask
from gateway.store.schema import dead_letters, hie_people
from gateway.views import load_person

ALICE: Final = "9990000018"
OPTED_OUT: Final = "9990000026"
WITHDRAWN: Final = "9990000034"
UNKNOWN: Final = "9990000042"
OPERATOR: Final = Requester(RequesterKind.OPERATOR, "CONCORD", "ig-operator")
EPR: Final = Requester(RequesterKind.PROVIDER, "RAT", "epr-a")

GP_CSV: Final = (
    "practice_ods,gp_patient_id,nhs_number,nhs_number_status,title,family_name,given_names,date_of_birth,sex,"
    "address_line_1,address_line_2,town,postcode,phone,opt_out_code,plan_id,plan_type,plan_title,plan_status,"
    "plan_start,plan_end,activities,recorded_at\n"
    "Y90001,GP1,9990000018,01,Mrs,Davies,Amelia,1944-07-30,F,1 High Street,,Barking,RM10 2JY,0208 111 2222,,"
    "GP1-CP1,LTC-DM,Diabetes plan,ACTIVE,2024-05-04,,HBA1C|SCHEDULED|2025-01-01,2024-05-04T09:00:00+00:00\n"
    "Y90001,GP1,9990000018,01,Mrs,Davies,Amelia,1944-07-30,F,1 High Street,,Barking,RM10 2JY,0208 111 2222,,"
    "GP1-CP2,FRAILTY,Proactive care plan,COMPLETE,2023-01-01,2024-01-01,,2023-01-01T09:00:00+00:00\n"
    "Y90001,GP2,9990000026,01,Mr,Patel,Noah,1938-10-31,M,25 Mill Lane,,Upminster,RM9 2YB,0208 733 4374,,"
    "GP2-CP1,LTC-DM,Diabetes plan,ACTIVE,2024-05-04,,,2024-05-04T09:00:00+00:00\n"
    "Y90001,GP3,9990000034,02,Ms,Khan,Isla,1950-01-02,F,3 Park Road,,Romford,RM1 1AA,0208 000 0003,,"
    "GP3-CP1,LTC-HF,Heart failure plan,ACTIVE,2024-06-01,,,2024-06-01T09:00:00+00:00\n"
    "Y90001,GP4,9990000019,01,Mr,Bad,Number,1950-01-02,M,4 Park Road,,Romford,RM1 1AA,,,"
    "GP4-CP1,LTC-HF,Heart failure plan,ACTIVE,2024-06-01,,,2024-06-01T09:00:00+00:00\n"
)

COMMUNITY_PLAN: Final = {
    "provider_ods": "R9Z02",
    "patient_id": "CM1",
    "nhs_number": ALICE,
    "nhs_number_status": "01",
    "title": "Mrs",
    "family_name": "Davies",
    "given_names": "Amelia",
    "date_of_birth": "1944-07-03",
    "sex": "F",
    "address": {"line_1": "9 River Walk", "town": "Barking", "postcode": "RM10 9ZZ"},
    "phone": "0208 111 2222",
    "registered_gp_ods": "Y90001",
    "plan": {
        "plan_id": "CP1",
        "plan_type": "ICSP",
        "title": "Integrated care and support plan",
        "status": "ACTIVE",
        "start_date": "2026-04-02",
        "end_date": None,
        "review_date": "2026-10-01",
        "recorded_at": "2026-04-02T17:54:00Z",
        "what_matters_to_me": "Keeping my garden going",
        "care_team": [
            {
                "role": "LEAD_PROFESSIONAL",
                "name": "Isla Khan",
                "job_title": "Community matron",
                "organisation_ods": "R9Z02",
            },
            {"role": "CARE_NAVIGATOR", "name": "Dorothy Harris", "organisation_ods": "R9Z02"},
        ],
        "goals": [
            {
                "goal_id": "G1",
                "description": "Stay out of hospital this winter",
                "status": "ACTIVE",
                "achievement": "NO_CHANGE",
                "target_date": "2027-03-15",
            }
        ],
        "activities": [
            {
                "activity_id": "A1",
                "code": "DN_VISIT",
                "description": "District nursing visit at home",
                "status": "IN_PROGRESS",
                "start_date": "2026-04-25",
                "team": "District nursing",
            }
        ],
    },
}

WHEN: Final = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


async def seed(services: Services) -> None:
    """Ingest, record the opt-outs, and set the HIE's state."""
    await services.ingestor.run("gp", adapter_for("gp").read(io.StringIO(GP_CSV)), "gp.csv")
    community = orjson.dumps(COMMUNITY_PLAN).decode() + "\n"
    await services.ingestor.run("community", adapter_for("community").read(io.StringIO(community)), "c.jsonl")
    register = services.register
    await register.opt_out(OPTED_OUT, OptOutKind.LOCAL, Authority.LETTER, OPERATOR, "seed-1")
    await register.opt_out(WITHDRAWN, OptOutKind.NATIONAL, Authority.PORTAL, OPERATOR, "seed-2")
    await register.withdraw(WITHDRAWN, OptOutKind.NATIONAL, Authority.TELEPHONE, OPERATOR, "seed-3")
    for number in (ALICE, OPTED_OUT):  # a provider's reads: a permit and a deny in the access log
        ask = Ask(EPR, "direct-care", "read", f"seed-read-{number}")
        await services.disclosure.person(ask, number, lambda n: load_person(services.engine, n))
    refused = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "CarePlan.status: unknown code"}],
    }
    async with services.engine.begin() as conn:
        await conn.execute(
            hie_people.insert(),
            [
                {
                    "nhs_number": ALICE,
                    "state": "published",
                    "published": '["Patient/a/_history/1","CarePlan/b/_history/1"]',
                    "attempts": 0,
                    "changed_at": WHEN,
                },
                {
                    "nhs_number": OPTED_OUT,
                    "state": "retracted",
                    "published": "[]",
                    "attempts": 0,
                    "changed_at": WHEN,
                },
                {
                    "nhs_number": WITHDRAWN,
                    "state": "none",
                    "published": "[]",
                    "attempts": 0,
                    "last_error": "dead letter: HTTP 422",
                    "changed_at": WHEN,
                },
            ],
        )
        await conn.execute(
            dead_letters.insert().values(
                nhs_number=WITHDRAWN,
                delivery_id="d-1",
                status_code=422,
                outcome=orjson.dumps({"failed_entry": 2, "outcome": refused}).decode(),
                created_at=WHEN,
            )
        )
