"""Tests of snaptun.core.tokens: claims, JWT and static validators, minting, key files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import given
from hypothesis import strategies as st

from snaptun.core.addressing import IsdAs
from snaptun.core.allocator import AddressManager
from snaptun.core.control import ControlRequest, RequestKind
from snaptun.core.messages import decode_session_renewal_response, encode_session_renewal_response
from snaptun.core.state import TunnelStateMachine
from snaptun.core.tokens import (
    MAX_UINT64,
    JwtTokenValidator,
    SnapTokenClaims,
    StaticTokenValidator,
    Token,
    TokenValidator,
    generate_signing_key,
    mint_token,
)
from snaptun.errors import (
    InvalidSignature,
    MalformedToken,
    TokenExpired,
    TokenValidationError,
)

PSSID = uuid.UUID("11111111-2222-4333-8444-555555555555")
EXP = 1_767_225_600
NOW = EXP - 100.0


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return generate_signing_key()


@pytest.fixture(scope="module")
def validator(key: Ed25519PrivateKey) -> JwtTokenValidator[SnapTokenClaims]:
    return JwtTokenValidator([key.public_key()])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, object], payload: dict[str, object], sig: bytes = b"") -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(payload).encode())
    return f"{head}.{body}.{_b64(sig)}"


def _public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- claims ----------------------------------------------------------------------------


def test_claims_round_trip() -> None:
    claims = SnapTokenClaims(PSSID, EXP)
    assert claims.id() == str(PSSID)
    assert claims.exp_time() == float(EXP)
    assert SnapTokenClaims.required_claims() == ("pssid", "exp")
    assert claims.to_claims() == {"pssid": str(PSSID), "exp": EXP}
    assert SnapTokenClaims.from_claims(claims.to_claims()) == claims


@pytest.mark.parametrize(
    "payload",
    [
        {"exp": EXP},
        {"pssid": str(PSSID)},
        {"pssid": 12, "exp": EXP},
        {"pssid": "not-a-uuid", "exp": EXP},
        {"pssid": str(PSSID), "exp": "1767225600"},
        {"pssid": str(PSSID), "exp": 1.5},
        {"pssid": str(PSSID), "exp": True},
        {"pssid": str(PSSID), "exp": -1},
        {"pssid": None, "exp": EXP},
    ],
)
def test_claims_refuse_missing_or_ill_typed(payload: Mapping[str, object]) -> None:
    with pytest.raises(MalformedToken):
        SnapTokenClaims.from_claims(payload)


# --- JwtTokenValidator -------------------------------------------------------------------


def test_valid_token(key: Ed25519PrivateKey, validator: JwtTokenValidator[SnapTokenClaims]) -> None:
    token = mint_token(key, SnapTokenClaims(PSSID, EXP))
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    claims = validator.validate(NOW, token)
    assert claims == SnapTokenClaims(PSSID, EXP)
    assert claims.id() == str(PSSID)


def test_extra_claims_are_ignored(
    key: Ed25519PrivateKey, validator: JwtTokenValidator[SnapTokenClaims]
) -> None:
    # iat in the future would fail PyJWT's wall-clock checks; ours ignores it (nbf: see
    # test_tokens_keys).
    payload = {"pssid": str(PSSID), "exp": EXP, "data_plane_id": 0, "iat": EXP, "jti": "j"}
    token = jwt.encode(payload, key, algorithm="EdDSA")
    assert validator.validate(NOW, token) == SnapTokenClaims(PSSID, EXP)


def test_expiry_uses_given_now_not_wall_clock(
    key: Ed25519PrivateKey, validator: JwtTokenValidator[SnapTokenClaims]
) -> None:
    # exp = 1000 is far in the wall-clock past, yet valid at now = 999.
    token = mint_token(key, SnapTokenClaims(PSSID, 1000))
    assert validator.validate(999.0, token).exp == 1000


def test_exactly_at_exp_is_valid(
    key: Ed25519PrivateKey, validator: JwtTokenValidator[SnapTokenClaims]
) -> None:
    token = mint_token(key, SnapTokenClaims(PSSID, EXP))
    assert validator.validate(float(EXP), token).exp == EXP


@pytest.mark.parametrize("now", [EXP + 0.001, EXP + 1.0, EXP + 1e6])
def test_expired(
    key: Ed25519PrivateKey, validator: JwtTokenValidator[SnapTokenClaims], now: float
) -> None:
    token = mint_token(key, SnapTokenClaims(PSSID, EXP))
    with pytest.raises(TokenExpired) as info:
        validator.validate(now, token)
    assert info.value.status == 401


def test_other_key_is_invalid_signature(validator: JwtTokenValidator[SnapTokenClaims]) -> None:
    token = mint_token(generate_signing_key(), SnapTokenClaims(PSSID, EXP))
    with pytest.raises(InvalidSignature) as info:
        validator.validate(NOW, token)
    assert info.value.status == 401


def test_tampered_payload_is_invalid_signature(
    key: Ed25519PrivateKey, validator: JwtTokenValidator[SnapTokenClaims]
) -> None:
    token = mint_token(key, SnapTokenClaims(PSSID, EXP))
    head, _, sig = token.split(".")
    body = _b64(json.dumps({"pssid": str(uuid.uuid4()), "exp": EXP}).encode())
    with pytest.raises(InvalidSignature):
        validator.validate(NOW, f"{head}.{body}.{sig}")


def test_alg_none_is_malformed(validator: JwtTokenValidator[SnapTokenClaims]) -> None:
    token = _unsigned({"alg": "none", "typ": "JWT"}, {"pssid": str(PSSID), "exp": EXP})
    with pytest.raises(MalformedToken) as info:
        validator.validate(NOW, token)
    assert info.value.status == 400


def test_hs256_with_public_key_as_secret_is_malformed(
    key: Ed25519PrivateKey, validator: JwtTokenValidator[SnapTokenClaims]
) -> None:
    # The key-confusion attack: HMAC "signed" with the server's public key bytes.
    # PyJWT refuses PEM keys as HMAC secrets when encoding, so sign by hand.
    payload = {"pssid": str(PSSID), "exp": EXP}
    for secret in (
        _public_pem(key.public_key()),
        key.public_key().public_bytes_raw(),
    ):
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(payload).encode())
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        with pytest.raises(MalformedToken):
            validator.validate(NOW, f"{head}.{body}.{_b64(mac)}")


def test_hs256_is_malformed(validator: JwtTokenValidator[SnapTokenClaims]) -> None:
    token = jwt.encode({"pssid": str(PSSID), "exp": EXP}, "s" * 32, algorithm="HS256")
    with pytest.raises(MalformedToken):
        validator.validate(NOW, token)


def test_rs256_is_malformed(validator: JwtTokenValidator[SnapTokenClaims]) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"pssid": str(PSSID), "exp": EXP}, rsa_key, algorithm="RS256")
    with pytest.raises(MalformedToken):
        validator.validate(NOW, token)


def test_es256_is_malformed(validator: JwtTokenValidator[SnapTokenClaims]) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"pssid": str(PSSID), "exp": EXP}, ec_key, algorithm="ES256")
    with pytest.raises(MalformedToken):
        validator.validate(NOW, token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "Bearer x",
        "\u00e9t\u00e9.\u00e9t\u00e9.\u00e9t\u00e9",
        _b64(b"{}") + "." + _b64(b"{}") + ".",
        _b64(b"not json") + "." + _b64(b"{}") + "." + _b64(b"x"),
    ],
)
def test_garbage_is_malformed(validator: JwtTokenValidator[SnapTokenClaims], token: str) -> None:
    with pytest.raises(MalformedToken):
        validator.validate(NOW, token)


@pytest.mark.parametrize(
    "payload",
    [
        {"exp": EXP},
        {"pssid": str(PSSID)},
        {"pssid": "not-a-uuid", "exp": EXP},
        {"pssid": str(PSSID), "exp": "soon"},
        {"pssid": str(PSSID), "exp": EXP, "aud": "someone-else"},
    ],
    ids=["missing-pssid", "missing-exp", "non-uuid-pssid", "string-exp", "audience"],
)
def test_bad_claims_are_malformed(
    key: Ed25519PrivateKey,
    validator: JwtTokenValidator[SnapTokenClaims],
    payload: dict[str, object],
) -> None:
    token = jwt.encode(payload, key, algorithm="EdDSA")
    with pytest.raises(MalformedToken):
        validator.validate(NOW, token)


def test_payload_not_an_object_is_malformed(
    key: Ed25519PrivateKey, validator: JwtTokenValidator[SnapTokenClaims]
) -> None:
    token = jwt.api_jws.encode(b"[1, 2]", key, algorithm="EdDSA")
    with pytest.raises(MalformedToken):
        validator.validate(NOW, token)


def test_key_rotation() -> None:
    old, new = generate_signing_key(), generate_signing_key()
    both = JwtTokenValidator([old.public_key(), new.public_key()])
    assert len(both.public_keys) == 2
    for signer in (old, new):
        claims = both.validate(NOW, mint_token(signer, SnapTokenClaims(PSSID, EXP)))
        assert claims.pssid == PSSID
    only_new = JwtTokenValidator([new.public_key()])
    with pytest.raises(InvalidSignature):
        only_new.validate(NOW, mint_token(old, SnapTokenClaims(PSSID, EXP)))
    # A malformed token is malformed whatever the keys, and an expired one expired.
    with pytest.raises(MalformedToken):
        both.validate(NOW, "garbage")
    with pytest.raises(TokenExpired):
        both.validate(EXP + 1.0, mint_token(new, SnapTokenClaims(PSSID, EXP)))


def test_validator_needs_keys() -> None:
    with pytest.raises(ValueError, match="at least one"):
        JwtTokenValidator([])
    with pytest.raises(TypeError):
        JwtTokenValidator([b"not a key"])  # type: ignore[list-item]


@dataclass(frozen=True)
class _OtherClaims:
    sub: str
    until: int

    def id(self) -> str:
        return self.sub

    def exp_time(self) -> float:
        return float(self.until)

    @classmethod
    def required_claims(cls) -> tuple[str, ...]:
        return ("sub", "until")

    @classmethod
    def from_claims(cls, claims: Mapping[str, object]) -> _OtherClaims:
        sub, until = claims.get("sub"), claims.get("until")
        if not isinstance(sub, str) or not isinstance(until, int):
            raise MalformedToken("bad claims")
        return cls(sub, until)


def test_custom_claims_type(key: Ed25519PrivateKey) -> None:
    validator = JwtTokenValidator([key.public_key()], _OtherClaims)
    token = jwt.encode({"sub": "alice", "until": EXP}, key, algorithm="EdDSA")
    claims: _OtherClaims = validator.validate(NOW, token)
    assert claims == _OtherClaims("alice", EXP)
    with pytest.raises(TokenExpired):
        validator.validate(EXP + 1.0, token)
    # Its required claims, not SNAP's, are enforced.
    with pytest.raises(MalformedToken):
        validator.validate(NOW, mint_token(key, SnapTokenClaims(PSSID, EXP)))


def test_protocols_are_satisfied(key: Ed25519PrivateKey) -> None:
    # Checked by mypy: both validators are TokenValidators of SNAP claims.
    validators: list[TokenValidator[Token]] = [
        JwtTokenValidator([key.public_key()]),
        StaticTokenValidator("x", 60),
    ]
    assert len(validators) == 2


# --- StaticTokenValidator ------------------------------------------------------------


def test_static_validator_accepts_only_its_token() -> None:
    validator = StaticTokenValidator("ANAPAYA", 60)
    claims = validator.validate(1000.7, "ANAPAYA")
    assert claims.exp == 1060
    assert claims.pssid == validator.identity
    # The identity is stable for the same accepted string (holds survive restarts).
    assert StaticTokenValidator("ANAPAYA", 5).identity == validator.identity
    assert StaticTokenValidator("other", 5).identity != validator.identity
    for wrong in ("", "anapaya", "ANAPAYA ", "ANAPAYAX", "\udcff"):
        with pytest.raises(InvalidSignature) as info:
            validator.validate(1000.0, wrong)
        assert info.value.status == 401


def test_static_validator_identity_and_validity() -> None:
    identity = uuid.uuid4()
    validator = StaticTokenValidator("t", 2.5, identity=identity)
    claims = validator.validate(10.2, "t")
    assert claims == SnapTokenClaims(identity, 13)
    with pytest.raises(ValueError, match="validity"):
        StaticTokenValidator("t", -1)
    with pytest.raises(ValueError, match="validity"):
        StaticTokenValidator("t", float("nan"))


def test_errors_share_a_base() -> None:
    for cls in (InvalidSignature, MalformedToken, TokenExpired):
        assert issubclass(cls, TokenValidationError)


# --- one token, one meaning: JSON read as the reference's serde_json reads it ------------

SIGNER = generate_signing_key()
STRICT = JwtTokenValidator([SIGNER.public_key()])
HEADER = b'{"alg":"EdDSA","typ":"JWT"}'


def signed_raw(payload: bytes, header: bytes = HEADER, signer: Ed25519PrivateKey = SIGNER) -> str:
    """A token over exactly these header and payload bytes, validly signed by ``signer``."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


