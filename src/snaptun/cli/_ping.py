"""``snaptun ping``: a one-command end-to-end check of a gateway, SCMP Echo through a tunnel.

It opens its own tunnel (as ``snaptun connect`` would: address, trust flags,
token), pings the gateway's own SCION address, which the gateway answers
itself, and prints a line per reply and ping's statistics. Exit code 0 if any
reply came, 1 if none did (or the tunnel could not be opened), 2 on a usage
or configuration error.

The target defaults to the first host of the assigned address's /24 (IPv4)
or /64 (IPv6) in its ISD-AS: the gateway's default ``gateway_addresses`` (the
first host of each pool) for pools of that size; ``--to`` names it otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import math
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from snaptun.aio import quic
from snaptun.aio.bridge import TokenSource, TokenSourceError, refusal
from snaptun.aio.client import ClientBuilder, ClientReceiver, ClientSender
from snaptun.cli._common import (
    add_handshake_flags,
    add_trust_flags,
    at_least,
    checked,
    parse_socket_address,
    run_coroutine,
    setup_logging,
)
from snaptun.core.addressing import EndhostAddress, IPAddress
from snaptun.errors import SendPacketError, SnaptunError
from snaptun.scion import (
    NextHeader,
    ScionDecodeError,
    ScmpEchoReply,
    decode,
    decode_scmp,
    echo_request,
    scmp_is_error,
)

__all__ = ["PingStats", "default_target", "register", "run_ping"]

MAX_DATA = 1200
"""Largest ``-s``: with the headers it stays within a tunnel's smallest datagram."""


def _target(text: str) -> EndhostAddress | IPAddress:
    """``IA,IP`` or a bare IP (in the tunnel's own ISD-AS)."""
    if "," in text:
        return EndhostAddress.parse(text)
    return ipaddress.ip_address(text)


def register(commands: Any) -> None:
    """Add the ``ping`` subcommand to the ``snaptun`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "ping",
        help="open a tunnel and ping the gateway's own SCION address (SCMP Echo)",
        description="Open a snaptun tunnel and send SCMP Echo Requests through it to the "
        "gateway's own SCION address, which the gateway answers itself: a one-command "
        "end-to-end check. Exit code 0 if any reply came, 1 if none, 2 on usage errors.",
    )
    parser.add_argument(
        "address", type=checked(parse_socket_address, "address"), metavar="ADDR", help="IP:PORT"
    )
    add_trust_flags(parser, "gateway")
    tokens = parser.add_mutually_exclusive_group(required=True)
    tokens.add_argument("--token", metavar="T", help="bearer token (SNAP JWT)")
    tokens.add_argument("--token-file", type=Path, metavar="F", help="file holding the token")
    parser.add_argument(
        "--to",
        type=checked(_target, "target"),
        metavar="IP|IA,IP",
        help="address to ping (default: the first host of the assigned address's /24 or "
        "/64, the gateway's default gateway_addresses)",
    )
    parser.add_argument(
        "--address",
        dest="desired",
        type=checked(EndhostAddress.parse, "end-host address"),
        metavar="IA,IP",
        help="tunnel address to ask for (default: any)",
    )
    parser.add_argument(
        "-c",
        dest="count",
        type=checked(at_least(int, 1), "count"),
        default=4,
        metavar="COUNT",
        help="requests to send (4)",
    )
    parser.add_argument(
        "-i",
        dest="interval",
        type=checked(at_least(float, 0.01), "interval"),
        default=1.0,
        metavar="SECS",
        help="seconds between requests (1; the gateway answers 10/s, bursts of 20, by default)",
    )
    parser.add_argument(
        "-W",
        dest="timeout",
        type=checked(at_least(float, 0.001), "timeout"),
        default=2.0,
        metavar="SECS",
        help="seconds to wait for each reply (2)",
    )
    parser.add_argument(
        "-s",
        dest="size",
        type=checked(_bounded_size, "size"),
        default=32,
        metavar="BYTES",
        help=f"data bytes per request (32, at most {MAX_DATA})",
    )
    add_handshake_flags(parser, "QUIC handshake limit (5)")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)"
    )
    parser.set_defaults(run=_run)


def _bounded_size(text: str) -> int:
    size = int(text)
    if not 0 <= size <= MAX_DATA:
        raise ValueError(f"must be 0..{MAX_DATA}")
    return size


def _run(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    return run_coroutine(run_ping(args))


def default_target(source: EndhostAddress) -> EndhostAddress:
    """The first host of ``source``'s /24 (IPv4) or /64 (IPv6), in its ISD-AS."""
    prefix = 24 if source.ip.version == 4 else 64
    network = ipaddress.ip_network(f"{source.ip}/{prefix}", strict=False)
    return EndhostAddress(source.isd_as, network.network_address + 1)


