"""HTTP/1.1-framed control requests and responses (snap-tun 0.1.0's framing), sans-I/O.

Nothing here touches sockets, asyncio or the clock: a :class:`RequestReader`
(server side) or :class:`ResponseReader` (client side) is fed the bytes of one
QUIC stream as they arrive, and :func:`encode_request` / :func:`encode_response`
return the bytes to write.

Server side, the reference parses with Rust ``httparse`` 1.10 (16 header
slots) into a 4096-byte buffer and re-parses the whole buffer after every
read; a head that does not parse *yet* and a head that will never parse are
treated alike: it keeps reading. :class:`RequestReader` reproduces that, with
two fixes (``Authorization`` matched in any case; an
assign_addresses request that reaches the limit is refused at once instead of
spinning).

Errors, all from :mod:`snaptun.errors`::

    ParseControlRequestError        (RequestReader; .close_code, .reason)
    ├── InvalidRequest              "request too big", "invalid method", "invalid path",
    │                               "error when parsing address assignment request"
    ├── Unauthenticated             "no auth header", "bearer not found in authorization header"
    └── RequestClosedPrematurely    "closed prematurely"
    MalformedResponse               (ResponseReader) the answer is not the protocol's

Caller misuse (an unencodable token, an unknown status) raises ``ValueError``.
"""

from __future__ import annotations

import enum
import http
import re
from dataclasses import dataclass, field
from typing import Final

from snaptun.constants import (
    AUTH_HEADER,
    MAX_CTRL_MESSAGE_SIZE,
    PATH_ADDRESS_ASSIGNMENT,
    PATH_SESSION_RENEWAL,
)
from snaptun.core.messages import AddressRange, MessageDecodeError, decode_address_assign_request
from snaptun.errors import (
    InvalidRequest,
    MalformedResponse,
    ParseControlRequestError,
    RequestClosedPrematurely,
    Unauthenticated,
)

__all__ = [
    "MAX_RESPONSE_SIZE",
    "ControlRequest",
    "ControlResponse",
    "RequestKind",
    "RequestReader",
    "ResponseReader",
    "encode_request",
    "encode_response",
]

MAX_HEADERS: Final = 16
"""Header slots of the reference's parser; a 17th header makes the head unparsable."""

MAX_RESPONSE_SIZE: Final = 64 * 1024
"""Default bound of a control response (head and body) read by the client."""

_BEARER: Final = "Bearer "


class RequestKind(enum.Enum):
    """The two control requests; the value is the request path."""

    SESSION_RENEWAL = PATH_SESSION_RENEWAL
    ADDRESS_ASSIGNMENT = PATH_ADDRESS_ASSIGNMENT

    @property
    def path(self) -> str:
        """The request target the client writes."""
        return self.value


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """A parsed control request; ``requested`` is the decoded assign_addresses body."""

    kind: RequestKind
    token: str = field(repr=False)  # a bearer credential: keep it out of logs
    requested: tuple[AddressRange, ...] = ()


# --- the head grammar of httparse 1.10 (request parsing, default config) ----------
#
#   head     = *( CRLF / LF ) method SP target SP version NL *16( header ) NL
#   method   = 1*tchar                  (case-sensitive, checked by the caller)
#   target   = 1*( %x21-7E / %x80-FF )  and valid UTF-8
#   version  = "HTTP/1.0" / "HTTP/1.1"
#   header   = 1*tchar ":" *( SP / HTAB ) value NL   (no space before the colon)
#   value    = *( HTAB / %x20-7E / %x80-FF ), trailing SP/HTAB trimmed
#   NL       = CRLF / LF
#
# A line starting with SP/HTAB (obs-fold) or a lone CR is invalid. Lines are
# delimited by the first LF and no class contains CR or LF, so the match is
# unambiguous and linear.

_TCHAR: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_VALUE: Final = rb"[\t\x20-\x7e\x80-\xff]"
_HEAD_RE: Final = re.compile(
    rb"(?:\r?\n)*"
    rb"(" + _TCHAR + rb"+) ([\x21-\x7e\x80-\xff]+) HTTP/1\.[01]\r?\n"
    rb"((?:" + _TCHAR + rb"+:" + _VALUE + rb"*\r?\n){0,%d})" % MAX_HEADERS + rb"\r?\n"
)
_HEADER_RE: Final = re.compile(rb"(" + _TCHAR + rb"+):(" + _VALUE + rb"*)\r?\n")


@dataclass(frozen=True, slots=True)
class _Head:
    method: bytes
    target: str
    headers: tuple[tuple[bytes, bytes], ...]
    length: int


def _parse_head(buf: bytes) -> _Head | None:
    """The complete head at the start of ``buf``, or None (partial or invalid alike)."""
    match = _HEAD_RE.match(buf)
    if match is None:
        return None
    try:
        target = match.group(2).decode("utf-8")
    except UnicodeDecodeError:
        return None
    headers = tuple(
        (m.group(1), m.group(2).strip(b" \t")) for m in _HEADER_RE.finditer(match.group(3))
    )
    return _Head(match.group(1), target, headers, match.end())


