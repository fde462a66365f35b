"""The gateway's data plane: tunnels <-> SCION underlay, with the reference's packet policy.

* From a tunnel: the packet must pass :func:`snaptun.scion.check_tunnel_packet`
  (source is the tunnel's address, standard path, exactly PayloadLen bytes);
  otherwise it is dropped, counted by reason, and answered with an SCMP
  Parameter Problem, at most ``scmp_burst`` at once and ``scmp_rate`` per
  second per tunnel (suppressed answers are counted). A valid packet whose
  destination is another tunnel's address is switched locally; everything
  else goes to the border router over UDP.
* From the underlay: a packet goes into the tunnel whose address is its
  destination; unparsable packets and unknown destinations are dropped.

Invariant: an address is routed to, and accepted as source from, at most one
tunnel. :meth:`Dataplane.attach` refuses an address that is routed already
(:class:`RouteConflict`, a defect: the server's newest-wins registry closes
and detaches the older tunnel before the newer one is attached), and a packet
from a tunnel that is no longer attached is dropped (``tunnel_detached``).

No task per packet: one receive loop per tunnel, and the underlay socket's
protocol callback. Every queue is bounded (the tunnel's QUIC send queue, the
underlay transport's write buffer); a full queue drops and counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from snaptun.aio.server import Control, Receiver, Sender
from snaptun.core.addressing import EndhostAddress, IPAddress
from snaptun.core.ratelimit import TokenBucket
from snaptun.errors import (
    DatagramTooLarge,
    NewAssignedAddress,
    NoAddressAssigned,
    ReceivePacketError,
    SendBufferFull,
    SendPacketError,
)
from snaptun.gateway.metrics import GatewayMetrics
from snaptun.scion import (
    MAX_SCMP_ERROR_PACKET,
    build_parameter_problem,
    check_tunnel_packet,
    may_answer_with_scmp_error,
)

__all__ = ["Dataplane", "RouteConflict", "TunnelPort", "route_key"]

log = logging.getLogger(__name__)

_DST_ISD_AS: Final = slice(12, 20)
_DST_HOST_AT: Final = 28
_HOST_LENGTHS: Final = {0b0000: 4, 0b0011: 16}  # DT/DL of IPv4 and IPv6 hosts


def route_key(packet: bytes) -> bytes | None:
    """Destination ISD-AS and IP host bytes of a SCION packet, or None if not an IP host."""
    if len(packet) < _DST_HOST_AT:
        return None
    length = _HOST_LENGTHS.get(packet[9] >> 4)
    if length is None or len(packet) < _DST_HOST_AT + length:
        return None
    return packet[_DST_ISD_AS] + packet[_DST_HOST_AT : _DST_HOST_AT + length]


def address_key(address: EndhostAddress) -> bytes:
    """The :func:`route_key` of packets addressed to ``address``."""
    return address.isd_as.to_int().to_bytes(8, "big") + address.ip.packed


class RouteConflict(RuntimeError):
    """An address would be routed to two tunnels at once (a defect, never peer input)."""


class _BufferedTransport(Protocol):
    """What asyncio's UDP transport offers beyond typeshed's DatagramTransport."""

    def get_write_buffer_size(self) -> int: ...
    def sendto(self, data: bytes, addr: tuple[str, int]) -> None: ...
    def is_closing(self) -> bool: ...
    def close(self) -> None: ...
    def get_extra_info(self, name: str) -> Any: ...


@dataclass(eq=False, slots=True)
class TunnelPort:
    """One tunnel as the data plane sees it."""

    sender: Sender[Any]
    address: EndhostAddress
    key: bytes
    gateway: EndhostAddress | None
    """The gateway's own address in the client's ISD-AS and IP family (SCMP source)."""
    scmp: TokenBucket
    """Bounds the SCMP error answers this tunnel can make the gateway build."""


class _Underlay(asyncio.DatagramProtocol):
    def __init__(self, plane: Dataplane) -> None:
        self._plane = plane

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._plane.from_underlay(data)

    def error_received(self, exc: Exception) -> None:
        log.warning("underlay socket error: %s", exc)


class Dataplane:
    """Forwards packets between tunnels and the underlay socket."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        gateway_addresses: Sequence[IPAddress],
        next_hop: tuple[str, int],
        underlay_queue_bytes: int = 4 * 1024 * 1024,
        scmp_rate: float = 10.0,
        scmp_burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scmp_rate = scmp_rate
        self._scmp_burst = scmp_burst
        self._clock = clock
        self._metrics = metrics
        self._gateway_addresses = list(gateway_addresses)
        self._next_hop = next_hop
        self._underlay_limit = underlay_queue_bytes
        self._tunnels: dict[bytes, TunnelPort] = {}
        self._transport: _BufferedTransport | None = None
        packets, octets = metrics.packets, metrics.bytes
        self._count = {
            d: (packets.labels(d).inc, octets.labels(d).inc)
            for d in ("tunnel_to_underlay", "underlay_to_tunnel", "tunnel_to_tunnel")
        }
        metrics.watch_queue("underlay", self.underlay_queue_bytes)
        metrics.watch_queue("tunnels", self.tunnel_queue_depth)

    # ---- lifecycle -----------------------------------------------------------------------

    async def open_underlay(self, bind: tuple[str, int]) -> tuple[str, int]:
        """Bind the UDP socket facing the SCION network; returns the bound address."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Underlay(self), local_addr=bind)
        self._transport = cast(_BufferedTransport, transport)
        return self.underlay_address

    @property
    def underlay_address(self) -> tuple[str, int]:
        """Where the underlay socket is bound."""
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def underlay_queue_bytes(self) -> int:
        """Bytes waiting in the underlay transport."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def tunnel_queue_depth(self) -> int:
        """Packets waiting in all tunnels' send queues."""
        return sum(port.sender.queued for port in set(self._tunnels.values()))

    def close(self) -> None:
        """Close the underlay socket."""
        if self._transport is not None:
            self._transport.close()

    # ---- tunnels ----------------------------------------------------------------------------

    def attach(self, sender: Sender[Any], control: Control[Any]) -> TunnelPort:
        """Route the tunnel's assigned address to it; follows later re-assignments.

        Raises :class:`RouteConflict` if the address is routed to another tunnel.
        """
        address = sender.assigned_addresses[0]
        bucket = TokenBucket(self._scmp_rate, self._scmp_burst, self._clock())
        port = TunnelPort(sender, address, address_key(address), self._gateway_for(address), bucket)
        self._route(port)
        control.on_change(lambda: self._follow(port, control))
        return port

    def detach(self, port: TunnelPort) -> None:
        """Forget a tunnel (its connection is gone)."""
        if self._tunnels.get(port.key) is port:
            del self._tunnels[port.key]

    def _follow(self, port: TunnelPort, control: Control[Any]) -> None:
        try:
            (address,) = control.machine.addresses()
        except (NoAddressAssigned, ValueError):
            return
        if address == port.address:
            return
        key = address_key(address)
        if self._tunnels.get(key, port) is not port:
            raise RouteConflict(f"{address} is routed to another tunnel already")
        self.detach(port)
        port.address = address
        port.key = key
        port.gateway = self._gateway_for(address)
        self._tunnels[key] = port  # checked above, before the old route was given up

    def _route(self, port: TunnelPort) -> None:
        if self._tunnels.get(port.key, port) is not port:
            raise RouteConflict(f"{port.address} is routed to another tunnel already")
        self._tunnels[port.key] = port

    def _gateway_for(self, client: EndhostAddress) -> EndhostAddress | None:
        for ip in self._gateway_addresses:
            if ip.version == client.ip.version:
                return EndhostAddress(client.isd_as, ip)
        return None

    async def pump(self, port: TunnelPort, receiver: Receiver[Any]) -> None:
        """Move the tunnel's packets into the data plane until the tunnel ends."""
        try:
            while True:
                self.from_tunnel(port, await receiver.receive())
        except ReceivePacketError:
            return
        finally:
            self.detach(port)

    # ---- forwarding -------------------------------------------------------------------------

    def from_tunnel(self, port: TunnelPort, packet: bytes) -> None:
        """Police and forward one packet a client sent."""
        if self._tunnels.get(port.key) is not port:
            self._drop("tunnel_detached")  # replaced or closed: its address is not its own
            return
        violation = check_tunnel_packet(packet, port.address)
        if violation is not None:
            self._drop(violation.reason)
            self._answer(port, packet, violation.code, violation.pointer)
            return
        key = route_key(packet)
        target = self._tunnels.get(key) if key is not None else None
        if target is not None:
            if self._to_tunnel(target, packet):
                self._counted("tunnel_to_tunnel", packet)
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            self._drop("underlay_closed")
        elif transport.get_write_buffer_size() >= self._underlay_limit:
            self._drop("underlay_queue_full")
        else:
            transport.sendto(packet, self._next_hop)
            self._counted("tunnel_to_underlay", packet)

    def from_underlay(self, packet: bytes) -> None:
        """Deliver one packet from the SCION network to its tunnel."""
        key = route_key(packet)
        if key is None:
            self._drop("underlay_unparsable")
            return
        target = self._tunnels.get(key)
        if target is None:
            self._drop("unknown_destination")
        elif self._to_tunnel(target, packet):
            self._counted("underlay_to_tunnel", packet)

    def _to_tunnel(self, port: TunnelPort, packet: bytes) -> bool:
        for _ in range(2):
            try:
                port.sender.send(packet)
            except NewAssignedAddress as change:
                port.sender = change.sender
                continue
            except SendBufferFull:
                self._drop("tunnel_queue_full")
            except DatagramTooLarge:
                self._drop("too_large_for_tunnel")
            except SendPacketError:
                self._drop("tunnel_closed")
            else:
                return True
            return False
        self._drop("tunnel_closed")
        return False

    def _answer(self, port: TunnelPort, offending: bytes, code: int, pointer: int) -> None:
        if port.gateway is None or not may_answer_with_scmp_error(offending):
            return
        if not port.scmp.take(self._clock()):  # before any work: replies cost CPU
            self._metrics.scmp_suppressed.inc()
            return
        limit = port.sender.max_packet_size or MAX_SCMP_ERROR_PACKET
        reply = build_parameter_problem(
            offending,
            code,
            pointer,
            port.gateway,
            port.address,
            min(limit, MAX_SCMP_ERROR_PACKET),
            destination=port.address,  # the tunnel's client, even if it spoofed its source
        )
        if self._to_tunnel(port, reply):
            self._metrics.scmp_sent.labels(str(code)).inc()

    def _counted(self, direction: str, packet: bytes) -> None:
        count_packet, count_bytes = self._count[direction]
        count_packet()
        count_bytes(len(packet))

    def _drop(self, reason: str) -> None:
        self._metrics.drops.labels(reason).inc()
