"""Tests of the HTTP/1.1-framed control requests and responses."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snaptun.constants import CloseCode
from snaptun.core.control import (
    ControlRequest,
    ControlResponse,
    RequestKind,
    RequestReader,
    ResponseReader,
    encode_request,
    encode_response,
)
from snaptun.core.messages import AddressRange, encode_address_assign_request
from snaptun.errors import (
    InvalidRequest,
    MalformedResponse,
    ParseControlRequestError,
    RequestClosedPrematurely,
    Unauthenticated,
)

RENEW = RequestKind.SESSION_RENEWAL
ASSIGN = RequestKind.ADDRESS_ASSIGNMENT

# The reference client's requests, byte for byte.
REF_RENEW = (
    b"POST /connectrpc.v1.snaptun/renew_session HTTP/1.1\r\n"
    b"content-type: application/proto\r\n"
    b"connect-protocol-version: 1\r\n"
    b"content-encoding: identity\r\n"
    b"accept-encoding: identity\r\n"
    b"content-length: 0\r\n"
    b"Authorization: Bearer tok\r\n"
    b"\r\n"
)
V4 = AddressRange(0x0001FF0000000110, 4, 32, bytes([192, 168, 0, 1]))
V4_BODY = bytes.fromhex("0a12089082808080e07f100418202204c0a80001")
REF_ASSIGN = (
    REF_RENEW.replace(b"renew_session", b"assign_addresses").replace(
        b"content-length: 0", b"content-length: 20"
    )
    + V4_BODY
)

Outcome = ControlRequest | tuple[type[ParseControlRequestError], str] | None


def run(chunks: Sequence[bytes], *, eof: bool = True, limit: int = 4096) -> Outcome:
    """Feed ``chunks`` and then EOF; the request, the error's (type, reason), or None."""
    reader = RequestReader(limit)
    try:
        for chunk in chunks:
            request = reader.feed_data(chunk)
            if request is not None:
                return request
        return reader.feed_eof() if eof else None
    except ParseControlRequestError as exc:
        return type(exc), exc.reason


def one(data: bytes, **kwargs: bool | int) -> Outcome:
    return run([data], **kwargs)  # type: ignore[arg-type]


CLOSED = (RequestClosedPrematurely, "closed prematurely")
TOO_BIG = (InvalidRequest, "request too big")
NO_AUTH = (Unauthenticated, "no auth header")
NO_BEARER = (Unauthenticated, "bearer not found in authorization header")


def renew(token: str = "tok") -> ControlRequest:
    return ControlRequest(RENEW, token)


def with_auth(line: bytes, *, target: bytes = b"/connectrpc.v1.snaptun/renew_session") -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\n" + line + b"\r\n\r\n"


# --- encoding -----------------------------------------------------------------------------


def test_encode_request_is_the_reference_request() -> None:
    assert encode_request(RENEW, "tok") == REF_RENEW


def test_encode_assign_request_sets_content_length() -> None:
    assert encode_request(ASSIGN, "tok", V4_BODY) == REF_ASSIGN


