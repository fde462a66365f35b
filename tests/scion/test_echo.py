"""SCMP Echo: the reply to a request, checked byte by byte against hand-laid wire bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snaptun.core.addressing import EndhostAddress
from snaptun.scion import (
    EMPTY_PATH,
    PLACEHOLDER_PATH,
    AddressHeader,
    HopField,
    InfoField,
    NextHeader,
    RawPath,
    ScionDecodeError,
    ScionPacket,
    ScmpEchoReply,
    ScmpEchoRequest,
    StandardPath,
    decode,
    decode_scmp,
    echo_reply,
    echo_request,
    encode,
    encode_scmp,
)
from tests.scion._wire import (
    be,
    common_header,
    hop_field,
    info_field,
    isd_as,
    meta_header,
    pseudo_header,
    rfc1071,
)

CLIENT = EndhostAddress.parse("1-ff00:0:110,10.0.0.5")
GATEWAY = EndhostAddress.parse("1-ff00:0:110,10.0.0.1")
CLIENT6 = EndhostAddress.parse("1-ff00:0:110,fd00::5")
AS_110 = isd_as(1, 0xFF00_0000_0110)
MAC_A, MAC_B, MAC_C = b"\xaa" * 6, b"\xbb" * 6, b"\xcc" * 6


def _scmp(type_: int, identifier: int, sequence: int, data: bytes, address: bytes) -> bytes:
    """An echo message with its checksum, laid out by hand."""
    body = be(type_, 1) + be(0, 1) + be(0, 2) + be(identifier, 2) + be(sequence, 2) + data
    checksum = rfc1071(pseudo_header(address, len(body), 202) + body)
    return body[:2] + be(checksum, 2) + body[4:]


def _packet(address: bytes, path: bytes, scmp: bytes, *, flow_id: int = 0x12345) -> bytes:
    header_len = 12 + len(address) + len(path)
    return (
        common_header(
            next_hdr=202,
            hdr_len_bytes=header_len,
            payload_len=len(scmp),
            path_type=1,
            traffic_class=0x2E,
            flow_id=flow_id,
        )
        + address
        + path
        + scmp
    )


def test_the_reply_swaps_addresses_reverses_the_path_and_echoes_the_data() -> None:
    # A two-segment path (2 + 1 hops), the packet at the second segment's hop.
    request_address = AS_110 + AS_110 + bytes([10, 0, 0, 1]) + bytes([10, 0, 0, 5])
    request_path = (
        meta_header(1, 2, 2, 1)
        + info_field(cons_dir=False, acc=0x1111, timestamp=100)
        + info_field(peering=True, cons_dir=True, acc=0x2222, timestamp=200)
        + hop_field(exp_time=1, ingress=0, egress=11, mac=MAC_A)
        + hop_field(exp_time=2, ingress=12, egress=0, mac=MAC_B, e_flag=True)
        + hop_field(exp_time=3, ingress=0, egress=13, mac=MAC_C)
    )
    request = _packet(
        request_address, request_path, _scmp(128, 0xBEEF, 7, b"ping data", request_address)
    )

    reply_address = AS_110 + AS_110 + bytes([10, 0, 0, 5]) + bytes([10, 0, 0, 1])
    reply_path = (
        meta_header(0, 0, 1, 2)  # segments and hops reversed, CurrINF/CurrHF from the other end
        + info_field(peering=True, cons_dir=False, acc=0x2222, timestamp=200)
        + info_field(cons_dir=True, acc=0x1111, timestamp=100)
        + hop_field(exp_time=3, ingress=0, egress=13, mac=MAC_C)
        + hop_field(exp_time=2, ingress=12, egress=0, mac=MAC_B, e_flag=True)
        + hop_field(exp_time=1, ingress=0, egress=11, mac=MAC_A)
    )
    expected = _packet(
        reply_address, reply_path, _scmp(129, 0xBEEF, 7, b"ping data", reply_address)
    )
    assert echo_reply(request) == expected


def test_a_request_built_by_echo_request_is_answered() -> None:
    request = echo_request(CLIENT6, GATEWAY, 1, 65535, b"x" * 100)
    sent = decode(request)
    assert sent.path == PLACEHOLDER_PATH
    assert decode_scmp(sent.payload, sent.address) == ScmpEchoRequest(1, 65535, b"x" * 100)
    reply = decode(echo_reply(request))
    assert (reply.source, reply.destination) == (GATEWAY, CLIENT6)
    assert reply.path == PLACEHOLDER_PATH.reversed()
    assert decode_scmp(reply.payload, reply.address) == ScmpEchoReply(1, 65535, b"x" * 100)


def test_an_empty_path_stays_empty() -> None:
    reply = decode(echo_reply(echo_request(CLIENT, GATEWAY, 3, 4, path=EMPTY_PATH)))
    assert reply.path == EMPTY_PATH
    assert (reply.source, reply.destination) == (GATEWAY, CLIENT)


@settings(max_examples=50, deadline=None)
@given(
    segs=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    cons=st.lists(st.booleans(), min_size=3, max_size=3),
    at=st.integers(0, 100),
)
def test_reversing_twice_gives_the_path_back(segs: list[int], cons: list[bool], at: int) -> None:
    path = StandardPath.from_segments(
        [
            (
                InfoField(cons_dir=cons[i], acc=i),
                [HopField(cons_ingress=i, cons_egress=h) for h in range(n)],
            )
            for i, n in enumerate(segs)
        ],
        curr_inf=at % len(segs),
        curr_hf=at % sum(segs),
    )
    back = path.reversed()
    assert back.reversed() == path
    assert sorted(n for n in back.seg_lens if n) == sorted(segs)
    assert [info.cons_dir for info in back.info_fields] == [
        not c for c in reversed(cons[: len(segs)])
    ]


def _udp_packet() -> bytes:
    address = AddressHeader.between(CLIENT, GATEWAY)
    return encode(ScionPacket(address, PLACEHOLDER_PATH, NextHeader.UDP, bytes(16)))


def _scmp_packet(
    message: ScmpEchoReply | ScmpEchoRequest, path: object = PLACEHOLDER_PATH
) -> bytes:
    address = AddressHeader.between(CLIENT, GATEWAY)
    payload = encode_scmp(message, address)
    return encode(ScionPacket(address, path, NextHeader.SCMP, payload))  # type: ignore[arg-type]


def _bad_checksum() -> bytes:
    packet = bytearray(echo_request(CLIENT, GATEWAY, 1, 1, b"abc"))
    packet[-1] ^= 0xFF
    return bytes(packet)


@pytest.mark.parametrize(
    ("request_", "part"),
    [
        pytest.param(_udp_packet(), "scmp", id="udp"),
        pytest.param(_scmp_packet(ScmpEchoReply(1, 1)), "scmp", id="echo-reply"),
        pytest.param(_bad_checksum(), "scmp", id="bad-checksum"),
        pytest.param(
            _scmp_packet(ScmpEchoRequest(1, 1), RawPath(2, bytes(8))), "path", id="onehop"
        ),
        pytest.param(b"\x00" * 20, "common_header", id="garbage"),
    ],
)
def test_anything_but_an_echo_request_is_refused(request_: bytes, part: str) -> None:
    with pytest.raises(ScionDecodeError) as refused:
        echo_reply(request_)
    assert refused.value.part == part
