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
    ClaimsPolicy,
    SnapTokenClaims,
    StaticTokenValidator,
    TokenValidator,
)
from snaptun.gateway.token_keys import POLL_INTERVAL, TokenKeys
from snaptun.tls import write_self_signed

__all__ = [
    "DEFAULT_POOLS",
    "DEFAULT_POOL_NETWORKS",
    "ServerOptions",
    "run_echo_server",
    "token_keys_of",
]

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
    token_keys: tuple[Path, ...] = ()  # Ed25519 public PEMs (no kid)
    token_jwks: tuple[Path, ...] = ()  # JWK Sets (keys by kid), re-read on SIGHUP or change
    token_issuer: str | None = None  # iss a JWT must carry; None: not checked
    token_audience: str | None = None  # aud a JWT must name; None: its aud, if any, names "snap"
    token_poll: float = POLL_INTERVAL  # seconds between checks of the key files for a change
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


def token_keys_of(options: ServerOptions) -> TokenKeys | None:
    """The JWT keys of ``--token-key``/``--token-jwks``, or None for the static token.

    ValueError naming the file that cannot be read or parsed.
    """
    if not (options.token_keys or options.token_jwks):
        return None
    policy = ClaimsPolicy(options.token_issuer, options.token_audience)
    return TokenKeys.open(options.token_keys, options.token_jwks, policy)


def _validator(keys: TokenKeys | None, options: ServerOptions) -> TokenValidator[SnapTokenClaims]:
    if keys is not None:
        return keys.validator
    return StaticTokenValidator(options.accept_token, options.token_validity)


async def _watch_keys(keys: TokenKeys, period: float) -> None:
    """Reload the key files when one changes (a bad file keeps the old keys, logged once)."""
    while True:
        await asyncio.sleep(period)
        keys.poll()


def _install_reload_signal(keys: TokenKeys | None) -> Callable[[], None]:
    """Reload the token keys on SIGHUP (main thread only); returns the undo."""
    if keys is None or threading.current_thread() is not threading.main_thread():
        return _nothing
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, keys.reload, "SIGHUP")
    except (NotImplementedError, RuntimeError):  # pragma: no cover - no signals here
        return _nothing

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return undo


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


def _describe(keys: TokenKeys) -> str:
    key_set = keys.validator.key_set
    return f"JWT ({len(key_set)} keys, kids: {', '.join(key_set.kids) or 'none'})"


async def run_echo_server(
    options: ServerOptions,
    *,
    stop: asyncio.Event | None = None,
    ready: Callable[[tuple[str, int]], None] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Serve until ``stop`` is set, SIGINT/SIGTERM arrives or ``max_lifetime`` passes; returns 0.

    Signal handlers (and SIGHUP, which re-reads the token key files) are
    installed only when no ``stop`` event is given (and only in the main
    thread). Changed key files are picked up every ``token_poll`` seconds.
    ValueError naming the key file that cannot be read or parsed.

    Prints ``listening IP:PORT`` on ``out`` once the endpoint is bound and
    calls ``ready`` with the bound (host, port).
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    handle_signals = stop is None
    stop = stop if stop is not None else asyncio.Event()
    keys = token_keys_of(options)
    validator = _validator(keys, options)
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
        undo_reload = _install_reload_signal(keys) if handle_signals else _nothing
        watcher = asyncio.ensure_future(
            _watch_keys(keys, options.token_poll) if keys is not None else stop.wait()
        )
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
                _describe(keys) if keys is not None else repr(options.accept_token),
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
            undo_reload()
            for job in (watcher, task):
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
            endpoint.close()
    return 0
