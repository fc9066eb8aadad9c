"""Client assertions (SMART Backend Services, RFC 7523): every check ``POST /token`` makes. No I/O.

Exceptions::

    Rejected(error, description)   the OAuth error (RFC 6749 §5.2) the token endpoint answers with
                                   (``gateway.api.oauth``)
    JwksError                      a JWK Set that cannot be registered (``parse_jwks``)

Checks, in the order the endpoint runs them (``read`` → ``claimed_client`` → [store: the client]
→ ``check_jku`` → [its keys, ``gateway.api.client_keys``] → ``verify`` → ``check_claims`` →
[replay store: the jti] → ``scopes.grant``):

- the assertion is a compact JWS whose header ``alg`` is RS384, ES384 or RS512 (``none``, HS*,
  RS256 and everything else are refused before any key is looked at); ``crit`` and ``b64`` are
  refused, and so are ``x5u``, ``jwk`` and ``x5c``: keys come only from the registration, never
  from the assertion;
- ``jku``, if present, is exactly the client's registered JWK Set URL (SMART: a ``jku`` not
  registered for the client fails verification); it is never fetched itself, and a client that
  registered a JWK Set (not a URL) may not send one;
- ``kid`` names a key of the client's registered JWK Set, of the type ``alg`` needs (RSA for RS*,
  EC P-384 for ES384), and the signature verifies with it (PyJWT, the one algorithm allowed);
- ``iss`` == ``sub`` == the client id; ``aud`` is exactly the token URL (or a list holding it);
- ``exp`` is after now (no leeway) and at most ``MAX_LIFETIME`` + ``SKEW`` seconds ahead; ``nbf``
  and ``iat``, if present, at most ``SKEW`` seconds ahead (a client clock running fast);
- ``jti`` is a non-empty string of at most 255 characters, none a control character (its one use
  is the replay store's, which could not hold a NUL).

Every failure of the assertion itself is ``invalid_client`` (RFC 7521 §4.2.1). Descriptions are
fixed text: never the assertion or anything read from it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeGuard

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.utils import base64url_decode, base64url_encode

from gateway.api.oauth import Rejected

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS: Final = ("RS384", "ES384", "RS512")
#: Longest an assertion may live: its ``exp`` at most this far ahead of now (SMART: five minutes).
MAX_LIFETIME: Final = 300
#: Allowance for a client clock running ahead of ours, on checks that a time is not in the future.
SKEW: Final = 60
MAX_ASSERTION_CHARS: Final = 16_384
MAX_JTI_CHARS: Final = 255
MIN_RSA_BITS: Final = 2048

_COMPACT = re.compile(r"[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
#: C0 and C1 control characters, DEL included: never in a client id or a jti.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Header members that name a key: concord takes keys from the registration only. (``jku`` may be
#: sent, if it is the registered JWK Set URL: ``check_jku``.)
_KEY_HEADERS: Final = ("x5u", "jwk", "x5c")
_PRIVATE_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_THUMBPRINT_MEMBERS: Final = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}
_CURVES: Final = ("P-256", "P-384")
_JWS = jwt.PyJWS()


class JwksError(ValueError):
    """A JWK Set that cannot be registered (the message says why; it never holds key material)."""


@dataclass(frozen=True, slots=True)
class Key:
    kid: str
    kty: str
    #: The EC curve (``P-256``/``P-384``); None for RSA.
    crv: str | None
    #: The ``alg`` the JWK pins, if it does.
    alg: str | None
    public: RSAPublicKey | EllipticCurvePublicKey

    def signs(self, alg: str) -> bool:
        """Whether an assertion signed with ``alg`` may be verified with this key."""
        if self.alg is not None and self.alg != alg:
            return False
        if alg in ("RS384", "RS512"):
            return self.kty == "RSA"
        return alg == "ES384" and self.kty == "EC" and self.crv == "P-384"


@functools.lru_cache(maxsize=512)
def parse_jwks(text: str) -> Mapping[str, Key]:
    """The public keys of a JWK Set, by ``kid``. Cached on the text: a changed set is parsed afresh.

    Refuses (``JwksError``) anything but public RSA (at least 2048 bits) and EC P-256/P-384 signing
    keys, each with a distinct ``kid``; a private key anywhere in the set is refused outright, and
    so is a ``jwks_uri`` member (how the registry marks a JWK Set URL: ``client_keys``).
    """
    try:
        document = json.loads(text)
    except ValueError:
        raise JwksError("the JWK Set is not JSON") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise JwksError('a JWK Set is a JSON object with a non-empty "keys" array')
    if "jwks_uri" in document:
        # The registry tells a JWK Set URL registration by this member: a set holding it too would
        # be ambiguous (and its URL never checked). Register one or the other.
        raise JwksError('a JWK Set may not hold a "jwks_uri" member: register the set or the URL')
    parsed: dict[str, Key] = {}
    for position, jwk in enumerate(keys, 1):
        key = _parse_key(jwk, position)
        if key.kid in parsed:
            raise JwksError(f"key {position}: kid {key.kid!r} is used twice")
        parsed[key.kid] = key
    return MappingProxyType(parsed)


def _parse_key(jwk: object, position: int) -> Key:
    where = f"key {position}"
    if not isinstance(jwk, dict):
        raise JwksError(f"{where} is not a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 255:
        raise JwksError(f'{where} has no "kid" (every key needs one: assertions name their key by it)')
    where = f"key {kid!r}"
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        raise JwksError(f"{where} is a private key: register only the public key, keep the private one")
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if kty not in ("RSA", "EC"):
        raise JwksError(f"{where}: kty must be RSA or EC")
    if kty == "EC" and crv not in _CURVES:
        raise JwksError(f"{where}: an EC key must be on P-384 (or P-256)")
    if jwk.get("use", "sig") != "sig" or "verify" not in jwk.get("key_ops", ["verify"]):
        raise JwksError(f"{where} is not a signature-verification key (use/key_ops)")
    if alg is not None and alg not in ALGORITHMS:
        raise JwksError(f"{where}: alg must be one of {', '.join(ALGORITHMS)}")
    try:
        public = (RSAAlgorithm if kty == "RSA" else ECAlgorithm).from_jwk(jwk)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise JwksError(f"{where} does not parse as a {kty} public key") from None
    if not isinstance(public, RSAPublicKey | EllipticCurvePublicKey):
        raise JwksError(f"{where} is not a public key")
    if isinstance(public, RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        raise JwksError(f"{where}: an RSA key must have at least {MIN_RSA_BITS} bits")
    key = Key(kid, kty, crv if kty == "EC" else None, alg, public)
    if alg is not None and not key.signs(alg):
        raise JwksError(f"{where}: alg {alg} does not fit the key (RS384/RS512 need RSA, ES384 EC P-384)")
    return key


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public RSA or EC JWK (base64url)."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64url_encode(hashlib.sha256(canonical).digest()).decode()


def public_jwk(public: RSAPublicKey | EllipticCurvePublicKey, alg: str) -> dict[str, Any]:
    """The public JWK of ``public`` for signing with ``alg``, with ``kid`` its RFC 7638 thumbprint."""
    if isinstance(public, RSAPublicKey):
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": thumbprint(jwk), "use": "sig", "alg": alg}


@dataclass(frozen=True, slots=True)
class Unverified:
    """An assertion's header and claims as sent, not yet verified: use only to find the client."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]


