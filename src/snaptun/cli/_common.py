"""Helpers shared by the ``snaptun`` subcommands: socket addresses, JSON lines, event loop."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO, TypeVar

from snaptun.netaddr import format_socket_address, parse_socket_address

__all__ = [
    "add_trust_flags",
    "at_least",
    "checked",
    "emit",
    "fingerprint",
    "format_socket_address",
    "parse_socket_address",
    "run_coroutine",
    "setup_logging",
]


def emit(record: dict[str, Any], out: TextIO | None = None) -> None:
    """Write one compact JSON object as a line and flush."""
    stream = out if out is not None else sys.stdout
    stream.write(json.dumps(record, separators=(",", ":")) + "\n")
    stream.flush()


def setup_logging(verbose: int) -> None:
    """Diagnostics on stderr: warnings by default, info with -v, debug with -vv."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if verbose < 2:
        # qh3 logs every ordinary peer close as a warning.
        logging.getLogger("quic").setLevel(logging.ERROR)


def run_coroutine(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on uvloop when it is installed, else on the default asyncio loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


_T = TypeVar("_T")


def checked(convert: Callable[[str], _T], what: str) -> Callable[[str], _T]:
    """An argparse ``type`` that turns ValueError into a clean usage error."""

    def parse(text: str) -> _T:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: {exc}") from None

    parse.__name__ = what
    return parse


def at_least(kind: Callable[[str], _T], minimum: float) -> Callable[[str], _T]:
    """Convert with ``kind`` and refuse values below ``minimum``."""

    def parse(text: str) -> _T:
        value = kind(text)
        if not value >= minimum:  # type: ignore[operator]
            raise ValueError(f"must be at least {minimum}")
        return value

    return parse


def fingerprint(text: str) -> str:
    """A SHA-256 certificate fingerprint: 64 hex digits, colons allowed."""
    digest = text.replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("expected 64 hex digits (SHA-256), colons allowed")
    return digest


def add_trust_flags(parser: argparse.ArgumentParser, peer: str, *, per_peer: bool = False) -> None:
    """--ca | --fingerprint | --insecure (exactly one): how to trust the ``peer``'s certificate.

    With ``per_peer``, --fingerprint may be repeated (a list: one for all peers,
    or one per peer in the order of the peers).
    """
    trust = parser.add_mutually_exclusive_group(required=True)
    trust.add_argument(
        "--ca", type=Path, metavar="PEM", help=f"CA, or the {peer}'s self-signed certificate"
    )
    trust.add_argument(
        "--fingerprint",
        type=checked(fingerprint, "fingerprint"),
        action="append" if per_peer else "store",
        metavar="SHA256",
        help=f"SHA-256 fingerprint of the {peer} certificate"
        + (f"; repeat it to give one per {peer}, in the same order" if per_peer else ""),
    )
    trust.add_argument("--insecure", action="store_true", help=f"do not verify the {peer}")


def add_handshake_flags(parser: argparse.ArgumentParser, timeout_help: str) -> None:
    """--server-name and --connect-timeout: the TLS name to ask for and the handshake limit."""
    parser.add_argument(
        "--server-name", default="localhost", metavar="NAME", help="TLS server name (localhost)"
    )
    parser.add_argument(
        "--connect-timeout",
        type=checked(at_least(float, 0.001), "seconds"),
        default=5.0,
        metavar="SECS",
        help=timeout_help,
    )
