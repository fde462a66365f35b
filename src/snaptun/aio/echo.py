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
from snaptun.aio.server import Receiver, Sender, Server
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
        pump = asyncio.ensure_future(self._pump(sender, receiver))
        error: BaseException | None = None
        try:
            await control.run()
        except ControlError as exc:
            error = exc
            log.info("tunnel from %s ended: %s", conn.remote_address, exc)
        finally:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
        self._on_outcome(TunnelOutcome(conn.remote_address, True, error))

    async def _pump(self, sender: Sender[Any], receiver: Receiver[Any]) -> None:
        while True:
            try:
                packet = await receiver.receive()
            except ReceivePacketError:
                return
            if not self._echo:
                continue
            try:
                await sender.send_wait(packet)
            except NewAssignedAddress as change:
                sender = change.sender
                with contextlib.suppress(SendPacketError):
                    await sender.send_wait(change.packet)
            except SendPacketError as exc:
                log.debug("echo dropped: %s", exc)
