"""The exception hierarchy of snaptun.

Every error the package raises derives from :class:`SnaptunError`, and every
exception class of the package appears in this tree (``tests/test_errors.py``
checks both, parents included). Most mirror the error enums of the reference
crate ``snap-tun`` 0.1.0, one class per enum and one subclass per case; the
others are named with their module. A class that must also be a builtin
exception says so in brackets. Private classes that never leave their module
(``_Reject``, ``_Failure``, ``_Transient``) derive from the base too but are
not drawn::

    SnaptunError
    ├── ConnectionLost                  the QUIC connection ended (code, reason, by_peer, ...)
    │   └── CertificateMismatch         the server's certificate is not the --fingerprint one
    ├── QuicStreamReset                 [ConnectionError] the peer reset a stream (aio.quic)
    ├── AcceptError
    │   ├── AcceptTimeout               setup not finished within ACCEPT_TIMEOUT
    │   ├── AcceptConnectionError       the connection failed during setup
    │   ├── AcceptParseError            a setup request did not parse (.cause)
    │   ├── AcceptSendError             a setup response could not be sent (.cause)
    │   ├── AcceptReplaced              a newer tunnel of the identity took the grant over
    │   ├── AcceptInternalError         a defect while serving the setup (close code 5)
    │   └── UnexpectedControlRequest    wrong request, or a non-2xx answer, during setup
    ├── AddressAssignmentError
    │   └── NoAddressAssigned
    ├── InvalidTransition               an event the tunnel's state does not allow (core.state)
    ├── ControlError                    what a server Control ends with
    │   ├── ControlParseError           (.cause: ParseControlRequestError)
    │   ├── ControlSendError            (.cause: SendControlResponseError)
    │   ├── SessionExpired
    │   ├── TunnelReplaced              a newer tunnel of the identity took the grant over
    │   ├── ControlInternalError        a defect while serving a request (close code 5)
    │   └── ClosedPrematurely
    ├── ParseControlRequestError        the peer broke the control protocol
    │   ├── InvalidRequest              close code 1, reason phrase in .reason
    │   ├── Unauthenticated             close code 3
    │   ├── RequestClosedPrematurely    close code 5 ("closed prematurely")
    │   └── RequestReadError            close code 5 ("read error")
    ├── SendControlResponseError        a response could not be written in SEND_TIMEOUT
    ├── ReceivePacketError
    │   ├── ReceiveConnectionClosed     ("connection closed")
    │   └── ReceiveConnectionError      (.cause: ConnectionLost)
    ├── SendPacketError
    │   ├── SendConnectionClosed        ("connection closed")
    │   ├── NewAssignedAddress          (.sender: fresh Sender, .packet: refused packet)
    │   ├── SendAddressAssignmentError
    │   ├── DatagramTooLarge            larger than the peer's maximum datagram size
    │   ├── SendBufferFull              no room now; retry or use send_wait()
    │   └── DatagramsUnsupported        the peer did not enable DATAGRAM frames
    ├── TokenValidationError            a control request's token (its HTTP status)
    │   ├── InvalidSignature            HTTP 401
    │   │   └── UnknownKeyId            HTTP 401: no trusted key has the token's kid
    │   ├── MalformedToken              HTTP 400
    │   │   ├── WrongAudience           HTTP 400: aud does not name this gateway
    │   │   └── WrongIssuer             HTTP 400: iss is not the configured issuer
    │   ├── TokenExpired                HTTP 401
    │   └── NotYetValid                 HTTP 401: now + leeway < nbf
    ├── AddressAllocationError          the allocator refused a request
    │   ├── NoAddressesAvailable
    │   ├── AddressUnavailable          the asked address is granted or held elsewhere
    │   ├── UnsupportedIsdAs            neither the allocator's ISD-AS nor a wildcard
    │   └── GrantNotStored              a grant that could not be written (gateway.store)
    ├── MessageDecodeError              [ValueError] a protobuf message is malformed (core.messages)
    ├── InvalidAddressRange             [ValueError] an address range is not valid (core.messages)
    ├── ScionDecodeError                [ValueError] a SCION packet does not parse (snaptun.scion)
    ├── RouteConflict                   [RuntimeError] an address routed twice (scion.forwarding)
    ├── ConfigError                     [ValueError] a setting of `snaptun serve` (gateway.config)
    ├── StateError                      the state directory is unusable (gateway.state_dir)
    │   ├── StateFileError              a state file is unreadable or damaged
    │   └── StateDirInUse               another gateway holds the directory's lock
    ├── GrantStoreError                 the grant database failed (gateway.store)
    ├── BindError                       [OSError] a gateway socket could not be bound (gateway.bind)
    ├── AdminFileError                  no usable admin.json in the state directory (gateway.admin)
    ├── StatusError                     what `snaptun status` reports and exits 1 on (cli._status)
    └── ClientError                     what the client side raises
        ├── ControlResponseError        a non-2xx answer (.status, .body)
        ├── MalformedResponse           an answer that is not the protocol's
        ├── RenewalFailed               automatic renewal gave up after its retries
        ├── TokenSourceError            the token file could not be read (aio.bridge)
        └── BridgeError                 the bridge gave up (.cause; aio.bridge)
            ├── TunnelRefused           a refusal that retrying will not change
            ├── TunnelReplacedError     a newer tunnel of the identity took over
            └── ReconnectsExhausted     max_reconnects attempts in a row failed

Peer violations on the server become close codes on the wire; the caller's own
misuse raises ``TypeError``/``ValueError`` as usual.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from snaptun.constants import REPLACED_REASON, CloseCode

_SenderT = TypeVar("_SenderT")


class SnaptunError(Exception):
    """Base class of every error raised by snaptun."""


class ConnectionLost(SnaptunError):
    """The QUIC connection is gone; ``code`` and ``reason`` as the close carried them."""

    def __init__(
        self, code: int | None, reason: str, *, by_peer: bool, application: bool = True
    ) -> None:
        self.code = code
        self.reason = reason
        self.by_peer = by_peer
        self.application = application
        """Whether it was an application close (CONNECTION_CLOSE 0x1d), not a transport failure."""
        if code is None:
            super().__init__(f"connection failed: {reason}")
        else:
            who = "peer" if by_peer else "local side"
            super().__init__(f"connection closed by {who} (code {code}): {reason}")

    @property
    def close_name(self) -> str | None:
        """Name of the snaptun close code, if the code is one of them."""
        try:
            return CloseCode(self.code).name if self.code is not None else None
        except ValueError:
            return None


class CertificateMismatch(ConnectionLost):
    """The server's certificate is not the pinned one: the handshake was aborted.

    ``expected`` and ``got`` are SHA-256 fingerprints (lowercase hex); ``code``
    and ``reason`` are the TLS alert's transport close as qh3 made it. Final:
    retrying reaches the same certificate.
    """

    def __init__(self, expected: str, got: str, code: int | None, reason: str) -> None:
        super().__init__(code, reason, by_peer=False, application=False)
        self.expected = expected
        self.got = got
        self.args = (f"certificate fingerprint mismatch: expected {expected}, got {got}",)


# --- accept ---------------------------------------------------------------


class AcceptError(SnaptunError):
    """Server.accept_with_timeout failed; the connection has been closed."""


class AcceptTimeout(AcceptError):
    """The client did not finish the setup within ACCEPT_TIMEOUT."""

    def __init__(self) -> None:
        super().__init__("timeout reached")


class AcceptConnectionError(AcceptError):
    """The QUIC connection failed during setup."""

    def __init__(self, cause: ConnectionLost) -> None:
        self.cause = cause
        super().__init__(f"connection error: {cause}")


class AcceptParseError(AcceptError):
    """A setup request did not parse."""

    def __init__(self, cause: ParseControlRequestError) -> None:
        self.cause = cause
        super().__init__(f"parse control request error: {cause}")


class AcceptSendError(AcceptError):
    """A setup response could not be sent."""

    def __init__(self, cause: SendControlResponseError) -> None:
        self.cause = cause
        super().__init__(f"send control response error: {cause}")


class AcceptReplaced(AcceptError):
    """A newer tunnel of the same identity took the grant over before this setup finished."""

    def __init__(self) -> None:
        super().__init__(REPLACED_REASON)


class AcceptInternalError(AcceptError):
    """An unexpected exception while serving the setup; closed with code 5 (``cause``)."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(f"internal error: {type(cause).__name__}: {cause}")


