"""The packet policy, one test per row of its table in docs/GATEWAY.md, and its SCMP answer."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snaptun.core.addressing import EndhostAddress
from snaptun.scion import (
    EMPTY_PATH,
    ParameterProblemCode,
    ScionDecodeError,
    ScmpParameterProblem,
    Violation,
    build_parameter_problem,
    check_tunnel_packet,
    decode,
    decode_scmp,
    may_answer_with_scmp_error,
)

from ._wire import (
    be,
    common_header,
    hop_field,
    info_field,
    isd_as,
    meta_header,
    pseudo_header,
    rfc1071,
)

AS_110 = 0xFF00_0000_0110
ASSIGNED = EndhostAddress.parse("1-ff00:0:110,10.0.0.2")
ASSIGNED_V6 = EndhostAddress.parse("1-ff00:0:110,2001:db8::2")
GATEWAY = EndhostAddress.parse("1-ff00:0:110,192.0.2.1")

PATH = (
    meta_header(curr_inf=0, curr_hf=0, seg0=2)
    + info_field(cons_dir=True, acc=0, timestamp=1_700_000_000)
    + hop_field(exp_time=63, ingress=0, egress=1, mac=bytes(6))
    + hop_field(exp_time=63, ingress=2, egress=0, mac=bytes(6))
)
PAYLOAD = b"\x00" * 20


def packet(
    *,
    src: bytes = bytes([10, 0, 0, 2]),
    sl: int = 0,
    st: int = 0,
    src_isd: int = 1,
    path_type: int = 1,
    path: bytes = PATH,
    payload: bytes = PAYLOAD,
    payload_len: int | None = None,
    version: int = 0,
) -> bytes:
    """A packet from ``src`` (IPv4 10.0.0.2 by default) to 2-ff00:0:220,192.0.2.7."""
    addr = (
        isd_as(2, 0xFF00_0000_0220)  # DstISD, DstAS
        + isd_as(src_isd, AS_110)  # SrcISD, SrcAS
        + bytes([192, 0, 2, 7])  # DstHostAddr, IPv4
        + src  # SrcHostAddr
    )
    return (
        common_header(
            version=version,
            next_hdr=17,
            hdr_len_bytes=12 + len(addr) + len(path),
            payload_len=len(payload) if payload_len is None else payload_len,
            path_type=path_type,
            st=st,
            sl=sl,
        )
        + addr
        + path
        + payload
    )


VALID = packet()
PATH_OFFSET = 36  # 12 common + 16 ISD-AS pair + 4 + 4 host bytes


def test_valid_packet_passes() -> None:
    assert check_tunnel_packet(VALID, ASSIGNED) is None
    assert check_tunnel_packet(memoryview(VALID), ASSIGNED) is None
    assert decode(VALID).source == ASSIGNED


def test_valid_ipv6_source_passes() -> None:
    raw = packet(src=ASSIGNED_V6.ip.packed, sl=3)
    assert check_tunnel_packet(raw, ASSIGNED_V6) is None


def test_trailing_bytes_are_a_packet_size_violation_as_in_the_codec() -> None:
    # The reference forwards them; ours refuses them, as decode() does (one packet, exactly).
    raw = VALID + b"extra"
    _assert_violation(raw, Violation.INVALID_PACKET_SIZE, 19, 12 + 16 + 8)
    with pytest.raises(ScionDecodeError):
        decode(raw)


@given(
    cut=st.integers(min_value=0, max_value=len(VALID)),
    extra=st.binary(max_size=8),
    flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), max_size=3),
)
def test_policy_and_codec_agree(cut: int, extra: bytes, flips: list[tuple[int, int]]) -> None:
    """A packet passes the policy exactly when it decodes with the tunnel's source and path."""
    raw = bytearray(VALID[:cut] + extra)
    for at, mask in flips:
        if at < len(raw):
            raw[at] ^= mask
    passes = check_tunnel_packet(bytes(raw), ASSIGNED) is None
    try:
        decoded = decode(bytes(raw))
    except ScionDecodeError:
        decodes = False
    else:
        decodes = (
            decoded.address.source == ASSIGNED and type(decoded.path).__name__ == "StandardPath"
        )
    assert passes == decodes


