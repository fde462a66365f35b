"""``snaptun connect``: bridge a local UDP socket into a snaptun tunnel.

A thin layer over :class:`snaptun.aio.bridge.TunnelBridge`. Several gateway
addresses make a fleet: the bridge tries them in rendezvous order of the
token's identity and fails over down that order (:mod:`snaptun.aio.fleet`).
One JSON object per line on stdout: ``connected`` after every (re)connect
(with the ``gateway`` it went through), ``closed`` with the
close code and reason each time a tunnel ends, ``error`` when it gives up, and
a final ``stopped`` line with the counters. Exit code 0 after SIGINT/SIGTERM,
1 when the gateway refuses the tunnel for good, replaces it with a newer
tunnel of the same identity (final: no reconnect), the reconnect attempts
are exhausted, or stdout is a pipe nobody reads any more.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TextIO

from snaptun.aio import quic
from snaptun.aio.bridge import (
    BridgeError,
    TokenSource,
    TokenSourceError,
    TunnelBridge,
    TunnelConnected,
    builder_factory,
)
from snaptun.aio.fleet import Gateway, GatewayFleet
from snaptun.cli._common import (
    add_handshake_flags,
    add_trust_flags,
    at_least,
    checked,
    emit,
    format_socket_address,
    parse_socket_address,
    run_coroutine,
    setup_logging,
)
from snaptun.core.addressing import EndhostAddress
from snaptun.core.rendezvous import rendezvous_order
from snaptun.errors import ConnectionLost

__all__ = ["register", "run_connect"]


_ADDR = checked(parse_socket_address, "address")


def register(commands: Any) -> None:
    """Add the ``connect`` subcommand to the ``snaptun`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "connect",
        help="open a tunnel and bridge a local UDP socket into it",
        description="Open a snaptun tunnel, keep it renewed and reconnected, and bridge "
        "packets: every UDP datagram received on --local goes into the tunnel as one SCION "
        "packet; every packet from the tunnel goes to --forward-to, or to the last local "
        "sender. One JSON object per line on stdout.",
    )
    parser.add_argument(
        "gateways",
        type=_ADDR,
        nargs="+",
        metavar="GW",
        help="gateway IP:PORT; several make a fleet: the token's identity picks one by "
        "rendezvous hashing, the others are tried in that order when it is unreachable",
    )
    add_trust_flags(parser, "gateway", per_peer=True)
    tokens = parser.add_mutually_exclusive_group(required=True)
    tokens.add_argument("--token", metavar="T", help="bearer token (SNAP JWT)")
    tokens.add_argument(
        "--token-file",
        type=Path,
        metavar="F",
        help="file holding the token; re-read at every renewal and reconnect",
    )
    parser.add_argument(
        "--address",
        dest="desired",
        type=checked(EndhostAddress.parse, "end-host address"),
        metavar="IA,IP",
        help="address to ask for, e.g. 1-ff00:0:110,10.0.0.7 (default: any)",
    )
    parser.add_argument(
        "--local",
        type=_ADDR,
        default=("127.0.0.1", 0),
        metavar="ADDR",
        help="local UDP socket to bridge (default 127.0.0.1:0)",
    )
    parser.add_argument(
        "--forward-to",
        type=_ADDR,
        metavar="ADDR",
        help="send tunnel packets here (default: the last local sender)",
    )
    parser.add_argument(
        "--mtu",
        type=checked(at_least(int, 1200), "mtu"),
        default=1452,
        metavar="BYTES",
        help="UDP payload size of QUIC packets (default 1452: datagrams up to ~1414 bytes)",
    )
    add_handshake_flags(parser, "QUIC handshake limit of each (re)connect attempt (5)")
    parser.add_argument(
        "--renew-threshold",
        type=checked(at_least(float, 0.0), "seconds"),
        default=300.0,
        metavar="SECS",
        help="renew soon once less than this remains of the session (300)",
    )
    parser.add_argument(
        "--max-reconnects",
        type=checked(at_least(int, 0), "count"),
        metavar="N",
        help="give up after N failed reconnect attempts in a row, each a round over all "
        "gateways (default: never)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)"
    )
    parser.set_defaults(run=_run, usage_parser=parser)


def _run(args: argparse.Namespace) -> int:
    try:  # the checks _fleet makes, as usage errors
        _fingerprints(args)
        rendezvous_order("", [format_socket_address(*a) for a in args.gateways])
    except ValueError as exc:
        args.usage_parser.error(str(exc))
    setup_logging(args.verbose)
    return run_coroutine(run_connect(args))


def _fingerprints(args: argparse.Namespace) -> Sequence[str | None]:
    """The fingerprint of each gateway: one given for all, or one per gateway."""
    given: list[str] | None = args.fingerprint
    count = len(args.gateways)
    if given is None:
        return [None] * count
    if len(given) == 1:
        return given * count
    if len(given) != count:
        raise ValueError(
            f"give one --fingerprint for all gateways or one per gateway ({count}), "
            f"not {len(given)}"
        )
    return given


def _fleet(
    args: argparse.Namespace, source: TokenSource, settings: quic.QuicSettings
) -> GatewayFleet:
    """The gateways of the command line, each with its fingerprint; ValueError if ill-formed."""
    gateways = []
    for (host, port), digest in zip(args.gateways, _fingerprints(args), strict=True):

        def connect(
            host: str = host, port: int = port, digest: str | None = digest
        ) -> AbstractAsyncContextManager[quic.QuicConnection]:
            manager: AbstractAsyncContextManager[quic.QuicConnection] = quic.connect(
                host,
                port,
                server_name=args.server_name,
                ca_file=args.ca,
                fingerprint=digest,
                insecure=args.insecure,
                settings=settings,
                timeout=args.connect_timeout,
            )
            return manager

        gateways.append(Gateway(format_socket_address(host, port), connect))
    return GatewayFleet(gateways, source.identity)


def _error_record(exc: BaseException) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event": "error",
        "error": str(exc) or type(exc).__name__,
        "http_status": None,
        "close_code": None,
        "close_reason": None,
    }
    if isinstance(exc, BridgeError):
        record["http_status"] = exc.http_status
        if exc.close is not None:
            record["close_code"] = exc.close.code
            record["close_reason"] = exc.close.reason
    return record


async def _resolve(host: str, port: int, family: socket.AddressFamily) -> tuple[str, int]:
    """``host`` as an address of the local socket's family (hostnames resolved once)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, family=family, type=socket.SOCK_DGRAM
    )
    if not infos:
        raise OSError(f"{host} has no address of the local socket's family")
    sockaddr = infos[0][4]
    return str(sockaddr[0]), int(sockaddr[1])


async def run_connect(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``snaptun connect`` with parsed arguments; returns the exit code."""
    stream = out if out is not None else sys.stdout
    source = (
        TokenSource(path=args.token_file)
        if args.token_file is not None
        else TokenSource(token=args.token)
    )
    settings = quic.QuicSettings(udp_payload_size=args.mtu)

    reader_gone = False

    def say(record: dict[str, Any]) -> None:
        nonlocal reader_gone
        try:
            emit(record, stream)
        except BrokenPipeError:
            # Nobody reads our output any more (`snaptun connect ... | head -1`): stop,
            # as the writer of a pipeline does, rather than take it for a tunnel failure.
            reader_gone = True
            bridge.stop()

    def connected(info: TunnelConnected) -> None:
        say(info.as_record())

    def closed(lost: ConnectionLost) -> None:
        say(
            {
                "event": "closed",
                "close_code": lost.code,
                "close_reason": lost.reason,
                "by_peer": lost.by_peer,
            }
        )

    try:
        fleet = _fleet(args, source, settings)
    except ValueError as exc:
        emit(_error_record(exc), stream)
        return 1
    bridge = TunnelBridge(
        fleet,
        builder_factory(source, renew_threshold=args.renew_threshold),
        args.local,
        desired=[args.desired] if args.desired is not None else [],
        on_connected=connected,
        on_closed=closed,
        max_reconnects=args.max_reconnects,
    )
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, bridge.stop)
    code = 0
    try:
        source.read()  # a missing token file is an error at once, not a retry
        local_host, _ = await bridge.open()
        if args.forward_to is not None:
            family = socket.AF_INET6 if ":" in local_host else socket.AF_INET
            forward_host, forward_port = args.forward_to
            bridge.forward_to = await _resolve(forward_host, forward_port, family)
        await bridge.run()
    except (BridgeError, TokenSourceError, OSError) as exc:
        say(_error_record(exc))
        code = 1
    finally:
        bridge.close()
        for sig in signals:
            loop.remove_signal_handler(sig)
    if reader_gone:
        return 1
    say({"event": "stopped", "exit_code": code, **bridge.counters.as_dict()})
    return 1 if reader_gone else code
