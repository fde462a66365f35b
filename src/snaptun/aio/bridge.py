"""A UDP bridge into a snaptun tunnel that survives gateway restarts (``snaptun connect``).

::

    source = TokenSource(path=Path("token.jwt"))
    bridge = TunnelBridge(
        lambda: quic.connect(host, port, ca_file=cert),
        builder_factory(source, renew_threshold=300),
        ("127.0.0.1", 0),
    )
    await bridge.run()          # until bridge.stop(); raises BridgeError if it gives up

Every UDP datagram that arrives at the local socket goes into the tunnel as
one SCION packet; every packet from the tunnel goes to ``forward_to``, or
without it to the last local sender. When the connection ends (gateway gone,
session expired, renewal given up) the bridge reconnects with exponential
backoff and asks for the address it was given last.

Given a :class:`~snaptun.aio.fleet.GatewayFleet` instead of one connect
factory, each round of connecting walks the fleet in rendezvous order of the
token's identity: a gateway that cannot be reached or fails the setup in a
way worth retrying (handshake timeout, refused, shutting down, answered 5xx)
hands over to the next one at once; only when all failed does the bridge back
off. Every round starts again from the top, also after a tunnel ended: a
client goes back to its preferred gateway as soon as that one is back (so the
fleet's spread heals by itself), at the cost of one connect timeout per
reconnect while it is down; an established tunnel is never moved. A refusal
that retrying will not change (bad token) ends the bridge whatever gateway
said it, and a "replaced" close stays final. On another gateway than the one
that assigned the last address, the bridge asks for the originally desired
addresses: the fleet's gateways own different parts of the address space.

Errors (all :class:`~snaptun.errors.ClientError`)::

    BridgeError
    ├── TunnelRefused          the gateway refused the setup for good (HTTP 400/401,
    │                          or close code 1/3 during setup)
    ├── TunnelReplacedError    a newer tunnel of the same identity took the grant over
    │                          (close code 0, "replaced by a newer tunnel"): final, so
    │                          that two instances sharing one identity do not replace
    │                          each other forever
    └── ReconnectsExhausted    max_reconnects consecutive attempts failed
    TokenSourceError           the token file could not be read (retried, not fatal)

Nothing is lost silently; every drop has a counter in :class:`BridgeCounters`.
Queues are bounded: the local receive queue (``local_queue`` datagrams, then
``dropped_local_queue``), the wait for room in the QUIC send queue
(``send_wait_bound`` seconds, then ``dropped_send_timeout``) and the local
socket's write buffer (``local_write_buffer`` bytes, then ``dropped_local_busy``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from snaptun.aio.client import ClientBuilder, ClientControl, ClientReceiver, ClientSender
from snaptun.aio.fleet import ConnectFactory, Gateway, GatewayFleet
from snaptun.aio.quic import QuicConnection
from snaptun.constants import REPLACED_CLOSE_CODE, REPLACED_REASON, CloseCode
from snaptun.core.addressing import EndhostAddress
from snaptun.core.rendezvous import token_identity
from snaptun.errors import (
    ClientError,
    ConnectionLost,
    ControlResponseError,
    DatagramTooLarge,
    MalformedResponse,
    ReceivePacketError,
    RenewalFailed,
    SendBufferFull,
    SendConnectionClosed,
    SendPacketError,
    SnaptunError,
)

__all__ = [
    "Backoff",
    "BridgeCounters",
    "BridgeError",
    "BuilderFactory",
    "ConnectFactory",
    "Gateway",
    "GatewayFleet",
    "ReconnectsExhausted",
    "TokenSource",
    "TokenSourceError",
    "TunnelBridge",
    "TunnelConnected",
    "TunnelRefused",
    "TunnelReplacedError",
    "builder_factory",
]

log = logging.getLogger(__name__)

BuilderFactory = Callable[[Sequence[EndhostAddress]], ClientBuilder]
"""A tunnel configuration asking for the given addresses (called once per connection)."""

REFUSAL_STATUSES: Final = frozenset({400, 401, 403})
"""HTTP answers to a setup request that make retrying pointless."""
REFUSAL_CLOSE_CODES: Final = frozenset({CloseCode.INVALID_REQUEST, CloseCode.UNAUTHENTICATED})
"""Close codes during setup that mean the same (the reference answers a bad token so)."""
_WARN_INTERVAL: Final = 1.0


class TokenSourceError(ClientError):
    """The token could not be read (missing, unreadable or empty file)."""


class BridgeError(ClientError):
    """The bridge gave up; ``cause`` is the error that made it give up."""

    def __init__(self, message: str, cause: BaseException | None) -> None:
        self.cause = cause
        super().__init__(message)

    @property
    def http_status(self) -> int | None:
        """The HTTP status of a refused setup request, if that was the cause."""
        return self.cause.status if isinstance(self.cause, ControlResponseError) else None

    @property
    def close(self) -> ConnectionLost | None:
        """How the last connection was closed, if that was the cause."""
        return self.cause if isinstance(self.cause, ConnectionLost) else None


class TunnelRefused(BridgeError):
    """The gateway refused the tunnel setup in a way retrying will not change."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"gateway refused the tunnel: {cause}", cause)