def _assert_violation(raw: bytes, kind: Violation, code: int, pointer: int) -> None:
    violation = check_tunnel_packet(raw, ASSIGNED)
    assert violation is not None
    assert violation.kind is kind
    assert violation.code == code
    assert violation.pointer == pointer
    assert violation.reason == kind.value
    assert violation.detail


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(VALID[:11], id="short"),
        pytest.param(packet(version=1), id="version"),
        pytest.param(VALID[:5] + be(8, 1) + VALID[6:], id="hdrlen-below-9"),
    ],
)
def test_common_header_does_not_parse(raw: bytes) -> None:
    _assert_violation(raw, Violation.INVALID_COMMON_HEADER, 16, 0)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(VALID[:30], id="truncated"),
        # DL=3 (16-byte destination) does not fit in HdrLen=9 (36 bytes).
        pytest.param(
            VALID[:5] + be(9, 1) + VALID[6:9] + be(0x30, 1) + VALID[10:], id="beyond-hdrlen"
        ),
    ],
)
def test_address_header_does_not_parse(raw: bytes) -> None:
    _assert_violation(raw, Violation.INVALID_ADDRESS_HEADER, 32, 12)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(packet(src=bytes([10, 0, 0, 3])), id="other-host"),
        pytest.param(packet(src_isd=2), id="other-isd"),
        pytest.param(packet(src=be(0x0002, 2) + be(0, 2), st=1), id="service-source"),
        pytest.param(packet(src=bytes(12) + bytes([10, 0, 0, 2]), sl=3), id="ipv6-family"),
    ],
)
def test_source_address_is_not_the_tunnels(raw: bytes) -> None:
    _assert_violation(raw, Violation.INVALID_SOURCE_ADDRESS, 33, 20)


@pytest.mark.parametrize("path_type", [0, 2, 3, 4, 200])
def test_path_type_is_not_standard(path_type: int) -> None:
    raw = packet(path_type=path_type, path=b"" if path_type == 0 else PATH)
    _assert_violation(raw, Violation.UNKNOWN_PATH_TYPE, 20, 8)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(packet(path=meta_header(0, 0, 3) + PATH[4:]), id="length-mismatch"),
        pytest.param(packet(path=PATH + bytes(4)), id="extra-path-bytes"),
        pytest.param(packet(path=meta_header(0, 0, 0) + PATH[4:]), id="no-segments"),
        pytest.param(packet(path=meta_header(0, 2, 2) + PATH[4:]), id="currhf"),
        pytest.param(packet(path=meta_header(1, 0, 2) + PATH[4:]), id="currinf"),
        pytest.param(packet(path=b""), id="no-meta-header"),
        pytest.param(VALID[: PATH_OFFSET + 10], id="truncated-path"),
    ],
)
def test_path_does_not_parse_or_length_mismatch(raw: bytes) -> None:
    _assert_violation(raw, Violation.INVALID_PATH, 48, PATH_OFFSET)


def test_path_offset_follows_address_lengths() -> None:
    raw = packet(src=ASSIGNED_V6.ip.packed, sl=3, path=PATH + bytes(12))
    violation = check_tunnel_packet(raw, ASSIGNED_V6)
    assert violation is not None
    assert violation.kind is Violation.INVALID_PATH
    assert violation.pointer == PATH_OFFSET + 12


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(VALID[:-1], id="one-byte-short"),
        pytest.param(packet(payload=b"", payload_len=1), id="no-payload"),
    ],
)
def test_payload_truncated(raw: bytes) -> None:
    _assert_violation(raw, Violation.INVALID_PACKET_SIZE, 19, PATH_OFFSET)


