"""Send one SCION/UDP packet through a running ``snaptun connect`` and print the answer.

``snaptun connect`` bridges a local UDP port into the tunnel: every datagram
sent to that port goes into the tunnel as one SCION packet, and every packet
from the tunnel comes back to the last local sender. So an application builds
whole SCION packets (here with ``snaptun.scion``) and uses a plain UDP socket.

    snaptun connect GATEWAY:PORT --fingerprint FP --token-file TOKEN --local 127.0.0.1:30100
    # its first line: {"event":"connected","assigned":[{"isd_as":..., "ip":...}], ...}
    python examples/send_packet.py --local 127.0.0.1:30100 \
        --source 1-ff00:0:110,10.0.0.2 --to 2-ff00:0:220,192.0.2.80 --port 7 --message hello

``--source`` is the address the tunnel was assigned: the gateway drops packets
from any other. The path is a placeholder; a real border router checks each
hop field's MAC, so a real application asks its AS's SCION daemon for a path.
Exit code 0 if a packet was sent (and, with ``--wait``, one came back), else 1.
"""

from __future__ import annotations

import argparse
import socket
import sys

from snaptun.core.addressing import EndhostAddress
from snaptun.netaddr import parse_socket_address
from snaptun.scion import (
    PLACEHOLDER_PATH,
    AddressHeader,
    NextHeader,
    ScionDecodeError,
    ScionPacket,
    UdpDatagram,
    decode,
    decode_udp,
    encode,
    encode_udp,
)


def build(source: EndhostAddress, destination: EndhostAddress, port: int, data: bytes) -> bytes:
    """A SCION/UDP packet from ``source`` to ``destination``:``port`` carrying ``data``."""
    address = AddressHeader.between(source, destination)
    udp = encode_udp(UdpDatagram(40000, port, data), address)  # checksum over the pseudo-header
    return encode(ScionPacket(address, PLACEHOLDER_PATH, NextHeader.UDP, udp))


def show(packet: bytes) -> str:
    """One line describing a SCION packet that came back through the tunnel."""
    try:
        scion = decode(packet)
        if scion.next_header != NextHeader.UDP:
            return f"from {scion.source}: next header {scion.next_header}"
        udp = decode_udp(scion.payload, scion.address)
    except ScionDecodeError as exc:
        return f"undecodable packet: {exc}"
    return f"from {scion.source} port {udp.src_port}: {udp.payload!r}"


def main() -> int:
    """Parse the arguments, send one packet, optionally wait for one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", required=True, help="snaptun connect's local port, IP:PORT")
    parser.add_argument("--source", required=True, help="the tunnel's address, IA,IP")
    parser.add_argument("--to", required=True, help="destination, IA,IP")
    parser.add_argument("--port", type=int, default=7, help="destination UDP port (7)")
    parser.add_argument("--message", default="hello from snaptun", help="UDP payload")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for an answer")
    args = parser.parse_args()

    host, port = parse_socket_address(args.local)
    packet = build(
        EndhostAddress.parse(args.source),
        EndhostAddress.parse(args.to),
        args.port,
        args.message.encode(),
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(packet, (host, port))
        print(f"sent {len(packet)} bytes to {args.to} port {args.port}", flush=True)
        if args.wait <= 0:
            return 0
        sock.settimeout(args.wait)
        try:
            answer = sock.recv(65535)
        except TimeoutError:
            print(f"no answer within {args.wait} s")
            return 1
    print(show(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
