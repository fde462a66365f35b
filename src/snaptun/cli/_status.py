"""``snaptun status``: the live tunnels of a running gateway, like ``wg show``; ``--kick``.

Finds the gateway's admin endpoint through ``admin.json`` in its state
directory (or takes ``--admin URL``), reads ``GET /admin/tunnels`` and prints a
table, or one JSON object per tunnel with ``--json``. ``--kick X`` closes the
tunnels whose address, IP or pssid is X (``POST /admin/kick`` with the secret
from ``admin.secret``). Exit 0 on success, 1 when the gateway cannot be
reached, refuses, or no tunnel matches the kick.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from snaptun.cli._common import at_least, checked, emit
from snaptun.errors import SnaptunError
from snaptun.gateway.admin import (
    SECRET_FILE,
    SECRET_HEADER,
    AdminFileError,
    read_admin,
    read_secret,
)
from snaptun.gateway.state_dir import default_state_dir

__all__ = ["format_table", "register"]

_COLUMNS = (
    "PSSID",
    "ADDRESS",
    "CLIENT",
    "UP",
    "EXPIRES IN",
    "FROM CLIENT",
    "TO CLIENT",
    "DROPS",
    "SCMP",
)


class StatusError(SnaptunError):
    """What went wrong, as one line for the operator."""


def register(commands: Any) -> None:
    """Add ``status`` to the ``snaptun`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "status",
        help="show the live tunnels of a running gateway (or --kick one)",
        description="Show the live tunnels of a running `snaptun serve`: pssid, address, the "
        "client's underlay address, uptime, session expiry, packets and bytes each way, drops "
        "and SCMP answers. The admin endpoint is found through the gateway's state directory.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the gateway's state directory (default: $XDG_STATE_HOME/snaptun)",
    )
    where.add_argument(
        "--admin", metavar="URL", help="the admin endpoint's URL, e.g. http://127.0.0.1:9464"
    )
    parser.add_argument(
        "--secret-file",
        type=Path,
        metavar="F",
        help=f"file with the kick secret (default: {SECRET_FILE} in the state directory)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per tunnel")
    parser.add_argument(
        "--kick",
        metavar="ADDRESS_OR_PSSID",
        help="close that tunnel ('closed by the operator'); the client may reconnect",
    )
    parser.add_argument(
        "--timeout",
        type=checked(at_least(float, 0.001), "seconds"),
        default=5.0,
        metavar="SECS",
        help="HTTP timeout (5)",
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    return run_status(args)


def run_status(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``snaptun status`` with parsed arguments; returns the exit code."""
    stream = out if out is not None else sys.stdout
    try:
        tunnels = _fetch(args)
    except StatusError as exc:
        print(f"snaptun status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for tunnel in tunnels:
            emit(tunnel, stream)
    elif args.kick is not None:
        for t in tunnels:
            stream.write(
                f"kicked {t['address']} (pssid {t['pssid']}, client {t['remote']}): "
                "closed by the operator\n"
            )
    else:
        stream.write(format_table(tunnels, time.time()))
    stream.flush()
    return 0


def _fetch(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The live tunnels, or with ``--kick`` the tunnels closed."""
    url, secret = _endpoint(args)
    if args.kick is None:
        return _call(url + "/admin/tunnels", args.timeout)
    if secret is None:
        raise StatusError(
            "no kick secret: run as the gateway's user, or give --secret-file "
            f"(the gateway writes {SECRET_FILE} in its state directory)"
        )
    query = urllib.parse.urlencode({"tunnel": args.kick})
    return _call(url + "/admin/kick?" + query, args.timeout, secret=secret)


def _endpoint(args: argparse.Namespace) -> tuple[str, str | None]:
    """The admin URL (no trailing slash) and the kick secret, if readable."""
    secret = None
    if args.secret_file is not None:
        secret = read_secret(args.secret_file)
        if secret is None:
            raise StatusError(f"{args.secret_file}: cannot be read")
    if args.admin is not None:
        return args.admin.rstrip("/"), secret
    root = args.state_dir if args.state_dir is not None else default_state_dir()
    try:
        found = read_admin(root)
    except AdminFileError as exc:
        raise StatusError(str(exc)) from None
    return found.url.rstrip("/"), secret or found.secret


def _call(url: str, timeout: float, *, secret: str | None = None) -> list[dict[str, Any]]:
    """GET (or, with ``secret``, POST) ``url``; its JSON list, or :class:`StatusError`."""
    headers = {SECRET_HEADER: secret} if secret is not None else {}
    method = "POST" if secret is not None else "GET"
    request = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise StatusError(f"{method} {url}: {exc.code} {_error_text(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"cannot reach the gateway at {url}: {reason}") from None
    try:
        value = json.loads(body)
    except ValueError:
        raise StatusError(f"{url}: not a JSON answer") from None
    if not isinstance(value, list):
        raise StatusError(f"{url}: expected a JSON list")
    return [t for t in value if isinstance(t, dict)]


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return str(exc.reason)


def format_table(tunnels: list[dict[str, Any]], now: float) -> str:
    """The human view: one row per tunnel, columns aligned; a line when there are none."""
    if not tunnels:
        return "no live tunnels\n"
    rows = [_COLUMNS]
    for t in tunnels:
        rows.append(
            (
                str(t.get("pssid", "")),
                str(t.get("address", "")),
                str(t.get("remote", "")),
                _duration(now - _seconds(t.get("since"), now)),
                _duration(_seconds(t.get("session_expiry"), now) - now)
                if t.get("session_expiry")
                else "-",
                _transfer(t, "from_client"),
                _transfer(t, "to_client"),
                str(t.get("drops", 0)),
                str(t.get("scmp_sent", 0)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _seconds(stamp: object, default: float) -> float:
    if not isinstance(stamp, str):
        return default
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return default


def _duration(seconds: float) -> str:
    """``1h02m``, ``4m05s``, ``12s``; negative: ``expired``."""
    if seconds < 0:
        return "expired"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _transfer(tunnel: dict[str, Any], direction: str) -> str:
    packets = tunnel.get(f"{direction}_packets", 0)
    return f"{_size(int(tunnel.get(f'{direction}_bytes', 0)))} ({packets} pkt)"


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
