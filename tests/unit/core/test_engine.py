"""The mapping engine: element paths, every transform, required fields, lookups, templates, no empties."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from mappings.engine import ODS_SYSTEM, CodeShapes, Engine, MappingError, ResourceSpec, Rule, shown_code
from mappings.specs import load_specs
from mappings.terminology import load_tables, table_from_conceptmap

COLOUR_SYSTEM = "https://example.org/CodeSystem/colour"
SNOMED = "http://snomed.info/sct"
COLOURS = table_from_conceptmap(
    {
        "resourceType": "ConceptMap",
        "id": "colour",
        "group": [
            {
                "source": COLOUR_SYSTEM,
                "target": SNOMED,
                "element": [
                    {
                        "code": "R",
                        "target": [{"code": "371240000", "display": "Red", "equivalence": "equal"}],
                    },
                    {"code": "G", "target": [{"code": "371246006", "equivalence": "equivalent"}]},
                    {"code": "B", "target": [{"code": "405738005", "equivalence": "unmatched"}]},
                ],
            }
        ],
    }
)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine({**load_tables(), "colour": COLOURS})


def spec(*rules: dict[str, Any]) -> ResourceSpec:
    return ResourceSpec.parse(
        {"source": "test", "resourceType": "Basic", "profile": "urn:test", "rules": list(rules)}
    )


def run(
    engine: Engine,
    rules: list[dict[str, Any]],
    item: dict[str, Any],
    root: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return engine.apply(spec(*rules), item, item if root is None else root, context).body


def one(engine: Engine, transform: str | tuple[str, ...], value: Any, **rule: Any) -> Any:
    """The value one rule writes to element ``x`` (KeyError when it writes nothing)."""
    return run(engine, [{"element": "x", "field": "f", "transform": transform, **rule}], {"f": value})["x"]


def failure(engine: Engine, rules: list[dict[str, Any]], item: dict[str, Any]) -> MappingError:
    with pytest.raises(MappingError) as caught:
        run(engine, rules, item)
    return caught.value


# Element paths ------------------------------------------------------------------------------------


def test_indexed_and_nested_paths(engine: Engine) -> None:
    body = run(
        engine,
        [
            {"element": "a[0].b", "value": 1},
            {"element": "a[0].c.d", "value": 2},
            {"element": "e.f", "value": "g"},
            {"element": "a[1].b", "value": 3},
        ],
        {},
    )
    assert body == {"a": [{"b": 1, "c": {"d": 2}}, {"b": 3}], "e": {"f": "g"}}


def test_append_adds_one_item_per_rule_and_extends_with_lists(engine: Engine) -> None:
    body = run(
        engine,
        [
            {"element": "x[]", "field": "one", "transform": "text"},
            {"element": "x[]", "field": "two", "transform": "text"},
            {"element": "x[]", "field": "many", "transform": "split"},
        ],
        {"one": "first", "two": " second ", "many": "third, fourth"},
    )
    assert body == {"x": ["first", "second", "third", "fourth"]}


def test_append_into_a_new_element_then_set_its_children(engine: Engine) -> None:
    body = run(engine, [{"element": "x[].y", "value": 1}, {"element": "x[].y", "value": 2}], {})
    assert body == {"x": [{"y": 1}, {"y": 2}]}


def test_an_empty_lower_index_leaves_no_empty_element(engine: Engine) -> None:
    rules = [
        {"element": "telecom[0].value", "field": "home", "transform": "text"},
        {"element": "telecom[1].value", "field": "mobile", "transform": "text"},
    ]
    body = run(engine, rules, {"home": "", "mobile": "07700 900000"})
    assert {} not in body["telecom"]


def test_a_bad_path_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="bad element path"):
        run(engine, [{"element": "a[x].b", "value": 1}], {})


def test_each_maps_every_item_to_a_new_element(engine: Engine) -> None:
    rules = [
        {
            "element": "activity[]",
            "field": "acts",
            "each": [
                {"element": "detail.kind", "value": "Task"},
                {"element": "detail.code", "field": "code", "transform": "text"},
                {"element": "detail.n", "template": "{i}"},
                {"element": "detail.site", "field": "^site"},
                {"element": "detail.who", "field": "$who"},
            ],
        }
    ]
    body = run(
        engine, rules, {"acts": [{"code": "A"}, {"code": "B"}], "site": "S"}, context={"who": "Patient/1"}
    )
    assert body == {
        "activity": [
            {"detail": {"kind": "Task", "code": "A", "n": "1", "site": "S", "who": "Patient/1"}},
            {"detail": {"kind": "Task", "code": "B", "n": "2", "site": "S", "who": "Patient/1"}},
        ]
    }


def test_each_nests(engine: Engine) -> None:
    rules = [
        {
            "element": "group[]",
            "field": "groups",
            "each": [
                {"element": "name", "field": "name"},
                {"element": "member[]", "field": "members", "each": [{"element": "id", "template": "{i}"}]},
            ],
        }
    ]
    body = run(engine, rules, {"groups": [{"name": "g", "members": ["a", "b"]}, {"name": "h"}]})
    assert body == {"group": [{"name": "g", "member": [{"id": "1"}, {"id": "2"}]}, {"name": "h"}]}


def test_each_over_plain_values_reads_them_as_value(engine: Engine) -> None:
    rules = [{"element": "tag[]", "field": "tags", "each": [{"element": "code", "field": "value"}]}]
    assert run(engine, rules, {"tags": ["a", "b"]}) == {"tag": [{"code": "a"}, {"code": "b"}]}


def test_each_over_a_non_list_is_a_mapping_error(engine: Engine) -> None:
    rules = [{"element": "tag[]", "field": "tags", "each": [{"element": "code", "field": "value"}]}]
    error = failure(engine, rules, {"tags": "a,b"})
    assert error.issue.reason == "field-not-a-list"
    assert error.issue.field == "tags"


def test_each_item_that_maps_to_nothing_adds_no_element(engine: Engine) -> None:
    rules = [{"element": "tag[]", "field": "tags", "each": [{"element": "code", "field": "code"}]}]
    assert run(engine, rules, {"tags": [{"code": ""}, {"code": "x"}, {}]}) == {"tag": [{"code": "x"}]}
    assert run(engine, rules, {"tags": []}) == {}
    assert run(engine, rules, {}) == {}


# Transforms ---------------------------------------------------------------------------------------


def test_text_strips_and_stringifies(engine: Engine) -> None:
    assert one(engine, "text", "  Smith ") == "Smith"
    assert one(engine, "text", 42) == "42"


def test_upper(engine: Engine) -> None:
    assert one(engine, "upper", " rm10 2jy ") == "RM10 2JY"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1950-01-02", "1950-01-02"),  # ISO
        ("19500102", "1950-01-02"),  # HL7 DT
        ("195001021230", "1950-01-02"),  # HL7 TS: the date part
        ("19500102123045", "1950-01-02"),
        ("19500102123045-0500", "1950-01-02"),  # HL7 TS with an offset, either sign
        ("195001021230+0100", "1950-01-02"),
        ("02/01/1950", "1950-01-02"),  # UK: day first
        ("1950-01-02T10:00:00Z", "1950-01-02"),
        (" 1950-01-02 ", "1950-01-02"),
        ("29/02/2024", "2024-02-29"),
        ("1950", "1950"),  # HL7 DT/TS and FHIR date to the year: a partly unknown date of birth
        ("195006", "1950-06"),  # ... or to the month
        ("1950-06", "1950-06"),
    ],
)
def test_date_forms(engine: Engine, raw: str, expected: str) -> None:
    assert one(engine, "date", raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "30/02/2024",
        "2024-13-01",
        "02-01-1950",
        "yesterday",
        "1879-12-31",
        "2024-01-01X",
        "195013",
        "1879",
        "300744",
    ],
)
def test_invalid_date(engine: Engine, raw: str) -> None:
    error = failure(engine, [{"element": "x", "field": "dob", "transform": "date"}], {"dob": raw})
    assert error.issue.reason == "invalid-date"
    assert error.issue.field == "dob"
    assert raw.strip() not in str(error)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("20240115093000", "2024-01-15T09:30:00+00:00"),  # HL7, winter: GMT
        ("20240715093000", "2024-07-15T09:30:00+01:00"),  # HL7, summer: BST
        ("202407150930", "2024-07-15T09:30:00+01:00"),
        ("2024071509", "2024-07-15T09:00:00+01:00"),
        ("20240715093000-0500", "2024-07-15T09:30:00-05:00"),  # HL7 offset kept
        ("202407150930+0000", "2024-07-15T09:30:00+00:00"),
        ("20240715093000.1234+0100", "2024-07-15T09:30:00+01:00"),
        ("2024-07-15T09:30:00", "2024-07-15T09:30:00+01:00"),  # ISO local: Europe/London
        ("2024-12-15T09:30:00", "2024-12-15T09:30:00+00:00"),
        ("2024-07-15T09:30:00Z", "2024-07-15T09:30:00+00:00"),
        ("2024-07-15T09:30:00+02:00", "2024-07-15T09:30:00+02:00"),
        ("202407", "2024-07"),  # HL7 DTM and FHIR dateTime to the month
        ("20171022", "2017-10-22"),  # a day stays a day: no midnight is made up
        ("20171022+0100", "2017-10-22"),
        ("2017-10-22", "2017-10-22"),
        ("2024", "2024"),
    ],
)
def test_datetime_forms(engine: Engine, raw: str, expected: str) -> None:
    assert one(engine, "datetime", raw) == expected


def test_datetime_either_side_of_the_clocks_going_forward(engine: Engine) -> None:
    # 31 March 2024: clocks go forward at 01:00 GMT.
    assert one(engine, "datetime", "20240331003000") == "2024-03-31T00:30:00+00:00"
    assert one(engine, "datetime", "20240331023000") == "2024-03-31T02:30:00+01:00"


@pytest.mark.parametrize(
    "raw",
    ["2024-13-01T00:00:00", "202413", "20240715093", "not a time", "2024071509300", "20241301", "2024-02-30"],
)
def test_invalid_datetime(engine: Engine, raw: str) -> None:
    error = failure(engine, [{"element": "x", "field": "when", "transform": "datetime"}], {"when": raw})
    assert error.issue.reason == "invalid-datetime"
    assert error.issue.field == "when"


def test_split(engine: Engine) -> None:
    assert one(engine, "split", "a, b,,c ") == ["a", "b", "c"]
    assert one(engine, "split: ", " Amelia  Fatima ") == ["Amelia", "Fatima"]
    assert one(engine, "split:;", "a;b") == ["a", "b"]
    assert one(engine, "split", [" a ", "", None, "b"]) == ["a", "b"]


def test_split_to_nothing_writes_nothing(engine: Engine) -> None:
    with pytest.raises(KeyError):
        one(engine, "split", " , ,")


def test_int(engine: Engine) -> None:
    assert one(engine, "int", " 42 ") == 42
    error = failure(engine, [{"element": "x", "field": "n", "transform": "int"}], {"n": "4.2"})
    assert error.issue.reason == "invalid-number"
    assert error.issue.field == "n"


def test_nhs_number_transform(engine: Engine) -> None:
    assert one(engine, "nhs-number", "943 476 5919") == "9434765919"
    for raw, reason in (("9434765918", "nhs-number-check-digit"), ("94347659", "nhs-number-format")):
        error = failure(engine, [{"element": "x", "field": "nhs", "transform": "nhs-number"}], {"nhs": raw})
        assert error.issue.reason == reason
        assert error.issue.field == "nhs"
        assert raw not in str(error)
        assert raw not in error.issue.detail


def test_a_required_nhs_number_that_is_missing_says_so(engine: Engine) -> None:
    rules = [{"element": "x", "field": "nhs", "transform": "nhs-number", "required": True}]
    assert failure(engine, rules, {"nhs": "  "}).issue.reason == "nhs-number-missing"
    assert failure(engine, rules, {}).issue.reason == "nhs-number-missing"


def test_ods_reference(engine: Engine) -> None:
    assert one(engine, "ods-reference", " Y90001 ") == {
        "identifier": {"system": ODS_SYSTEM, "value": "Y90001"}
    }


def test_code_known(engine: Engine) -> None:
    assert one(engine, "code:administrative-gender", "F") == "female"
    assert one(engine, "code:administrative-gender", " m ") == "male"  # trimmed, then upper-cased


def test_code_unknown_is_quarantined_by_default(engine: Engine) -> None:
    error = failure(
        engine, [{"element": "x", "field": "sex", "transform": "code:administrative-gender"}], {"sex": "Q"}
    )
    assert error.issue.reason == "unknown-code"
    assert error.issue.field == "sex"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("Q", "code 'Q' not in ConceptMap administrative-gender"),  # a code: named for the analyst
        # not shaped like any of the map's codes (M, F, 1, FEMALE ...): from somewhere else
        ("LTC-DM.2", "a value that is not a code not in ConceptMap administrative-gender"),
        ("ABERNETHY", "a value that is not a code not in ConceptMap administrative-gender"),  # 9 > 7
        ("Davies 9990000026", "a value that is not a code not in ConceptMap administrative-gender"),
        ("9990000026", "a value that is not a code not in ConceptMap administrative-gender"),
        ("Amelia Davies", "a value that is not a code not in ConceptMap administrative-gender"),
        # a field separator too many or too few puts personal data in a code field
        ("19600101", "a value that is not a code not in ConceptMap administrative-gender"),
        ("1960-01-01", "a value that is not a code not in ConceptMap administrative-gender"),
        ("Okonkwo", "a value that is not a code not in ConceptMap administrative-gender"),
        ("O'Brien", "a value that is not a code not in ConceptMap administrative-gender"),
        ("LS11AA", "a value that is not a code not in ConceptMap administrative-gender"),
        ("07700900123", "a value that is not a code not in ConceptMap administrative-gender"),
        ("ACTIVE", "code 'ACTIVE' not in ConceptMap administrative-gender"),
        ("H", "code 'H' not in ConceptMap administrative-gender"),
        ("44054006", "a value that is not a code not in ConceptMap administrative-gender"),
    ],
)
def test_an_unknown_value_is_named_only_when_it_looks_like_a_code(
    engine: Engine, value: str, shown: str
) -> None:
    rule = {"element": "x", "field": "sex", "transform": "code:administrative-gender"}
    error = failure(engine, [rule], {"sex": value})
    assert error.issue.detail == shown


def test_code_unknown_kept_is_dropped_with_a_warning(engine: Engine) -> None:
    rule = {"element": "x", "field": "sex", "transform": "code:administrative-gender", "on_unknown": "keep"}
    mapped = engine.apply(spec(rule), {"sex": "Q"}, {"sex": "Q"})
    assert mapped.body == {}  # an unmapped code in a required-bound element would be invalid
    assert [(w.reason, w.field) for w in mapped.warnings] == [("unknown-code", "sex")]


def test_coding(engine: Engine) -> None:
    assert one(engine, "coding:colour", "R") == {"system": SNOMED, "code": "371240000", "display": "Red"}
    assert one(engine, "coding:colour", "G") == {"system": SNOMED, "code": "371246006"}
    assert one(engine, "coding:colour", "P", on_unknown="keep") == {"system": COLOUR_SYSTEM, "code": "P"}


def test_concept(engine: Engine) -> None:
    assert one(engine, "concept:colour", "R") == {
        "coding": [{"system": SNOMED, "code": "371240000", "display": "Red"}],
        "text": "Red",
    }
    assert one(engine, "concept:colour", "G") == {"coding": [{"system": SNOMED, "code": "371246006"}]}


def test_concept_unknown_kept_keeps_the_source_code_and_warns(engine: Engine) -> None:
    rule = {"element": "x", "field": "c", "transform": "concept:colour", "on_unknown": "keep"}
    mapped = engine.apply(spec(rule), {"c": "P"}, {"c": "P"})
    assert mapped.body == {"x": {"coding": [{"system": COLOUR_SYSTEM, "code": "P"}]}}
    assert [(w.reason, w.field) for w in mapped.warnings] == [("unknown-code", "c")]


@pytest.mark.parametrize("transform", ["code:colour", "coding:colour", "concept:colour"])
def test_unknown_is_quarantined_by_default_for_every_lookup(engine: Engine, transform: str) -> None:
    error = failure(engine, [{"element": "x", "field": "c", "transform": transform}], {"c": "P"})
    assert error.issue.reason == "unknown-code"


def test_an_unmatched_target_is_no_mapping(engine: Engine) -> None:
    error = failure(engine, [{"element": "x", "field": "c", "transform": "code:colour"}], {"c": "B"})
    assert error.issue.reason == "unknown-code"


def test_transforms_chain(engine: Engine) -> None:
    assert one(engine, ("text", "upper"), "  ab ") == "AB"


# Required fields, lookups, templates ----------------------------------------------------------------


@pytest.mark.parametrize("item", [{}, {"f": None}, {"f": ""}, {"f": "   "}])
def test_required_field_missing(engine: Engine, item: dict[str, Any]) -> None:
    error = failure(engine, [{"element": "x", "field": "f", "transform": "text", "required": True}], item)
    assert error.issue.reason == "required-field-missing"
    assert error.issue.field == "f"


def test_required_field_present(engine: Engine) -> None:
    assert run(engine, [{"element": "x", "field": "f", "required": True}], {"f": "v"}) == {"x": "v"}


def test_root_context_and_dotted_lookups(engine: Engine) -> None:
    rules = [
        {"element": "a", "field": "^top"},
        {"element": "b", "field": "$patient"},
        {"element": "c", "field": "inner.deep"},
        {"element": "d", "field": "^nested.deep"},
        {"element": "e", "field": "$absent"},
        {"element": "f", "field": "inner.deep.deeper"},
    ]
    body = run(
        engine,
        rules,
        {"inner": {"deep": "item"}},
        root={"top": "root", "nested": {"deep": "rooted"}},
        context={"patient": "Patient/1"},
    )
    assert body == {"a": "root", "b": "Patient/1", "c": "item", "d": "rooted"}


def test_templates(engine: Engine) -> None:
    rules = [
        {"element": "a", "template": "urn:{^ods}:{id}"},
        {"element": "b", "template": "{$patient}/x"},
        {"element": "c", "template": "{missing}"},
        {"element": "d", "template": "  {missing}  "},
    ]
    body = run(engine, rules, {"id": "7"}, root={"ods": "Y1"}, context={"patient": "Patient/1"})
    assert body == {"a": "urn:Y1:7", "b": "Patient/1/x"}


def test_constant_values(engine: Engine) -> None:
    assert run(engine, [{"element": "x", "value": {"k": [1]}}], {}) == {"x": {"k": [1]}}


@pytest.mark.parametrize("empty", [None, "", [], {}])
def test_empty_values_are_never_written(engine: Engine, empty: Any) -> None:
    rules = [
        {"element": "a", "field": "f"},
        {"element": "b[0].c", "field": "f", "transform": "text"},
        {"element": "d[]", "field": "f", "transform": "split"},
        {"element": "e", "field": "f", "transform": "concept:colour"},
        {"element": "g", "value": empty},
    ]
    assert run(engine, rules, {"f": empty}) == {}


@pytest.mark.parametrize("empty", [None, "", "  "])
def test_a_template_of_empty_values_is_not_written(engine: Engine, empty: Any) -> None:
    assert run(engine, [{"element": "x", "template": "{f} {g}"}], {"f": empty}) == {}


@pytest.mark.parametrize(
    "transform", ["text", "upper", "split", "concept:colour", "date", "datetime", "int", "ods-reference"]
)
def test_whitespace_is_empty_once_transformed(engine: Engine, transform: str) -> None:
    assert run(engine, [{"element": "x", "field": "f", "transform": transform}], {"f": " \t "}) == {}


def test_a_whitespace_only_required_field_is_missing_not_invalid(engine: Engine) -> None:
    rules = [{"element": "x", "field": "dob", "transform": "date", "required": True}]
    assert failure(engine, rules, {"dob": "  "}).issue.reason == "required-field-missing"


def test_when_writes_a_constant_only_beside_data(engine: Engine) -> None:
    rules: list[dict[str, Any]] = [
        {"element": "telecom[0].system", "value": "phone", "when": "phone"},
        {"element": "telecom[0].value", "field": "phone", "transform": "text"},
        {"element": "name[0].use", "value": "official", "when": ["family", "given"]},
        {"element": "site", "value": "here", "when": "^site"},
    ]
    assert run(engine, rules, {"phone": "", "family": None}, root={}) == {}
    assert run(engine, rules, {"phone": "0208", "given": "Ann"}, root={"site": "S"}) == {
        "telecom": [{"system": "phone", "value": "0208"}],
        "name": [{"use": "official"}],
        "site": "here",
    }


def test_when_treats_whitespace_as_no_data(engine: Engine) -> None:
    rules = [
        {"element": "telecom[0].system", "value": "phone", "when": "phone"},
        {"element": "telecom[0].value", "field": "phone", "transform": "text"},
    ]
    assert run(engine, rules, {"phone": "   "}) == {}


def test_default_fills_an_empty_field_before_transforms(engine: Engine) -> None:
    rule = {"element": "gender", "field": "sex", "transform": "code:administrative-gender", "default": "U"}
    assert run(engine, [rule], {}) == {"gender": "unknown"}
    assert run(engine, [rule], {"sex": ""}) == {"gender": "unknown"}
    assert run(engine, [rule], {"sex": "F"}) == {"gender": "female"}


def test_when_and_default_parse() -> None:
    assert Rule.parse({"element": "x", "value": 1, "when": "a"}).when == ("a",)
    assert Rule.parse({"element": "x", "value": 1, "when": ["a", "b"]}).when == ("a", "b")
    assert Rule.parse({"element": "x", "field": "f", "default": "d"}).default == "d"


def test_a_rule_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Rule.parse({"element": "x"})
    with pytest.raises(ValueError, match="exactly one"):
        Rule.parse({"element": "x", "field": "f", "value": 1})


# Engine.check and determinism -----------------------------------------------------------------------


def test_check_accepts_the_shipped_specs(engine: Engine) -> None:
    for source in load_specs().values():
        engine.check(source.patient)
        if source.care_plan:
            engine.check(source.care_plan)


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        ("uppercase", "unknown transform"),
        ("concept:no-such-map", "no ConceptMap"),
        ("code:", "no ConceptMap"),
        ("coding:nope", "no ConceptMap"),
    ],
)
def test_check_rejects_unknown_transforms_and_maps(engine: Engine, transform: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine.check(spec({"element": "x", "field": "f", "transform": transform}))
    nested = {
        "element": "y[]",
        "field": "ys",
        "each": [{"element": "z", "field": "f", "transform": transform}],
    }
    with pytest.raises(ValueError, match=message):
        engine.check(spec(nested))


def test_same_input_same_output(engine: Engine) -> None:
    specs = load_specs()["gp"]
    record: dict[str, Any] = {
        "practice_ods": "Y90001",
        "nhs_number": "999 000 0018",
        "nhs_number_status": "01",
        "given_names": "Amelia Fatima",
        "sex": "F",
        "date_of_birth": "02/01/1950",
        "care_plans": [
            {
                "plan_id": "P1",
                "plan_status": "ACTIVE",
                "plan_type": "LTC-DM",
                "recorded_at": "20240715093000",
                "activities": [{"code": "HBA1C", "status": "SCHEDULED", "date": "2024-08-01"}],
            }
        ],
    }
    frozen = copy.deepcopy(record)
    plans: list[dict[str, Any]] = record["care_plans"]
    runs = []
    for _ in range(3):
        fresh = Engine(load_tables())
        patient = fresh.apply(specs.patient, record, record).body
        assert specs.care_plan is not None
        plan = fresh.apply(specs.care_plan, plans[0], record, {"patient": "Patient/p"}).body
        runs.append(orjson.dumps([patient, plan]))
    assert len(set(runs)) == 1
    assert record == frozen  # the input is not changed


def test_mapped_bodies_do_not_share_state_with_the_spec(engine: Engine) -> None:
    rules = [{"element": "x", "value": {"k": [1]}}]
    first = run(engine, rules, {})
    first["x"]["k"].append(2)
    assert run(engine, rules, {}) == {"x": {"k": [1]}}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("LTC-CKD", "code 'LTC-CKD'"),  # shaped like the map's LTC-DM, LTC-COPD ...
        ("LTC-DM.2", "a value that is not a code"),
        ("44054006", "code '44054006'"),  # a map of SNOMED CT codes takes long numbers
        ("LTC-COPD-EXTRA", "a value that is not a code"),  # longer than any of the map's codes
    ],
)
def test_a_value_is_named_only_when_shaped_like_the_maps_own_codes(value: str, shown: str) -> None:
    like = CodeShapes.of(["DEM", "LTC-DM", "LTC-COPD", "195967001", "44054006"])
    assert shown_code(value, like) == shown