class TunnelReplacedError(BridgeError):
    """The gateway closed the tunnel because a newer tunnel of the same identity took over."""

    def __init__(self, cause: ConnectionLost) -> None:
        super().__init__(
            f"{cause}; another client uses the same identity, so this one stops", cause
        )


def is_replaced(lost: BaseException | None) -> bool:
    """Whether ``lost`` is the gateway's "replaced by a newer tunnel" close."""
    return (
        isinstance(lost, ConnectionLost)
        and lost.by_peer
        and lost.application
        and lost.code == REPLACED_CLOSE_CODE
        and lost.reason == REPLACED_REASON
    )


class ReconnectsExhausted(BridgeError):
    """``max_reconnects`` reconnect attempts in a row failed."""

    def __init__(self, attempts: int, cause: BaseException | None) -> None:
        self.attempts = attempts
        detail = f": {cause}" if cause is not None else ""
        super().__init__(f"gave up after {attempts} reconnect attempts{detail}", cause)


class TokenSource:
    """A bearer token: a fixed string, or a file read afresh on every use.

    Calling the source (``await source()``) reads the token, so it serves as
    the token renewer of :meth:`ClientBuilder.with_auto_renewal`: a token
    rotated on disk is picked up at the next renewal.
    """

    def __init__(self, *, token: str | None = None, path: Path | None = None) -> None:
        if (token is None) == (path is None):
            raise ValueError("give exactly one of token and path")
        if token is not None and not token.strip():
            raise ValueError("the token is empty")
        self._token = token
        self.path = path

    def read(self) -> str:
        """The current token; :class:`TokenSourceError` if the file cannot be used."""
        if self._token is not None:
            return self._token.strip()
        assert self.path is not None
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenSourceError(f"cannot read token file {self.path}: {exc}") from exc
        if not token:
            raise TokenSourceError(f"token file {self.path} is empty")
        return token

    async def __call__(self) -> str:
        return self.read()

    def identity(self) -> str:
        """The rendezvous identity of the current token (:func:`token_identity`)."""
        return token_identity(self.read())


