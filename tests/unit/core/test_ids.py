"""Deterministic resource ids: keyed, 32 hex characters, valid FHIR ids, distinct for distinct inputs."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mappings.ids import IdMaker

KEY = b"k" * 32
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# The separator is \x1f; parts are source names, local ids and NHS numbers, which never contain it.
# Lone surrogates are included: a JSON payload can carry them ("\\ud800") into a local id.
parts = st.text(alphabet=st.characters(exclude_characters="\x1f", exclude_categories=()), max_size=20)


def test_an_id_is_32_lowercase_hex_and_a_valid_fhir_id() -> None:
    made = IdMaker(KEY).patient("9990000018")
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert FHIR_ID.fullmatch(made)


def test_an_id_is_a_keyed_hmac_not_a_plain_hash() -> None:
    made = IdMaker(KEY).patient("9990000018")
    expected = hmac.new(KEY, b"Patient\x1f9990000018", hashlib.sha256).hexdigest()[:32]
    assert made == expected
    assert made != hashlib.sha256(b"Patient\x1f9990000018").hexdigest()[:32]


def test_same_input_same_id_across_instances() -> None:
    assert IdMaker(KEY).patient("9990000018") == IdMaker(bytes(KEY)).patient("9990000018")
    args = ("CarePlan", "gp", "GP1-CP1", "9990000018")
    assert IdMaker(KEY).source_resource(*args) == IdMaker(KEY).source_resource(*args)


def test_ids_differ_by_key() -> None:
    assert IdMaker(KEY).patient("9990000018") != IdMaker(b"j" * 32).patient("9990000018")


def test_source_resource_ids_differ_by_every_part() -> None:
    ids = IdMaker(KEY)
    base = ("CarePlan", "gp", "GP1-CP1", "9990000018")
    made = {ids.source_resource(*base)}
    for position, other in enumerate(("Provenance", "acute", "GP1-CP2", "9990000026")):
        changed = list(base)
        changed[position] = other
        made.add(ids.source_resource(*changed))
    assert len(made) == 5


def test_the_shared_patient_id_depends_only_on_the_nhs_number() -> None:
    ids = IdMaker(KEY)
    assert ids.patient("9990000018") == ids.make("Patient", "9990000018")
    assert ids.patient("9990000018") != ids.patient("9990000026")
    assert ids.patient("9990000018") != ids.source_resource("Patient", "gp", "GP1", "9990000018")


def test_moving_text_between_parts_changes_the_id() -> None:
    ids = IdMaker(KEY)
    assert ids.make("CarePlan", "gp", "ab") != ids.make("CarePlan", "gpa", "b")
    assert ids.make("CarePlan", "gp", "") != ids.make("CarePlan", "gp")


def test_local_ids_with_lone_surrogates_still_get_distinct_ids() -> None:
    ids = IdMaker(KEY)
    assert ids.make("CarePlan", "fhir", "\ud800") != ids.make("CarePlan", "fhir", "\ud801")


@pytest.mark.parametrize("key", [b"", b"short", b"x" * 15])
def test_short_keys_are_refused(key: bytes) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        IdMaker(key)


def test_a_sixteen_byte_key_is_enough() -> None:
    assert IdMaker(b"x" * 16).patient("9990000018")


@given(st.lists(parts, min_size=1, max_size=4), st.lists(parts, min_size=1, max_size=4))
def test_distinct_parts_give_distinct_ids(first: list[str], second: list[str]) -> None:
    ids = IdMaker(KEY)
    a, b = ids.make(*first), ids.make(*second)
    assert (a == b) == (first == second)
    assert FHIR_ID.fullmatch(a)
