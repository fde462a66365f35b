"""``snaptun echo-server``: a snaptun server echoing every datagram, like ``snaptun-ref server``."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from snaptun.aio.echo import EchoService, TunnelOutcome
from snaptun.aio.quic import QuicSettings, fingerprint_of, listen
from snaptun.aio.server import Server
from snaptun.cli._common import format_socket_address
from snaptun.core.addressing import IPNetwork, IsdAs
from snaptun.core.admission import AdmissionSettings
from snaptun.core.allocator import AddressManager
from snaptun.core.registry import TunnelRegistry
from snaptun.core.tokens import (
    JwtTokenValidator,
    SnapTokenClaims,
    StaticTokenValidator,
    TokenValidator,
)
from snaptun.keyfiles import load_public_key
from snaptun.tls import write_self_signed

__all__ = ["DEFAULT_POOLS", "DEFAULT_POOL_NETWORKS", "ServerOptions", "run_echo_server"]

log = logging.getLogger("snaptun.cli.server")

DEFAULT_TOKEN = "ANAPAYA"  # noqa: S105 - the reference's public test token
DEFAULT_ISD_AS = IsdAs(1, 0xFF00_0000_0110)
DEFAULT_POOLS = ("10.0.0.0/24", "fd00::/64")
DEFAULT_POOL_NETWORKS: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(p) for p in DEFAULT_POOLS)


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """What ``snaptun echo-server`` was asked to do."""

    host: str
    port: int
    cert: Path | None = None
    key: Path | None = None
    token_validity: float = 60.0
    accept_token: str = DEFAULT_TOKEN
    isd_as: IsdAs = DEFAULT_ISD_AS
    token_keys: tuple[Path, ...] = ()
    pools: tuple[IPNetwork, ...] = DEFAULT_POOL_NETWORKS
    echo: bool = True
    max_lifetime: float | None = None
    mtu: int = 1452
    verbose: int = 0
    retry: Literal["auto", "always", "never"] = "auto"


@contextlib.contextmanager
def _certificate(options: ServerOptions, err: TextIO) -> Iterator[tuple[Path, Path]]:
    """The configured certificate and key, or a fresh self-signed pair in a temp dir."""
    if options.cert is not None and options.key is not None:
        yield options.cert, options.key
        return
    with tempfile.TemporaryDirectory(prefix="snaptun-cert-") as folder:
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        write_self_signed(cert, key)
        err.write(
            f"[server] generated self-signed certificate {cert} "
            f"(sha256 fingerprint {fingerprint_of(cert.read_bytes())})\n"
        )
        err.flush()
        yield cert, key


def _validator(options: ServerOptions) -> TokenValidator[SnapTokenClaims]:
    if options.token_keys:
        return JwtTokenValidator([load_public_key(path) for path in options.token_keys])
    return StaticTokenValidator(options.accept_token, options.token_validity)


def _install_stop_signals(stop: asyncio.Event) -> Callable[[], None]:
    """Set ``stop`` on SIGINT/SIGTERM (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)

    def undo() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return undo


def _nothing() -> None:
    pass


def _log_outcome(outcome: TunnelOutcome) -> None:
    # Refusals and failures are logged by the echo service itself.
    if outcome.accepted and outcome.error is None:
        log.info("tunnel from %s closed by the client", outcome.remote)


async def run_echo_server(
    options: ServerOptions,
    *,
    stop: asyncio.Event | None = None,
    ready: Callable[[tuple[str, int]], None] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Serve until ``stop`` is set, SIGINT/SIGTERM arrives or ``max_lifetime`` passes; returns 0.

    Signal handlers are installed only when no ``stop`` event is given (and
    only in the main thread).

    Prints ``listening IP:PORT`` on ``out`` once the endpoint is bound and
    calls ``ready`` with the bound (host, port).
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    handle_signals = stop is None
    stop = stop if stop is not None else asyncio.Event()
    validator = _validator(options)
    allocator = AddressManager(options.isd_as, options.pools, rng=random.SystemRandom())
    settings = QuicSettings(udp_payload_size=options.mtu)
    with _certificate(options, err) as (cert, key):
        endpoint = await listen(
            options.host,
            options.port,
            cert_file=cert,
            key_file=key,
            settings=settings,
            admission=AdmissionSettings(retry=options.retry),
        )
        undo_signals = _install_stop_signals(stop) if handle_signals else _nothing
        # Every client shares the static token, so one identity: let them share (as the
        # reference does) instead of replacing each other.
        server = Server(allocator, validator, registry=TunnelRegistry(exclusive=False))
        service = EchoService(endpoint, server, echo=options.echo, on_outcome=_log_outcome)
        task = asyncio.ensure_future(service.run())
        try:
            host, port = endpoint.local_address
            out.write(f"listening {format_socket_address(host, port)}\n")
            out.flush()
            log.info(
                "token %s valid %s s; ISD-AS %s; pools %s; mtu %d",
                "JWT" if options.token_keys else repr(options.accept_token),
                options.token_validity,
                options.isd_as,
                ", ".join(str(p) for p in options.pools),
                options.mtu,
            )
            if ready is not None:
                ready((host, port))
            waiter = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait(
                {waiter, task}, timeout=options.max_lifetime, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            if task in done:
                task.result()  # the service died: let its error out
        finally:
            undo_signals()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            endpoint.close()
    return 0
