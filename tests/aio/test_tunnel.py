"""The tunnel after setup: packets, expiry, renewal, re-assignment, close (real QUIC)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from snaptun.aio.client import ClientBuilder, control_request
from snaptun.constants import CloseCode
from snaptun.core.addressing import EndhostAddress
from snaptun.core.allocator import GrantState
from snaptun.core.control import RequestKind, encode_request
from snaptun.core.messages import decode_address_assign_response
from snaptun.core.tokens import StaticTokenValidator
from snaptun.errors import (
    ControlResponseError,
    DatagramTooLarge,
    NewAssignedAddress,
    ReceiveConnectionClosed,
    ReceivePacketError,
    RenewalFailed,
    SendConnectionClosed,
    SessionExpired,
)
from snaptun.tls import write_self_signed
from tests.aio.harness import ISD_AS, TOKEN, running_server


async def test_64_packets_are_echoed_in_order(certs: tuple[Path, Path]) -> None:
    async with running_server(certs) as harness, harness.connect() as conn:
        sender, receiver, control = await ClientBuilder(TOKEN).connect(conn)
        packets = [b"packet-%02d" % i + bytes(i) for i in range(64)]
        for packet in packets:
            sender.send(packet)
        echoed = [await asyncio.wait_for(receiver.receive(), 5) for _ in packets]
        assert echoed == packets
        assert control.assigned_addresses[0].isd_as == ISD_AS
        registry = harness.metrics.registry  # as a scrape sees them
        sent = registry.get_sample_value("snaptun_datagrams_sent_total")
        received = registry.get_sample_value("snaptun_datagrams_received_total")
        assert (sent, received) == (64, 64)


async def test_largest_datagram_passes_and_one_more_byte_is_refused(
    certs: tuple[Path, Path],
) -> None:
    async with running_server(certs) as harness, harness.connect() as conn:
        sender, receiver, _ = await ClientBuilder(TOKEN).connect(conn)
        limit = sender.max_packet_size
        assert limit is not None
        assert limit >= 1400  # 1200-byte SCION packets fit at the default packet size
        sender.send(b"\x01" * limit)
        assert await asyncio.wait_for(receiver.receive(), 5) == b"\x01" * limit
        with pytest.raises(DatagramTooLarge):
            sender.send(b"\x01" * (limit + 1))
        tunnel = await harness.next_tunnel()
        with pytest.raises(DatagramTooLarge):
            tunnel.sender.send(b"\x02" * (limit + 1))
        # the connection survives the refused datagrams
        sender.send(b"still here")
        assert await asyncio.wait_for(receiver.receive(), 5) == b"still here"


async def test_session_expiry_closes_with_code_4(certs: tuple[Path, Path]) -> None:
    async with (
        running_server(certs, validator=StaticTokenValidator(TOKEN, 1)) as harness,
        harness.connect() as conn,
    ):
        await ClientBuilder(TOKEN).connect(conn)
        tunnel = await harness.next_tunnel()
        lost = await asyncio.wait_for(conn.wait_closed(), 4)
        assert (lost.code, lost.reason) == (CloseCode.SESSION_EXPIRED, "session expired")
        assert isinstance(await asyncio.wait_for(tunnel.result, 2), SessionExpired)
        grant = harness.allocator.grants()[0]
        assert grant.state is GrantState.HELD
        with pytest.raises(SendConnectionClosed):
            tunnel.sender.send(b"late")
        with pytest.raises(ReceiveConnectionClosed):
            await tunnel.receiver.receive()


async def test_manual_renewal_extends_the_session(certs: tuple[Path, Path]) -> None:
    async with (
        running_server(certs, validator=StaticTokenValidator(TOKEN, 2)) as harness,
        harness.connect() as conn,
    ):
        sender, receiver, control = await ClientBuilder(TOKEN).connect(conn)
        first = control.session_expiry
        assert first is not None
        for _ in range(3):
            await asyncio.sleep(1.0)
            await control.renew_session()
        assert control.session_expiry is not None
        assert control.session_expiry > first
        assert time.time() > first  # the first session would be over by now
        sender.send(b"alive")
        assert await asyncio.wait_for(receiver.receive(), 2) == b"alive"
        assert conn.closed is None


async def test_automatic_renewal_keeps_a_3s_token_tunnel_alive_at_8s(
    certs: tuple[Path, Path],
) -> None:
    async def fresh_token() -> str:
        return TOKEN

    async with (
        running_server(certs, validator=StaticTokenValidator(TOKEN, 3)) as harness,
        harness.connect() as conn,
    ):
        builder = ClientBuilder(TOKEN).with_auto_renewal(fresh_token, threshold=300)
        sender, receiver, control = await builder.connect(conn)
        await asyncio.sleep(8.0)
        assert conn.closed is None
        sender.send(b"at 8 s")
        assert await asyncio.wait_for(receiver.receive(), 2) == b"at 8 s"
        # never more than about one renewal a second (the reference makes ~750/s here)
        assert 3 <= control.renewals <= 10
        control.stop()


async def test_renewal_with_a_bad_token_is_401_and_the_tunnel_stays(
    certs: tuple[Path, Path],
) -> None:
    async with running_server(certs) as harness, harness.connect() as conn:
        sender, receiver, control = await ClientBuilder(TOKEN).connect(conn)
        with pytest.raises(ControlResponseError) as refused:
            await control.renew_session("WRONG")
        assert refused.value.status == 401
        sender.send(b"ok")
        assert await asyncio.wait_for(receiver.receive(), 2) == b"ok"
        assert conn.closed is None


async def test_second_assignment_gives_a_fresh_sender(certs: tuple[Path, Path]) -> None:
    async with running_server(certs) as harness, harness.connect() as conn:
        _, _, control = await ClientBuilder(TOKEN).connect(conn)
        tunnel = await harness.next_tunnel()
        old = tunnel.sender.assigned_addresses[0]
        wanted = EndhostAddress.parse(f"{ISD_AS},10.0.0.200")
        assert old != wanted
        assert await control.assign_addresses([wanted]) == [wanted]
        with pytest.raises(NewAssignedAddress) as change:
            tunnel.sender.send(b"to the new address")
        assert change.value.packet == b"to the new address"
        fresh = change.value.sender
        assert fresh.assigned_addresses == [wanted]
        fresh.send(change.value.packet)
        with pytest.raises(SendConnectionClosed):  # the old Sender is retired
            tunnel.sender.send(b"again")


async def test_send_many_sends_a_burst_whole_or_not_at_all(certs: tuple[Path, Path]) -> None:
    async with running_server(certs) as harness, harness.connect() as conn:
        _, receiver, control = await ClientBuilder(TOKEN).connect(conn)
        sender = (await harness.next_tunnel()).sender
        limit = sender.max_packet_size
        assert limit is not None
        assert sender.send_many([b"one", b"two"])
        assert [await asyncio.wait_for(receiver.receive(), 5) for _ in range(2)] == [b"one", b"two"]
        assert not sender.send_many([b"three", b"\x01" * (limit + 1)])  # one too large: none
        sender.send(b"four")
        assert await asyncio.wait_for(receiver.receive(), 5) == b"four"
        wanted = EndhostAddress.parse(f"{ISD_AS},10.0.0.201")
        await control.assign_addresses([wanted])
        assert not sender.send_many([b"five"])  # send() tells why: a new Sender
        with pytest.raises(NewAssignedAddress) as change:
            sender.send(b"five")
        fresh = change.value.sender
        assert fresh.send_many([b"five"])
        assert await asyncio.wait_for(receiver.receive(), 5) == b"five"
        conn.close()
        await asyncio.sleep(0.1)
        assert not fresh.send_many([b"six"])
        with pytest.raises(SendConnectionClosed):
            fresh.send(b"six")


async def test_any_address_request_after_setup_keeps_the_address(
    certs: tuple[Path, Path],
) -> None:
    async with running_server(certs) as harness, harness.connect() as conn:
        _, _, control = await ClientBuilder(TOKEN).connect(conn)
        answer = await control_request(conn, encode_request(RequestKind.ADDRESS_ASSIGNMENT, TOKEN))
        (again,) = decode_address_assign_response(answer.body)
        assert [again.to_endhost()] == control.assigned_addresses
        assert conn.closed is None


async def test_unfinished_stream_does_not_stall_expiry_or_requests(
    certs: tuple[Path, Path],
) -> None:
    async with (
        running_server(certs, validator=StaticTokenValidator(TOKEN, 2)) as harness,
        harness.connect() as conn,
    ):
        _, _, control = await ClientBuilder(TOKEN).connect(conn)
        stalled = conn.open_stream()
        stalled.write(b"POST /connectrpc.v1.snaptun/renew_session HTTP/1.1\r\n")  # no end
        renewed = await asyncio.wait_for(control.renew_session(), 2)
        assert renewed >= int(time.time())
        # expiry still fires although the stalled stream never finishes
        lost = await asyncio.wait_for(conn.wait_closed(), 5)
        assert lost.code == CloseCode.SESSION_EXPIRED


async def test_client_close_ends_control_cleanly_and_holds_the_address(
    certs: tuple[Path, Path],
) -> None:
    async with running_server(certs) as harness:
        async with harness.connect() as conn:
            _, _, control = await ClientBuilder(TOKEN).connect(conn)
            address = control.assigned_addresses[0]
        tunnel = await harness.next_tunnel()
        assert await asyncio.wait_for(tunnel.result, 3) is None
        grant = harness.allocator.grants()[0]
        assert (grant.state, grant.address) == (GrantState.HELD, address.ip)
        # the same identity gets its address back
        async with harness.connect() as conn:
            _, _, control = await ClientBuilder(TOKEN).connect(conn)
            assert control.assigned_addresses == [address]


async def test_server_close_makes_client_sends_fail(certs: tuple[Path, Path]) -> None:
    async with running_server(certs) as harness, harness.connect() as conn:
        sender, receiver, _ = await ClientBuilder(TOKEN).connect(conn)
        tunnel = await harness.next_tunnel()
        tunnel.sender.close(CloseCode.INTERNAL_ERROR, "maintenance")
        lost = await asyncio.wait_for(conn.wait_closed(), 3)
        assert (lost.code, lost.reason) == (CloseCode.INTERNAL_ERROR, "maintenance")
        with pytest.raises(SendConnectionClosed):
            sender.send(b"x")
        with pytest.raises(ReceivePacketError):
            await receiver.receive()
        with pytest.raises(SendConnectionClosed):
            tunnel.sender.send(b"x")


async def test_ed25519_server_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, key_type="ed25519")
    async with running_server((cert, key)) as harness, harness.connect() as conn:
        sender, receiver, _ = await ClientBuilder(TOKEN).connect(conn)
        sender.send(b"over an Ed25519 handshake")
        assert await asyncio.wait_for(receiver.receive(), 3) == b"over an Ed25519 handshake"


async def test_automatic_renewal_gives_up_after_its_retries(certs: tuple[Path, Path]) -> None:
    attempts = 0

    async def refused_token() -> str:
        nonlocal attempts
        attempts += 1
        return "WRONG"

    async with (
        running_server(certs, validator=StaticTokenValidator(TOKEN, 6)) as harness,
        harness.connect() as conn,
    ):
        builder = ClientBuilder(TOKEN).with_auto_renewal(
            refused_token, threshold=300, retries=2, backoff_base=0.1
        )
        _, _, control = await builder.connect(conn)
        with pytest.raises(RenewalFailed) as failed:
            await asyncio.wait_for(control.run(), 8)
        assert attempts == 3
        assert isinstance(failed.value.cause, ControlResponseError)
        assert failed.value.cause.status == 401
        assert conn.closed is not None


async def test_finished_control_streams_are_forgotten(certs: tuple[Path, Path]) -> None:
    async with running_server(certs) as harness, harness.connect() as conn:
        _, _, control = await ClientBuilder(TOKEN).connect(conn)
        for _ in range(20):
            await control.renew_session()
        (server_side,) = harness.connections
        await asyncio.sleep(0.05)
        assert server_side.open_streams == 0
        assert conn.open_streams == 0


async def test_a_failing_token_renewer_is_retried_then_reported(certs: tuple[Path, Path]) -> None:
    attempts = 0

    async def unreadable_token() -> str:
        nonlocal attempts
        attempts += 1
        raise OSError("token file unreadable")

    async with (
        running_server(certs, validator=StaticTokenValidator(TOKEN, 6)) as harness,
        harness.connect() as conn,
    ):
        builder = ClientBuilder(TOKEN).with_auto_renewal(
            unreadable_token, threshold=300, retries=1, backoff_base=0.1
        )
        _, _, control = await builder.connect(conn)
        with pytest.raises(RenewalFailed) as failed:
            await asyncio.wait_for(control.run(), 8)
        assert attempts == 2
        assert isinstance(failed.value.cause, OSError)
