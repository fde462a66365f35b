"""Gateway and clients on two hosts: separate network namespaces joined by a veth pair."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snaptun.core.tokens import SnapTokenClaims, mint_token
from snaptun.gateway.state_dir import StateFiles
from snaptun.keyfiles import load_private_key
from tests.cli._procs import REPO, _env

GW_IP, CLIENT_IP = "10.250.0.1", "10.250.0.2"  # test hosts inside our own namespaces


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """Two fresh namespaces, 'gateway host' and 'client host', linked by veth; removed after."""
    if shutil.which("ip") is None:
        pytest.skip("network namespaces cannot be created here: iproute2 'ip' is not installed")
    tag = secrets.token_hex(3)
    gw, client = f"snaptun-gw-{tag}", f"snaptun-cl-{tag}"
    made = _ip("netns", "add", gw)
    if made.returncode != 0:
        pytest.skip(f"network namespaces cannot be created here: {made.stderr.strip()}")
    try:
        steps = [
            ("netns", "add", client),
            ("link", "add", f"vg{tag}", "type", "veth", "peer", "name", f"vc{tag}"),
            ("link", "set", f"vg{tag}", "netns", gw),
            ("link", "set", f"vc{tag}", "netns", client),
            ("-n", gw, "addr", "add", f"{GW_IP}/30", "dev", f"vg{tag}"),
            ("-n", client, "addr", "add", f"{CLIENT_IP}/30", "dev", f"vc{tag}"),
            ("-n", gw, "link", "set", f"vg{tag}", "up"),
            ("-n", client, "link", "set", f"vc{tag}", "up"),
            ("-n", gw, "link", "set", "lo", "up"),
            ("-n", client, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        yield gw, client
    finally:
        _ip("netns", "del", gw)
        _ip("netns", "del", client)


CLIENTS = textwrap.dedent(
    """
    import asyncio, json, sys
    from snaptun.aio import quic
    from snaptun.aio.client import ClientBuilder
    from tests.gateway._gateway import scion_udp

    async def main(host, port, fingerprint, token_a, token_b):
        async with quic.connect(host, port, fingerprint=fingerprint) as ca, \\
                   quic.connect(host, port, fingerprint=fingerprint) as cb:
            sa, ra, a = await ClientBuilder(token_a).connect(ca)
            sb, rb, b = await ClientBuilder(token_b).connect(cb)
            src, dst = a.assigned_addresses[0], b.assigned_addresses[0]
            packet = scion_udp(src, dst, b"across namespaces")
            sa.send(packet)
            got = await asyncio.wait_for(rb.receive(), 10)
            print(json.dumps({"a": str(src), "b": str(dst), "same": got == packet}))

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:]))
    """
)


def test_gateway_and_clients_in_separate_namespaces(
    namespaces: tuple[str, str], tmp_path: Path
) -> None:
    gw_ns, client_ns = namespaces
    state = tmp_path / "state"
    log = tmp_path / "gw.log"
    env = _env()
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env['PYTHONPATH']}"
    serve = [
        "ip", "netns", "exec", gw_ns, sys.executable, "-m", "snaptun.cli.main", "serve",
        "--state-dir", str(state), "--listen", f"{GW_IP}:4433", "--metrics", "off",
        "--underlay-bind", "127.0.0.1:0", "--underlay-next-hop", "127.0.0.1:30042",
    ]  # fmt: skip
    with log.open("w") as err:
        gateway = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        assert gateway.stdout is not None
        line = gateway.stdout.readline()
        assert line.startswith(f"listening {GW_IP}:4433"), log.read_text()
        fingerprint = re.search(r"sha256 fingerprint ([0-9a-f]{64})", log.read_text())
        assert fingerprint, log.read_text()
        key = load_private_key(StateFiles(state).signing_key)
        tokens = [
            mint_token(key, SnapTokenClaims(pssid=uuid.uuid4(), exp=int(time.time()) + 60))
            for _ in range(2)
        ]
        script = tmp_path / "clients.py"
        script.write_text(CLIENTS)
        run = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                client_ns,
                sys.executable,
                str(script),
                GW_IP,
                "4433",
                fingerprint.group(1),
                *tokens,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["same"] is True
        assert result["a"] != result["b"]
        # the client host cannot see the gateway's loopback: the traffic really crossed the veth
        probe = _ip("netns", "exec", client_ns, "ip", "-4", "addr", "show")
        assert CLIENT_IP in probe.stdout
        assert GW_IP not in probe.stdout
    finally:
        gateway.terminate()
        try:
            gateway.wait(10)
        except subprocess.TimeoutExpired:
            gateway.kill()
        if gateway.stdout is not None:
            gateway.stdout.close()
