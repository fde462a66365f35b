"""Every setup error path (request, timeout, token, address) as the close code the client gets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from snaptun.aio.client import ClientBuilder, control_request
from snaptun.constants import ACCEPT_TIMEOUT, CloseCode
from snaptun.core.control import RequestKind, encode_request
from snaptun.core.messages import AddressRange, encode_address_assign_request
from snaptun.core.tokens import JwtTokenValidator, SnapTokenClaims, mint_token
from snaptun.errors import (
    AcceptParseError,
    AcceptTimeout,
    ConnectionLost,
    ControlResponseError,
    InvalidRequest,
    RequestClosedPrematurely,
    Unauthenticated,
    UnexpectedControlRequest,
)
from tests.aio.harness import TOKEN, raw_exchange, running_server

RENEW = encode_request(RequestKind.SESSION_RENEWAL, TOKEN)
ASSIGN_ANY = encode_request(RequestKind.ADDRESS_ASSIGNMENT, TOKEN)
PATH_RENEW = b"/connectrpc.v1.snaptun/renew_session"


def head(method: bytes = b"POST", path: bytes = PATH_RENEW, auth: bytes | None = None) -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"content-length: 0"]
    if auth is not None:
        lines.append(b"Authorization: " + auth)
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def expect_close(
    certs: tuple[Path, Path], payloads: list[bytes], code: CloseCode, reason: str, **kw: object
) -> None:
    async with running_server(certs) as harness:
        result = await raw_exchange(harness, payloads, **kw)  # type: ignore[arg-type]
        refusal = await harness.next_refusal()
    assert result.close is not None, "server did not close the connection"
    assert result.close.by_peer
    assert (result.close.code, result.close.reason) == (code, reason), refusal


async def test_assign_before_renew_is_refused(certs: tuple[Path, Path]) -> None:
    await expect_close(
        certs, [ASSIGN_ANY], CloseCode.INVALID_REQUEST, "expected session renewal request"
    )


async def test_second_renew_instead_of_assign_is_refused(certs: tuple[Path, Path]) -> None:
    await expect_close(
        certs, [RENEW, RENEW], CloseCode.INVALID_REQUEST, "expected address assignment request"
    )


async def test_missing_authorization_closes_unauthenticated(certs: tuple[Path, Path]) -> None:
    await expect_close(certs, [head()], CloseCode.UNAUTHENTICATED, "no auth header")


async def test_non_bearer_authorization_closes_unauthenticated(certs: tuple[Path, Path]) -> None:
    await expect_close(
        certs,
        [head(auth=b"Basic QU5BUEFZQQ==")],
        CloseCode.UNAUTHENTICATED,
        "bearer not found in authorization header",
    )


async def test_wrong_method_is_invalid(certs: tuple[Path, Path]) -> None:
    await expect_close(
        certs, [head(method=b"GET", auth=b"Bearer x")], CloseCode.INVALID_REQUEST, "invalid method"
    )


async def test_wrong_path_is_invalid(certs: tuple[Path, Path]) -> None:
    await expect_close(
        certs, [head(path=b"/other", auth=b"Bearer x")], CloseCode.INVALID_REQUEST, "invalid path"
    )


async def test_oversized_head_is_too_big(certs: tuple[Path, Path]) -> None:
    big = b"POST " + PATH_RENEW + b" HTTP/1.1\r\nx-pad: " + b"a" * 5000 + b"\r\n\r\n"
    await expect_close(certs, [big], CloseCode.INVALID_REQUEST, "request too big")


async def test_oversized_assign_request_is_refused_at_once(certs: tuple[Path, Path]) -> None:
    # The reference's reader spins forever on a 4096-byte request; we close with code 1.
    body = b"\x0a" * 4096
    big = encode_request(RequestKind.ADDRESS_ASSIGNMENT, TOKEN, body)
    started = time.monotonic()
    await expect_close(certs, [RENEW, big], CloseCode.INVALID_REQUEST, "request too big")
    assert time.monotonic() - started < ACCEPT_TIMEOUT


async def test_garbage_protobuf_is_invalid(certs: tuple[Path, Path]) -> None:
    bad = encode_request(RequestKind.ADDRESS_ASSIGNMENT, TOKEN, b"\xff\xff\xff")
    await expect_close(
        certs,
        [RENEW, bad],
        CloseCode.INVALID_REQUEST,
        "error when parsing address assignment request",
    )


async def test_stream_ended_before_head_is_internal_error(certs: tuple[Path, Path]) -> None:
    await expect_close(
        certs, [b"POST /connectrpc.v1.snaptun/ren"], CloseCode.INTERNAL_ERROR, "closed prematurely"
    )


async def test_silence_past_accept_timeout_closes_with_timeout(certs: tuple[Path, Path]) -> None:
    async with running_server(certs) as harness, harness.connect() as conn:
        started = time.monotonic()
        lost = await asyncio.wait_for(conn.wait_closed(), ACCEPT_TIMEOUT + 3)
        elapsed = time.monotonic() - started
        refusal = await harness.next_refusal()
    assert isinstance(refusal, AcceptTimeout)
    assert (lost.code, lost.reason) == (CloseCode.TIMEOUT, "timeout establishing snaptun")
    assert ACCEPT_TIMEOUT - 0.5 <= elapsed <= ACCEPT_TIMEOUT + 2


async def test_unfinished_first_request_times_out(certs: tuple[Path, Path]) -> None:
    result_close = None
    async with running_server(certs) as harness:
        result = await raw_exchange(harness, [RENEW[:20]], fin=False, wait_close=ACCEPT_TIMEOUT + 3)
        result_close = result.close
        assert isinstance(await harness.next_refusal(), AcceptTimeout)
    assert result_close is not None
    assert result_close.code == CloseCode.TIMEOUT


async def test_refusals_carry_the_parse_error(certs: tuple[Path, Path]) -> None:
    async with running_server(certs) as harness:
        await raw_exchange(harness, [head()])
        refusal = await harness.next_refusal()
        await raw_exchange(harness, [head(method=b"GET", auth=b"Bearer x")])
        second = await harness.next_refusal()
        await raw_exchange(harness, [b"POST /x"])
        third = await harness.next_refusal()
        await raw_exchange(harness, [ASSIGN_ANY])
        fourth = await harness.next_refusal()
    assert isinstance(refusal, AcceptParseError)
    assert isinstance(refusal.cause, Unauthenticated)
    assert isinstance(second, AcceptParseError)
    assert isinstance(second.cause, InvalidRequest)
    assert isinstance(third, AcceptParseError)
    assert isinstance(third.cause, RequestClosedPrematurely)
    assert isinstance(fourth, UnexpectedControlRequest)


# ---- tokens --------------------------------------------------------------------------------


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def claims(ttl: float = 60) -> SnapTokenClaims:
    return SnapTokenClaims(pssid=uuid.uuid4(), exp=int(time.time() + ttl))


async def setup_with_token(
    certs: tuple[Path, Path], key: Ed25519PrivateKey, token: str
) -> tuple[ConnectionLost | None, list[bytes | BaseException], object]:
    validator = JwtTokenValidator([key.public_key()])
    async with running_server(certs, validator=validator) as harness:
        renew = encode_request(RequestKind.SESSION_RENEWAL, token)
        result = await raw_exchange(harness, [renew, ASSIGN_ANY])
        refusal = await harness.next_refusal()
    return result.close, result.responses, refusal


async def test_valid_jwt_sets_the_tunnel_up(
    certs: tuple[Path, Path], signing_key: Ed25519PrivateKey
) -> None:
    token = mint_token(signing_key, claims())
    validator = JwtTokenValidator([signing_key.public_key()])
    async with running_server(certs, validator=validator) as harness:
        renew = encode_request(RequestKind.SESSION_RENEWAL, token)
        assign = encode_request(RequestKind.ADDRESS_ASSIGNMENT, token)
        result = await raw_exchange(harness, [renew, assign], wait_close=0.2)
        tunnel = await harness.next_tunnel()
    assert all(
        isinstance(r, bytes) and r.startswith(b"HTTP/1.1 200 OK\r\n") for r in result.responses
    )
    assert tunnel.sender.assigned_addresses


@pytest.mark.parametrize(
    ("forge", "cause", "refused_as"),
    [
        ("other_key", "token signature does not verify with any trusted key", "InvalidSignature"),
        ("expired", "token expired at 20", "TokenExpired"),
        ("alg_none", "malformed token: The specified alg value is not allowed", "MalformedToken"),
        ("hs256_with_public_key", "malformed token: The specified alg", "MalformedToken"),
        ("garbage", "malformed token: not three dot-separated segments", "MalformedToken"),
    ],
)
async def test_bad_tokens_are_refused_with_close_code_1_and_the_cause(
    certs: tuple[Path, Path],
    signing_key: Ed25519PrivateKey,
    forge: str,
    cause: str,
    refused_as: str,
) -> None:
    good = claims()
    if forge == "other_key":
        token = mint_token(Ed25519PrivateKey.generate(), good)
    elif forge == "expired":
        token = mint_token(signing_key, SnapTokenClaims(pssid=good.pssid, exp=int(time.time()) - 5))
    elif forge == "alg_none":
        token = jwt.encode(good.to_claims(), key=None, algorithm="none")
    elif forge == "hs256_with_public_key":
        public_pem = signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        token = _hs256(good.to_claims(), public_pem)
    else:
        token = "not-a-jwt"
    close, _responses, refusal = await setup_with_token(certs, signing_key, token)
    assert isinstance(refusal, UnexpectedControlRequest)
    assert refusal.refusal == refused_as
    assert close is not None
    assert close.code == CloseCode.INVALID_REQUEST
    # The reference's reason, then ours: the cause.
    assert close.reason.startswith(f"handling session renewal request: {cause}"), close.reason


def _hs256(payload: dict[str, object], secret: bytes) -> str:
    """An HS256 JWT whose HMAC key is the public key PEM (the key-confusion attack)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(payload).encode())
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


