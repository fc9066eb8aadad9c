"""Helpers the IG pages share: paging parameters, sealed filters, the filter form, logging what is
shown, downloads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.api.routes.consent import log_read
from gateway.console.filters import F, Problems, as_dict, error_list, from_dict, is_empty
from gateway.console.web import Staff, check_csrf, form, redirect

MAX_PAGE: Final = 100_000


def page_number(request: Request) -> int:
    text = request.query_params.get("page", "1")
    return min(int(text), MAX_PAGE) if text.isdigit() and int(text) > 0 else 1


def seq_param(request: Request, name: str) -> int | None:
    text = request.query_params.get(name, "")
    return int(text) if text.isdigit() and len(text) <= 18 else None


def sealed_filter(
    caller: Staff, request: Request, purpose: str, cls: type[F]
) -> tuple[F, dict[str, Any], bool]:
    """The filter the URL's ``q`` holds (empty without one); the raw dict; whether ``q`` was unusable."""
    token = request.query_params.get("q")
    data = caller.unseal(purpose, token) if token else None
    return from_dict(cls, data), data or {}, bool(token) and data is None


async def log_shown(
    caller: Staff,
    action: str,
    nhs_number: str | None,
    shown: Sequence[dict[str, Any]] = (),
    what: dict[str, Any] | None = None,
) -> None:
    """Log that this member of staff is shown register or log data, before it is shown (as the API)."""
    await log_read(caller.services, caller.principal, caller.request_id, action, nhs_number, shown, what)


def download(chunks: AsyncIterator[bytes], media_type: str, filename: str) -> StreamingResponse:
    return StreamingResponse(
        chunks, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


async def filter_form(
    request: Request,
    caller: Staff,
    path: str,
    purpose: str,
    read: Callable[[dict[str, str]], tuple[F, Problems]],
    page: Callable[..., Response],
) -> Response:
    """A posted filter form: the page again with the problems (400), or a redirect to ``path`` with
    the filter sealed in ``q`` (no NHS number in a URL that lands in logs), or to ``path`` bare."""
    fields = await form(request)
    check_csrf(caller.session, fields)
    wanted, problems = read(fields)
    if problems:
        return page(request, wanted, 400, errors=error_list(problems), problems=problems)
    if is_empty(wanted):
        return redirect(path)
    return redirect(f"{path}?q=" + caller.seal(purpose, as_dict(wanted)))
