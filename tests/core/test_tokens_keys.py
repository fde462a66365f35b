"""Key sets selected by kid, JWK Sets, and the audience/issuer/nbf policy (core.tokens)."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from snaptun.core.tokens import (
    DEFAULT_AUDIENCE,
    ClaimsPolicy,
    JwtTokenValidator,
    KeySet,
    SnapTokenClaims,
    TrustedKey,
    generate_signing_key,
    jwks_document,
    key_thumbprint,
    mint_token,
    parse_jwks,
)
from snaptun.errors import (
    InvalidSignature,
    MalformedToken,
    NotYetValid,
    TokenExpired,
    UnknownKeyId,
    WrongAudience,
    WrongIssuer,
)

PSSID = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
EXP = 1_767_225_600
NOW = EXP - 1000.0
K1 = generate_signing_key()
K2 = generate_signing_key()
K3 = generate_signing_key()
CLAIMS = SnapTokenClaims(PSSID, EXP)


def raw_token(
    header: dict[str, object], payload: dict[str, object], key: Ed25519PrivateKey = K1
) -> str:
    """Signed over exactly these members (PyJWT's encoder refuses ill-typed kid or iss)."""

    def b64(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = base64.urlsafe_b64encode(key.sign(signing_input.encode())).rstrip(b"=").decode()
    return f"{signing_input}.{signature}"


def two_keys() -> KeySet:
    return KeySet([TrustedKey(K1.public_key(), "k1"), TrustedKey(K2.public_key(), "k2")])


# --- kid selection ---------------------------------------------------------------------


def test_kid_selects_its_key_and_rotation_keeps_both() -> None:
    validator = JwtTokenValidator(two_keys())
    assert validator.validate(NOW, mint_token(K1, CLAIMS, kid="k1")) == CLAIMS
    assert validator.validate(NOW, mint_token(K2, CLAIMS, kid="k2")) == CLAIMS
    # No kid: every key is tried.
    assert validator.validate(NOW, mint_token(K2, CLAIMS)) == CLAIMS


def test_unknown_kid_is_named() -> None:
    validator = JwtTokenValidator(two_keys())
    with pytest.raises(UnknownKeyId, match='unknown key id "k3"') as info:
        validator.validate(NOW, mint_token(K3, CLAIMS, kid="k3"))
    assert info.value.status == 401
    # A known kid whose key did not sign it is a bad signature, not an unknown kid.
    with pytest.raises(InvalidSignature) as bad:
        validator.validate(NOW, mint_token(K2, CLAIMS, kid="k1"))
    assert type(bad.value) is InvalidSignature
    # Without kid and no key verifying: a bad signature.
    with pytest.raises(InvalidSignature) as none:
        validator.validate(NOW, mint_token(K3, CLAIMS))
    assert type(none.value) is InvalidSignature


def test_kid_not_in_set_falls_back_to_keys_without_kid() -> None:
    keys = KeySet([K1.public_key(), TrustedKey(K2.public_key(), "k2")])
    validator = JwtTokenValidator(keys)
    assert validator.validate(NOW, mint_token(K1, CLAIMS, kid="anything")) == CLAIMS
    with pytest.raises(UnknownKeyId):
        validator.validate(NOW, mint_token(K3, CLAIMS, kid="k3"))


def test_swapping_the_key_set_rotates() -> None:
    validator = JwtTokenValidator(KeySet([TrustedKey(K1.public_key(), "k1")]))
    token2 = mint_token(K2, CLAIMS, kid="k2")
    with pytest.raises(UnknownKeyId):
        validator.validate(NOW, token2)
    validator.key_set = two_keys()
    assert validator.validate(NOW, token2) == CLAIMS
    with pytest.raises(TypeError):
        validator.key_set = [K1.public_key()]  # type: ignore[assignment]


def test_kid_of_wrong_type_is_malformed() -> None:
    token = raw_token({"alg": "EdDSA", "kid": 7}, CLAIMS.to_claims())
    with pytest.raises(MalformedToken):
        JwtTokenValidator(two_keys()).validate(NOW, token)


def test_key_set_invariants() -> None:
    with pytest.raises(ValueError, match="at least one"):
        KeySet([])
    with pytest.raises(ValueError, match="twice"):
        KeySet([TrustedKey(K1.public_key(), "a"), TrustedKey(K2.public_key(), "a")])
    with pytest.raises(ValueError, match="non-empty"):
        TrustedKey(K1.public_key(), "")
    assert two_keys().kids == ("k1", "k2")
    assert len(two_keys()) == 2


# --- JWK Sets --------------------------------------------------------------------------


def test_jwks_round_trip_and_thumbprint() -> None:
    keys = [TrustedKey(K1.public_key(), "k1"), TrustedKey(K2.public_key(), None)]
    parsed = parse_jwks(json.dumps(jwks_document(keys)))
    assert parsed.kids == ("k1",)
    raw = [item.key.public_bytes_raw() for item in parsed.keys]
    assert raw == [K1.public_key().public_bytes_raw(), K2.public_key().public_bytes_raw()]
    # RFC 7638 thumbprint, computed independently from the JWK members.
    x = base64.urlsafe_b64encode(K1.public_key().public_bytes_raw()).rstrip(b"=").decode()
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest())
    assert key_thumbprint(K1.public_key()) == expected.rstrip(b"=").decode()


FIXED = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # stable test ids under xdist


def _jwk(**members: object) -> str:
    x = base64.urlsafe_b64encode(FIXED.public_key().public_bytes_raw()).rstrip(b"=").decode()
    return json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, **members}]})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "not a JSON object"),
        ('{"keys": []}', "non-empty"),
        ('{"keys": [1]}', "key 0: not a JSON object"),
        (_jwk(kty="RSA"), "not an Ed25519 key"),
        (_jwk(crv="X25519"), "not an Ed25519 key"),
        (_jwk(d="AAAA"), "private key"),
        (_jwk(use="enc"), "use"),
        (_jwk(alg="RS256"), "alg"),
        (_jwk(x="AAAA"), "32 bytes"),
        (_jwk(x="not base64!"), "base64url"),
        (_jwk(kid=5), "kid"),
        ('{"keys": [], "keys": []}', "duplicate"),
        ("{", "Expecting"),
    ],
)
def test_bad_jwks_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_jwks(text)


