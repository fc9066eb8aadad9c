"""The NHS number: the one identifier the partners agreed to share on.

Ten digits; the tenth is a Modulus 11 check digit over the first nine (weights
10 down to 2). A remainder that gives a check digit of 10 means the number was
never issued. Numbers arrive with spaces and dashes ("943 476 5919",
"943-476-5919"); they are normalised before the check.

Nothing here raises with the number in the message: errors name what is wrong,
never the value, so they are safe to log.
"""

from __future__ import annotations

import re
from typing import Final

SYSTEM: Final = "https://fhir.nhs.uk/Id/nhs-number"
_SEPARATORS = re.compile(r"[\s\-]")
_WEIGHTS: Final = (10, 9, 8, 7, 6, 5, 4, 3, 2)


class NhsNumberError(ValueError):
    """A value that is not a valid NHS number. ``code`` is a stable quarantine reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_digit(first_nine: str) -> int | None:
    """The Modulus 11 check digit for nine digits, or None when no valid number can end them."""
    total = sum(int(d) * w for d, w in zip(first_nine, _WEIGHTS, strict=True))
    digit = 11 - total % 11
    if digit == 11:
        return 0
    if digit == 10:
        return None
    return digit


def normalise(raw: str | None) -> str:
    """Return the ten-digit NHS number in ``raw``, or raise NhsNumberError.

    Codes: ``nhs-number-missing`` (empty), ``nhs-number-format`` (not ten digits
    after removing spaces and dashes), ``nhs-number-check-digit`` (Modulus 11 fails).
    """
    if raw is None or not raw.strip():
        raise NhsNumberError("nhs-number-missing", "no NHS number")
    digits = raw if len(raw) == 10 else _SEPARATORS.sub("", raw)  # most arrive bare: no regex
    if len(digits) != 10 or not digits.isascii() or not digits.isdigit():
        raise NhsNumberError("nhs-number-format", "NHS number is not ten digits")
    if check_digit(digits[:9]) != int(digits[9]):
        raise NhsNumberError("nhs-number-check-digit", "NHS number fails the Modulus 11 check")
    return digits


def is_valid(raw: str | None) -> bool:
    try:
        normalise(raw)
    except NhsNumberError:
        return False
    return True


def complete(first_nine: str) -> str | None:
    """Append the check digit to nine digits; None if that prefix has no valid number."""
    digit = check_digit(first_nine)
    return None if digit is None else first_nine + str(digit)


def is_test_range(nhs_number: str) -> bool:
    """True for the 999 range that NHS England reserves for test and synthetic data."""
    return nhs_number.startswith("999")


def formatted(nhs_number: str) -> str:
    """The 3-3-4 display form used on screens and letters."""
    return f"{nhs_number[:3]} {nhs_number[3:6]} {nhs_number[6:]}"
