"""The shared Patient: per-element source precedence, newest within a source, conflicts without values."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from mappings.shared_view import (
    CHOICE_ELEMENTS,
    PRECEDENCE,
    Conflict,
    Contribution,
    conflicts,
    merge,
    recorded_instant,
)
from mappings.validate import UKCORE_PATIENT, validate


def body(**elements: Any) -> dict[str, Any]:
    return dict(elements)


def test_precedence_order_is_gp_acute_community_social_care_fhir() -> None:
    assert PRECEDENCE == ("gp", "acute", "community", "social-care", "fhir")


def test_the_shared_patient_has_its_id_and_profile_whatever_the_contributions_say() -> None:
    patient, _ = merge(
        "p1",
        [
            Contribution(
                "acute",
                "H1",
                body(
                    resourceType="Basic",
                    id="other",
                    meta={"profile": ["x"]},
                    text={"div": "x"},
                    gender="male",
                ),
            )
        ],
    )
    assert patient == {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"profile": [UKCORE_PATIENT]},
        "gender": "male",
    }


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_gp_wins_element_by_element_and_gaps_come_from_the_next_source(order: tuple[int, ...]) -> None:
    given = [
        Contribution(
            "social-care", "C1", body(name=[{"family": "Council"}], telecom=["social"], gender="male")
        ),
        Contribution("gp", "G1", body(name=[{"family": "Practice"}], birthDate="1950-01-02")),
        Contribution(
            "acute", "H1", body(name=[{"family": "Hospital"}], telecom=["acute"], address=["acute"])
        ),
    ]
    patient, _ = merge("p", [given[i] for i in order])
    assert patient["name"] == [{"family": "Practice"}]  # GP has it
    assert patient["birthDate"] == "1950-01-02"  # only the GP has it
    assert patient["telecom"] == ["acute"]  # GP lacks it: acute is next
    assert patient["address"] == ["acute"]
    assert patient["gender"] == "male"  # only social care has it


def test_every_source_outranks_the_ones_after_it() -> None:
    for better, worse in itertools.pairwise(PRECEDENCE):
        patient, _ = merge(
            "p",
            [Contribution(worse, "w", body(name=[worse])), Contribution(better, "b", body(name=[better]))],
        )
        assert patient["name"] == [better]


def test_an_unknown_source_ranks_last() -> None:
    patient, _ = merge(
        "p",
        [
            Contribution("pharmacy", "X", body(name=["pharmacy"])),
            Contribution("fhir", "F", body(name=["fhir"])),
        ],
    )
    assert patient["name"] == ["fhir"]


def test_the_newest_contribution_within_a_source_wins() -> None:
    older = Contribution("acute", "H1", body(name=["old"], telecom=["old"]), recorded="2024-01-05T10:00:00Z")
    newer = Contribution("acute", "H2", body(name=["new"]), recorded="2024-03-01T10:00:00Z")
    for given in ([older, newer], [newer, older]):
        patient, _ = merge("p", given)
        assert patient["name"] == ["new"]
        assert patient["telecom"] == ["old"]  # the newer one lacks it


def test_a_newer_lower_source_does_not_beat_the_gp() -> None:
    gp = Contribution("gp", "G1", body(name=["gp"]), recorded="2001-01-01T00:00:00Z")
    acute = Contribution("acute", "H1", body(name=["acute"]), recorded="2024-01-01T00:00:00Z")
    assert merge("p", [acute, gp])[0]["name"] == ["gp"]


def test_ties_are_broken_by_local_id_so_the_result_is_deterministic() -> None:
    a = Contribution("acute", "A", body(name=["a"]), recorded="2024-01-01")
    b = Contribution("acute", "B", body(name=["b"]), recorded="2024-01-01")
    assert merge("p", [a, b])[0] == merge("p", [b, a])[0]


def test_a_later_timestamp_with_more_precision_is_newer() -> None:
    earlier = Contribution("acute", "A", body(name=["earlier"]), recorded="2024-05-01T09:00")
    later = Contribution("acute", "B", body(name=["later"]), recorded="2024-05-01T09:00:30")
    assert merge("p", [earlier, later])[0]["name"] == ["later"]


def test_newest_is_decided_by_instant_not_by_text() -> None:
    earlier = Contribution(
        "acute", "A", body(name=["earlier"]), recorded="2024-05-01T10:00:00+01:00"
    )  # 09:00Z
    later = Contribution("acute", "B", body(name=["later"]), recorded="2024-05-01T09:30:00+00:00")
    assert merge("p", [earlier, later])[0]["name"] == ["later"]


def test_an_undated_contribution_does_not_beat_a_dated_one() -> None:
    undated = Contribution("acute", "A", body(name=["undated"]), recorded="")
    dated = Contribution("acute", "B", body(name=["dated"]), recorded="2024-05-01T09:30:00+00:00")
    assert merge("p", [undated, dated])[0]["name"] == ["dated"]


def test_an_unreadable_time_ranks_as_the_oldest() -> None:
    unreadable = Contribution("acute", "A", body(name=["unreadable"]), recorded="last Tuesday")
    dated = Contribution("acute", "B", body(name=["dated"]), recorded="2001-01-01T00:00:00Z")
    assert merge("p", [unreadable, dated])[0]["name"] == ["dated"]


def test_hl7_and_iso_times_are_compared_as_instants() -> None:
    hl7 = Contribution("acute", "A", body(name=["hl7"]), recorded="20240715093000")  # BST: 08:30Z
    iso = Contribution("acute", "B", body(name=["iso"]), recorded="2024-07-15T08:45:00Z")
    assert merge("p", [hl7, iso])[0]["name"] == ["iso"]
    assert recorded_instant("20240715093000") == recorded_instant("2024-07-15T08:30:00+00:00")
    assert recorded_instant("") is None
    assert recorded_instant("not a time") is None


def test_merge_needs_a_contribution() -> None:
    with pytest.raises(ValueError, match="at least one"):
        merge("p", [])


def test_merge_does_not_change_the_contributions() -> None:
    gp = Contribution("gp", "G1", body(name=[{"family": "Smith"}]))
    merge("p", [gp])
    assert gp.body == {"name": [{"family": "Smith"}]}


# Conflicts ----------------------------------------------------------------------------------------


def test_disagreeing_birth_dates_are_reported_with_sources_and_count() -> None:
    given = [
        Contribution("gp", "G1", body(birthDate="1950-01-02")),
        Contribution("acute", "H1", body(birthDate="1950-02-01")),
        Contribution("community", "K1", body(birthDate="1950-01-02")),
        Contribution("social-care", "C1", body(birthDate="1951-01-02")),
    ]
    patient, found = merge("p", given)
    assert patient["birthDate"] == "1950-01-02"  # the GP's, conflict or not
    assert found == [Conflict("birthDate", ("acute", "community", "gp", "social-care"), 3)]


def test_disagreeing_genders_are_reported() -> None:
    given = [
        Contribution("gp", "G1", body(gender="female")),
        Contribution("acute", "H1", body(gender="male")),
    ]
    assert conflicts(given) == [Conflict("gender", ("acute", "gp"), 2)]


def test_both_elements_can_conflict_at_once() -> None:
    given = [
        Contribution("gp", "G1", body(gender="female", birthDate="1950-01-02")),
        Contribution("fhir", "F1", body(gender="male", birthDate="1950-01-03")),
    ]
    assert [c.element for c in merge("p", given)[1]] == ["birthDate", "gender"]


def test_conflicts_carry_no_values() -> None:
    given = [
        Contribution("gp", "G1", body(birthDate="1950-01-02", gender="female")),
        Contribution("acute", "H1", body(birthDate="1961-12-30", gender="male")),
    ]
    for conflict in conflicts(given):
        text = repr(conflict)
        for value in ("1950", "1961", "12-30", "male"):  # "male" also catches "female"
            assert value not in text
        assert {f.name for f in dataclasses.fields(conflict)} == {"element", "sources", "distinct_values"}


@pytest.mark.parametrize(
    "given",
    [
        [Contribution("gp", "G1", body(gender="male")), Contribution("acute", "H1", body(gender="male"))],
        [Contribution("gp", "G1", body(gender="male")), Contribution("acute", "H1", body(gender="unknown"))],
        [
            Contribution("gp", "G1", body(gender="unknown")),
            Contribution("acute", "H1", body(gender="female")),
        ],
        [Contribution("gp", "G1", body(birthDate="1950-01-02")), Contribution("acute", "H1", body())],
        [Contribution("gp", "G1", body(name=["a"])), Contribution("acute", "H1", body(name=["b"]))],
        [Contribution("gp", "G1", body(birthDate="1950-01-02"))],
    ],
)
def test_no_conflict_when_equal_unknown_absent_or_unchecked(given: list[Contribution]) -> None:
    assert merge("p", given)[1] == []


def test_a_source_disagreeing_with_itself_is_a_conflict_too() -> None:
    given = [
        Contribution("acute", "H1", body(birthDate="1950-01-02")),
        Contribution("acute", "H2", body(birthDate="1950-01-03")),
    ]
    assert conflicts(given) == [Conflict("birthDate", ("acute",), 2)]


# Choice elements ----------------------------------------------------------------------------------

DIED = "2026-03-01T10:15:00+00:00"


@pytest.mark.parametrize("order", [0, 1])
def test_a_choice_element_is_one_element_whatever_form_each_source_sends(order: int) -> None:
    """The acute trust's time of death and a pushed ``deceasedBoolean: false``: one survives."""
    given = [
        Contribution("acute", "H1", body(deceasedDateTime=DIED)),
        Contribution("fhir", "F1", body(deceasedBoolean=False)),
    ]
    patient, found = merge("p", given if order == 0 else given[::-1])
    assert patient["deceasedDateTime"] == DIED
    assert "deceasedBoolean" not in patient
    assert found == [Conflict("deceased[x]", ("acute", "fhir"), 2)]
    validate(patient)


