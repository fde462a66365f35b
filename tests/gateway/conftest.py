"""Fixtures of the gateway tests: one PostgreSQL server per test session (and xdist worker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway._postgres import PgServer, postgres_server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server on a unix socket; skips (saying why) where none can be started."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh database of the session's server, for one test."""
    return pg_server.create_database()
