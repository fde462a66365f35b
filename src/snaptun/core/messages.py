"""The proto3 control messages of snap-tun 0.1.0, with a typed API.

The wire format is built at import time from a ``FileDescriptorProto`` (no
``protoc``, no generated ``_pb2`` module) and handled by the ``protobuf``
runtime; the dynamic message classes stay private, callers see
:class:`AddressRange` and plain ``bytes``/``int``::

    message SessionRenewalResponse { uint64 valid_until = 1; }
    message AddressRange {
      uint64 isd_as = 1;  uint32 ip_version = 2;  uint32 prefix_length = 3;  bytes address = 4;
    }
    message AddressAssignRequest  { repeated AddressRange requested_addresses = 1; }
    message AddressAssignResponse { repeated AddressRange assigned_addresses = 1; }

Errors (both are also ``ValueError``)::

    SnaptunError
    ├── MessageDecodeError     bytes that are not the expected message
    └── InvalidAddressRange    a decoded AddressRange that is not a usable host address

Decoding follows proto3: unknown fields are skipped, a field that appears
several times keeps its last value, and ``uint32`` fields keep the low 32 bits
of a larger varint.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from snaptun.core.addressing import EndhostAddress, IPAddress, IPNetwork, IsdAs
from snaptun.errors import SnaptunError

__all__ = [
    "AddressRange",
    "InvalidAddressRange",
    "MessageDecodeError",
    "decode_address_assign_request",
    "decode_address_assign_response",
    "decode_session_renewal_response",
    "encode_address_assign_request",
    "encode_address_assign_response",
    "encode_session_renewal_response",
]

_U32_MAX: Final = (1 << 32) - 1
_U64_MAX: Final = (1 << 64) - 1
# (address length in bytes, host prefix length) per IP version.
_HOST_FORMS: Final = {4: (4, 32), 6: (16, 128)}


class MessageDecodeError(SnaptunError, ValueError):
    """The bytes are not a valid encoding of the expected protobuf message."""


class InvalidAddressRange(SnaptunError, ValueError):
    """An AddressRange is not a single host address (or has a wildcard ISD-AS)."""


# --- descriptor ----------------------------------------------------------------

_PACKAGE: Final = "snaptun"


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="snaptun/control.proto", package=_PACKAGE, syntax="proto3"
    )
    f = descriptor_pb2.FieldDescriptorProto
    optional, repeated = f.LABEL_OPTIONAL, f.LABEL_REPEATED

    renewal = fdp.message_type.add(name="SessionRenewalResponse")
    renewal.field.add(name="valid_until", number=1, type=f.TYPE_UINT64, label=optional)

    rng = fdp.message_type.add(name="AddressRange")
    rng.field.add(name="isd_as", number=1, type=f.TYPE_UINT64, label=optional)
    rng.field.add(name="ip_version", number=2, type=f.TYPE_UINT32, label=optional)
    rng.field.add(name="prefix_length", number=3, type=f.TYPE_UINT32, label=optional)
    rng.field.add(name="address", number=4, type=f.TYPE_BYTES, label=optional)

    for message, field in (
        ("AddressAssignRequest", "requested_addresses"),
        ("AddressAssignResponse", "assigned_addresses"),
    ):
        msg = fdp.message_type.add(name=message)
        msg.field.add(
            name=field,
            number=1,
            type=f.TYPE_MESSAGE,
            type_name=f".{_PACKAGE}.AddressRange",
            label=repeated,
        )
    return fdp


_POOL: Final = descriptor_pool.DescriptorPool()
_POOL.Add(_build_file())


def _message_class(name: str) -> type[Message]:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


_SessionRenewalResponse: Final = _message_class("SessionRenewalResponse")
_AddressRange: Final = _message_class("AddressRange")
_AddressAssignRequest: Final = _message_class("AddressAssignRequest")
_AddressAssignResponse: Final = _message_class("AddressAssignResponse")


# --- AddressRange --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddressRange:
    """One ``AddressRange`` exactly as on the wire; nothing is checked but the field widths.

    Use :meth:`to_request` (server, on a request) or :meth:`to_endhost` (client, on
    a response) to get a validated address.
    """

    isd_as: int
    ip_version: int
    prefix_length: int
    address: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.isd_as <= _U64_MAX:
            raise ValueError(f"isd_as {self.isd_as} does not fit uint64")
        if not 0 <= self.ip_version <= _U32_MAX:
            raise ValueError(f"ip_version {self.ip_version} does not fit uint32")
        if not 0 <= self.prefix_length <= _U32_MAX:
            raise ValueError(f"prefix_length {self.prefix_length} does not fit uint32")

    @classmethod
    def from_endhost(cls, addr: EndhostAddress) -> AddressRange:
        """The host range (/32 or /128) of ``addr``; a wildcard ISD-AS is kept as is."""
        return cls(
            isd_as=addr.isd_as.to_int(),
            ip_version=addr.ip.version,
            prefix_length=addr.ip.max_prefixlen,
            address=addr.ip.packed,
        )

    def _host(self) -> tuple[IsdAs, IPAddress]:
        form = _HOST_FORMS.get(self.ip_version)
        if form is None:
            raise InvalidAddressRange(f"unsupported IP version {self.ip_version}")
        length, prefix = form
        if len(self.address) != length:
            raise InvalidAddressRange(
                f"IPv{self.ip_version} address must be {length} bytes, got {len(self.address)}"
            )
        if self.prefix_length != prefix:
            raise InvalidAddressRange(
                f"IPv{self.ip_version} prefix length must be {prefix}, got {self.prefix_length}"
            )
        isd_as = IsdAs.from_int(self.isd_as)
        if isd_as.is_wildcard:
            raise InvalidAddressRange(f"wildcard ISD-AS {isd_as} is not allowed")
        return isd_as, ipaddress.ip_address(self.address)

    def to_request(self) -> tuple[IsdAs, IPNetwork]:
        """Validate a requested range: a host prefix of a v4/v6 address in a concrete ISD-AS.

        Raises :class:`InvalidAddressRange` (the server answers 400) otherwise.
        """
        isd_as, ip = self._host()
        return isd_as, ipaddress.ip_network(ip)

    def to_endhost(self) -> EndhostAddress:
        """Validate an assigned range (same rules as :meth:`to_request`) as an end-host address."""
        isd_as, ip = self._host()
        return EndhostAddress(isd_as, ip)


def _to_pb(rng: AddressRange, into: Message) -> None:
    # The dynamic message has no static attributes; setattr keeps mypy honest.
    setattr(into, "isd_as", rng.isd_as)  # noqa: B010
    setattr(into, "ip_version", rng.ip_version)  # noqa: B010
    setattr(into, "prefix_length", rng.prefix_length)  # noqa: B010
    setattr(into, "address", rng.address)  # noqa: B010


def _from_pb(msg: Message) -> AddressRange:
    return AddressRange(
        isd_as=int(getattr(msg, "isd_as")),  # noqa: B009
        ip_version=int(getattr(msg, "ip_version")),  # noqa: B009
        prefix_length=int(getattr(msg, "prefix_length")),  # noqa: B009
        address=bytes(getattr(msg, "address")),  # noqa: B009
    )


def _parse(cls: type[Message], data: bytes, what: str) -> Message:
    msg = cls()
    try:
        msg.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise MessageDecodeError(f"invalid {what}: {exc}") from exc
    return msg


def _encode_ranges(cls: type[Message], field: str, ranges: Sequence[AddressRange]) -> bytes:
    msg = cls()
    repeated = getattr(msg, field)
    for rng in ranges:
        _to_pb(rng, repeated.add())
    return msg.SerializeToString()


def _decode_ranges(cls: type[Message], field: str, data: bytes) -> tuple[AddressRange, ...]:
    msg = _parse(cls, data, cls.DESCRIPTOR.name)
    return tuple(_from_pb(item) for item in getattr(msg, field))


# --- public codec ------------------------------------------------------------------


def encode_address_assign_request(ranges: Sequence[AddressRange]) -> bytes:
    """Encode an ``AddressAssignRequest``; no ranges means "any address" (empty bytes)."""
    return _encode_ranges(_AddressAssignRequest, "requested_addresses", ranges)


def decode_address_assign_request(data: bytes) -> tuple[AddressRange, ...]:
    """Decode an ``AddressAssignRequest``; raises :class:`MessageDecodeError`."""
    return _decode_ranges(_AddressAssignRequest, "requested_addresses", data)


def encode_address_assign_response(ranges: Sequence[AddressRange]) -> bytes:
    """Encode an ``AddressAssignResponse``."""
    return _encode_ranges(_AddressAssignResponse, "assigned_addresses", ranges)


def decode_address_assign_response(data: bytes) -> tuple[AddressRange, ...]:
    """Decode an ``AddressAssignResponse``; raises :class:`MessageDecodeError`."""
    return _decode_ranges(_AddressAssignResponse, "assigned_addresses", data)


def encode_session_renewal_response(valid_until: int) -> bytes:
    """Encode a ``SessionRenewalResponse`` (``valid_until`` in unix seconds, uint64)."""
    if not 0 <= valid_until <= _U64_MAX:
        raise ValueError(f"valid_until {valid_until} does not fit uint64")
    msg = _SessionRenewalResponse()
    setattr(msg, "valid_until", valid_until)  # noqa: B010
    return msg.SerializeToString()


def decode_session_renewal_response(data: bytes) -> int:
    """Decode a ``SessionRenewalResponse``; raises :class:`MessageDecodeError`."""
    msg = _parse(_SessionRenewalResponse, data, "SessionRenewalResponse")
    return int(getattr(msg, "valid_until"))  # noqa: B009
