"""The snaptun client: sets a tunnel up over a QUIC connection and keeps its session alive.

::

    async with quic.connect(host, port, ca_file=cert) as conn:
        sender, receiver, control = await ClientBuilder(token).connect(conn)
        sender.send(scion_packet)
        reply = await receiver.receive()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Self

from snaptun.aio.quic import QuicConnection, QuicStreamReset
from snaptun.core.addressing import EndhostAddress
from snaptun.core.control import ControlResponse, RequestKind, ResponseReader, encode_request
from snaptun.core.messages import (
    AddressRange,
    InvalidAddressRange,
    MessageDecodeError,
    decode_address_assign_response,
    decode_session_renewal_response,
    encode_address_assign_request,
)
from snaptun.errors import (
    ConnectionLost,
    ControlResponseError,
    MalformedResponse,
    ReceiveConnectionClosed,
    ReceiveConnectionError,
    RenewalFailed,
    SendConnectionClosed,
)

__all__ = ["AutoRenewal", "ClientBuilder", "ClientControl", "ClientReceiver", "ClientSender"]

log = logging.getLogger(__name__)

TokenRenewer = Callable[[], Awaitable[str]]
"""Async callback that returns a fresh token for the next renewal."""

REQUEST_TIMEOUT = 5.0
"""Seconds the client waits for one control response."""


@dataclass(frozen=True, slots=True)
class AutoRenewal:
    """When and how the client renews its session by itself (the reference's schedule, bounded)."""

    token_renewer: TokenRenewer
    threshold: float = 300.0
    """Renew soon once less than this many seconds remain."""
    retries: int = 5
    backoff_base: float = 3.0
    """Retry n waits ``backoff_base ** n`` seconds (1, 3, 9, ...)."""
    min_interval: float = 1.0
    """Never renew more often than this (the reference can renew back to back)."""

    def delay(self, remaining: float) -> float:
        """Seconds to sleep before the next renewal, given the session time left."""
        delay = remaining * (0.75 if remaining >= self.threshold else 0.5)
        if remaining > 2 * self.min_interval:
            delay = max(delay, self.min_interval)
        return max(delay, 0.0)


class ClientBuilder:
    """Configures a tunnel: token, desired addresses, automatic renewal."""

    def __init__(self, token: str) -> None:
        self._token = token
        self._desired: list[EndhostAddress] = []
        self._renewal: AutoRenewal | None = None
        self._clock: Callable[[], float] = time.time

    def with_desired_addresses(self, addresses: Sequence[EndhostAddress]) -> Self:
        """Ask for these addresses (the server grants at most one)."""
        self._desired = list(addresses)
        return self

    def with_auto_renewal(
        self,
        token_renewer: TokenRenewer,
        *,
        threshold: float = 300.0,
        retries: int = 5,
        backoff_base: float = 3.0,
        min_interval: float = 1.0,
    ) -> Self:
        """Renew the session automatically with tokens from ``token_renewer``."""
        self._renewal = AutoRenewal(token_renewer, threshold, retries, backoff_base, min_interval)
        return self

    def with_clock(self, clock: Callable[[], float]) -> Self:
        """Use another wall clock (unix seconds)."""
        self._clock = clock
        return self

    async def connect(
        self, conn: QuicConnection
    ) -> tuple[ClientSender, ClientReceiver, ClientControl]:
        """renew_session, then assign_addresses; raises on any refusal or close."""
        control = ClientControl(conn, self._token, self._renewal, self._clock)
        await control.renew_session()
        await control.assign_addresses(self._desired)
        control.start()
        return ClientSender(conn), ClientReceiver(conn), control


async def control_request(conn: QuicConnection, request: bytes) -> ControlResponse:
    """Send one request on a new stream and read the whole answer."""
    stream = conn.open_stream()
    stream.write(request, end_stream=True)
    reader = ResponseReader()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            while chunk := await stream.read():
                reader.feed_data(chunk)
    except TimeoutError:
        stream.reset(0)
        raise MalformedResponse(f"no complete response within {REQUEST_TIMEOUT} s") from None
    except QuicStreamReset as exc:
        raise MalformedResponse(f"response stream reset: {exc}") from exc
    response = reader.feed_eof()
    if not 200 <= response.status < 300:
        raise ControlResponseError(response.status, response.body)
    return response


class ClientControl:
    """The client's side of the session: renewals (manual and automatic), assigned address."""

    def __init__(
        self,
        conn: QuicConnection,
        token: str,
        renewal: AutoRenewal | None,
        clock: Callable[[], float],
    ) -> None:
        self._conn = conn
        self._token = token
        self._renewal = renewal
        self._clock = clock
        self._assigned: list[EndhostAddress] = []
        self.session_expiry: float | None = None
        """Unix seconds at which the session ends unless renewed."""
        self._task: asyncio.Task[None] | None = None
        self.renewals = 0

    @property
    def assigned_addresses(self) -> list[EndhostAddress]:
        """What the server assigned."""
        return list(self._assigned)

    async def renew_session(self, token: str | None = None) -> float:
        """Send renew_session (with ``token`` if given, from then on) and return the new expiry.

        The expiry is the server's ``valid_until`` as an exact integer (unix seconds).
        """
        if token is not None:
            self._token = token
        response = await control_request(
            self._conn, encode_request(RequestKind.SESSION_RENEWAL, self._token)
        )
        try:
            valid_until = decode_session_renewal_response(response.body)
        except MessageDecodeError as exc:
            raise MalformedResponse(f"bad session renewal response: {exc}") from exc
        self.session_expiry = valid_until  # exact: a uint64 does not survive a float
        self.renewals += 1
        return self.session_expiry

    async def assign_addresses(
        self, desired: Sequence[EndhostAddress] = ()
    ) -> list[EndhostAddress]:
        """Send assign_addresses and return the assigned addresses."""
        body = encode_address_assign_request([AddressRange.from_endhost(a) for a in desired])
        response = await control_request(
            self._conn, encode_request(RequestKind.ADDRESS_ASSIGNMENT, self._token, body)
        )
        try:
            ranges = decode_address_assign_response(response.body)
            assigned = [r.to_endhost() for r in ranges]
        except (MessageDecodeError, InvalidAddressRange) as exc:
            raise MalformedResponse(f"bad address assignment response: {exc}") from exc
        if not assigned:
            raise MalformedResponse("address assignment response carries no address")
        self._assigned = assigned
        return self.assigned_addresses

    def start(self) -> None:
        """Start automatic renewal (if configured); idempotent."""
        if self._renewal is not None and self._task is None:
            self._task = asyncio.ensure_future(self._renew_forever(self._renewal))

    def __await__(self) -> Generator[Any, None, None]:
        return self.run().__await__()

    async def run(self) -> None:
        """Wait until the tunnel ends: returns on a close, raises :class:`RenewalFailed`."""
        self.start()
        closed = asyncio.ensure_future(self._conn.wait_closed())
        waits: set[asyncio.Future[Any]] = {closed}
        if self._task is not None:
            waits.add(self._task)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if self._task is not None and self._task.done() and not self._task.cancelled():
                self._task.result()
        finally:
            closed.cancel()

    def stop(self) -> None:
        """Stop automatic renewal."""
        if self._task is not None:
            self._task.cancel()

    async def _renew_forever(self, renewal: AutoRenewal) -> None:
        while self._conn.closed is None:
            remaining = (self.session_expiry or self._clock()) - self._clock()
            await asyncio.sleep(renewal.delay(remaining))
            await self._renew_with_retries(renewal)

    async def _renew_with_retries(self, renewal: AutoRenewal) -> None:
        last: BaseException | None = None
        for attempt in range(renewal.retries + 1):
            if attempt:
                await asyncio.sleep(renewal.backoff_base ** (attempt - 1))
            try:
                token = await renewal.token_renewer()
                await self.renew_session(token)
            except ConnectionLost:
                raise
            except Exception as exc:
                last = exc
                log.warning("session renewal attempt %d failed: %s", attempt + 1, exc)
            else:
                return
        self._conn.close(0, "session renewal failed")
        assert last is not None
        raise RenewalFailed(renewal.retries + 1, last)


class ClientSender:
    """Sends packets into the tunnel."""

    def __init__(self, conn: QuicConnection) -> None:
        self._conn = conn

    def send(self, packet: bytes) -> None:
        """Send now or raise (too large, queue full, closed)."""
        try:
            self._conn.send_datagram(packet)
        except ConnectionLost:
            raise SendConnectionClosed from None

    async def send_wait(self, packet: bytes) -> None:
        """Send, waiting for room in the queue."""
        try:
            await self._conn.send_datagram_wait(packet)
        except ConnectionLost:
            raise SendConnectionClosed from None

    @property
    def max_packet_size(self) -> int | None:
        """Largest packet that fits one datagram to the server."""
        return self._conn.max_datagram_size


class ClientReceiver:
    """Receives packets from the tunnel."""

    def __init__(self, conn: QuicConnection) -> None:
        self._conn = conn

    async def receive(self) -> bytes:
        """The next packet; raises once the connection is closed."""
        try:
            return await self._conn.receive_datagram()
        except ConnectionLost as exc:
            if not exc.by_peer:
                raise ReceiveConnectionClosed from None
            raise ReceiveConnectionError(exc) from None
