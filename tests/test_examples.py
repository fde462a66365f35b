"""examples/send_packet.py run as docs/CLIENT.md says: through `snaptun connect`, a real gateway.

The test's UDP socket is the gateway's border router (its underlay next hop):
it receives the example's packet, decoded, and answers it back through the
gateway, the tunnel and `snaptun connect` to the example.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from snaptun.core.addressing import EndhostAddress
from snaptun.scion import NextHeader, decode, decode_udp
from tests.cli._procs import REPO, _env, _read_line
from tests.gateway._gateway import connect_argv, run_gateway, scion_udp

EXAMPLE = REPO / "examples" / "send_packet.py"
FAR = EndhostAddress.parse("2-ff00:0:220,192.0.2.80")


def test_send_packet_reaches_the_border_router_and_gets_the_answer(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as router:
        router.bind(("127.0.0.1", 0))
        router.settimeout(10)
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.getsockname()) as gw:
            argv = connect_argv(gw, gw.token(), "--local", "127.0.0.1:0")
            connect = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env()
            )
            example: subprocess.Popen[str] | None = None
            try:
                connected = json.loads(_read_line(connect, 20))
                assert connected["event"] == "connected", connected
                source = "{isd_as},{ip}".format(**connected["assigned"][0])
                example_argv = [sys.executable, str(EXAMPLE), "--local", connected["local"]]
                example_argv += ["--source", source, "--to", str(FAR), "--port", "7"]
                example_argv += ["--message", "first packet", "--wait", "10"]
                example = subprocess.Popen(
                    example_argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=_env(),
                )
                data, _ = router.recvfrom(65535)
                packet = decode(data)
                assert (packet.source, packet.destination) == (EndhostAddress.parse(source), FAR)
                assert packet.next_header == NextHeader.UDP
                udp = decode_udp(packet.payload, packet.address)  # checksum verified
                assert (udp.dst_port, udp.payload) == (7, b"first packet")

                answer = scion_udp(
                    FAR, EndhostAddress.parse(source), b"welcome", ports=(7, udp.src_port)
                )
                router.sendto(answer, gw.underlay)
                out, err = example.communicate(timeout=20)
                assert example.returncode == 0, err
                assert out.splitlines() == [
                    f"sent {len(data)} bytes to {FAR} port 7",
                    f"from {FAR} port 7: b'welcome'",
                ]
            finally:
                for proc in (example, connect):
                    if proc is not None and proc.poll() is None:
                        proc.kill()
                    if proc is not None:
                        proc.communicate(timeout=10)