# ---- assignment rules ----------------------------------------------------------------------


def assign_body(*ranges: AddressRange) -> bytes:
    return encode_request(
        RequestKind.ADDRESS_ASSIGNMENT, TOKEN, encode_address_assign_request(list(ranges))
    )


V4 = AddressRange(0x0001FF0000000110, 4, 32, bytes([10, 0, 0, 7]))


MULTIPLE = "multiple address assignments are not supported"
INVALID_RANGE = "a requested address assignment contained an invalid address range"
UNAVAILABLE = "either requested address is unavailable, or no addresses are available"
REFUSED_ASSIGNMENTS = [
    pytest.param(assign_body(V4, V4), 501, MULTIPLE, id="two-addresses"),
    pytest.param(
        assign_body(AddressRange(V4.isd_as, 4, 24, V4.address)), 400, INVALID_RANGE, id="prefix-24"
    ),
    pytest.param(
        assign_body(AddressRange(0x0000FF0000000110, 4, 32, V4.address)),
        400,
        INVALID_RANGE,
        id="wildcard-isd",
    ),
    pytest.param(
        assign_body(AddressRange(0x0001000000000000, 4, 32, V4.address)),
        400,
        INVALID_RANGE,
        id="wildcard-as",
    ),
    pytest.param(
        assign_body(AddressRange(V4.isd_as, 5, 32, V4.address)), 400, INVALID_RANGE, id="version-5"
    ),
    pytest.param(
        assign_body(AddressRange(V4.isd_as, 4, 32, b"\x0a\x00\x00")),
        400,
        INVALID_RANGE,
        id="short-address",
    ),
    pytest.param(
        assign_body(AddressRange(0x0002FF0000000110, 4, 32, V4.address)),
        400,
        UNAVAILABLE,
        id="foreign-isd-as",
    ),
    pytest.param(
        assign_body(AddressRange(V4.isd_as, 4, 32, bytes([192, 0, 2, 1]))),
        400,
        UNAVAILABLE,
        id="outside-pool",
    ),
]


@pytest.mark.parametrize(("request_body", "status", "answer"), REFUSED_ASSIGNMENTS)
async def test_refused_assignments_during_setup_close_with_code_1(
    certs: tuple[Path, Path], request_body: bytes, status: int, answer: str
) -> None:
    await expect_close(
        certs,
        [RENEW, request_body],
        CloseCode.INVALID_REQUEST,
        f"handling address assignment request: {answer}",
    )


@pytest.mark.parametrize(("request_body", "status", "answer"), REFUSED_ASSIGNMENTS)
async def test_refused_assignments_after_setup_answer_status_and_reason(
    certs: tuple[Path, Path], request_body: bytes, status: int, answer: str
) -> None:
    async with running_server(certs) as harness, harness.connect() as conn:
        await ClientBuilder(TOKEN).connect(conn)
        with pytest.raises(ControlResponseError) as refused:
            await control_request(conn, request_body)
        assert (refused.value.status, refused.value.body.decode()) == (status, answer)
        assert conn.closed is None  # after setup a refusal leaves the tunnel up
