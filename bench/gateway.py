"""The gateway round trip of ``bench/run.py``: ``snaptun serve`` with a SCION "network" behind it.

Path measured, for every datagram of ``snaptun-ref bench --scion-dst``:
client -> QUIC tunnel -> gateway packet policy and routing -> underlay UDP
socket -> ``snaptun-ref udp-echo --scion-swap`` (swaps SCION source and
destination, sends the packet back) -> underlay socket -> gateway routing ->
the same tunnel -> client. The destination :data:`SCION_DST` is in another
ISD-AS and outside the gateway's pool, so no packet can take the
tunnel-to-tunnel shortcut; the ``/metrics`` deltas scraped around each run
(:func:`forwarding`) show which way the packets went and what was dropped.

The gateway runs from a temporary state directory on loopback (ports picked
by the kernel), with the settings of :data:`SETTINGS` given as flags (printed
by ``bench/run.py``); no ``SNAPTUN_*`` variable of the caller's environment
reaches it. Its token comes from ``snaptun token issue`` against that state
directory (the gateway's dev key).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Plan, Server, echo_bench, setup_bench, start_server

SCION_DST = "1-ff00:0:111,192.0.2.1"
"""Where the bench's packets go: not the gateway's ISD-AS (1-ff00:0:110) nor its pool."""

SETTINGS: dict[str, str | list[str]] = {
    "pools": ["10.0.0.0/24"],
    "max_half_open": "256",
    "source_rate": "1000",
    "source_burst": "1000",
    "retry": "never",
    "handshake_timeout": "5",
    "log_level": "info",
}
"""``snaptun serve`` settings of the bench gateway, besides loopback addresses and state.

An IPv4 pool only, so the tunnel (and every SCION packet) is IPv4. The
admission bounds are raised above what one sequential source needs
(setup-bench runs one handshake at a time from 127.0.0.1; a completed
handshake refunds its source token anyway) and Retry is off: on loopback it
only adds a round trip per setup, and the numbers should measure the
forwarding and setup work, not the flood defence. Logging stays at the
default (one line per tunnel event, none per packet), as an operator runs it.
"""

_FLAGS = {
    "pools": "--pool",
    "max_half_open": "--max-half-open",
    "source_rate": "--source-rate",
    "source_burst": "--source-burst",
    "retry": "--retry",
    "handshake_timeout": "--handshake-timeout",
    "log_level": "--log-level",
}

PACKETS = "snaptun_gateway_packets_total"
DROPS = "snaptun_gateway_drops_total"
REFUSED = "snaptun_gateway_quic_refused_total"
SETUPS = "snaptun_gateway_setups_total"
"""Series names as exported by ``snaptun.gateway.metrics`` (counters get ``_total``)."""

_SNAPTUN = [sys.executable, "-m", "snaptun.cli.main"]
_METRICS_LINE = re.compile(r"metrics http://(\S+)/metrics")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class Gateway:
    """A running bench gateway: the serve process, its swap peer, how to reach and pay it."""

    server: Server
    swap: Server
    metrics_url: str
    token: str
    state_dir: Path
    config_toml: str


def clean_env() -> dict[str, str]:
    """The caller's environment without ``SNAPTUN_*`` (they would configure the gateway)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SNAPTUN_")}


def serve_argv(
    state_dir: Path,
    cert: Path,
    key: Path,
    next_hop: str,
    settings: Mapping[str, str | list[str]] = SETTINGS,
) -> list[str]:
    """``snaptun serve`` on loopback (kernel-picked ports) with ``settings`` as flags."""
    argv = [
        *_SNAPTUN,
        "serve",
        f"--state-dir={state_dir}",
        "--listen=127.0.0.1:0",
        "--metrics=127.0.0.1:0",
        "--underlay-bind=127.0.0.1:0",
        f"--underlay-next-hop={next_hop}",
        f"--cert={cert}",
        f"--key={key}",
    ]
    for name, value in settings.items():
        for item in value if isinstance(value, list) else [value]:
            argv.append(f"{_FLAGS[name]}={item}")
    return argv


