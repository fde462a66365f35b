"""SCION path header: the standard path decoded, other path types kept as bytes.

The standard path (type 1) is a 4-byte meta header (CurrINF, CurrHF, three
segment lengths), one 8-byte info field per non-empty segment and one 12-byte
hop field per hop. :func:`standard_path_problem` validates a path without
building objects, so the gateway's per-packet check stays cheap.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from snaptun.scion._errors import DecodePart, ScionDecodeError
from snaptun.scion._types import Buffer

META_LEN: Final = 4
INFO_LEN: Final = 8
HOP_LEN: Final = 12
MAX_SEGMENTS: Final = 3
MAX_SEG_LEN: Final = 0x3F

_META: Final = struct.Struct("!I")
_INFO: Final = struct.Struct("!BxHI")  # flags, reserved, Acc (SegID), timestamp
_HOP: Final = struct.Struct("!BBHH6s")  # flags, ExpTime, ConsIngress, ConsEgress, MAC

_FLAG_HI: Final = 0x02  # P in info fields, I (ingress router alert) in hop fields
_FLAG_LO: Final = 0x01  # C in info fields, E (egress router alert) in hop fields


class PathType(enum.IntEnum):
    """The common header's PathType values."""

    EMPTY = 0
    SCION = 1
    ONE_HOP = 2
    EPIC = 3
    COLIBRI = 4


@dataclass(frozen=True, slots=True)
class EmptyPath:
    """The empty path (type 0): intra-AS traffic, zero bytes on the wire."""

    @property
    def path_type(self) -> int:
        return PathType.EMPTY


EMPTY_PATH: Final = EmptyPath()


@dataclass(frozen=True, slots=True)
class InfoField:
    """One path segment's info field (reserved bits are dropped and sent as zero)."""

    peering: bool = False
    cons_dir: bool = False
    acc: int = 0
    """16-bit accumulator (``SegID`` in older revisions of the draft)."""
    timestamp: int = 0
    """Seconds since the Unix epoch, 32 bits."""


@dataclass(frozen=True, slots=True)
class HopField:
    """One hop field (reserved bits are dropped and sent as zero)."""

    exp_time: int = 0
    cons_ingress: int = 0
    cons_egress: int = 0
    mac: bytes = bytes(6)
    ingress_alert: bool = False
    egress_alert: bool = False


@dataclass(frozen=True, slots=True)
class StandardPath:
    """A decoded standard SCION path (type 1)."""

    curr_inf: int
    curr_hf: int
    seg_lens: tuple[int, int, int]
    info_fields: tuple[InfoField, ...]
    hop_fields: tuple[HopField, ...]

    @property
    def path_type(self) -> int:
        return PathType.SCION

    @classmethod
    def from_segments(
        cls,
        segments: Sequence[tuple[InfoField, Sequence[HopField]]],
        *,
        curr_inf: int = 0,
        curr_hf: int = 0,
    ) -> StandardPath:
        """Build a path from one to three ``(info field, hop fields)`` segments."""
        if not 1 <= len(segments) <= MAX_SEGMENTS:
            raise ValueError(f"a standard path has 1..3 segments, got {len(segments)}")
        lens = [len(hops) for _, hops in segments] + [0] * (MAX_SEGMENTS - len(segments))
        return cls(
            curr_inf,
            curr_hf,
            (lens[0], lens[1], lens[2]),
            tuple(info for info, _ in segments),
            tuple(hop for _, hops in segments for hop in hops),
        )

    @property
    def encoded_length(self) -> int:
        return META_LEN + INFO_LEN * len(self.info_fields) + HOP_LEN * len(self.hop_fields)

    def reversed(self) -> StandardPath:
        """The same path in the other direction, as a reply to a packet on it travels.

        Segments and hop fields in reverse order, each info field's ConsDir flag
        flipped, and CurrINF/CurrHF pointing at the same field from the other end.
        Reversing twice gives the path back.
        """
        lens = [n for n in self.seg_lens if n]
        lens.reverse()
        lens += [0] * (MAX_SEGMENTS - len(lens))
        infos = tuple(
            InfoField(info.peering, not info.cons_dir, info.acc, info.timestamp)
            for info in reversed(self.info_fields)
        )
        return StandardPath(
            len(self.info_fields) - 1 - self.curr_inf,
            len(self.hop_fields) - 1 - self.curr_hf,
            (lens[0], lens[1], lens[2]),
            infos,
            tuple(reversed(self.hop_fields)),
        )


@dataclass(frozen=True, slots=True)
class RawPath:
    """A path of a type this codec does not interpret (OneHop, EPIC, COLIBRI, unknown)."""

    path_type: int
    raw: bytes


Path = EmptyPath | StandardPath | RawPath


