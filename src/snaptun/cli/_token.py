"""``snaptun token``: make an Ed25519 signing key and issue SNAP tokens with it.

``snaptun token keygen --out DIR`` writes ``signing-key.pem`` (private, mode
0600) and ``signing-key.pub.pem`` and prints their paths as one JSON line.
``snaptun token issue`` prints one SNAP token (an EdDSA JWT) on stdout, signed
by ``--key``, or by the dev key of the gateway's state directory. Errors go
to stderr with exit code 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from snaptun.cli._common import emit
from snaptun.core.tokens import MAX_UINT64, SnapTokenClaims, generate_signing_key, mint_token
from snaptun.errors import SnaptunError
from snaptun.gateway.state_dir import StateFiles, default_state_dir
from snaptun.keyfiles import load_private_key, write_private_key, write_public_key

__all__ = ["register"]

DEFAULT_TTL = 3600.0


class _Failure(SnaptunError):
    """A refusal with a message for the user."""


def _ttl(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seconds {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"invalid seconds {text!r}: must be positive")
    return value


def _pssid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid pssid {text!r}: not a UUID") from None


def register(commands: Any) -> None:
    """Add the ``token`` subcommand (``keygen``, ``issue``) to the ``snaptun`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "token",
        help="make signing keys and issue SNAP tokens",
        description="Make an Ed25519 token-signing key, or issue a SNAP token (EdDSA JWT).",
    )
    actions = parser.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    keygen = actions.add_parser(
        "keygen",
        help="write a new Ed25519 signing key pair",
        description="Write signing-key.pem (Ed25519 private key, mode 0600) and "
        "signing-key.pub.pem into DIR; print their paths as one JSON line.",
    )
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder")
    keygen.add_argument("--force", action="store_true", help="overwrite existing key files")
    keygen.set_defaults(run=_run_keygen)

    issue = actions.add_parser(
        "issue",
        help="print a SNAP token",
        description="Print a SNAP token signed with --key, or by default with the dev "
        "signing key of the gateway's state directory.",
    )
    source = issue.add_mutually_exclusive_group()
    source.add_argument("--key", type=Path, metavar="PRIVATE_PEM", help="Ed25519 private key")
    source.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=f"use the gateway's dev key in DIR (default {default_state_dir()})",
    )
    issue.add_argument(
        "--pssid", type=_pssid, metavar="UUID", help="identity of the token (default: random)"
    )
    issue.add_argument(
        "--ttl",
        type=_ttl,
        default=DEFAULT_TTL,
        metavar="SECS",
        help=f"lifetime in seconds (default {DEFAULT_TTL:.0f})",
    )
    issue.set_defaults(run=_run_issue)


def _fail(command: str, exc: _Failure) -> int:
    print(f"snaptun token {command}: {exc}", file=sys.stderr)
    return 1


def _run_keygen(args: argparse.Namespace) -> int:
    try:
        emit(keygen(args.out, force=args.force))
    except _Failure as exc:
        return _fail("keygen", exc)
    return 0


def keygen(folder: Path, *, force: bool = False) -> dict[str, str]:
    """Write a fresh key pair into ``folder``; the paths by role."""
    names = StateFiles(folder)
    private, public = names.signing_key, names.signing_public_key
    if not force:
        existing = [str(p) for p in (private, public) if p.exists()]
        if existing:
            raise _Failure(f"{', '.join(existing)} already exists; pass --force to overwrite")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = generate_signing_key()
        write_private_key(key, private)
        write_public_key(key.public_key(), public)
    except OSError as exc:
        raise _Failure(f"cannot write the key: {exc}") from exc
    return {"private_key": str(private), "public_key": str(public)}


def _run_issue(args: argparse.Namespace) -> int:
    try:
        token = issue(args.key, args.state_dir, pssid=args.pssid, ttl=args.ttl)
    except _Failure as exc:
        return _fail("issue", exc)
    sys.stdout.write(token + "\n")
    sys.stdout.flush()
    return 0


def issue(
    key_file: Path | None,
    state_dir: Path | None,
    *,
    pssid: uuid.UUID | None = None,
    ttl: float = DEFAULT_TTL,
) -> str:
    """A token signed with ``key_file``, or with the dev key of ``state_dir`` (or the default)."""
    if key_file is None:
        key_file = StateFiles(state_dir or default_state_dir()).signing_key
        if not key_file.exists():
            raise _Failure(
                f"no gateway signing key at {key_file}: start `snaptun serve` once or pass --key"
            )
    try:
        key = load_private_key(key_file)
    except (OSError, ValueError, TypeError) as exc:
        raise _Failure(f"cannot use {key_file} as an Ed25519 private key: {exc}") from exc
    exp = math.ceil(time.time() + ttl)
    if exp > MAX_UINT64:
        raise _Failure(f"--ttl {ttl:g} puts the expiry beyond 2^64-1, which no server accepts")
    return mint_token(key, SnapTokenClaims(pssid or uuid.uuid4(), exp))
