"""The request reader's work is linear in its input, whatever the pieces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snaptun.core import control
from snaptun.core.control import RequestKind, RequestReader, encode_request
from snaptun.errors import InvalidRequest, RequestClosedPrematurely

RENEW = encode_request(RequestKind.SESSION_RENEWAL, "tok")


class CountingScan:
    """Counts the bytes the head regex is run over."""

    def __init__(self) -> None:
        self.bytes = 0
        self.original = control._parse_head

    def __call__(self, buf: bytes) -> object:
        self.bytes += len(buf)
        return self.original(buf)


@pytest.mark.parametrize("piece", [b"\n", b"a", b"\r\n", b"x\n"])
def test_4095_one_piece_feeds_parse_at_most_once(
    piece: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan = CountingScan()
    monkeypatch.setattr(control, "_parse_head", scan)
    reader = RequestReader()

    def feed_all() -> None:
        for _ in range(4096):
            reader.feed_data(piece)

    with pytest.raises(InvalidRequest, match="request too big"):
        feed_all()
    assert reader.head_parses <= 1
    assert scan.bytes <= 4096  # the regex saw the buffer once at most, not once per piece


def test_blank_lines_then_a_request_still_parse() -> None:
    reader = RequestReader()
    for _ in range(100):
        assert reader.feed_data(b"\r\n") is None
    request = None
    for byte in RENEW:
        request = reader.feed_data(bytes([byte]))
        if request is not None:
            break
    assert request is not None
    assert request.kind is RequestKind.SESSION_RENEWAL
    assert request.token == "tok"
    assert reader.head_parses == 1


def test_an_unparsable_head_waits_for_eof_without_reparsing() -> None:
    reader = RequestReader()
    assert reader.feed_data(b"GARBAGE LINE\n\n") is None
    for _ in range(500):
        assert reader.feed_data(b"\n\n") is None
    assert reader.head_parses == 1
    with pytest.raises(RequestClosedPrematurely):
        reader.feed_eof()


@given(st.lists(st.integers(min_value=1, max_value=len(RENEW)), max_size=40))
def test_any_split_gives_the_same_request_with_one_parse(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [RENEW[a:b] for a, b in zip([0, *points], [*points, len(RENEW)], strict=True)]
    reader = RequestReader()
    result = None
    for piece in pieces:
        if piece:
            result = reader.feed_data(piece)
    assert result is not None
    assert (result.kind, result.token) == (RequestKind.SESSION_RENEWAL, "tok")
    assert reader.head_parses == 1
