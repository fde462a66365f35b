"""The gateway's admin endpoint: live tunnels (read-only), the operator's kick, the status page.

Served next to ``/metrics`` by :class:`~snaptun.gateway.http.HttpServer`
(loopback by default):

- ``GET /admin/tunnels``: a JSON list, one object per live tunnel (see
  :class:`TunnelStatus`);
- ``POST /admin/kick?tunnel=ADDRESS_OR_PSSID``: close the tunnels that match
  with code 0 and reason ``closed by the operator``. Only with the header
  ``X-Snaptun-Admin-Secret`` carrying the secret the gateway wrote at start to
  ``admin.secret`` in its state directory (mode 0600). A custom header is not
  something a cross-site page can send without a CORS preflight, which the
  server refuses (405); and it does not know the secret;
- ``GET /``: a self-contained status page (no external assets) polling
  ``/admin/tunnels`` and showing rates.

At start the gateway writes ``admin.json`` (URL and PID) next to the secret,
so that ``snaptun status --state-dir DIR`` finds it; both are removed at
shutdown. Nothing here is on the per-packet path.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

from snaptun.errors import SnaptunError
from snaptun.gateway.http import Action, Answer, Handler, Request

__all__ = [
    "ADMIN_FILE",
    "SECRET_FILE",
    "SECRET_HEADER",
    "AdminEndpoint",
    "AdminFileError",
    "TunnelStatus",
    "admin_url",
    "iso_time",
    "kick_action",
    "page_route",
    "read_admin",
    "remove_admin_files",
    "tunnels_route",
    "write_admin_file",
    "write_secret",
]

ADMIN_FILE: Final = "admin.json"
"""In the state directory: ``{"url": ..., "pid": ...}`` of the running gateway's endpoint."""
SECRET_FILE: Final = "admin.secret"  # noqa: S105 - a file name
"""In the state directory, mode 0600: the secret a kick must carry; new at every start."""
SECRET_HEADER: Final = "x-snaptun-admin-secret"  # noqa: S105 - a header name
"""The request header that carries the secret."""

_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"
_MAX_SELECTOR: Final = 200


class AdminFileError(SnaptunError):
    """The state directory names no usable admin endpoint; the message says why."""


@dataclass(frozen=True, slots=True)
class TunnelStatus:
    """One live tunnel as ``GET /admin/tunnels`` and ``snaptun status --json`` show it.

    Counters are the data plane's (``from_client`` forwarded from the client,
    ``to_client`` delivered to it, ``drops`` either way, ``scmp_sent`` SCMP
    error answers); times are ISO 8601 UTC.
    """

    pssid: str
    address: str
    remote: str
    since: str
    session_expiry: str | None
    from_client_packets: int
    from_client_bytes: int
    to_client_packets: int
    to_client_bytes: int
    drops: int
    scmp_sent: int

    def as_record(self) -> dict[str, Any]:
        """As a JSON-ready dict."""
        return asdict(self)


