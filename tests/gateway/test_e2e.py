"""End to end: `snaptun serve` as a real process, clients over real QUIC, a UDP border router."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from snaptun.aio import quic
from snaptun.aio.client import ClientBuilder, ClientReceiver, ClientSender
from snaptun.core.addressing import EndhostAddress
from snaptun.core.tokens import SnapTokenClaims, generate_signing_key, mint_token
from snaptun.errors import ConnectionLost, ControlResponseError
from snaptun.keyfiles import write_public_key
from snaptun.scion import ScmpParameterProblem, decode, decode_scmp, decode_udp
from tests.cli._procs import _env
from tests.gateway._gateway import GatewayProcess, connect_argv, run_gateway, scion_udp, scrape

FOREIGN = EndhostAddress.parse("2-ff00:0:220,192.0.2.80")


class UdpSink(asyncio.DatagramProtocol):
    """A UDP socket standing in for the border router (or a local application)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    async def get(self, timeout: float = 5.0) -> bytes:
        data, _ = await asyncio.wait_for(self.queue.get(), timeout)
        return data

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)


@asynccontextmanager
async def udp_sink() -> AsyncIterator[UdpSink]:
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(UdpSink, local_addr=("127.0.0.1", 0))
    try:
        yield sink
    finally:
        transport.close()


@asynccontextmanager
async def tunnel(
    gw: GatewayProcess, token: str | None = None, desired: list[EndhostAddress] | None = None
) -> AsyncIterator[tuple[ClientSender, ClientReceiver, EndhostAddress, quic.QuicConnection]]:
    async with quic.connect(gw.listen[0], gw.listen[1], fingerprint=gw.fingerprint) as conn:
        builder = ClientBuilder(token or gw.token()).with_desired_addresses(desired or [])
        sender, receiver, control = await builder.connect(conn)
        yield sender, receiver, control.assigned_addresses[0], conn


async def test_packets_to_foreign_destinations_use_the_underlay_both_ways(tmp_path: Path) -> None:
    async with udp_sink() as router:
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.address) as gw:
            async with tunnel(gw) as (sender, receiver, me, _):
                outbound = [scion_udp(me, FOREIGN, b"out-%d" % i) for i in range(5)]
                for packet in outbound:
                    sender.send(packet)
                assert [await router.get() for _ in outbound] == outbound
                inbound = [scion_udp(FOREIGN, me, b"in-%d" % i) for i in range(3)]
                for packet in inbound:
                    router.send(packet, gw.underlay)
                assert [await asyncio.wait_for(receiver.receive(), 5) for _ in inbound] == inbound
                # to nobody (an address outside the pools): dropped and counted
                nobody = EndhostAddress.parse("1-ff00:0:110,10.0.1.9")
                router.send(scion_udp(FOREIGN, nobody, b"x"), gw.underlay)
                router.send(b"not scion", gw.underlay)
                await asyncio.sleep(0.3)
                m = scrape(gw.metrics)
            assert m['snaptun_gateway_packets_total{direction="tunnel_to_underlay"}'] == 5
            assert m['snaptun_gateway_bytes_total{direction="tunnel_to_underlay"}'] == sum(
                map(len, outbound)
            )
            assert m['snaptun_gateway_packets_total{direction="underlay_to_tunnel"}'] == 3
            assert m['snaptun_gateway_drops_total{reason="unknown_destination"}'] == 1
            assert m['snaptun_gateway_drops_total{reason="underlay_unparsable"}'] == 1
            assert m["snaptun_datagrams_received_total"] == 5
            assert m["snaptun_datagrams_sent_total"] == 3
            assert m['snaptun_gateway_setups_total{reason="",result="accepted"}'] == 1
            assert m["snaptun_gateway_active_tunnels"] == 1


def _violations(me: EndhostAddress) -> list[tuple[str, bytes, int, int]]:
    good = bytearray(scion_udp(me, FOREIGN, b"payload"))
    path_at = 12 + 16 + 4 + 4  # IPv4 destination and source
    bad_version = bytearray(good)
    bad_version[0] |= 0x10
    short_header = good[:30]  # ends inside the address header
    spoofed = bytearray(scion_udp(EndhostAddress(me.isd_as, FOREIGN.ip), FOREIGN, b"spoof"))
    empty_path_type = bytearray(good)
    empty_path_type[8] = 0
    broken_path = bytearray(good)
    broken_path[path_at + 1] = 0x3F  # Seg0Len high bits: longer than the header says
    truncated = bytes(good[:-3])
    return [
        ("invalid_common_header", bytes(bad_version), 16, 0),
        ("invalid_address_header", bytes(short_header), 32, 12),
        ("invalid_source_address", bytes(spoofed), 33, 20),
        ("unknown_path_type", bytes(empty_path_type), 20, 8),
        ("invalid_path", bytes(broken_path), 48, path_at),
        ("invalid_packet_size", truncated, 19, path_at),
    ]


