"""``snaptun token``: make an Ed25519 signing key and issue SNAP tokens with it.

``snaptun token keygen --out DIR`` writes ``signing-key.pem`` (private, mode
0600) and ``signing-key.pub.pem`` and prints their paths as one JSON line;
with ``--jwks [FILE]`` it also adds the public key (kid ``--kid`` or its
thumbprint) to a JWK Set for ``serve --token-jwks``. ``snaptun token issue``
prints one SNAP token (an EdDSA JWT) on stdout, signed by ``--key``, or by the
dev key of the gateway's state directory, with ``--kid``, ``--audience`` and
``--issuer`` as the gateway requires; ``--connect`` prints a ready ``snaptun
connect`` command instead. Errors go to stderr with exit code 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from snaptun.cli._common import emit
from snaptun.core.tokens import (
    MAX_UINT64,
    SnapTokenClaims,
    TrustedKey,
    generate_signing_key,
    jwks_document,
    key_thumbprint,
    mint_token,
    parse_jwks,
)
from snaptun.errors import SnaptunError
from snaptun.gateway.service import CONNECT_FILE
from snaptun.gateway.state_dir import StateFiles, default_state_dir
from snaptun.keyfiles import load_private_key, load_public_key, write_private_key, write_public_key

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
    keygen.add_argument(
        "--jwks",
        type=Path,
        nargs="?",
        const=_JWKS_IN_OUT,
        metavar="FILE",
        help="also add the public key to this JWK Set (default DIR/jwks.json; created if "
        "missing, other keys kept: rotation) for serve --token-jwks",
    )
    keygen.add_argument(
        "--kid", metavar="K", help="key id in the JWK Set (default: the key's RFC 7638 thumbprint)"
    )
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
    issue.add_argument("--kid", metavar="K", help="key id for the header (JWK Set keys)")
    issue.add_argument("--audience", metavar="AUD", help="aud claim (serve --token-audience)")
    issue.add_argument("--issuer", metavar="ISS", help="iss claim (serve --token-issuer)")
    issue.add_argument(
        "--connect",
        action="store_true",
        help="print a ready `snaptun connect` command with the token, for the gateway of "
        "--state-dir (it must have started once)",
    )
    issue.set_defaults(run=_run_issue)


def _fail(command: str, exc: _Failure) -> int:
    print(f"snaptun token {command}: {exc}", file=sys.stderr)
    return 1


_JWKS_IN_OUT = Path("\0jwks.json")  # --jwks without FILE: DIR/jwks.json


def _run_keygen(args: argparse.Namespace) -> int:
    try:
        if args.kid is not None and args.jwks is None:
            raise _Failure("--kid needs --jwks")  # noqa: TRY301
        paths = keygen(args.out, force=args.force)
        if args.jwks is not None:
            jwks = args.out / "jwks.json" if args.jwks == _JWKS_IN_OUT else args.jwks
            paths.update(add_to_jwks(Path(paths["public_key"]), jwks, args.kid))
        emit(paths)
    except _Failure as exc:
        return _fail("keygen", exc)
    return 0


def add_to_jwks(public_pem: Path, jwks: Path, kid: str | None) -> dict[str, str]:
    """Add the key of ``public_pem`` to the JWK Set ``jwks`` (made if missing); the kid used."""
    key = load_public_key(public_pem)
    kid = kid or key_thumbprint(key)
    keys: list[TrustedKey] = []
    try:
        if jwks.exists():
            keys = list(parse_jwks(jwks.read_bytes()).keys)
        document = jwks_document([*keys, TrustedKey(key, kid)])
        parse_jwks(json.dumps(document))  # the kid is new, the set valid
    except OSError as exc:
        raise _Failure(f"cannot read {jwks}: {exc.strerror}") from exc
    except ValueError as exc:
        raise _Failure(f"cannot add the key to {jwks}: {exc}") from exc
    temporary = jwks.with_name(jwks.name + ".tmp")
    try:
        temporary.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(temporary, jwks)  # a gateway polling the file never sees half of it
    except OSError as exc:
        raise _Failure(f"cannot write {jwks}: {exc.strerror}") from exc
    return {"jwks": str(jwks), "kid": kid}


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
    extra = {
        name: value
        for name, value in (("aud", args.audience), ("iss", args.issuer))
        if value is not None
    }
    try:
        token = issue(
            args.key, args.state_dir, pssid=args.pssid, ttl=args.ttl, kid=args.kid, extra=extra
        )
        line = connect_command(args.state_dir, token) if args.connect else token
    except _Failure as exc:
        return _fail("issue", exc)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return 0


def connect_command(state_dir: Path | None, token: str) -> str:
    """``snaptun connect`` to the gateway of ``state_dir`` with ``token``, as one shell line."""
    path = (state_dir or default_state_dir()) / CONNECT_FILE
    try:
        record = json.loads(path.read_text())
        address, fingerprint = str(record["address"]), str(record["fingerprint"])
    except FileNotFoundError:
        raise _Failure(f"no {path}: start `snaptun serve` with this state directory once") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _Failure(f"cannot read {path}: {exc}") from exc
    return shlex.join(
        ["snaptun", "connect", address, "--fingerprint", fingerprint, "--token", token]
    )


def issue(
    key_file: Path | None,
    state_dir: Path | None,
    *,
    pssid: uuid.UUID | None = None,
    ttl: float = DEFAULT_TTL,
    kid: str | None = None,
    extra: dict[str, object] | None = None,
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
    return mint_token(key, SnapTokenClaims(pssid or uuid.uuid4(), exp), kid=kid, extra=extra)