def iso_time(seconds: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with milliseconds and ``Z``."""
    if seconds is None:
        return None
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


# ---- state directory files ---------------------------------------------------------------


def admin_url(host: str, port: int) -> str:
    """The URL a local client uses for an endpoint bound to ``host:port`` (any: loopback)."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - a bind address, read not bound
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write_secret(root: Path) -> str:
    """Write a fresh kick secret (mode 0600) and drop a stale ``admin.json``; returns it."""
    secret = secrets.token_hex(32)
    _write_private(root / SECRET_FILE, secret + "\n")
    with contextlib.suppress(FileNotFoundError):
        (root / ADMIN_FILE).unlink()  # a previous gateway's
    return secret


def write_admin_file(root: Path, url: str) -> None:
    """Write ``admin.json``: where this process serves its admin endpoint."""
    _write_private(root / ADMIN_FILE, json.dumps({"url": url, "pid": os.getpid()}) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a file only its owner can read."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that was there
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_admin_files(root: Path) -> None:
    """Remove ``admin.json`` and the secret (the endpoint is gone)."""
    for name in (ADMIN_FILE, SECRET_FILE):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()


@dataclass(frozen=True, slots=True)
class AdminEndpoint:
    """Where a running gateway's admin endpoint is, and its kick secret if readable."""

    url: str
    pid: int | None
    secret: str | None


def read_admin(root: Path) -> AdminEndpoint:
    """Read ``admin.json`` and the secret; :class:`AdminFileError` says what is missing."""
    path = root / ADMIN_FILE
    try:
        record = json.loads(path.read_text())
        url = str(record["url"])
        pid = record.get("pid")
    except FileNotFoundError:
        raise AdminFileError(
            f"{path} not found: no gateway runs with state directory {root}, "
            "or it serves no HTTP endpoint (--metrics off)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdminFileError(f"{path}: unreadable ({exc})") from None
    return AdminEndpoint(
        url, pid if isinstance(pid, int) else None, read_secret(root / SECRET_FILE)
    )


def read_secret(path: Path) -> str | None:
    """The secret in ``path``, or None if it cannot be read (e.g. another user's gateway)."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


# ---- routes ---------------------------------------------------------------------------------


def _json(status: int, value: object) -> Answer:
    return status, _JSON, (json.dumps(value, separators=(",", ":")) + "\n").encode()


def tunnels_route(tunnels: Callable[[], list[TunnelStatus]]) -> Handler:
    """``GET /admin/tunnels``: the live tunnels as a JSON list."""

    def handler() -> Answer:
        return _json(200, [t.as_record() for t in tunnels()])

    return handler


def kick_action(kick: Callable[[str], list[TunnelStatus]], secret: str) -> Action:
    """``POST /admin/kick``: close the tunnels ``tunnel`` names (query, or JSON body).

    403 without the right secret header, 400 without a selector, 404 when no
    tunnel matches; 200 with the list of the tunnels closed.
    """
    expected = secret.encode()

    def action(request: Request) -> Answer:
        given = request.headers.get(SECRET_HEADER, "").strip().encode("latin-1")
        if not hmac.compare_digest(given, expected):
            return _json(403, {"error": f"missing or wrong {SECRET_HEADER} header"})
        selector = _selector(request)
        if not selector:
            return _json(400, {"error": "say which tunnel: ?tunnel=ADDRESS_OR_PSSID"})
        kicked = kick(selector)
        if not kicked:
            return _json(404, {"error": f"no live tunnel matches {selector!r}"})
        return _json(200, [t.as_record() for t in kicked])

    return action


def _selector(request: Request) -> str | None:
    """``?tunnel=X``, else ``{"tunnel": "X"}`` in the body; None if neither is there."""
    values = request.query.get("tunnel")
    text: object = values[-1] if values else None
    if text is None and request.body:
        try:
            body = json.loads(request.body)
        except ValueError:
            return None
        text = body.get("tunnel") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return None
    text = text.strip()
    return text if 0 < len(text) <= _MAX_SELECTOR else None


def _page() -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """The status page and its headers: a CSP allowing only its own inline script and style."""
    html = resources.files("snaptun.gateway").joinpath("status.html").read_text("utf-8")
    hashes = {}
    for tag in ("script", "style"):
        found = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        assert found is not None, f"status.html has no <{tag}>"
        digest = hashlib.sha256(found.group(1).encode()).digest()
        hashes[tag] = "'sha256-" + base64.b64encode(digest).decode() + "'"
    csp = (
        f"default-src 'none'; script-src {hashes['script']}; style-src {hashes['style']}; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    headers = (
        ("content-security-policy", csp),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
    )
    return html.encode(), headers


def page_route() -> Handler:
    """``GET /``: the live status page."""
    body, headers = _page()

    def handler() -> Answer:
        return 200, "text/html; charset=utf-8", body, headers

    return handler