def claims_json(extra: bytes = b"", exp: bytes = str(EXP).encode()) -> bytes:
    return b'{"pssid":"%s","exp":%s%s}' % (str(PSSID).encode(), exp, extra)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xef\xbb\xbf" + claims_json(), id="utf8-bom"),
        pytest.param(claims_json().decode().encode("utf-16-le"), id="utf16"),
        pytest.param(claims_json().decode().encode("utf-32"), id="utf32"),
        pytest.param(claims_json(b',"x":"\xff"'), id="invalid-utf8"),
        pytest.param(claims_json(b',"x":NaN'), id="nan"),
        pytest.param(claims_json(b',"x":Infinity'), id="infinity"),
        pytest.param(claims_json(b',"x":[-Infinity]'), id="minus-infinity"),
        pytest.param(claims_json(b',"x":1e400'), id="float-beyond-double"),
        pytest.param(claims_json(b',"x":-%s' % (b"9" * 400)), id="int-beyond-double"),
        pytest.param(claims_json(b',"x":%s' % (b"1" * 5000)), id="int-of-5000-digits"),
        pytest.param(claims_json(b',"x":"\\ud800"'), id="lone-high-surrogate"),
        pytest.param(claims_json(b',"x":["\\udc00"]'), id="lone-low-surrogate-in-array"),
        pytest.param(claims_json(b',"\\ud800":1'), id="lone-surrogate-key"),
        pytest.param(claims_json(b',"x":' + b"[" * 127 + b"]" * 127), id="128-levels"),
        pytest.param(claims_json(b',"x":' + b"[" * 5000 + b"]" * 5000), id="5001-levels"),
        pytest.param(claims_json(b',"x":{"a":1,"a":1}'), id="nested-duplicate"),
        pytest.param(claims_json(b',"exp":%d' % EXP), id="duplicate-exp-same-value"),
        pytest.param(claims_json(exp=b"-0"), id="exp-minus-zero"),
        pytest.param(claims_json(exp=b"0.0"), id="exp-zero-point-zero"),
        pytest.param(claims_json(exp=b"1767225600e0"), id="exp-with-exponent"),
        pytest.param(claims_json(b',"aud":""'), id="empty-audience"),
        pytest.param(claims_json(b',"aud":[]'), id="no-audiences"),
        pytest.param(b"[" + claims_json() + b"]", id="array"),
        pytest.param(b'"' + claims_json().replace(b'"', b'\\"') + b'"', id="string"),
    ],
)
def test_json_the_reference_would_refuse_is_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedToken) as info:
        STRICT.validate(NOW, signed_raw(payload))
    assert info.value.status == 400


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(claims_json(b',"x":' + b"[" * 126 + b"]" * 126), id="127-levels"),
        pytest.param(claims_json(b',"x":"\\ud83d\\ude00"'), id="surrogate-pair"),
        pytest.param(claims_json(b',"x":1e308,"y":-0.0,"z":-%s' % (b"9" * 300)), id="big-doubles"),
        pytest.param(b' \t\r\n{ "exp" : %d , "pssid" : "%s" }\n' % (EXP, str(PSSID).encode())),
        pytest.param(claims_json(exp=b"0"), id="exp-zero"),
    ],
)
def test_json_the_reference_would_take_is_accepted(payload: bytes) -> None:
    claims = STRICT.validate(0.0, signed_raw(payload))
    assert claims.pssid == PSSID


