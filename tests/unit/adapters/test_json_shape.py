"""``repeated_name``: a member name held twice by one object, anywhere in a document."""

from __future__ import annotations

import pytest

from adapters.json_shape import repeated_name


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"a": 1, "b": {"c": 2}, "d": [{"e": 3}, {"e": 4}]}', None),  # the same name in two objects
        ('{"a": 1, "a": 1}', "'a'"),
        ('{"a": {"b": [{"c": 1, "c": 2}]}}', "'c'"),
        ('[{"x": 1}, {"y": 2, "y": 3}]', "'y'"),
        ('{"Zoë Hughes": 1, "Zoë Hughes": 2}', "a name"),  # not shaped like a field: not quoted
        (b'{"plan": 1, "plan": 2}', "'plan'"),
        ("[]", None),
    ],
)
def test_the_first_repeated_name_is_found_wherever_it_is(text: str | bytes, named: str | None) -> None:
    assert repeated_name(text) == named
