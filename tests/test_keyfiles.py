"""Key files: PEM round trips, owner-only private keys, wrong key types refused."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from snaptun.core.tokens import JwtTokenValidator, SnapTokenClaims, generate_signing_key, mint_token
from snaptun.keyfiles import load_private_key, load_public_key, write_private_key, write_public_key

PSSID = uuid.UUID("8f0c4e38-6c2e-4a5b-9d3f-1f2e3d4c5b6a")
NOW = 1_700_000_000
EXP = NOW + 600


def test_key_files_round_trip(tmp_path: Path) -> None:
    key = generate_signing_key()
    private_path = tmp_path / "signing.pem"
    public_path = tmp_path / "verify.pem"
    write_private_key(key, private_path)
    write_public_key(key.public_key(), public_path)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    loaded = load_private_key(private_path)
    assert loaded.private_bytes_raw() == key.private_bytes_raw()
    raw = key.public_key().public_bytes_raw()
    assert load_public_key(public_path).public_bytes_raw() == raw
    # A private-key PEM gives its public key too.
    assert load_public_key(private_path).public_bytes_raw() == raw
    token = mint_token(load_private_key(private_path), SnapTokenClaims(PSSID, EXP))
    assert JwtTokenValidator([load_public_key(public_path)]).validate(NOW, token).pssid == PSSID


def test_write_private_key_tightens_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("old")
    path.chmod(0o644)
    write_private_key(generate_signing_key(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_load_refuses_other_key_types(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    private_path = tmp_path / "ec.pem"
    private_path.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_path = tmp_path / "ec.pub.pem"
    public_path.write_bytes(
        ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ValueError, match="Ed25519"):
        load_private_key(private_path)
    with pytest.raises(ValueError, match="Ed25519"):
        load_public_key(public_path)
    with pytest.raises(ValueError, match="Ed25519"):
        load_public_key(private_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(ValueError, match="PEM"):
        load_public_key(garbage)