@pytest.mark.parametrize(
    "extra",
    [
        b',"iat":99999999999',  # in the future: not checked
        b',"iat":-1.5',
        b',"iat":%s' % (b"9" * 40),
        b',"iat":null,"iss":5,"sub":5,"jti":["x"]',  # iss: only checked when configured
        b',"aud":null,"nbf":null',
    ],
)
def test_claims_the_reference_does_not_check_are_ignored(extra: bytes) -> None:
    assert STRICT.validate(NOW, signed_raw(claims_json(extra))) == SnapTokenClaims(PSSID, EXP)


def test_payload_is_not_read_before_the_signature_verifies() -> None:
    # Garbage, duplicates and non-JSON under a foreign signature: 401, as the reference
    # says; under the trusted signature the same payloads are 400.
    other = generate_signing_key()
    for payload in (b"not json", claims_json(b',"exp":1'), claims_json(b',"x":NaN'), b"[]"):
        with pytest.raises(InvalidSignature):
            STRICT.validate(NOW, signed_raw(payload, signer=other))
        with pytest.raises(MalformedToken):
            STRICT.validate(NOW, signed_raw(payload))
    # The header is read first, whoever signed: a bad header is 400 either way.
    with pytest.raises(MalformedToken, match="duplicate"):
        STRICT.validate(NOW, signed_raw(claims_json(), b'{"alg":"EdDSA","alg":"none"}', other))


