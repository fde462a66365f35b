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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from snaptun.core.tokens import generate_signing_key
from snaptun.errors import SnaptunError
from snaptun.gateway.store import GrantStoreError
from snaptun.keyfiles import load_private_key, load_public_key, write_private_key, write_public_key
from snaptun.tls import fingerprint_of, write_self_signed

__all__ = [
    "CONNECT_FILE",
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

CONNECT_FILE: Final = "connect.json"
"""In the state directory: where clients on this host reach the gateway, for
``snaptun token issue --connect`` (written at every start). Named here, not in
``gateway.service``, so that reading it does not load the QUIC stack."""

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
    def connect_info(self) -> Path:
        """Where clients reach the running gateway (:data:`CONNECT_FILE`, JSON)."""
        return self.root / CONNECT_FILE

    @property
    def grants_db(self) -> Path:
        """SQLite database of address grants and holds."""
        return self.root / "grants.sqlite3"

    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the generated certificate."""
        return fingerprint_of(self.cert.read_bytes())


def ensure_state(
    root: Path, *, certificate: bool = True, dev_key: bool = True
) -> tuple[StateFiles, list[Path]]:
    """Create the directory and whatever is missing; return the files and what was created.

    A pair is generated only when both halves are missing: one half alone
    means something was lost, and generating anew would silently replace the
    other (a pinned fingerprint, a key tokens were signed with). The one
    exception is a missing dev public key: it is derived from the private one.
    ``certificate``/``dev_key`` false: that pair is not used (``--cert``,
    ``--token-key``), so only a wholly missing dev key is still generated.
    """
    files = StateFiles(root)
    _make_dir(root)
    created: list[Path] = []
    if certificate and _missing_pair(files.cert, files.key, _TLS_REMEDY.format(files=files)):
        _create(files.key, lambda: write_self_signed(files.cert, files.key))
        created += [files.cert, files.key]
    private, public = files.signing_key, files.signing_public_key
    have = os.path.lexists(private), os.path.lexists(public)
    if have == (False, False):
        key = generate_signing_key()
        _create(private, lambda: write_private_key(key, private))
        _create(public, lambda: write_public_key(key.public_key(), public))
        created += [private, public]
    elif not dev_key:
        pass  # not used: a half or damaged pair is the operator's, left as it is
    elif have == (False, True):
        remedy = (
            f"restore it, or {_DEV_REMEDY.format(files=files)}, or give {public.name} "
            "with --token-key to run without the private key"
        )
        raise StateFileError(private, f"is missing while {public.name} is there", remedy)
    elif have == (True, False):  # derived from the private key: nothing is replaced
        load_token_keys([], dev=files)  # a damaged private key: one clear line
        derived = load_private_key(private).public_key()
        _create(public, lambda: write_public_key(derived, public))
        created.append(public)
    return files, created


_TLS_REMEDY = (
    "delete {files.cert.name} and {files.key.name} to generate a new self-signed certificate "
    "(clients pinning the old fingerprint must be updated)"
)
_DEV_REMEDY = (
    "delete {files.signing_key.name} and {files.signing_public_key.name} to generate a new "
    "dev key (tokens signed with the old one stop working)"
)


def _missing_pair(first: Path, second: Path, remedy: str) -> bool:
    """Both missing: generate them. One missing: refuse, so the other is not replaced."""
    there = [path for path in (first, second) if os.path.lexists(path)]
    if len(there) == 1:
        (gone,) = {first, second} - set(there)
        raise StateFileError(
            gone, f"is missing while {there[0].name} is there", f"restore it, or {remedy}"
        )
    return not there


def _make_dir(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError as exc:  # exist_ok covers directories only
        raise StateFileError(
            root, "is not a directory", "give a directory with --state-dir"
        ) from exc
    except OSError as exc:
        raise _os_error(root, "created", exc, "check its parent directory") from exc


def _create(path: Path, write: Callable[[], None]) -> None:
    try:
        write()
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else path
        raise _os_error(where, "written", exc, "check the state directory and free space") from exc


def _os_error(path: Path, done: str, exc: OSError, remedy: str) -> StateFileError:
    """``path cannot be <done>: <strerror>``; a permission problem says so as its remedy.

    Root ignores file modes, so this is what a gateway run as a service user meets.
    """
    if isinstance(exc, PermissionError):
        need = {
            "read": "read it: check its owner and mode",
            "created": f"create it: check the owner and mode of {path.parent}",
        }.get(done, "write it and the state directory: check their owners and modes")
        remedy = f"the user running the gateway must be able to {need}"
    return StateFileError(path, f"cannot be {done}: {exc.strerror}", remedy)


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
    _make_dir(root)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _os_error(path, "opened", exc, "it must be a file the gateway can write") from exc
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
        raise _os_error(path, "read", exc, remedy) from exc


def check_tls_files(cert: Path, key: Path, *, generated: bool) -> None:
    """Refuse a certificate or key that does not parse or match, before the QUIC library sees it.

    qh3 answers a bad PEM with a Rust panic (not even an ``Exception``), so
    the files are parsed with ``cryptography`` first.
    """
    if generated:
        remedy = _TLS_REMEDY.format(files=StateFiles(cert.parent))
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
    unusable = _unusable_tls_key(private)
    if unusable is not None:
        problem = (
            f"key type {unusable} is not supported: QUIC (TLS 1.3) signs only with {_TLS_KEY_TYPES}"
        )
        raise StateFileError(key, problem, remedy)
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*raw) != chain[0].public_key().public_bytes(*raw):
        raise StateFileError(key, f"does not belong to the certificate {cert}", remedy)


_TLS_KEY_TYPES = "RSA, ECDSA P-256, P-384, P-521 or Ed25519 keys"
_TLS_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def _unusable_tls_key(key: PrivateKeyTypes) -> str | None:
    """The key's type, if qh3 cannot serve with it; ``None`` if it can.

    qh3 raises for other curves and Ed448, accepts a PKCS#8 DSA key although
    TLS 1.3 has no DSA signature scheme, and panics on a traditional DSA PEM.
    """
    if isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return None if isinstance(key.curve, _TLS_CURVES) else f"ECDSA {key.curve.name}"
    kinds = {
        dsa.DSAPrivateKey: "DSA",
        ed448.Ed448PrivateKey: "Ed448",
        x25519.X25519PrivateKey: "X25519",
        x448.X448PrivateKey: "X448",
    }
    return next((name for cls, name in kinds.items() if isinstance(key, cls)), "unknown")


def load_token_keys(paths: Sequence[Path], *, dev: StateFiles | None) -> list[Ed25519PublicKey]:
    """The token keys, each checked; ``dev``: they are the state directory's generated dev key."""
    if dev is not None:
        remedy = _DEV_REMEDY.format(files=dev)
        try:
            load_private_key(dev.signing_key)
        except OSError as exc:
            raise _os_error(dev.signing_key, "read", exc, remedy) from exc
        except _BAD_KEY_ERRORS as exc:
            raise StateFileError(dev.signing_key, "not an Ed25519 private key", remedy) from exc
    else:
        remedy = "give Ed25519 public keys in PEM with --token-key (snaptun token keygen makes one)"
    keys = []
    for path in paths:
        try:
            keys.append(load_public_key(path))
        except OSError as exc:
            raise _os_error(path, "read", exc, remedy) from exc
        except _BAD_KEY_ERRORS as exc:
            raise StateFileError(path, "not an Ed25519 key in PEM", remedy) from exc
    return keys


def grant_store_error(path: Path, exc: GrantStoreError) -> StateFileError:
    """One line for a grant store that cannot be opened: what SQLite said, and what to do."""
    said = re.sub(r"^\w+ failed: ", "", str(exc).removeprefix(f"grant store {path}: "))
    remedy = (
        "move it aside to start with no grants (held addresses are forgotten) "
        "or restore it from a backup"
    )
    if "not a database" in said:
        said = "not an SQLite database (damaged or overwritten)"
    elif "malformed" in said:
        said = f"damaged (SQLite: {said})"
    elif "locked" in said or "busy" in said:
        said, remedy = "locked by another process", "stop the process that has it open"
    elif "unable to open" in said:
        remedy = "it must be a file the gateway can read and write, in a directory it can write"
    elif "readonly" in said:
        said = "read-only for the gateway (it writes grants there and a journal beside it)"
        remedy = "the user running the gateway must be able to write it and its directory"
    return StateFileError(path, said, remedy)