def test_jwks_duplicate_kid_is_refused() -> None:
    keys = [TrustedKey(K1.public_key(), "a"), TrustedKey(K2.public_key(), "b")]
    document = jwks_document(keys)
    document["keys"][1]["kid"] = "a"  # type: ignore[index]
    with pytest.raises(ValueError, match="'a' appears twice"):
        parse_jwks(json.dumps(document))


# --- audience, issuer, not-before ------------------------------------------------------


def token(**extra: object) -> str:
    return raw_token({"alg": "EdDSA"}, {**CLAIMS.to_claims(), **extra})


def validator(**policy: object) -> JwtTokenValidator[SnapTokenClaims]:
    return JwtTokenValidator([K1.public_key()], policy=ClaimsPolicy(**policy))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({}, None),
        ({"aud": DEFAULT_AUDIENCE}, None),
        ({"aud": ["other", DEFAULT_AUDIENCE]}, None),
        ({"aud": "other"}, WrongAudience),
        ({"aud": []}, WrongAudience),
        ({"aud": 5}, MalformedToken),
        ({"iss": "anyone"}, None),
    ],
)
def test_without_configured_audience_only_foreign_audiences_are_refused(
    extra: dict[str, object], error: type[Exception] | None
) -> None:
    if error is None:
        assert validator().validate(NOW, token(**extra)) == CLAIMS
    else:
        with pytest.raises(error) as info:
            validator().validate(NOW, token(**extra))
        assert info.value.status == 400  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        ({"aud": "gw1", "iss": "ssr"}, None, ""),
        ({"aud": ["x", "gw1"], "iss": "ssr"}, None, ""),
        ({"iss": "ssr"}, WrongAudience, "no audience"),
        ({"aud": "snap", "iss": "ssr"}, WrongAudience, "'snap', not 'gw1'"),
        ({"aud": "gw1"}, WrongIssuer, "no issuer"),
        ({"aud": "gw1", "iss": "evil"}, WrongIssuer, "'evil', not 'ssr'"),
        ({"aud": "gw1", "iss": 5}, MalformedToken, "iss"),
    ],
)
def test_configured_audience_and_issuer_must_match(
    extra: dict[str, object], error: type[Exception] | None, message: str
) -> None:
    strict = validator(audience="gw1", issuer="ssr")
    if error is None:
        assert strict.validate(NOW, token(**extra)) == CLAIMS
    else:
        with pytest.raises(error, match=message):
            strict.validate(NOW, token(**extra))


