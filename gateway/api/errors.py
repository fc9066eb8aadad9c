"""What an exception becomes on the wire: the one mapping, used by the app's handlers and the hot path.

- ``ApiError``: its status, code, diagnostics and headers (Retry-After, WWW-Authenticate).
- ``DisclosureUnavailable``: 503 ``transient``: the decision could not be logged, nothing is released.
- A store error that ``is_unavailable`` (refused, down, out of connections, locked): 503
  ``transient`` with Retry-After, counted in ``concord_store_unavailable_total``.

Anything else is a fault: ``answer_for`` returns None and the caller lets it become a 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.api.metrics import Metrics
from gateway.api.outcome import ApiError, outcome_bytes
from gateway.disclosure import DisclosureUnavailable
from gateway.store.database import is_unavailable

RETRY_AFTER_SECONDS = "5"


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def answer_for(exc: BaseException, metrics: Metrics | None = None) -> ErrorAnswer | None:
    """The OperationOutcome answer for ``exc``; None when it is a fault (a 500)."""
    if isinstance(exc, ApiError):
        return ErrorAnswer(exc.status, outcome_bytes(exc.code, exc.diagnostics), exc.headers)
    if isinstance(exc, DisclosureUnavailable):
        body = outcome_bytes("transient", "the audit log cannot be written; nothing is released")
        return ErrorAnswer(503, body, {"Retry-After": RETRY_AFTER_SECONDS})
    if is_unavailable(exc):
        if metrics is not None:
            metrics.store_unavailable.inc()
        body = outcome_bytes("transient", "the store is unavailable; try again shortly")
        return ErrorAnswer(503, body, {"Retry-After": RETRY_AFTER_SECONDS})
    return None
