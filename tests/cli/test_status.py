"""``snaptun status`` and ``--kick`` against a real gateway with live tunnels."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from snaptun.cli._status import format_table, run_status
from snaptun.cli.main import build_parser
from snaptun.constants import KICKED_CLOSE_CODE, KICKED_REASON
from snaptun.gateway.admin import ADMIN_FILE, SECRET_FILE, SECRET_HEADER
from tests.cli._procs import SNAPTUN, _env
from tests.gateway._gateway import GatewayProcess, connect_argv, run_gateway, scion_udp, scrape
from tests.gateway.test_e2e import FOREIGN, _violations, tunnel, udp_sink
from tests.gateway.test_newest_wins import _line


async def status(*argv: str) -> tuple[int, str, str]:
    """``snaptun status ARGV`` in-process (in a thread: it blocks); code, stdout, stderr."""
    args = build_parser().parse_args(["status", *argv])
    out = io.StringIO()
    loop = asyncio.get_running_loop()
    code = await loop.run_in_executor(None, run_status, args, out)
    return code, out.getvalue(), ""


async def status_json(gw: GatewayProcess) -> list[dict[str, Any]]:
    code, out, _ = await status("--state-dir", str(gw.state.root), "--json")
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


def events(gw: GatewayProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gw.log.read_text().splitlines() if line[:1] == "{"]


async def test_status_shows_each_tunnel_with_counters_matching_the_traffic(tmp_path: Path) -> None:
    async with udp_sink() as router:
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.address) as gw:
            a_id, b_id = uuid.uuid4(), uuid.uuid4()
            async with (
                tunnel(gw, gw.token(a_id)) as (sender, receiver, a, conn),
                tunnel(gw, gw.token(b_id)) as (_, _, b, _),
            ):
                outbound = [scion_udp(a, FOREIGN, b"o" * n) for n in (10, 200, 1000)]
                for packet in outbound:
                    sender.send(packet)
                for _ in outbound:
                    await router.get()
                inbound = [scion_udp(FOREIGN, a, b"i" * n) for n in (7, 70)]
                for packet in inbound:
                    router.send(packet, gw.underlay)
                for _ in inbound:
                    await asyncio.wait_for(receiver.receive(), 5)
                _, bad, _, _ = _violations(a)[0]
                sender.send(bad)
                await asyncio.wait_for(receiver.receive(), 5)  # the SCMP answer
                rows = {row["pssid"]: row for row in await status_json(gw)}
                # the human table, by the real command line
                done = await asyncio.to_thread(
                    subprocess.run,
                    [*SNAPTUN, "status", "--state-dir", str(gw.state.root)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    env=_env(),
                    check=False,
                )
            assert set(rows) == {str(a_id), str(b_id)}
            row = rows[str(a_id)]
            assert row["address"] == str(a)
            assert row["remote"] == _remote(conn)
            assert row["from_client_packets"] == 3
            assert row["from_client_bytes"] == sum(map(len, outbound))
            assert row["to_client_packets"] == 2  # SCMP answers are counted apart
            assert row["to_client_bytes"] == sum(map(len, inbound))
            assert (row["drops"], row["scmp_sent"]) == (1, 1)
            assert row["session_expiry"] > row["since"]
            other = rows[str(b_id)]
            assert other["address"] == str(b)
            assert [other[k] for k in ("from_client_packets", "to_client_packets", "drops")] == [
                0,
                0,
                0,
            ]
            assert done.returncode == 0, done.stderr
            header, *lines = done.stdout.splitlines()
            assert header.split()[:3] == ["PSSID", "ADDRESS", "CLIENT"]
            assert sorted(line.split()[1] for line in lines) == sorted([str(a), str(b)])
            mine = next(line for line in lines if line.startswith(str(a_id)))
            assert f"{sum(map(len, outbound)) / 1024:.1f} KiB (3 pkt)" in mine
            assert f"{sum(map(len, inbound))} B (2 pkt)" in mine


async def test_closed_event_carries_the_tunnels_counters(tmp_path: Path) -> None:
    async with udp_sink() as router:
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.address) as gw:
            async with tunnel(gw) as (sender, _, me, _):
                packets = [scion_udp(me, FOREIGN, b"x" * n) for n in (1, 2, 3, 4)]
                for packet in packets:
                    sender.send(packet)
                for _ in packets:
                    await router.get()
            deadline = time.monotonic() + 10
            while not [e for e in events(gw) if e["event"] == "closed"]:
                assert time.monotonic() < deadline, gw.log.read_text()
                await asyncio.sleep(0.05)
    (closed,) = [e for e in events(gw) if e["event"] == "closed"]
    assert closed["address"] == str(me)
    assert closed["from_client_packets"] == 4
    assert closed["from_client_bytes"] == sum(map(len, packets))
    assert (closed["to_client_packets"], closed["drops"], closed["scmp_sent"]) == (0, 0, 0)


async def test_kick_by_address_and_by_pssid_closes_with_the_operators_reason(
    tmp_path: Path,
) -> None:
    async with udp_sink() as router:
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.address) as gw:
            a_id, b_id = uuid.uuid4(), uuid.uuid4()
            async with (
                tunnel(gw, gw.token(a_id)) as (_, _, a, a_conn),
                tunnel(gw, gw.token(b_id)) as (_, _, _, b_conn),
            ):
                root = str(gw.state.root)
                code, out, _ = await status("--state-dir", root, "--kick", str(a.ip))
                assert code == 0
                assert (
                    out == f"kicked {a} (pssid {a_id}, client {_remote(a_conn)}): {KICKED_REASON}\n"
                )
                lost = await asyncio.wait_for(a_conn.wait_closed(), 5)
                assert (lost.code, lost.reason) == (KICKED_CLOSE_CODE, KICKED_REASON)
                assert [row["pssid"] for row in await status_json(gw)] == [str(b_id)]
                code, out, _ = await status("--state-dir", root, "--kick", str(b_id), "--json")
                assert code == 0
                assert json.loads(out)["pssid"] == str(b_id)
                lost = await asyncio.wait_for(b_conn.wait_closed(), 5)
                assert lost.reason == KICKED_REASON
                assert await status_json(gw) == []
                code, _, _ = await status("--state-dir", root, "--kick", str(b_id))
                assert code == 1  # nothing matches any more
                m = scrape(gw.metrics)
            assert m["snaptun_gateway_tunnels_kicked_total"] == 2
            assert m['snaptun_gateway_close_codes_total{code="0"}'] == 2
            log = events(gw)
            kicked = [e for e in log if e["event"] == "kicked"]
            assert (kicked[0]["address"], kicked[0]["reason"]) == (str(a), KICKED_REASON)
            closed = [e for e in log if e["event"] == "closed"]
            assert {e["reason"] for e in closed} == {KICKED_REASON}
            assert {e["identity"] for e in closed} == {str(a_id), str(b_id)}


def _remote(conn: Any) -> str:
    """The client's UDP address as the gateway sees it (qh3 keeps the transport)."""
    port = conn._transport.get_extra_info("sockname")[1]
    return f"127.0.0.1:{port}"


