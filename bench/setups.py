"""Tunnel setups alone: setups/s and server CPU per setup, optionally profiled.

Run as ``.venv/bin/python bench/setups.py [--count N] [--profile DIR
[--py-spy PY_SPY]]``. It starts the gateway (``bench/gateway.py``'s
settings), ``snaptun echo-server`` and ``snaptun-ref server``, runs
``--warmup`` unmeasured setups against each (first connections pay one-time
costs), then ``snaptun-ref setup-bench`` with TLS resumption and without.
Besides setups/s it prints each server's user+system CPU time per setup
(from ``/proc``), which varies less than rates on a shared machine. With
``--store URL`` (repeatable) runs the gateway once per grant store
(``sqlite``, or a ``postgresql://`` URL) and, for PostgreSQL, prints the
transactions committed in that database per setup (``pg_stat_database``).
With ``--profile DIR`` our two servers run under ``cProfile`` (which slows them;
its stats are written to ``DIR`` when they stop); with ``--py-spy`` as well
they run unslowed and are sampled by that py-spy binary instead (collapsed
stacks, ``DIR/NAME.spy.txt``). Nothing asserts a speed; every process
started is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make ``bench.*`` importable
    sys.path.insert(0, str(REPO))

import bench.gateway as gw  # noqa: E402
from bench.procs import Plan, Server, setup_bench, start_server  # noqa: E402
from bench.run import DEFAULT_REF, TESTDATA  # noqa: E402


def _profiled(argv: list[str], out: Path | None) -> list[str]:
    """``argv`` (``python -m snaptun.cli.main ...``) under cProfile writing to ``out``."""
    if out is None:
        return argv
    return [argv[0], "-m", "cProfile", "-o", str(out), *argv[1:]]


@contextlib.contextmanager
def _sampled(spy: Path | None, server: Server, out: Path | None) -> Iterator[None]:
    """Sample ``server`` with py-spy (collapsed stacks into ``out``) while the block runs."""
    if spy is None or out is None or server.name == "ref":
        yield
        return
    argv = [str(spy), "record", "--pid", str(server.proc.pid), "-r", "1000", "-f", "raw"]
    proc = subprocess.Popen([*argv, "-o", str(out)], stdout=subprocess.DEVNULL)
    try:
        time.sleep(1)  # py-spy attaches
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _one(
    ref: Path, server: Server, plan: Plan, ca: Path, *, resumption: bool, extra: Sequence[str]
) -> dict[str, Any]:
    before = server.cpu_seconds()
    result = setup_bench(ref, server, plan, ca, resumption=resumption, extra=extra)
    spent = server.cpu_seconds() - before
    result["server_cpu_ms_per_setup"] = round(1000 * spent / plan.setups, 2)
    return result


def _commits(store: str | None) -> int | None:
    """Transactions committed so far in a PostgreSQL store's database (None for SQLite)."""
    if store is None or store == "sqlite":
        return None
    import psycopg  # noqa: PLC0415 - only with a PostgreSQL store

    time.sleep(1.5)  # backends flush their statistics at most once a second
    query = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(query).fetchone()
    return None if row is None else int(row[0])


def _counted(store: str | None, setups: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s record, with the store's commits per setup when it is PostgreSQL."""
    before = _commits(store)
    record = run()
    after = _commits(store)
    if before is not None and after is not None:
        record["db_commits_per_setup"] = round((after - before) / setups, 2)
    return record


def _print(results: dict[str, dict[str, Any]], count: int, *, profiled: bool) -> None:
    print(f"{count} setups per run{' (under cProfile)' if profiled else ''}")
    print(f"{'server':<22} {'setups/s':>9} {'CPU ms/setup':>13} {'p50 ms':>7}")
    for label, record in results.items():
        rate = record.get("setups_per_s")
        shown = f"{rate:9.1f}" if isinstance(rate, int | float) else f"{'failed':>9}"
        p50 = record.get("latency_ms_p50", float("nan"))
        commits = record.get("db_commits_per_setup")
        tail = f"  db commits/setup {commits}" if commits is not None else ""
        print(f"{label:<22} {shown} {record['server_cpu_ms_per_setup']:13.2f} {p50:7.2f}{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="setups per run")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured setups first")
    parser.add_argument("--ref", type=Path, default=DEFAULT_REF, help="snaptun-ref binary")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of our servers here")
    parser.add_argument(
        "--py-spy",
        type=Path,
        help="py-spy binary: sample our servers (not slowed) into DIR of --profile instead",
    )
    parser.add_argument(
        "--store",
        action="append",
        help="grant store of the gateway, repeatable: sqlite (default) or a postgresql:// URL",
    )
    parser.add_argument(
        "--only", choices=("gateway", "echo-server", "ref"), action="append", help="servers to run"
    )
    args = parser.parse_args(argv)
    only = set(args.only or ("gateway", "echo-server", "ref"))
    ref: Path = args.ref
    plan = Plan(duration=1, warmup=0, setups=args.count)
    cert, key = TESTDATA / "localhost-cert.pem", TESTDATA / "localhost-key.pem"
    work = Path(tempfile.mkdtemp(prefix="snaptun-setups-"))
    prof: Path | None = args.profile
    if prof is not None:
        prof.mkdir(parents=True, exist_ok=True)
    spy: Path | None = args.py_spy
    python = [sys.executable, "-m", "snaptun.cli.main"]
    echo_argv = [
        *python,
        "echo-server",
        "--listen=127.0.0.1:0",
        f"--cert={cert}",
        f"--key={key}",
        "--token-validity=3600",
    ]
    ref_argv = [str(ref), "server", "--listen=127.0.0.1:0", f"--cert={cert}", f"--key={key}"]
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        servers: list[tuple[str, Server, list[str]]] = []
        stores: dict[str, str] = {}
        for store in (args.store or ["sqlite"]) if "gateway" in only else []:
            name = "gateway" if store == "sqlite" else "gateway-pg"
            stores[name] = store
            state = work / f"{name}-state"
            gw_argv = [*gw.serve_argv(state, cert, key, "127.0.0.1:9"), f"--store={store}"]
            gw_argv = _profiled(gw_argv, None if spy else prof and prof / f"{name}.prof")
            server = stack.enter_context(
                start_server(name, gw_argv, work / f"{name}.log", env=gw.clean_env())
            )
            token = gw.issue_token(state)
            servers.append((name, server, [f"--token={token}"]))
        if "echo-server" in only:
            argv_e = _profiled(echo_argv, None if spy else prof and prof / "echo-server.prof")
            echo = stack.enter_context(start_server("ours", argv_e, work / "e.log"))
            servers.append(("echo-server", echo, []))
        if "ref" in only:
            servers.append(
                ("ref", stack.enter_context(start_server("ref", ref_argv, work / "r.log")), [])
            )
        for _, server, extra in servers:  # first connections pay one-time costs (imports)
            warm = Plan(duration=1, warmup=0, setups=args.warmup)
            setup_bench(ref, server, warm, cert, resumption=False, extra=extra)
        for name, server, extra in servers:
            with _sampled(spy, server, prof and prof / f"{name}.spy.txt"):
                for variant, resumption in (("resume", True), ("full", False)):
                    results[f"{name} {variant}"] = _counted(
                        stores.get(name),
                        plan.setups,
                        functools.partial(
                            _one, ref, server, plan, cert, resumption=resumption, extra=extra
                        ),
                    )
    _print(results, args.count, profiled=prof is not None)
    (work / "setups.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {work / 'setups.json'}")
    return 0 if all(r.get("ok") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
