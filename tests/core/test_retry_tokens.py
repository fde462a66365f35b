"""Retry tokens: authenticated, bound to address, port and connection IDs, short-lived."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snaptun.core.admission import (
    AdmissionSettings,
    ConnectionGate,
    RetryTokens,
    initial_token,
    looks_like_initial,
)

KEY = bytes(range(32))
ODCID = bytes.fromhex("0102030405060708")
RSCID = bytes.fromhex("a1a2a3a4a5a6a7a8")


def tokens(lifetime: float = 10.0, key: bytes = KEY) -> RetryTokens:
    return RetryTokens(key, lifetime)


def test_a_token_is_valid_for_its_client_and_retry_cid() -> None:
    token = tokens().issue("192.0.2.1", 4433, ODCID, RSCID, now=100.0)
    assert tokens().check(token, "192.0.2.1", 4433, RSCID, now=100.5) == (ODCID, RSCID)
    assert tokens().check(token, "192.0.2.1", 4433, None, now=100.5) == (ODCID, RSCID)


@pytest.mark.parametrize(
    ("host", "port", "dcid"),
    [
        ("192.0.2.2", 4433, RSCID),  # another address
        ("192.0.2.1", 4434, RSCID),  # another port
        ("192.0.2.1", 4433, ODCID),  # not the DCID our Retry told the client to use
        ("::ffff:192.0.2.2", 4433, RSCID),
    ],
)
def test_a_token_is_refused_elsewhere(host: str, port: int, dcid: bytes) -> None:
    token = tokens().issue("192.0.2.1", 4433, ODCID, RSCID, now=100.0)
    assert tokens().check(token, host, port, dcid, now=100.5) is None


def test_a_token_expires_and_is_not_valid_before_it_was_issued() -> None:
    token = tokens(lifetime=2.0).issue("2001:db8::1", 9, ODCID, RSCID, now=50.0)
    assert tokens(lifetime=2.0).check(token, "2001:db8::1", 9, RSCID, now=52.0) is not None
    assert tokens(lifetime=2.0).check(token, "2001:db8::1", 9, RSCID, now=52.01) is None
    assert tokens(lifetime=2.0).check(token, "2001:db8::1", 9, RSCID, now=49.0) is None


def test_another_key_does_not_accept_it() -> None:
    token = tokens().issue("192.0.2.1", 4433, ODCID, RSCID, now=1.0)
    assert tokens(key=os.urandom(32)).check(token, "192.0.2.1", 4433, RSCID, now=1.0) is None


@given(st.data())
def test_any_changed_byte_invalidates_a_token(data: st.DataObject) -> None:
    token = bytearray(tokens().issue("192.0.2.1", 4433, ODCID, RSCID, now=1.0))
    at = data.draw(st.integers(0, len(token) - 1))
    token[at] ^= data.draw(st.integers(1, 255))
    assert tokens().check(bytes(token), "192.0.2.1", 4433, None, now=1.0) is None


@given(st.binary(max_size=120))
def test_forged_tokens_are_refused(token: bytes) -> None:
    assert tokens().check(token, "192.0.2.1", 4433, None, now=1.0) is None


def test_cut_and_extended_tokens_are_refused() -> None:
    token = tokens().issue("192.0.2.1", 4433, ODCID, RSCID, now=1.0)
    for bad in (token[:-1], token + b"\x00", token[:10], b""):
        assert tokens().check(bad, "192.0.2.1", 4433, None, now=1.0) is None


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        RetryTokens(b"short", 10.0)
    with pytest.raises(ValueError, match="20 bytes"):
        tokens().issue("192.0.2.1", 1, bytes(21), RSCID, now=0.0)
    with pytest.raises(ValueError, match="retry_token_lifetime"):
        AdmissionSettings(retry_token_lifetime=0.0)
    with pytest.raises(ValueError, match="retry_token_lifetime"):
        AdmissionSettings(retry_token_lifetime=float("nan"))


def initial_with_token(token: bytes, size: int = 1200) -> bytes:
    n = len(token)
    length = bytes([n]) if n < 64 else bytes([0x40 | n >> 8, n & 0xFF])
    head = b"\xc3\x00\x00\x00\x01\x08" + RSCID + b"\x08" + os.urandom(8) + length + token
    rest = size - len(head) - 2
    return head + bytes([0x40 | rest >> 8, rest & 0xFF]) + os.urandom(rest)


@pytest.mark.parametrize("size", [0, 1, 5, 63, 64, 300])
def test_the_token_of_an_initial_is_found(size: int) -> None:
    token = os.urandom(size)
    datagram = initial_with_token(token)
    assert looks_like_initial(datagram)
    assert initial_token(datagram) == token


def test_a_cut_token_is_none() -> None:
    datagram = bytearray(initial_with_token(b""))
    datagram[6 + 8 + 1 + 8] = 0x7F  # a 2-byte length of 0x3fxx bytes: beyond the datagram
    assert initial_token(bytes(datagram)) is None


def test_refusals_decided_outside_the_gate_are_counted() -> None:
    gate = ConnectionGate()
    gate.refuse("bad_retry_token")
    assert gate.refused["bad_retry_token"] == 1
    assert gate.admitted == 0