def test_required_claims_of_a_custom_type_must_not_be_null() -> None:
    validator = JwtTokenValidator([SIGNER.public_key()], _OtherClaims)
    with pytest.raises(MalformedToken, match="until"):
        validator.validate(NOW, signed_raw(b'{"sub":"alice","until":null}'))
    assert validator.validate(NOW, signed_raw(b'{"sub":"alice","until":%d}' % EXP)).until == EXP


# --- pssid: the four forms of the Rust uuid crate ----------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        str(PSSID),
        str(PSSID).upper(),
        PSSID.hex,
        "{" + str(PSSID) + "}",
        "urn:uuid:" + str(PSSID),
        "urn:uuid:" + str(PSSID).upper(),
    ],
)
def test_pssid_forms_of_the_reference_give_one_identity(text: str) -> None:
    claims = STRICT.validate(NOW, signed_raw(b'{"pssid":"%s","exp":%d}' % (text.encode(), EXP)))
    assert claims.id() == str(PSSID)


@pytest.mark.parametrize(
    "text",
    [
        "{" + PSSID.hex + "}",
        "{" + str(PSSID),
        str(PSSID) + "}",
        "urn:" + str(PSSID),
        "uuid:" + str(PSSID),
        "URN:UUID:" + str(PSSID),
        "urn:uuid:" + PSSID.hex,
        "urn:uuid:{" + str(PSSID) + "}",
        PSSID.hex[:4] + "-" + PSSID.hex[4:],
        str(PSSID).replace("-", "--", 1),
        " " + str(PSSID),
        str(PSSID) + "\n",
        "\uff11" + str(PSSID)[1:],  # a fullwidth digit
    ],
)
def test_pssid_in_other_spellings_is_malformed(text: str) -> None:
    payload = json.dumps({"pssid": text, "exp": EXP}).encode()
    with pytest.raises(MalformedToken, match="pssid"):
        STRICT.validate(NOW, signed_raw(payload))


