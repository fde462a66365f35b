"""The connection gate: Initials only, a bound on half-open connections, per-source rates."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snaptun.core.admission import (
    AdmissionSettings,
    ConnectionGate,
    looks_like_initial,
    source_key,
)


def initial(size: int = 1200, version: bytes = b"\x00\x00\x00\x01", first: int = 0xC3) -> bytes:
    dcid = os.urandom(8)
    head = bytes([first]) + version + bytes([8]) + dcid + bytes([8]) + os.urandom(8) + b"\x00"
    rest = size - len(head) - 2
    return head + bytes([0x40 | rest >> 8, rest & 0xFF]) + os.urandom(rest)


def test_only_v1_client_initials_of_1200_bytes_or_more_look_like_initials() -> None:
    assert looks_like_initial(initial())
    assert not looks_like_initial(initial(1199))  # RFC 9000 §14.1
    assert not looks_like_initial(initial(version=b"\x00\x00\x00\x02"))
    assert not looks_like_initial(initial(first=0xE3))  # Handshake packet type
    assert not looks_like_initial(initial(first=0x43))  # short header
    too_long_cid = bytearray(initial())
    too_long_cid[5] = 21
    assert not looks_like_initial(bytes(too_long_cid))
    assert not looks_like_initial(b"")


@given(st.binary(max_size=1500))
def test_random_bytes_rarely_pass_and_never_crash(data: bytes) -> None:
    if looks_like_initial(data):
        assert len(data) >= 1200
        assert data[1:5] == b"\x00\x00\x00\x01"


def test_half_open_bound_is_never_exceeded() -> None:
    gate = ConnectionGate(AdmissionSettings(max_half_open=3, source_rate=1e6, source_burst=10**6))
    admitted = 0
    for _ in range(10):
        if gate.admit(initial(), "192.0.2.1", 0.0) is None:
            gate.opened()
            admitted += 1
        assert gate.half_open <= 3
    assert admitted == 3
    assert gate.refused["half_open_limit"] == 7
    gate.settled()
    assert gate.admit(initial(), "192.0.2.1", 0.0) is None


def test_sources_are_rate_limited_separately() -> None:
    gate = ConnectionGate(AdmissionSettings(source_rate=1.0, source_burst=2))
    results = [gate.admit(initial(), "192.0.2.1", 0.0) for _ in range(3)]
    assert results == [None, None, "source_rate"]
    assert gate.admit(initial(), "192.0.2.2", 0.0) is None  # another source has its own bucket
    assert gate.admit(initial(), "192.0.2.1", 1.0) is None  # refilled after a second


def test_garbage_is_refused_and_counted() -> None:
    gate = ConnectionGate()
    for _ in range(100):
        assert gate.admit(os.urandom(1300), "192.0.2.1", 0.0) in ("not_initial", None)
    assert gate.refused["not_initial"] >= 95
    assert gate.half_open == 0


def test_the_source_table_is_bounded() -> None:
    gate = ConnectionGate(AdmissionSettings(max_sources=100, source_rate=0.0, source_burst=1))
    for n in range(1000):
        gate.admit(initial(), f"10.{n // 256}.{n % 256}.1", 0.0)
    assert gate.tracked_sources == 100


def test_ipv6_sources_share_a_bucket_per_64() -> None:
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("not an address") == "not an address"


@pytest.mark.parametrize(
    "settings",
    [
        {"max_half_open": 0},
        {"source_burst": 0},
        {"max_sources": 0},
        {"source_rate": -1.0},
        {"source_rate": float("inf")},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        AdmissionSettings(**settings)  # type: ignore[arg-type]


def test_a_completed_handshake_gives_its_token_back() -> None:
    gate = ConnectionGate(AdmissionSettings(source_rate=0.0, source_burst=2))
    for _ in range(10):  # a source that completes every handshake is never limited
        assert gate.admit(initial(), "192.0.2.1", 0.0) is None
        gate.completed("192.0.2.1")
    assert gate.admit(initial(), "192.0.2.1", 0.0) is None
    assert gate.admit(initial(), "192.0.2.1", 0.0) is None
    assert gate.admit(initial(), "192.0.2.1", 0.0) == "source_rate"  # two left hanging
    gate.completed("198.51.100.9")  # an unknown source: nothing to give back


def test_retry_modes() -> None:
    token_less = initial()
    with_token = bytearray(token_less)
    with_token[6 + 8 + 1 + 8] = 0x05  # token length 5
    never = ConnectionGate(AdmissionSettings(retry="never"))
    assert never.wants_retry(token_less) is False
    assert never.wants_retry(bytes(with_token)) is True  # a token is always checked
    always = ConnectionGate(AdmissionSettings(retry="always"))
    assert always.wants_retry(token_less) is True
    auto = ConnectionGate(AdmissionSettings(max_half_open=4))
    assert auto.wants_retry(token_less) is False
    auto.opened()
    auto.opened()
    assert auto.wants_retry(token_less) is True  # half the bound in use
    with pytest.raises(ValueError, match="retry"):
        AdmissionSettings(retry="sometimes")  # type: ignore[arg-type]
