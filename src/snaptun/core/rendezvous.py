"""Rendezvous (highest-random-weight) hashing: which gateway of a fleet a client prefers.

Every client ranks the same list of gateways by a weight computed from its
identity and each gateway's name, and tries them best first. Clients spread
evenly over the fleet without a balancer, and removing a gateway moves only
the clients whose first choice it was (each to its own second choice); adding
one takes a fair share from every other gateway.

The weight of gateway ``g`` for identity ``i`` is the first 8 bytes, big-endian,
of ``SHA-256(len(i) as 4 bytes big-endian || i || g)``, both strings UTF-8.
It is stable across processes, machines and versions (Python's ``hash()`` is
salted per process and would not do). Ties, 2^-64 unlikely, go to the smaller
name. Gateways are named as the client was told them (``IP:PORT`` or
``HOST:PORT``, IPv6 in brackets, see :func:`snaptun.netaddr.format_socket_address`),
so clients must spell a fleet the same way to agree on an order: a host name
is hashed as written, not resolved.

The identity is the token's ``pssid`` claim (the identity a gateway keys its
grants by), read without verifying the signature: the client holds no key to
verify with, and a forged claim only changes which gateway the forger tries
first. A token without a readable ``pssid`` (not a JWT, or a claim that is no
UUID) stands for itself: its identity is ``sha256:`` and the hex SHA-256 of
the token, so the bearer secret never appears where an identity is printed;
such a client moves when its token changes. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Sequence

__all__ = ["rendezvous_order", "rendezvous_weight", "token_identity"]


def rendezvous_weight(identity: str, gateway: str) -> int:
    """The weight (0 to 2^64-1) of ``gateway`` for ``identity``; the highest is preferred."""
    key = identity.encode()
    digest = hashlib.sha256(len(key).to_bytes(4, "big") + key + gateway.encode()).digest()
    return int.from_bytes(digest[:8], "big")


def rendezvous_order(identity: str, gateways: Sequence[str]) -> list[str]:
    """``gateways`` best first for ``identity``; ValueError on an empty list or a duplicate."""
    if not gateways:
        raise ValueError("no gateway to choose from")
    if len(set(gateways)) != len(gateways):
        duplicates = sorted({g for g in gateways if gateways.count(g) > 1})
        raise ValueError(f"gateway listed twice: {', '.join(duplicates)}")
    return sorted(gateways, key=lambda g: (-rendezvous_weight(identity, g), g))


def token_identity(token: str) -> str:
    """The rendezvous identity of a bearer token: its ``pssid``, unverified (see module)."""
    token = token.strip()
    pssid = _unverified_pssid(token)
    if pssid is not None:
        return pssid
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def _unverified_pssid(token: str) -> str | None:
    """The ``pssid`` claim of a JWT in canonical UUID form, or None if there is none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return None
    pssid = claims.get("pssid") if isinstance(claims, dict) else None
    if not isinstance(pssid, str):
        return None
    try:
        return str(uuid.UUID(pssid))
    except ValueError:
        return None
