"""The invariants a soak checks, from outside the gateway: its grant file and its event log.

Pure functions of a file or of log lines, so that a unit test can hand them a
deliberately broken store or log (tests/bench/test_soak_invariants.py).

* :func:`check_store` opens ``grants.sqlite3`` read-only: ``PRAGMA
  integrity_check`` must answer ``ok``; no address may be stored for two
  identities (the schema's UNIQUE constraint says so, the check does not rely
  on it); optionally, each identity's stored address must be the one its
  clients were given (while the hold outlives the run, a grant never moves).
* :func:`check_events` replays the gateway's tunnel events (``accepted``, then
  ``closed``/``replaced``/``expired`` of the same remote): at no ``accepted``
  may the address be live on a tunnel of another identity (a double grant),
  and one identity's tunnels must all get one address.

Invariant violations are returned as sentences; an empty list means none.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["check_events", "check_store", "read_events"]

_ENDS = {"closed", "replaced", "expired"}


def check_store(
    path: Path, expected: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """``PRAGMA integrity_check`` and the grant invariants of ``path``; (report, violations).

    ``expected`` maps identities to the address their clients were given (the
    store keeps the host part, ``10.0.0.2`` of ``1-ff00:0:110,10.0.0.2``); a
    stored grant of one of them with another address is a violation.
    """
    violations: list[str] = []
    report: dict[str, Any] = {"integrity_check": None, "rows": 0}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return report, [f"{path}: cannot open: {exc}"]
    try:
        integrity = [row[0] for row in db.execute("PRAGMA integrity_check")]
        report["integrity_check"] = "ok" if integrity == ["ok"] else integrity[:5]
        if integrity != ["ok"]:
            violations.append(f"integrity_check: {integrity[:5]}")
        rows = list(db.execute("SELECT identity, address, state FROM grants"))
    except sqlite3.Error as exc:
        return report, [*violations, f"{path}: cannot read: {exc}"]
    finally:
        db.close()
    report["rows"] = len(rows)
    report["states"] = dict(Counter(state for _, _, state in rows))
    by_address: dict[str, list[str]] = {}
    for identity, address, _ in rows:
        by_address.setdefault(address, []).append(identity)
    for address, owners in sorted(by_address.items()):
        if len(owners) > 1:
            violations.append(f"double grant: {address} stored for {sorted(owners)}")
    for identity, address, _ in rows:
        want = (expected or {}).get(identity)
        if want is not None and address != want.rpartition(",")[2]:
            violations.append(f"grant moved: {identity} stored with {address}, given {want}")
    return report, violations


def read_events(text: str) -> list[dict[str, Any]]:
    """The JSON event lines of a gateway log (other lines skipped)."""
    events = []
    for line in text.splitlines():
        if line.startswith('{"ts"'):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by kill -9
    return events


def check_events(events: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Replay tunnel events; (counts, violations): double grants and identities that moved."""
    live: dict[str, tuple[str, str]] = {}  # remote -> (identity, address)
    addresses: dict[str, set[str]] = {}
    counts: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    violations: list[str] = []
    for event in events:
        kind = str(event.get("event"))
        counts[kind] += 1
        remote = str(event.get("remote"))
        if kind == "started":
            live.clear()  # a restarted gateway: nothing is live any more
        elif kind == "accepted":
            identity, address = str(event.get("identity")), str(event.get("address"))
            for other, (owner, held) in live.items():
                if held == address and owner != identity and other != remote:
                    violations.append(
                        f"double grant at {event.get('ts')}: {address} live for {owner}"
                        f" ({other}) and accepted for {identity} ({remote})"
                    )
            live[remote] = (identity, address)
            addresses.setdefault(identity, set()).add(address)
        elif kind in _ENDS:
            live.pop(remote, None)
            codes[str(event.get("code"))] += 1
    for identity, seen in sorted(addresses.items()):
        if len(seen) > 1:
            violations.append(f"identity {identity} was given {sorted(seen)}")
    report = {
        "events": dict(counts),
        "end_codes": dict(codes),
        "identities": len(addresses),
        "addresses": len({a for seen in addresses.values() for a in seen}),
    }
    return report, violations
