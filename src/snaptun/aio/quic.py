"""The QUIC binding: the one module that knows the QUIC library (qh3).

Everything above this module talks to :class:`QuicConnection` and
:class:`QuicStream`; swapping the backend means rewriting only this file.
It guards against the pitfalls measured in docs/DESIGN.md:

* qh3 accepts a datagram too large for a packet and then fails the whole
  connection ("packet builder capacity exhausted"), so every datagram is
  checked against :attr:`QuicConnection.max_datagram_size` before queueing;
* qh3 silently drops datagrams it cannot put on the wire at the next
  transmit, so datagrams wait in our own bounded queue and are handed over in
  small batches, yielding to the event loop between batches (so that ACKs
  open the congestion window); a full queue is an error for ``send`` and a
  wait for ``send_wait``;
* a transmit error is treated as a lost connection;
* neither side sends keep-alives by itself, so we ping every few seconds;
* qh3 follows a peer to a new address but never back to one it validated
  before, so the connection steers its datagrams itself (:class:`_Redirect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, cast

from cryptography import x509
from qh3.asyncio._transport import create_optimized_datagram_transport
from qh3.asyncio.client import connect as _qh3_connect
from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.asyncio.server import QuicServer
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection as _Qh3Connection
from qh3.quic.connection import QuicConnectionError
from qh3.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from qh3.quic.packet import QuicErrorCode
from qh3.quic.tls_bridge import QuicTlsBridgeError
from qh3.tls import SignatureAlgorithm

from snaptun.aio.timers import loop_timers
from snaptun.constants import (
    ALPN,
    DEFAULT_UDP_PAYLOAD_SIZE,
    IDLE_TIMEOUT,
    KEEP_ALIVE_INTERVAL,
)
from snaptun.core.admission import (
    BAD_RETRY_TOKEN,
    AdmissionSettings,
    ConnectionGate,
    RetryTokens,
    initial_token,
    initial_token_length,
    looks_like_initial,
)
from snaptun.errors import (
    CertificateMismatch,
    ConnectionLost,
    DatagramsUnsupported,
    DatagramTooLarge,
    SendBufferFull,
    SnaptunError,
)
from snaptun.tls import fingerprint_of  # re-exported: part of this module's API

__all__ = [
    "QuicConnection",
    "QuicEndpoint",
    "QuicSettings",
    "QuicStream",
    "QuicStreamReset",
    "connect",
    "fingerprint_of",
    "listen",
]

log = logging.getLogger(__name__)

# Bytes of a 1-RTT packet around one DATAGRAM frame, besides the peer's
# connection ID: first byte, 4-byte packet number, 16-byte AEAD tag, frame
# type and an 8-byte length. The length needs only 2 bytes, but counting 8 is
# quinn's rule, so both implementations agree on the largest datagram (1414
# bytes at the default packet size) and every datagram we send can be echoed.
_DATAGRAM_OVERHEAD: Final = 1 + 4 + 16 + 1 + 8
_MAX_CID_LENGTH: Final = 20
_MAX_DATAGRAM_FRAME: Final = 65535
_APPLICATION_CLOSE = None  # qh3 reports an application close with frame_type None


@dataclass(frozen=True, slots=True)
class QuicSettings:
    """Knobs of a snaptun QUIC endpoint."""

    udp_payload_size: int = DEFAULT_UDP_PAYLOAD_SIZE
    """Largest UDP payload of a QUIC packet; at least 1200 (QUIC's floor)."""
    idle_timeout: float = IDLE_TIMEOUT
    keep_alive: float | None = KEEP_ALIVE_INTERVAL
    send_queue: int = 1024
    """Datagrams waiting for the wire; a full queue refuses ``send``."""
    send_batch: int = 32
    """Datagrams handed to qh3 per transmit; qh3 drops what does not fit."""
    receive_queue: int = 4096
    """Datagrams waiting for ``receive``; on overflow the oldest is dropped and counted."""
    max_stream_data: int = 65536
    """Per-stream flow-control window: control messages are tiny."""
    path_mtu_discovery: bool = True
    batched_io: bool = True
    """Server socket: many packets per system call (recvmmsg/GRO, GSO) where the kernel can."""
    socket_buffer: int = 4 * 1024 * 1024
    """Server socket's kernel receive and send buffer, in bytes: absorbs bursts and floods."""

    def __post_init__(self) -> None:
        if self.udp_payload_size < 1200:
            raise ValueError("udp_payload_size must be at least 1200 (QUIC's minimum)")
        if self.socket_buffer < 0:
            raise ValueError("socket_buffer must be >= 0 (0: the kernel's default)")
        if self.send_queue < 1 or self.send_batch < 1 or self.receive_queue < 1:
            raise ValueError("queue sizes must be positive")


class QuicStreamReset(SnaptunError, ConnectionError):
    """The peer reset the stream (or asked us to stop sending)."""

    def __init__(self, stream_id: int, code: int) -> None:
        self.stream_id = stream_id
        self.code = code
        super().__init__(f"stream {stream_id} reset by peer (code {code})")


class QuicStream:
    """One bidirectional QUIC stream; reads are bounded by the caller."""

    def __init__(self, connection: QuicConnection, stream_id: int) -> None:
        self._conn = connection
        self.stream_id = stream_id
        self._buffer = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._write_closed = False

    # fed by the connection
    def _feed(self, data: bytes, end: bool) -> None:
        self._buffer += data
        self._eof = self._eof or end
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` once the peer finished the stream."""
        while not self._buffer and not self._eof and self._error is None:
            if self._conn.closed is not None:  # also a stream the connection no longer tracks
                self._error = self._conn.closed
                break
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._buffer:
            chunk = bytes(self._buffer[:max_bytes])
            del self._buffer[:max_bytes]
            return chunk
        if self._error is not None and not self._eof:
            raise self._error
        return b""

    def write(self, data: bytes, *, end_stream: bool = False) -> None:
        """Queue ``data`` (and FIN); raises :class:`ConnectionLost` once closed."""
        self._conn._check_open()
        if isinstance(self._error, QuicStreamReset):
            raise self._error  # qh3 would raise a bare ValueError
        if self._write_closed:
            raise ConnectionError(f"stream {self.stream_id} already finished")
        try:
            self._conn._quic.send_stream_data(self.stream_id, data, end_stream=end_stream)
        except QuicConnectionError as exc:
            raise self._conn._lost_in_qh3(exc) from None
        self._write_closed = end_stream
        self._conn._transmit_soon()
        self._forget_if_done()

    def _forget_if_done(self) -> None:
        """Drop the connection's reference once both directions are finished."""
        if self._write_closed and (self._eof or self._error is not None):
            self._conn._streams.pop(self.stream_id, None)

    def finish(self) -> None:
        """Send FIN."""
        if not self._write_closed:
            self.write(b"", end_stream=True)

    async def drain(self) -> None:
        """Wait until the queued stream data left for the wire (or the connection ended)."""
        self._conn._transmit_now()
        quic = self._conn._quic
        # qh3 has no "stream data sent" event; control responses are tiny, so
        # this loop almost never runs more than once.
        while self._conn.closed is None and quic.get_send_buffer_size(self.stream_id) > 0:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        self._conn._check_open()

    def reset(self, code: int = 0) -> None:
        """Abort both directions of the stream."""
        if self._conn.closed is not None:
            return
        with contextlib.suppress(Exception):
            if not self._write_closed:
                self._conn._quic.reset_stream(self.stream_id, code)
            self._conn._quic.stop_stream(self.stream_id, code)
        self._write_closed = True
        self._eof = True
        self._conn._streams.pop(self.stream_id, None)
        self._conn._transmit_soon()


class _Redirect:
    """The UDP transport as one connection sees it while qh3 sends to an address the peer left.

    qh3 addresses its datagrams to its active path's peer (``stale``); those
    go to ``current`` instead, an address qh3 validated earlier and the peer
    came back to. Anything else (a PATH_CHALLENGE to a new address, which
    must reach that address) passes untouched. One per move, not per packet.
    """

    __slots__ = ("current", "stale", "transport")

    def __init__(self, transport: Any, stale: Any, current: Any) -> None:
        self.transport = transport
        self.stale = stale
        self.current = current

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.transport.sendto(data, self.current if addr == self.stale else addr)

    def sendto_many(self, datagrams: list[bytes], addr: Any = None) -> None:
        self.transport.sendto_many(datagrams, self.current if addr == self.stale else addr)


class QuicConnection(QuicConnectionProtocol):
    """A snaptun QUIC connection: streams, datagrams, close with code and reason."""

    def __init__(self, quic: _Qh3Connection, *args: Any, settings: QuicSettings, **kwargs: Any):
        super().__init__(quic, *args, **kwargs)
        self.settings = settings
        self.closed: ConnectionLost | None = None
        self._closed_future: asyncio.Future[ConnectionLost] = self._loop.create_future()
        self._streams: dict[int, QuicStream] = {}
        # Idle tunnels are most of a gateway's connections: queues are made on
        # first use (an empty deque costs 760 bytes), streams wait in a list
        # (a tunnel opens a handful in its life).
        self._incoming: list[QuicStream] = []
        self._incoming_waiter: asyncio.Future[None] | None = None
        self._datagrams_in: deque[bytes] | None = None
        self._datagram_waiter: asyncio.Future[None] | None = None
        self._datagram_sink: Callable[[list[bytes]], None] | None = None
        self._max_datagram: tuple[int, int, int | None] = (0, 0, None)
        self._datagrams_out: deque[bytes] | None = None
        self._room_waiter: asyncio.Future[None] | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._last_heard = 0.0
        """Loop time of the last packet from the peer (for server keep-alives)."""
        self._ping_uid = 0
        self.datagrams_dropped_rx = 0
        self.on_receive_drop: Callable[[], None] | None = None
        """Called for each datagram dropped because ``receive_queue`` was full."""
        self.remote_address: tuple[str, int] | None = None
        # Until the peer's first long-header packet tells its connection ID
        # length, assume the longest (peers keep one length for a connection).
        self._peer_cid_length = _MAX_CID_LENGTH
        self._peer_cid_known = False
        self._transmit_deferred = False
        self._udp: Any = None
        """The real UDP transport (``_transport`` may be a :class:`_Redirect` over it)."""
        self._path: Any = None
        """The peer address we send to, as the transport reports it; None until synced."""
        self._qh3_path: Any = None
        """The peer address of qh3's active path, the last time we looked."""
        self._validated: set[Any] = set()
        """Peer addresses qh3 made its active path (at most qh3's 4 paths)."""
        if quic._quic_logger is None:
            # qh3 parses and copies every packet it sends to log it, even with no
            # logger to log to: 0.8 us per packet, about 5% of a 1200 B round trip.
            quic._log_packets = _no_packet_log  # type: ignore[method-assign]
        # Peer-opened bidirectional streams: every id below _peer_next_stream
        # was opened by the peer; those not yet surfaced wait in _peer_unseen.
        self._peer_next_stream = 0 if not quic._is_client else 1
        self._peer_unseen: set[int] = set()
        self._next_local_stream = 0
        self.late_stream_frames = 0
        """Stream data dropped because its stream was already finished or reset here."""
        # qh3's protocol base makes per-connection objects that this subclass
        # never uses (its stream readers; an asyncio.Event behind wait_closed,
        # which is overridden here): stand-ins cost nothing per connection.
        self._closed = _CLOSED_FLAG  # type: ignore[assignment]
        self._stream_readers = _NO_READERS
        self._stream_readers_done = _NO_STREAM_IDS  # type: ignore[assignment]
        self._stream_readers_done_order = _NO_STREAM_ORDER

    # ---- connection ------------------------------------------------------------

    async def wait_connected(self) -> None:
        """Wait for the TLS handshake to complete; ConnectionError if the connection ends first.

        qh3's own version leaves its shielded future behind when the wait is
        cancelled (a handshake timeout): qh3 later sets a ConnectionError on
        it that nobody retrieves, and asyncio logs "Future exception was never
        retrieved" for every failed attempt. Here a cancelled wait takes its
        future back (still shielded: qh3 may resolve it before we resume).
        """
        if self._connected:
            return
        assert self._connected_waiter is None, "already awaiting connected"
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._connected_waiter = waiter
        try:
            await asyncio.shield(waiter)
        finally:
            if self._connected_waiter is waiter:
                self._connected_waiter = None
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # seen here; a cancelled wait has no one else to tell

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._udp = transport
        if self._path is not None:  # a new socket (rebind) while steering elsewhere
            self._use_path(self._path)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        packet = data if isinstance(data, bytes) else data.encode()
        if not self._peer_cid_known:
            self._learn_peer(packet, addr)
        self._last_heard = now = self._loop_time()
        if addr == self._path:
            self._quic.receive_datagram(packet, addr, now=now)
        else:
            self._receive_off_path([packet], addr, now)
        self._after_receive()

    def datagrams_received(self, data: list[bytes], addr: Any) -> None:
        if not self._peer_cid_known and data:
            self._learn_peer(data[0], addr)
        self._last_heard = now = self._loop_time()
        if addr == self._path:
            self._quic.receive_many_datagrams(data, addr, now=now)
        else:
            self._receive_off_path(data, addr, now)
        self._after_receive()

    # ---- the peer's address ----------------------------------------------------------

    def _receive_off_path(self, packets: list[bytes], addr: Any, now: float) -> None:
        """Datagrams from an address we do not send to: follow the peer if it moved there.

        qh3 2.1.0 keeps up to 4 paths per connection and switches its active
        path only when a PATH_RESPONSE validates a *new* one: a datagram from
        an address it validated before starts nothing, so a peer that returns
        to an earlier address (a NAT rebinding back, a host back on its first
        network) is answered at the address it left, until the connection
        dies. RFC 9000 §9.3 lets an endpoint move to a validated address
        without validating it again, so we do that ourselves: when a
        datagram from an address qh3 once made active carries an
        authenticated, new packet, we send to that address (see
        :class:`_Redirect`). New addresses are still qh3's to validate (and
        anti-amplification limited), and when qh3 moves on its own we follow.
        """
        quic = self._quic
        core = quic._core
        if core is None or not quic._handshake_complete:
            quic.receive_many_datagrams(packets, addr, now)
            return
        # What qh3's receive_many_datagrams does after the handshake, keeping the
        # core's report: (datagrams, bytes, new authenticated packets, ...).
        report = quic._call_core(core.receive_many_datagrams, packets, addr, now)
        quic._drain_core()
        active = core.active_path[2]
        if active != self._qh3_path:  # qh3 validated a new path and moved (or a first look)
            self._qh3_path = active
            self._validated.add(active)
            self._use_path(active)
        elif report[2] and addr in self._validated and addr != self._path:
            self._use_path(addr)

    def _use_path(self, addr: Any) -> None:
        """Send to ``addr`` from now on, through a :class:`_Redirect` unless qh3 does already."""
        moved = self._path is not None and addr != self._path
        self._path = addr
        udp = self._udp
        if udp is not None:
            sending: Any = udp if addr == self._qh3_path else _Redirect(udp, self._qh3_path, addr)
            self._transport = sending
            self._sendto_many = sending.sendto_many if hasattr(udp, "sendto_many") else None
        if moved:
            self.remote_address = (str(addr[0]), int(addr[1]))
            log.debug("peer moved to %s", self.remote_address)

    def _after_receive(self) -> None:
        if self._datagram_sink is not None:
            self._sink_datagrams()
        self._process_events()
        if self.closed is None and self._quic._close_event is not None:
            self._peer_closed()
        # Transmit two loop iterations later rather than at once: by then the
        # application has reacted to what arrived (an echo, a response), so its
        # data and our ACKs leave in the same packets instead of separate ones.
        if not self._transmit_deferred:
            self._transmit_deferred = True
            self._loop.call_soon(self._loop.call_soon, self._deferred_transmit)

    def _sink_datagrams(self) -> None:
        """Hand the DATAGRAM frames qh3 just decoded to the sink as one list.

        qh3 queues one event object per frame, and its event loop costs a
        method call and five ``isinstance`` checks per event before ours: here
        the frames leave its queue (``_events``, qh3 2.1.0) in one pass, and
        the other events keep their order there. Datagrams are unordered
        relative to streams in QUIC, so handing them over first changes nothing.
        """
        events = self._quic._events
        if not events:
            return
        datagrams = [event.data for event in events if type(event) is DatagramFrameReceived]
        if not datagrams:
            return
        if len(datagrams) == len(events):
            events.clear()
        else:
            rest = [event for event in events if type(event) is not DatagramFrameReceived]
            events.clear()
            events.extend(rest)
        sink = self._datagram_sink
        assert sink is not None
        sink(datagrams)

    def _deferred_transmit(self) -> None:
        self._transmit_deferred = False
        self._transmit_now()

    def _peer_closed(self) -> None:
        """qh3 learnt of a close but reports it only after the draining period: act now."""
        event = self._quic._close_event
        assert event is not None
        application = event.frame_type is _APPLICATION_CLOSE
        self._terminated(
            ConnectionLost(
                event.error_code, event.reason_phrase, by_peer=True, application=application
            )
        )

    def _learn_peer(self, packet: bytes, addr: Any) -> None:
        """Note the peer's address and, from a long header, its connection ID length."""
        if self.remote_address is None:
            self.remote_address = (str(addr[0]), int(addr[1]))
        if len(packet) > 6 and packet[0] & 0x80:
            scid_at = 6 + packet[5]
            if scid_at < len(packet) and packet[scid_at] <= _MAX_CID_LENGTH:
                self._peer_cid_length = packet[scid_at]
                self._peer_cid_known = True

    @property
    def local_address(self) -> tuple[str, int] | None:
        """This end's UDP (host, port); None before the socket is known."""
        if self._udp is None:
            return None
        sockname = self._udp.get_extra_info("sockname")
        return (str(sockname[0]), int(sockname[1])) if sockname else None

    @property
    def send_queue_depth(self) -> int:
        """Datagrams waiting in our send queue."""
        out = self._datagrams_out
        return 0 if out is None else len(out)

    @property
    def open_streams(self) -> int:
        """Streams still tracked (not finished in both directions)."""
        return len(self._streams)

    @property
    def max_datagram_size(self) -> int | None:
        """Largest datagram payload the peer and our packet size allow (None: no DATAGRAM)."""
        peer = self._quic._remote_max_datagram_frame_size
        cid_length = self._peer_cid_length
        cached_peer, cached_cid_length, size = self._max_datagram
        if peer == cached_peer and cid_length == cached_cid_length:
            return size  # the per-packet case: both inputs change at most once
        if not peer:
            size = None
        else:
            overhead = _DATAGRAM_OVERHEAD + cid_length
            size = max(0, min(peer - 3, self.settings.udp_payload_size - overhead))
        self._max_datagram = (peer or 0, cid_length, size)
        return size

    def close(self, code: int = 0, reason: str = "") -> None:
        """Close with an application error code and reason phrase the peer sees."""
        if self.closed is not None:
            return
        self._quic.close(error_code=code, reason_phrase=reason)
        self._transmit_now()
        self._terminated(ConnectionLost(code, reason, by_peer=False))

    async def rebind(self) -> None:
        """Client: move to a fresh local UDP socket, as after a change of network.

        The server sees the connection arrive from a new address and
        validates it; a PING makes that happen now rather than at the next
        packet. The old socket is closed.
        """
        if not self._quic._is_client:
            raise RuntimeError("only a client connection can rebind")
        self._check_open()
        old = self._udp
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:  # like qh3's connect(): one dual-stack socket, IPv4 as mapped addresses
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0, 0, 0))
        except BaseException:
            sock.close()
            raise
        await create_optimized_datagram_transport(self._loop, lambda: self, sock=sock)
        if old is not None:
            old.close()
        self._ping_uid += 1
        self._quic.send_ping(self._ping_uid)
        self._transmit_now()

    async def wait_closed(self) -> ConnectionLost:  # type: ignore[override]
        """Wait until the connection ended; returns how."""
        return await asyncio.shield(self._closed_future)

    def _check_open(self) -> None:
        if self.closed is not None:
            raise self.closed

    def _lost_in_qh3(self, exc: Exception) -> ConnectionLost:
        """qh3 refused an operation because the connection is gone: record and return why."""
        if self._quic._close_event is not None:
            self._peer_closed()
        else:
            self._terminated(ConnectionLost(None, str(exc), by_peer=False, application=False))
        assert self.closed is not None
        return self.closed

    # ---- streams ------------------------------------------------------------------

    async def accept_stream(self) -> QuicStream:
        """The next bidirectional stream the peer opened."""
        while not self._incoming:
            self._check_open()
            self._incoming_waiter = self._loop.create_future()
            try:
                await self._incoming_waiter
            finally:
                self._incoming_waiter = None
        return self._incoming.pop(0)

    def open_stream(self) -> QuicStream:
        """Open a new bidirectional stream, with an id no other open gives.

        qh3's next id only moves once the stream is written to, so the id is
        reserved here; qh3 opens skipped lower ids implicitly, as QUIC does.
        """
        self._check_open()
        stream_id = max(self._quic.get_next_available_stream_id(), self._next_local_stream)
        self._next_local_stream = stream_id + 4
        stream = QuicStream(self, stream_id)
        self._streams[stream_id] = stream
        return stream

    # ---- datagrams -----------------------------------------------------------------

    def check_datagram(self, size: int) -> None:
        """Raise unless a datagram of ``size`` bytes can be queued now."""
        self._check_open()
        limit = self.max_datagram_size
        if limit is None:
            raise DatagramsUnsupported
        if size > limit:
            raise DatagramTooLarge(size, limit)

    def send_datagram(self, data: bytes) -> None:
        """Queue one datagram, never blocking; a full queue raises :class:`SendBufferFull`."""
        self.check_datagram(len(data))
        out = self._datagrams_out
        if out is None:
            out = self._datagrams_out = deque()
        elif len(out) >= self.settings.send_queue:
            raise SendBufferFull(self.settings.send_queue)
        out.append(data)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush_datagrams)

    def send_datagrams(self, datagrams: list[bytes]) -> bool:
        """Queue all of ``datagrams`` in order, or none of them (False).

        All or none: False if one of them is too large or the queue lacks room
        for all; :meth:`send_datagram` each then tells which and why. Raises
        :class:`ConnectionLost` once closed. One check and one ``extend`` for a
        burst, where :meth:`send_datagram` costs a few calls per datagram.
        """
        self._check_open()
        limit = self.max_datagram_size
        out = self._datagrams_out
        if out is None:
            out = self._datagrams_out = deque()
        if (
            limit is None
            or len(out) + len(datagrams) > self.settings.send_queue
            or max(map(len, datagrams), default=0) > limit
        ):
            return False
        out.extend(datagrams)
        if self._flush_handle is None and out:
            self._flush_handle = self._loop.call_soon(self._flush_datagrams)
        return True

    async def send_datagram_wait(self, data: bytes) -> None:
        """Queue one datagram, waiting for room in the queue."""
        self.check_datagram(len(data))
        while self.send_queue_depth >= self.settings.send_queue:
            self._room_waiter = self._loop.create_future()
            try:
                await self._room_waiter
            finally:
                self._room_waiter = None
            self._check_open()
        self.send_datagram(data)

    def set_datagram_sink(self, sink: Callable[[list[bytes]], None] | None) -> None:
        """Hand received datagrams to ``sink`` at once, a list per burst, instead of queueing.

        The sink runs inside the UDP receive callback with every datagram of
        the packets received together (no task switch, no queue, no event
        object handled per packet: the gateway's forwarding path), in order,
        never with an empty list. It must not block or raise; while it is set,
        :meth:`receive_datagram` gets nothing new. Datagrams queued before the
        sink was set are handed to it first.
        """
        self._datagram_sink = sink
        if sink is not None and self._datagrams_in:
            queued = list(self._datagrams_in)
            self._datagrams_in.clear()
            sink(queued)

    async def receive_datagram(self) -> bytes:
        """The next datagram from the peer; raises :class:`ConnectionLost` when closed."""
        while not self._datagrams_in:
            self._check_open()
            self._datagram_waiter = self._loop.create_future()
            try:
                await self._datagram_waiter
            finally:
                self._datagram_waiter = None
        queued = self._datagrams_in
        assert queued is not None
        return queued.popleft()

    def _flush_datagrams(self) -> None:
        self._flush_handle = None
        if self.closed is not None:
            return
        out = self._datagrams_out
        if out is None:
            return
        quic = self._quic
        # qh3's send_datagram_frame only wraps its native core's (two Python
        # calls per datagram); the core's own raises as it does.
        core = quic._core
        send = quic.send_datagram_frame if core is None else core.send_datagram
        try:
            for _ in range(min(len(out), self.settings.send_batch)):
                send(out.popleft())
            self.transmit()
        except Exception as exc:  # qh3 raises a bare connection error here
            log.warning("QUIC transmit failed, closing: %s", exc)
            self._terminated(
                ConnectionLost(None, f"transmit failed: {exc}", by_peer=False, application=False)
            )
            return
        if out:
            self._flush_handle = self._loop.call_soon(self._flush_datagrams)
        _wake(self._room_waiter)

    # ---- events ----------------------------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            sink = self._datagram_sink
            if sink is not None:  # one not taken by _sink_datagrams (e.g. after a timer)
                sink([event.data])
                return
            self._queue_datagram(event.data)
        elif isinstance(event, StreamDataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is None:
                if not self._peer_opens(event.stream_id):
                    self.late_stream_frames += 1
                    return  # data for a stream we already forgot: not a new one
                stream = QuicStream(self, event.stream_id)
                self._streams[event.stream_id] = stream
                self._incoming.append(stream)
                _wake(self._incoming_waiter)
            stream._feed(event.data, event.end_stream)
            if event.end_stream:
                stream._forget_if_done()
        elif isinstance(event, StreamReset | StopSendingReceived):
            self._stream_reset(event)
        elif isinstance(event, HandshakeCompleted):
            self._arm_keepalive()
            if not self._quic._is_client:
                self._release_handshake_state()
        elif isinstance(event, ConnectionTerminated):
            by_peer = self.closed is None
            application = event.frame_type is _APPLICATION_CLOSE
            self._terminated(
                ConnectionLost(
                    event.error_code, event.reason_phrase, by_peer=by_peer, application=application
                )
            )
            self._release()

    def connection_lost(self, exc: Exception | None) -> None:
        """A client's own socket closed: let go of its transport, which holds us too (a cycle).

        After :meth:`rebind` it is the earlier socket that closed, while the
        current one is open: that one stays.
        """
        udp = self._udp
        if udp is not None and not udp.is_closing():
            return
        self._sendto_many = None
        self._transport = None
        self._udp = None

    def _release(self) -> None:
        """Break the reference cycles of a connection qh3 has ended, so it is freed at once.

        qh3 ties a connection into cycles (the server's handlers hold the
        protocol, its connection and TLS objects hold each other's bound
        methods); left to the cyclic GC, every ended connection (~50 KiB, its
        Rust state included) waited for a full collection, which a gateway
        reaches rarely (docs/RELIABILITY.md, ``bogus``). Called once qh3 has
        reported the end: nothing of qh3's calls these any more.
        """
        self._connection_id_issued_handler = _ignore
        self._connection_id_retired_handler = _ignore
        self._connection_terminated_handler = _ignore
        bridge = self._quic._tls
        if bridge is not None:
            self._quic._tls = None  # qh3 itself drops it on a version change or Retry
            if bridge.tls is not None:  # not the stand-in of a server past its handshake
                bridge.tls.alpn_cb = None
                bridge.tls.update_traffic_key_cb = _ignore
        self._streams.clear()  # each holds its connection; all were failed by _terminated

    def _stream_reset(self, event: StreamReset | StopSendingReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._fail(QuicStreamReset(event.stream_id, event.error_code))
            stream._forget_if_done()
        else:
            self._peer_unseen.discard(event.stream_id)  # reset before any data

    def _peer_opens(self, stream_id: int) -> bool:
        """True once per peer-opened bidirectional stream id, False for any other id.

        Ours and unidirectional ones are never new; a peer id below the
        highest seen is new only if it was skipped (implicitly opened, its
        data not yet here). The qh3 core holds the peer to its stream credit,
        so ``_peer_unseen`` stays within that credit.
        """
        if stream_id & 3 != self._peer_next_stream & 3:
            return False
        if stream_id >= self._peer_next_stream:
            self._peer_unseen.update(range(self._peer_next_stream, stream_id, 4))
            self._peer_next_stream = stream_id + 4
            return True
        if stream_id in self._peer_unseen:
            self._peer_unseen.discard(stream_id)
            return True
        return False

    def _queue_datagram(self, data: bytes) -> None:
        """Queue a received datagram for ``receive_datagram`` (no sink set)."""
        queued = self._datagrams_in
        if queued is None:
            queued = self._datagrams_in = deque()
        elif len(queued) >= self.settings.receive_queue:
            queued.popleft()
            self.datagrams_dropped_rx += 1
            if self.on_receive_drop is not None:
                self.on_receive_drop()
        queued.append(data)
        _wake(self._datagram_waiter)

    def _release_handshake_state(self) -> None:
        """Free what qh3 keeps of a server handshake once it completed (about 9 KiB).

        qh3 keeps the TLS context (key schedule, transcript, certificate, three
        queues) and the peer's transport parameters for the connection's life,
        though a server's TLS has nothing left to do in QUIC: keys are updated
        by the native core, our server sends no session tickets and a client
        sends no TLS message after its Finished. A CRYPTO frame that still
        arrives closes the connection, as the real context would (an
        unexpected message).
        """
        quic = self._quic
        quic._tls = _TLS_DONE  # type: ignore[assignment]
        quic._applied_transport_parameters = None

    def _terminated(self, lost: ConnectionLost) -> None:
        if self.closed is not None:
            return
        self.closed = lost
        loop_timers(self._loop).cancel(self._send_keepalive)
        for stream in self._streams.values():
            stream._fail(lost)
        for stream in self._incoming:
            stream._fail(lost)
        if self._datagrams_out is not None:
            self._datagrams_out.clear()
        _wake(self._incoming_waiter)
        _wake(self._datagram_waiter)
        _wake(self._room_waiter)
        if not self._closed_future.done():
            self._closed_future.set_result(lost)

    # ---- transmit and keep-alive --------------------------------------------------------

    def _transmit_now(self) -> None:
        try:
            self.transmit()
        except Exception as exc:
            self._terminated(
                ConnectionLost(None, f"transmit failed: {exc}", by_peer=False, application=False)
            )

    def _arm_keepalive(self, delay: float | None = None) -> None:
        interval = self.settings.keep_alive
        if interval:
            loop_timers(self._loop).arm(self._send_keepalive, delay or interval)

    def _send_keepalive(self) -> None:
        """Ping the peer: always as a client; as a server only a peer quiet for 1.5 intervals.

        A client that pings keeps both idle timers fresh (the server's ACK
        restarts the client's), so the server stays quiet for it and 20,000
        idle tunnels cost half the keep-alive packets; a client that sends
        nothing (the Rust reference's) is still held by the server's pings.
        """
        if self.closed is not None:
            return
        interval = self.settings.keep_alive
        if not self._quic._is_client and interval:
            quiet = self._loop.time() - self._last_heard
            if quiet < 1.5 * interval:
                self._arm_keepalive(1.5 * interval - quiet)
                return
        self._ping_uid += 1
        with contextlib.suppress(Exception):
            self._quic.send_ping(self._ping_uid)
        self._transmit_now()
        self._arm_keepalive()


def _no_packet_log(event: str, data: bytes) -> None:
    """qh3's per-packet log hook where there is no logger: nothing to do."""


def _ignore(*args: object) -> None:
    """A callback that does nothing: what an ended connection's hooks become."""


class _TlsDone:
    """Stands in for qh3's TLS bridge of a server connection after its handshake."""

    __slots__ = ()
    tls = None
    cipher_suite = None
    peer_certificate = None
    peer_certificate_chain: tuple[()] = ()
    ech_retry_configs = None
    ech_accepted = False

    def receive_crypto(self, *_args: Any, **_kwargs: Any) -> None:
        raise QuicTlsBridgeError(_UNEXPECTED_MESSAGE, "TLS message after the handshake")


_UNEXPECTED_MESSAGE: Final = QuicErrorCode.CRYPTO_ERROR + 10  # TLS alert unexpected_message
_TLS_DONE: Final = _TlsDone()


class _NoEvent:
    """Stands in for the asyncio.Event qh3's protocol sets when closed (we keep a future)."""

    __slots__ = ()

    def set(self) -> None:
        pass


_CLOSED_FLAG: Final = _NoEvent()
_NO_READERS: Final[Any] = MappingProxyType({})
_NO_STREAM_IDS: Final = frozenset[int]()
_NO_STREAM_ORDER: Final[Any] = ()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


# ---- endpoints ---------------------------------------------------------------------------


def _base_configuration(settings: QuicSettings, *, is_client: bool) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        idle_timeout=settings.idle_timeout,
        max_datagram_frame_size=_MAX_DATAGRAM_FRAME,
        max_datagram_size=settings.udp_payload_size,
        max_stream_data=settings.max_stream_data,
        probe_datagram_size=settings.path_mtu_discovery,
    )


HANDSHAKE_TIMEOUT: Final = 5.0
"""Seconds a new server connection has to finish its QUIC handshake before it is freed."""
_REFUSAL_LOG_INTERVAL: Final = 10.0


class _RetryTokenHandler:
    """qh3's Retry token interface over :class:`RetryTokens` (HMAC, per-process key).

    qh3's own handler encrypts tokens with RSA-2048: a forged 256-byte token
    cost a 2.5 ms private-key operation on the event loop, and qh3 let the
    decryption error escape, logged with a traceback per datagram. Its
    tokens also never expired. These cost one HMAC and live
    ``retry_token_lifetime`` seconds.
    """

    def __init__(self, lifetime: float, clock: Callable[[], float]) -> None:
        self.tokens = RetryTokens(secrets.token_bytes(32), lifetime)
        self._clock = clock

    def create_token(self, addr: Any, odcid: bytes, rscid: bytes) -> bytes:
        return self.tokens.issue(str(addr[0]), int(addr[1]), odcid, rscid, self._clock())

    def validate_token(self, addr: Any, token: bytes) -> tuple[bytes, bytes]:
        checked = self.tokens.check(token, str(addr[0]), int(addr[1]), None, self._clock())
        if checked is None:
            raise ValueError("invalid Retry token")
        return checked


class _GuardedServer(QuicServer):
    """qh3's server, but a datagram for no known connection must pass a ConnectionGate.

    qh3 makes a connection (and its handshake state) for every Initial-looking
    datagram of an unknown connection ID; the gate bounds that (see
    :mod:`snaptun.core.admission`). Datagrams of known connections pass
    untouched, with one dict lookup.
    """

    def __init__(self, *, gate: ConnectionGate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        # qh3's Retry, with our tokens, switched per datagram by the gate.
        self._retry_tokens = (
            _RetryTokenHandler(gate.settings.retry_token_lifetime, self._loop.time)
            if gate.settings.retry != "never"
            else None
        )
        self.retries_sent = 0
        self._cid_length: int = kwargs["configuration"].connection_id_length
        self._logged_at = 0.0
        self._logged_refusals = 0

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if isinstance(data, bytes) and self._destination_cid(data) not in self._protocols:
            now = self._loop.time()
            if self._retry_tokens is not None and not self._token_ok(data, addr, now):
                self.gate.refuse(BAD_RETRY_TOKEN)
                self._log_refusals(now)
                return
            if self.gate.admit(data, str(addr[0]), now) is not None:
                self._log_refusals(now)
                return
            validate = self._retry_tokens is not None and self.gate.wants_retry(data)
            self._retry = self._retry_tokens if validate else None  # type: ignore[assignment]
            if validate and initial_token_length(data) == 0:
                self.retries_sent += 1
                self.gate.completed(str(addr[0]))  # a Retry makes no state: no token spent
        super().datagram_received(data, addr)

    def datagrams_received(self, data: list[bytes], addr: Any) -> None:
        """A batch from one source (recvmmsg/GRO): runs of one connection go to qh3 at once."""
        protocols = self._protocols
        run: list[bytes] = []
        owner: QuicConnectionProtocol | None = None
        for packet in data:
            protocol = protocols.get(self._destination_cid(packet))  # type: ignore[arg-type]
            if protocol is not owner or protocol is None:
                if run:
                    _deliver(owner, run, addr)
                    run = []
                owner = protocol
            if protocol is None:
                self.datagram_received(packet, addr)  # a new connection: through the gate
            else:
                run.append(packet)
        if run:
            _deliver(owner, run, addr)

    def _token_ok(self, data: bytes, addr: Any, now: float) -> bool:
        """False for an Initial whose token is not a valid Retry token of ours for it."""
        if not looks_like_initial(data):
            return True  # the gate refuses it
        token = initial_token(data)
        if token == b"":
            return True
        assert self._retry_tokens is not None
        tokens = self._retry_tokens.tokens
        dcid = data[6 : 6 + data[5]]
        return token is not None and (
            tokens.check(token, str(addr[0]), int(addr[1]), dcid, now) is not None
        )

    def _destination_cid(self, data: bytes) -> bytes | None:
        if not data:
            return None
        if data[0] & 0x80:  # long header: length-prefixed DCID after the version
            if len(data) < 6:
                return None
            return data[6 : 6 + data[5]]
        return data[1 : 1 + self._cid_length]

    def _log_refusals(self, now: float) -> None:
        """A summary at most every 10 s: never a log line per datagram."""
        if now - self._logged_at < _REFUSAL_LOG_INTERVAL:
            return
        total = sum(self.gate.refused.values())
        log.warning(
            "refused %d datagrams for new connections in the last %.0f s (%s)",
            total - self._logged_refusals,
            now - self._logged_at if self._logged_at else 0.0,
            ", ".join(f"{k}={v}" for k, v in self.gate.refused.items()),
        )
        self._logged_at = now
        self._logged_refusals = total


def _deliver(protocol: QuicConnectionProtocol | None, packets: list[bytes], addr: Any) -> None:
    assert protocol is not None
    if len(packets) == 1:
        protocol.datagram_received(packets[0], addr)
    else:
        protocol.datagrams_received(packets, addr)


def _server_socket(host: str, port: int, buffer: int) -> socket.socket:
    """A bound, non-blocking UDP socket with ``buffer`` bytes of kernel buffers each way."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST | socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if buffer:
            for force, plain in (
                (_SO_RCVBUFFORCE, socket.SO_RCVBUF),
                (_SO_SNDBUFFORCE, socket.SO_SNDBUF),
            ):
                try:  # beyond net.core.rmem_max only with CAP_NET_ADMIN
                    sock.setsockopt(socket.SOL_SOCKET, force, buffer)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, buffer)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


_SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE: Final = getattr(socket, "SO_SNDBUFFORCE", 32)


class QuicEndpoint:
    """A listening snaptun QUIC server endpoint; connections arrive via :meth:`accept`.

    New connections pass a :class:`~snaptun.core.admission.ConnectionGate`
    (Initials only, a bound on half-open connections, per-source rates), and a
    connection that has not finished its handshake within ``handshake_timeout``
    seconds is closed and freed.
    """

    def __init__(
        self,
        settings: QuicSettings,
        backlog: int = 256,
        *,
        admission: AdmissionSettings | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.settings = settings
        self._server: QuicServer | None = None
        self._pending: asyncio.Queue[QuicConnection] = asyncio.Queue(backlog)
        self.refused_backlog = 0
        self.gate = ConnectionGate(admission)
        self.handshake_timeout = handshake_timeout
        self.handshake_timeouts = 0
        """Half-open connections closed because their handshake took too long."""

    @property
    def retries_sent(self) -> int:
        """QUIC Retry packets sent (address validation of new clients)."""
        server = self._server
        return server.retries_sent if isinstance(server, _GuardedServer) else 0

    @property
    def known_connection_ids(self) -> int:
        """Connection IDs qh3 routes now (each connection has one or a few)."""
        return len(self._server._protocols) if self._server is not None else 0

    @property
    def local_address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        assert self._server is not None
        transport = self._server._transport
        assert transport is not None
        sockname: tuple[str, int] = transport.get_extra_info("sockname")[:2]
        return sockname

    async def accept(self) -> QuicConnection:
        """The next connection whose handshake completed."""
        return await self._pending.get()

    def close(self) -> None:
        """Stop listening (established connections are closed by their owners)."""
        if self._server is not None:
            self._server.close()  # type: ignore[no-untyped-call]

    def _on_connection(self, conn: QuicConnection) -> None:
        gate = self.gate
        gate.opened()

        async def handshake() -> None:
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    await conn.wait_connected()
            except TimeoutError:
                self.handshake_timeouts += 1
                conn.close(0x1, "handshake timeout")  # frees it once qh3 ends the connection
                return
            except ConnectionError:
                return
            finally:
                gate.settled()
            if conn.remote_address is not None:
                gate.completed(str(conn.remote_address[0]))
            try:
                self._pending.put_nowait(conn)
            except asyncio.QueueFull:
                self.refused_backlog += 1
                conn.close(0x2, "server busy")

        task = asyncio.ensure_future(handshake())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Future[None]] = set()


async def listen(
    host: str,
    port: int,
    *,
    cert_file: str | Path,
    key_file: str | Path,
    settings: QuicSettings | None = None,
    admission: AdmissionSettings | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> QuicEndpoint:
    """Bind a server endpoint that presents the PEM certificate and key."""
    settings = settings or QuicSettings()
    config = _base_configuration(settings, is_client=False)
    config.load_cert_chain(str(cert_file), str(key_file))
    endpoint = QuicEndpoint(settings, admission=admission, handshake_timeout=handshake_timeout)

    def create_protocol(quic: _Qh3Connection, **kwargs: Any) -> QuicConnection:
        conn = QuicConnection(quic, settings=settings, **kwargs)
        endpoint._on_connection(conn)
        return conn

    def create_server() -> _GuardedServer:
        return _GuardedServer(
            gate=endpoint.gate, configuration=config, create_protocol=create_protocol
        )

    loop = asyncio.get_running_loop()
    sock = _server_socket(host, port, settings.socket_buffer)
    if settings.batched_io:
        _, server = await create_optimized_datagram_transport(loop, create_server, sock)
    else:
        _, server = await loop.create_datagram_endpoint(create_server, sock=sock)
    endpoint._server = cast(_GuardedServer, server)
    return endpoint


def _client_configuration(
    settings: QuicSettings,
    *,
    server_name: str,
    ca_file: str | Path | None,
    fingerprint: str | None,
    insecure: bool,
) -> QuicConfiguration:
    config = _base_configuration(settings, is_client=True)
    config.server_name = server_name
    # Ed25519 server certificates must be allowed explicitly in qh3.
    config.signature_algorithms = [
        SignatureAlgorithm.ECDSA_SECP256R1_SHA256,
        SignatureAlgorithm.RSA_PSS_RSAE_SHA256,
        SignatureAlgorithm.ED25519,
        SignatureAlgorithm.ECDSA_SECP384R1_SHA384,
        SignatureAlgorithm.RSA_PSS_RSAE_SHA384,
        SignatureAlgorithm.RSA_PKCS1_SHA256,
    ]
    if insecure:
        config.verify_mode = ssl.CERT_NONE
    elif fingerprint is not None:
        config.verify_mode = ssl.CERT_NONE
        config.assert_fingerprint = fingerprint.replace(":", "").lower()
    elif ca_file is not None:
        pem = Path(ca_file).read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        if _is_ca(cert):
            config.load_verify_locations(cafile=str(ca_file))
        else:
            # A self-signed leaf (the usual SNAP setup) cannot anchor a chain in
            # qh3, so it is pinned: the server must present exactly it.
            config.verify_mode = ssl.CERT_NONE
            config.assert_fingerprint = fingerprint_of(pem)
    else:
        raise ValueError("give a CA file, a certificate fingerprint, or insecure=True")
    return config


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


_FINGERPRINT_MISMATCH: Final = re.compile(
    r'Fingerprints did not match\. Expected "([0-9a-f]+)", got "([0-9a-f]+)"'
)
"""qh3's reason phrase when the server's certificate is not the pinned one (qh3 2.x)."""


def _handshake_failure(host: str, port: int, closed: ConnectionLost | None) -> ConnectionLost:
    """Why a handshake failed, from the close qh3 made (a TLS alert) if there was one.

    qh3 aborts a handshake by closing the connection with CRYPTO_ERROR plus
    the alert and a reason phrase, then reports only ``ConnectionError``.
    """
    if closed is None or not closed.reason:
        return ConnectionLost(None, f"handshake with {host}:{port} failed", by_peer=True)
    mismatch = _FINGERPRINT_MISMATCH.search(closed.reason)
    if mismatch is not None:
        return CertificateMismatch(mismatch[1], mismatch[2], closed.code, closed.reason)
    why = f"handshake with {host}:{port} failed: {closed.reason}"
    return ConnectionLost(None, why, by_peer=True)


@contextlib.asynccontextmanager
async def connect(
    host: str,
    port: int,
    *,
    server_name: str = "localhost",
    ca_file: str | Path | None = None,
    fingerprint: str | None = None,
    insecure: bool = False,
    settings: QuicSettings | None = None,
    timeout: float = 5.0,
) -> Any:
    """Open a client connection (an async context manager yielding a :class:`QuicConnection`).

    Trust: ``ca_file`` (a CA, or a self-signed server certificate which is
    then pinned), ``fingerprint`` (SHA-256 of the server certificate), or
    ``insecure=True`` to skip verification explicitly. A server whose
    certificate is not the ``fingerprint`` one raises
    :class:`~snaptun.errors.CertificateMismatch`; another failed handshake
    raises :class:`~snaptun.errors.ConnectionLost` with the TLS alert's reason.
    """
    settings = settings or QuicSettings()
    config = _client_configuration(
        settings,
        server_name=server_name,
        ca_file=ca_file,
        fingerprint=fingerprint,
        insecure=insecure,
    )

    made: list[QuicConnection] = []

    def create_protocol(quic: _Qh3Connection, **kwargs: Any) -> QuicConnection:
        made.append(QuicConnection(quic, settings=settings, **kwargs))
        return made[-1]

    manager = _qh3_connect(
        host, port, configuration=config, create_protocol=create_protocol, wait_connected=True
    )
    try:
        async with asyncio.timeout(timeout):
            conn = cast(QuicConnection, await manager.__aenter__())
    except ConnectionError as exc:
        raise _handshake_failure(host, port, made[-1].closed if made else None) from exc
    except TimeoutError:
        raise ConnectionLost(
            None,
            f"no handshake with {host}:{port} within {timeout} s",
            by_peer=False,
            application=False,
        ) from None
    conn.remote_address = (host, port)
    first_socket = conn._udp
    try:
        yield conn
    finally:
        if conn.closed is None:
            conn.close(0, "")
        with contextlib.suppress(Exception):
            await manager.__aexit__(None, None, None)
        if conn._udp is not first_socket:  # qh3 closes only the socket it made
            conn._udp.close()