@pytest.mark.parametrize("token", ["", " tok", "tok ", "to\r\nk", "to\x00k", "to\x7fk"])
def test_encode_request_refuses_unencodable_tokens(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        encode_request(RENEW, token)


def test_request_kind_paths() -> None:
    assert RENEW.path == "/connectrpc.v1.snaptun/renew_session"
    assert ASSIGN.path == "/connectrpc.v1.snaptun/assign_addresses"


@pytest.mark.parametrize(
    ("status", "head"),
    [
        (200, b"HTTP/1.1 200 OK\r\n"),
        (400, b"HTTP/1.1 400 Bad Request\r\n"),
        (401, b"HTTP/1.1 401 Unauthorized\r\n"),
        (500, b"HTTP/1.1 500 Internal Server Error\r\n"),
        (501, b"HTTP/1.1 501 Not Implemented\r\n"),
        (404, b"HTTP/1.1 404 Not Found\r\n"),
    ],
)
def test_encode_response(status: int, head: bytes) -> None:
    assert encode_response(status, b"abc") == head + b"Content-Length: 3\r\n\r\nabc"


@pytest.mark.parametrize("status", [0, 299, 600])
def test_encode_response_refuses_unknown_status(status: int) -> None:
    with pytest.raises(ValueError, match="unknown HTTP status"):
        encode_response(status, b"")


# --- the reference requests ---------------------------------------------------------------


def test_reference_renew_request() -> None:
    assert one(REF_RENEW) == renew()


def test_renew_returned_as_soon_as_head_is_complete() -> None:
    assert one(REF_RENEW, eof=False) == renew()


def test_reference_assign_request() -> None:
    assert one(REF_ASSIGN) == ControlRequest(ASSIGN, "tok", (V4,))


def test_assign_waits_for_eof() -> None:
    reader = RequestReader()
    assert reader.feed_data(REF_ASSIGN) is None
    assert reader.feed_eof() == ControlRequest(ASSIGN, "tok", (V4,))


def test_assign_with_empty_body_asks_for_any_address() -> None:
    data = encode_request(ASSIGN, "tok")
    assert one(data) == ControlRequest(ASSIGN, "tok", ())


def test_token_is_not_in_repr() -> None:
    assert "secret" not in repr(renew("secret"))


# --- method and path ----------------------------------------------------------------------


def test_wrong_method() -> None:
    assert one(REF_RENEW.replace(b"POST", b"GET", 1)) == (InvalidRequest, "invalid method")


def test_lower_case_post_is_invalid_method() -> None:
    assert one(REF_RENEW.replace(b"POST", b"post", 1)) == (InvalidRequest, "invalid method")


def test_bad_path() -> None:
    data = REF_RENEW.replace(b"renew_session", b"renew")
    assert one(data) == (InvalidRequest, "invalid path")


def test_query_string_is_invalid_path() -> None:
    data = REF_RENEW.replace(b"renew_session", b"renew_session?a=1")
    assert one(data) == (InvalidRequest, "invalid path")


def test_absolute_form_is_invalid_path() -> None:
    data = REF_RENEW.replace(b"/connectrpc", b"https://snap/connectrpc")
    assert one(data) == (InvalidRequest, "invalid path")


def test_method_is_checked_before_path_and_auth() -> None:
    assert one(b"GET /x HTTP/1.1\r\n\r\n") == (InvalidRequest, "invalid method")


def test_path_is_checked_before_auth() -> None:
    assert one(b"POST /x HTTP/1.1\r\n\r\n") == (InvalidRequest, "invalid path")


# --- Authorization ------------------------------------------------------------------------


def test_no_auth_header() -> None:
    data = REF_RENEW.replace(b"Authorization: Bearer tok\r\n", b"")
    assert one(data) == NO_AUTH


def test_lower_case_authorization_accepted() -> None:
    assert one(REF_RENEW.replace(b"Authorization", b"authorization")) == renew()


def test_upper_case_authorization_accepted() -> None:
    assert one(REF_RENEW.replace(b"Authorization", b"AUTHORIZATION")) == renew()


def test_no_space_after_colon_accepted() -> None:
    assert one(with_auth(b"Authorization:Bearer x")) == renew("x")


def test_tabs_and_spaces_after_colon_skipped() -> None:
    assert one(with_auth(b"Authorization: \t Bearer x")) == renew("x")


def test_bearer_with_nothing_after_it() -> None:
    assert one(with_auth(b"Authorization: Bearer ")) == NO_BEARER


def test_bearer_without_space() -> None:
    assert one(with_auth(b"Authorization: Bearer")) == NO_BEARER


def test_empty_authorization_value() -> None:
    assert one(with_auth(b"Authorization:")) == NO_BEARER


@pytest.mark.parametrize("value", [b"bearer tok", b"BEARER tok", b"Basic dG9rOg==", b"Bearertok"])
def test_not_a_bearer_token(value: bytes) -> None:
    assert one(with_auth(b"Authorization: " + value)) == NO_BEARER


def test_trailing_space_after_token_trimmed() -> None:
    assert one(with_auth(b"Authorization: Bearer tok  \t")) == renew()


def test_unicode_whitespace_around_the_value_trimmed() -> None:
    # httparse trims SP/HTAB only; the value is then trimmed as a str (Unicode White_Space).
    assert one(with_auth(b"Authorization: \xc2\xa0Bearer tok\xc2\xa0")) == renew()


def test_spaces_inside_the_token_are_kept() -> None:
    assert one(with_auth(b"Authorization: Bearer  a b")) == renew(" a b")


def test_first_authorization_header_wins() -> None:
    data = with_auth(b"Authorization: Bearer one\r\nAuthorization: Bearer two")
    assert one(data) == renew("one")


def test_first_authorization_header_wins_even_when_invalid() -> None:
    data = with_auth(b"authorization: Basic x\r\nAuthorization: Bearer two")
    assert one(data) == NO_BEARER


def test_non_utf8_token_decoded_with_replacement() -> None:
    assert one(with_auth(b"Authorization: Bearer a\xffb")) == renew("a\ufffdb")


def test_auth_is_checked_at_head_before_assign_body() -> None:
    data = REF_ASSIGN.replace(b"Authorization: Bearer tok\r\n", b"")
    assert one(data, eof=False) == NO_AUTH


# --- leniency shared with the reference -----------------------------------------------


def test_http_1_0_accepted() -> None:
    assert one(REF_RENEW.replace(b"HTTP/1.1", b"HTTP/1.0")) == renew()


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/1.10"])
def test_other_versions_do_not_parse(version: bytes) -> None:
    data = REF_RENEW.replace(b"HTTP/1.1", version)
    assert one(data, eof=False) is None
    assert one(data) == CLOSED


def test_bare_lf_accepted() -> None:
    assert one(REF_RENEW.replace(b"\r\n", b"\n")) == renew()


def test_mixed_line_ends_accepted() -> None:
    data = REF_RENEW.replace(b"1\r\n", b"1\n").replace(b"tok\r\n", b"tok\n")
    assert one(data) == renew()


def test_leading_empty_lines_skipped() -> None:
    assert one(b"\r\n\n\r\n" + REF_RENEW) == renew()


def test_lone_cr_does_not_parse() -> None:
    assert one(b"\r" + REF_RENEW) == CLOSED
    assert one(REF_RENEW.replace(b"tok\r\n", b"tok\r")) == CLOSED


def test_missing_content_length_accepted() -> None:
    data = REF_ASSIGN.replace(b"content-length: 20\r\n", b"")
    assert one(data) == ControlRequest(ASSIGN, "tok", (V4,))


@pytest.mark.parametrize("length", [b"0", b"5", b"999", b"x"])
def test_wrong_content_length_ignored(length: bytes) -> None:
    data = REF_ASSIGN.replace(b"content-length: 20", b"content-length: " + length)
    assert one(data) == ControlRequest(ASSIGN, "tok", (V4,))


def test_other_headers_ignored() -> None:
    data = REF_RENEW.replace(b"\r\n\r\n", b"\r\nx-odd!#$%&'*+-.^_`|~: \x80\xff v\t \r\n\r\n")
    assert one(data) == renew()


def test_empty_header_value_accepted() -> None:
    assert one(REF_RENEW.replace(b"\r\n\r\n", b"\r\nx-empty:\r\n\r\n")) == renew()


# --- head grammar: what does not parse keeps reading ---------------------------------------


def extra_headers(count: int) -> bytes:
    return b"".join(b"x-h%d: v\r\n" % i for i in range(count))


def test_sixteen_headers_accepted() -> None:
    data = REF_RENEW.replace(b"\r\n\r\n", b"\r\n" + extra_headers(10) + b"\r\n")
    assert data.count(b"\r\n") == 18  # request line, 16 headers, end of head
    assert one(data) == renew()


def test_seventeen_headers_keep_reading() -> None:
    data = REF_RENEW.replace(b"\r\n\r\n", b"\r\n" + extra_headers(11) + b"\r\n")
    assert one(data, eof=False) is None
    assert one(data) == CLOSED
    assert one(data + b"x" * 4096) == TOO_BIG


def test_obs_fold_does_not_parse() -> None:
    data = REF_RENEW.replace(b"identity\r\naccept", b"identity\r\n folded\r\naccept")
    assert one(data, eof=False) is None
    assert one(data) == CLOSED


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"Authorization : Bearer tok", id="space-before-colon"),
        pytest.param(b"Authorization Bearer tok", id="no-colon"),
        pytest.param(b": Bearer tok", id="empty-name"),
        pytest.param(b"Auth(x): y\r\nAuthorization: Bearer tok", id="separator-in-name"),
        pytest.param(b"x: a\x7fb\r\nAuthorization: Bearer tok", id="del-in-value"),
        pytest.param(b"x: a\x00b\r\nAuthorization: Bearer tok", id="nul-in-value"),
        pytest.param(b"x: a\rb\r\nAuthorization: Bearer tok", id="cr-in-value"),
        pytest.param(b"\tAuthorization: Bearer tok", id="leading-tab"),
    ],
)
def test_invalid_header_lines_do_not_parse(line: bytes) -> None:
    assert one(with_auth(line)) == CLOSED


