"""The client-assertion checks that need no store: JWK Sets, the header, the signature, the claims."""

from __future__ import annotations

from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.api import assertion
from gateway.api.assertion import MAX_LIFETIME, SKEW, JwksError
from gateway.api.oauth import Rejected

NOW = 1_800_000_000.0
AUD = "https://gateway.example/token"
CLIENT = "client-123"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def jwks(*keys: dict[str, Any]) -> str:
    return orjson.dumps({"keys": list(keys)}).decode()


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": CLIENT, "sub": CLIENT, "aud": AUD, "exp": NOW + 240, "jti": "j-1"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def raw(header: dict[str, Any], body: dict[str, Any], signature: str = "c2ln") -> str:
    """A token assembled by hand (PyJWT refuses to make some of the bad ones)."""
    encode = jwt.utils.base64url_encode
    return f"{encode(orjson.dumps(header)).decode()}.{encode(orjson.dumps(body)).decode()}.{signature}"


def check(**changes: Any) -> assertion.Checked:
    return assertion.check_claims(claims(**changes), client_id=CLIENT, audience=AUD, now=NOW)


# --- JWK Sets ---------------------------------------------------------------------------------


def test_public_rsa_and_ec_keys_parse_by_kid(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    r, e = (
        assertion.public_jwk(rsa_key.public_key(), "RS384"),
        assertion.public_jwk(ec_key.public_key(), "ES384"),
    )
    keys = assertion.parse_jwks(jwks(r, e))
    assert set(keys) == {r["kid"], e["kid"]}
    assert keys[r["kid"]].signs("RS384") and keys[e["kid"]].signs("ES384")
    assert not keys[r["kid"]].signs("RS512")  # the JWK pins RS384
    assert not keys[e["kid"]].signs("RS384")


def test_an_rsa_key_without_alg_signs_rs384_and_rs512_only(rsa_key: rsa.RSAPrivateKey) -> None:
    jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r"}
    key = assertion.parse_jwks(jwks(jwk))["r"]
    assert key.signs("RS384") and key.signs("RS512")
    assert not key.signs("ES384") and not key.signs("RS256")


def test_a_p256_key_registers_but_signs_no_accepted_alg() -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True), "kid": "p256"}
    key = assertion.parse_jwks(jwks(jwk))["p256"]
    assert not any(key.signs(alg) for alg in assertion.ALGORITHMS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kid": None}, "kid"),
        ({"kid": ""}, "kid"),
        ({"kty": "oct"}, "kty"),
        ({"kty": "OKP"}, "kty"),
        ({"crv": "P-521"}, "P-384"),
        ({"use": "enc"}, "signature"),
        ({"key_ops": ["encrypt"]}, "signature"),
        ({"alg": "RS256"}, "alg"),
        ({"alg": "RS384"}, "alg"),
        ({"x": "AAAA"}, "parse"),
    ],
)
def test_unusable_keys_are_refused(
    ec_key: ec.EllipticCurvePrivateKey, change: dict[str, Any], message: str
) -> None:
    jwk = {**assertion.public_jwk(ec_key.public_key(), "ES384"), **change}
    jwk = {k: v for k, v in jwk.items() if v is not None}
    with pytest.raises(JwksError, match=message):
        assertion.parse_jwks(jwks(jwk))


def test_private_keys_are_refused(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    for private in (
        jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key, as_dict=True),
        jwt.algorithms.ECAlgorithm.to_jwk(ec_key, as_dict=True),
        {"kty": "oct", "k": "c2VjcmV0"},
    ):
        with pytest.raises(JwksError, match="private key") as caught:
            assertion.parse_jwks(jwks({**private, "kid": "k"}))
        assert str(private.get("d", private.get("k"))) not in str(caught.value)


