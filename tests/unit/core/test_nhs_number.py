"""The NHS number: Modulus 11, normalisation, error codes, and messages that never leak the number."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.synth.defects import break_check_digit
from gateway.synth.population import nhs_numbers
from mappings import nhs_number
from mappings.nhs_number import NhsNumberError, check_digit, complete, formatted, is_valid, normalise

KNOWN_VALID = ("9990000018", "9449305552", "9434765919")
LAST_PREFIX = 999_999_999


def reference_check_digit(first_nine: str) -> int | None:
    """Modulus 11 written out from the NHS Data Dictionary, independently of the code under test."""
    total = 0
    for position, digit in enumerate(first_nine):
        total += int(digit) * (10 - position)
    remainder = total % 11
    if remainder == 0:
        return 0
    if remainder == 1:  # 11 - 1 = 10: no number with this prefix was ever issued
        return None
    return 11 - remainder


def first_prefix_without_check_digit(start: int) -> str:
    for prefix in itertools.count(start):
        if reference_check_digit(str(prefix)) is None:
            return str(prefix)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("number", KNOWN_VALID)
def test_known_valid_numbers_pass(number: str) -> None:
    assert normalise(number) == number
    assert is_valid(number)
    assert complete(number[:9]) == number


def test_check_digit_matches_a_worked_example() -> None:
    # 943 476 591: 9*10 + 4*9 + 3*8 + 4*7 + 7*6 + 6*5 + 5*4 + 9*3 + 1*2 = 299; 299 % 11 = 2; 11 - 2 = 9
    assert check_digit("943476591") == 9


def test_remainder_zero_gives_check_digit_zero() -> None:
    prefix = next(str(p) for p in itertools.count(100_000_000) if reference_check_digit(str(p)) == 0)
    assert check_digit(prefix) == 0
    assert complete(prefix) == prefix + "0"
    assert is_valid(prefix + "0")


def test_a_prefix_whose_check_digit_would_be_ten_has_no_valid_number() -> None:
    prefix = first_prefix_without_check_digit(943_476_591)
    assert check_digit(prefix) is None
    assert complete(prefix) is None
    for last in "0123456789":
        with pytest.raises(NhsNumberError) as caught:
            normalise(prefix + last)
        assert caught.value.code == "nhs-number-check-digit"


def test_the_first_prefix_of_the_test_range_has_no_valid_number() -> None:
    assert complete("999000000") is None
    assert next(nhs_numbers()) == "9990000018"


@pytest.mark.parametrize(
    "raw",
    [
        "943 476 5919",
        "943-476-5919",
        " 9434765919 ",
        "943 - 476 - 5919",
        "9 4 3 4 7 6 5 9 1 9",
        "943\u00a0476\u00a05919",  # non-breaking spaces, as spreadsheets export them
    ],
)
def test_spaces_and_dashes_are_normalised_away(raw: str) -> None:
    assert normalise(raw) == "9434765919"


@pytest.mark.parametrize("raw", [None, "", "   ", "\t\n"])
def test_missing(raw: str | None) -> None:
    with pytest.raises(NhsNumberError) as caught:
        normalise(raw)
    assert caught.value.code == "nhs-number-missing"
    assert not is_valid(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "943476591",  # nine digits
        "94347659190",  # eleven digits
        "943.476.5919",
        "943/476/5919",
        "943_476_5919",
        "+449434765919",
        "NHS9434765919",
        "94347659I9",  # a letter I for a one
        "\u0669\u0664\u0663\u0664\u0667\u0666\u0665\u0669\u0661\u0669",  # Arabic-Indic digits
        "\uff19\uff14\uff13\uff14\uff17\uff16\uff15\uff19\uff11\uff19",  # fullwidth digits
        "943476591\u00b9",  # superscript one: str.isdigit() says yes
        "943476591\U0001d7d7",  # mathematical bold nine
    ],
)
def test_not_ten_ascii_digits_is_a_format_error(raw: str) -> None:
    with pytest.raises(NhsNumberError) as caught:
        normalise(raw)
    assert caught.value.code == "nhs-number-format"


@pytest.mark.parametrize("raw", ["9434765918", "943 476 5910", "9990000019", "1234567890"])
def test_wrong_check_digit(raw: str) -> None:
    with pytest.raises(NhsNumberError) as caught:
        normalise(raw)
    assert caught.value.code == "nhs-number-check-digit"


@pytest.mark.parametrize(
    "raw",
    ["9434765918", "943-476-5918", "94347659", "9434765919999", "94347 6591x", "943 476 5910"],
)
def test_messages_never_carry_the_number(raw: str) -> None:
    with pytest.raises(NhsNumberError) as caught:
        normalise(raw)
    message = str(caught.value)
    digits = "".join(ch for ch in raw if ch.isdigit())
    assert raw not in message
    assert digits[:6] not in message  # not even a recognisable part of it
    assert not any(ch.isdigit() for ch in message.replace("Modulus 11", ""))


def test_error_is_a_value_error_with_a_stable_code() -> None:
    with pytest.raises(ValueError):
        normalise("123")
    error = NhsNumberError("nhs-number-format", "x")
    assert error.code == "nhs-number-format"


def test_formatted_is_three_three_four() -> None:
    assert formatted("9434765919") == "943 476 5919"


def test_test_range() -> None:
    assert nhs_number.is_test_range("9990000018")
    assert not nhs_number.is_test_range("9434765919")


def test_system_is_the_nhs_england_identifier_system() -> None:
    assert nhs_number.SYSTEM == "https://fhir.nhs.uk/Id/nhs-number"


# Properties ---------------------------------------------------------------------------------------

nine_digits = st.integers(min_value=0, max_value=999_999_999).map(lambda n: f"{n:09d}")
valid_numbers = nine_digits.map(complete).filter(lambda n: n is not None).map(str)


@given(nine_digits)
def test_check_digit_agrees_with_the_reference(prefix: str) -> None:
    assert check_digit(prefix) == reference_check_digit(prefix)


@given(st.integers(min_value=0, max_value=LAST_PREFIX - 999_000_000))
def test_synthetic_numbers_are_valid_test_range_numbers(start: int) -> None:
    generated = nhs_numbers(start)
    first = next(generated)
    second = next(generated, None)
    for number in (first, second):
        if number is None:
            continue
        assert is_valid(number)
        assert nhs_number.is_test_range(number)
        assert int(number[:9]) >= 999_000_000 + start
    # No valid prefix was skipped between the start and the first number generated.
    for prefix in range(999_000_000 + start, int(first[:9])):
        assert complete(str(prefix)) is None
    if second is not None:
        assert int(second[:9]) > int(first[:9])


@given(valid_numbers, st.integers(min_value=1, max_value=9))
def test_changing_the_check_digit_always_invalidates(number: str, shift: int) -> None:
    changed = number[:9] + str((int(number[9]) + shift) % 10)
    assert not is_valid(changed)
    with pytest.raises(NhsNumberError) as caught:
        normalise(changed)
    assert caught.value.code == "nhs-number-check-digit"


@given(valid_numbers)
def test_the_synthetic_defect_breaks_the_check_digit(number: str) -> None:
    assert not is_valid(break_check_digit(number))


@given(valid_numbers)
def test_normalise_undoes_formatting(number: str) -> None:
    assert normalise(formatted(number)) == number
    assert normalise(formatted(number).replace(" ", "-")) == number


@given(nine_digits, st.sampled_from("0123456789"))
def test_valid_exactly_when_the_last_digit_is_the_check_digit(prefix: str, last: str) -> None:
    expected = reference_check_digit(prefix)
    assert is_valid(prefix + last) == (expected is not None and int(last) == expected)


def test_the_synthetic_population_cannot_outgrow_the_test_range() -> None:
    from gateway.synth.population import MAX_PEOPLE, nhs_numbers, population

    assert sum(1 for _ in nhs_numbers()) == MAX_PEOPLE
    with pytest.raises(ValueError, match="test range"):
        next(population(MAX_PEOPLE + 1, seed=1))