class UnexpectedControlRequest(AcceptError):
    """The client sent the wrong request, or a setup request was refused.

    ``refusal`` names the cause of a refusal in one word (``TokenExpired``,
    ``UnknownKeyId``, ``AddressUnavailable``, ...; None for a wrong request).
    """

    def __init__(
        self, detail: str = "unexpected control request", *, refusal: str | None = None
    ) -> None:
        self.detail = detail
        self.refusal = refusal
        super().__init__(detail)


# --- address assignment -----------------------------------------------------


class AddressAssignmentError(SnaptunError):
    """The tunnel has no address to offer."""


class NoAddressAssigned(AddressAssignmentError):
    """No address is assigned to the tunnel (yet, or any more)."""

    def __init__(self) -> None:
        super().__init__("no address assigned")


# --- parse / send control ----------------------------------------------------


class ParseControlRequestError(SnaptunError):
    """A control request broke the protocol; ``close_code`` and ``reason`` go on the wire."""

    close_code: CloseCode = CloseCode.INVALID_REQUEST

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class InvalidRequest(ParseControlRequestError):
    """Malformed, too big, wrong method or path (close code 1)."""

    close_code = CloseCode.INVALID_REQUEST


class Unauthenticated(ParseControlRequestError):
    """No Authorization header or not a Bearer token (close code 3)."""

    close_code = CloseCode.UNAUTHENTICATED