def _check_head(head: _Head) -> tuple[RequestKind, str]:
    if head.method != b"POST":
        raise InvalidRequest("invalid method")
    try:
        kind = RequestKind(head.target)
    except ValueError:
        raise InvalidRequest("invalid path") from None
    auth = AUTH_HEADER.lower().encode("ascii")
    value = next((v for n, v in head.headers if n.lower() == auth), None)
    if value is None:
        raise Unauthenticated("no auth header")
    text = value.decode("utf-8", "replace").strip()
    if not text.startswith(_BEARER):
        raise Unauthenticated("bearer not found in authorization header")
    return kind, text[len(_BEARER) :]


class RequestReader:
    """Reads one request from one stream; feed bytes as they arrive.

    At most ``limit`` bytes are ever buffered; bytes beyond are dropped unread,
    as the reference's fixed buffer leaves them in the stream.

    - A head that is not complete (partial or invalid) waits for more bytes; if
      the buffer is full it is ``InvalidRequest("request too big")``, at EOF
      ``RequestClosedPrematurely``. The work is linear in the bytes fed: each
      byte is scanned once for the end of the head (the first empty line after
      the request line), and the head is parsed once, when that end arrives.
      A head that does not parse then never will (its lines cannot change), so
      the reader waits for the limit or EOF, as the reference does.
    - A complete head is checked: method ``POST``, one of the two paths, an
      ``Authorization: Bearer <token>`` header (name in any case, first wins).
    - renew_session is returned as soon as the head is complete; its body is
      never read.
    - assign_addresses: the body is every byte after the head up to EOF
      (content-length is ignored) and the whole request must stay below
      ``limit`` bytes, else ``InvalidRequest("request too big")`` at once.

    The first outcome is final: afterwards every ``feed_data``/``feed_eof`` call
    ignores its input and returns the same request again or raises the same
    error again.
    """

    def __init__(self, limit: int = MAX_CTRL_MESSAGE_SIZE) -> None:
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        self._limit = limit
        self._buf = bytearray()
        self._pending: tuple[RequestKind, str, int] | None = None  # kind, token, head length
        self._scanned = 0  # bytes searched for the end of the head so far
        self._start: int | None = None  # first byte of the request line, once seen
        self._unparsable = False  # the head ended but does not parse: wait for limit or EOF
        self.head_parses = 0
        """How often the head was parsed (at most once: the reader is linear)."""
        self._outcome: ControlRequest | ParseControlRequestError | None = None

    @property
    def done(self) -> bool:
        """Whether a request or an error has been produced."""
        return self._outcome is not None

    @property
    def buffered(self) -> int:
        """Bytes held so far (never more than the limit)."""
        return len(self._buf)

    def feed_data(self, data: bytes) -> ControlRequest | None:
        """Add bytes; the request once complete, None while more are needed."""
        if self._outcome is not None:
            return self._repeat()
        self._buf += data[: self._limit - len(self._buf)]
        try:
            request = self._advance()
        except ParseControlRequestError as exc:
            self._outcome = exc
            raise
        self._outcome = request
        return request

    def feed_eof(self) -> ControlRequest:
        """The stream was finished (FIN): the request, or the error it amounts to."""
        if self._outcome is not None:
            return self._repeat()
        try:
            request = self._finish()
        except ParseControlRequestError as exc:
            self._outcome = exc
            raise
        self._outcome = request
        return request

    def _repeat(self) -> ControlRequest:
        if isinstance(self._outcome, ParseControlRequestError):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def _head_end_arrived(self) -> bool:
        """Whether the empty line that ends the head is now buffered (scans new bytes only)."""
        buf = self._buf
        if self._start is None:
            at = self._scanned
            while at < len(buf) and buf[at] in b"\r\n":  # blank lines before the request line
                at += 1
            self._scanned = at
            if at == len(buf):
                return False
            self._start = at
        # An LF, an optional CR and an LF: the first empty line after a non-empty one.
        since = max(self._start, self._scanned - 2)
        self._scanned = len(buf)
        return buf.find(b"\n\n", since) >= 0 or buf.find(b"\n\r\n", since) >= 0

    def _advance(self) -> ControlRequest | None:
        full = len(self._buf) >= self._limit
        if self._pending is None:
            head = None
            if not self._unparsable and self._head_end_arrived():
                self.head_parses += 1
                head = _parse_head(bytes(self._buf))
                self._unparsable = head is None
            if head is None:
                if full:
                    raise InvalidRequest("request too big")
                return None
            kind, token = _check_head(head)
            if kind is RequestKind.SESSION_RENEWAL:
                return ControlRequest(kind, token)
            self._pending = (kind, token, head.length)
        if full:
            raise InvalidRequest("request too big")
        return None

    def _finish(self) -> ControlRequest:
        if self._pending is None:
            raise RequestClosedPrematurely
        kind, token, head_length = self._pending
        try:
            requested = decode_address_assign_request(bytes(self._buf[head_length:]))
        except MessageDecodeError as exc:
            raise InvalidRequest("error when parsing address assignment request") from exc
        return ControlRequest(kind, token, requested)