def read(token: str) -> Unverified:
    """Split a compact JWS and check its header: well-formed, an accepted ``alg``, no extensions."""
    if len(token) > MAX_ASSERTION_CHARS or not _COMPACT.fullmatch(token):
        raise Rejected("invalid_client", "client_assertion is not a compact JWT")
    head, body, _ = token.split(".")
    header, claims = _json_object(head), _json_object(body)
    if header is None or claims is None:
        raise Rejected("invalid_client", "client_assertion is not a compact JWT")
    if header.get("alg") not in ALGORITHMS:
        raise Rejected("invalid_client", f"the assertion's alg must be one of {', '.join(ALGORITHMS)}")
    if "crit" in header or "b64" in header:
        raise Rejected("invalid_client", "the assertion's header uses an extension this server refuses")
    if any(name in header for name in _KEY_HEADERS):
        raise Rejected(
            "invalid_client",
            "the assertion's header names a key (x5u, jwk or x5c): keys come only from the "
            "client's registration; name the registered key by kid alone",
        )
    if "jku" in header and not isinstance(header["jku"], str):
        raise Rejected("invalid_client", _JKU_REFUSED)
    return Unverified(header, claims)


_JKU_REFUSED: Final = (
    "the assertion's jku is not the client's registered JWK Set URL: send the registered URL "
    "exactly, or no jku"
)