class RequestClosedPrematurely(ParseControlRequestError):
    """The stream ended before a complete request head (close code 5)."""

    close_code = CloseCode.INTERNAL_ERROR

    def __init__(self, reason: str = "closed prematurely") -> None:
        super().__init__(reason)


class RequestReadError(ParseControlRequestError):
    """Reading the request stream failed, e.g. it was reset (close code 5)."""

    close_code = CloseCode.INTERNAL_ERROR

    def __init__(self, reason: str = "read error") -> None:
        super().__init__(reason)


class SendControlResponseError(SnaptunError):
    """A control response could not be written within SEND_TIMEOUT."""


# --- control ----------------------------------------------------------------


class ControlError(SnaptunError):
    """A server Control ended with an error; the connection is closed."""


class ControlParseError(ControlError):
    """A post-setup request broke the protocol."""

    def __init__(self, cause: ParseControlRequestError) -> None:
        self.cause = cause
        super().__init__(f"parse control request error: {cause}")


class ControlSendError(ControlError):
    """A post-setup response could not be sent."""

    def __init__(self, cause: SendControlResponseError) -> None:
        self.cause = cause
        super().__init__(f"send control response error: {cause}")


class SessionExpired(ControlError):
    """The session's expiry passed without renewal (close code 4)."""

    def __init__(self) -> None:
        super().__init__("session expired")


class TunnelReplaced(ControlError):
    """A newer tunnel of the same identity took the grant over; closed with code 0."""

    def __init__(self) -> None:
        super().__init__(REPLACED_REASON)


