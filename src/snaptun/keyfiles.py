"""Ed25519 key files: PEM reading and writing for the token keys (the I/O half of tokens).

Kept out of the sans-I/O :mod:`snaptun.core.tokens`, which signs and
validates with keys already in memory. A key of the wrong type, or a PEM
that does not parse, is a ``ValueError`` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["load_private_key", "load_public_key", "write_private_key", "write_public_key"]


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load an unencrypted Ed25519 private key from a PEM file (PKCS#8)."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        # ValueError like a PEM that does not parse: the file's content is wrong.
        raise ValueError(f"{os.fspath(path)}: not an Ed25519 private key")  # noqa: TRY004
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM file.

    A public-key PEM is read as is; for convenience, a private-key PEM is
    accepted too and its public key derived.
    """
    data = Path(path).read_bytes()
    if b"PRIVATE KEY-----" in data:
        return load_private_key(path).public_key()
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{os.fspath(path)}: not an Ed25519 public key")  # noqa: TRY004
    return key


def write_private_key(key: Ed25519PrivateKey, path: str | os.PathLike[str]) -> None:
    """Write ``key`` as an unencrypted PKCS#8 PEM file readable only by its owner (0600)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode under O_CREAT
        file.write(pem)


def write_public_key(key: Ed25519PublicKey, path: str | os.PathLike[str]) -> None:
    """Write ``key`` as a SubjectPublicKeyInfo PEM file."""
    pem = key.public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    Path(path).write_bytes(pem)
