"""The GP practices' scheduled extract (CSV) for a synthetic population. Format: docs/sources/gp.md."""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable
from datetime import date, timedelta
from typing import TextIO

from adapters.gp import COLUMNS
from gateway.synth.defects import DefectPlan, break_check_digit
from gateway.synth.population import Person

PLAN_TITLES = {
    "LTC-DM": "Diabetes management plan",
    "LTC-COPD": "COPD management plan",
    "LTC-HF": "Heart failure management plan",
    "LTC-AST": "Asthma action plan",
    "LTC-HTN": "Hypertension management plan",
    "DEM": "Dementia care plan",
    "MH": "Mental health care plan",
    "FRAILTY": "Proactive care plan",
}
ACTIVITIES = {
    "LTC-DM": ("HBA1C", "FOOT", "MEDREV"),
    "LTC-COPD": ("SPIRO", "SMOKE", "FLU"),
    "LTC-HF": ("BP", "MEDREV"),
    "LTC-AST": ("SPIRO", "MEDREV"),
    "LTC-HTN": ("BP", "MEDREV"),
    "DEM": ("REVIEW", "MEDREV"),
    "MH": ("REVIEW",),
    "FRAILTY": ("HOMEVISIT", "MEDREV", "REVIEW"),
}
GP_DEFECTS = (
    "bad-check-digit",
    "missing-nhs-number",
    "truncated",
    "duplicate",
    "unknown-code",
    "unknown-status",
)
#: A demographics-only row has no codes to get wrong.
DEMOGRAPHIC_DEFECTS = GP_DEFECTS[:4]
#: Opt-out codes a practice records: a local shared-care-record dissent, and the national Type 1.
OPT_OUT_CODES = ("LSCR-DISSENT", "827241000000103")


def write_gp(people: Iterable[Person], out: TextIO, rng: random.Random, defects: DefectPlan) -> int:
    """Write the extract; returns the number of data rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    rows = 0
    for person in people:
        opt_out = rng.choice(OPT_OUT_CODES) if rng.random() < 0.02 else ""
        plans: list[dict[str, str] | None] = [*_plans(person, rng)] or [None]
        for plan in plans:
            row = _row(person, plan, opt_out)
            defect = defects.pick("gp", GP_DEFECTS if plan else DEMOGRAPHIC_DEFECTS)
            if defect == "truncated":
                text = _as_line(row)
                out.write(text[: max(10, len(text) // 2)].rstrip(",") + "\n")
                rows += 1
                continue
            _apply(defect, row, plan)
            writer.writerow(row)
            rows += 1
            if defect == "duplicate":
                writer.writerow(row)
                rows += 1
    return rows


def _plans(person: Person, rng: random.Random) -> list[dict[str, str]]:
    kinds = list(person.long_term_conditions) + (["FRAILTY"] if person.frail else [])
    plans = []
    for n, kind in enumerate(kinds, start=1):
        start = date(2026, 11, 1) - timedelta(days=rng.randint(30, 1500))
        status = "ACTIVE" if rng.random() < 0.85 else rng.choice(("COMPLETE", "SUSPENDED", "DRAFT"))
        acts = []
        for code in ACTIVITIES[kind]:
            due = start + timedelta(days=rng.randint(30, 400))
            act_status = "COMPLETED" if due < date(2026, 11, 1) else "SCHEDULED"
            acts.append(f"{code}|{act_status}|{due.isoformat()}")
        plans.append(
            {
                "plan_id": f"{person.gp_patient_id}-CP{n}",
                "plan_type": kind,
                "plan_title": PLAN_TITLES[kind],
                "plan_status": status,
                "plan_start": start.isoformat(),
                "plan_end": "",
                "activities": ";".join(acts),
                "recorded_at": f"{start.isoformat()}T09:{rng.randint(10, 59)}:00+00:00",
            }
        )
    return plans


def _row(person: Person, plan: dict[str, str] | None, opt_out: str) -> list[str]:
    values = {
        "practice_ods": person.practice_ods,
        "gp_patient_id": person.gp_patient_id,
        "nhs_number": person.nhs_number,
        "nhs_number_status": "01",
        "title": person.title,
        "family_name": person.family_name,
        "given_names": person.given_names,
        "date_of_birth": person.birth_date.isoformat(),
        "sex": person.sex,
        "address_line_1": person.address_line_1,
        "address_line_2": "",
        "town": person.town,
        "postcode": person.postcode,
        "phone": person.phone,
        "opt_out_code": opt_out,
        **(plan or {}),
    }
    return [values.get(column, "") for column in COLUMNS]


def _apply(defect: str | None, row: list[str], plan: dict[str, str] | None) -> None:
    index = {c: i for i, c in enumerate(COLUMNS)}
    if defect == "bad-check-digit":
        row[index["nhs_number"]] = break_check_digit(row[index["nhs_number"]])
    elif defect == "missing-nhs-number":
        row[index["nhs_number"]] = ""
    elif defect == "unknown-code" and plan:
        row[index["activities"]] = row[index["activities"]] + ";XYZ99|SCHEDULED|2027-01-01"
    elif defect == "unknown-status" and plan:
        row[index["plan_status"]] = "PENDING-REVIEW"


def _as_line(row: list[str]) -> str:
    return ",".join('"' + c.replace('"', '""') + '"' if ("," in c or '"' in c) else c for c in row)
