"""Tests of the proto3 control messages (test vectors of the reference's encoding)."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snaptun.core.addressing import EndhostAddress, IsdAs
from snaptun.core.messages import (
    AddressRange,
    InvalidAddressRange,
    MessageDecodeError,
    decode_address_assign_request,
    decode_address_assign_response,
    decode_session_renewal_response,
    encode_address_assign_request,
    encode_address_assign_response,
    encode_session_renewal_response,
)
from snaptun.errors import SnaptunError

IA = 0x0001FF0000000110  # 1-ff00:0:110

V4 = AddressRange(IA, 4, 32, bytes([192, 168, 0, 1]))
V6 = AddressRange(IA, 6, 128, ipaddress.IPv6Address("2001:db8::1").packed)

VECTORS = [
    pytest.param([V4], "0a12089082808080e07f100418202204c0a80001", id="ipv4"),
    pytest.param(
        [V6], "0a1f089082808080e07f1006188001221020010db8000000000000000000000001", id="ipv6"
    ),
    pytest.param([], "", id="any"),
]


# --- test vectors ------------------------------------------------------------------------


@pytest.mark.parametrize(("ranges", "hexdata"), VECTORS)
def test_assign_request_vector_encodes(ranges: list[AddressRange], hexdata: str) -> None:
    assert encode_address_assign_request(ranges).hex() == hexdata


@pytest.mark.parametrize(("ranges", "hexdata"), VECTORS)
def test_assign_request_vector_decodes(ranges: list[AddressRange], hexdata: str) -> None:
    assert decode_address_assign_request(bytes.fromhex(hexdata)) == tuple(ranges)


@pytest.mark.parametrize(("ranges", "hexdata"), VECTORS)
def test_assign_response_shares_the_wire_form(ranges: list[AddressRange], hexdata: str) -> None:
    assert encode_address_assign_response(ranges).hex() == hexdata
    assert decode_address_assign_response(bytes.fromhex(hexdata)) == tuple(ranges)


def test_session_renewal_vector() -> None:
    assert encode_session_renewal_response(1767225600).hex() == "0880f2d6ca06"
    assert decode_session_renewal_response(bytes.fromhex("0880f2d6ca06")) == 1767225600


def test_session_renewal_zero_is_empty() -> None:
    assert encode_session_renewal_response(0) == b""
    assert decode_session_renewal_response(b"") == 0


def test_vector_from_text_address() -> None:
    addr = EndhostAddress.parse("1-ff00:0:110,192.168.0.1")
    assert AddressRange.from_endhost(addr) == V4
    assert AddressRange.from_endhost(EndhostAddress.parse("1-ff00:0:110,2001:db8::1")) == V6


# --- round trips ----------------------------------------------------------------------------

ranges_st = st.builds(
    AddressRange,
    isd_as=st.integers(0, 2**64 - 1),
    ip_version=st.integers(0, 2**32 - 1),
    prefix_length=st.integers(0, 2**32 - 1),
    address=st.binary(max_size=40),
)


@given(st.lists(ranges_st, max_size=5))
def test_assign_request_round_trip(ranges: list[AddressRange]) -> None:
    assert decode_address_assign_request(encode_address_assign_request(ranges)) == tuple(ranges)


@given(st.lists(ranges_st, max_size=5))
def test_assign_response_round_trip(ranges: list[AddressRange]) -> None:
    data = encode_address_assign_response(ranges)
    assert decode_address_assign_response(data) == tuple(ranges)


@given(st.integers(0, 2**64 - 1))
def test_session_renewal_round_trip(valid_until: int) -> None:
    assert decode_session_renewal_response(encode_session_renewal_response(valid_until)) == (
        valid_until
    )


endhosts_st = st.builds(
    EndhostAddress,
    isd_as=st.builds(IsdAs, st.integers(1, 2**16 - 1), st.integers(1, 2**48 - 1)),
    ip=st.ip_addresses(),
)


@given(endhosts_st)
def test_endhost_round_trip(addr: EndhostAddress) -> None:
    rng = AddressRange.from_endhost(addr)
    assert rng.to_endhost() == addr
    assert rng.to_request() == (addr.isd_as, ipaddress.ip_network(addr.ip))
    assert decode_address_assign_response(encode_address_assign_response([rng])) == (rng,)


# --- garbage ---------------------------------------------------------------------------------


@given(st.binary(max_size=64))
def test_garbage_raises_only_decode_error(data: bytes) -> None:
    for decode in (
        decode_address_assign_request,
        decode_address_assign_response,
        decode_session_renewal_response,
    ):
        with contextlib.suppress(MessageDecodeError):
            decode(data)


@pytest.mark.parametrize(
    "hexdata",
    [
        "0a",  # tag without length
        "0a05",  # length beyond the end
        "0a0208",  # truncated nested varint
        "08ffffffffffffffffffff01",  # varint longer than 10 bytes
        "07",  # wire type 7 does not exist
        "00",  # field number 0
    ],
)
def test_malformed_request_raises(hexdata: str) -> None:
    with pytest.raises(MessageDecodeError):
        decode_address_assign_request(bytes.fromhex(hexdata))


def test_truncated_renewal_raises() -> None:
    with pytest.raises(MessageDecodeError):
        decode_session_renewal_response(bytes.fromhex("0880f2"))


def test_unknown_fields_are_skipped() -> None:
    data = bytes.fromhex("0a12089082808080e07f100418202204c0a80001") + bytes.fromhex("7a0161")
    assert decode_address_assign_request(data) == (V4,)


def test_error_classes() -> None:
    for cls in (MessageDecodeError, InvalidAddressRange):
        assert issubclass(cls, ValueError)
        assert issubclass(cls, SnaptunError)


# --- validation of requested / assigned ranges ----------------------------------------------


def test_to_request_ipv4() -> None:
    assert V4.to_request() == (IsdAs(1, 0xFF0000000110), ipaddress.ip_network("192.168.0.1/32"))


def test_to_request_ipv6() -> None:
    assert V6.to_request() == (IsdAs(1, 0xFF0000000110), ipaddress.ip_network("2001:db8::1/128"))


@pytest.mark.parametrize(
    "rng",
    [
        pytest.param(AddressRange(IA, 5, 32, bytes(4)), id="version-5"),
        pytest.param(AddressRange(IA, 0, 32, bytes(4)), id="version-0"),
        pytest.param(AddressRange(IA, 4, 24, bytes(4)), id="v4-prefix-24"),
        pytest.param(AddressRange(IA, 4, 0, bytes(4)), id="v4-prefix-0"),
        pytest.param(AddressRange(IA, 4, 128, bytes(4)), id="v4-prefix-128"),
        pytest.param(AddressRange(IA, 6, 32, bytes(16)), id="v6-prefix-32"),
        pytest.param(AddressRange(IA, 6, 64, bytes(16)), id="v6-prefix-64"),
        pytest.param(AddressRange(IA, 4, 32, bytes(16)), id="v4-16-bytes"),
        pytest.param(AddressRange(IA, 4, 32, bytes(3)), id="v4-3-bytes"),
        pytest.param(AddressRange(IA, 6, 128, bytes(4)), id="v6-4-bytes"),
        pytest.param(AddressRange(IA, 6, 128, b""), id="v6-empty"),
        pytest.param(AddressRange(0, 4, 32, bytes(4)), id="wildcard"),
        pytest.param(AddressRange(0x0000FF0000000110, 4, 32, bytes(4)), id="isd-0"),
        pytest.param(AddressRange(0x0001000000000000, 4, 32, bytes(4)), id="as-0"),
        pytest.param(AddressRange(0x0001000000000000, 6, 128, bytes(16)), id="v6-as-0"),
    ],
)
def test_to_request_refuses(rng: AddressRange) -> None:
    with pytest.raises(InvalidAddressRange):
        rng.to_request()
    with pytest.raises(InvalidAddressRange):
        rng.to_endhost()


def test_to_endhost() -> None:
    assert V4.to_endhost() == EndhostAddress.parse("1-ff00:0:110,192.168.0.1")


def test_from_endhost_keeps_wildcard() -> None:
    rng = AddressRange.from_endhost(EndhostAddress(IsdAs(0, 0), ipaddress.ip_address("0.0.0.0")))
    assert rng == AddressRange(0, 4, 32, bytes(4))
    assert encode_address_assign_request([rng]).hex() == "0a0a10041820220400000000"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"isd_as": -1},
        {"isd_as": 2**64},
        {"ip_version": 2**32},
        {"prefix_length": -1},
    ],
)
def test_field_widths_are_checked(kwargs: dict[str, int]) -> None:
    fields: dict[str, int] = {"isd_as": IA, "ip_version": 4, "prefix_length": 32} | kwargs
    with pytest.raises(ValueError, match="does not fit"):
        AddressRange(address=bytes(4), **fields)


@pytest.mark.parametrize("value", [-1, 2**64])
def test_valid_until_width_is_checked(value: int) -> None:
    with pytest.raises(ValueError, match="uint64"):
        encode_session_renewal_response(value)
