"""The console in a real browser: Debian's headless Chromium driven by Playwright, against uvicorn.

The IG board signs in, filters the register and the access log, reads one person's access
history, verifies the log (and sees a tampered log fail loudly), reads publication and data
quality, and downloads an export; a clinician finds a shared care record, and an opted-out
person looks exactly like one concord has never seen. Every page is checked with axe-core
(vendored, ``tests/assets/axe.min.js``): no serious or critical violation. The console's CSP
stays on (axe is added as an init script, which the CSP does not govern), and any CSP
violation the browser reports fails the test.

Screenshots for docs/console.md: ``CONCORD_TEST_SCREENSHOTS=docs/screenshots pytest tests/e2e/test_console_browser.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from integration.console.console_seed import ALICE, OPTED_OUT, UNKNOWN, seed
from reachable import IN_CI
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.api.app import create_app
from gateway.api.principal import Principal, Role
from gateway.api.tokens import AccessTokens
from gateway.bootstrap import bootstrap
from gateway.settings import Settings
from gateway.store.schema import audit_log

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("CONCORD_TEST_CHROMIUM", "/usr/bin/chromium"))
AXE = Path(__file__).resolve().parents[1] / "assets" / "axe.min.js"
SHOTS = os.environ.get("CONCORD_TEST_SCREENSHOTS")
ID_KEY = "0123456789abcdef0123456789abcdef"
IG = Principal(
    "ig-board",
    "Borough IG board",
    "15E",
    Role.IG_AUDITOR,
    frozenset({"system/AuditEvent.read", "system/Consent.read"}),
)
CLINICIAN = Principal("epr-a", "Community EPR", "RAT", Role.PROVIDER, frozenset({"system/*.read"}))

if not CHROMIUM.exists():  # skip locally, fail in CI (.ci/run installs it)
    if IN_CI:
        pytest.fail(f"{CHROMIUM} is missing (CI=true: .ci/run installs Debian's chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@dataclass
class Served:
    base: str
    settings: Settings
    tokens: AccessTokens

    def token(self, who: Principal) -> str:
        return self.tokens.issue(who)[0]


@dataclass
class Tab:
    """One browser page, with the CSP violations and console errors it reported."""

    page: Any
    base: str
    problems: list[str] = field(default_factory=list)

    def go(self, path: str) -> None:
        self.page.goto(self.base + path)

    def check(self, shot: str | None = None) -> None:
        """No CSP violation or script error so far, and no serious or critical axe violation here."""
        assert not self.problems, self.problems
        found = self.page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
        bad = [
            f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
            for v in found["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert not bad, f"{self.page.url}: {bad}"
        if SHOTS and shot:
            self.page.screenshot(path=str(Path(SHOTS) / f"{shot}.png"), full_page=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("console")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(data_dir=root / "data", id_key=ID_KEY, public_url=f"http://127.0.0.1:{port}")

    async def prepare() -> None:
        services = await bootstrap(settings)
        try:
            await seed(services)
        finally:
            await services.close()

    _in_thread(prepare())  # a browser fixture may already hold this thread's loop
    config = uvicorn.Config(
        create_app(settings), log_level="warning", lifespan="on", ws="none", http="h11", loop="asyncio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    tokens = AccessTokens(settings.resolved_token_secret(), settings.public_url, settings.token_seconds)
    try:
        yield Served(settings.public_url, settings, tokens)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def tab(browser: Any, served: Served) -> Iterator[Tab]:
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        locale="en-GB",
        timezone_id="Europe/London",
        accept_downloads=True,
    )
    context.add_init_script(path=str(AXE))
    page = context.new_page()
    opened = Tab(page, served.base)
    page.on("console", lambda m: opened.problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: opened.problems.append(str(e)))
    try:
        yield opened
    finally:
        context.close()


def sign_in(tab: Tab, served: Served, who: Principal) -> None:
    tab.go("/console/sign-in")
    tab.page.get_by_label("Access token").fill(served.token(who))
    tab.page.get_by_role("button", name="Sign in").click()
    tab.page.wait_for_url(re.compile(r"/console/(consent|record)$"))


def test_ig_board_reads_the_register_the_log_and_the_hie(tab: Tab, served: Served) -> None:
    page = tab.page
    tab.go("/console/sign-in")
    tab.check("sign-in")
    sign_in(tab, served, IG)

    # The register: everything, then national opt-outs only.
    assert page.get_by_role("heading", name="Consent register").is_visible()
    assert page.locator("tbody tr").count() == 2
    page.get_by_label("Kind of opt-out").select_option("national")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"/console/consent\?q="))
    rows = page.locator("tbody tr")
    assert rows.count() == 1 and "withdrawn" in rows.first.inner_text()
    assert "telephone" in rows.first.inner_text()
    tab.check("consent-register")

    # The access log: denied decisions only (a clinician's view of the opted-out person).
    tab.go("/console/access")
    page.get_by_label("Decision").select_option("deny")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"/console/access\?q="))
    assert ALICE not in page.url and re.search(r"\d{10}", page.url) is None
    tab.check("access-log")

    # Download what the filters show.
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("seq,at,kind,action,decision")
    assert all(",deny," in line for line in lines[1:])

    # One person's whole history.
    tab.go("/console/access/person")
    page.get_by_label("NHS number").fill("999 000 0018")
    page.get_by_role("button", name="Show access history").click()
    page.wait_for_url(re.compile(r"/console/access/person\?q="))
    assert "999 000 0018" in page.locator("main").inner_text()
    tab.check("subject-access")

    tab.go("/console/publication")
    assert "CarePlan.status: unknown code" in page.locator("main").inner_text()
    tab.check("publication")

    tab.go("/console/quality")
    assert page.locator("svg.app-chart[role=img]").count() == 3
    tab.check("data-quality")

    tab.go("/console/record")  # a clinician's page: refused, and the refusal is a proper page too
    assert page.get_by_role("heading", name="You cannot see this page").is_visible()
    assert [p for p in tab.problems if "403" not in p] == []  # the browser reports the status itself
    tab.problems.clear()
    tab.check()


def test_ig_board_verifies_the_log_and_sees_tampering_loudly(tab: Tab, served: Served) -> None:
    page = tab.page
    sign_in(tab, served, IG)
    tab.go("/console/integrity")
    page.get_by_role("button", name="Verify the log now").click()
    sync_api.expect(page.get_by_text("The log is intact")).to_be_visible()
    tab.check("log-integrity")

    original = _in_thread(_tamper(served.settings, "view"))
    try:
        page.get_by_role("button", name="Verify the log again").click()
        failure = page.locator("#integrity-failure")
        sync_api.expect(failure).to_be_visible()
        assert "The log failed verification" in failure.inner_text()
        assert "altered" in failure.inner_text()
        tab.check("log-integrity-failed")
    finally:
        _in_thread(_tamper(served.settings, original))


def _in_thread(work: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to the end on its own loop (Playwright's sync API holds this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


async def _tamper(settings: Settings, action: str) -> str:
    """Rewrite the first entry's action in the database (as an attacker with write access could)."""
    engine = create_async_engine(settings.resolved_database_url())
    try:
        async with engine.begin() as conn:
            before = (await conn.execute(audit_log.select().where(audit_log.c.seq == 1))).mappings().one()
            await conn.execute(update(audit_log).where(audit_log.c.seq == 1).values(action=action))
            return str(before["action"])
    finally:
        await engine.dispose()