def standard_path_problem(  # noqa: PLR0911 - one early return per rule of the draft
    data: Buffer, offset: int, length: int
) -> str | None:
    """Why the ``length`` bytes at ``offset`` are not a consistent standard path, or None.

    The caller guarantees that ``data`` holds those bytes.
    """
    if length < META_LEN:
        return f"path of {length} bytes is shorter than the meta header"
    (meta,) = _META.unpack_from(data, offset)
    seg0, seg1, seg2 = (meta >> 12) & 0x3F, (meta >> 6) & 0x3F, meta & 0x3F
    if seg0 == 0:
        return "first segment is empty"
    if seg1 == 0 and seg2 != 0:
        return "segment 2 is set but segment 1 is empty"
    num_inf = 1 + (seg1 != 0) + (seg2 != 0)
    num_hf = seg0 + seg1 + seg2
    expected = META_LEN + INFO_LEN * num_inf + HOP_LEN * num_hf
    if length != expected:
        return f"path length {length} does not match {expected} from the meta header"
    curr_inf, curr_hf = meta >> 30, (meta >> 24) & 0x3F
    if curr_inf >= num_inf:
        return f"CurrINF {curr_inf} out of range for {num_inf} info fields"
    if curr_hf >= num_hf:
        return f"CurrHF {curr_hf} out of range for {num_hf} hop fields"
    return None


def decode_path(
    path_type: int, data: Buffer, offset: int, length: int
) -> EmptyPath | StandardPath | RawPath:
    """Decode the path of ``path_type`` in the ``length`` bytes at ``offset``."""
    if path_type == PathType.SCION:
        problem = standard_path_problem(data, offset, length)
        if problem is not None:
            raise ScionDecodeError(DecodePart.PATH, problem, offset)
        return _decode_standard(data, offset)
    if path_type == PathType.EMPTY:
        if length:
            raise ScionDecodeError(DecodePart.PATH, f"empty path with {length} bytes", offset)
        return EMPTY_PATH
    return RawPath(path_type, bytes(data[offset : offset + length]))


def _decode_standard(data: Buffer, offset: int) -> StandardPath:
    (meta,) = _META.unpack_from(data, offset)
    seg_lens = ((meta >> 12) & 0x3F, (meta >> 6) & 0x3F, meta & 0x3F)
    num_inf = 1 + (seg_lens[1] != 0) + (seg_lens[2] != 0)
    pos = offset + META_LEN
    infos = []
    for _ in range(num_inf):
        flags, acc, ts = _INFO.unpack_from(data, pos)
        infos.append(InfoField(bool(flags & _FLAG_HI), bool(flags & _FLAG_LO), acc, ts))
        pos += INFO_LEN
    hops = []
    for _ in range(sum(seg_lens)):
        flags, exp, ingress, egress, mac = _HOP.unpack_from(data, pos)
        hops.append(
            HopField(exp, ingress, egress, mac, bool(flags & _FLAG_HI), bool(flags & _FLAG_LO))
        )
        pos += HOP_LEN
    return StandardPath(meta >> 30, (meta >> 24) & 0x3F, seg_lens, tuple(infos), tuple(hops))


def encode_path(path: EmptyPath | StandardPath | RawPath) -> bytes:
    """The wire bytes of ``path``; ValueError if it is inconsistent or out of range."""
    if isinstance(path, EmptyPath):
        return b""
    if isinstance(path, RawPath):
        if path.path_type in (PathType.EMPTY, PathType.SCION) or not 0 <= path.path_type <= 0xFF:
            raise ValueError(f"RawPath cannot carry path type {path.path_type}")
        if len(path.raw) % 4:
            raise ValueError(f"raw path of {len(path.raw)} bytes is not 4-byte aligned")
        return path.raw
    return _encode_standard(path)


def _encode_standard(path: StandardPath) -> bytes:
    seg0, seg1, seg2 = path.seg_lens
    if not all(0 <= n <= MAX_SEG_LEN for n in path.seg_lens):
        raise ValueError(f"segment lengths {path.seg_lens} out of range 0..63")
    if not (0 <= path.curr_inf <= 3 and 0 <= path.curr_hf <= MAX_SEG_LEN):
        raise ValueError(f"CurrINF {path.curr_inf} / CurrHF {path.curr_hf} out of range")
    out = bytearray(
        _META.pack(path.curr_inf << 30 | path.curr_hf << 24 | seg0 << 12 | seg1 << 6 | seg2)
    )
    problem = standard_path_problem(out, 0, path.encoded_length)
    if problem is not None:
        raise ValueError(problem)
    if len(path.info_fields) != 1 + (seg1 != 0) + (seg2 != 0):
        raise ValueError(f"{len(path.info_fields)} info fields for segment lengths {path.seg_lens}")
    try:
        for info in path.info_fields:
            flags = (_FLAG_HI if info.peering else 0) | (_FLAG_LO if info.cons_dir else 0)
            out += _INFO.pack(flags, info.acc, info.timestamp)
        for hop in path.hop_fields:
            if len(hop.mac) != 6:
                raise ValueError(f"hop field MAC must be 6 bytes, got {len(hop.mac)}")
            flags = (_FLAG_HI if hop.ingress_alert else 0) | (_FLAG_LO if hop.egress_alert else 0)
            out += _HOP.pack(flags, hop.exp_time, hop.cons_ingress, hop.cons_egress, hop.mac)
    except struct.error as exc:
        raise ValueError(f"path field out of range: {exc}") from exc
    return bytes(out)
