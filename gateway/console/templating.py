"""The console's Jinja environment: our templates first, then the NHS.UK frontend's macros.

``nhsuk-frontend-jinja`` (PyPI) is the NHS.UK design system's Nunjucks templates ported to Jinja;
its release must match the compiled CSS and JS vendored under ``static/`` (README there).
Autoescaping is on for every template; ``ChainableUndefined`` is what the ported macros expect.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import cache
from typing import Final

from jinja2 import ChainableUndefined, ChoiceLoader, Environment, PackageLoader, select_autoescape

#: The npm ``nhsuk-frontend`` release vendored under ``static/`` (nhsuk-frontend-jinja 0.10.2).
FRONTEND_VERSION: Final = "10.6.1"
STATIC_URL: Final = "/console/static"


def nhs_number(value: object) -> str:
    """``9990000018`` as people read it: ``999 000 0018``."""
    text = "" if value is None else str(value)
    return f"{text[:3]} {text[3:6]} {text[6:]}" if len(text) == 10 and text.isdigit() else text


def when(value: object) -> str:
    """A log time, ISO date-time or datetime as ``24 Nov 2026, 04:08:59 UTC``; a date as ``24 Nov 2026``."""
    if value is None or value == "":
        return ""
    moment: datetime | date
    if isinstance(value, datetime | date):
        moment = value
    else:
        text = str(value).replace("Z", "+00:00")
        try:
            moment = datetime.fromisoformat(text) if "T" in text else date.fromisoformat(text)
        except ValueError:
            return str(value)
    if isinstance(moment, datetime):
        utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        return utc.strftime("%d %b %Y, %H:%M:%S UTC")
    return moment.strftime("%d %b %Y")


@cache
def environment() -> Environment:
    env = Environment(
        loader=ChoiceLoader(
            [PackageLoader("gateway.console", "templates"), PackageLoader("nhsuk_frontend_jinja")]
        ),
        undefined=ChainableUndefined,
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["nhs_number"] = nhs_number
    env.filters["when"] = when
    env.globals["static_url"] = STATIC_URL
    env.globals["frontend_version"] = FRONTEND_VERSION
    return env
