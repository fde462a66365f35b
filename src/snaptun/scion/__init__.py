"""Sans-I/O SCION packet codec and the gateway's packet policy (docs/GATEWAY.md).

Pure functions over bytes, following draft-dekater-scion-dataplane (headers,
paths, pseudo-header checksum) and draft-dekater-scion-controlplane (SCMP).
No sockets, no clock. Errors::

    SnaptunError, ValueError
    └── ScionDecodeError     bytes that do not decode; .part says which layer

Encoding fields out of range is the caller's misuse and raises ``ValueError``.
"""

from snaptun.scion._address import (
    SVC_CS,
    SVC_DS,
    AddressHeader,
    HostAddress,
    RawHostAddress,
    ServiceAddress,
)
from snaptun.scion._checksum import internet_checksum
from snaptun.scion._echo import PLACEHOLDER_PATH, echo_reply, echo_request
from snaptun.scion._errors import DecodePart, ScionDecodeError
from snaptun.scion._packet import NextHeader, ScionPacket, decode, empty_path_packet, encode
from snaptun.scion._path import (
    EMPTY_PATH,
    EmptyPath,
    HopField,
    InfoField,
    Path,
    PathType,
    RawPath,
    StandardPath,
)
from snaptun.scion._policy import (
    PolicyViolation,
    Violation,
    build_parameter_problem,
    check_tunnel_packet,
    may_answer_with_scmp_error,
)
from snaptun.scion._scmp import (
    MAX_SCMP_ERROR_PACKET,
    DestinationUnreachableCode,
    ParameterProblemCode,
    ScmpDestinationUnreachable,
    ScmpEchoReply,
    ScmpEchoRequest,
    ScmpMessage,
    ScmpOther,
    ScmpPacketTooBig,
    ScmpParameterProblem,
    ScmpType,
    decode_scmp,
    encode_scmp,
    scmp_is_error,
)
from snaptun.scion._udp import UdpDatagram, decode_udp, encode_udp

__all__ = [
    "EMPTY_PATH",
    "MAX_SCMP_ERROR_PACKET",
    "PLACEHOLDER_PATH",
    "SVC_CS",
    "SVC_DS",
    "AddressHeader",
    "DecodePart",
    "DestinationUnreachableCode",
    "EmptyPath",
    "HopField",
    "HostAddress",
    "InfoField",
    "NextHeader",
    "ParameterProblemCode",
    "Path",
    "PathType",
    "PolicyViolation",
    "RawHostAddress",
    "RawPath",
    "ScionDecodeError",
    "ScionPacket",
    "ScmpDestinationUnreachable",
    "ScmpEchoReply",
    "ScmpEchoRequest",
    "ScmpMessage",
    "ScmpOther",
    "ScmpPacketTooBig",
    "ScmpParameterProblem",
    "ScmpType",
    "ServiceAddress",
    "StandardPath",
    "UdpDatagram",
    "Violation",
    "build_parameter_problem",
    "check_tunnel_packet",
    "decode",
    "decode_scmp",
    "decode_udp",
    "echo_reply",
    "echo_request",
    "empty_path_packet",
    "encode",
    "encode_scmp",
    "encode_udp",
    "internet_checksum",
    "may_answer_with_scmp_error",
    "scmp_is_error",
]