def builder_factory(source: TokenSource, *, renew_threshold: float = 300.0) -> BuilderFactory:
    """Builders that take the token from ``source`` at setup and at every renewal."""

    def make(desired: Sequence[EndhostAddress]) -> ClientBuilder:
        return (
            ClientBuilder(source.read())
            .with_desired_addresses(desired)
            .with_auto_renewal(source, threshold=renew_threshold)
        )

    return make


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum``, jittered down by up to half."""

    initial: float = 0.2
    maximum: float = 5.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, level: int) -> float:
        """Seconds to wait before reconnect attempt ``level`` (0, 1, 2, ...)."""
        base = min(self.maximum, self.initial * 2.0 ** min(level, 32))
        return base / 2 + self.rng.uniform(0, base / 2)


@dataclass(slots=True)
class BridgeCounters:
    """What the bridge did; every packet that was not delivered is in one ``dropped_*``."""

    sent: int = 0
    """Local datagrams queued into the tunnel."""
    received: int = 0
    """Tunnel packets written to the local socket."""
    dropped_oversize: int = 0
    """Local datagrams larger than the tunnel's maximum packet size."""
    dropped_send_timeout: int = 0
    """Local datagrams for which the QUIC send queue stayed full for ``send_wait_bound``."""
    dropped_send_error: int = 0
    """Local datagrams the tunnel refused for another reason."""
    dropped_offline: int = 0
    """Local datagrams that arrived while no tunnel was up (or as it went down)."""
    dropped_local_queue: int = 0
    """Local datagrams that found the bounded local queue full."""
    dropped_no_peer: int = 0
    """Tunnel packets that arrived before any local sender (and no ``forward_to``)."""
    dropped_local_busy: int = 0
    """Tunnel packets dropped because the local socket's write buffer was full."""
    dropped_tunnel_queue: int = 0
    """Tunnel packets the QUIC layer dropped because its receive queue was full."""
    local_send_errors: int = 0
    """Errors the local socket reported (e.g. ICMP port unreachable)."""
    connects: int = 0
    """Successful tunnel setups (the first one and every reconnect)."""
    connect_failures: int = 0
    """Connection or setup attempts that failed and were retried."""

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TunnelConnected:
    """A tunnel is up: what ``on_connected`` is told after every (re)connect."""

    assigned: tuple[EndhostAddress, ...]
    valid_until: float | None
    local: tuple[str, int]
    max_packet_size: int | None
    gateway: str | None = None
    """The name of the gateway the tunnel runs through (None: a bare connect factory)."""

    def as_record(self) -> dict[str, Any]:
        """The ``connected`` JSON line of ``snaptun connect``."""
        host, port = self.local
        return {
            "event": "connected",
            "assigned": [{"isd_as": str(a.isd_as), "ip": str(a.ip)} for a in self.assigned],
            "valid_until": None if self.valid_until is None else int(self.valid_until),
            "local": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "max_packet_size": self.max_packet_size,
            "gateway": self.gateway,
        }


