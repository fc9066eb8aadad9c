"""The shared care view for clinicians and care staff (role ``provider``).

``GET  /console/record``        the search form
``POST /console/record``        an NHS number in; a redirect to the view, the person sealed in the URL
``GET  /console/record/view``   the person's shared view, through ``services.disclosure.person``

Every view is one logged disclosure (action ``view``, purpose direct care, this client as the
requester), exactly as the API's reads: decide, log, then release; the loader runs only after a
permit and reads the stored Patient and the active CarePlans. A person the caller may not see
(an opt-out) gets the same page as an NHS number concord does not hold.
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from consent.model import Purpose
from gateway.console.careview import is_active_plan, shared_view
from gateway.console.filters import error_list, read_nhs_number
from gateway.console.web import (
    PROVIDERS,
    VIEW_SCOPES,
    ConsoleRoute,
    check_csrf,
    form,
    redirect,
    render,
    staff,
)
from gateway.disclosure import Ask, Loaded
from gateway.views import load_person

router = APIRouter(prefix="/console", route_class=ConsoleRoute)

ACTION: Final = "view"
SEAL: Final = "record"


@router.get("/record")
async def search_page(request: Request) -> Response:
    staff(request, PROVIDERS, VIEW_SCOPES)
    return render(request, "record_search.jinja", title="Find a shared care record")


@router.post("/record")
async def search(request: Request) -> Response:
    caller = staff(request, PROVIDERS, VIEW_SCOPES)
    fields = await form(request)
    check_csrf(caller.session, fields)
    problems: dict[str, str] = {}
    number = read_nhs_number(fields.get("nhs_number", ""), "nhs-number", problems)
    if not number and not problems:
        problems["nhs-number"] = "Enter an NHS number"
    if problems:
        return render(
            request,
            "record_search.jinja",
            400,
            title="Find a shared care record",
            errors=error_list(problems),
            problems=problems,
        )
    return redirect("/console/record/view?p=" + caller.seal(SEAL, {"n": number}))


@router.get("/record/view")
async def view(request: Request) -> Response:
    caller = staff(request, PROVIDERS, VIEW_SCOPES)
    sealed = caller.unseal(SEAL, request.query_params.get("p"))
    if sealed is None or not isinstance(sealed.get("n"), str):
        return render(
            request,
            "record_search.jinja",
            title="Find a shared care record",
            notice="That link has expired or is not yours. Search for the person again.",
        )
    number: str = sealed["n"]
    services = caller.services

    async def load(nhs_number: str) -> Loaded:
        stored = await load_person(services.engine, nhs_number)
        return [r for r in stored if r[0] == "Patient" or is_active_plan(r[0], r[2])]

    ask = Ask(caller.principal.requester, Purpose.DIRECT_CARE.value, ACTION, caller.request_id)
    disclosed = await services.disclosure.person(ask, number, load)
    shown = shared_view(disclosed.resources) if disclosed.permitted else None
    if shown is None:
        return render(request, "no_record.jinja", title="No shared record", nhs_number=number)
    return render(request, "record.jinja", title=shown.person.name, view=shown)
