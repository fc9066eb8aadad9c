"""A ``POST /token`` request's form and parameters, checked before its assertion is looked at. Pure.

In the order ``TokenRequest.parse`` runs them (each a ``Rejected``, RFC 6749 §5.2):

- the body is a form, each parameter once; a parameter sent without a value counts as not sent
  (RFC 6749 §3.1);
- the client authenticates one way only (RFC 6749 §2.3): any two of an ``Authorization``
  header, ``client_secret`` and a client assertion is ``invalid_request``;
- ``grant_type`` is sent (``invalid_request``) and is ``client_credentials``
  (``unsupported_grant_type``);
- the client authenticates, and with a client assertion: with none at all, or with a
  ``client_secret`` alone, ``invalid_client`` (400); with the ``Authorization`` header alone
  (HTTP Basic, say), ``invalid_client`` with 401 and that scheme's challenge;
- ``client_assertion_type`` is the jwt-bearer URN (``invalid_request``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs

from gateway.api.assertion import ASSERTION_TYPE
from gateway.api.oauth import Rejected

MAX_FIELDS: Final = 20
#: The realm of the challenge answered to a client that tried the Authorization header.
REALM: Final = "concord token endpoint"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,31}")


def parse_form(raw: bytes) -> dict[str, str]:
    """The parameters of a form-encoded body, each sent once; those sent without a value left out."""
    try:
        fields = parse_qs(
            raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise Rejected("invalid_request", "the request body is not a well-formed form") from None
    if any(len(values) > 1 for values in fields.values()):
        raise Rejected("invalid_request", "a parameter is repeated")
    return {name: values[0] for name, values in fields.items() if values[0]}


@dataclass(frozen=True, slots=True)
class TokenRequest:
    #: The client assertion, not yet read.
    assertion: str
    #: The scopes asked for, as sent (``scopes.grant`` checks them).
    scope: str | None
    #: The ``client_id`` parameter, if sent: it must then be the assertion's ``iss``.
    client_id: str | None

    @classmethod
    def parse(cls, form: Mapping[str, str], authorization: str | None) -> TokenRequest:
        """The request in ``form`` (``parse_form``) with the ``Authorization`` header sent, if any."""
        scheme = (authorization or "").strip().partition(" ")[0]
        tried = [
            name
            for name, used in (
                ("the Authorization header", bool(scheme)),
                ("client_secret", "client_secret" in form),
                ("a client assertion", "client_assertion" in form or "client_assertion_type" in form),
            )
            if used
        ]
        if len(tried) > 1:
            raise Rejected(
                "invalid_request", f"the client authenticated more than one way ({' and '.join(tried)})"
            )
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise Rejected("invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            raise Rejected("unsupported_grant_type", "grant_type must be client_credentials")
        if scheme:
            raise _header_refused(scheme)
        if "client_secret" in form:
            raise Rejected(
                "invalid_client",
                "client_secret is not accepted: authenticate with a signed client_assertion "
                "(private_key_jwt)",
            )
        token = form.get("client_assertion")
        if token is None:
            raise Rejected(
                "invalid_client", "no client authentication: client_assertion (a signed JWT) is required"
            )
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise Rejected("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        return cls(token, form.get("scope"), form.get("client_id"))


def _header_refused(scheme: str) -> Rejected:
    """401 for a client that authenticated with the Authorization header: RFC 6749 §5.2 has the
    challenge name the scheme it used."""
    if not _SCHEME.fullmatch(scheme):
        return Rejected("invalid_request", "the Authorization header is malformed")
    challenge = f'{scheme} realm="{REALM}"'
    return Rejected(
        "invalid_client",
        "the token endpoint does not accept the Authorization header: send a signed client_assertion "
        "(private_key_jwt) in the body instead",
        status=401,
        headers={"WWW-Authenticate": challenge},
    )
