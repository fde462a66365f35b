"""Rendezvous hashing: the documented weight, a deterministic order, stability and spread."""

from __future__ import annotations

import hashlib
import re
import struct
import uuid
from collections import Counter

import pytest

from snaptun.core.rendezvous import rendezvous_order, rendezvous_weight, token_identity
from snaptun.core.tokens import SnapTokenClaims, generate_signing_key, mint_token

FLEET = [f"192.0.2.{i}:4433" for i in range(1, 6)]
NAMESPACE = uuid.UUID("2b0c7f4e-61d3-4e55-8a0f-3c9d1e7b5a40")
IDENTITIES = [str(uuid.uuid5(NAMESPACE, str(i))) for i in range(5000)]


def test_weight_is_the_documented_sha256_prefix() -> None:
    identity, gateway = "0b5e2d6a-53c4-4c36-9a34-8f6f3f1f7c11", "[2001:db8::1]:4433"
    data = struct.pack(">I", len(identity)) + identity.encode() + gateway.encode()
    (expected,) = struct.unpack(">Q", hashlib.sha256(data).digest()[:8])
    assert rendezvous_weight(identity, gateway) == expected


def test_the_length_prefix_keeps_identity_and_gateway_apart() -> None:
    assert rendezvous_weight("ab", "c:1") != rendezvous_weight("a", "bc:1")


def test_order_is_deterministic_and_independent_of_the_listing() -> None:
    for identity in IDENTITIES[:200]:
        order = rendezvous_order(identity, FLEET)
        assert sorted(order) == sorted(FLEET)
        assert rendezvous_order(identity, list(reversed(FLEET))) == order
        weights = [rendezvous_weight(identity, g) for g in order]
        assert weights == sorted(weights, reverse=True)


def test_removing_a_gateway_moves_only_its_own_clients() -> None:
    gone = FLEET[2]
    rest = [g for g in FLEET if g != gone]
    moved = 0
    for identity in IDENTITIES:
        before = rendezvous_order(identity, FLEET)
        after = rendezvous_order(identity, rest)
        assert after == [g for g in before if g != gone]  # the relative order is untouched
        if before[0] == gone:
            moved += 1
            assert after[0] == before[1]  # to its own second choice
        else:
            assert after[0] == before[0]
    assert 0 < moved < len(IDENTITIES)


def test_clients_spread_evenly_over_the_fleet() -> None:
    for size in (2, 3, 5):
        fleet = FLEET[:size]
        counts = Counter(rendezvous_order(i, fleet)[0] for i in IDENTITIES)
        share = len(IDENTITIES) / size
        # fixed identities, so deterministic; the bound is ~5 standard deviations wide
        assert set(counts) == set(fleet)
        assert all(abs(n - share) < 0.1 * share for n in counts.values()), counts


def test_bad_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="no gateway"):
        rendezvous_order("x", [])
    with pytest.raises(ValueError, match=re.escape("listed twice: 192.0.2.1:4433")):
        rendezvous_order("x", [FLEET[0], FLEET[1], FLEET[0]])


def test_a_snap_token_stands_for_its_pssid() -> None:
    key = generate_signing_key()
    pssid = uuid.UUID("0B5E2D6A-53C4-4C36-9A34-8F6F3F1F7C11")
    first = mint_token(key, SnapTokenClaims(pssid, 2**40))
    renewed = mint_token(generate_signing_key(), SnapTokenClaims(pssid, 2**41))
    assert token_identity(first) == str(pssid)  # canonical lower-case form
    assert token_identity(renewed + "\n") == str(pssid)  # a new token keeps the gateway


@pytest.mark.parametrize(
    "token",
    [
        "ANAPAYA",
        "a.b.c",
        "a.!!!.c",
        "e30.e30.e30",  # {} claims
        "e30.WzFd.e30",  # a list, not an object
        "e30.eyJwc3NpZCI6IDF9.e30",  # pssid is a number
        "e30.eyJwc3NpZCI6ICJub3QtYS11dWlkIn0.e30",  # pssid is no UUID
    ],
)
def test_a_token_without_a_readable_pssid_stands_for_itself(token: str) -> None:
    identity = token_identity(token)
    assert identity == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert token not in identity
