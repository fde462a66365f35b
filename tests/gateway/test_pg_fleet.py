"""Two and three real gateways on one PostgreSQL: the fleet-wide rules of a shared grant store."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from snaptun.aio import quic
from snaptun.aio.client import ClientBuilder
from snaptun.constants import REPLACED_CLOSE_CODE, REPLACED_REASON
from snaptun.core.tokens import SnapTokenClaims, generate_signing_key, mint_token
from snaptun.errors import ControlResponseError
from snaptun.keyfiles import write_public_key
from tests.gateway._gateway import GatewayProcess, run_gateway, scion_udp, scrape
from tests.gateway._postgres import PgServer, postgres_server
from tests.gateway.test_e2e import FOREIGN, UdpSink, tunnel, udp_sink

POOLS = ("10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24")


class Fleet:
    """Gateways on one database, accepting tokens of one issuer."""

    def __init__(self, tmp: Path, url: str, router: UdpSink) -> None:
        self.tmp, self.url, self.router = tmp, url, router
        self.issuer: Ed25519PrivateKey = generate_signing_key()
        self.public = tmp / "issuer.pem"
        write_public_key(self.issuer.public_key(), self.public)
        self.count = 0

    def token(self, identity: uuid.UUID) -> str:
        claims = SnapTokenClaims(pssid=identity, exp=int(time.time()) + 300)
        return mint_token(self.issuer, claims)

    @contextlib.contextmanager
    def gateway(self, pool: str, *extra: str) -> Iterator[GatewayProcess]:
        self.count += 1
        name = f"gw{self.count}"
        gateway_address = pool.replace("0/24", "1")
        with run_gateway(
            self.tmp / name, self.tmp / f"{name}.log", self.router.address,
            "--store", self.url, "--pool", pool, "--gateway-address", gateway_address,
            "--token-key", str(self.public), "--hold", "60", *extra,
        ) as gw:  # fmt: skip
            yield gw


@contextlib.asynccontextmanager
async def fleet(tmp: Path, url: str) -> AsyncIterator[Fleet]:
    async with udp_sink() as router:
        yield Fleet(tmp, url, router)


def rows(url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url) as conn:
        got = conn.execute(
            "SELECT identity, host(address), state FROM snaptun_grants ORDER BY identity"
        ).fetchall()
    return [(str(i), str(a), str(s)) for i, a, s in got]


async def test_newest_wins_across_gateways_and_one_grant_under_concurrent_setups(
    tmp_path: Path, pg_url: str
) -> None:
    async with fleet(tmp_path, pg_url) as f:
        with f.gateway(POOLS[0]) as a, f.gateway(POOLS[1]) as b, f.gateway(POOLS[2]) as c:
            x = uuid.uuid4()
            async with tunnel(a, f.token(x)) as (_, _, on_a, first):
                assert str(on_a.ip).startswith("10.1.0.")
                async with tunnel(b, f.token(x)) as (_, receiver, on_b, _):
                    lost = await asyncio.wait_for(first.wait_closed(), 5)
                    assert (lost.code, lost.reason) == (REPLACED_CLOSE_CODE, REPLACED_REASON)
                    assert str(on_b.ip).startswith("10.2.0.")
                    assert rows(pg_url) == [(str(x), str(on_b.ip), "active")]
                    # B's tunnel carries X's packets.
                    f.router.send(scion_udp(FOREIGN, on_b, b"to-b"), b.underlay)
                    assert (await asyncio.wait_for(receiver.receive(), 5)).endswith(b"to-b")
                    m = scrape(a.metrics)
                    assert m["snaptun_gateway_tunnels_replaced_total"] == 1
                    assert m['snaptun_gateway_close_codes_total{code="0"}'] == 1
                    assert m["snaptun_gateway_active_tunnels"] == 0

            # One identity from six clients at once, two per gateway.
            z = uuid.uuid4()
            async with contextlib.AsyncExitStack() as stack:

                async def open_one(gw: GatewayProcess) -> quic.QuicConnection | None:
                    conn = await stack.enter_async_context(
                        quic.connect(gw.listen[0], gw.listen[1], fingerprint=gw.fingerprint)
                    )
                    try:
                        await ClientBuilder(f.token(z)).connect(conn)
                    except Exception:  # replaced before its setup was done: closed
                        return None
                    return conn

                conns = await asyncio.gather(*(open_one(gw) for gw in (a, b, c) * 2))
                await asyncio.sleep(1.0)  # notifications travel
                live = [conn for conn in conns if conn is not None and conn.closed is None]
                assert len(live) == 1
                (mine,) = [r for r in rows(pg_url) if r[0] == str(z)]
                assert mine[2] == "active"
                replaced = sum(
                    scrape(gw.metrics).get("snaptun_gateway_tunnels_replaced_total", 0)
                    for gw in (a, b, c)
                )
                assert replaced >= 1
            addresses = [r[1] for r in rows(pg_url)]
            assert len(addresses) == len(set(addresses))


async def test_a_killed_gateways_holds_are_honoured_by_its_successor(
    tmp_path: Path, pg_url: str
) -> None:
    async with fleet(tmp_path, pg_url) as f:
        with f.gateway(POOLS[0]) as a:
            x = uuid.uuid4()
            with f.gateway(POOLS[2]) as c:
                async with tunnel(c, f.token(x)) as (_, _, on_c, _):
                    c.proc.send_signal(signal.SIGKILL)
                    c.proc.wait(10)
            # The dead gateway's row stays: X's address is still taken fleet-wide.
            assert rows(pg_url) == [(str(x), str(on_c.ip), "active")]
            # A successor for the partition (another gateway id) holds it for X.
            with f.gateway(POOLS[2]) as successor:
                assert rows(pg_url) == [(str(x), str(on_c.ip), "held")]
                y = uuid.uuid4()
                with pytest.raises(ControlResponseError):
                    async with tunnel(successor, f.token(y), [on_c]):
                        pass
                async with tunnel(successor, f.token(y)) as (_, _, on_y, _):
                    assert on_y != on_c
                async with tunnel(successor, f.token(x)) as (_, _, again, _):
                    assert again == on_c
                # X moving to A frees its old address at once (one grant per identity).
                async with tunnel(a, f.token(x)) as (_, _, on_a, _):
                    assert str(on_a.ip).startswith("10.1.0.")
                    assert [r for r in rows(pg_url) if r[0] == str(x)] == [
                        (str(x), str(on_a.ip), "active")
                    ]


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A server of this test's own: it is stopped and started again."""
    with postgres_server() as server:
        yield server


