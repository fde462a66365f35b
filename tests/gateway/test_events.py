"""Structured tunnel-event logs: one JSON line per event."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from snaptun.core.addressing import EndhostAddress
from snaptun.gateway.events import Event, EventLog

FIXED = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_line_per_event() -> None:
    out = io.StringIO()
    log = EventLog(out, clock=lambda: FIXED)
    log.emit(
        Event.ASSIGNED,
        remote="[::1]:50123",
        identity="abc",
        address=EndhostAddress.parse("1-ff00:0:110,10.0.0.2"),
    )
    log.emit(Event.CLOSED, remote="127.0.0.1:1", code=4, reason="session expired")
    assert out.getvalue().count("\n") == 2
    first, second = lines(out)
    assert first == {
        "ts": "2025-01-02T03:04:05.678Z",
        "event": "assigned",
        "remote": "[::1]:50123",
        "identity": "abc",
        "address": "1-ff00:0:110,10.0.0.2",
    }
    assert second["event"] == "closed"
    assert second["code"] == 4


def test_ts_and_event_come_first() -> None:
    out = io.StringIO()
    EventLog(out).emit("refused", reason="bad token")
    assert out.getvalue().startswith('{"ts":"')
    record = lines(out)[0]
    assert list(record)[:2] == ["ts", "event"]
    stamp = datetime.fromisoformat(str(record["ts"]))
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - stamp) < timedelta(seconds=5)


def test_timestamps_are_converted_to_utc() -> None:
    out = io.StringIO()
    plus_two = datetime(2025, 1, 2, 5, 0, tzinfo=timezone(timedelta(hours=2)))
    EventLog(out, clock=lambda: plus_two).emit("gateway_started")
    assert lines(out)[0]["ts"] == "2025-01-02T03:00:00.000Z"


def test_values_made_json_safe() -> None:
    out = io.StringIO()
    EventLog(out).emit(
        "assigned",
        addresses=[ipaddress.ip_address("10.0.0.2"), ipaddress.ip_address("fd00::2")],
        ok=True,
        hold=1.5,
        inf=float("inf"),
        raw=b"\x00",
        skipped=None,
    )
    record = lines(out)[0]
    assert record["addresses"] == ["10.0.0.2", "fd00::2"]
    assert record["ok"] is True
    assert record["hold"] == 1.5
    assert record["inf"] == "inf"
    assert record["raw"] == "b'\\x00'"
    assert "skipped" not in record


def test_peer_text_cannot_break_the_line() -> None:
    out = io.StringIO()
    EventLog(out).emit("refused", identity='evil\n{"event":"accepted"}\r\u2028')
    assert out.getvalue().count("\n") == 1
    assert lines(out)[0]["identity"] == 'evil\n{"event":"accepted"}\r\u2028'


def test_ts_is_reserved() -> None:
    with pytest.raises(ValueError, match="ts"):
        EventLog(io.StringIO()).emit("closed", ts="now")


def test_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("snaptun.test.events")
    with caplog.at_level(logging.INFO, logger="snaptun.test.events"):
        EventLog(logger=logger).emit(Event.RENEWED, identity="id")
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert json.loads(record.getMessage())["event"] == "renewed"


def test_stream_and_logger_together(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    logger = logging.getLogger("snaptun.test.events2")
    with caplog.at_level(logging.INFO, logger="snaptun.test.events2"):
        EventLog(out, logger).emit("expired")
    assert len(caplog.records) == 1
    assert lines(out)[0]["event"] == "expired"


def test_defaults_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    EventLog().emit(Event.STOPPING, tunnels=0)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["event"] == "stopping"


def test_a_failing_stream_never_raises() -> None:
    out = io.StringIO()
    out.close()
    log = EventLog(out)
    log.emit("closed")
    assert log.write_errors == 1


def test_event_names() -> None:
    assert {str(e) for e in Event} == {
        "accepted",
        "assigned",
        "renewed",
        "expired",
        "replaced",
        "kicked",
        "moved",
        "closed",
        "refused",
        "started",
        "stopping",
        "stopped",
        "keys_reloaded",
    }


def test_the_names_are_those_the_gateway_emits() -> None:
    source = (Path(__file__).resolve().parents[2] / "src/snaptun/gateway/service.py").read_text()
    emitted = set(re.findall(r'events\.emit\(\s*"(\w+)"', source))
    assert emitted == {str(e) for e in Event}


@pytest.mark.parametrize(
    ("level", "written"),
    [(logging.DEBUG, True), (logging.INFO, True), (logging.WARNING, False), (logging.ERROR, False)],
)
def test_a_level_above_info_silences_the_stream(level: int, written: bool) -> None:
    out = io.StringIO()
    EventLog(out, level=level).emit("accepted", remote="[::1]:1")
    assert bool(out.getvalue()) is written
