"""The log's integrity for the IG board: verify the whole chain and its signed checkpoints.

``GET  /console/integrity``   the last result this gateway process computed, if any
``POST /console/integrity``   verify now (``gateway.audit.verify.verify_store``) and show the result

The check uses the gateway's own public key, as ``GET /audit/verify`` does. The page shows that
key's fingerprint so the board can compare it with the key they hold, and the last checkpoint as
``--expect SEQ:HASH`` for the minutes: the independent check is ``concord audit verify
--public-key`` with the board's copy of the key (docs/audit-log.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from consent.chain import Verification, public_key_pem
from gateway.audit.verify import verify_store
from gateway.console.web import AUDIT_READ, AUDITORS, ConsoleRoute, check_csrf, form, render, staff

router = APIRouter(prefix="/console", route_class=ConsoleRoute)


@dataclass(frozen=True, slots=True)
class Checked:
    result: Verification
    seconds: float
    at: datetime
    by: str


@router.get("/integrity")
async def integrity_page(request: Request) -> Response:
    staff(request, AUDITORS, [AUDIT_READ])
    last: Checked | None = getattr(request.app.state, "console_verification", None)
    return _page(request, last)


@router.post("/integrity")
async def verify(request: Request) -> Response:
    caller = staff(request, AUDITORS, [AUDIT_READ])
    check_csrf(caller.session, await form(request))
    log = caller.services.log
    verified = await verify_store(caller.services.engine, {log.key_id: log.key.public_key()})
    checked = Checked(verified.result, verified.seconds, datetime.now(UTC), caller.principal.name)
    request.app.state.console_verification = checked
    return _page(request, checked)


def fingerprint(public_der: bytes) -> str:
    """SHA-256 of the raw public key, as colon-separated hex pairs."""
    digest = hashlib.sha256(public_der).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _page(request: Request, checked: Checked | None) -> Response:
    log = request.app.state.services.log
    public = log.key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return render(
        request,
        "integrity.jinja",
        title="Log integrity",
        checked=checked,
        key_id=log.key_id,
        fingerprint=fingerprint(raw),
        public_key_pem=public_key_pem(public),
    )