async def test_losing_the_database_refuses_setups_and_keeps_tunnels(
    tmp_path: Path, own_server: PgServer
) -> None:
    url = own_server.create_database()
    async with fleet(tmp_path, url) as f:
        with f.gateway(POOLS[0], "--store-timeout", "0.5") as a:
            async with tunnel(a, f.token(uuid.uuid4())) as (sender, receiver, me, _):
                own_server.stop()
                async with quic.connect(a.listen[0], a.listen[1], fingerprint=a.fingerprint) as c:
                    with pytest.raises(ControlResponseError) as refused:
                        await ClientBuilder(f.token(uuid.uuid4())).connect(c)
                    assert refused.value.status == 503
                    lost = await asyncio.wait_for(c.wait_closed(), 5)
                    assert (lost.code, lost.reason) == (5, "grant store unavailable")
                m = scrape(a.metrics)
                assert m["snaptun_gateway_store_unavailable_total"] >= 1
                key = 'snaptun_gateway_setups_total{reason="store_unavailable",result="refused"}'
                assert m[key] == 1
                # The established tunnel forwards both ways.
                sender.send(scion_udp(me, FOREIGN, b"out"))
                assert (await f.router.get()).endswith(b"out")
                f.router.send(scion_udp(FOREIGN, me, b"in"), a.underlay)
                assert (await asyncio.wait_for(receiver.receive(), 5)).endswith(b"in")
                # The database is back: setups succeed again once the pool reconnected.
                own_server.start()
                deadline = time.monotonic() + 20
                while True:
                    try:
                        async with tunnel(a, f.token(uuid.uuid4())) as (_, _, other, _):
                            assert other != me
                        break
                    except ControlResponseError:
                        assert time.monotonic() < deadline, "no setup within 20 s of the restart"
                        await asyncio.sleep(0.5)
