"""The soak's invariant checks (bench/soak/invariants.py) find what they are meant to find."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.soak.invariants import check_events, check_store, read_events

from snaptun.gateway.store import GrantStore

A, B = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


def grants_without_unique(path: Path, rows: list[tuple[str, str, str]]) -> None:
    """A grants table like the gateway's but without its UNIQUE constraint (a broken store)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE grants (identity TEXT, address TEXT, state TEXT, hold_until REAL)")
        db.executemany("INSERT INTO grants VALUES (?, ?, ?, NULL)", rows)


def test_a_clean_store_of_the_gateway_passes(tmp_path: Path) -> None:
    GrantStore(tmp_path / "grants.sqlite3").close()
    report, violations = check_store(tmp_path / "grants.sqlite3")
    assert violations == []
    assert report["integrity_check"] == "ok"


def test_an_address_stored_for_two_identities_is_a_double_grant(tmp_path: Path) -> None:
    path = tmp_path / "grants.sqlite3"
    grants_without_unique(path, [(A, "10.0.0.2", "active"), (B, "10.0.0.2", "held")])
    _, violations = check_store(path)
    assert len(violations) == 1
    assert "double grant: 10.0.0.2" in violations[0]


def test_a_grant_that_moved_from_what_the_client_was_given_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "grants.sqlite3"
    grants_without_unique(path, [(A, "10.0.0.3", "active")])
    assert check_store(path, {A: "1-ff00:0:110,10.0.0.3"})[1] == []
    _, violations = check_store(path, {A: "1-ff00:0:110,10.0.0.2"})
    assert violations == [f"grant moved: {A} stored with 10.0.0.3, given 1-ff00:0:110,10.0.0.2"]


def test_a_damaged_file_fails_the_integrity_check_or_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "grants.sqlite3"
    grants_without_unique(
        path, [(f"id{n}", f"10.0.{n // 250}.{n % 250}", "held") for n in range(3000)]
    )
    data = bytearray(path.read_bytes())
    for page in range(1, 6):  # the b-tree page headers of pages 2..6: an invalid page type
        data[4096 * page : 4096 * page + 12] = b"\x07" * 12
    path.write_bytes(bytes(data))
    report, violations = check_store(path)
    assert violations
    assert report["integrity_check"] != "ok"


def event(kind: str, remote: str, identity: str = A, address: str = "ia,10.0.0.2") -> str:
    return (
        f'{{"ts":"t","event":"{kind}","remote":"{remote}",'
        f'"identity":"{identity}","address":"{address}"}}'
    )


def test_an_address_accepted_for_another_identity_while_live_is_a_double_grant() -> None:
    log = "\n".join([event("accepted", "r1", A), "not json", event("accepted", "r2", B)])
    _, violations = check_events(read_events(log))
    assert any(v.startswith("double grant") for v in violations)


def test_newest_wins_within_one_identity_and_ends_free_the_address() -> None:
    log = "\n".join(
        [
            event("accepted", "r1", A),
            event("accepted", "r2", A),  # newest wins: not a violation
            event("replaced", "r1", A),
            event("closed", "r2", A),
            '{"ts":"t","event":"started"}',
            event("accepted", "r3", A),
        ]
    )
    report, violations = check_events(read_events(log))
    assert violations == []
    assert report["events"]["accepted"] == 3


def test_an_identity_given_two_addresses_is_reported() -> None:
    log = "\n".join(
        [
            event("accepted", "r1", A, "ia,10.0.0.2"),
            event("closed", "r1", A),
            event("accepted", "r2", A, "ia,10.0.0.3"),
        ]
    )
    _, violations = check_events(read_events(log))
    assert violations == [f"identity {A} was given ['ia,10.0.0.2', 'ia,10.0.0.3']"]
