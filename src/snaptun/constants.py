"""Protocol constants shared by server and client: those of snap-tun 0.1.0's wire protocol."""

from __future__ import annotations

import enum
from typing import Final

ALPN: Final = "snaptun"
"""ALPN protocol id negotiated on every snaptun QUIC connection."""

ACCEPT_TIMEOUT: Final = 3.0
"""Seconds a client has to finish renew_session + assign_addresses after the handshake."""

SEND_TIMEOUT: Final = 2.0
"""Seconds a control response may take to be written (declared, never applied, by the reference)."""

MAX_CTRL_MESSAGE_SIZE: Final = 4096
"""Bytes of the control buffer: a request must stay strictly below this size."""

KEEP_ALIVE_INTERVAL: Final = 5.0
"""Seconds between keep-alive pings on both sides."""

IDLE_TIMEOUT: Final = 30.0
"""QUIC idle timeout of the reference, in seconds."""

DEFAULT_UDP_PAYLOAD_SIZE: Final = 1452
"""UDP payload size of QUIC packets; leaves room for ~1414-byte datagrams."""

PATH_SESSION_RENEWAL: Final = "/connectrpc.v1.snaptun/renew_session"
PATH_ADDRESS_ASSIGNMENT: Final = "/connectrpc.v1.snaptun/assign_addresses"
AUTH_HEADER: Final = "Authorization"


REPLACED_CLOSE_CODE: Final = 0
"""Close code (QUIC NO_ERROR) of a tunnel whose grant a newer tunnel of its identity took over."""
REPLACED_REASON: Final = "replaced by a newer tunnel"
"""Close reason of such a tunnel; clients treat it as final (no reconnect)."""
KICKED_CLOSE_CODE: Final = 0
"""Close code (QUIC NO_ERROR) of a tunnel an operator closed (``snaptun status --kick``)."""
KICKED_REASON: Final = "closed by the operator"
"""Close reason of such a tunnel; not final: clients reconnect after their backoff."""
INTERNAL_ERROR_REASON: Final = "internal error"
"""Close reason (code 5) when serving a tunnel raised something unexpected."""


class CloseCode(enum.IntEnum):
    """QUIC application close codes (the reference's ``SnaptunConnErrors``)."""

    INVALID_REQUEST = 1
    TIMEOUT = 2
    UNAUTHENTICATED = 3
    SESSION_EXPIRED = 4
    INTERNAL_ERROR = 5