def _is_header_value(data: bytes) -> bool:
    return re.fullmatch(_VALUE + rb"*", data) is not None


def encode_request(kind: RequestKind, token: str, body: bytes = b"") -> bytes:
    """The request exactly as the reference client writes it (content-length = len(body)).

    Raises ``ValueError`` for a token the server could not read back unchanged
    (empty, surrounding whitespace, or a control character).
    """
    raw = token.encode("utf-8")
    if not token or token.strip() != token or not _is_header_value(raw):
        raise ValueError("token must be non-empty, unpadded, without control characters")
    head = (
        f"POST {kind.path} HTTP/1.1\r\n"
        "content-type: application/proto\r\n"
        "connect-protocol-version: 1\r\n"
        "content-encoding: identity\r\n"
        "accept-encoding: identity\r\n"
        f"content-length: {len(body)}\r\n"
    ).encode("ascii")
    return head + AUTH_HEADER.encode("ascii") + b": Bearer " + raw + b"\r\n\r\n" + body


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    500: "Internal Server Error",
    501: "Not Implemented",
}


def _reason(status: int) -> str:
    if status in _REASONS:
        return _REASONS[status]
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        raise ValueError(f"unknown HTTP status {status}") from None


def encode_response(status: int, body: bytes) -> bytes:
    """The response as the reference server writes it; ``ValueError`` for an unknown status."""
    head = f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode("ascii") + body


# --- client side -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlResponse:
    """A control response as read by the client."""

    status: int
    reason: str
    body: bytes

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300


_STATUS_LINE_RE: Final = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9])(?: ([\t\x20-\x7e]*))?")
_DIGITS_RE: Final = re.compile(rb"[0-9]{1,10}")


class ResponseReader:
    """Reads one control response (client side, strict); the body runs to the stream's FIN.

    Refused with :class:`~snaptun.errors.MalformedResponse`: more than ``limit``
    bytes (raised by the ``feed_data`` that crosses it), no complete head, a
    status line other than ``HTTP/1.1 <2xx-5xx> [reason]``, header lines that
    are not ``name: value`` with CRLF, Transfer-Encoding, and a missing,
    repeated or non-numeric Content-Length or one that differs from the body's
    length. The first outcome is final: later calls raise it again or return
    the same response.
    """

    def __init__(self, limit: int = MAX_RESPONSE_SIZE) -> None:
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        self._limit = limit
        self._buf = bytearray()
        self._outcome: ControlResponse | MalformedResponse | None = None

    def feed_data(self, data: bytes) -> None:
        """Add bytes of the response."""
        if isinstance(self._outcome, MalformedResponse):
            raise self._outcome
        if self._outcome is not None:
            raise RuntimeError("feed_data after feed_eof")
        if len(self._buf) + len(data) > self._limit:
            self._outcome = MalformedResponse(f"response larger than {self._limit} bytes")
            raise self._outcome
        self._buf += data

    def feed_eof(self) -> ControlResponse:
        """The stream was finished: the response, or MalformedResponse."""
        if self._outcome is None:
            try:
                self._outcome = _parse_response(bytes(self._buf))
            except MalformedResponse as exc:
                self._outcome = exc
        if isinstance(self._outcome, MalformedResponse):
            raise self._outcome
        return self._outcome


def _parse_response(data: bytes) -> ControlResponse:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise MalformedResponse("incomplete response head")
    status_line, *lines = head.split(b"\r\n")
    status = _STATUS_LINE_RE.fullmatch(status_line)
    if status is None:
        raise MalformedResponse(f"bad status line {status_line[:80]!r}")
    lengths: list[bytes] = []
    for line in lines:
        header = _HEADER_RE.fullmatch(line + b"\r\n")
        if header is None:
            raise MalformedResponse(f"bad header line {line[:80]!r}")
        name = header.group(1).lower()
        if name == b"content-length":
            lengths.append(header.group(2).strip(b" \t"))
        elif name == b"transfer-encoding":
            raise MalformedResponse("transfer-encoding is not supported")
    if len(lengths) != 1:
        raise MalformedResponse(f"expected one Content-Length header, got {len(lengths)}")
    if _DIGITS_RE.fullmatch(lengths[0]) is None:
        raise MalformedResponse(f"bad Content-Length {lengths[0][:20]!r}")
    if int(lengths[0]) != len(body):
        raise MalformedResponse(
            f"Content-Length {int(lengths[0])} does not match the body's {len(body)} bytes"
        )
    reason = (status.group(2) or b"").decode("ascii")
    return ControlResponse(int(status.group(1)), reason, body)
