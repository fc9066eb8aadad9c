"""The token endpoint's error answers (RFC 6749 §5.2): JSON ``{error, error_description}``. Pure.

Every answer of ``POST /token`` that is not a token is one of these, with ``Cache-Control: no-store``
and ``Pragma: no-cache``: the endpoint's own refusals (``Rejected``), and the refusals the request
layer makes before the endpoint runs (405 for another method, 413 for a body over the limit, 415
for a Content-Encoding other than gzip, 400 for a bad Content-Length), which elsewhere are
OperationOutcomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import orjson

TOKEN_PATH: Final = "/token"  # noqa: S105 - a path, not a secret
JSON: Final = "application/json"
NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class Rejected(Exception):
    """A token request refused: ``error`` is the RFC 6749 code, ``description`` safe to return and log.

    ``status`` is 400 but for a client that tried the ``Authorization`` header (401, with the
    ``WWW-Authenticate`` challenge of its scheme in ``headers``: RFC 6749 §5.2).
    """

    def __init__(
        self, error: str, description: str, *, status: int = 400, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})


def error_body(error: str, description: str) -> bytes:
    return orjson.dumps({"error": error, "error_description": description})


def answers_in_oauth(path: str) -> bool:
    """Whether a refusal of a request to ``path`` is an OAuth error rather than an OperationOutcome."""
    return path == TOKEN_PATH
