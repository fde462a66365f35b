"""Structured tunnel-event logs: one JSON object per line, one line per event.

Events are the tunnel's life (accepted, assigned, renewed, expired, replaced, kicked,
closed, refused) and the gateway's (started, stopping, stopped); nothing is
logged per packet. Each line carries ``ts`` (ISO 8601, UTC, milliseconds,
``Z``), ``event`` and the fields that apply, e.g.::

    {"ts":"2025-01-01T12:00:00.000Z","event":"accepted","remote":"[::1]:50123",
     "identity":"3f2a...","address":"1-ff00:0:110,10.0.0.2"}

Events have the severity INFO: a log level above it (``warning``) silences them.

JSON escaping keeps every event on one line, whatever a peer put in a field.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import TextIO

__all__ = ["Event", "EventLog"]


class Event(StrEnum):
    """The event names the gateway emits (any string is accepted by :meth:`EventLog.emit`)."""

    ACCEPTED = "accepted"  # a QUIC connection finished its tunnel setup (with its address)
    ASSIGNED = "assigned"  # a later request moved the tunnel to another address
    RENEWED = "renewed"  # session renewed with a fresh token
    EXPIRED = "expired"  # session ran out; the tunnel is closed
    REPLACED = "replaced"  # a newer tunnel of the same identity took the address over
    KICKED = "kicked"  # an operator closed the tunnel (snaptun status --kick)
    MOVED = "moved"  # another gateway of a shared store took an identity's grant
    CLOSED = "closed"  # tunnel ended (close code, reason, the tunnel's counters)
    REFUSED = "refused"  # setup refused (reason, close code)
    STARTED = "started"  # the gateway listens
    STOPPING = "stopping"  # the gateway was asked to stop
    STOPPED = "stopped"  # the gateway has shut down
    KEYS_RELOADED = "keys_reloaded"  # the token key files were read again (SIGHUP or a change)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _json_safe(value: object) -> object:
    """JSON scalars as they are; lists and tuples item by item; anything else as str()."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return str(value)


class EventLog:
    """Writes events to ``stream`` and/or ``logger`` (INFO); with neither, to stderr.

    ``level`` is the least severity written to ``stream``: above INFO (e.g.
    ``logging.WARNING``) no event is written there; the logger filters by its own level.
    A failing stream (closed, broken pipe) never raises into the gateway; the
    lost lines are counted in :attr:`write_errors`.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        logger: logging.Logger | None = None,
        *,
        clock: Callable[[], datetime] = _utcnow,
        level: int = logging.INFO,
    ) -> None:
        self._stream = stream if stream is not None or logger is not None else sys.stderr
        if level > logging.INFO:
            self._stream = None
        self._logger = logger
        self._clock = clock
        self.write_errors = 0

    def emit(self, event: str, **fields: object) -> None:
        """Log one event; fields whose value is None are left out."""
        if "ts" in fields:
            raise ValueError("'ts' is set by EventLog")
        stamp = self._clock().astimezone(UTC).isoformat(timespec="milliseconds")
        record: dict[str, object] = {"ts": stamp.replace("+00:00", "Z"), "event": str(event)}
        for name, value in fields.items():
            if value is not None:
                record[name] = _json_safe(value)
        line = json.dumps(record, separators=(",", ":"))
        if self._stream is not None:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                self.write_errors += 1
        if self._logger is not None:
            self._logger.info("%s", line)
