"""Certificates: generate a self-signed server certificate when none is configured."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


def generate_self_signed(
    names: tuple[str, ...] = DEFAULT_NAMES,
    *,
    key_type: str = "ec",
    valid_days: int = 3650,
) -> tuple[bytes, bytes]:
    """A self-signed server certificate and its PKCS#8 key, both PEM.

    ``key_type`` is ``"ec"`` (P-256, what every QUIC peer accepts) or
    ``"ed25519"``. Names that parse as IP addresses become IP SANs.
    """
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown key type {key_type!r}: use 'ec' or 'ed25519'")
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, None if key_type == "ed25519" else hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def write_self_signed(cert_path: Path, key_path: Path, **kwargs: object) -> None:
    """Generate a certificate and key and write them (key file mode 0600)."""
    cert_pem, key_pem = generate_self_signed(**kwargs)  # type: ignore[arg-type]
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.touch(mode=0o600, exist_ok=True)
    key_path.chmod(0o600)
    key_path.write_bytes(key_pem)
    cert_path.write_bytes(cert_pem)


def fingerprint_of(cert_pem: bytes) -> str:
    """SHA-256 fingerprint (hex) of the first certificate in ``cert_pem`` (its DER form)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
