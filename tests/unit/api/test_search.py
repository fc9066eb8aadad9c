"""Search parameters, pure: parsing, handling, ``_count`` capping and paging tokens."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.outcome import BadRequest
from gateway.api.search import (
    CAREPLAN_SEARCH,
    PAGE_ONLY,
    PATIENT_SEARCH,
    Limits,
    PageTokens,
    Person,
    parse,
    parse_identifier,
    parse_reference,
    query_string,
    status_codes,
    strict_handling,
)

NHS = "9990000018"
SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
REQUEST_STATUS = "http://hl7.org/fhir/request-status"
LIMITS = Limits(default=20, maximum=100)
BASE = "https://gw.example/fhir/"


def careplans(*pairs: tuple[str, str], strict: bool = False):  # type: ignore[no-untyped-def]
    return parse(CAREPLAN_SEARCH, pairs, strict, LIMITS, BASE)


@pytest.mark.parametrize(
    ("header", "strict"),
    [
        (None, False),
        ("", False),
        ("handling=lenient", False),
        ("handling=strict", True),
        ("return=minimal, handling=strict", True),
        ('HANDLING="strict"', True),
        ("respond-async; handling=strict", True),
    ],
)
def test_prefer_handling(header: str | None, strict: bool) -> None:
    assert strict_handling(header) is strict


@pytest.mark.parametrize("value", [f"{SYSTEM}|{NHS}", NHS, "999 000 0018", "999-000-0018"])
def test_an_nhs_number_identifier_with_or_without_its_system(value: str) -> None:
    assert parse_identifier(value) == Person(nhs_number=NHS)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("https://example.org/mrn|123", "not-supported"),
        (f"|{NHS}", "not-supported"),
        (f"{SYSTEM}|{NHS},9990000026", "not-supported"),
        (f"{SYSTEM}|9990000019", "invalid"),
        ("abc", "invalid"),
    ],
)
def test_identifiers_that_cannot_be_searched(value: str, code: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_identifier(value)
    assert caught.value.code == code
    assert "999000001" not in caught.value.diagnostics  # the value is never echoed


@pytest.mark.parametrize("value", ["Patient/abc123", "abc123", f"{BASE}Patient/abc123"])
def test_patient_references(value: str) -> None:
    assert parse_reference(value, BASE) == Person(patient_id="abc123")


@pytest.mark.parametrize(
    "value", ["Group/abc", "https://other.example/fhir/Patient/abc", "Patient/a b", "Patient/"]
)
def test_references_that_cannot_be_searched(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_reference(value, BASE)


def test_a_careplan_search_by_every_spelling_of_the_subject() -> None:
    for name in ("subject:identifier", "patient:identifier", "subject.identifier", "patient.identifier"):
        assert careplans((name, NHS)).person == Person(nhs_number=NHS)
    for name in ("subject", "patient", "subject:Patient"):
        assert careplans((name, "Patient/p1")).person == Person(patient_id="p1")


def test_status_include_and_used_parameters() -> None:
    query = careplans(
        ("patient", "Patient/p1"),
        ("status", "active,completed"),
        ("_include", "CarePlan:subject"),
        ("_format", "json"),
    )
    assert query.statuses == {"active", "completed"}
    assert query.include_subject
    assert query.used == (
        ("patient", "Patient/p1"),
        ("status", "active,completed"),
        ("_include", "CarePlan:subject"),
    )


@pytest.mark.parametrize(
    ("values", "statuses"),
    [
        (["active,on-hold"], {"active", "on-hold"}),  # a comma: OR
        (["active", "on-hold"], set()),  # repeated: AND, and a plan has one status
        (["active,on-hold", "on-hold,completed"], {"on-hold"}),
        (["active", "active"], {"active"}),
        ([f"{REQUEST_STATUS}|active"], {"active"}),
        ([f"{REQUEST_STATUS}|active,draft"], {"active", "draft"}),
        (["http://example.org/other|active"], set()),  # another system: nothing
        (["|active"], set()),  # no system: a status always has one
        ([f"{REQUEST_STATUS}|"], None),  # any code of the system
        ([f"{REQUEST_STATUS}|", "active"], {"active"}),
        ([","], None),
    ],
)
def test_status_parameters_follow_the_token_rules(values: list[str], statuses: set[str] | None) -> None:
    query = careplans(("patient", "p1"), *(("status", v) for v in values))
    assert query.statuses == (None if statuses is None else frozenset(statuses))


def test_status_codes_of_one_parameter() -> None:
    assert status_codes(" active , on-hold ") == {"active", "on-hold"}
    assert status_codes(f"{REQUEST_STATUS}|active,http://x|draft") == {"active"}


def test_a_search_names_one_person() -> None:
    with pytest.raises(BadRequest):
        careplans(("patient", "Patient/p1"), ("subject:identifier", NHS))


@pytest.mark.parametrize(("given", "count"), [(None, 20), ("0", 0), ("5", 5), ("100", 100), ("1000", 100)])
def test_count_defaults_and_is_capped(given: str | None, count: int) -> None:
    pairs = [("identifier", NHS)] + ([("_count", given)] if given is not None else [])
    assert parse(PATIENT_SEARCH, pairs, False, LIMITS).count == count


def test_used_carries_the_count_applied_not_the_count_asked() -> None:
    query = parse(PATIENT_SEARCH, [("identifier", NHS), ("_count", "500")], False, LIMITS)
    assert query.used == (("identifier", NHS), ("_count", "100"))
    assert careplans(("patient", "p1"), ("_count", "007")).used == (("patient", "p1"), ("_count", "7"))


@pytest.mark.parametrize("given", ["-1", "ten", "1.5", "²"])
def test_a_count_that_is_not_a_whole_number_is_refused(given: str) -> None:
    with pytest.raises(BadRequest):
        parse(PATIENT_SEARCH, [("identifier", NHS), ("_count", given)], False, LIMITS)


def test_unknown_parameters_are_ignored_and_reported_when_lenient() -> None:
    query = parse(PATIENT_SEARCH, [("identifier", NHS), ("name", "Smith"), ("_sort", "x")], False, LIMITS)
    assert query.ignored == ("name", "_sort")
    assert query.used == (("identifier", NHS),)


def test_unknown_parameters_are_refused_by_name_when_strict() -> None:
    with pytest.raises(BadRequest) as caught:
        parse(PATIENT_SEARCH, [("identifier", NHS), ("name", "Smith")], True, LIMITS)
    assert "name" in caught.value.diagnostics
    assert caught.value.code == "not-supported"


def test_an_echoed_parameter_name_never_carries_a_number() -> None:
    query = parse(PATIENT_SEARCH, [("identifier", NHS), (NHS, "x")], False, LIMITS)
    assert NHS not in query.ignored[0]
    with pytest.raises(BadRequest) as caught:
        parse(PATIENT_SEARCH, [("identifier", NHS), (NHS, "x")], True, LIMITS)
    assert NHS not in caught.value.diagnostics


def test_an_unsupported_include_follows_the_handling() -> None:
    assert careplans(("patient", "p1"), ("_include", "CarePlan:author")).ignored == ("_include",)
    with pytest.raises(BadRequest):
        careplans(("patient", "p1"), ("_include", "CarePlan:author"), strict=True)


@pytest.mark.parametrize(
    "name",
    [
        "_has:Observation:patient:code",
        "_revinclude",
        "_revinclude:iterate",
        "_include:iterate",
        "subject.name",
    ],
)
@pytest.mark.parametrize("strict", [False, True])
def test_parameters_that_would_change_what_matches_are_refused_under_any_handling(
    name: str, strict: bool
) -> None:
    with pytest.raises(BadRequest) as caught:
        careplans(("patient", "p1"), (name, "x"), strict=strict)
    assert caught.value.code == "not-supported"


def test_empty_values_are_ignored() -> None:
    query = careplans(("patient", "p1"), ("status", ""), ("_count", ""))
    assert query.statuses is None
    assert query.count == 20


def test_page_only_takes_the_result_parameters() -> None:
    query = parse(PAGE_ONLY, [("_count", "5"), ("_page", "tok"), ("_since", "2024")], False, LIMITS)
    assert (query.person, query.count, query.page, query.ignored) == (None, 5, "tok", ("_since",))


class TestPageTokens:
    tokens = PageTokens(b"k" * 32)
    used = (("identifier", NHS), ("_count", "1"))

    def test_a_token_round_trips_for_its_client_and_query(self) -> None:
        token = self.tokens.issue("client-a", "Patient", self.used, 40)
        assert self.tokens.offset(token, "client-a", "Patient", self.used) == 40
        assert self.tokens.offset(token, "client-a", "Patient", tuple(reversed(self.used))) == 40
        assert self.tokens.offset(None, "client-a", "Patient", self.used) == 0

    @pytest.mark.parametrize(
        ("client", "path", "used"),
        [
            ("client-b", "Patient", used),
            ("client-a", "CarePlan", used),
            ("client-a", "Patient", (("identifier", "9990000026"), ("_count", "1"))),
            ("client-a", "Patient", (("identifier", NHS), ("_count", "2"))),
        ],
    )
    def test_a_token_is_bound_to_client_path_and_query(self, client: str, path: str, used) -> None:  # type: ignore[no-untyped-def]
        token = self.tokens.issue("client-a", "Patient", self.used, 40)
        with pytest.raises(BadRequest) as caught:
            self.tokens.offset(token, client, path, used)
        assert caught.value.diagnostics == PageTokens.ERROR

    @pytest.mark.parametrize(
        "forged",
        [
            "",
            "40",
            "41.x",
            "-1.abc",
            "x.y",
            "99999999999.a",
            "40.",
            ".abc",
            "1.\xff\xfe",
            "1.\ufffd\ufffd",
            "40.é",
        ],
    )
    def test_forged_tokens_get_the_same_error(self, forged: str) -> None:
        with pytest.raises(BadRequest) as caught:
            self.tokens.offset(forged, "client-a", "Patient", self.used)
        assert caught.value.diagnostics == PageTokens.ERROR

    def test_an_edited_offset_is_refused(self) -> None:
        token = self.tokens.issue("client-a", "Patient", self.used, 40)
        edited = "80" + token[2:]
        with pytest.raises(BadRequest):
            self.tokens.offset(edited, "client-a", "Patient", self.used)

    def test_another_key_refuses(self) -> None:
        token = self.tokens.issue("client-a", "Patient", self.used, 40)
        with pytest.raises(BadRequest):
            PageTokens(b"j" * 32).offset(token, "client-a", "Patient", self.used)


@given(st.lists(st.tuples(st.text(), st.text(alphabet=st.sampled_from("|a%+ &=é/:9")) | st.text())))
def test_query_strings_are_urlencoded(pairs: list[tuple[str, str]]) -> None:
    assert query_string(pairs) == urlencode(pairs)
