"""The gateway's state directory: certificate, token-signing key and address grants.

Everything the gateway must keep across restarts lives in one folder, by
default ``$XDG_STATE_HOME/snaptun`` (``~/.local/state/snaptun``). What is
missing on first start is generated, never overwritten afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from snaptun.aio.quic import fingerprint_of
from snaptun.core.tokens import (
    generate_signing_key,
    load_private_key,
    write_private_key,
    write_public_key,
)
from snaptun.tls import write_self_signed

__all__ = ["StateFiles", "default_state_dir", "ensure_state"]


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/snaptun``, falling back to ``~/.local/state/snaptun``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "snaptun"


@dataclass(frozen=True, slots=True)
class StateFiles:
    """Where each piece of state lives inside the state directory."""

    root: Path

    @property
    def cert(self) -> Path:
        """Generated self-signed server certificate (PEM)."""
        return self.root / "cert.pem"

    @property
    def key(self) -> Path:
        """Its private key (PEM, mode 0600)."""
        return self.root / "key.pem"

    @property
    def signing_key(self) -> Path:
        """Dev token-signing key, Ed25519 private (PEM, mode 0600)."""
        return self.root / "signing-key.pem"

    @property
    def signing_public_key(self) -> Path:
        """Its public half, what the gateway validates tokens with."""
        return self.root / "signing-key.pub.pem"

    @property
    def grants_db(self) -> Path:
        """SQLite database of address grants and holds."""
        return self.root / "grants.sqlite3"

    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the generated certificate."""
        return fingerprint_of(self.cert.read_bytes())


def ensure_state(root: Path, *, certificate: bool = True) -> tuple[StateFiles, list[Path]]:
    """Create the directory and whatever is missing; return the files and what was created."""
    files = StateFiles(root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    created: list[Path] = []
    if certificate and not (files.cert.exists() and files.key.exists()):
        write_self_signed(files.cert, files.key)
        created += [files.cert, files.key]
    if not files.signing_key.exists():
        key = generate_signing_key()
        write_private_key(key, files.signing_key)
        write_public_key(key.public_key(), files.signing_public_key)
        created += [files.signing_key, files.signing_public_key]
    elif not files.signing_public_key.exists():
        write_public_key(load_private_key(files.signing_key).public_key(), files.signing_public_key)
        created.append(files.signing_public_key)
    return files, created