def test_checks_run_in_gateway_order() -> None:
    # Wrong source and wrong path type and truncated payload: the source is reported.
    raw = packet(src=bytes([10, 0, 0, 9]), path_type=2, payload_len=99)
    violation = check_tunnel_packet(raw, ASSIGNED)
    assert violation is not None
    assert violation.kind is Violation.INVALID_SOURCE_ADDRESS
    # Bad path and truncated payload: the path is reported.
    raw = packet(path=PATH + bytes(4), payload_len=99)
    violation = check_tunnel_packet(raw, ASSIGNED)
    assert violation is not None
    assert violation.kind is Violation.INVALID_PATH


def test_parameter_problem_answers_the_offending_source() -> None:
    offending = packet(path=PATH + bytes(4))
    answer = build_parameter_problem(offending, 48, PATH_OFFSET, GATEWAY, ASSIGNED)
    parsed = decode(answer)
    assert parsed.next_header == 202
    assert parsed.path == EMPTY_PATH
    assert parsed.source == EndhostAddress(ASSIGNED.isd_as, GATEWAY.ip)
    assert parsed.destination == ASSIGNED
    assert decode_scmp(parsed.payload, parsed.address) == ScmpParameterProblem(
        ParameterProblemCode.INVALID_PATH, PATH_OFFSET, offending
    )


def test_parameter_problem_bytes_and_checksum() -> None:
    offending = b"\x01\x02\x03"
    answer = build_parameter_problem(offending, 16, 0, GATEWAY, ASSIGNED)
    addr = (
        isd_as(1, AS_110)  # DstISD, DstAS: the client's
        + isd_as(1, AS_110)  # SrcISD, SrcAS: the client's ISD-AS too
        + bytes([10, 0, 0, 2])  # DstHostAddr: the tunnel's assigned address
        + bytes([192, 0, 2, 1])  # SrcHostAddr: the gateway
    )
    scmp_zero_sum = be(4, 1) + be(16, 1) + be(0, 2) + be(0, 2) + be(0, 2) + offending
    checksum = rfc1071(pseudo_header(addr, len(scmp_zero_sum), 202) + scmp_zero_sum)
    scmp = scmp_zero_sum[:2] + be(checksum, 2) + scmp_zero_sum[4:]
    expected = (
        common_header(next_hdr=202, hdr_len_bytes=36, payload_len=len(scmp), path_type=0)
        + addr
        + scmp
    )
    assert answer == expected


def test_unparsable_offending_packet_is_answered_to_the_client() -> None:
    for offending in (b"", b"garbage", packet(src=be(2, 2) + be(0, 2), st=1)):
        parsed = decode(build_parameter_problem(offending, 16, 0, GATEWAY, ASSIGNED))
        assert parsed.destination == ASSIGNED


def test_wrong_source_is_answered_to_that_source() -> None:
    offending = packet(src=bytes([10, 0, 0, 9]))
    parsed = decode(build_parameter_problem(offending, 33, 20, GATEWAY, ASSIGNED))
    assert parsed.destination == EndhostAddress(ASSIGNED.isd_as, ipaddress.IPv4Address("10.0.0.9"))


@pytest.mark.parametrize(("client", "room"), [(ASSIGNED, 1232 - 44), (ASSIGNED_V6, 1232 - 56)])
def test_quote_is_truncated_to_fit(client: EndhostAddress, room: int) -> None:
    offending = bytes(range(256)) * 8
    answer = build_parameter_problem(offending, 19, 36, GATEWAY, client)
    assert len(answer) == 1232
    parsed = decode(answer)
    message = decode_scmp(parsed.payload, parsed.address)
    assert isinstance(message, ScmpParameterProblem)
    assert message.quote == offending[:room]


def test_small_max_size() -> None:
    answer = build_parameter_problem(VALID, 16, 0, GATEWAY, ASSIGNED, max_size=50)
    assert len(answer) == 50
    with pytest.raises(ValueError, match="no room"):
        build_parameter_problem(VALID, 16, 0, GATEWAY, ASSIGNED, max_size=43)


def test_scmp_errors_are_not_answered() -> None:
    answer = build_parameter_problem(VALID, 16, 0, GATEWAY, ASSIGNED)
    assert not may_answer_with_scmp_error(answer)
    assert may_answer_with_scmp_error(VALID)
    assert may_answer_with_scmp_error(b"junk")
