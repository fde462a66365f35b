"""``snaptun echo-client``: set a tunnel up, check datagram echoes, hold and renew.

It mirrors ``snaptun-ref client``: one JSON object per line on stdout, an
``established`` line, optional ``renewed`` lines, then a ``done`` line
(``"ok": true``) or a failure line (``"ok": false``, exit code 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from snaptun.aio import quic
from snaptun.aio.client import ClientBuilder, ClientControl, ClientReceiver, ClientSender
from snaptun.cli._common import emit
from snaptun.constants import CloseCode
from snaptun.core.addressing import EndhostAddress
from snaptun.errors import ConnectionLost, ControlResponseError, RenewalFailed, SnaptunError

__all__ = ["ClientOptions", "run_echo_client"]

log = logging.getLogger("snaptun.cli.client")

DEFAULT_TOKEN = "ANAPAYA"  # noqa: S105 - the reference's public test token
SEQ_BYTES = 8
"""Each echo datagram starts with its sequence number (big endian)."""
SETTLE_SECONDS = 0.5
"""After a refused setup request, how long to wait for the server's close."""


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What ``snaptun echo-client`` was asked to do."""

    host: str
    port: int
    ca: Path | None = None
    fingerprint: str | None = None
    insecure: bool = False
    token: str = DEFAULT_TOKEN
    addresses: tuple[EndhostAddress, ...] = ()
    count: int = 10
    size: int = 100
    echo_timeout: float = 1.0
    retries: int = 2
    hold: float = 0.0
    renew_every: float | None = None
    renew_token: str | None = None
    auto_renew: bool = False
    renew_threshold: float = 300.0
    expect_close: int | None = None
    mtu: int = 1452
    server_name: str = "localhost"
    connect_timeout: float = 5.0


class _Failure(SnaptunError):
    """The run failed for a reason of its own (not a library error)."""


@dataclass
class _Progress:
    datagrams: int = 0
    echoed: int = 0
    resent: int = 0
    stale_echoes: int = 0
    datagram_phase_ms: float = 0.0
    renewals: int = 0
    valid_until: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def payload(seq: int, size: int) -> bytes:
    """The datagram for sequence number ``seq``: the number, then a pattern up to ``size``."""
    head = seq.to_bytes(SEQ_BYTES, "big")
    return head + bytes((seq + i) & 0xFF for i in range(size - SEQ_BYTES))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class _EchoClient:
    def __init__(self, options: ClientOptions, out: TextIO) -> None:
        self.options = options
        self.out = out
        self.conn: quic.QuicConnection | None = None
        self.progress = _Progress()

    async def run(self) -> int:
        expect = self.options.expect_close
        try:
            await self._run()
        except Exception as exc:  # every failure becomes one JSON line
            lost = self._peer_close(exc)
            if expect is not None and lost is not None and lost.code == expect:
                emit(self._done(lost), self.out)
                return 0
            emit(self._failure(exc, lost), self.out)
            return 1
        if expect is not None:
            failure = _Failure(f"expected the server to close with code {expect}, but it did not")
            emit(self._failure(failure, None), self.out)
            return 1
        emit(self._done(None), self.out)
        return 0

    async def _run(self) -> None:
        o = self.options
        settings = quic.QuicSettings(udp_payload_size=o.mtu)
        started = time.perf_counter()
        async with quic.connect(
            o.host,
            o.port,
            server_name=o.server_name,
            ca_file=o.ca,
            fingerprint=o.fingerprint,
            insecure=o.insecure,
            settings=settings,
            timeout=o.connect_timeout,
        ) as conn:
            self.conn = conn
            connected = time.perf_counter()
            builder = ClientBuilder(o.token).with_desired_addresses(o.addresses)
            if o.auto_renew:
                renew_token = o.renew_token or o.token

                async def renewer() -> str:
                    return renew_token

                builder = builder.with_auto_renewal(renewer, threshold=o.renew_threshold)
            try:
                sender, receiver, control = await builder.connect(conn)
            except ControlResponseError:
                # The server usually closes right after a refused setup request.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.wait_closed(), SETTLE_SECONDS)
                raise
            self.progress.valid_until = int(control.session_expiry or 0)
            emit(
                {
                    "event": "established",
                    "assigned": [
                        {"isd_as": str(a.isd_as), "ip": str(a.ip)}
                        for a in control.assigned_addresses
                    ],
                    "valid_until": self.progress.valid_until,
                    "handshake_ms": _ms(connected - started),
                    "setup_ms": _ms(time.perf_counter() - connected),
                    "max_datagram_size": sender.max_packet_size,
                },
                self.out,
            )
            control_task = asyncio.ensure_future(control.run()) if o.auto_renew else None
            try:
                await self._echo(sender, receiver)
                await self._hold(conn, control, control_task)
            finally:
                if control_task is not None:
                    control.stop()
                    control_task.cancel()
                    with contextlib.suppress(BaseException):
                        await control_task
                if o.auto_renew:
                    self.progress.renewals = control.renewals - 1
                    self.progress.valid_until = int(control.session_expiry or 0)

    async def _echo(self, sender: ClientSender, receiver: ClientReceiver) -> None:
        o = self.options
        p = self.progress
        started = time.perf_counter()
        try:
            for seq in range(o.count):
                datagram = payload(seq, o.size)
                p.datagrams += 1
                for attempt in range(o.retries + 1):
                    if attempt:
                        p.resent += 1
                    sender.send(datagram)
                    if await self._await_echo(receiver, datagram):
                        p.echoed += 1
                        break
                else:
                    raise _Failure(
                        f"no echo for datagram {seq} within {o.echo_timeout * 1000:.0f} ms "
                        f"after {o.retries} retries"
                    )
        finally:
            p.datagram_phase_ms = _ms(time.perf_counter() - started)

    async def _await_echo(self, receiver: ClientReceiver, datagram: bytes) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.echo_timeout
        while (left := deadline - loop.time()) > 0:
            try:
                got = await asyncio.wait_for(receiver.receive(), left)
            except TimeoutError:
                return False
            if got == datagram:
                return True
            self.progress.stale_echoes += 1
        return False

    async def _hold(
        self,
        conn: quic.QuicConnection,
        control: ClientControl,
        control_task: asyncio.Future[None] | None,
    ) -> None:
        o = self.options
        if o.hold <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + o.hold
        next_renewal = None if o.renew_every is None else loop.time() + o.renew_every
        closed = asyncio.ensure_future(conn.wait_closed())
        waits: set[asyncio.Future[Any]] = {closed}
        if control_task is not None:
            waits.add(control_task)
        try:
            while (now := loop.time()) < deadline:
                wake = deadline if next_renewal is None else min(deadline, next_renewal)
                done, _ = await asyncio.wait(
                    waits, timeout=max(wake - now, 0.0), return_when=asyncio.FIRST_COMPLETED
                )
                if closed in done:
                    raise closed.result()
                if control_task is not None and control_task in done:
                    control_task.result()  # RenewalFailed propagates
                    await closed  # run() returned: the connection closed
                    raise closed.result()
                if next_renewal is not None and loop.time() >= next_renewal:
                    await self._renew(control)
                    next_renewal += o.renew_every or 0.0
        finally:
            closed.cancel()

    async def _renew(self, control: ClientControl) -> None:
        o = self.options
        valid_until = int(await control.renew_session(o.renew_token or o.token))
        self.progress.renewals += 1
        self.progress.valid_until = valid_until
        emit({"event": "renewed", "valid_until": valid_until}, self.out)

    def _peer_close(self, exc: BaseException) -> ConnectionLost | None:
        """The application close the server sent, if the connection ended that way."""
        lost = self.conn.closed if self.conn is not None else None
        if lost is None and isinstance(exc, ConnectionLost):
            lost = exc
        if lost is not None and lost.by_peer and lost.application:
            return lost
        return None

    def _counters(self) -> dict[str, Any]:
        p = self.progress
        return {
            "datagrams": p.datagrams,
            "echoed": p.echoed,
            "resent": p.resent,
            "stale_echoes": p.stale_echoes,
            "size": self.options.size,
            "datagram_phase_ms": p.datagram_phase_ms,
            "renewals": p.renewals,
            "valid_until": p.valid_until,
        }

    def _done(self, lost: ConnectionLost | None) -> dict[str, Any]:
        record: dict[str, Any] = {"ok": True, "event": "done", **self._counters()}
        if lost is not None:
            record.update(_close_fields(lost))
            record["closed_as_expected"] = True
        return record

    def _failure(self, exc: BaseException, lost: ConnectionLost | None) -> dict[str, Any]:
        cause = exc.cause if isinstance(exc, RenewalFailed) else exc
        error = str(exc) or type(exc).__name__
        expect = self.options.expect_close
        if expect is not None and lost is not None:
            error = f"expected the server to close with code {expect}, got {lost.code}: {error}"
        record: dict[str, Any] = {
            "ok": False,
            "error": error,
            "http_status": cause.status if isinstance(cause, ControlResponseError) else None,
            "close_code": None,
            "close_name": None,
            "close_reason": None,
        }
        if lost is not None:
            record.update(_close_fields(lost))
        record.update(self._counters())
        return record


def _close_fields(lost: ConnectionLost) -> dict[str, Any]:
    name = lost.close_name
    if name is not None:
        # snaptun-ref spells the names as the reference enum does: SessionExpired.
        name = "".join(part.capitalize() for part in CloseCode[name].name.split("_"))
    return {"close_code": lost.code, "close_name": name, "close_reason": lost.reason}


async def run_echo_client(options: ClientOptions, *, out: TextIO | None = None) -> int:
    """Run the echo client; returns the exit code (0 success, 1 failure)."""
    return await _EchoClient(options, out if out is not None else sys.stdout).run()