async def test_each_policy_violation_is_dropped_and_answered_with_scmp(tmp_path: Path) -> None:
    async with udp_sink() as router:
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.address) as gw:
            async with tunnel(gw) as (sender, receiver, me, _):
                cases = _violations(me)
                for reason, packet, code, pointer in cases:
                    sender.send(packet)
                    reply = decode(await asyncio.wait_for(receiver.receive(), 5))
                    assert reply.next_header == 202, reason
                    message = decode_scmp(reply.payload, reply.address)
                    assert isinstance(message, ScmpParameterProblem), reason
                    assert (message.code, message.pointer) == (code, pointer), reason
                    assert packet.startswith(message.quote), reason
                    assert reply.address.src_ia == me.isd_as
                    assert reply.destination == me, reason  # also when the source was spoofed
                assert router.queue.empty()  # nothing invalid left the gateway
                m = scrape(gw.metrics)
            for reason, _, code, _ in cases:
                assert m[f'snaptun_gateway_drops_total{{reason="{reason}"}}'] == 1, reason
                assert m[f'snaptun_gateway_scmp_sent_total{{code="{code}"}}'] == 1, reason
            assert m['snaptun_gateway_packets_total{direction="tunnel_to_underlay"}'] == 0


async def test_restart_keeps_a_held_address_for_its_identity(tmp_path: Path) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    tiny = ("--pool", "10.0.0.0/30", "--gateway-address", "10.0.0.1")  # one address: 10.0.0.2
    async with udp_sink() as router:
        with run_gateway(tmp_path / "state", tmp_path / "gw1.log", router.address, *tiny) as gw:
            async with tunnel(gw, gw.token(a)) as (_, _, address, _):
                assert str(address.ip) == "10.0.0.2"
            code, _ = gw.stop()
            assert code == 0
        with run_gateway(tmp_path / "state", tmp_path / "gw2.log", router.address, *tiny) as gw:
            # B gets nothing, neither "any" nor A's address: it is on hold for A.
            for desired in ([], [address]):
                with pytest.raises((ConnectionLost, ControlResponseError)) as refused:
                    async with tunnel(gw, gw.token(b), desired=desired):
                        pass
                assert _refusal(refused.value) in {("close", 1), ("http", 400)}
            async with tunnel(gw, gw.token(a)) as (_, _, again, _):
                assert again == address


def _refusal(error: BaseException) -> tuple[str, int | None]:
    """A refused setup shows as the close (code 1) or, if it came first, the HTTP answer."""
    if isinstance(error, ControlResponseError):
        return "http", error.status
    assert isinstance(error, ConnectionLost)
    return "close", error.code


async def test_sigterm_closes_tunnels_with_a_code_and_exits_0(tmp_path: Path) -> None:
    async with udp_sink() as router:
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.address) as gw:
            async with tunnel(gw) as (_, _, _, conn):
                loop = asyncio.get_running_loop()
                stopping = loop.run_in_executor(None, gw.stop)
                lost = await asyncio.wait_for(conn.wait_closed(), 10)
                code, seconds = await stopping
            assert (lost.code, lost.reason) == (0, "gateway shutting down")
            assert code == 0
            assert seconds < 5
            lines = gw.log.read_text().splitlines()
            events = [json.loads(line) for line in lines if line.startswith("{")]
            names = [e["event"] for e in events]
            assert names[-1] == "stopped"
            assert "stopping" in names
            closed = [e for e in events if e["event"] == "closed"]
            assert closed[-1]["reason"] == "gateway shutting down"