class _Transient(SnaptunError):
    """A connection attempt failed in a way worth retrying."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(str(cause))


class _LocalProtocol(asyncio.DatagramProtocol):
    def __init__(self, bridge: TunnelBridge) -> None:
        self._bridge = bridge

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._bridge._local_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._bridge.counters.local_send_errors += 1
        log.debug("local socket error: %s", exc)


class TunnelBridge:
    """Bridges a local UDP socket and a snaptun tunnel, reconnecting when the tunnel ends.

    ``run()`` returns after :meth:`stop` and raises :class:`BridgeError` when
    it gives up: at once on a refused setup, or after ``max_reconnects``
    reconnect attempts in a row failed (None: never give up). A reconnect asks
    for the addresses assigned last; if the gateway refuses that, it asks once
    more for the originally desired addresses before giving up.

    ``connect_factory`` is one gateway, or a :class:`GatewayFleet` tried in
    rendezvous order (see the module). With a fleet, one reconnect attempt is
    one round over all its gateways, each failed gateway one ``connect_failures``.
    """

    def __init__(
        self,
        connect_factory: ConnectFactory | GatewayFleet,
        builder_factory: BuilderFactory,
        local_addr: tuple[str, int] = ("127.0.0.1", 0),
        forward_to: tuple[str, int] | None = None,
        *,
        desired: Sequence[EndhostAddress] = (),
        on_connected: Callable[[TunnelConnected], None] | None = None,
        on_closed: Callable[[ConnectionLost], None] | None = None,
        max_reconnects: int | None = None,
        backoff: Backoff | None = None,
        local_queue: int = 1024,
        send_wait_bound: float = 1.0,
        local_write_buffer: int = 1 << 20,
    ) -> None:
        if max_reconnects is not None and max_reconnects < 0:
            raise ValueError("max_reconnects must not be negative")
        if local_queue < 1 or send_wait_bound <= 0 or local_write_buffer < 1:
            raise ValueError("queue bounds must be positive")
        self._fleet = (
            connect_factory
            if isinstance(connect_factory, GatewayFleet)
            else GatewayFleet.single(connect_factory)
        )
        self._assigned_by: str | None = None  # the gateway that assigned ``desired``
        self._builder_factory = builder_factory
        self._local_addr = local_addr
        self.forward_to = forward_to
        self._initial_desired = list(desired)
        self.desired: list[EndhostAddress] = list(desired)
        """What the next connection asks for: the last assigned addresses, once there are any."""
        self.on_connected = on_connected
        self.on_closed = on_closed
        """Called with the close (code and reason) each time an established tunnel ends."""
        self.max_reconnects = max_reconnects
        self._backoff = backoff or Backoff()
        self._send_wait_bound = send_wait_bound
        self._local_write_buffer = local_write_buffer
        self.counters = BridgeCounters()
        self.last_sender: tuple[str, int] | None = None
        """Where tunnel packets go without ``forward_to``: the last local sender."""
        self.connected: TunnelConnected | None = None
        """The tunnel now up, or None."""
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(local_queue)
        self._transport: asyncio.DatagramTransport | None = None
        self._stop = asyncio.Event()
        self._warned: dict[str, float] = {}

    # ---- public ------------------------------------------------------------------------

    @property
    def local_address(self) -> tuple[str, int]:
        """The bound local UDP address (after :meth:`open` or once :meth:`run` started)."""
        if self._transport is None:
            raise RuntimeError("the local socket is not bound yet")
        sockname = self._transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    async def open(self) -> tuple[str, int]:
        """Bind the local UDP socket (idempotent); returns its address."""
        if self._transport is None:
            loop = asyncio.get_running_loop()
            host, port = self._local_addr
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _LocalProtocol(self), local_addr=(host, port)
            )
            self._transport = transport
        return self.local_address

    def stop(self) -> None:
        """Make :meth:`run` close the tunnel and return (safe from a signal handler)."""
        self._stop.set()

    async def run(self) -> None:
        """Bridge until :meth:`stop`; raises :class:`BridgeError` when giving up."""
        await self.open()
        main = asyncio.ensure_future(self._reconnect_loop())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({main, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if main.done():
                main.result()
        finally:
            stopped.cancel()
            main.cancel()
            await asyncio.gather(main, stopped, return_exceptions=True)
            self._go_offline()
            self.close()

    def close(self) -> None:
        """Close the local socket (:meth:`run` does this when it ends)."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # ---- reconnect loop --------------------------------------------------------------------

    async def _reconnect_loop(self) -> None:
        failures = 0  # rounds of attempts since the last successful setup
        level = 0  # backoff level
        last_error: BaseException | None = None
        first = True
        while True:
            if not first:
                if self.max_reconnects is not None and failures >= self.max_reconnects:
                    raise ReconnectsExhausted(failures, last_error)
                failures += 1
                delay = self._backoff.delay(level)
                level += 1
                log.info("reconnecting in %.2f s (attempt %d)", delay, failures)
                await asyncio.sleep(delay)
            first = False
            try:
                order = self._fleet.order()
            except TokenSourceError as exc:  # the identity is the token's: retried
                last_error = exc
                self.counters.connect_failures += 1
                log.warning("tunnel setup failed: %s", exc)
                continue
            for gateway in order:
                lasted, last_error = await self._attempt(gateway)
                if lasted is not None:  # a tunnel was up: next round from the top
                    failures = 0
                    if lasted >= self._backoff.maximum:
                        level = 0
                    break

    async def _attempt(self, gateway: Gateway) -> tuple[float | None, BaseException | None]:
        """Connect to one gateway and bridge until the tunnel ends.

        Returns (seconds the tunnel was up, why it ended), or (None, the error)
        when no tunnel came up; raises :class:`BridgeError` when giving up.
        A refusal of the previous address is retried at once, here, asking for
        the originally desired addresses.
        """
        retry_initial = gateway.name != self._assigned_by  # another gateway's address
        while True:
            desired = self._initial_desired if retry_initial else self.desired
            try:
                async with gateway.connect() as conn:
                    sender, receiver, control = await self._setup(conn, desired, gateway.name)
                    started = time.monotonic()
                    try:
                        ended = await self._session(conn, sender, receiver, control)
                    finally:
                        self._go_offline()
                        self.counters.dropped_tunnel_queue += conn.datagrams_dropped_rx
                    self._tunnel_ended(ended)
                    return time.monotonic() - started, ended
            except TunnelRefused as exc:
                if desired != self._initial_desired and not retry_initial:
                    log.warning("%s; asking for %s instead", exc, _describe(self._initial_desired))
                    retry_initial = True
                    continue
                raise
            except _Transient as exc:
                self.counters.connect_failures += 1
                log.warning("tunnel setup failed%s: %s", _at(gateway), exc.cause)
                return None, exc.cause
            except (ConnectionLost, OSError) as exc:  # handshake failed; no route; ...
                self.counters.connect_failures += 1
                log.warning("cannot connect to the gateway%s: %s", _at(gateway), exc)
                return None, exc

    def _tunnel_ended(self, why: BaseException | None) -> None:
        """Report the close; a "replaced by a newer tunnel" close ends the bridge."""
        if not isinstance(why, ConnectionLost):
            return
        if self.on_closed is not None:
            self.on_closed(why)
        if is_replaced(why):
            raise TunnelReplacedError(why)

    async def _setup(
        self, conn: QuicConnection, desired: Sequence[EndhostAddress], gateway: str | None
    ) -> tuple[ClientSender, ClientReceiver, ClientControl]:
        try:
            builder = self._builder_factory(desired)
            sender, receiver, control = await builder.connect(conn)
        except ControlResponseError as exc:
            if exc.status in REFUSAL_STATUSES:
                raise TunnelRefused(exc) from exc
            raise _Transient(exc) from exc
        except ConnectionLost as exc:
            if is_replaced(exc):
                raise TunnelReplacedError(exc) from exc
            if exc.by_peer and exc.application and exc.code in REFUSAL_CLOSE_CODES:
                raise TunnelRefused(exc) from exc
            raise _Transient(exc) from exc
        except (MalformedResponse, TokenSourceError) as exc:
            raise _Transient(exc) from exc
        self.desired = control.assigned_addresses
        self._assigned_by = gateway
        self.counters.connects += 1
        self.connected = TunnelConnected(
            tuple(control.assigned_addresses),
            control.session_expiry,
            self.local_address,
            sender.max_packet_size,
            gateway,
        )
        log.info(
            "tunnel up%s: %s",
            "" if gateway is None else f" via {gateway}",
            _describe(control.assigned_addresses),
        )
        if self.on_connected is not None:
            self.on_connected(self.connected)
        return sender, receiver, control

    async def _session(
        self,
        conn: QuicConnection,
        sender: ClientSender,
        receiver: ClientReceiver,
        control: ClientControl,
    ) -> BaseException | None:
        """Pump packets until the connection ends; returns why it ended."""
        uplink = asyncio.ensure_future(self._uplink(sender))
        downlink = asyncio.ensure_future(self._downlink(receiver))
        driven = asyncio.ensure_future(control.run())
        jobs = {uplink, downlink, driven}
        try:
            await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
            if driven.done() and not driven.cancelled() and driven.exception() is not None:
                error = driven.exception()
                assert error is not None
                if not isinstance(error, RenewalFailed):
                    raise error
                log.warning("%s; reconnecting", error)
                return error
            closed = conn.closed
            if closed is None:  # a pump ended while the connection is up: end it ourselves
                conn.close(0, "bridge restarting tunnel")
                closed = conn.closed
            log.warning("tunnel closed: %s", closed)
            return closed
        finally:
            control.stop()
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)

    # ---- packets ----------------------------------------------------------------------------

    def _local_datagram(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.forward_to is None:
            self.last_sender = (str(addr[0]), int(addr[1]))
        if self.connected is None:
            self.counters.dropped_offline += 1
            return
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            self.counters.dropped_local_queue += 1
            self._warn("local_queue", "local queue full: dropped %d datagrams so far")

    def _go_offline(self) -> None:
        self.connected = None
        while not self._queue.empty():
            self._queue.get_nowait()
            self.counters.dropped_offline += 1

    async def _uplink(self, sender: ClientSender) -> None:
        c = self.counters
        while True:
            packet = await self._queue.get()
            limit = sender.max_packet_size
            if limit is not None and len(packet) > limit:
                c.dropped_oversize += 1
                self._warn_oversize(len(packet), limit)
                continue
            try:
                try:
                    sender.send(packet)
                except SendBufferFull:
                    async with asyncio.timeout(self._send_wait_bound):
                        await sender.send_wait(packet)
            except TimeoutError:
                c.dropped_send_timeout += 1
                self._warn("send_timeout", "tunnel send queue full: dropped %d datagrams so far")
                continue
            except DatagramTooLarge as exc:
                c.dropped_oversize += 1
                self._warn_oversize(exc.size, exc.limit)
                continue
            except SendConnectionClosed:
                c.dropped_offline += 1
                return
            except SendPacketError as exc:
                c.dropped_send_error += 1
                log.warning("tunnel refused a packet: %s", exc)
                continue
            c.sent += 1

    async def _downlink(self, receiver: ClientReceiver) -> None:
        c = self.counters
        while True:
            try:
                packet = await receiver.receive()
            except ReceivePacketError:
                return
            target = self.forward_to or self.last_sender
            transport = self._transport
            if target is None or transport is None:
                c.dropped_no_peer += 1
                self._warn("no_peer", "no local sender yet: dropped %d tunnel packets so far")
                continue
            if _write_buffer_size(transport) > self._local_write_buffer:
                c.dropped_local_busy += 1
                self._warn("local_busy", "local socket busy: dropped %d tunnel packets so far")
                continue
            transport.sendto(packet, target)
            c.received += 1

    # ---- logging ------------------------------------------------------------------------------

    def _warn_oversize(self, size: int, limit: int) -> None:
        self._warn(
            "oversize",
            f"dropped a {size}-byte datagram: the tunnel carries at most {limit} bytes "
            "(%d dropped so far)",
        )

    def _warn(self, kind: str, message: str) -> None:
        """Log ``message`` (with the drop count) at most once a second per kind."""
        now = time.monotonic()
        if now - self._warned.get(kind, -_WARN_INTERVAL) < _WARN_INTERVAL:
            return
        self._warned[kind] = now
        count = {
            "oversize": self.counters.dropped_oversize,
            "send_timeout": self.counters.dropped_send_timeout,
            "local_queue": self.counters.dropped_local_queue,
            "no_peer": self.counters.dropped_no_peer,
            "local_busy": self.counters.dropped_local_busy,
        }[kind]
        log.warning(message, count)


def _at(gateway: Gateway) -> str:
    return "" if gateway.name is None else f" {gateway.name}"


def _describe(addresses: Sequence[EndhostAddress]) -> str:
    return ", ".join(str(a) for a in addresses) or "any address"


def _write_buffer_size(transport: asyncio.DatagramTransport) -> int:
    """Bytes waiting in the transport (asyncio's and uvloop's UDP transports both tell)."""
    size: int = getattr(transport, "get_write_buffer_size", lambda: 0)()
    return size