def issue_token(state_dir: Path, ttl: float = 3600) -> str:
    """A SNAP token signed with the gateway's dev key (``snaptun token issue``)."""
    done = subprocess.run(
        [*_SNAPTUN, "token", "issue", f"--state-dir={state_dir}", f"--ttl={ttl:g}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=clean_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"snaptun token issue failed: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def start_gateway(ref: Path, work: Path, cert: Path, key: Path) -> Iterator[Gateway]:
    """Start ``udp-echo --scion-swap``, then ``snaptun serve`` pointed at it; stop both after."""
    state_dir = work / "gateway-state"
    swap_argv = [str(ref), "udp-echo", "--listen=127.0.0.1:0", "--scion-swap"]
    with start_server("swap", swap_argv, work / "swap.log") as swap:
        argv = serve_argv(state_dir, cert, key, swap.address)
        env = clean_env()
        shown = subprocess.run(
            [*argv, "--print-config"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env,
        )
        if shown.returncode != 0:
            raise RuntimeError(f"snaptun serve --print-config failed: {shown.stderr.strip()}")
        log = work / "gateway.log"
        with start_server("gateway", argv, log, env=env) as server:
            found = _METRICS_LINE.search(log.read_text())
            if found is None:
                raise RuntimeError(f"gateway printed no metrics address: {log.read_text()[-2000:]}")
            yield Gateway(
                server=server,
                swap=swap,
                metrics_url=f"http://{found.group(1)}/metrics",
                token=issue_token(state_dir),
                state_dir=state_dir,
                config_toml=shown.stdout,
            )


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format as ``{series: value}`` (``name{labels}`` as printed)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[series] = float(value)
    return values


def scrape(url: str) -> dict[str, float]:
    """The gateway's ``/metrics`` now."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return parse_metrics(text)


def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Counter growth between two scrapes (``*_total`` series only; zero growth left out)."""
    out: dict[str, float] = {}
    for series, value in after.items():
        name = series.split("{", 1)[0]
        if name.endswith("_total"):
            grown = value - before.get(series, 0.0)
            if grown:
                out[series] = grown
    return out


def _by_label(grown: Mapping[str, float], name: str, label: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for series, value in grown.items():
        if series.split("{", 1)[0] == name:
            labels = dict(_LABEL.findall(series))
            key = labels.get(label, "")
            out[key] = out.get(key, 0) + round(value)
    return out


def forwarding(grown: Mapping[str, float], received: int | None = None) -> dict[str, Any]:
    """Packets per direction and drops by reason from a :func:`delta`; did the round trip work?

    ``path_ok``: both underlay directions carried at least the ``received``
    echoes the bench counted (the metrics also count the warm-up) and none went
    tunnel to tunnel. ``None`` without ``received``.
    """
    packets = _by_label(grown, PACKETS, "direction")
    summary: dict[str, Any] = {
        "tunnel_to_underlay": packets.get("tunnel_to_underlay", 0),
        "underlay_to_tunnel": packets.get("underlay_to_tunnel", 0),
        "tunnel_to_tunnel": packets.get("tunnel_to_tunnel", 0),
        "drops": _by_label(grown, DROPS, "reason"),
        "quic_refused": _by_label(grown, REFUSED, "reason"),
        "setups": _by_label(grown, SETUPS, "result"),
        "path_ok": None,
    }
    if received is not None:
        summary["path_ok"] = (
            summary["tunnel_to_underlay"] >= received
            and summary["underlay_to_tunnel"] >= received
            and summary["tunnel_to_tunnel"] == 0
        )
    return summary


def _scrape_or_none(url: str) -> dict[str, float] | None:
    try:
        return scrape(url)
    except OSError as exc:
        print(f"  metrics scrape failed: {exc}", file=sys.stderr)
        return None


def _with_metrics(result: dict[str, Any], before: dict[str, float] | None, url: str) -> None:
    after = _scrape_or_none(url)
    if before is None or after is None:
        result["metrics_delta"] = None
        result["forwarding"] = None
        return
    grown = delta(before, after)
    received = result.get("received")
    result["metrics_delta"] = grown
    result["forwarding"] = forwarding(grown, received if isinstance(received, int) else None)


def gateway_echo_bench(
    ref: Path, gateway: Gateway, size: int, plan: Plan, ca: Path
) -> dict[str, Any]:
    """The SNAP round trip at ``size`` bytes per SCION packet, with its ``/metrics`` deltas."""
    before = _scrape_or_none(gateway.metrics_url)
    result = echo_bench(
        ref,
        gateway.server,
        size,
        plan,
        ca,
        extra=[f"--scion-dst={SCION_DST}", f"--token={gateway.token}"],
        also=[gateway.swap],
    )
    _with_metrics(result, before, gateway.metrics_url)
    source = str(result.get("scion_src", ""))
    result["ipv4"] = "." in source.rpartition(",")[2] if source else None
    return result


def gateway_setup_bench(
    ref: Path, gateway: Gateway, plan: Plan, ca: Path, *, resumption: bool
) -> dict[str, Any]:
    """Sequential tunnel setups against the gateway (with its token), with ``/metrics`` deltas."""
    before = _scrape_or_none(gateway.metrics_url)
    result = setup_bench(
        ref, gateway.server, plan, ca, resumption=resumption, extra=[f"--token={gateway.token}"]
    )
    _with_metrics(result, before, gateway.metrics_url)
    return result


def describe(forwarded: Mapping[str, Any] | None) -> str:
    """One line of a :func:`forwarding` summary for the console."""
    if forwarded is None:
        return "metrics unavailable"
    drops = forwarded["drops"]
    refused = forwarded["quic_refused"]
    parts = [
        f"tunnel_to_underlay {forwarded['tunnel_to_underlay']:,}",
        f"underlay_to_tunnel {forwarded['underlay_to_tunnel']:,}",
        f"tunnel_to_tunnel {forwarded['tunnel_to_tunnel']:,}",
        "drops " + (", ".join(f"{k} {v:,}" for k, v in sorted(drops.items())) or "none"),
    ]
    if refused:
        parts.append("quic_refused " + ", ".join(f"{k} {v:,}" for k, v in sorted(refused.items())))
    if forwarded["setups"]:
        parts.append(
            "setups " + ", ".join(f"{k} {v:,}" for k, v in sorted(forwarded["setups"].items()))
        )
    if forwarded["path_ok"] is not None:
        parts.append("forwarding path " + ("ok" if forwarded["path_ok"] else "NOT taken"))
    return "; ".join(parts)


def settings_line(settings: Mapping[str, str | list[str]] = SETTINGS) -> str:
    """The bench gateway's settings as the flags it gets, for the console."""
    return " ".join(
        f"{_FLAGS[name]}={item}"
        for name, value in settings.items()
        for item in (value if isinstance(value, list) else [value])
    )
