"""One gateway per state directory: the `gateway.lock` flock, in-process and for real."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from snaptun.core.tokens import JwtTokenValidator
from snaptun.gateway.state_dir import StateDirInUse, lock_state_dir
from snaptun.keyfiles import load_public_key
from tests.cli._procs import SNAPTUN, _env
from tests.gateway._gateway import run_gateway

NEXT_HOP = ("127.0.0.1", 9)  # never sent to: these tests open no tunnel
RUN_TIMEOUT = 30.0


def serve_argv(state: Path) -> list[str]:
    return [
        *SNAPTUN,
        "serve",
        "--state-dir", str(state),
        "--listen", "127.0.0.1:0",
        "--metrics", "127.0.0.1:0",
        "--underlay-bind", "127.0.0.1:0",
        "--underlay-next-hop", f"{NEXT_HOP[0]}:{NEXT_HOP[1]}",
    ]  # fmt: skip


def test_lock_writes_the_pid_and_refuses_a_second_holder(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    lock = lock_state_dir(state)  # creates the directory
    assert (state / "gateway.lock").read_text() == f"{os.getpid()}\n"
    # flock conflicts between two open files even inside one process
    with pytest.raises(StateDirInUse) as info:
        lock_state_dir(state)
    assert info.value.pid == os.getpid()
    assert str(state) in str(info.value)
    lock.release()
    lock.release()  # twice is fine
    assert (state / "gateway.lock").read_text() == ""
    lock_state_dir(state).release()


def test_a_stale_or_empty_lock_file_does_not_block(tmp_path: Path) -> None:
    (tmp_path / "gateway.lock").write_text("999999999\n")  # left by a dead gateway
    lock = lock_state_dir(tmp_path)
    assert (tmp_path / "gateway.lock").read_text() == f"{os.getpid()}\n"
    lock.release()


def test_second_gateway_exits_2_naming_the_first_pid_and_kill_9_frees_the_dir(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    with run_gateway(state, tmp_path / "first.log", NEXT_HOP) as first:
        db = state / "grants.sqlite3"
        before = db.read_bytes()
        second = subprocess.run(
            serve_argv(state),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=_env(),
            check=False,
        )
        assert second.returncode == 2, second.stderr
        assert second.stdout == ""
        assert second.stderr.splitlines() == [
            f"snaptun serve: state directory {state} is in use by another gateway "
            f"(PID {first.proc.pid}); stop it or use another --state-dir"
        ]
        assert db.read_bytes() == before  # the second touched nothing
        assert first.proc.poll() is None

        # `snaptun token issue` reads the dev key without the lock
        issued = subprocess.run(
            [*SNAPTUN, "token", "issue", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=_env(),
            check=False,
        )
        assert issued.returncode == 0, issued.stderr
        validator = JwtTokenValidator([load_public_key(first.state.signing_public_key)])
        assert validator.validate(time.time(), issued.stdout.strip()).exp > time.time()

        first.proc.kill()  # SIGKILL: no shutdown, the lock file stays behind
        first.proc.wait(10)
    assert (state / "gateway.lock").read_text() == f"{first.proc.pid}\n"

    with run_gateway(state, tmp_path / "third.log", NEXT_HOP) as third:
        assert (state / "gateway.lock").read_text() == f"{third.proc.pid}\n"
        code, _ = third.stop()
        assert code == 0
    assert (state / "gateway.lock").read_text() == ""  # released at shutdown