def test_clinician_sees_a_shared_view_and_an_opted_out_person_looks_unknown(tab: Tab, served: Served) -> None:
    page = tab.page
    sign_in(tab, served, CLINICIAN)
    tab.check("record-search")

    page.get_by_label("NHS number").fill(ALICE)
    page.get_by_role("button", name="Show shared record").click()
    page.wait_for_url(re.compile(r"/console/record/view\?p="))
    assert ALICE not in page.url
    main = page.locator("main").inner_text()
    assert "Amelia Davies" in page.get_by_role("heading", level=1).inner_text()
    assert "Diabetes plan" in main and "Proactive care plan" not in main  # active plans only
    assert "Integrated care and support plan" in main
    assert "Isla Khan" in main and "Dorothy Harris" in main  # lead professional, care navigator
    assert "Stay out of hospital this winter" in main
    tab.check("shared-care-record")

    seen = {}
    for number in (OPTED_OUT, UNKNOWN):
        tab.go("/console/record")
        page.get_by_label("NHS number").fill(number)
        page.get_by_role("button", name="Show shared record").click()
        page.wait_for_url(re.compile(r"/console/record/view\?p="))
        seen[number] = (
            page.locator("main").inner_html().replace(number[:3] + " " + number[3:6] + " " + number[6:], "N")
        )
        if number == OPTED_OUT:
            tab.check("no-shared-record")
    assert seen[OPTED_OUT] == seen[UNKNOWN]
    assert "No shared record" in seen[UNKNOWN]


def test_assets_are_served_locally(tab: Tab) -> None:
    requested: list[str] = []
    tab.page.on("request", lambda r: requested.append(r.url))
    tab.go("/console/sign-in")
    tab.page.wait_for_load_state("networkidle")
    assert requested and all(url.startswith(tab.base) for url in requested), requested
    assert tab.page.evaluate("document.body.classList.contains('nhsuk-frontend-supported')")


def test_the_accessibility_check_finds_what_it_should(tab: Tab) -> None:
    """The axe check is not vacuous: a page with an unlabelled image and input fails it."""
    tab.page.set_content('<html lang="en"><title>t</title><main><img src="x.png"><input></main></html>')
    with pytest.raises(AssertionError, match="image-alt"):
        tab.check()


def test_chromium_is_debians(browser: Any) -> None:
    assert shutil.which(str(CHROMIUM)) and browser.version
