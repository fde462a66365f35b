"""Reliability soak: a flood against a real gateway, measured from outside.

Run through ``scripts/soak [--datagrams N] [--seconds S]``. One scenario today
(more to come: churn, kill -9): a gateway on embedded defaults with a tunnel
streaming packets through it; a flood of ``N`` datagrams over ``S`` seconds
from another loopback address (127.0.0.2), three in four shaped as QUIC v1
Initials with fresh connection IDs, the rest random; legitimate setups
during the flood. Printed (JSON): gateway RSS at start, at its peak and 5 s
after the flood, CPU in those 5 s, the tunnel's loss during the flood, the
setups that succeeded, and the gateway's refusal counters. Bounded in count
and time; every process started here is killed at the end. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.gateway._gateway import run_gateway, scion_udp  # noqa: E402

from snaptun.aio import quic  # noqa: E402
from snaptun.aio.client import ClientBuilder  # noqa: E402
from snaptun.core.addressing import EndhostAddress  # noqa: E402

FOREIGN = EndhostAddress.parse("2-ff00:0:220,192.0.2.80")
FLOOD_SOURCE = "127.0.0.2"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def fake_initial() -> bytes:
    head = b"\xc3\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00"
    rest = 1200 - len(head) - 2
    return head + bytes([0x40 | rest >> 8, rest & 0xFF]) + os.urandom(rest)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Router(asyncio.DatagramProtocol):
    """The border router: swaps source and destination, sends the packet back."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.gateway: tuple[str, int] | None = None
        self.client: EndhostAddress | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and self.gateway is not None and self.client is not None:
            self.transport.sendto(scion_udp(FOREIGN, self.client, data[-8:]), self.gateway)


async def flood(target: tuple[str, int], count: int, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((FLOOD_SOURCE, 0))
        sock.setblocking(False)
        for n in range(count):
            with contextlib.suppress(BlockingIOError):
                sock.sendto(os.urandom(1300) if n % 4 == 0 else fake_initial(), target)
            if n % 200 == 0:
                ahead = started + seconds * n / count - loop.time()
                await asyncio.sleep(max(ahead, 0))
    return loop.time() - started


async def flood_process(target: tuple[str, int], count: int, seconds: float) -> float:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--flood-only",
        f"{target[0]}:{target[1]}",
        "--datagrams",
        str(count),
        "--seconds",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return float(out.decode().strip() or "nan")


async def scenario(  # noqa: PLR0915 - one scenario, read top to bottom
    datagrams: int, seconds: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    router = Router()
    transport, _ = await loop.create_datagram_endpoint(lambda: router, local_addr=("127.0.0.1", 0))
    out: dict[str, Any] = {"scenario": "flood", "datagrams": datagrams, "seconds": seconds}
    with tempfile.TemporaryDirectory() as tmp:
        sink = transport.get_extra_info("sockname")[:2]
        with run_gateway(Path(tmp) / "state", Path(tmp) / "gw.log", sink) as gw:
            router.gateway = gw.underlay
            pid = gw.proc.pid
            async with quic.connect(*gw.listen, fingerprint=gw.fingerprint) as conn:
                sender, receiver, control = await ClientBuilder(gw.token()).connect(conn)
                me = control.assigned_addresses[0]
                router.client = me
                # The tunnel's client sends to a foreign host; the router echoes it back to me.
                await asyncio.sleep(1)
                out["rss_kib_start"] = rss_kib(pid)
                # The flooder runs in a process of its own, so that it does not share this
                # event loop (and its socket buffers) with the tunnel being measured.
                flooding = asyncio.ensure_future(flood_process(gw.listen, datagrams, seconds))
                sent = received = 0
                setups_ok = setups_tried = 0
                peak = out["rss_kib_start"]
                next_setup = loop.time() + 1
                while not flooding.done():
                    sender.send(scion_udp(me, FOREIGN, b"%08d" % sent))
                    sent += 1
                    await asyncio.sleep(0.005)
                    while True:
                        try:
                            receiver_task = receiver.receive()
                            await asyncio.wait_for(receiver_task, 0.0001)
                            received += 1
                        except TimeoutError:
                            break
                    peak = max(peak, rss_kib(pid))
                    if loop.time() >= next_setup:
                        next_setup += 2
                        setups_tried += 1
                        try:
                            async with quic.connect(
                                *gw.listen, fingerprint=gw.fingerprint, timeout=5
                            ) as c2:
                                await ClientBuilder(gw.token(uuid.uuid4())).connect(c2)
                                setups_ok += 1
                        except Exception:
                            pass
                out["flood_seconds"] = round(await flooding, 2)
                await asyncio.sleep(0.5)
                while True:
                    try:
                        await asyncio.wait_for(receiver.receive(), 0.05)
                        received += 1
                    except TimeoutError:
                        break
                cpu_before = cpu_seconds(pid)
                await asyncio.sleep(5)
                out["cpu_pct_5s_after"] = round((cpu_seconds(pid) - cpu_before) / 5 * 100, 1)
                out["rss_kib_peak"] = peak
                out["rss_kib_5s_after"] = rss_kib(pid)
                out["tunnel_sent"] = sent
                out["tunnel_received"] = received
                out["tunnel_loss_pct"] = round(100 * (sent - received) / max(sent, 1), 2)
                out["setups_during_flood"] = f"{setups_ok}/{setups_tried}"
            url = f"http://{gw.metrics[0]}:{gw.metrics[1]}/metrics"
            with urllib.request.urlopen(url, timeout=5) as rsp:  # noqa: ASYNC210
                text = rsp.read().decode()
            out["metrics"] = {
                line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
                for line in text.splitlines()
                if line.startswith(
                    ("snaptun_gateway_quic_refused_total", "snaptun_gateway_handshake")
                )
            }
    transport.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datagrams", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flood-only", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.datagrams <= 2_000_000 or not 0.5 <= args.seconds <= 120:
        parser.error("--datagrams 1..2000000, --seconds 0.5..120")
    if args.flood_only:
        host, _, port = args.flood_only.rpartition(":")
        print(asyncio.run(flood((host, int(port)), args.datagrams, args.seconds)))
        return 0
    result = asyncio.run(asyncio.wait_for(scenario(args.datagrams, args.seconds), 300))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