@pytest.mark.parametrize(
    "request_line",
    [
        pytest.param(b"POST  /connectrpc.v1.snaptun/renew_session HTTP/1.1", id="double-space"),
        pytest.param(b"POST /connectrpc.v1.snaptun/renew_session  HTTP/1.1", id="space-after"),
        pytest.param(b"POST\t/connectrpc.v1.snaptun/renew_session HTTP/1.1", id="tab"),
        pytest.param(b" POST /connectrpc.v1.snaptun/renew_session HTTP/1.1", id="leading-sp"),
        pytest.param(b"POST /connectrpc.v1.snaptun/renew_session\xff HTTP/1.1", id="bad-utf8"),
        pytest.param(b"POST /connectrpc.v1.snaptun/renew_session", id="no-version"),
        pytest.param(b"P(ST /connectrpc.v1.snaptun/renew_session HTTP/1.1", id="bad-method"),
    ],
)
def test_invalid_request_lines_do_not_parse(request_line: bytes) -> None:
    data = request_line + b"\r\nAuthorization: Bearer tok\r\n\r\n"
    assert one(data, eof=False) is None
    assert one(data) == CLOSED


def test_non_ascii_utf8_target_is_invalid_path() -> None:
    data = with_auth(b"Authorization: Bearer tok", target="/caf\u00e9".encode())
    assert one(data) == (InvalidRequest, "invalid path")


