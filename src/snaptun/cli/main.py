"""The ``snaptun`` command: ``echo-server`` and ``echo-client`` (snaptun-ref's server/client).

A thin ``main(argv)`` over the public API: argument parsing here, the work in
:mod:`snaptun.cli._server` and :mod:`snaptun.cli._client`.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from snaptun.cli import _connect, _ping, _serve, _status, _token
from snaptun.cli._client import SEQ_BYTES, ClientOptions, run_echo_client
from snaptun.cli._common import (
    add_handshake_flags,
    add_trust_flags,
    at_least,
    checked,
    parse_socket_address,
    run_coroutine,
    setup_logging,
)
from snaptun.cli._server import (
    DEFAULT_ISD_AS,
    DEFAULT_POOL_NETWORKS,
    DEFAULT_POOLS,
    ServerOptions,
    run_echo_server,
    token_keys_of,
)
from snaptun.core.addressing import EndhostAddress, IPNetwork, IsdAs

__all__ = ["build_parser", "client_options", "main", "server_options"]


def _pool(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=True)


_ADDR = checked(parse_socket_address, "address")
_SECONDS = checked(at_least(float, 0.0), "seconds")
_POSITIVE_SECONDS = checked(at_least(float, 0.001), "seconds")
_COUNT = checked(at_least(int, 0), "count")
_MTU = checked(at_least(int, 1200), "mtu")


def _add_quic_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mtu",
        type=_MTU,
        default=1452,
        metavar="BYTES",
        help="UDP payload size of QUIC packets (default 1452: datagrams up to ~1414 bytes)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``snaptun``."""
    parser = argparse.ArgumentParser(
        prog="snaptun",
        description="SNAP tunnel (snaptun 0.1.0): gateway, client bridge, tokens, diagnostics.",
    )
    parser.add_argument("--version", action="version", version=f"snaptun {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server = commands.add_parser(
        "echo-server",
        help="snaptun server that echoes every datagram",
        description="Serve snaptun tunnels and echo every datagram back to its sender. "
        "Prints 'listening IP:PORT' on stdout when ready; stops on SIGINT/SIGTERM.",
    )
    server.add_argument("--listen", type=_ADDR, required=True, metavar="ADDR", help="IP:PORT")
    server.add_argument("--cert", type=Path, metavar="PEM", help="certificate chain (PEM)")
    server.add_argument("--key", type=Path, metavar="PEM", help="private key (PEM)")
    server.add_argument(
        "--token-validity",
        type=_SECONDS,
        default=60.0,
        metavar="SECS",
        help="expiry of the static token: now + SECS (default 60)",
    )
    server.add_argument(
        "--accept-token",
        default="ANAPAYA",
        metavar="STR",
        help="the only static token accepted (default ANAPAYA)",
    )
    server.add_argument(
        "--isd-as",
        type=checked(IsdAs.parse, "ISD-AS"),
        default=DEFAULT_ISD_AS,
        metavar="IA",
        help="ISD-AS of assigned addresses (default 1-ff00:0:110)",
    )
    server.add_argument(
        "--token-key",
        type=Path,
        action="append",
        default=[],
        metavar="PUBLIC_PEM",
        help="Ed25519 public key: validate EdDSA JWTs instead of the static token (repeatable)",
    )
    server.add_argument(
        "--token-jwks",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="JWK Set of Ed25519 keys selected by a token's kid: validate EdDSA JWTs; re-read "
        "on SIGHUP and on change (repeatable; combinable with --token-key)",
    )
    server.add_argument(
        "--token-issuer", metavar="ISS", help="iss a JWT must carry (default: not checked)"
    )
    server.add_argument(
        "--token-audience",
        metavar="AUD",
        help="aud a JWT must name (default: a token's aud, if any, must name 'snap')",
    )
    server.add_argument(
        "--pool",
        type=checked(_pool, "prefix"),
        action="append",
        metavar="PREFIX",
        help=f"address pool (repeatable; default {' and '.join(DEFAULT_POOLS)})",
    )
    server.add_argument("--no-echo", action="store_true", help="do not echo datagrams")
    server.add_argument(
        "--retry",
        choices=("auto", "always", "never"),
        default="auto",
        help="QUIC Retry (address validation): auto = once half the handshake bound is in use",
    )
    server.add_argument(
        "--max-lifetime",
        type=_SECONDS,
        metavar="SECS",
        help="exit after this long (default: run until SIGINT/SIGTERM)",
    )
    _add_quic_flags(server)

    client = commands.add_parser(
        "echo-client",
        help="set up a tunnel and check datagram echoes",
        description="Set up a tunnel (renew_session, assign_addresses), send datagrams one at "
        "a time and check every echo; optionally hold and renew. One JSON object per line.",
    )
    client.add_argument("--connect", type=_ADDR, required=True, metavar="ADDR", help="IP:PORT")
    add_trust_flags(client, "server")
    client.add_argument("--token", default="ANAPAYA", metavar="T", help="bearer token")
    client.add_argument(
        "--address",
        type=checked(EndhostAddress.parse, "end-host address"),
        action="append",
        default=[],
        metavar="IA,IP",
        help="address to ask for, e.g. 1-ff00:0:110,192.0.2.1 (repeatable)",
    )
    client.add_argument("--count", type=_COUNT, default=10, metavar="N", help="datagrams (10)")
    client.add_argument(
        "--size",
        type=checked(at_least(int, SEQ_BYTES), "size"),
        default=100,
        metavar="B",
        help=f"datagram size, at least {SEQ_BYTES} (100)",
    )
    client.add_argument(
        "--echo-timeout-ms",
        type=checked(at_least(int, 1), "timeout"),
        default=1000,
        metavar="MS",
        help="wait this long for each echo (1000)",
    )
    client.add_argument(
        "--retries", type=_COUNT, default=2, metavar="N", help="resends per datagram (2)"
    )
    client.add_argument(
        "--hold", type=_SECONDS, default=0.0, metavar="SECS", help="keep the tunnel open"
    )
    client.add_argument(
        "--renew-every",
        type=_POSITIVE_SECONDS,
        metavar="SECS",
        help="renew the session this often during --hold",
    )
    client.add_argument("--renew-token", metavar="T", help="token for renewals (default --token)")
    client.add_argument(
        "--auto-renew",
        action="store_true",
        help="let the client library renew the session by itself during --hold",
    )
    client.add_argument(
        "--renew-threshold",
        type=_SECONDS,
        default=300.0,
        metavar="SECS",
        help="--auto-renew: renew soon once less than this remains (300)",
    )
    client.add_argument(
        "--expect-close",
        type=_COUNT,
        metavar="CODE",
        help="succeed only if the server closes with this application code",
    )
    add_handshake_flags(client, "QUIC handshake limit (5)")
    _add_quic_flags(client)
    for module in (_serve, _token, _connect, _ping, _status):
        module.register(commands)
    _own_usage(parser)
    return parser


