"""Reliability soak scenarios against a real gateway process (``scripts/soak``).

One module per scenario, each with ``SCALES`` (``smoke``: a few seconds, run
by tests/bench/test_soak_smoke.py; ``full``: the figures in
docs/RELIABILITY.md, each under ~3 min) and ``async run(scale, work) -> dict``,
which prints nothing and returns one JSON-able result with a ``verdict``
(``pass``/``fail``) and the ``reasons`` of a fail. The shared machinery is in
:mod:`bench.soak.harness`, the invariant checks in :mod:`bench.soak.invariants`.
"""

from __future__ import annotations

SCENARIOS = ("flood", "bogus", "slow", "churn", "kill9", "idle")
"""Scenario names, each a module of this package, in the order ``all`` runs them."""