async def _http_status(url: str, method: str, headers: dict[str, str]) -> int:
    """The status code of one request (in a thread: urllib blocks)."""

    def call() -> int:
        request = urllib.request.Request(url, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    return await asyncio.to_thread(call)


async def test_kick_needs_the_secret(tmp_path: Path) -> None:
    async with udp_sink() as router:
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.address) as gw:
            async with tunnel(gw) as (_, _, me, conn):
                url = json.loads((gw.state.root / ADMIN_FILE).read_text())["url"]
                assert (gw.state.root / SECRET_FILE).stat().st_mode & 0o777 == 0o600
                kick = f"{url}/admin/kick?tunnel={me.ip}"
                for headers in ({}, {SECRET_HEADER: "0" * 64}):
                    assert await _http_status(kick, "POST", headers) == 403
                # a browser's preflight for a cross-site POST with a custom header
                assert await _http_status(kick, "OPTIONS", {}) == 405
                # --admin URL without the secret: a clear error, nothing closed
                code, _, _ = await status("--admin", url, "--kick", str(me.ip))
                assert code == 1
                secret = gw.state.root / SECRET_FILE
                code, _, _ = await status("--admin", url, "--secret-file", str(secret), "--json")
                assert code == 0
                assert conn.closed is None
                code, _, _ = await status(
                    "--admin", url, "--secret-file", str(secret), "--kick", str(me)
                )
                assert code == 0
                await asyncio.wait_for(conn.wait_closed(), 5)
            code, _ = gw.stop()
            assert code == 0
        assert not (gw.state.root / ADMIN_FILE).exists()  # removed at shutdown
        code, _, _ = await status("--state-dir", str(gw.state.root))
        assert code == 1


async def test_kicked_connect_client_shows_it_and_reconnects_after_its_backoff(
    tmp_path: Path,
) -> None:
    async with udp_sink() as router:
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.address) as gw:
            identity = uuid.uuid4()
            err = tmp_path / "connect.err"
            with err.open("w") as stderr:
                client = subprocess.Popen(
                    [*connect_argv(gw, gw.token(identity)), "-v"],
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                    env=_env(),
                )
            try:
                first = await _line(client)
                assert first["event"] == "connected"
                code, _, _ = await status(
                    "--state-dir", str(gw.state.root), "--kick", str(identity)
                )
                assert code == 0
                closed = await _line(client)
                assert closed["event"] == "closed"
                assert (closed["close_code"], closed["close_reason"]) == (
                    KICKED_CLOSE_CODE,
                    KICKED_REASON,
                )
                again = await _line(client)
                assert again["event"] == "connected"  # a kick is no ban
                assert again["assigned"] == first["assigned"]
                assert "reconnecting in" in err.read_text()  # after the backoff, not at once
                client.terminate()
                assert client.wait(10) == 0
            finally:
                if client.poll() is None:
                    client.kill()
                client.wait(10)
                if client.stdout is not None:
                    client.stdout.close()


def test_table_of_nothing_and_of_odd_values() -> None:
    assert format_table([], 0.0) == "no live tunnels\n"
    row = {
        "pssid": "p",
        "address": "1-ff00:0:110,10.0.0.2",
        "remote": "127.0.0.1:5",
        "since": "1970-01-01T00:00:00.000Z",
        "session_expiry": "1970-01-01T01:00:00.000Z",
        "from_client_packets": 3,
        "from_client_bytes": 5 * 1024 * 1024,
        "to_client_packets": 1,
        "to_client_bytes": 2048,
        "drops": 0,
        "scmp_sent": 0,
    }
    text = format_table([row], 3725.0)
    line = text.splitlines()[1]
    assert "1h02m" in line  # up for 3725 s
    assert "expired" in line
    assert "5.0 MiB (3 pkt)" in line
    assert "2.0 KiB (1 pkt)" in line
    weird = {"pssid": "q", "since": "yesterday", "session_expiry": None}
    assert "0s" in format_table([weird], 5.0).splitlines()[1]
