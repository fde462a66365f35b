"""``snaptun serve``: run the SNAP tunnel gateway.

Configuration: TOML file < ``SNAPTUN_*`` environment < flags; ``--print-config``
shows the effective result. On start it prints where its state lives and the
certificate's fingerprint (stderr), then ``listening IP:PORT`` (stdout), then
one shell line that connects a client (stderr). SIGHUP re-reads the token key
files (a bad file keeps the old keys). SIGTERM/SIGINT: graceful shutdown, exit
0; a second signal exits at once.
Exit 2 with one line: a bad setting, a state directory in use by another
gateway, a damaged state file (named, with what to do), or a socket that
cannot be bound (``--underlay-bind 127.0.0.1:30041: address already in use``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import signal
import sys
from typing import Any

from prometheus_client import disable_created_metrics

from snaptun.cli._common import format_socket_address, run_coroutine
from snaptun.gateway.bind import BindError
from snaptun.gateway.config import ConfigError, add_serve_arguments, render_toml, resolve_config
from snaptun.gateway.events import EventLog
from snaptun.gateway.service import Gateway, StartReport, connect_address
from snaptun.gateway.state_dir import StateError

__all__ = ["register"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def register(commands: Any) -> None:
    """Add ``serve`` to the ``snaptun`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the SNAP tunnel gateway",
        description="Serve SNAP tunnels and forward their SCION packets to and from the "
        "underlay. Runs on embedded defaults; see docs/GATEWAY.md.",
    )
    add_serve_arguments(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        config = resolve_config(args, os.environ)
    except ConfigError as exc:
        print(f"snaptun serve: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(render_toml(config))
        return 0
    level = _LEVELS[config.log_level]  # GatewayConfig admits only these names
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("quic").setLevel(logging.ERROR)  # qh3 warns on every normal close
    disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only add noise to scrapes
    # Tunnel events are INFO lines: --log-level warning or error silences them.
    return run_coroutine(_serve(Gateway(config, events=EventLog(sys.stderr, level=level))))


def client_command(report: StartReport) -> str:
    """One shell line that connects a client on this host to the gateway just started.

    With the state directory's dev key it first issues a token into
    ``snaptun.token``; with operator keys the token file is the operator's.
    """
    address = format_socket_address(*connect_address(report.listen))
    connect = f"snaptun connect {address} --fingerprint {report.fingerprint} --token-file"
    if report.dev_key:
        state = shlex.quote(str(report.state.root))
        return f"snaptun token issue --state-dir {state} > snaptun.token && {connect} snaptun.token"
    return f"{connect} TOKEN_FILE"


async def _serve(gateway: Gateway) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            os._exit(1)  # second signal: leave at once
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        report = await gateway.start()
    except (StateError, BindError) as exc:  # what is wrong (which file, which setting)
        print(f"snaptun serve: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"snaptun serve: cannot start: {exc}", file=sys.stderr)
        return 1
    for path in report.created:
        print(f"snaptun serve: generated {path}", file=sys.stderr)
    print(f"snaptun serve: state directory {report.state.root}", file=sys.stderr)
    print(
        f"snaptun serve: certificate {report.cert} sha256 fingerprint {report.fingerprint}",
        file=sys.stderr,
    )
    print(f"snaptun serve: token keys {', '.join(map(str, report.token_keys))}", file=sys.stderr)
    print(f"snaptun serve: underlay {format_socket_address(*report.underlay)}", file=sys.stderr)
    if report.metrics is not None:
        print(
            f"snaptun serve: metrics http://{format_socket_address(*report.metrics)}/metrics",
            file=sys.stderr,
        )
    if report.admin is not None:
        print(f"snaptun serve: status page {report.admin}/ (snaptun status)", file=sys.stderr)
    print(f"listening {format_socket_address(*report.listen)}", flush=True)
    # Only now: before start() has loaded the keys there is nothing to reload.
    loop.add_signal_handler(signal.SIGHUP, gateway.reload_token_keys, "SIGHUP")
    print(f"snaptun serve: client: {client_command(report)}", file=sys.stderr, flush=True)
    await stop.wait()
    await gateway.shutdown()
    return 0
