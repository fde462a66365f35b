"""State directory checks in-process: TLS key types against qh3, half pairs, lock on failure."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID
from qh3.quic.configuration import QuicConfiguration

from snaptun.gateway.config import GatewayConfig
from snaptun.gateway.service import Gateway
from snaptun.gateway.state_dir import (
    StateFileError,
    StateFiles,
    check_tls_files,
    ensure_state,
    lock_state_dir,
)

KeyMaker = Callable[[], CertificateIssuerPrivateKeyTypes]

SUPPORTED: dict[str, KeyMaker] = {
    "rsa-2048": lambda: rsa.generate_private_key(65537, 2048),
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ecdsa-p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}
UNSUPPORTED: dict[str, tuple[KeyMaker, str]] = {
    "dsa": (lambda: dsa.generate_private_key(2048), "DSA"),
    "ed448": (ed448.Ed448PrivateKey.generate, "Ed448"),
    "ecdsa-secp256k1": (lambda: ec.generate_private_key(ec.SECP256K1()), "ECDSA secp256k1"),
}


def write_pair(
    folder: Path, key: CertificateIssuerPrivateKeyTypes, *, traditional: bool = False
) -> tuple[Path, Path]:
    """A self-signed certificate for ``key`` and the key itself, as PEM files."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    digest = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, digest)
    )
    form = serialization.PrivateFormat.TraditionalOpenSSL if traditional else None
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            form or serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize("kind", sorted(SUPPORTED))
def test_every_key_type_let_through_is_one_qh3_serves_with(tmp_path: Path, kind: str) -> None:
    cert, key = write_pair(tmp_path, SUPPORTED[kind]())
    check_tls_files(cert, key, generated=False)
    QuicConfiguration(is_client=False).load_cert_chain(str(cert), str(key))  # does not raise


@pytest.mark.parametrize(
    ("kind", "traditional"),
    # a traditional DSA PEM is what made qh3 panic; Ed448 has no traditional form
    [(kind, False) for kind in sorted(UNSUPPORTED)] + [("dsa", True), ("ecdsa-secp256k1", True)],
)
def test_key_types_qh3_cannot_serve_with_are_named(
    tmp_path: Path, kind: str, traditional: bool
) -> None:
    make, name = UNSUPPORTED[kind]
    cert, key = write_pair(tmp_path, make(), traditional=traditional)
    with pytest.raises(StateFileError) as info:
        check_tls_files(cert, key, generated=False)
    assert info.value.path == key
    assert info.value.problem.startswith(f"key type {name} is not supported")
    assert "Ed25519" in info.value.problem  # says what would do


def test_a_certificate_and_key_that_do_not_match_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = write_pair(tmp_path / "a", SUPPORTED["ecdsa-p256"]())
    _, key = write_pair(tmp_path / "b", SUPPORTED["ecdsa-p256"]())
    with pytest.raises(StateFileError, match="does not belong to the certificate"):
        check_tls_files(cert, key, generated=False)


@pytest.mark.parametrize("gone", ["cert.pem", "key.pem"])
def test_half_a_tls_pair_is_refused_and_the_other_half_kept(tmp_path: Path, gone: str) -> None:
    ensure_state(tmp_path)
    (tmp_path / gone).unlink()
    kept = ({"cert.pem", "key.pem"} - {gone}).pop()
    before = (tmp_path / kept).read_bytes()
    with pytest.raises(StateFileError) as info:
        ensure_state(tmp_path)
    assert info.value.path == tmp_path / gone
    assert info.value.problem == f"is missing while {kept} is there"
    assert (tmp_path / kept).read_bytes() == before
    assert not (tmp_path / gone).exists()
    ensure_state(tmp_path, certificate=False)  # --cert/--key given: the pair is not used


def test_a_dev_public_key_without_its_private_key_is_not_replaced(tmp_path: Path) -> None:
    files, _ = ensure_state(tmp_path)
    files.signing_key.unlink()
    before = files.signing_public_key.read_bytes()
    with pytest.raises(StateFileError) as info:
        ensure_state(tmp_path)
    assert info.value.path == files.signing_key
    assert "--token-key" in info.value.remedy
    # with --token-key the dev key is not used: left as it is, nothing generated
    assert ensure_state(tmp_path, dev_key=False)[1] == []
    assert files.signing_public_key.read_bytes() == before
    assert not files.signing_key.exists()


def test_a_missing_dev_public_key_is_derived_from_the_private_one(tmp_path: Path) -> None:
    files, _ = ensure_state(tmp_path)
    before = files.signing_public_key.read_bytes()
    files.signing_public_key.unlink()
    assert ensure_state(tmp_path)[1] == [files.signing_public_key]
    assert files.signing_public_key.read_bytes() == before


def test_a_wholly_missing_state_is_generated_once(tmp_path: Path) -> None:
    files, created = ensure_state(tmp_path / "new")
    assert sorted(created) == sorted(
        [files.cert, files.key, files.signing_key, files.signing_public_key]
    )
    assert ensure_state(tmp_path / "new")[1] == []


async def test_a_start_stopped_by_bad_state_leaves_the_directory_unlocked(
    tmp_path: Path,
) -> None:
    files = StateFiles(tmp_path)
    ensure_state(tmp_path)
    files.grants_db.write_bytes(b"not a database, not at all\n" * 200)
    config = GatewayConfig(
        state_dir=tmp_path,
        listen=("127.0.0.1", 0),
        metrics=None,
        underlay_bind=("127.0.0.1", 0),
    )
    with pytest.raises(StateFileError) as info:
        await Gateway(config).start()
    assert info.value.path == files.grants_db
    lock_state_dir(tmp_path).release()  # would raise StateDirInUse if the lock leaked