def test_short_rsa_keys_and_duplicate_kids_and_non_sets_are_refused(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(JwksError, match="2048"):
        assertion.parse_jwks(jwks(assertion.public_jwk(small, "RS384")))
    jwk = assertion.public_jwk(ec_key.public_key(), "ES384")
    with pytest.raises(JwksError, match="twice"):
        assertion.parse_jwks(jwks(jwk, jwk))
    for text in ("not json", "[]", '{"keys": []}', '{"keys": [1]}'):
        with pytest.raises(JwksError):
            assertion.parse_jwks(text)


def test_a_set_that_also_names_a_jwks_uri_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    # The registry tells a URL registration by jwks_uri: a set holding it would be ambiguous.
    jwk = assertion.public_jwk(ec_key.public_key(), "ES384")
    text = orjson.dumps({"keys": [jwk], "jwks_uri": "http://keys.example/jwks.json"}).decode()
    with pytest.raises(JwksError, match="jwks_uri"):
        assertion.parse_jwks(text)


def test_thumbprint_matches_rfc_7638() -> None:
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
            "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZ"
            "Hzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-k"
            "EgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert assertion.thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# --- the header and the signature -------------------------------------------------------------


def test_read_refuses_what_is_not_a_compact_jws() -> None:
    for token in (
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "e30.e30.e30 ",
        "!!.e30.e30",
        "W10.e30.",
        "e30.W10.",
        "x" * 20_000,
    ):
        with pytest.raises(Rejected) as caught:
            assertion.read(token)
        assert caught.value.error == "invalid_client"


@pytest.mark.parametrize(
    "alg", ["none", "None", "HS256", "HS384", "RS256", "ES256", "PS384", "EdDSA", None, 5]
)
def test_only_rs384_es384_rs512_are_accepted(alg: object) -> None:
    with pytest.raises(Rejected, match="alg"):
        assertion.read(raw({"alg": alg, "kid": "k"}, claims()))


def test_header_extensions_are_refused() -> None:
    for extra in ({"crit": ["exp"]}, {"b64": False}, {"b64": True}):
        with pytest.raises(Rejected, match="extension"):
            assertion.read(raw({"alg": "ES384", "kid": "k", **extra}, claims()))


@pytest.mark.parametrize(
    "header",
    [
        {"x5u": "https://attacker.example/cert.pem"},
        {"jwk": {"kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA"}},
        {"x5c": ["MIIB"]},
    ],
)
def test_a_header_naming_a_key_is_refused(ec_key: ec.EllipticCurvePrivateKey, header: dict[str, Any]) -> None:
    # Even signed with the registered key: keys come from the registration only.
    jwk = assertion.public_jwk(ec_key.public_key(), "ES384")
    token = jwt.encode(claims(), ec_key, algorithm="ES384", headers={"kid": jwk["kid"], **header})
    with pytest.raises(Rejected, match="names a key") as caught:
        assertion.read(token)
    assert caught.value.error == "invalid_client"


REGISTERED_URL = "https://keys.example.nhs.uk/jwks.json"


def test_a_jku_is_accepted_only_if_it_is_the_registered_jwks_url() -> None:
    # SMART Backend Services: a jku, when present, must match the client's registered JWKS URL.
    sent = assertion.read(raw({"alg": "ES384", "kid": "k", "jku": REGISTERED_URL}, claims()))
    assertion.check_jku(sent, REGISTERED_URL)
    assertion.check_jku(assertion.read(raw({"alg": "ES384", "kid": "k"}, claims())), REGISTERED_URL)
    assertion.check_jku(assertion.read(raw({"alg": "ES384", "kid": "k"}, claims())), None)
    for jku, registered in (
        ("https://attacker.example/jwks.json", REGISTERED_URL),
        (REGISTERED_URL + "?", REGISTERED_URL),
        (REGISTERED_URL.upper(), REGISTERED_URL),
        (REGISTERED_URL, None),  # the client registered a JWK Set, not a URL
    ):
        with pytest.raises(Rejected, match="jku") as caught:
            assertion.check_jku(
                assertion.read(raw({"alg": "ES384", "kid": "k", "jku": jku}, claims())), registered
            )
        assert caught.value.error == "invalid_client"
    for bad in (None, 5, [REGISTERED_URL], {"url": REGISTERED_URL}):
        with pytest.raises(Rejected, match="jku"):
            assertion.read(raw({"alg": "ES384", "kid": "k", "jku": bad}, claims()))


def test_verify_needs_the_named_key_of_the_right_type(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    r = {**jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r"}
    e = {**assertion.public_jwk(ec_key.public_key(), "ES384"), "kid": "e"}
    keys = assertion.parse_jwks(jwks(r, e))
    for alg in ("RS384", "RS512"):
        token = jwt.encode(claims(), rsa_key, algorithm=alg, headers={"kid": "r"})
        assert assertion.verify(token, assertion.read(token), keys)["iss"] == CLIENT
    wrong_kid = jwt.encode(claims(), rsa_key, algorithm="RS384", headers={"kid": "e"})
    with pytest.raises(Rejected, match="cannot verify"):
        assertion.verify(wrong_kid, assertion.read(wrong_kid), keys)
    for header in ({"alg": "RS384", "kid": "missing"}, {"alg": "RS384", "kid": 7}, {"alg": "RS384"}):
        token = raw(header, claims())
        with pytest.raises(Rejected, match="kid"):
            assertion.verify(token, assertion.read(token), keys)
    token = jwt.encode(claims(), rsa_key, algorithm="RS384", headers={"kid": "r"})
    head, _, sig = token.split(".")
    tampered = f"{head}.{jwt.utils.base64url_encode(orjson.dumps(claims(sub='x'))).decode()}.{sig}"
    with pytest.raises(Rejected, match="signature"):
        assertion.verify(tampered, assertion.read(tampered), keys)


def test_claimed_client_needs_iss_equal_to_sub() -> None:
    def unverified(**changes: Any) -> assertion.Unverified:
        return assertion.Unverified({"alg": "ES384"}, claims(**changes))

    assert assertion.claimed_client(unverified()) == CLIENT
    for changes in ({"iss": "other"}, {"sub": None}, {"iss": None, "sub": None}, {"iss": 1, "sub": 1}):
        with pytest.raises(Rejected, match="iss and sub"):
            assertion.claimed_client(unverified(**changes))
    # A control character never reaches the registry (PostgreSQL refuses a NUL in text).
    for bad in ("client\x00", "cli\nent", "\x7fclient"):
        with pytest.raises(Rejected, match="iss and sub"):
            assertion.claimed_client(unverified(iss=bad, sub=bad))


# --- the claims -------------------------------------------------------------------------------


def test_valid_claims_give_the_jti_and_expiry() -> None:
    checked = check(nbf=NOW - 10, iat=NOW - 10)
    assert checked == assertion.Checked(CLIENT, "j-1", NOW + 240)
    assert check(aud=["https://other.example", AUD]).jti == "j-1"


def test_expiry_is_strict_and_at_most_five_minutes_plus_skew_ahead() -> None:
    assert check(exp=NOW + 1).expires_at == NOW + 1
    assert check(exp=NOW + MAX_LIFETIME + SKEW).expires_at == NOW + 360
    for exp in (NOW, NOW - 1, NOW + MAX_LIFETIME + SKEW + 1, NOW + 3600):
        with pytest.raises(Rejected):
            check(exp=exp)
    for not_a_time in (None, "1800000100", True, [NOW + 10]):
        with pytest.raises(Rejected, match="exp"):
            check(exp=not_a_time)


@pytest.mark.parametrize("name", ["nbf", "iat"])
def test_nbf_and_iat_may_be_at_most_the_skew_ahead(name: str) -> None:
    assert check(**{name: NOW + SKEW}).jti == "j-1"
    with pytest.raises(Rejected, match=name):
        check(**{name: NOW + SKEW + 1})
    with pytest.raises(Rejected, match=name):
        check(**{name: "soon"})


def test_audience_must_be_the_token_url_exactly() -> None:
    for aud in (AUD + "/", AUD.upper(), "https://gateway.example", None, [], ["x"], {"aud": AUD}):
        with pytest.raises(Rejected, match="aud"):
            check(aud=aud)


def test_issuer_and_subject_must_be_the_client() -> None:
    for changes in ({"iss": "other"}, {"sub": "other"}, {"iss": None}):
        with pytest.raises(Rejected, match="iss and sub"):
            check(**changes)


def test_jti_is_required_and_bounded() -> None:
    for jti in (None, "", 42, "j" * 256):
        with pytest.raises(Rejected, match="jti"):
            check(jti=jti)
    assert check(jti="j" * 255).jti == "j" * 255


@pytest.mark.parametrize("jti", ["j\x00", "\x00", "a\tb", "a\nb", "a\x1bb", "a\x7fb", "a\x85b"])
def test_a_jti_with_a_control_character_is_refused(jti: str) -> None:
    # Before the replay store: PostgreSQL would refuse the NUL, which must not become a 503.
    with pytest.raises(Rejected, match="control characters") as caught:
        check(jti=jti)
    assert caught.value.error == "invalid_client"
    assert check(jti="ünïcode-jti é").jti == "ünïcode-jti é"


def test_every_claim_failure_is_invalid_client() -> None:
    with pytest.raises(Rejected) as caught:
        check(exp=NOW - 5)
    assert caught.value.error == "invalid_client"
    assert caught.value.description == "the assertion has expired"
