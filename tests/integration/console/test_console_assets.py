"""The vendored front end is served by the gateway itself, refers to no other host, and matches its macros."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from gateway.api.app import create_app
from gateway.console.charts import Bar, bar_chart
from gateway.console.routes import STATIC
from gateway.console.templating import FRONTEND_VERSION, nhs_number, when
from gateway.console.vendoring import localise_css
from gateway.settings import Settings

REMOTE = re.compile(r"(?:url\(|src=|href=|import\s*\(?)\s*['\"]?(?:https?:)?//", re.IGNORECASE)


@pytest.fixture
async def bare_client(tmp_path: Path) -> httpx.AsyncClient:
    """The real app (no services needed to serve static files or the OpenAPI description)."""
    app = create_app(Settings(data_dir=tmp_path / "data"))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_css_js_and_icons_are_served_under_console_static(bare_client: httpx.AsyncClient) -> None:
    async with bare_client as client:
        css = await client.get("/console/static/nhsuk-frontend.min.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        js = await client.get("/console/static/console.js")
        assert js.status_code == 200 and "initAll" in js.text
        icon = await client.get("/console/static/assets/images/nhsuk-icon-cross.svg")
        assert icon.status_code == 200
        assert (await client.get("/console/static/../templates/base.jinja")).status_code == 404
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert not [p for p in paths if p.startswith("/console")]  # pages stay out of the API's description


def test_no_vendored_file_refers_to_another_host() -> None:
    for path in (STATIC / "nhsuk-frontend.min.css", STATIC / "nhsuk-frontend.min.js", STATIC / "console.js"):
        assert not REMOTE.search(path.read_text(encoding="utf-8")), path.name
    assert "@font-face" not in (STATIC / "nhsuk-frontend.min.css").read_text(encoding="utf-8")
    for url in re.findall(r"url\(([^)]*)\)", (STATIC / "nhsuk-frontend.min.css").read_text(encoding="utf-8")):
        if not url.startswith("data:"):
            assert (STATIC / url.strip("'\"")).is_file(), url


def test_localising_the_css_drops_remote_fonts_and_roots_assets_here() -> None:
    css = (
        '@font-face{font-family:Frutiger W01;src:url(https://assets.nhs.uk/fonts/a.woff2) format("woff2")}'
        ".a{background:url(/assets/images/x.svg)}"
    )
    assert localise_css(css) == ".a{background:url(assets/images/x.svg)}"
    with pytest.raises(ValueError, match="remote"):
        localise_css(".b{background:url(https://example.org/x.png)}")


def test_the_vendored_release_matches_the_macros_and_is_recorded() -> None:
    assert version("nhsuk-frontend-jinja") == "0.10.2"  # the release for nhsuk-frontend 10.6.1
    assert FRONTEND_VERSION == "10.6.1"
    assert f'version="{FRONTEND_VERSION}"' in (STATIC / "nhsuk-frontend.min.js").read_text(encoding="utf-8")
    assert f"**{FRONTEND_VERSION}**" in (STATIC / "README.md").read_text(encoding="utf-8")
    assert "MIT License" in (STATIC / "LICENSE-nhsuk-frontend.txt").read_text(encoding="utf-8")


def test_people_read_numbers_and_times_the_usual_way() -> None:
    assert nhs_number("9990000018") == "999 000 0018"
    assert when("2026-05-01T12:00:00.000001Z") == "01 May 2026, 12:00:00 UTC"
    assert when("1944-07-30") == "30 Jul 1944" and when("") == "" and when("not a date") == "not a date"


def test_charts_are_labelled_images_with_escaped_text() -> None:
    svg = str(
        bar_chart("c", "Title <b>", "Says <what>", [Bar("gp: <x>", 50, "50%"), Bar("a" * 40, 0, "0")], 100)
    )
    assert svg.startswith('<svg class="app-chart"') and 'role="img"' in svg
    assert 'aria-labelledby="c-title c-desc"' in svg and '<title id="c-title">Title &lt;b&gt;</title>' in svg
    assert "gp: &lt;x&gt;" in svg and "<b>" not in svg and "style=" not in svg
    assert 'width="165.0"' in svg  # half of the bar area
    assert "a" * 29 + "…" in svg