def test_garbage_head_then_eof() -> None:
    assert one(b"\x16\x03\x01 hello, not http\r\n\r\n") == CLOSED


def test_garbage_head_up_to_the_limit() -> None:
    reader = RequestReader()
    assert reader.feed_data(b"garbage" * 585) is None  # 4095 bytes
    with pytest.raises(InvalidRequest, match="request too big"):
        reader.feed_data(b"!")


def test_empty_stream() -> None:
    assert one(b"") == CLOSED


def test_incomplete_head_then_eof() -> None:
    assert one(REF_RENEW[:-2]) == CLOSED


# --- size limits ------------------------------------------------------------------------------


def padded(base: bytes, total: int, *, body: bytes = b"") -> bytes:
    """``base`` (a head) with an x-pad header so that head + body is ``total`` bytes."""
    pad_header = b"x-pad: \r\n"
    pad = total - len(base) - len(pad_header) - len(body)
    assert pad >= 0
    data = base.replace(b"\r\n\r\n", b"\r\nx-pad: " + b"p" * pad + b"\r\n\r\n") + body
    assert len(data) == total
    return data


def test_renew_head_of_exactly_the_limit_accepted() -> None:
    assert one(padded(REF_RENEW, 4096)) == renew()


def test_renew_head_over_the_limit_too_big() -> None:
    data = padded(REF_RENEW, 4097)
    assert one(data) == TOO_BIG
    assert one(data, eof=False) == TOO_BIG


def test_assign_of_4095_bytes_accepted() -> None:
    head = REF_ASSIGN[: -len(V4_BODY)]
    data = padded(head, 4095, body=V4_BODY)
    assert one(data) == ControlRequest(ASSIGN, "tok", (V4,))


def test_assign_of_4096_bytes_refused_at_once() -> None:
    head = REF_ASSIGN[: -len(V4_BODY)]
    data = padded(head, 4096, body=V4_BODY)
    assert one(data, eof=False) == TOO_BIG


def test_assign_body_past_the_limit_refused_without_eof() -> None:
    reader = RequestReader()
    assert reader.feed_data(REF_ASSIGN) is None
    with pytest.raises(InvalidRequest, match="request too big"):
        reader.feed_data(bytes(8192))


def test_assign_head_of_exactly_the_limit_refused() -> None:
    head = REF_ASSIGN[: -len(V4_BODY)]
    assert one(padded(head, 4096), eof=False) == TOO_BIG


def test_renew_with_long_body_accepted() -> None:
    data = REF_RENEW + b"z" * 10_000
    assert one(data) == renew()
    assert run([data[i : i + 1000] for i in range(0, len(data), 1000)]) == renew()


def test_bytes_beyond_the_limit_are_not_buffered() -> None:
    reader = RequestReader()
    assert reader.feed_data(b"x" * 4000) is None
    with pytest.raises(InvalidRequest):
        reader.feed_data(b"y" * 10_000)
    assert reader.buffered == 4096