# --- exp: exact uint64 ---------------------------------------------------------------------


@given(st.integers(0, MAX_UINT64))
def test_any_uint64_exp_is_kept_exact_and_answered_exactly(exp: int) -> None:
    claims = STRICT.validate(0.0, signed_raw(claims_json(exp=str(exp).encode())))
    assert type(claims.exp_time()) is int
    assert claims.exp_time() == exp
    answer = _renewal_machine().process_control_request(
        0.0, ControlRequest(RequestKind.SESSION_RENEWAL, mint_token(SIGNER, claims))
    )
    assert answer.status == 200
    assert answer.body == encode_session_renewal_response(exp)
    assert decode_session_renewal_response(answer.body) == exp


def test_exp_2_64_minus_1_is_answered_as_the_ten_byte_varint() -> None:
    answer = _renewal_machine().process_control_request(
        NOW,
        ControlRequest(
            RequestKind.SESSION_RENEWAL, signed_raw(claims_json(exp=b"%d" % MAX_UINT64))
        ),
    )
    assert answer.status == 200
    assert answer.body == b"\x08" + b"\xff" * 9 + b"\x01"


@given(
    st.integers(MAX_UINT64 + 1, 10**300)
    | st.integers(max_value=-1)
    | st.floats(allow_nan=False, allow_infinity=False)
)
def test_any_exp_outside_uint64_or_not_an_integer_is_answered_400(exp: float) -> None:
    token = signed_raw(claims_json(exp=json.dumps(exp).encode()))
    with pytest.raises(MalformedToken):
        STRICT.validate(0.0, token)
    answer = _renewal_machine().process_control_request(
        0.0, ControlRequest(RequestKind.SESSION_RENEWAL, token)
    )
    assert answer.status == 400


