"""Data quality for the IG board: counts only (no person is named, so nothing is logged).

``GET /console/quality``   open quarantine by source and reason, conflicting demographics, the
                           share of each source's records with a verified NHS number, unknown codes
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.console import queries
from gateway.console.charts import Bar, bar_chart
from gateway.console.web import AUDIT_READ, AUDITORS, ConsoleRoute, render, staff
from gateway.store.quality import quality_report

router = APIRouter(prefix="/console", route_class=ConsoleRoute)


@router.get("/quality")
async def quality_page(request: Request) -> Response:
    caller = staff(request, AUDITORS, [AUDIT_READ])
    async with caller.services.engine.connect() as conn:
        report = await quality_report(conn)
        verified = await queries.verified_by_source(conn)
    quarantined = sum(q.records for q in report.quarantine_open)
    conflicted = sum(c.people for c in report.conflicts)
    charts = {
        "verified": bar_chart(
            "chart-verified",
            "Records with a verified NHS number, by source",
            "; ".join(f"{s}: {_percent(v, n)} of {n} records" for s, v, n in verified) or "No records yet.",
            [Bar(s, 100 * v / n if n else 0, f"{_percent(v, n)} ({v} of {n})") for s, v, n in verified],
            maximum=100,
        ),
        "quarantine": bar_chart(
            "chart-quarantine",
            "Open quarantine, by source and reason",
            f"{quarantined} records held in quarantine.",
            [Bar(f"{q.source}: {q.reason}", q.records, str(q.records)) for q in report.quarantine_open],
        ),
        "conflicts": bar_chart(
            "chart-conflicts",
            "People with conflicting demographics, by element and sources",
            f"{conflicted} conflicts across people.",
            [Bar(f"{c.element}: {' / '.join(c.sources)}", c.people, str(c.people)) for c in report.conflicts],
        ),
    }
    return render(
        request,
        "quality.jinja",
        title="Data quality",
        report=report,
        verified=[(s, v, n, _percent(v, n)) for s, v, n in verified],
        quarantined=quarantined,
        conflicted=conflicted,
        charts=charts,
    )


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"