def test_custom_limit() -> None:
    assert one(REF_RENEW, limit=len(REF_RENEW)) == renew()
    assert one(REF_RENEW, limit=len(REF_RENEW) - 1) == TOO_BIG
    assert one(REF_ASSIGN, limit=len(REF_ASSIGN) + 1) == ControlRequest(ASSIGN, "tok", (V4,))
    assert one(REF_ASSIGN, limit=len(REF_ASSIGN)) == TOO_BIG


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RequestReader(0)


# --- body decoding -------------------------------------------------------------------------


def test_garbage_protobuf_body() -> None:
    data = encode_request(ASSIGN, "tok") + b"\x0a\x05\x08"
    assert one(data) == (InvalidRequest, "error when parsing address assignment request")


def test_body_with_several_ranges_is_returned_as_is() -> None:
    ranges = (V4, AddressRange(0, 9, 1, b"x"))
    data = encode_request(ASSIGN, "tok", encode_address_assign_request(ranges))
    assert one(data) == ControlRequest(ASSIGN, "tok", ranges)


# --- the outcome is final -----------------------------------------------------------------


def test_after_a_request_further_calls_repeat_it() -> None:
    reader = RequestReader()
    request = reader.feed_data(REF_RENEW)
    assert request == renew()
    assert reader.done
    assert reader.feed_data(b"GET / HTTP/1.1\r\n\r\n") == request
    assert reader.feed_eof() == request


def test_after_an_error_further_calls_raise_it_again() -> None:
    reader = RequestReader()
    with pytest.raises(InvalidRequest) as first:
        reader.feed_data(REF_RENEW.replace(b"POST", b"GET", 1))
    with pytest.raises(InvalidRequest) as again:
        reader.feed_data(REF_RENEW)
    assert again.value is first.value
    with pytest.raises(InvalidRequest):
        reader.feed_eof()


def test_after_eof_error_further_calls_raise_it_again() -> None:
    reader = RequestReader()
    assert not reader.done
    with pytest.raises(RequestClosedPrematurely):
        reader.feed_eof()
    with pytest.raises(RequestClosedPrematurely):
        reader.feed_data(REF_RENEW)


def test_close_codes() -> None:
    assert InvalidRequest("x").close_code is CloseCode.INVALID_REQUEST
    assert Unauthenticated("x").close_code is CloseCode.UNAUTHENTICATED
    assert RequestClosedPrematurely().close_code is CloseCode.INTERNAL_ERROR


# --- chunking and fuzzing -----------------------------------------------------------------

SAMPLES = [
    REF_RENEW,
    REF_ASSIGN,
    REF_RENEW.replace(b"\r\n", b"\n"),
    b"\r\n\n" + REF_RENEW,
    REF_RENEW.replace(b"POST", b"post", 1),
    REF_RENEW.replace(b"renew_session", b"renew_session?a=1"),
    REF_RENEW.replace(b"Authorization: Bearer tok\r\n", b""),
    with_auth(b"Authorization: Bearer "),
    REF_RENEW.replace(b"\r\n\r\n", b"\r\n" + extra_headers(11) + b"\r\n"),
    REF_RENEW + b"z" * 5000,
    padded(REF_RENEW, 4096),
    padded(REF_RENEW, 4097),
    padded(REF_ASSIGN[: -len(V4_BODY)], 4095, body=V4_BODY),
    padded(REF_ASSIGN[: -len(V4_BODY)], 4096, body=V4_BODY),
    encode_request(ASSIGN, "tok") + b"\x0a\x05\x08",
    b"garbage" * 700,
    REF_RENEW[:-1],
]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("data", SAMPLES)
def test_one_byte_at_a_time_same_as_at_once(data: bytes) -> None:
    expected = one(data)
    assert expected is not None
    assert run([data[i : i + 1] for i in range(len(data))]) == expected


@given(st.sampled_from(SAMPLES), st.lists(st.integers(0, 6000), max_size=20))
def test_random_split_points_same_as_at_once(data: bytes, cuts: list[int]) -> None:
    assert run(split(data, cuts)) == one(data)


