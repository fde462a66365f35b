"""A fleet of gateways for :class:`~snaptun.aio.bridge.TunnelBridge`, tried in rendezvous order.

::

    fleet = GatewayFleet(
        [Gateway(name, lambda h=h, p=p: quic.connect(h, p, ca_file=ca)) for name, h, p in gws],
        identity=source.identity,
    )
    bridge = TunnelBridge(fleet, builder_factory(source), ("127.0.0.1", 0))

Each round of (re)connecting asks :meth:`GatewayFleet.order` afresh: the
gateways ranked by :func:`snaptun.core.rendezvous.rendezvous_order` for the
identity of the current token, so every client of one identity prefers the
same gateway and a fleet's clients spread evenly over it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from snaptun.aio.quic import QuicConnection
from snaptun.core.rendezvous import rendezvous_order

__all__ = ["ConnectFactory", "Gateway", "GatewayFleet"]

ConnectFactory = Callable[[], AbstractAsyncContextManager[QuicConnection]]
"""Opens one QUIC connection to the gateway, e.g. ``lambda: quic.connect(host, port, ...)``."""


@dataclass(frozen=True, slots=True)
class Gateway:
    """One gateway: its name (the rendezvous key, e.g. ``192.0.2.1:4433``) and how to reach it."""

    name: str | None
    connect: ConnectFactory


class GatewayFleet:
    """Gateways ranked for an identity; a fleet of one never asks for the identity.

    ``identity`` is called once per round of connection attempts (it may read
    a token file, and may raise: the bridge counts that as a failed attempt).
    """

    def __init__(self, gateways: Sequence[Gateway], identity: Callable[[], str]) -> None:
        self._gateways = list(gateways)
        self._identity = identity
        if len(self._gateways) > 1:
            names = [g.name for g in self._gateways]
            if any(n is None for n in names):
                raise ValueError("every gateway of a fleet needs a name")
            rendezvous_order("", [n for n in names if n is not None])  # no duplicates
        elif not self._gateways:
            raise ValueError("no gateway to choose from")
        self._by_name = {g.name: g for g in self._gateways}

    @classmethod
    def single(cls, connect: ConnectFactory, name: str | None = None) -> GatewayFleet:
        """A fleet of one gateway."""
        return cls([Gateway(name, connect)], lambda: "")

    def __len__(self) -> int:
        return len(self._gateways)

    def order(self) -> list[Gateway]:
        """The gateways, best first for the current identity."""
        if len(self._gateways) == 1:
            return list(self._gateways)
        names = [g.name for g in self._gateways if g.name is not None]
        return [self._by_name[n] for n in rendezvous_order(self._identity(), names)]
