"""Newest wins over real QUIC: a second tunnel of one identity replaces the first."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from snaptun.aio import quic
from snaptun.aio.client import ClientBuilder
from snaptun.aio.server import Server
from snaptun.constants import INTERNAL_ERROR_REASON, REPLACED_CLOSE_CODE, REPLACED_REASON, CloseCode
from snaptun.core.allocator import AddressManager, GrantState
from snaptun.core.tokens import StaticTokenValidator
from snaptun.errors import (
    AcceptInternalError,
    ConnectionLost,
    ReceiveConnectionClosed,
    SendConnectionClosed,
    TunnelReplaced,
)
from tests.aio.harness import ISD_AS, POOLS, TOKEN, running_server


async def _closed(conn: quic.QuicConnection, timeout: float = 5.0) -> ConnectionLost:
    return await asyncio.wait_for(conn.wait_closed(), timeout)


async def test_second_tunnel_replaces_the_first_with_code_0(certs: tuple[Path, Path]) -> None:
    async with running_server(certs) as harness, harness.connect() as first:
        await ClientBuilder(TOKEN).connect(first)
        old = await harness.next_tunnel()
        async with harness.connect() as second:
            s2, r2, c2 = await ClientBuilder(TOKEN).connect(second)
            new = await harness.next_tunnel()
            assert c2.assigned_addresses == old.sender.assigned_addresses
            lost = await _closed(first)
            assert (lost.code, lost.reason, lost.by_peer) == (
                REPLACED_CLOSE_CODE,
                REPLACED_REASON,
                True,
            )
            result = await asyncio.wait_for(old.result, 5)
            assert isinstance(result, TunnelReplaced)
            # The replaced tunnel's server side refuses at once, both ways.
            with contextlib.suppress(SendConnectionClosed):
                old.sender.send(b"x")
                raise AssertionError("a replaced tunnel's Sender must refuse")
            with contextlib.suppress(ReceiveConnectionClosed):
                await old.receiver.receive()
                raise AssertionError("a replaced tunnel's Receiver must refuse")
            # The grant stays active for the newer tunnel, and it echoes.
            [grant] = harness.allocator.grants()
            assert grant.state is GrantState.ACTIVE
            s2.send(b"ping")
            assert await asyncio.wait_for(r2.receive(), 5) == b"ping"
            assert new.control.machine.identity() == old.control.machine.identity()
        await asyncio.wait_for(new.result, 5)
        [grant] = harness.allocator.grants()
        assert grant.state is GrantState.HELD  # only the last tunnel's end holds it


class ExplodingValidator(StaticTokenValidator):
    """A validator with a defect: raises something no caller expects."""

    def validate(self, now: float, token: str) -> Any:
        raise OverflowError("int too large to convert")


async def test_unexpected_error_in_setup_closes_with_code_5(certs: tuple[Path, Path]) -> None:
    async with running_server(certs, validator=ExplodingValidator(TOKEN, 60)) as harness:
        async with harness.connect() as conn:
            connecting = asyncio.ensure_future(ClientBuilder(TOKEN).connect(conn))
            lost = await _closed(conn)
            assert (lost.code, lost.reason) == (CloseCode.INTERNAL_ERROR, INTERNAL_ERROR_REASON)
            refusal = await harness.next_refusal()
            assert isinstance(refusal, AcceptInternalError)
            assert isinstance(refusal.cause, OverflowError)
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        assert harness.allocator.grants() == []


class FailsAfterSetup(StaticTokenValidator):
    """Valid for the setup, then raises on every later request."""

    calls = 0

    def validate(self, now: float, token: str) -> Any:
        self.calls += 1
        if self.calls > 2:
            raise OverflowError("boom")
        return super().validate(now, token)


async def test_unexpected_error_after_setup_closes_with_code_5(certs: tuple[Path, Path]) -> None:
    async with (
        running_server(certs, validator=FailsAfterSetup(TOKEN, 60)) as harness,
        harness.connect() as conn,
    ):
        _, _, control = await ClientBuilder(TOKEN).connect(conn)
        renewal = asyncio.ensure_future(control.renew_session(TOKEN))
        lost = await _closed(conn)
        assert (lost.code, lost.reason) == (CloseCode.INTERNAL_ERROR, INTERNAL_ERROR_REASON)
        await asyncio.gather(renewal, return_exceptions=True)
        tunnel = await harness.next_tunnel()
        result = await asyncio.wait_for(tunnel.result, 5)
        assert type(result).__name__ == "ControlInternalError"
        [grant] = harness.allocator.grants()
        assert grant.state is GrantState.HELD


def test_servers_do_not_share_a_registry_unless_told() -> None:
    manager = AddressManager(ISD_AS, POOLS)
    one: Server[Any] = Server(manager, StaticTokenValidator(TOKEN, 60))
    two: Server[Any] = Server(manager, StaticTokenValidator(TOKEN, 60), registry=one.registry)
    assert two.registry is one.registry
    assert Server(manager, StaticTokenValidator(TOKEN, 60)).registry is not one.registry
