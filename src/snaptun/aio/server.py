"""The snaptun server: turns an accepted QUIC connection into a tunnel.

The caller owns the QUIC endpoint, as in the reference::

    server = Server(allocator, validator)
    while True:
        conn = await endpoint.accept()
        sender, receiver, control = await server.accept_with_timeout(conn)
        asyncio.create_task(control.run())      # drives renewals and expiry
        ...                                     # receiver.receive(), sender.send(p)

The protocol decisions live in the sans-I/O core (``snaptun.core``): the
setup order, each refusal's close code and reason, the expiry deadline, the
cap on requests in flight and when a grant must be written are decided by
:class:`~snaptun.core.state.TunnelStateMachine`, which answers with a
:class:`~snaptun.core.state.Step`. This module carries the steps out (reads,
writes, closes, grant writes through the ``store`` hook) with every read
bounded in time and size, and maps outcomes to the exceptions of its API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic

from snaptun.aio.quic import QuicConnection, QuicStream, QuicStreamReset
from snaptun.constants import ACCEPT_TIMEOUT, SEND_TIMEOUT
from snaptun.core.addressing import EndhostAddress
from snaptun.core.allocator import GrantAllocator, GrantChange
from snaptun.core.control import ControlRequest, RequestReader, encode_response
from snaptun.core.registry import TunnelRegistry
from snaptun.core.state import (
    INTERNAL_ERROR,
    MAX_CONCURRENT_REQUESTS,
    REPLACED,
    SETUP_TIMED_OUT,
    Close,
    ControlAnswer,
    Step,
    Stored,
    StoreFailure,
    TunnelStateMachine,
)
from snaptun.core.tokens import TokenT, TokenValidator
from snaptun.errors import (
    AcceptConnectionError,
    AcceptError,
    AcceptInternalError,
    AcceptParseError,
    AcceptReplaced,
    AcceptSendError,
    AcceptTimeout,
    ClosedPrematurely,
    ConnectionLost,
    ControlInternalError,
    ControlParseError,
    ControlSendError,
    NewAssignedAddress,
    ParseControlRequestError,
    ReceiveConnectionClosed,
    ReceiveConnectionError,
    RequestReadError,
    SendConnectionClosed,
    SendControlResponseError,
    SessionExpired,
    TunnelReplaced,
    UnexpectedControlRequest,
)
from snaptun.metrics import Metrics

__all__ = ["MAX_CONCURRENT_REQUESTS", "Control", "GrantStore", "Receiver", "Sender", "Server"]

log = logging.getLogger(__name__)

CONTROL_REQUEST_TIMEOUT = ACCEPT_TIMEOUT
"""Seconds a post-setup control request may take to arrive complete (ours)."""

GrantStore = Callable[[GrantChange], "Stored | Awaitable[Stored]"]
"""Writes one grant change (``change.after``, or deletes the identity's record when
None) and says whether it is stored. Must not raise for a storage failure: it
logs the failure and returns False (refused) or
:attr:`~snaptun.core.state.StoreFailure.UNAVAILABLE` (the store cannot be
reached). A refused grant is undone by the core; a hold that was not stored is
the store's to repair later.

A local store (SQLite) answers at once; a remote one (PostgreSQL) returns an
awaitable for a grant, which the server awaits before it answers. Holds and
deletions (``change.after`` not active) must be answered at once: they are
written while a tunnel ends, which cannot wait."""


class _Tunnel(Generic[TokenT]):
    """One connection and its machine: carries out the machine's closes and writes."""

    __slots__ = ("clock", "conn", "lock", "machine", "store")

    def __init__(
        self,
        conn: QuicConnection,
        machine: TunnelStateMachine[TokenT],
        clock: Callable[[], float],
        store: GrantStore | None,
    ) -> None:
        self.conn = conn
        self.machine = machine
        self.clock = clock
        self.store = store
        self.lock: asyncio.Lock | None = None
        """Made on the first post-setup request: one grant write at a time per tunnel."""

    def end(self) -> None:
        """End the machine for good; a hold it returns is written (failures are the store's)."""
        change = self.machine.shutdown(self.clock())
        if change is not None and self.store is not None:
            result = self.store(change)
            if not isinstance(result, bool | StoreFailure):  # pragma: no cover - see GrantStore
                raise TypeError("a grant store must write a hold at once")

    def close(self, close: Close) -> None:
        """End the machine, then close the connection as ``close`` says."""
        self.end()
        self.conn.close(close.code, close.reason)

    async def written(self, step: Step) -> Step:
        """Write the step's grant, if any (awaited for a remote store), and return the rest."""
        while step.store is not None:
            ok = self.store(step.store) if self.store is not None else True
            if not isinstance(ok, bool | StoreFailure):
                ok = await ok
            step = self.machine.stored(ok)
        return step


