"""A `snaptun serve` subprocess for the end-to-end tests, and SCION packet helpers."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from snaptun.core.addressing import EndhostAddress
from snaptun.core.tokens import SnapTokenClaims, mint_token
from snaptun.gateway.state_dir import StateFiles
from snaptun.keyfiles import load_private_key
from snaptun.scion import (
    AddressHeader,
    HopField,
    InfoField,
    NextHeader,
    ScionPacket,
    StandardPath,
    UdpDatagram,
    encode,
    encode_udp,
)
from tests.cli._procs import SNAPTUN, _env, _read_line

START_TIMEOUT = 20.0


@dataclass
class GatewayProcess:
    """A running gateway and where to reach it."""

    proc: subprocess.Popen[str]
    listen: tuple[str, int]
    underlay: tuple[str, int]
    metrics: tuple[str, int]
    fingerprint: str
    state: StateFiles
    log: Path

    def token(self, identity: uuid.UUID | None = None, ttl: int = 300) -> str:
        """A SNAP token signed with the gateway's dev key."""
        key = load_private_key(self.state.signing_key)
        claims = SnapTokenClaims(pssid=identity or uuid.uuid4(), exp=int(time.time()) + ttl)
        return mint_token(key, claims)

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@contextlib.contextmanager
def run_gateway(
    state_dir: Path, log: Path, next_hop: tuple[str, int], *extra: str, listen: str = "127.0.0.1:0"
) -> Iterator[GatewayProcess]:
    """Start `snaptun serve` on embedded defaults (plus ``extra`` flags); always kill it."""
    argv = [
        *SNAPTUN,
        "serve",
        "--state-dir", str(state_dir),
        "--listen", listen,
        "--metrics", "127.0.0.1:0",
        "--underlay-bind", "127.0.0.1:0",
        "--underlay-next-hop", f"{next_hop[0]}:{next_hop[1]}",
        *extra,
    ]  # fmt: skip
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=_env())
    try:
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while not line.startswith("listening "):
            line = _read_line(proc, max(deadline - time.monotonic(), 0.01))
            if not line:
                raise RuntimeError(f"gateway exited: {log.read_text()[-3000:]}")
        text = log.read_text()
        underlay = re.search(r"serve: underlay (\S+)", text)
        metrics = re.search(r"metrics http://(\S+)/metrics", text)
        fingerprint = re.search(r"sha256 fingerprint ([0-9a-f]{64})", text)
        assert underlay, text
        assert metrics, text
        assert fingerprint, text
        yield GatewayProcess(
            proc,
            _address(line.split()[1]),
            _address(underlay.group(1)),
            _address(metrics.group(1)),
            fingerprint.group(1),
            StateFiles(state_dir),
            log,
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def scion_udp(
    src: EndhostAddress,
    dst: EndhostAddress,
    payload: bytes,
    ports: tuple[int, int] = (40000, 50000),
) -> bytes:
    """A SCION/UDP packet over a two-hop standard path."""
    path = StandardPath.from_segments(
        [
            (
                InfoField(cons_dir=True, timestamp=1),
                [HopField(cons_egress=1), HopField(cons_ingress=2)],
            )
        ]
    )
    address = AddressHeader.between(src, dst)
    udp = encode_udp(UdpDatagram(ports[0], ports[1], payload), address)
    return encode(ScionPacket(address, path, NextHeader.UDP, udp))


def scrape(metrics: tuple[str, int]) -> dict[str, float]:
    """The gateway's /metrics as {series: value}."""
    import urllib.request  # noqa: PLC0415 - test helper only

    with urllib.request.urlopen(f"http://{metrics[0]}:{metrics[1]}/metrics", timeout=5) as rsp:
        text = rsp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def connect_argv(gw: GatewayProcess, token: str, *extra: Sequence[str] | str) -> list[str]:
    """`snaptun connect` to ``gw``."""
    return [
        *SNAPTUN,
        "connect",
        f"{gw.listen[0]}:{gw.listen[1]}",
        "--fingerprint",
        gw.fingerprint,
        "--token",
        token,
        *[str(e) for e in extra],
    ]
