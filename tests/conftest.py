"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

from snaptun.tls import write_self_signed

REPO = Path(__file__).resolve().parents[1]
SNAPTUN_REF = REPO.parent / "shared" / "bin" / "snaptun-ref"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed P-256 certificate and key for localhost, generated once per session."""
    folder = tmp_path_factory.mktemp("certs")
    cert, key = folder / "cert.pem", folder / "key.pem"
    write_self_signed(cert, key)
    return cert, key