class ControlInternalError(ControlError):
    """An unexpected exception while serving a request; closed with code 5 (``cause``)."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(f"internal error: {type(cause).__name__}: {cause}")


class ClosedPrematurely(ControlError):
    """The connection failed (not a clean application close) while being driven."""

    def __init__(self, cause: ConnectionLost | None = None) -> None:
        self.cause = cause
        super().__init__(
            f"connection closed prematurely: {cause}" if cause else "closed prematurely"
        )


# --- packets ------------------------------------------------------------------


class ReceivePacketError(SnaptunError):
    """A packet could not be received."""


class ReceiveConnectionClosed(ReceivePacketError):
    """The tunnel is closed."""

    def __init__(self) -> None:
        super().__init__("connection closed")


class ReceiveConnectionError(ReceivePacketError):
    """The QUIC connection failed."""

    def __init__(self, cause: ConnectionLost) -> None:
        self.cause = cause
        super().__init__(f"connection error: {cause}")


class SendPacketError(SnaptunError):
    """A packet could not be sent; it was not queued."""


class SendConnectionClosed(SendPacketError):
    """The tunnel is closed."""

    def __init__(self) -> None:
        super().__init__("connection closed")


class NewAssignedAddress(SendPacketError, Generic[_SenderT]):
    """The tunnel's address changed: use ``sender`` from now on and resend ``packet``.

    Generic in the sender's type (``snaptun.aio.server.Sender`` raises it with
    itself), so that this module imports nothing above it.
    """

    def __init__(self, sender: _SenderT, packet: bytes) -> None:
        self.sender = sender
        self.packet = packet
        super().__init__("address was re-assigned")


class SendAddressAssignmentError(SendPacketError):
    """The tunnel has no assigned address."""

    def __init__(self, cause: AddressAssignmentError) -> None:
        self.cause = cause
        super().__init__(f"address assignment error: {cause}")


class DatagramTooLarge(SendPacketError):
    """The packet does not fit in one QUIC datagram for this peer."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"packet of {size} bytes exceeds the maximum datagram size {limit}")


class SendBufferFull(SendPacketError):
    """The datagram send buffer is full; nothing was queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"datagram send buffer full ({limit} datagrams queued)")


class DatagramsUnsupported(SendPacketError):
    """The peer did not enable QUIC DATAGRAM frames."""

    def __init__(self) -> None:
        super().__init__("peer does not accept QUIC datagrams")


# --- tokens / allocation -----------------------------------------------------------


class TokenValidationError(SnaptunError):
    """A bearer token was refused; ``status`` is the HTTP status the server answers."""

    status: int = 401


class InvalidSignature(TokenValidationError):
    """The token's signature does not verify against any trusted key."""

    status = 401


class MalformedToken(TokenValidationError):
    """Not a JWT, wrong algorithm, or missing/ill-typed required claims."""

    status = 400


class TokenExpired(TokenValidationError):
    """The token's ``exp`` is in the past."""

    status = 401


class UnknownKeyId(InvalidSignature):
    """The token names a key (``kid``) that no trusted key has, and no other key verifies it."""

    status = 401


class WrongAudience(MalformedToken):
    """The token's ``aud`` does not name this gateway's audience (400, as the reference)."""

    status = 400


class WrongIssuer(MalformedToken):
    """The token's ``iss`` is not the configured issuer (400, as the reference)."""

    status = 400


class NotYetValid(TokenValidationError):
    """The token's ``nbf`` is still ahead, beyond the leeway (401, like an expired token)."""

    status = 401


class AddressAllocationError(SnaptunError):
    """The allocator could not grant the requested address."""


class NoAddressesAvailable(AddressAllocationError):
    """The pool of the requested family is exhausted (or has no such family)."""


class AddressUnavailable(AddressAllocationError):
    """The requested address is granted to, or held for, another identity, or not in a pool."""


class UnsupportedIsdAs(AddressAllocationError):
    """The requested ISD-AS is neither the allocator's own nor a wildcard."""


# --- client ---------------------------------------------------------------------------


class ClientError(SnaptunError):
    """An error seen by the snaptun client."""


class ControlResponseError(ClientError):
    """The server answered a control request with a non-2xx status."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        text = body.decode("utf-8", "replace")[:200]
        super().__init__(f"server answered HTTP {status}: {text}")


class MalformedResponse(ClientError):
    """The server's answer does not follow the protocol."""


class RenewalFailed(ClientError):
    """Automatic renewal gave up after its retries; ``cause`` is the last error."""

    def __init__(self, attempts: int, cause: BaseException) -> None:
        self.attempts = attempts
        self.cause = cause
        super().__init__(f"session renewal failed after {attempts} attempts: {cause}")
