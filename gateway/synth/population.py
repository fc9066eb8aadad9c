"""A synthetic borough population, deterministic from a seed.

Every person has a valid NHS number in the 999 test range and GP demographics;
``in_acute``, ``in_community`` and ``in_social_care`` say which other sources
know them (most people are GP-only). Source writers in this package turn the
same people into each source's own format, with defects mixed in at a known rate.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

from mappings.nhs_number import complete

FAMILY_NAMES = (
    "Smith",
    "Jones",
    "Williams",
    "Taylor",
    "Brown",
    "Davies",
    "Evans",
    "Wilson",
    "Thomas",
    "Johnson",
    "Roberts",
    "Robinson",
    "Thompson",
    "Wright",
    "Walker",
    "White",
    "Edwards",
    "Hughes",
    "Green",
    "Hall",
    "Lewis",
    "Harris",
    "Clarke",
    "Patel",
    "Jackson",
    "Wood",
    "Turner",
    "Martin",
    "Cooper",
    "Hill",
    "Ward",
    "Morris",
    "Moore",
    "Clark",
    "Lee",
    "King",
    "Baker",
    "Harrison",
    "Morgan",
    "Allen",
    "Begum",
    "Khan",
    "Ahmed",
    "Ali",
    "Okafor",
    "Adeyemi",
    "Nowak",
    "Kowalski",
    "Murphy",
    "O'Brien",
)
GIVEN_FEMALE = (
    "Olivia",
    "Amelia",
    "Isla",
    "Ava",
    "Mia",
    "Grace",
    "Sophia",
    "Lily",
    "Freya",
    "Emily",
    "Margaret",
    "Patricia",
    "Susan",
    "Fatima",
    "Aisha",
    "Maria",
    "Joan",
    "Dorothy",
    "Ngozi",
    "Zofia",
)
GIVEN_MALE = (
    "Oliver",
    "George",
    "Arthur",
    "Noah",
    "Muhammad",
    "Leo",
    "Harry",
    "Oscar",
    "Jack",
    "Charlie",
    "David",
    "John",
    "Peter",
    "Michael",
    "Ahmed",
    "Tariq",
    "Chidi",
    "Piotr",
    "Sean",
    "Brian",
)
STREETS = (
    "High Street",
    "Station Road",
    "Church Lane",
    "Victoria Road",
    "Green Lane",
    "Manor Road",
    "Park Avenue",
    "Queens Road",
    "Mill Lane",
    "Kings Road",
    "Albert Road",
    "The Crescent",
)
TOWNS = ("Barking", "Dagenham", "Ilford", "Romford", "Hornchurch", "Upminster")
POSTCODE_AREAS = ("IG11", "RM8", "RM9", "RM10", "IG1", "RM6", "RM1", "RM12")
#: GP practices in the synthetic borough (ODS-style codes, not real practices).
PRACTICES = ("Y90001", "Y90002", "Y90003", "Y90004", "Y90005", "Y90006", "Y90007", "Y90008")
#: The borough's other organisations (ODS-style codes).
ACUTE_TRUST = "R9Z01"
COMMUNITY_PROVIDER = "R9Z02"
COUNCIL = "Z9A01"


@dataclass(frozen=True, slots=True)
class Person:
    index: int
    nhs_number: str
    gp_patient_id: str
    practice_ods: str
    sex: str  # "M" | "F"
    title: str
    family_name: str
    given_names: str
    birth_date: date
    address_line_1: str
    town: str
    postcode: str
    phone: str
    in_acute: bool
    in_community: bool
    in_social_care: bool
    long_term_conditions: tuple[str, ...]
    frail: bool

    @property
    def age(self) -> int:
        return (date(2026, 11, 1) - self.birth_date).days // 365


def nhs_numbers(start: int = 0) -> Iterator[str]:
    """Valid NHS numbers in the 999 test range, in order (nine-digit prefixes whose check digit exists)."""
    prefix = 999_000_000 + start
    while prefix <= 999_999_999:
        number = complete(str(prefix))
        if number is not None:
            yield number
        prefix += 1


_UNIT_LETTERS = "ABDEFGHJLNPQRSTUWXY"
LTC_CODES = ("LTC-DM", "LTC-COPD", "LTC-HF", "LTC-AST", "LTC-HTN", "DEM", "MH")


#: Valid NHS numbers in the 999 test range (prefixes 999000000-999999999 whose check digit exists).
MAX_PEOPLE = 909_091


def population(people: int, seed: int) -> Iterator[Person]:
    """``people`` synthetic people; the same seed gives the same people.

    At most MAX_PEOPLE: synthetic people only ever get test-range NHS numbers.
    """
    if not 0 <= people <= MAX_PEOPLE:
        raise ValueError(f"between 0 and {MAX_PEOPLE} synthetic people (the 999 test range holds no more)")
    rng = random.Random(seed)
    numbers = nhs_numbers()
    for index in range(people):
        sex = rng.choice("MF")
        age_days = int(rng.triangular(0, 100 * 365, 40 * 365))
        birth = date(2026, 11, 1) - timedelta(days=age_days)
        older = age_days > 65 * 365
        ltc_chance = 0.55 if older else 0.15
        ltcs = tuple(sorted(rng.sample(LTC_CODES, k=rng.randint(1, 3)))) if rng.random() < ltc_chance else ()
        frail = older and rng.random() < 0.35
        in_acute = rng.random() < (0.30 if older or ltcs else 0.10)
        in_community = rng.random() < (0.40 if older and (ltcs or frail) else 0.06)
        in_social_care = rng.random() < (0.25 if frail else 0.03)
        area = rng.choice(POSTCODE_AREAS)
        given = rng.choice(GIVEN_MALE if sex == "M" else GIVEN_FEMALE)
        if rng.random() < 0.3:
            given += " " + rng.choice(GIVEN_MALE if sex == "M" else GIVEN_FEMALE)
        yield Person(
            index=index,
            nhs_number=next(numbers),
            gp_patient_id=f"GP{index + 100000:07d}",
            practice_ods=rng.choice(PRACTICES),
            sex=sex,
            title=("Mr" if sex == "M" else rng.choice(("Mrs", "Ms", "Miss"))) if age_days > 18 * 365 else "",
            family_name=rng.choice(FAMILY_NAMES),
            given_names=given,
            birth_date=birth,
            address_line_1=f"{rng.randint(1, 240)} {rng.choice(STREETS)}",
            town=rng.choice(TOWNS),
            postcode=f"{area} {rng.randint(1, 9)}{rng.choice(_UNIT_LETTERS)}{rng.choice(_UNIT_LETTERS)}",
            phone=f"0208 {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
            in_acute=in_acute,
            in_community=in_community,
            in_social_care=in_social_care,
            long_term_conditions=ltcs,
            frail=frail,
        )
