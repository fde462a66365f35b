"""``snaptun serve``: run the SNAP tunnel gateway.

Configuration: TOML file < ``SNAPTUN_*`` environment < flags; ``--print-config``
shows the effective result. On start it prints where its state lives and the
certificate's fingerprint (stderr), then ``listening IP:PORT`` (stdout).
SIGTERM/SIGINT: graceful shutdown, exit 0; a second signal exits at once.
Exit 2 with one line: a bad setting, a state directory in use by another
gateway, or a damaged state file (named, with what to do).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from prometheus_client import disable_created_metrics

from snaptun.cli._common import format_socket_address, run_coroutine
from snaptun.gateway.config import ConfigError, add_serve_arguments, render_toml, resolve_config
from snaptun.gateway.events import EventLog
from snaptun.gateway.service import Gateway
from snaptun.gateway.state_dir import StateError

__all__ = ["register"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


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
    logging.basicConfig(
        level=_LEVELS.get(config.log_level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("quic").setLevel(logging.ERROR)  # qh3 warns on every normal close
    disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only add noise to scrapes
    return run_coroutine(_serve(Gateway(config, events=EventLog(sys.stderr))))


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
    except StateError as exc:  # in use, or a damaged file: what is wrong and what to do
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
    await stop.wait()
    await gateway.shutdown()
    return 0
