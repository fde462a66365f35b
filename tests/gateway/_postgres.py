"""A throwaway PostgreSQL server for the tests: initdb in a temporary directory, unix socket only.

Debian's ``postgresql`` package provides the binaries (``/usr/lib/postgresql/N/bin`` or
PATH). ``initdb`` refuses to run as root, so as root (CI) the server runs as the
``postgres`` system user, in a directory it owns. No TCP port is opened
(``listen_addresses=''``); fsync is off (the tests never survive a power cut).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

TIMEOUT = 30.0
"""Seconds initdb, a start or a stop may take."""


def _bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found is not None:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    return versions[0].parent if versions else None


@dataclass
class PgServer:
    """A running server; ``url(db)`` reaches one of its databases."""

    root: Path
    bindir: Path
    user: str
    as_postgres: bool

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        subprocess.run(
            [*prefix, *argv], check=True, capture_output=True, timeout=TIMEOUT, cwd=self.root
        )

    def url(self, db: str = "postgres") -> str:
        return f"postgresql:///{db}?host={self.root}&user={self.user}"

    def start(self) -> None:
        options = f"-c listen_addresses='' -c unix_socket_directories={self.root} -c fsync=off"
        options += " -c max_connections=200"
        self._run(
            str(self.bindir / "pg_ctl"), "start", "-w", "-D", str(self.data),
            "-l", str(self.root / "log"), "-o", options,
        )  # fmt: skip

    def stop(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(self.data)
        )

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@contextlib.contextmanager
def postgres_server() -> Iterator[PgServer]:
    """A started server, stopped and removed afterwards; skips if PostgreSQL cannot be had."""
    bindir = _bindir()
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl; Debian package postgresql)")
    as_postgres = os.geteuid() == 0
    if as_postgres and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as postgres")
    root = Path(tempfile.mkdtemp(prefix="snaptun-pg-"))
    user = "postgres" if as_postgres else getpass.getuser()
    server = PgServer(root, bindir, user, as_postgres)
    try:
        if as_postgres:
            shutil.chown(root, "postgres", "postgres")
        try:
            server._run(
                str(bindir / "initdb"), "-D", str(server.data), "-U", user,
                "--auth=trust", "--no-sync", "-E", "UTF8",
            )  # fmt: skip
        except (subprocess.CalledProcessError, LookupError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            pytest.skip(f"PostgreSQL cannot be started here: {exc} {detail.decode()[-300:]}")
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