def _version() -> str:
    try:
        return metadata.version("snaptun")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare source tree
        return "unknown (not installed)"


def _own_usage(parser: argparse.ArgumentParser) -> None:
    """Let every (sub)command remember its parser, to report unknown flags with its usage.

    argparse hands flags a subcommand does not know back to the top-level
    parser, whose usage says nothing about that subcommand's flags.
    """
    parser.set_defaults(usage_parser=parser)
    for action in parser._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _own_usage(sub)


def server_options(args: argparse.Namespace) -> ServerOptions:
    """Typed options of ``echo-server`` from parsed arguments."""
    listen_host, listen_port = args.listen
    pools = tuple(args.pool) if args.pool else DEFAULT_POOL_NETWORKS
    return ServerOptions(
        host=listen_host,
        port=listen_port,
        cert=args.cert,
        key=args.key,
        token_validity=args.token_validity,
        accept_token=args.accept_token,
        isd_as=args.isd_as,
        token_keys=tuple(args.token_key),
        token_jwks=tuple(args.token_jwks),
        token_issuer=args.token_issuer,
        token_audience=args.token_audience,
        pools=pools,
        echo=not args.no_echo,
        max_lifetime=args.max_lifetime,
        mtu=args.mtu,
        verbose=args.verbose,
        retry=args.retry,
    )


def client_options(args: argparse.Namespace) -> ClientOptions:
    """Typed options of ``echo-client`` from parsed arguments."""
    host, port = args.connect
    return ClientOptions(
        host=host,
        port=port,
        ca=args.ca,
        fingerprint=args.fingerprint,
        insecure=args.insecure,
        token=args.token,
        addresses=tuple(args.address),
        count=args.count,
        size=args.size,
        echo_timeout=args.echo_timeout_ms / 1000,
        retries=args.retries,
        hold=args.hold,
        renew_every=args.renew_every,
        renew_token=args.renew_token,
        auto_renew=args.auto_renew,
        renew_threshold=args.renew_threshold,
        expect_close=args.expect_close,
        mtu=args.mtu,
        server_name=args.server_name,
        connect_timeout=args.connect_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snaptun`` console script; returns the exit code.

    A closed stdout (``snaptun token issue | head -c1``) ends the command
    quietly with exit code 1, as there is no one left to read its output.
    """
    try:
        code = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would print a traceback, and again at exit when it flushes stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        usage: argparse.ArgumentParser = getattr(args, "usage_parser", parser)
        usage.error(f"unrecognized arguments: {' '.join(unknown)}")
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if run is not None:  # subcommands that register themselves (serve, token, ..., status)
        return run(args)
    setup_logging(args.verbose)
    if args.command == "echo-server":
        if (args.cert is None) != (args.key is None):
            parser.error("echo-server: give both --cert and --key, or neither")
        options = server_options(args)
        try:
            token_keys_of(options)  # a bad key file is a usage error, named, before any socket
        except ValueError as exc:
            args.usage_parser.error(str(exc))
        return run_coroutine(run_echo_server(options))
    if args.auto_renew and args.renew_every is not None:
        parser.error("echo-client: --auto-renew and --renew-every exclude each other")
    return run_coroutine(run_echo_client(client_options(args)))


if __name__ == "__main__":
    sys.exit(main())
