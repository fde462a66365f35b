"""Hand-built byte vectors against decode/encode, and decode errors by part."""

from __future__ import annotations

import ipaddress

import pytest

from snaptun.core.addressing import IsdAs
from snaptun.scion import (
    EMPTY_PATH,
    AddressHeader,
    DecodePart,
    HopField,
    InfoField,
    NextHeader,
    PathType,
    RawHostAddress,
    RawPath,
    ScionDecodeError,
    ScionPacket,
    ServiceAddress,
    StandardPath,
    decode,
    encode,
)

from ._wire import be, common_header, hop_field, info_field, isd_as, meta_header

AS_110 = 0xFF00_0000_0110
AS_220 = 0xFF00_0000_0220

# Address header: IPv4 10.0.0.2 in 1-ff00:0:110 to IPv4 192.0.2.7 in 2-ff00:0:220.
ADDR_V4 = (
    isd_as(2, AS_220)  # DstISD, DstAS
    + isd_as(1, AS_110)  # SrcISD, SrcAS
    + bytes([192, 0, 2, 7])  # DstHostAddr (DT=0, DL=0: IPv4)
    + bytes([10, 0, 0, 2])  # SrcHostAddr (ST=0, SL=0: IPv4)
)
# Standard path: one segment of two hops, current INF 0, current HF 1.
PATH_2HOPS = (
    meta_header(curr_inf=0, curr_hf=1, seg0=2)
    + info_field(cons_dir=True, acc=0x1234, timestamp=0x6553_F100)
    + hop_field(exp_time=63, ingress=0, egress=41, mac=bytes.fromhex("010203040506"))
    + hop_field(exp_time=63, ingress=17, egress=0, mac=bytes.fromhex("a1a2a3a4a5a6"), i_flag=True)
)
PAYLOAD = b"hello, scion"
HDR_LEN = 12 + len(ADDR_V4) + len(PATH_2HOPS)
VECTOR = (
    common_header(
        next_hdr=17,
        hdr_len_bytes=HDR_LEN,
        payload_len=len(PAYLOAD),
        path_type=1,
        traffic_class=0xB8,
        flow_id=0x12345,
    )
    + ADDR_V4
    + PATH_2HOPS
    + PAYLOAD
)
EXPECTED = ScionPacket(
    address=AddressHeader(
        dst_ia=IsdAs(2, AS_220),
        src_ia=IsdAs(1, AS_110),
        dst_host=ipaddress.IPv4Address("192.0.2.7"),
        src_host=ipaddress.IPv4Address("10.0.0.2"),
    ),
    path=StandardPath(
        curr_inf=0,
        curr_hf=1,
        seg_lens=(2, 0, 0),
        info_fields=(InfoField(peering=False, cons_dir=True, acc=0x1234, timestamp=0x6553_F100),),
        hop_fields=(
            HopField(63, 0, 41, bytes.fromhex("010203040506")),
            HopField(63, 17, 0, bytes.fromhex("a1a2a3a4a5a6"), ingress_alert=True),
        ),
    ),
    next_header=NextHeader.UDP,
    payload=PAYLOAD,
    traffic_class=0xB8,
    flow_id=0x12345,
)


def test_vector_lengths_follow_the_draft() -> None:
    assert len(ADDR_V4) == 24
    assert len(PATH_2HOPS) == 4 + 8 + 2 * 12
    assert HDR_LEN == 72


def test_decode_hand_built_vector() -> None:
    assert decode(VECTOR) == EXPECTED


def test_encode_matches_hand_built_vector() -> None:
    assert encode(EXPECTED) == VECTOR


def test_decode_accepts_memoryview_and_bytearray() -> None:
    assert decode(memoryview(VECTOR)) == EXPECTED
    assert decode(bytearray(VECTOR)) == EXPECTED


def test_source_and_destination_as_endhost_addresses() -> None:
    assert str(EXPECTED.source) == "1-ff00:0:110,10.0.0.2"
    assert str(EXPECTED.destination) == "2-ff00:0:220,192.0.2.7"