def test_nbf_is_honoured_with_leeway() -> None:
    nbf = int(NOW) + 100
    ten = validator(leeway=10.0)
    with pytest.raises(NotYetValid, match="not valid before") as info:
        ten.validate(NOW, token(nbf=nbf))
    assert info.value.status == 401
    assert ten.validate(nbf - 10, token(nbf=nbf)) == CLAIMS  # within the leeway
    with pytest.raises(NotYetValid):
        ten.validate(nbf - 10.5, token(nbf=nbf))
    assert validator().validate(NOW, token(nbf=int(NOW) + 60)) == CLAIMS  # default leeway 60 s
    with pytest.raises(ValueError, match="leeway"):
        ClaimsPolicy(leeway=-1)


@pytest.mark.parametrize("nbf", ["soon", -5, 1.5, True, 2**64])
def test_ill_typed_nbf_is_malformed(nbf: object) -> None:
    with pytest.raises(MalformedToken, match="nbf"):
        validator().validate(NOW, token(nbf=nbf))


def test_expired_says_when() -> None:
    with pytest.raises(TokenExpired, match=r"token expired at 2026-01-01T00:00:00Z \(1767225600\)"):
        validator().validate(EXP + 1, token())


# --- upstream's v1 tokens --------------------------------------------------------------


def v1_pssid(value: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(b"\0" + value.bytes).rstrip(b"=").decode()


def test_upstream_v1_token_validates() -> None:
    assert v1_pssid(PSSID) == "ABI-RWfomxLTpFZCZhQXQAA"  # upstream's own test vector
    payload = {
        "ver": 1,
        "iss": "ssr",
        "aud": "snap",
        "exp": EXP,
        "nbf": EXP - 3600,
        "iat": EXP - 3600,
        "jti": str(uuid.uuid4()),
        "pssid": v1_pssid(PSSID),
        "aa_acc_subject_id": "x",
    }
    signed = jwt.encode(payload, K1, algorithm="EdDSA")
    claims = validator(issuer="ssr").validate(NOW, signed)
    assert claims == CLAIMS  # the identity is the subscription UUID, as for v0 tokens


@pytest.mark.parametrize(
    "pssid",
    [
        base64.urlsafe_b64encode(b"\1" + PSSID.bytes).rstrip(b"=").decode(),  # version 1 byte
        v1_pssid(PSSID)[:-1] + "B",  # non-canonical trailing bits
        v1_pssid(PSSID) + "A",
    ],
)
def test_bad_v1_pssid_is_malformed(pssid: str) -> None:
    with pytest.raises(MalformedToken, match="pssid"):
        SnapTokenClaims.from_claims({"pssid": pssid, "exp": EXP})


@pytest.mark.parametrize("ver", [0, 2, "1", True])
def test_unknown_version_is_malformed(ver: object) -> None:
    with pytest.raises(MalformedToken, match="version"):
        validator().validate(NOW, token(ver=ver))