def test_claims_cannot_be_made_with_an_exp_outside_uint64() -> None:
    for exp in (-1, MAX_UINT64 + 1):
        with pytest.raises(ValueError, match="2\\^64-1"):
            SnapTokenClaims(PSSID, exp)
    for wrong in (1.0, True, "1"):
        with pytest.raises(TypeError):
            SnapTokenClaims(PSSID, wrong)  # type: ignore[arg-type]
    assert SnapTokenClaims(PSSID, MAX_UINT64).exp_time() == MAX_UINT64


def test_static_validator_caps_the_expiry_at_uint64() -> None:
    assert StaticTokenValidator("t", 1e30).validate(1000.0, "t").exp == MAX_UINT64


def _renewal_machine() -> TunnelStateMachine[SnapTokenClaims]:
    manager = AddressManager(
        IsdAs.parse("1-ff00:0:110"), [ipaddress.ip_network("10.0.0.0/30")], clock=lambda: NOW
    )
    return TunnelStateMachine(STRICT, manager)


# --- one token, one spelling ---------------------------------------------------------------

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@given(
    st.integers(0, 2),
    st.sampled_from(_ALPHABET),
    st.sampled_from(["", "=", "==", "===", " ", "\n", "+", "/", ".", "\u00e9"]),
)
def test_no_other_spelling_of_a_segment_is_accepted(index: int, last: str, suffix: str) -> None:
    token = signed_raw(claims_json())
    parts = token.split(".")
    parts[index] = parts[index][:-1] + last + suffix
    respelled = ".".join(parts)
    if respelled == token:
        assert STRICT.validate(NOW, respelled) == SnapTokenClaims(PSSID, EXP)
        return
    # Another canonical spelling spells other bytes: a header that no longer parses (400),
    # or a payload or signature the signature does not cover (401). Any other spelling
    # of a segment is malformed (400).
    canonical = not suffix and _b64(_unb64(parts[index])) == parts[index]
    with pytest.raises(InvalidSignature if canonical and index > 0 else MalformedToken):
        STRICT.validate(NOW, respelled)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _CountedClaims(_OtherClaims):
    """_OtherClaims that count how often a payload was read (a full validation)."""

    reads = 0

    @classmethod
    def from_claims(cls, claims: Mapping[str, object]) -> _OtherClaims:
        cls.reads += 1
        return super().from_claims(claims)


