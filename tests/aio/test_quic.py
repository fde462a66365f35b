"""The QUIC binding's guards: bounded queues that refuse or count, never grow or drop silently."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from snaptun.aio import quic
from snaptun.errors import CertificateMismatch, ConnectionLost, DatagramTooLarge, SendBufferFull
from snaptun.tls import fingerprint_of


async def test_full_send_queue_refuses_and_send_wait_waits(certs: tuple[Path, Path]) -> None:
    cert, key = certs
    endpoint = await quic.listen("127.0.0.1", 0, cert_file=cert, key_file=key)
    try:
        small = quic.QuicSettings(send_queue=3)
        async with quic.connect(
            "127.0.0.1", endpoint.local_address[1], ca_file=cert, settings=small
        ) as conn:
            server_side = await endpoint.accept()
            for i in range(3):
                conn.send_datagram(b"%d" % i)  # no await: nothing left the queue yet
            assert conn.send_queue_depth == 3
            with pytest.raises(SendBufferFull):
                conn.send_datagram(b"one too many")
            await asyncio.wait_for(conn.send_datagram_wait(b"3"), 2)  # waits for room
            got = [await asyncio.wait_for(server_side.receive_datagram(), 2) for _ in range(4)]
            assert got == [b"0", b"1", b"2", b"3"]
    finally:
        endpoint.close()


async def test_full_receive_queue_drops_the_oldest_and_reports_each_drop(
    certs: tuple[Path, Path],
) -> None:
    cert, key = certs
    endpoint = await quic.listen(
        "127.0.0.1", 0, cert_file=cert, key_file=key, settings=quic.QuicSettings(receive_queue=4)
    )
    try:
        async with quic.connect("127.0.0.1", endpoint.local_address[1], ca_file=cert) as conn:
            server_side = await endpoint.accept()
            reported: list[int] = []
            six_dropped = asyncio.Event()

            def on_drop() -> None:
                reported.append(1)
                if len(reported) == 6:
                    six_dropped.set()

            server_side.on_receive_drop = on_drop
            for i in range(10):
                await conn.send_datagram_wait(b"%d" % i)
            await asyncio.wait_for(six_dropped.wait(), 3)
            assert len(reported) == server_side.datagrams_dropped_rx == 6
            kept = [await server_side.receive_datagram() for _ in range(4)]
            assert kept == [b"6", b"7", b"8", b"9"]
    finally:
        endpoint.close()


async def test_oversized_datagram_is_refused_before_it_reaches_qh3(
    certs: tuple[Path, Path],
) -> None:
    cert, key = certs
    endpoint = await quic.listen("127.0.0.1", 0, cert_file=cert, key_file=key)
    try:
        settings = quic.QuicSettings(udp_payload_size=1200)
        async with quic.connect(
            "127.0.0.1", endpoint.local_address[1], ca_file=cert, settings=settings
        ) as conn:
            server_side = await endpoint.accept()
            limit = conn.max_datagram_size
            assert limit is not None
            assert limit == 1200 - 30 - 8  # quinn's rule with qh3's 8-byte connection IDs
            with pytest.raises(DatagramTooLarge):
                conn.send_datagram(bytes(limit + 1))
            conn.send_datagram(bytes(limit))
            assert len(await asyncio.wait_for(server_side.receive_datagram(), 2)) == limit
            assert conn.closed is None
    finally:
        endpoint.close()


async def test_a_wrong_fingerprint_is_a_certificate_mismatch(
    certs: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certs
    endpoint = await quic.listen("127.0.0.1", 0, cert_file=cert, key_file=key)
    port = endpoint.local_address[1]
    wrong = "AB:" * 31 + "AB"  # qh3 accepts colons and capitals; it reports lowercase hex
    try:
        with pytest.raises(CertificateMismatch) as caught:
            async with quic.connect("127.0.0.1", port, fingerprint=wrong, timeout=5):
                pass
        mismatch = caught.value
        assert (mismatch.expected, mismatch.got) == ("ab" * 32, fingerprint_of(cert.read_bytes()))
        assert str(mismatch) == (
            f"certificate fingerprint mismatch: expected {'ab' * 32}, got {mismatch.got}"
        )
        assert mismatch.code == 0x100 + 42  # CRYPTO_ERROR + TLS alert bad_certificate
        assert not mismatch.application
        # Other TLS failures name the alert's reason instead of only "handshake failed".
        with pytest.raises(ConnectionLost) as other:
            async with quic.connect("127.0.0.1", port, ca_file=_unrelated_ca(tmp_path)):
                pass
        assert not isinstance(other.value, CertificateMismatch)
        assert str(other.value).startswith(
            f"connection failed: handshake with 127.0.0.1:{port} failed: "
        )
    finally:
        endpoint.close()


def _unrelated_ca(folder: Path) -> Path:
    """A CA certificate that signed nothing the server has (so verification fails)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unrelated test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
