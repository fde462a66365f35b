"""Test-side helpers that lay out SCION bytes field by field from the draft.

Independent of snaptun's encoder: every field is shifted and packed here by
hand, so a vector built with these helpers checks the codec, not itself.
"""

from __future__ import annotations


def be(value: int, size: int) -> bytes:
    """``value`` as ``size`` big-endian bytes."""
    return value.to_bytes(size, "big")


def rfc1071(data: bytes) -> int:
    """The Internet checksum, word by word as RFC 1071 describes it."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def common_header(
    *,
    next_hdr: int,
    hdr_len_bytes: int,
    payload_len: int,
    path_type: int,
    dt: int = 0,
    dl: int = 0,
    st: int = 0,
    sl: int = 0,
    version: int = 0,
    traffic_class: int = 0,
    flow_id: int = 1,
) -> bytes:
    """The 12-byte common header of the draft's figure "SCION common header"."""
    return (
        be(version << 28 | traffic_class << 20 | flow_id, 4)  # Version | TrafficClass | FlowID
        + be(next_hdr, 1)  # NextHdr
        + be(hdr_len_bytes // 4, 1)  # HdrLen, in 4-byte units
        + be(payload_len, 2)  # PayloadLen
        + be(path_type, 1)  # PathType
        + be(dt << 6 | dl << 4 | st << 2 | sl, 1)  # DT | DL | ST | SL
        + be(0, 2)  # RSV
    )


def isd_as(isd: int, asn: int) -> bytes:
    """ISD (16 bits) followed by AS (48 bits)."""
    return be(isd, 2) + be(asn, 6)


def meta_header(curr_inf: int, curr_hf: int, seg0: int, seg1: int = 0, seg2: int = 0) -> bytes:
    """PathMetaHdr: CurrINF(2) CurrHF(6) RSV(6) Seg0Len(6) Seg1Len(6) Seg2Len(6)."""
    return be(curr_inf << 30 | curr_hf << 24 | seg0 << 12 | seg1 << 6 | seg2, 4)


def info_field(*, peering: bool = False, cons_dir: bool = False, acc: int, timestamp: int) -> bytes:
    """Info field: RSV(6) P C | RSV(8) | Acc(16) | Timestamp(32)."""
    return be(int(peering) << 1 | int(cons_dir), 1) + be(0, 1) + be(acc, 2) + be(timestamp, 4)


def hop_field(
    *,
    exp_time: int,
    ingress: int,
    egress: int,
    mac: bytes,
    i_flag: bool = False,
    e_flag: bool = False,
) -> bytes:
    """Hop field: RSV(6) I E | ExpTime(8) | ConsIngress(16) | ConsEgress(16) | MAC(48)."""
    assert len(mac) == 6
    flags = int(i_flag) << 1 | int(e_flag)
    return be(flags, 1) + be(exp_time, 1) + be(ingress, 2) + be(egress, 2) + mac


def pseudo_header(address_header: bytes, upper_layer_length: int, next_hdr: int) -> bytes:
    """Pseudo-header: address header, 32-bit upper-layer length, 24 zero bits, next header."""
    return address_header + be(upper_layer_length, 4) + be(0, 3) + be(next_hdr, 1)