def _counted(key: Ed25519PrivateKey, cache_size: int) -> JwtTokenValidator[_OtherClaims]:
    _CountedClaims.reads = 0
    return JwtTokenValidator([key.public_key()], _CountedClaims, cache_size=cache_size)


def _other_token(key: Ed25519PrivateKey, sub: str, until: int = EXP) -> str:
    return jwt.encode({"sub": sub, "until": until}, key, algorithm="EdDSA")


def test_a_token_accepted_again_is_not_verified_again(key: Ed25519PrivateKey) -> None:
    validator = _counted(key, cache_size=4)
    token = _other_token(key, "alice")
    first = validator.validate(NOW, token)
    assert validator.validate(NOW + 1, token) is first
    assert _CountedClaims.reads == 1


def test_a_cached_token_still_expires_at_its_exp(key: Ed25519PrivateKey) -> None:
    validator = _counted(key, cache_size=4)
    token = _other_token(key, "alice")
    validator.validate(NOW, token)
    assert validator.validate(float(EXP), token).until == EXP  # now == exp is still valid
    with pytest.raises(TokenExpired):
        validator.validate(EXP + 1.0, token)
    assert _CountedClaims.reads == 1  # the refusal came from the cached claims


def test_refused_tokens_are_not_cached(key: Ed25519PrivateKey) -> None:
    validator = _counted(key, cache_size=4)
    expired = _other_token(key, "bob", until=EXP - 1_000)
    for _ in range(2):
        with pytest.raises(TokenExpired):
            validator.validate(NOW, expired)
    assert _CountedClaims.reads == 2
    forged = _other_token(generate_signing_key(), "bob")
    for _ in range(2):
        with pytest.raises(InvalidSignature):
            validator.validate(NOW, forged)
    assert _CountedClaims.reads == 2  # a bad signature is refused before the claims are read


def test_the_cache_keeps_only_the_most_recent_tokens(key: Ed25519PrivateKey) -> None:
    validator = _counted(key, cache_size=2)
    a, b, c = (_other_token(key, name) for name in "abc")
    validator.validate(NOW, a)
    validator.validate(NOW, b)
    validator.validate(NOW, a)  # a is now the most recent: b goes first
    validator.validate(NOW, c)
    assert _CountedClaims.reads == 3
    validator.validate(NOW, a)
    assert _CountedClaims.reads == 3
    validator.validate(NOW, b)
    assert _CountedClaims.reads == 4


def test_a_cache_size_of_zero_verifies_every_time(key: Ed25519PrivateKey) -> None:
    validator = _counted(key, cache_size=0)
    token = _other_token(key, "alice")
    validator.validate(NOW, token)
    validator.validate(NOW, token)
    assert _CountedClaims.reads == 2


@pytest.mark.parametrize("size", [-1, 1.5, True])
def test_a_bad_cache_size_is_refused(key: Ed25519PrivateKey, size: object) -> None:
    with pytest.raises(ValueError, match="cache_size"):
        JwtTokenValidator([key.public_key()], cache_size=size)  # type: ignore[arg-type]