async def read_request(stream: QuicStream) -> ControlRequest:
    """Read one control request from ``stream`` (bounded by the reader's size limit)."""
    reader = RequestReader()
    while True:
        try:
            chunk = await stream.read(4096)
        except QuicStreamReset as exc:
            raise RequestReadError() from exc
        if not chunk:
            return reader.feed_eof()
        request = reader.feed_data(chunk)
        if request is not None:
            return request


async def send_response(stream: QuicStream, response: ControlAnswer) -> None:
    """Write a response and FIN within SEND_TIMEOUT (the reference never applies it)."""
    try:
        async with asyncio.timeout(SEND_TIMEOUT):
            stream.write(encode_response(response.status, response.body), end_stream=True)
            await stream.drain()
    except TimeoutError as exc:
        raise SendControlResponseError("sending the control response timed out") from exc
    except (ConnectionError, ConnectionLost) as exc:
        raise SendControlResponseError(f"sending the control response failed: {exc}") from exc


class Server(Generic[TokenT]):
    """Accepts QUIC connections and turns them into snap tunnels.

    Newest wins: when a tunnel is granted an address that an older live tunnel
    of the same identity uses, the older one is closed at once with code 0
    and the reason "replaced by a newer tunnel" (its Control ends with
    :class:`~snaptun.errors.TunnelReplaced`), and only the tunnel that holds
    the grant puts it on hold when it ends (:mod:`snaptun.core.registry`).

    Any unexpected exception while serving a tunnel closes that connection
    with code 5 ("internal error") and is logged once, with its traceback:
    a defect never leaves a client waiting on an open connection.
    """

    def __init__(
        self,
        allocator: GrantAllocator[TokenT],
        validator: TokenValidator[TokenT],
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
        accept_timeout: float = ACCEPT_TIMEOUT,
        registry: TunnelRegistry | None = None,
        store: GrantStore | None = None,
    ) -> None:
        """``store`` writes grant changes (none by default: grants live in memory only)."""
        self._allocator = allocator
        self._store = store
        self._validator = validator
        self.metrics = metrics if metrics is not None else Metrics.isolated()
        self.registry = registry if registry is not None else TunnelRegistry()
        """Which live tunnel uses each identity's grant (shared by all tunnels of this server)."""
        self._clock = clock
        self._accept_timeout = accept_timeout

    async def accept_with_timeout(
        self, conn: QuicConnection
    ) -> tuple[Sender[TokenT], Receiver[TokenT], Control[TokenT]]:
        """Run the setup (renew_session, then assign_addresses) within ACCEPT_TIMEOUT.

        On failure the connection is closed with the protocol's close code
        and an :class:`~snaptun.errors.AcceptError` is raised.
        """
        machine: TunnelStateMachine[TokenT] = TunnelStateMachine(
            self._validator, self._allocator, self.registry
        )
        tunnel = _Tunnel(conn, machine, self._clock, self._store)
        machine.on_replaced(lambda: conn.close(REPLACED.code, REPLACED.reason))
        try:
            async with asyncio.timeout(self._accept_timeout):
                while not await self._setup_step(tunnel):
                    pass
        except TimeoutError:
            tunnel.close(SETUP_TIMED_OUT)
            raise AcceptTimeout from None
        except AcceptError:
            tunnel.end()
            if machine.was_replaced:
                raise AcceptReplaced from None
            raise
        except Exception as exc:
            log.exception("unexpected error setting up a tunnel; closing it with code 5")
            tunnel.close(INTERNAL_ERROR)
            raise AcceptInternalError(exc) from exc
        except BaseException:
            tunnel.end()
            raise
        if machine.is_closed:  # replaced while its last answer was on the way
            raise AcceptReplaced
        version = machine.version
        return (
            Sender(tunnel, version, self.metrics),
            Receiver(conn, machine, self.metrics),
            Control(conn, machine, self._clock, store=self._store),
        )

    async def _setup_step(self, tunnel: _Tunnel[TokenT]) -> bool:
        """Read one setup request and carry out the machine's step; True once established."""
        conn, machine = tunnel.conn, tunnel.machine
        try:
            stream = await conn.accept_stream()
            request = await read_request(stream)
        except ConnectionLost as exc:
            raise AcceptConnectionError(exc) from exc
        except ParseControlRequestError as exc:
            conn.close(*_args(machine.unparsable(exc)))
            raise AcceptParseError(exc) from exc
        step = await tunnel.written(machine.setup_request(self._clock(), request))
        if step.answer is None:  # the wrong request: closed without an answer
            assert step.close is not None
            conn.close(*_args(step.close))
            raise UnexpectedControlRequest(step.close.reason)
        try:
            await send_response(stream, step.answer)
        except SendControlResponseError as exc:
            if step.answer.ok:
                assert step.close_if_unsent is not None
                conn.close(*_args(step.close_if_unsent))
                raise AcceptSendError(exc) from exc
        if step.close is not None:
            conn.close(*_args(step.close))
            raise UnexpectedControlRequest(
                f"{step.close.reason} (HTTP {step.answer.status})", refusal=step.refusal
            )
        return step.established