def test_three_segment_path() -> None:
    path = (
        meta_header(curr_inf=2, curr_hf=5, seg0=2, seg1=1, seg2=3)
        + info_field(acc=1, timestamp=10)
        + info_field(peering=True, acc=2, timestamp=20)
        + info_field(cons_dir=True, acc=3, timestamp=30)
        + b"".join(
            hop_field(exp_time=i, ingress=i, egress=i + 1, mac=bytes([i]) * 6) for i in range(6)
        )
    )
    raw = common_header(next_hdr=253, hdr_len_bytes=36 + len(path), payload_len=0, path_type=1)
    raw += ADDR_V4 + path
    packet = decode(raw)
    assert isinstance(packet.path, StandardPath)
    assert packet.path.seg_lens == (2, 1, 3)
    assert packet.path.curr_inf == 2
    assert packet.path.curr_hf == 5
    assert [i.acc for i in packet.path.info_fields] == [1, 2, 3]
    assert packet.path.info_fields[1].peering
    assert [h.cons_egress for h in packet.path.hop_fields] == [1, 2, 3, 4, 5, 6]
    assert encode(packet) == raw


def test_ipv6_and_service_addresses() -> None:
    addr = (
        isd_as(1, AS_110)  # DstISD, DstAS
        + isd_as(1, AS_110)  # SrcISD, SrcAS
        + be(0x0002, 2)  # DstHostAddr: service number CS
        + be(0, 2)  # ... and its RSV
        + ipaddress.IPv6Address("2001:db8::7").packed  # SrcHostAddr: IPv6
    )
    raw = common_header(
        next_hdr=17,
        hdr_len_bytes=12 + len(addr),
        payload_len=1,
        path_type=0,
        dt=1,
        dl=0,
        st=0,
        sl=3,
    )
    raw += addr + b"x"
    packet = decode(raw)
    assert packet.address.dst_host == ServiceAddress(2)
    assert packet.address.src_host == ipaddress.IPv6Address("2001:db8::7")
    assert packet.destination is None
    assert packet.path == EMPTY_PATH
    assert encode(packet) == raw


def test_unassigned_host_type_is_kept_raw() -> None:
    addr = isd_as(1, 1) + isd_as(1, 2) + bytes(range(8)) + bytes([9, 9, 9, 9])
    raw = common_header(
        next_hdr=17, hdr_len_bytes=12 + len(addr), payload_len=0, path_type=0, dt=2, dl=1
    )
    raw += addr
    packet = decode(raw)
    assert packet.address.dst_host == RawHostAddress(2, bytes(range(8)))
    assert packet.source is not None
    assert encode(packet) == raw


@pytest.mark.parametrize("path_type", [PathType.ONE_HOP, PathType.EPIC, PathType.COLIBRI, 77])
def test_non_standard_paths_are_raw_bytes(path_type: int) -> None:
    path = bytes(range(40))
    raw = common_header(
        next_hdr=202, hdr_len_bytes=36 + len(path), payload_len=2, path_type=path_type
    )
    raw += ADDR_V4 + path + b"ok"
    packet = decode(raw)
    assert packet.path == RawPath(path_type, path)
    assert encode(packet) == raw


def test_reserved_bits_are_dropped() -> None:
    path = (
        meta_header(curr_inf=0, curr_hf=0, seg0=1)
        + be(0xFC, 1)  # info flags: RSV bits set, P=0, C=0
        + be(0xFF, 1)  # info RSV
        + be(5, 2)
        + be(6, 4)
        + be(0xFC, 1)  # hop flags: RSV bits set, I=0, E=0
        + bytes(11)
    )
    raw = common_header(next_hdr=17, hdr_len_bytes=36 + len(path), payload_len=0, path_type=1)
    packet = decode(raw + ADDR_V4 + path)
    assert isinstance(packet.path, StandardPath)
    assert packet.path.info_fields == (InfoField(acc=5, timestamp=6),)
    assert packet.path.hop_fields == (HopField(),)


def _with(offset: int, value: bytes, base: bytes = VECTOR) -> bytes:
    return base[:offset] + value + base[offset + len(value) :]