def test_the_newest_form_wins_within_a_source() -> None:
    older = Contribution("acute", "H1", body(deceasedBoolean=True), recorded="2026-01-01T00:00:00Z")
    newer = Contribution("acute", "H2", body(deceasedDateTime=DIED), recorded="2026-03-01T11:00:00Z")
    patient, found = merge("p", [older, newer])
    assert (patient.get("deceasedDateTime"), patient.get("deceasedBoolean")) == (DIED, None)
    assert found == [Conflict("deceased[x]", ("acute",), 2)]


def test_multiple_birth_forms_merge_as_one_element() -> None:
    given = [
        Contribution("community", "K1", body(multipleBirthInteger=2)),
        Contribution("gp", "G1", body(multipleBirthBoolean=True)),
        Contribution("fhir", "F1", body(multipleBirthInteger=2)),
    ]
    patient, found = merge("p", given)
    assert {k: v for k, v in patient.items() if k.startswith("multipleBirth")} == {
        "multipleBirthBoolean": True
    }
    assert found == [Conflict("multipleBirth[x]", ("community", "fhir", "gp"), 2)]


def test_one_form_from_every_source_is_no_conflict_however_the_values_differ() -> None:
    given = [
        Contribution("gp", "G1", body(deceasedBoolean=False)),
        Contribution("acute", "H1", body(deceasedBoolean=True)),
    ]
    patient, found = merge("p", given)
    assert patient["deceasedBoolean"] is False  # the GP's, by precedence, as for any element
    assert found == []


def test_a_choice_conflict_carries_no_values() -> None:
    given = [
        Contribution("acute", "H1", body(deceasedDateTime=DIED)),
        Contribution("social-care", "C1", body(deceasedBoolean=True)),
    ]
    (conflict,) = conflicts(given)
    assert "2026" not in repr(conflict) and "True" not in repr(conflict)


def test_the_choice_elements_are_those_fhir_r4_defines_on_patient() -> None:
    """Every choice element the merge can meet: Patient's top-level ones (a CarePlan is never merged)."""
    model = get_fhir_model_class("Patient")
    defined = {
        name: f"{extra['one_of_many']}[x]"
        for name, info in model.model_fields.items()
        if isinstance(extra := info.json_schema_extra, dict) and extra.get("one_of_many")
    }
    assert defined == CHOICE_ELEMENTS