def check_jku(assertion: Unverified, registered_url: str | None) -> None:
    """A ``jku`` header, if sent, must be exactly the client's registered JWK Set URL (SMART).

    ``registered_url`` is None for a client that registered its JWK Set itself: any ``jku`` is then
    refused. The keys still come from the registration: the ``jku`` is never fetched.
    """
    if "jku" in assertion.header and (registered_url is None or assertion.header["jku"] != registered_url):
        raise Rejected("invalid_client", _JKU_REFUSED)


def _json_object(segment: str) -> dict[str, Any] | None:
    try:
        return _object(base64url_decode(segment))
    except (ValueError, TypeError):  # binascii.Error is a ValueError
        return None


def _object(payload: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def claimed_client(assertion: Unverified) -> str:
    """The client id the assertion claims to come from (``iss``, which must equal ``sub``)."""
    iss, sub = assertion.claims.get("iss"), assertion.claims.get("sub")
    if not isinstance(iss, str) or not iss or iss != sub or len(iss) > 64 or _CONTROL.search(iss):
        raise Rejected("invalid_client", "iss and sub must both be the registered client_id")
    return iss


def verify(token: str, assertion: Unverified, keys: Mapping[str, Key]) -> dict[str, Any]:
    """The claims, once the signature verifies with the registered key ``kid`` names."""
    alg, kid = assertion.header["alg"], assertion.header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise Rejected("invalid_client", "kid does not name a key registered for this client")
    if not key.signs(alg):
        raise Rejected("invalid_client", "the key kid names cannot verify the assertion's alg")
    try:
        payload = _JWS.decode(
            token, key.public, algorithms=[alg], options={"enforce_minimum_key_length": True}
        )
    except jwt.PyJWTError:
        raise Rejected("invalid_client", "the assertion's signature does not verify") from None
    claims = _object(payload)
    if claims is None:  # pragma: no cover - read() parsed the same bytes
        raise Rejected("invalid_client", "client_assertion is not a compact JWT")
    return claims


@dataclass(frozen=True, slots=True)
class Checked:
    client_id: str
    jti: str
    #: The assertion's ``exp`` (epoch seconds): the replay store keeps its jti until then.
    expires_at: float


def check_claims(claims: Mapping[str, Any], *, client_id: str, audience: str, now: float) -> Checked:
    """The time, audience, issuer and id checks on verified claims, at ``now`` (epoch seconds)."""
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise Rejected("invalid_client", "iss and sub must both be the registered client_id")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise Rejected("invalid_client", "aud must be this server's token URL")
    exp = claims.get("exp")
    if not _is_time(exp):
        raise Rejected("invalid_client", "exp is required (a NumericDate)")
    if exp <= now:
        raise Rejected("invalid_client", "the assertion has expired")
    if exp > now + MAX_LIFETIME + SKEW:
        raise Rejected("invalid_client", f"exp may be at most {MAX_LIFETIME} seconds in the future")
    for name in ("nbf", "iat"):
        if name in claims:
            value = claims[name]
            if not _is_time(value):
                raise Rejected("invalid_client", f"{name} must be a NumericDate")
            if value > now + SKEW:
                raise Rejected("invalid_client", f"{name} is in the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS or _CONTROL.search(jti):
        raise Rejected(
            "invalid_client",
            f"jti is required (a string of at most {MAX_JTI_CHARS} characters, no control characters)",
        )
    return Checked(client_id, jti, float(exp))


def _is_time(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