async def test_events_name_the_address_the_client_roamed_to(tmp_path: Path) -> None:
    """`renewed` and `closed` name the client's address now, not the one it came from."""
    async with udp_sink() as router:
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.address) as gw:
            async with quic.connect(gw.listen[0], gw.listen[1], fingerprint=gw.fingerprint) as conn:
                sender, _, control = await ClientBuilder(gw.token()).connect(conn)
                first = conn.local_address
                await conn.rebind()
                moved = conn.local_address
                assert first is not None
                assert moved is not None
                me = control.assigned_addresses[0]
                sender.send(scion_udp(me, FOREIGN, b"from-the-new-socket"))
                assert (await router.get()).endswith(b"from-the-new-socket")
                await asyncio.wait_for(control.renew_session(), 5)
            await asyncio.sleep(0.3)  # the gateway logs the close
            lines = gw.log.read_text().splitlines()
            events = {
                json.loads(line)["event"]: json.loads(line) for line in lines if line[:1] == "{"
            }
            assert events["accepted"]["remote"] == f"127.0.0.1:{first[1]}"
            assert events["renewed"]["remote"] == f"127.0.0.1:{moved[1]}"
            assert events["closed"]["remote"] == f"127.0.0.1:{moved[1]}"


async def test_two_connect_clients_switch_locally(tmp_path: Path) -> None:
    async with udp_sink() as router, udp_sink() as app_a, udp_sink() as app_b:
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.address) as gw:
            clients: list[subprocess.Popen[str]] = []
            try:
                connected: list[dict[str, Any]] = []
                for app in (app_a, app_b):
                    argv = connect_argv(
                        gw, gw.token(), "--forward-to", f"{app.address[0]}:{app.address[1]}"
                    )
                    proc = subprocess.Popen(
                        argv,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                        env=_env(),
                    )
                    clients.append(proc)
                    line = await asyncio.wait_for(
                        asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline),  # type: ignore[union-attr]
                        20,
                    )
                    connected.append(json.loads(line))
                a_addr, b_addr = (
                    EndhostAddress.parse("{isd_as},{ip}".format(**c["assigned"][0]))
                    for c in connected
                )
                a_local = connected[0]["local"].rpartition(":")
                b_local = connected[1]["local"].rpartition(":")
                to_b = [scion_udp(a_addr, b_addr, b"hello B %d" % i) for i in range(5)]
                for packet in to_b:
                    app_a.send(packet, (a_local[0].strip("[]"), int(a_local[2])))
                assert [await app_b.get(10) for _ in to_b] == to_b
                reply = scion_udp(b_addr, a_addr, b"hello A")
                app_b.send(reply, (b_local[0].strip("[]"), int(b_local[2])))
                assert await app_a.get(10) == reply
                assert (
                    decode_udp(decode(reply).payload, decode(reply).address).payload == b"hello A"
                )
                m = scrape(gw.metrics)
                assert m['snaptun_gateway_packets_total{direction="tunnel_to_tunnel"}'] == 6
                assert router.queue.empty()
            finally:
                for proc in clients:
                    proc.terminate()
                for proc in clients:
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                    if proc.stdout is not None:
                        proc.stdout.close()


async def test_max_tunnels_refuses_the_next_client_and_metrics_show_queues(tmp_path: Path) -> None:
    async with udp_sink() as router:
        with run_gateway(
            tmp_path / "state", tmp_path / "gw.log", router.address, "--max-tunnels", "1"
        ) as gw:
            async with tunnel(gw):
                with pytest.raises(ConnectionLost) as refused:
                    async with tunnel(gw):
                        pass
                assert (refused.value.code, refused.value.reason) == (5, "gateway is full")
                m = scrape(gw.metrics)
            assert m['snaptun_gateway_setups_total{reason="max_tunnels",result="refused"}'] == 1
            assert m['snaptun_gateway_queue_depth{queue="tunnels"}'] == 0
            assert m['snaptun_gateway_queue_depth{queue="underlay"}'] == 0
            assert m['snaptun_gateway_free_addresses{ip_version="4"}'] == 253 - 1


async def test_external_token_keys_replace_the_dev_key(tmp_path: Path) -> None:
    issuer = generate_signing_key()
    public = tmp_path / "issuer.pub.pem"
    write_public_key(issuer.public_key(), public)
    async with udp_sink() as router:
        with run_gateway(
            tmp_path / "state", tmp_path / "gw.log", router.address, "--token-key", str(public)
        ) as gw:
            with pytest.raises((ConnectionLost, ControlResponseError)) as refused:
                async with tunnel(gw, gw.token()):  # signed with the dev key: not trusted now
                    pass
            assert _refusal(refused.value) in {("close", 1), ("http", 401)}
            claims = SnapTokenClaims(pssid=uuid.uuid4(), exp=int(time.time()) + 60)
            async with tunnel(gw, mint_token(issuer, claims)) as (_, _, address, _):
                assert address.isd_as == EndhostAddress.parse("1-ff00:0:110,10.0.0.9").isd_as