def check_outcome(outcome: Outcome) -> None:
    if isinstance(outcome, tuple):
        assert outcome[0] in (InvalidRequest, Unauthenticated, RequestClosedPrematurely)
    else:
        assert isinstance(outcome, ControlRequest)


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=10))
def test_fuzz_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    reader = RequestReader(256)
    error: ParseControlRequestError | None = None
    try:
        for chunk in split(data, cuts):
            result = reader.feed_data(chunk)
            assert result is None or isinstance(result, ControlRequest)
        assert isinstance(reader.feed_eof(), ControlRequest)
    except ParseControlRequestError as exc:
        error = exc
    assert error is None or isinstance(
        error, InvalidRequest | Unauthenticated | RequestClosedPrematurely
    )


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A sample request with a few bytes replaced, inserted or deleted."""
    data = bytearray(draw(st.sampled_from([REF_RENEW, REF_ASSIGN, with_auth(b"authorization:")])))
    alphabet = st.sampled_from(list(b"\r\n \t:/aP\x00\x7f\xff"))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        match draw(st.sampled_from(["replace", "insert", "delete"])):
            case "replace" if pos < len(data):
                data[pos] = draw(alphabet)
            case "insert":
                data.insert(pos, draw(alphabet))
            case _ if pos < len(data):
                del data[pos]
            case _:
                pass
    return bytes(data)


@given(mutated(), st.lists(st.integers(0, 400), max_size=10))
def test_fuzz_mutated_requests_chunking_invariant(data: bytes, cuts: list[int]) -> None:
    outcome = one(data)
    check_outcome(outcome)
    assert run(split(data, cuts)) == outcome


# --- responses (client side) --------------------------------------------------------------


def read_response(data: bytes, chunk: int = 0) -> ControlResponse:
    reader = ResponseReader()
    if chunk:
        for i in range(0, len(data), chunk):
            reader.feed_data(data[i : i + chunk])
    else:
        reader.feed_data(data)
    return reader.feed_eof()


def test_response_200_with_body() -> None:
    body = bytes.fromhex("0880f2d6ca06")
    assert read_response(encode_response(200, body)) == ControlResponse(200, "OK", body)


def test_response_401_with_text_body() -> None:
    response = read_response(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 9\r\n\r\nbad token")
    assert response == ControlResponse(401, "Unauthorized", b"bad token")
    assert not response.ok


def test_response_one_byte_at_a_time() -> None:
    data = encode_response(200, b"xyz")
    assert read_response(data, chunk=1) == ControlResponse(200, "OK", b"xyz")


def test_response_other_headers_and_case() -> None:
    data = b"HTTP/1.1 200 OK\r\ncontent-type: application/proto\r\ncontent-length:  2 \r\n\r\nab"
    assert read_response(data) == ControlResponse(200, "OK", b"ab")


def test_response_without_reason() -> None:
    assert read_response(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n") == ControlResponse(
        200, "", b""
    )


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab", id="length-too-big"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab", id="length-too-small"),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\nab", id="no-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\n", id="no-length-empty"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab", id="two"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nab", id="negative"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nab", id="hex"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
            id="chunked",
        ),
        pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", id="bare-lf"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", id="incomplete-head"),
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", id="http-1.0"),
        pytest.param(b"HTTP/1.1 100 Continue\r\nContent-Length: 0\r\n\r\n", id="1xx"),
        pytest.param(b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", id="two-digit-status"),
        pytest.param(b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n", id="double-space"),
        pytest.param(b"HTTP/1.1 200 OK\r\n folded\r\nContent-Length: 0\r\n\r\n", id="obs-fold"),
        pytest.param(b"HTTP/1.1 200 OK\r\nbad header\r\nContent-Length: 0\r\n\r\n", id="no-colon"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\x01garbage\r\n\r\n", id="garbage"),
    ],
)
def test_malformed_responses(data: bytes) -> None:
    with pytest.raises(MalformedResponse):
        read_response(data)


def test_response_over_the_limit() -> None:
    reader = ResponseReader(limit=100)
    reader.feed_data(b"x" * 100)
    with pytest.raises(MalformedResponse, match="larger than 100"):
        reader.feed_data(b"x")
    with pytest.raises(MalformedResponse):
        reader.feed_eof()


def test_response_outcome_is_final() -> None:
    reader = ResponseReader()
    reader.feed_data(encode_response(200, b""))
    first = reader.feed_eof()
    assert reader.feed_eof() is first
    with pytest.raises(RuntimeError):
        reader.feed_data(b"more")


@given(
    st.sampled_from([200, 400, 401, 404, 500, 501, 503]),
    st.binary(max_size=2000),
    st.integers(1, 300),
)
def test_response_round_trip(status: int, body: bytes, chunk: int) -> None:
    response = read_response(encode_response(status, body), chunk=chunk)
    assert (response.status, response.body) == (status, body)


@given(st.binary(max_size=200))
def test_response_fuzz_only_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedResponse):
        read_response(data)


# --- the reader's work is linear in its input -----------------------------------------------


class CountingBuffer(bytearray):
    """A buffer that counts the bytes the reader looks at (indexing and searching)."""

    examined = 0

    def __getitem__(self, index: Any) -> Any:
        self.examined += 1
        return super().__getitem__(index)

    def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
        self.examined += len(self) - (start or 0)
        return super().find(sub, start, end)


def counted_reader(limit: int = 4096) -> tuple[RequestReader, CountingBuffer]:
    reader = RequestReader(limit)
    buffer = CountingBuffer()
    reader._buf = buffer  # white-box: count the work without timing it
    return reader, buffer


@pytest.mark.parametrize("piece", [b"\n", b"a", b"\r\n", b"\n\r", b"x\n", b"\r", b"a:b\r\n"])
def test_one_piece_at_a_time_up_to_the_limit_is_linear_work(piece: bytes) -> None:
    reader, buffer = counted_reader()

    def feed_until_refused() -> None:
        for _ in range(4096):
            reader.feed_data(piece)

    with pytest.raises(InvalidRequest, match="request too big"):
        feed_until_refused()
    assert reader.buffered == 4096
    # Re-scanning the buffer at every piece would examine about 4096^2/2 = 8 million bytes.
    assert buffer.examined <= 8 * 4096
    assert reader.head_parses <= 1


def test_head_is_parsed_only_when_its_end_arrives() -> None:
    reader, buffer = counted_reader()
    head = REF_RENEW[:-2]  # all but the final empty line
    for i in range(len(head)):
        assert reader.feed_data(head[i : i + 1]) is None
        assert reader.head_parses == 0
    assert reader.feed_data(b"\r") is None
    assert reader.head_parses == 0
    assert reader.feed_data(b"\n") == renew()
    assert reader.head_parses == 1
    assert buffer.examined <= 8 * len(REF_RENEW)


def test_unparsable_head_is_parsed_once_then_waits_cheaply() -> None:
    reader, buffer = counted_reader()
    assert reader.feed_data(b"NOT A REQUEST\n\n") is None
    for _ in range(1000):
        assert reader.feed_data(b"\n\n") is None
    assert reader.head_parses == 1
    assert buffer.examined <= 8 * 2016
    assert one(b"NOT A REQUEST\n\n" + b"\n\n" * 1000) == (
        RequestClosedPrematurely,
        "closed prematurely",
    )


class ReparsingReader(RequestReader):
    """The reader as it was: the whole buffer is parsed again after every piece."""

    def _head_end_arrived(self) -> bool:
        return True

    @property
    def _unparsable(self) -> bool:
        return False

    @_unparsable.setter
    def _unparsable(self, value: bool) -> None:
        pass


def test_the_reparsing_model_parses_after_every_piece() -> None:
    reader = ReparsingReader()
    for i in range(len(REF_RENEW) - 1):
        assert reader.feed_data(REF_RENEW[i : i + 1]) is None
    assert reader.feed_data(REF_RENEW[-1:]) == renew()
    assert reader.head_parses == len(REF_RENEW)


def steps(reader: RequestReader, chunks: Sequence[bytes]) -> list[Outcome]:
    """What each feed and the final EOF give: None, the request, or the error's (type, reason)."""
    out: list[Outcome] = []
    for chunk in [*chunks, None]:
        try:
            out.append(reader.feed_eof() if chunk is None else reader.feed_data(chunk))
        except ParseControlRequestError as exc:
            out.append((type(exc), exc.reason))
    return out


@given(
    st.sampled_from([b"", b"\n", b"\r\n\n", b"\r", b"\n\r", b"\r\r\n"]),
    mutated(),
    st.lists(st.integers(0, 400), max_size=12),
    st.sampled_from([64, 200, 4096]),
)
def test_linear_reader_answers_as_reparsing_after_every_piece(
    prefix: bytes, data: bytes, cuts: list[int], limit: int
) -> None:
    chunks = split(prefix + data, cuts)
    assert steps(RequestReader(limit), chunks) == steps(ReparsingReader(limit), chunks)
