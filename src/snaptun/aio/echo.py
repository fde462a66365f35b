"""An echo service over snaptun: the diagnostics server behind ``snaptun echo-server``.

Every datagram a client sends is sent back to it; tunnels are set up and
driven with the library's :class:`~snaptun.aio.server.Server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from snaptun.aio.quic import QuicConnection, QuicEndpoint
from snaptun.aio.server import Sender, Server
from snaptun.errors import (
    AcceptError,
    ControlError,
    NewAssignedAddress,
    ReceivePacketError,
    SendPacketError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TunnelOutcome:
    """How one connection ended, for logs and tests."""

    remote: tuple[str, int] | None
    accepted: bool
    error: BaseException | None


class EchoService:
    """Accepts connections from an endpoint and echoes every tunnel's datagrams."""

    def __init__(
        self,
        endpoint: QuicEndpoint,
        server: Server[Any],
        *,
        echo: bool = True,
        on_outcome: Callable[[TunnelOutcome], None] | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._server = server
        self._echo = echo
        self._on_outcome = on_outcome or (lambda _: None)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Serve until cancelled."""
        try:
            while True:
                conn = await self._endpoint.accept()
                task = asyncio.ensure_future(self._handle(conn))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, conn: QuicConnection) -> None:
        try:
            sender, receiver, control = await self._server.accept_with_timeout(conn)
        except AcceptError as exc:
            log.info("setup from %s refused: %s", conn.remote_address, exc)
            self._on_outcome(TunnelOutcome(conn.remote_address, False, exc))
            return
        log.info("tunnel from %s assigned %s", conn.remote_address, sender.assigned_addresses)
        echo = _Echo(sender)
        with contextlib.suppress(ReceivePacketError):
            receiver.set_batch_sink(echo.packets if self._echo else _discard)
        error: BaseException | None = None
        try:
            await control.run()
        except ControlError as exc:
            error = exc
            log.info("tunnel from %s ended: %s", conn.remote_address, exc)
        finally:
            receiver.set_sink(None)
        if echo.dropped:
            log.info("tunnel from %s: %d echoes dropped", conn.remote_address, echo.dropped)
        self._on_outcome(TunnelOutcome(conn.remote_address, True, error))


def _discard(packets: list[bytes]) -> None:
    """The sink of ``--no-echo``."""


class _Echo:
    """Sends packets back as they arrive (a batch sink: no task, no await).

    A burst goes back with one :meth:`~snaptun.aio.server.Sender.send_many`;
    if that cannot take it whole, packet by packet. A packet that finds the
    send queue full is dropped and counted: the queue
    (``QuicSettings.send_queue``) is far deeper than any sane window.
    """

    __slots__ = ("_sender", "dropped")

    def __init__(self, sender: Sender[Any]) -> None:
        self._sender = sender
        self.dropped = 0

    def packets(self, packets: list[bytes]) -> None:
        if not self._sender.send_many(packets):
            for packet in packets:
                self.packet(packet)

    def packet(self, packet: bytes) -> None:
        try:
            self._sender.send(packet)
        except NewAssignedAddress as change:
            self._sender = change.sender
            self.packet(change.packet)
        except SendPacketError:
            self.dropped += 1
