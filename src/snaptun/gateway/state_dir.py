"""The gateway's state directory: certificate, token-signing key and address grants.

Everything the gateway must keep across restarts lives in one folder, by
default ``$XDG_STATE_HOME/snaptun`` (``~/.local/state/snaptun``). What is
missing on first start is generated, never overwritten afterwards.

One gateway at a time: :func:`lock_state_dir` takes an exclusive ``flock`` on
``gateway.lock`` (holding the PID) before anything else in the folder is
touched, so a second gateway cannot rewrite the first one's grants. The kernel
drops the lock when the process dies, so a stale file never blocks.

Files that are there but damaged stop the start with a :class:`StateFileError`
that names the file, what is wrong with it and what to do, instead of a
traceback from the crypto or SQLite layer underneath.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from snaptun.aio.quic import fingerprint_of
from snaptun.core.tokens import (
    generate_signing_key,
    load_private_key,
    load_public_key,
    write_private_key,
    write_public_key,
)
from snaptun.errors import SnaptunError
from snaptun.gateway.store import GrantStoreError
from snaptun.tls import write_self_signed

__all__ = [
    "StateDirInUse",
    "StateError",
    "StateFileError",
    "StateFiles",
    "StateLock",
    "check_tls_files",
    "default_state_dir",
    "ensure_state",
    "grant_store_error",
    "load_token_keys",
    "lock_state_dir",
]

_BAD_KEY_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm)
"""What ``cryptography`` raises for a PEM that does not parse, is encrypted or unsupported."""


class StateError(SnaptunError):
    """The gateway cannot use its state directory or a file it names; the message says why."""


class StateFileError(StateError):
    """A state file is unreadable or damaged: ``path: problem; remedy``."""

    def __init__(self, path: Path, problem: str, remedy: str) -> None:
        super().__init__(f"{path}: {problem}; {remedy}")
        self.path = path
        self.problem = problem
        self.remedy = remedy


class StateDirInUse(StateError):
    """Another gateway holds the lock of this state directory."""

    def __init__(self, root: Path, pid: int | None) -> None:
        who = f"PID {pid}" if pid is not None else "PID unknown"
        super().__init__(
            f"state directory {root} is in use by another gateway ({who}); "
            "stop it or use another --state-dir"
        )
        self.root = root
        self.pid = pid


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
        load_token_keys([], dev=files)  # a damaged private key: one clear line
        write_public_key(load_private_key(files.signing_key).public_key(), files.signing_public_key)
        created.append(files.signing_public_key)
    return files, created


class StateLock:
    """The held ``flock`` of a state directory; :meth:`release` (or process exit) drops it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Empty the PID and unlock; releasing twice is fine.

        The file stays: unlinking it would let a newcomer lock a fresh file
        while a third process still waits on the old one.
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the only descriptor releases the flock


def lock_state_dir(root: Path) -> StateLock:
    """Create ``root`` if needed and lock ``root/gateway.lock``, or raise :class:`StateDirInUse`."""
    path = root / "gateway.lock"
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateFileError(
            path, f"cannot be created: {exc.strerror}", "check the directory and its permissions"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            text = os.read(fd, 32).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        raise StateDirInUse(root, int(text) if text.isdecimal() else None) from None
    except OSError as exc:
        os.close(fd)
        raise StateFileError(
            path, f"cannot be locked: {exc.strerror}", "use a state directory on a local disk"
        ) from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(path, fd)


def _read(path: Path, remedy: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StateFileError(path, f"cannot be read: {exc.strerror}", remedy) from exc


def check_tls_files(cert: Path, key: Path, *, generated: bool) -> None:
    """Refuse a certificate or key that does not parse or match, before the QUIC library sees it.

    qh3 answers a bad PEM with a Rust panic (not even an ``Exception``), so
    the files are parsed with ``cryptography`` first.
    """
    if generated:
        remedy = (
            f"delete {cert.name} and {key.name} to generate a new self-signed certificate "
            "(clients pinning the old fingerprint must be updated)"
        )
    else:
        remedy = (
            "give a PEM certificate chain with --cert and its unencrypted private key with --key"
        )
    try:
        chain = x509.load_pem_x509_certificates(_read(cert, remedy))
    except _BAD_KEY_ERRORS as exc:
        raise StateFileError(cert, "not a PEM certificate", remedy) from exc
    try:
        private = serialization.load_pem_private_key(_read(key, remedy), password=None)
    except _BAD_KEY_ERRORS as exc:
        raise StateFileError(key, "not an unencrypted PEM private key", remedy) from exc
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*raw) != chain[0].public_key().public_bytes(*raw):
        raise StateFileError(key, f"does not belong to the certificate {cert}", remedy)


def load_token_keys(paths: Sequence[Path], *, dev: StateFiles | None) -> list[Ed25519PublicKey]:
    """The token keys, each checked; ``dev``: they are the state directory's generated dev key."""
    if dev is not None:
        remedy = (
            f"delete {dev.signing_key.name} and {dev.signing_public_key.name} to generate a new "
            "dev key (tokens signed with the old one stop working)"
        )
        try:
            load_private_key(dev.signing_key)
        except OSError as exc:
            raise StateFileError(
                dev.signing_key, f"cannot be read: {exc.strerror}", remedy
            ) from exc
        except _BAD_KEY_ERRORS as exc:
            raise StateFileError(dev.signing_key, "not an Ed25519 private key", remedy) from exc
    else:
        remedy = "give Ed25519 public keys in PEM with --token-key (snaptun token keygen makes one)"
    keys = []
    for path in paths:
        try:
            keys.append(load_public_key(path))
        except OSError as exc:
            raise StateFileError(path, f"cannot be read: {exc.strerror}", remedy) from exc
        except _BAD_KEY_ERRORS as exc:
            raise StateFileError(path, "not an Ed25519 key in PEM", remedy) from exc
    return keys


def grant_store_error(path: Path, exc: GrantStoreError) -> StateFileError:
    """One line for a grant store that cannot be opened: what SQLite said, and what to do."""
    said = str(exc).removeprefix(f"grant store {path}: ").removeprefix("open failed: ")
    remedy = (
        "move it aside to start with no grants (held addresses are forgotten) "
        "or restore it from a backup"
    )
    if "not a database" in said:
        said = "not an SQLite database (damaged or overwritten)"
    elif "locked" in said or "busy" in said:
        said, remedy = "locked by another process", "stop the process that has it open"
    elif "unable to open" in said:
        remedy = "check the file, the directory and their permissions"
    return StateFileError(path, said, remedy)