@pytest.mark.parametrize(
    ("raw", "part", "offset"),
    [
        pytest.param(b"", DecodePart.COMMON_HEADER, 0, id="empty"),
        pytest.param(VECTOR[:11], DecodePart.COMMON_HEADER, 0, id="short-common"),
        pytest.param(_with(0, b"\x10"), DecodePart.COMMON_HEADER, 0, id="version-1"),
        pytest.param(_with(5, be(8, 1)), DecodePart.COMMON_HEADER, 0, id="hdrlen-8"),
        pytest.param(VECTOR[:30], DecodePart.ADDRESS_HEADER, 12, id="truncated-address"),
        pytest.param(
            _with(9, be(0x33, 1), _with(5, be(10, 1))),
            DecodePart.ADDRESS_HEADER,
            12,
            id="address-past-hdrlen",
        ),
        pytest.param(VECTOR[:50], DecodePart.PATH, 36, id="truncated-path"),
        pytest.param(_with(36, meta_header(0, 0, 3)), DecodePart.PATH, 36, id="seglen-mismatch"),
        pytest.param(_with(36, meta_header(0, 2, 2)), DecodePart.PATH, 36, id="currhf-range"),
        pytest.param(_with(36, meta_header(1, 0, 2)), DecodePart.PATH, 36, id="currinf-range"),
        pytest.param(_with(36, meta_header(0, 0, 0, 2)), DecodePart.PATH, 36, id="seg0-empty"),
        pytest.param(_with(8, be(0, 1)), DecodePart.PATH, 36, id="empty-path-with-bytes"),
        pytest.param(VECTOR[:-1], DecodePart.PAYLOAD, 72, id="truncated-payload"),
        pytest.param(VECTOR + b"\x00", DecodePart.PAYLOAD, 72, id="trailing-bytes"),
    ],
)
def test_decode_errors_name_the_part(raw: bytes, part: DecodePart, offset: int) -> None:
    with pytest.raises(ScionDecodeError) as info:
        decode(raw)
    assert info.value.part is part
    assert info.value.offset == offset
    assert isinstance(info.value, ValueError)


def test_standard_path_with_segment_gap_is_invalid() -> None:
    path = (
        meta_header(curr_inf=0, curr_hf=0, seg0=1, seg1=0, seg2=1)
        + info_field(acc=0, timestamp=0) * 2
        + hop_field(exp_time=0, ingress=0, egress=0, mac=bytes(6)) * 2
    )
    raw = common_header(next_hdr=17, hdr_len_bytes=36 + len(path), payload_len=0, path_type=1)
    with pytest.raises(ScionDecodeError, match="segment 2"):
        decode(raw + ADDR_V4 + path)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(
            ScionPacket(EXPECTED.address, EMPTY_PATH, 17, b"", flow_id=1 << 20), id="flow"
        ),
        pytest.param(ScionPacket(EXPECTED.address, EMPTY_PATH, 256, b""), id="next-header"),
        pytest.param(ScionPacket(EXPECTED.address, EMPTY_PATH, 17, bytes(65536)), id="payload"),
        pytest.param(
            ScionPacket(EXPECTED.address, RawPath(1, b""), 17, b""), id="raw-standard-type"
        ),
        pytest.param(ScionPacket(EXPECTED.address, RawPath(2, b"abc"), 17, b""), id="unaligned"),
        pytest.param(
            ScionPacket(EXPECTED.address, RawPath(2, bytes(1000)), 17, b""), id="header-too-long"
        ),
        pytest.param(
            ScionPacket(
                AddressHeader(IsdAs(1, 1), IsdAs(1, 1), ServiceAddress(1 << 16), ServiceAddress(1)),
                EMPTY_PATH,
                17,
                b"",
            ),
            id="service-number",
        ),
        pytest.param(
            ScionPacket(
                AddressHeader(
                    IsdAs(1, 1), IsdAs(1, 1), RawHostAddress(0, b"abc"), ServiceAddress(1)
                ),
                EMPTY_PATH,
                17,
                b"",
            ),
            id="raw-host-length",
        ),
    ],
)
def test_encode_rejects_out_of_range_fields(packet: ScionPacket) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        encode(packet)


def test_encode_rejects_inconsistent_standard_path() -> None:
    hop = HopField()
    bad = [
        StandardPath(0, 0, (2, 0, 0), (InfoField(),), (hop,)),  # hop count
        StandardPath(0, 0, (1, 0, 0), (InfoField(), InfoField()), ()),  # info count
        StandardPath(1, 0, (1, 0, 0), (InfoField(),), (hop,)),  # CurrINF
        StandardPath(0, 64, (1, 0, 0), (InfoField(),), (hop,)),  # CurrHF
        StandardPath(0, 0, (64, 0, 0), (InfoField(),), (hop,) * 64),  # segment length
        StandardPath(0, 0, (1, 0, 0), (InfoField(),), (HopField(mac=b"short"),)),  # MAC
        StandardPath(0, 0, (1, 0, 0), (InfoField(timestamp=1 << 32),), (hop,)),  # timestamp
    ]
    for path in bad:
        with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
            encode(ScionPacket(EXPECTED.address, path, 17, b""))


def test_from_segments() -> None:
    info = InfoField(cons_dir=True)
    path = StandardPath.from_segments([(info, [HopField()] * 2), (info, [HopField()])], curr_hf=1)
    assert path.seg_lens == (2, 1, 0)
    assert len(path.info_fields) == 2
    assert path.curr_hf == 1
    with pytest.raises(ValueError, match=r"1\.\.3 segments"):
        StandardPath.from_segments([])