@dataclass
class PingStats:
    """Requests sent and round-trip times of the replies, as ping summarises them."""

    sent: int = 0
    rtts: list[float] = field(default_factory=list)

    @property
    def received(self) -> int:
        return len(self.rtts)

    def summary(self, target: EndhostAddress) -> list[str]:
        """ping's closing lines: counts and loss, then min/avg/max/mdev in milliseconds."""
        loss = 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0
        lines = [
            f"--- {target} ping statistics ---",
            f"{self.sent} packets transmitted, {self.received} received, {loss:.0f}% packet loss",
        ]
        if self.rtts:
            ms = [rtt * 1000 for rtt in self.rtts]
            avg = sum(ms) / len(ms)
            mdev = math.sqrt(max(sum(x * x for x in ms) / len(ms) - avg * avg, 0.0))
            lines.append(
                f"rtt min/avg/max/mdev = {min(ms):.3f}/{avg:.3f}/{max(ms):.3f}/{mdev:.3f} ms"
            )
        return lines


async def run_ping(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``snaptun ping`` with parsed arguments; returns the exit code."""
    stream = out if out is not None else sys.stdout
    source = (
        TokenSource(path=args.token_file)
        if args.token_file is not None
        else TokenSource(token=args.token)
    )
    try:
        token = source.read()
    except TokenSourceError as exc:
        print(f"snaptun ping: {exc}", file=sys.stderr)
        return 2
    host, port = args.address
    try:
        async with quic.connect(
            host,
            port,
            server_name=args.server_name,
            ca_file=args.ca,
            fingerprint=args.fingerprint,
            insecure=args.insecure,
            timeout=args.connect_timeout,
        ) as conn:
            desired = [args.desired] if args.desired is not None else []
            builder = ClientBuilder(token).with_desired_addresses(desired)
            sender, receiver, control = await builder.connect(conn)
            source_address = control.assigned_addresses[0]
            return await _Pinger(args, stream, sender, receiver, source_address).run()
    except (SnaptunError, OSError, TimeoutError) as exc:
        why = refusal(exc) or exc  # a refusal with the gateway's cause, as connect says it
        print(f"snaptun ping: cannot open a tunnel to {host}:{port}: {why}", file=sys.stderr)
        return 1


class _Pinger:
    def __init__(
        self,
        args: argparse.Namespace,
        out: TextIO,
        sender: ClientSender,
        receiver: ClientReceiver,
        source: EndhostAddress,
    ) -> None:
        self.args = args
        self.out = out
        self.sender = sender
        self.receiver = receiver
        self.source = source
        to = args.to
        if to is None:
            self.target = default_target(self.source)
        elif isinstance(to, EndhostAddress):
            self.target = to
        else:
            self.target = EndhostAddress(self.source.isd_as, to)
        self.identifier = secrets.randbelow(1 << 16)
        self.data = bytes(i & 0xFF for i in range(args.size))
        self.stats = PingStats()
        self.pending: dict[int, float] = {}
        self.done = asyncio.Event()
        self.stop = asyncio.Event()

    def print(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.print(
            f"PING {self.target} from {self.source} through the tunnel: {len(self.data)} data bytes"
        )
        receiving = asyncio.ensure_future(self._receive())
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, self.stop.set)
        try:
            await self._send_all()
            if self.pending and not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled(), self.args.timeout)
        finally:
            receiving.cancel()
            with contextlib.suppress(BaseException):
                await receiving
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
        for line in self.stats.summary(self.target):
            self.print(line)
        return 0 if self.stats.received else 1

    async def _send_all(self) -> None:
        for seq in range(self.args.count):
            if self.stop.is_set():
                return
            sequence = seq & 0xFFFF
            packet = echo_request(self.source, self.target, self.identifier, sequence, self.data)
            self.pending[sequence] = time.perf_counter()  # uvloop's clock ticks in ms
            self.stats.sent += 1
            try:
                self.sender.send(packet)
            except SendPacketError as exc:
                self.print(f"scmp_seq={sequence}: not sent: {exc}")
            if seq + 1 < self.args.count:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.args.interval)

    async def _settled(self) -> None:
        self.done.clear()
        while self.pending:
            await self.done.wait()
            self.done.clear()

    async def _receive(self) -> None:
        while True:
            data = await self.receiver.receive()
            now = time.perf_counter()
            try:
                packet = decode(data)
                if packet.next_header != NextHeader.SCMP:
                    continue
                message = decode_scmp(packet.payload, packet.address)
            except ScionDecodeError:
                continue
            if isinstance(message, ScmpEchoReply):
                self._reply(message, packet.source, len(packet.payload), now)
            elif scmp_is_error(message):
                self.print(f"From {packet.source}: {type(message).__name__.removeprefix('Scmp')}")

    def _reply(
        self, message: ScmpEchoReply, source: EndhostAddress | None, size: int, now: float
    ) -> None:
        if message.identifier != self.identifier or message.data != self.data:
            return
        sent = self.pending.pop(message.sequence, None)
        if sent is None:
            return
        rtt = now - sent
        self.done.set()
        if rtt > self.args.timeout:
            return  # too late: counted as lost, as ping does
        self.stats.rtts.append(rtt)
        self.print(
            f"{size} bytes from {source}: scmp_seq={message.sequence} time={rtt * 1000:.3f} ms"
        )
