"""Tokens are read exactly: uint64 claims, one spelling per token, no duplicate keys."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snaptun.core.tokens import (
    MAX_UINT64,
    JwtTokenValidator,
    SnapTokenClaims,
    generate_signing_key,
    mint_token,
)
from snaptun.errors import InvalidSignature, MalformedToken

KEY = generate_signing_key()
VALIDATOR = JwtTokenValidator([KEY.public_key()])
PSSID = "3f2a6c1e-9b7d-4e2a-8c1f-0d9e8b7a6c5d"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: bytes, header: bytes = b'{"alg":"EdDSA","typ":"JWT"}') -> str:
    """A token over exactly these JSON bytes, validly signed."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    return f"{signing_input}.{b64(KEY.sign(signing_input.encode()))}"


def test_exp_of_2_64_minus_1_is_accepted_exactly() -> None:
    token = signed(b'{"pssid":"%s","exp":%d}' % (PSSID.encode(), MAX_UINT64))
    claims = VALIDATOR.validate(0.0, token)
    assert claims.exp_time() == MAX_UINT64
    assert isinstance(claims.exp_time(), int)


@pytest.mark.parametrize(
    "exp",
    [b"18446744073709551616", b"1" + b"0" * 400, b"1e400", b"-1", b"1.5", b"true", b'"5"', b"null"],
)
def test_exp_outside_uint64_or_not_an_integer_is_malformed(exp: bytes) -> None:
    token = signed(b'{"pssid":"%s","exp":%s}' % (PSSID.encode(), exp))
    with pytest.raises(MalformedToken):
        VALIDATOR.validate(0.0, token)


@given(st.integers(min_value=0, max_value=MAX_UINT64))
def test_every_uint64_exp_round_trips(exp: int) -> None:
    token = mint_token(KEY, SnapTokenClaims(uuid.UUID(PSSID), exp))
    assert VALIDATOR.validate(0.0, token).exp_time() == exp


@given(st.integers(min_value=MAX_UINT64 + 1, max_value=2**80) | st.integers(max_value=-1))
def test_every_exp_outside_uint64_is_malformed(exp: int) -> None:
    token = signed(json.dumps({"pssid": PSSID, "exp": exp}).encode())
    with pytest.raises(MalformedToken):
        VALIDATOR.validate(0.0, token)


def test_duplicate_claim_is_malformed_whichever_comes_last() -> None:
    for payload in (
        b'{"pssid":"%s","exp":1,"exp":99999999999}' % PSSID.encode(),
        b'{"pssid":"%s","exp":99999999999,"exp":1}' % PSSID.encode(),
        b'{"pssid":"%s","pssid":"%s","exp":99999999999}' % (PSSID.encode(), PSSID.encode()),
    ):
        with pytest.raises(MalformedToken, match="duplicate"):
            VALIDATOR.validate(0.0, signed(payload))


def test_duplicate_header_key_is_malformed() -> None:
    header = b'{"alg":"EdDSA","alg":"EdDSA"}'
    with pytest.raises(MalformedToken, match="duplicate"):
        VALIDATOR.validate(0.0, signed(b'{"pssid":"%s","exp":9}' % PSSID.encode(), header))


def test_nested_duplicate_key_is_malformed() -> None:
    payload = b'{"pssid":"%s","exp":9,"x":{"a":1,"a":2}}' % PSSID.encode()
    with pytest.raises(MalformedToken, match="duplicate"):
        VALIDATOR.validate(0.0, signed(payload))


def _respell(token: str, index: int, spelling: str) -> str:
    parts = token.split(".")
    parts[index] = spelling
    return ".".join(parts)


def test_other_spellings_of_a_valid_token_are_malformed() -> None:
    token = mint_token(KEY, SnapTokenClaims(uuid.UUID(PSSID), 99999999999))
    assert VALIDATOR.validate(0.0, token).id() == PSSID
    signature = token.split(".")[2]
    assert len(signature) % 4 != 0  # 64 bytes: 86 characters, two of padding
    padded = _respell(token, 2, signature + "==")
    std_alphabet = _respell(token, 2, signature.replace("-", "+").replace("_", "/"))
    # The last character of an 86-character segment carries 2 unused bits.
    last = signature[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    sloppy = _respell(token, 2, signature[:-1] + alphabet[alphabet.index(last) | 1])
    spaced = _respell(token, 1, token.split(".")[1] + " ")
    for other in (padded, sloppy, spaced, token + ".", token.replace(".", "..", 1)):
        assert other != token
        with pytest.raises(MalformedToken):
            VALIDATOR.validate(0.0, other)
    if std_alphabet != token:
        with pytest.raises(MalformedToken):
            VALIDATOR.validate(0.0, std_alphabet)


def test_a_canonical_token_with_a_wrong_signature_is_still_401() -> None:
    other = generate_signing_key()
    token = mint_token(other, SnapTokenClaims(uuid.UUID(PSSID), 99999999999))
    with pytest.raises(InvalidSignature):
        VALIDATOR.validate(0.0, token)
