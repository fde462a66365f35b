"""The gateway's data plane: tunnels <-> SCION underlay, with the reference's packet policy.

* From a tunnel: the packet must pass :func:`snaptun.scion.check_tunnel_packet`
  (source is the tunnel's address, standard path, exactly PayloadLen bytes);
  otherwise it is dropped, counted by reason, and answered with an SCMP
  Parameter Problem, at most ``scmp_burst`` at once and ``scmp_rate`` per
  second per tunnel (suppressed answers are counted). A valid packet whose
  destination is another tunnel's address is switched locally; an SCMP Echo
  Request to the gateway's own address (``gateway_addresses`` in the tunnel's
  ISD-AS) is answered with an Echo Reply over the reversed path, within the
  same per-tunnel answer budget (``snaptun_gateway_scmp_echo_replies_total``);
  everything else goes to the border router over UDP.
* From the underlay: a packet goes into the tunnel whose address is its
  destination; unparsable packets and unknown destinations are dropped.

The decision is :class:`~snaptun.scion.forwarding.RouteTable`'s sans-I/O
forwarding step (one header parse per packet giving both the policy verdict
and the route); this module only does what the decision says and counts it
in :class:`~snaptun.gateway.metrics.ForwardingCounters` (plain integers).

Invariant: an address is routed to, and accepted as source from, at most one
tunnel. :meth:`Dataplane.attach` refuses an address that is routed already
(:class:`RouteConflict`, a defect: the server's newest-wins registry closes
and detaches the older tunnel before the newer one is attached), and a packet
from a tunnel that is no longer attached is dropped (``tunnel_detached``).

No task and no queue per packet: each tunnel's datagrams come through its
receive sink (:meth:`~snaptun.aio.server.Receiver.set_batch_sink`, set by
:meth:`Dataplane.attach`, cleared by :meth:`Dataplane.release`) straight from
the QUIC receive callback, and the underlay's through
:class:`~snaptun.aio.udp.UdpSocket`'s readiness callback, a list per system
call in both cases. A burst is forwarded as one: its packets for the underlay
are queued with one call, its packets for one tunnel with one
:meth:`~snaptun.aio.server.Sender.send_many`, and counted once (packet by
packet only when a queue cannot take a burst whole, so that each drop is
counted by its reason). Packets to the underlay produced in one round of the
event loop leave together (one ``sendmsg`` with GSO where the kernel has it).
Every queue is bounded (the tunnel's QUIC send queue, the underlay socket's
queue of ``underlay_queue_bytes``); a full queue drops and counts.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from snaptun.aio.server import Control, Receiver, Sender
from snaptun.aio.udp import Batch, Mode, UdpSocket, open_udp
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
from snaptun.gateway.metrics import (
    TUNNEL_TO_TUNNEL,
    TUNNEL_TO_UNDERLAY,
    UNDERLAY_TO_TUNNEL,
    GatewayMetrics,
)
from snaptun.scion import (
    MAX_SCMP_ERROR_PACKET,
    ScionDecodeError,
    build_parameter_problem,
    check_tunnel_packet,
    echo_reply,
    may_answer_with_scmp_error,
)
from snaptun.scion.forwarding import (
    Route,
    RouteConflict,
    RouteTable,
    Verdict,
    address_key,
    route_key,
)

__all__ = ["Dataplane", "RouteConflict", "TunnelPort", "address_key", "route_key"]

log = logging.getLogger(__name__)

_UNDERLAY = Verdict.UNDERLAY
_DETACHED = Verdict.DETACHED
_ECHO = Verdict.ECHO_REQUEST


class TunnelPort(Route):
    """One tunnel as the data plane sees it: its route, plus how to reach and answer it."""

    __slots__ = (
        "drops",
        "from_client_bytes",
        "from_client_packets",
        "gateway",
        "receiver",
        "scmp",
        "scmp_sent",
        "sender",
        "to_client_bytes",
        "to_client_packets",
    )

    def __init__(
        self,
        sender: Sender[Any],
        address: EndhostAddress,
        gateway: EndhostAddress | None,
        scmp: TokenBucket,
    ) -> None:
        super().__init__(address)
        self.sender = sender
        self.gateway = gateway
        """The gateway's own address in the client's ISD-AS and IP family (SCMP source)."""
        self.scmp = scmp
        """Bounds the SCMP answers (errors, echo replies) this tunnel can make the gateway build."""
        self.receiver: Receiver[Any] | None = None
        """Whose sink feeds this port, until :meth:`Dataplane.release`."""
        # Per-tunnel accounting: plain integers, bumped next to the global counters.
        self.from_client_packets = 0
        """Packets from the client forwarded (to the underlay or another tunnel)."""
        self.from_client_bytes = 0
        self.to_client_packets = 0
        """Packets delivered into this tunnel (from the underlay or another tunnel;
        SCMP answers are counted in ``scmp_sent`` only)."""
        self.to_client_bytes = 0
        self.drops = 0
        """Packets from this client, or for it, that were dropped (any reason)."""
        self.scmp_sent = 0
        """SCMP answers (errors, echo replies) sent to this client."""


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
        underlay_mode: Mode = "auto",
    ) -> None:
        self._scmp_rate = scmp_rate
        self._scmp_burst = scmp_burst
        self._clock = clock
        self._metrics = metrics
        self._counters = metrics.forwarding
        self._gateway_addresses = list(gateway_addresses)
        self._next_hop = next_hop
        self._underlay_limit = underlay_queue_bytes
        self._underlay_mode: Mode = underlay_mode
        self._routes: RouteTable[TunnelPort] = RouteTable(self._gateway_addresses)
        self._udp: UdpSocket | None = None
        metrics.watch_queue("underlay", self.underlay_queue_bytes)
        metrics.watch_queue("tunnels", self.tunnel_queue_depth)

    # ---- lifecycle -----------------------------------------------------------------------

    async def open_underlay(self, bind: tuple[str, int]) -> tuple[str, int]:
        """Bind the UDP socket facing the SCION network; returns the bound address."""
        self._udp = await open_udp(
            bind,
            on_batch=self.from_underlay_batch,
            mode=self._underlay_mode,
            queue_bytes=self._underlay_limit,
            on_error=_log_underlay_error,
        )
        return self.underlay_address

    @property
    def underlay_address(self) -> tuple[str, int]:
        """Where the underlay socket is bound."""
        assert self._udp is not None
        host, port = self._udp.local_address[:2]
        return str(host), int(port)

    @property
    def underlay(self) -> UdpSocket | None:
        """The underlay socket, once open (its mode, GSO/GRO and counters)."""
        return self._udp

    def underlay_queue_bytes(self) -> int:
        """Bytes waiting for the underlay socket."""
        return self._udp.queued_bytes if self._udp is not None else 0

    def tunnel_queue_depth(self) -> int:
        """Packets waiting in all tunnels' send queues."""
        return sum(port.sender.queued for port in self._routes)

    def close(self) -> None:
        """Close the underlay socket."""
        if self._udp is not None:
            self._udp.close()

    # ---- tunnels ----------------------------------------------------------------------------

    def attach(
        self, sender: Sender[Any], control: Control[Any], receiver: Receiver[Any] | None = None
    ) -> TunnelPort:
        """Route the tunnel's assigned address to it; follows later re-assignments.

        With ``receiver``, the tunnel's packets are fed in through its batch
        sink from now until :meth:`release`. Raises :class:`RouteConflict` if
        the address is routed to another tunnel.
        """
        address = sender.assigned_addresses[0]
        bucket = TokenBucket(self._scmp_rate, self._scmp_burst, self._clock())
        port = TunnelPort(sender, address, self._gateway_for(address), bucket)
        self._routes.add(port)
        control.on_change(lambda: self._follow(port, control))
        if receiver is not None:
            try:
                receiver.set_batch_sink(functools.partial(self.from_tunnel_batch, port))
            except ReceivePacketError:
                pass  # closed already: nothing more will arrive
            else:
                port.receiver = receiver
        return port

    def detach(self, port: TunnelPort) -> None:
        """Forget a tunnel's route (replaced or closed); its packets are dropped from now on."""
        self._routes.remove(port)

    def release(self, port: TunnelPort) -> None:
        """The tunnel ended: stop feeding its packets in, and forget its route."""
        receiver, port.receiver = port.receiver, None
        if receiver is not None:
            receiver.set_batch_sink(None)
        self.detach(port)

    def _follow(self, port: TunnelPort, control: Control[Any]) -> None:
        try:
            (address,) = control.machine.addresses()
        except (NoAddressAssigned, ValueError):
            return
        if address == port.address:
            return
        self._routes.readdress(port, address)  # RouteConflict leaves the route as it was
        port.gateway = self._gateway_for(address)

    def _gateway_for(self, client: EndhostAddress) -> EndhostAddress | None:
        for ip in self._gateway_addresses:
            if ip.version == client.ip.version:
                return EndhostAddress(client.isd_as, ip)
        return None

    # ---- forwarding -------------------------------------------------------------------------

    def from_tunnel(self, port: TunnelPort, packet: bytes) -> None:
        """Police and forward one packet a client sent."""
        self.from_tunnel_batch(port, [packet])

    def from_tunnel_batch(self, port: TunnelPort, packets: list[bytes]) -> None:
        """Police and forward the packets a client sent together (the tunnel's batch sink).

        Those for the underlay are queued with one call, after the others.
        """
        step = self._routes.from_tunnel
        out: list[bytes] = []
        for packet in packets:
            result = step(port, packet)
            if result is _UNDERLAY:
                out.append(packet)
            elif isinstance(result, TunnelPort):
                if self._to_tunnel(result, packet):
                    counters = self._counters
                    counters.packets[TUNNEL_TO_TUNNEL] += 1
                    counters.bytes[TUNNEL_TO_TUNNEL] += len(packet)
                    port.from_client_packets += 1
                    port.from_client_bytes += len(packet)
                    result.to_client_packets += 1
                    result.to_client_bytes += len(packet)
            elif result is _ECHO:
                self._echo(port, packet)
            else:
                self._metrics.drop(result.reason)
                port.drops += 1
                if result is not _DETACHED:
                    self._answer(port, packet)
        if out:
            self._to_underlay(port, out)

    def _to_underlay(self, port: TunnelPort, packets: list[bytes]) -> None:
        udp = self._udp
        if udp is None or udp.closed:
            for _ in packets:
                self._metrics.drop("underlay_closed")
            port.drops += len(packets)
            return
        sent = udp.send_many(packets, self._next_hop)
        counters = self._counters
        counters.packets[TUNNEL_TO_UNDERLAY] += sent
        port.from_client_packets += sent
        if sent == len(packets):
            size = sum(map(len, packets))
            counters.bytes[TUNNEL_TO_UNDERLAY] += size
            port.from_client_bytes += size
            return
        size = sum(map(len, packets[:sent]))
        counters.bytes[TUNNEL_TO_UNDERLAY] += size
        port.from_client_bytes += size
        for _ in range(len(packets) - sent):
            self._metrics.drop("underlay_queue_full")
        port.drops += len(packets) - sent

    def from_underlay(self, packet: bytes, source: object = None) -> None:
        """Deliver one packet from the SCION network to its tunnel (``source`` unused)."""
        self.from_underlay_batch([(packet, ())])

    def from_underlay_batch(self, batch: Batch) -> None:
        """Deliver packets from the SCION network to their tunnels (the underlay's callback).

        Each run of packets for one tunnel goes to it with one send.
        """
        step = self._routes.from_underlay
        run: list[bytes] = []
        owner: TunnelPort | None = None
        for packet, _ in batch:
            result = step(packet)
            if result is owner:
                run.append(packet)
            elif isinstance(result, TunnelPort):
                if owner is not None:
                    self._to_tunnel_run(owner, run)
                owner, run = result, [packet]
            else:
                self._metrics.drop(result.reason)
        if owner is not None:
            self._to_tunnel_run(owner, run)

    def _to_tunnel_run(self, port: TunnelPort, packets: list[bytes]) -> None:
        counters = self._counters
        if port.sender.send_many(packets):
            size = sum(map(len, packets))
            counters.packets[UNDERLAY_TO_TUNNEL] += len(packets)
            counters.bytes[UNDERLAY_TO_TUNNEL] += size
            port.to_client_packets += len(packets)
            port.to_client_bytes += size
            return
        for packet in packets:  # one by one: each refusal counted by its reason
            if self._to_tunnel(port, packet):
                counters.packets[UNDERLAY_TO_TUNNEL] += 1
                counters.bytes[UNDERLAY_TO_TUNNEL] += len(packet)
                port.to_client_packets += 1
                port.to_client_bytes += len(packet)

    def _to_tunnel(self, port: TunnelPort, packet: bytes) -> bool:
        """Send into ``port``'s tunnel; a drop is counted there (delivery by the caller)."""
        for _ in range(2):
            try:
                port.sender.send(packet)
            except NewAssignedAddress as change:
                port.sender = change.sender
                continue
            except SendBufferFull:
                self._metrics.drop("tunnel_queue_full")
            except DatagramTooLarge:
                self._metrics.drop("too_large_for_tunnel")
            except SendPacketError:
                self._metrics.drop("tunnel_closed")
            else:
                return True
            port.drops += 1
            return False
        self._metrics.drop("tunnel_closed")
        port.drops += 1
        return False

    def _answer(self, port: TunnelPort, offending: bytes) -> None:
        if port.gateway is None or not may_answer_with_scmp_error(offending):
            return
        if not port.scmp.take(self._clock()):  # before any work: replies cost CPU
            self._counters.scmp_suppressed += 1
            return
        # The reference check again, for the code and pointer (and only for an answer).
        violation = check_tunnel_packet(offending, port.address)
        if violation is None:  # pragma: no cover - the step agrees with the check
            return
        limit = port.sender.max_packet_size or MAX_SCMP_ERROR_PACKET
        reply = build_parameter_problem(
            offending,
            violation.code,
            violation.pointer,
            port.gateway,
            port.address,
            min(limit, MAX_SCMP_ERROR_PACKET),
            destination=port.address,  # the tunnel's client, even if it spoofed its source
        )
        if self._to_tunnel(port, reply):
            sent = self._counters.scmp_sent
            code = str(violation.code.value)
            sent[code] = sent.get(code, 0) + 1
            port.scmp_sent += 1

    def _echo(self, port: TunnelPort, request: bytes) -> None:
        """Answer a ping of the gateway itself, back into the tunnel it came from."""
        if not port.scmp.take(self._clock()):
            self._counters.scmp_suppressed += 1
            return
        try:
            reply = echo_reply(request)
        except ScionDecodeError:
            self._metrics.drop("invalid_scmp_echo")
            port.drops += 1
            return
        if self._to_tunnel(port, reply):
            self._counters.scmp_echo_replies += 1
            port.scmp_sent += 1


def _log_underlay_error(exc: OSError) -> None:
    log.warning("underlay socket error: %s", exc)