def _args(close: Close) -> tuple[int, str]:
    return close.code, close.reason


class Sender(Generic[TokenT]):
    """Sends packets to the client, one QUIC datagram each."""

    def __init__(self, tunnel: _Tunnel[TokenT], version: int, metrics: Metrics) -> None:
        self._tunnel = tunnel
        self._conn = tunnel.conn
        self._machine = machine = tunnel.machine
        self._version = version
        self._closed = False
        self._addresses = machine.addresses()
        self._metrics = metrics

    @property
    def assigned_addresses(self) -> list[EndhostAddress]:
        """The addresses this Sender was created for."""
        return list(self._addresses)

    @property
    def remote_underlay_address(self) -> tuple[str, int] | None:
        """The client's UDP address."""
        return self._conn.remote_address

    def send(self, packet: bytes) -> None:
        """Send now or raise; never blocks, never truncates, never drops silently."""
        self._check(packet)
        try:
            self._conn.send_datagram(packet)
        except ConnectionLost:
            self._closed = True
            raise SendConnectionClosed from None
        self._metrics.sent += 1

    def send_many(self, packets: list[bytes]) -> bool:
        """Send all of ``packets`` now, in order, or none (False) and raise nothing.

        For a forwarding path: one check for a burst. False when one of them
        is too large, the send queue lacks room for all, the address changed
        or the tunnel is closed; :meth:`send` each then raises the precise
        error (and hands over the new Sender) for the packets concerned.
        """
        if self._closed or self._machine.version != self._version:
            return False
        try:
            queued = self._conn.send_datagrams(packets)
        except ConnectionLost:
            return False
        if queued:
            self._metrics.sent += len(packets)
        return queued

    async def send_wait(self, packet: bytes) -> None:
        """Send, waiting for room in the send queue."""
        self._check(packet)
        try:
            await self._conn.send_datagram_wait(packet)
        except ConnectionLost:
            self._closed = True
            raise SendConnectionClosed from None
        self._metrics.sent += 1

    @property
    def max_packet_size(self) -> int | None:
        """Largest packet that fits one datagram to the client."""
        return self._conn.max_datagram_size

    @property
    def queued(self) -> int:
        """Packets accepted by send() that still wait for the wire."""
        return self._conn.send_queue_depth

    def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` and ``reason`` at once."""
        self._tunnel.close(Close(code, reason))

    def _check(self, packet: bytes) -> None:
        if self._closed:
            raise SendConnectionClosed
        machine = self._machine
        if machine.version != self._version:
            if machine.is_closed:
                self._closed = True
                raise SendConnectionClosed
            fresh = Sender(self._tunnel, machine.version, self._metrics)
            self._closed = True
            raise NewAssignedAddress(fresh, packet)


class Receiver(Generic[TokenT]):
    """Receives packets from the client."""

    def __init__(
        self,
        conn: QuicConnection,
        machine: TunnelStateMachine[TokenT],
        metrics: Metrics,
    ) -> None:
        self._conn = conn
        self._machine = machine
        self._metrics = metrics

    async def receive(self) -> bytes:
        """The next packet; raises once the tunnel or the connection is closed."""
        if self._machine.is_closed:
            raise ReceiveConnectionClosed
        try:
            packet = await self._conn.receive_datagram()
        except ConnectionLost as exc:
            if self._machine.is_closed or not exc.by_peer:
                raise ReceiveConnectionClosed from None
            raise ReceiveConnectionError(exc) from None
        self._metrics.received += 1
        return packet

    def set_sink(self, sink: Callable[[bytes], None] | None) -> None:
        """Deliver each packet to ``sink`` as it arrives, instead of through :meth:`receive`.

        For a forwarding path: ``sink`` runs synchronously in the QUIC
        layer's receive callback (no task switch, no queue per packet), must
        neither block nor raise, and is not called once the connection is
        gone. ``None`` returns to :meth:`receive`. Packets handed to a sink
        are counted in ``datagrams_received`` as :meth:`receive`'s are.
        """
        if sink is None:
            self.set_batch_sink(None)
            return

        def each(packets: list[bytes]) -> None:
            for packet in packets:
                sink(packet)

        self.set_batch_sink(each)

    def set_batch_sink(self, sink: Callable[[list[bytes]], None] | None) -> None:
        """As :meth:`set_sink`, but ``sink`` gets the packets received together as one list.

        The list holds every packet of one burst from the socket, in order,
        and is never empty; the sink may keep it. One call per burst instead
        of one per packet.
        """
        if sink is None:
            self._conn.set_datagram_sink(None)
            return
        if self._machine.is_closed:
            raise ReceiveConnectionClosed
        metrics = self._metrics

        def counted(packets: list[bytes]) -> None:
            metrics.received += len(packets)
            sink(packets)

        self._conn.set_datagram_sink(counted)


class Control(Generic[TokenT]):
    """Drives one tunnel after setup: serves control requests and enforces expiry.

    Await it (or run it as a task). It returns when the client closes the
    connection and raises a :class:`~snaptun.errors.ControlError` otherwise;
    either way the tunnel is closed and its address is on hold afterwards.
    """

    def __init__(
        self,
        conn: QuicConnection,
        machine: TunnelStateMachine[TokenT],
        clock: Callable[[], float],
        request_timeout: float = CONTROL_REQUEST_TIMEOUT,
        *,
        store: GrantStore | None = None,
    ) -> None:
        self._conn = conn
        self._machine = machine
        self._clock = clock
        self._tunnel = _Tunnel(conn, machine, clock, store)
        self._request_timeout = request_timeout
        self._waiting: asyncio.Timeout | None = None
        """The timeout of the wait for the next request stream, while run() waits."""
        self._failure: BaseException | None = None
        self._requests: set[asyncio.Task[None]] = set()
        """Request tasks; the machine counts them against its cap."""
        self._listeners: list[Callable[[], None]] = []
        self.requests_served = 0
        self.requests_dropped = 0
        machine.on_replaced(self._replaced)

    @property
    def machine(self) -> TunnelStateMachine[TokenT]:
        """The tunnel's state machine (read-only use: state, expiry, identity)."""
        return self._machine

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after a request changed the tunnel (new address, renewal)."""
        self._listeners.append(listener)

    def __await__(self) -> Generator[Any, None, None]:
        return self.run().__await__()

    async def run(self) -> None:
        """Serve requests until the client leaves, the session expires, or a request fails.

        An idle tunnel waits here in its caller's task with nothing else: no
        helper task, event or ``asyncio.wait`` (they cost about 2 KiB per
        tunnel, docs/BENCHMARKS.md). One timeout bounds the wait for the next
        request stream by the session expiry; :meth:`_wake` moves it to now
        when a request, a failure or a replacement changed something, and the
        loop looks again.
        """
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._failure is not None:
                    raise self._failure
                expired = self._machine.check_expiry(self._clock())
                if expired is not None:
                    self._tunnel.close(expired)
                    raise SessionExpired
                left = self._machine.seconds_until_expiry(self._clock())
                when = None if left is None else loop.time() + left
                try:
                    async with asyncio.timeout_at(when) as self._waiting:
                        stream = await self._conn.accept_stream()
                except TimeoutError:
                    continue  # the expiry came, or a wake-up: look again
                except ConnectionLost as exc:
                    self._tunnel.end()
                    if self._failure is not None:  # e.g. replaced: the close was ours
                        raise self._failure from None
                    if exc.application or not exc.by_peer:
                        return
                    raise ClosedPrematurely(exc) from None
                finally:
                    self._waiting = None
                if self._failure is not None:
                    raise self._failure
                self._start_request(stream)
        finally:
            for task in self._requests:
                task.cancel()
            self._tunnel.end()

    def _wake(self) -> None:
        """Make :meth:`run` look again at failure and expiry (from any task or callback)."""
        waiting = self._waiting
        if waiting is not None and not waiting.expired():
            waiting.reschedule(-1.0)  # in the past: expires on the next loop iteration

    def _start_request(self, stream: QuicStream) -> None:
        if not self._machine.request_started():  # the cap: the machine decides
            self.requests_dropped += 1
            stream.reset(0)
            return
        task = asyncio.ensure_future(self._serve(stream))
        self._requests.add(task)
        task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._requests.discard(task)
        self._machine.request_finished()

    def _replaced(self) -> None:
        if self._failure is None:
            self._failure = TunnelReplaced()
        self._wake()

    async def _serve(self, stream: QuicStream) -> None:
        try:
            await self._serve_request(stream)
        except Exception as exc:
            log.exception("unexpected error serving a control request; closing with code 5")
            self._fail(ControlInternalError(exc), INTERNAL_ERROR)

    async def _serve_request(self, stream: QuicStream) -> None:
        try:
            async with asyncio.timeout(self._request_timeout):
                request = await read_request(stream)
        except TimeoutError:
            # Ours: a stream that never completes is dropped, not waited on forever.
            self.requests_dropped += 1
            stream.reset(0)
            log.info("control request on stream %d timed out", stream.stream_id)
            return
        except ConnectionLost:
            return
        except ParseControlRequestError as exc:
            self._fail(ControlParseError(exc), self._machine.unparsable(exc))
            return
        tunnel = self._tunnel
        if tunnel.lock is None:
            tunnel.lock = asyncio.Lock()
        async with tunnel.lock:  # a grant write may await: the next request waits for it
            step = await tunnel.written(self._machine.request(self._clock(), request))
        assert step.answer is not None
        self.requests_served += 1
        self._wake()  # the expiry may have moved
        if step.answer.ok:
            for listener in self._listeners:
                listener()
        try:
            await send_response(stream, step.answer)
        except SendControlResponseError as exc:
            assert step.close_if_unsent is not None
            self._fail(ControlSendError(exc), step.close_if_unsent)

    def _fail(self, error: BaseException, close: Close) -> None:
        self._tunnel.close(close)
        if self._failure is None:
            self._failure = error
        self._wake()
