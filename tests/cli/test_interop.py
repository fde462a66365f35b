"""Interoperability smoke tests: ``snaptun`` subprocesses against the Rust ``snaptun-ref``."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.cli._procs import SNAPTUN, SNAPTUN_REF, TESTDATA, listener, run_json

needs_ref = pytest.mark.skipif(
    not SNAPTUN_REF.exists(), reason=f"snaptun-ref reference peer not found at {SNAPTUN_REF}"
)
CERT = TESTDATA / "localhost-cert.pem"
KEY = TESTDATA / "localhost-key.pem"


def _run_all(*commands: list[str]) -> list[tuple[int, list[dict[str, Any]]]]:
    """Run clients concurrently (they mostly wait)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(run_json, commands))


@pytest.fixture(scope="module")
def our_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``snaptun echo-server`` as a subprocess; yields its address."""
    if not SNAPTUN_REF.exists():
        pytest.skip(f"snaptun-ref reference peer not found at {SNAPTUN_REF}")
    log = tmp_path_factory.mktemp("our-server") / "stderr.log"
    argv = [*SNAPTUN, "echo-server", "--listen=127.0.0.1:0", f"--cert={CERT}", f"--key={KEY}"]
    with listener(argv, log) as (_, address):
        yield address


def ref_client(address: str, *args: str) -> list[str]:
    return [str(SNAPTUN_REF), "client", f"--connect={address}", f"--ca={CERT}", *args]


def our_client(address: str, *args: str) -> list[str]:
    return [*SNAPTUN, "echo-client", f"--connect={address}", f"--ca={CERT}", *args]


@needs_ref
def test_ref_client_against_our_server(our_server: str) -> None:
    normal, largest, v6, bad = _run_all(
        ref_client(our_server, "--count=20", "--size=1200"),
        ref_client(our_server, "--count=5", "--size=1414"),
        ref_client(our_server, "--count=3", "--address=1-ff00:0:110,fd00::7"),
        ref_client(our_server, "--token=WRONG"),
    )
    for code, lines in (normal, largest, v6):
        assert code == 0, lines
        assert lines[0]["event"] == "established"
        assert lines[-1]["ok"] is True
        assert lines[-1]["echoed"] == lines[-1]["datagrams"]
    assert normal[1][-1]["echoed"] == 20
    assert largest[1][-1]["size"] == 1414
    assert v6[1][0]["assigned"] == [{"isd_as": "1-ff00:0:110", "ip": "fd00::7"}]
    code, [failure] = bad
    assert code == 1
    assert failure["ok"] is False
    assert failure["close_code"] == 1
    # The reference's reason and our cause: the Rust client shows why.
    assert failure["close_reason"] == "handling session renewal request: token not accepted"


@needs_ref
def test_our_client_against_ref_server(tmp_path: Path) -> None:
    argv = [str(SNAPTUN_REF), "server", "--listen=127.0.0.1:0", f"--cert={CERT}", f"--key={KEY}"]
    with (
        listener([*argv, "--token-validity=1"], tmp_path / "short.log") as (_, short),
        listener([*argv, "--token-validity=3"], tmp_path / "renew.log") as (_, renew),
    ):
        # Expiries are whole seconds: a 1 s session may end within milliseconds, and a
        # 3 s one renewed every second keeps at least 1 s of margin on a loaded machine.
        normal, bad, expired, renewed = _run_all(
            our_client(renew, "--count=20", "--size=1200"),
            our_client(short, "--token=WRONG"),
            our_client(short, "--count=1", "--hold=3", "--expect-close=4"),
            our_client(renew, "--count=1", "--hold=4", "--renew-every=1"),
        )
    code, lines = normal
    assert code == 0, lines
    [assigned] = lines[0]["assigned"]
    assert assigned["isd_as"] == "1-ff00:0:110"
    assert assigned["ip"].startswith("10.0.0.")
    assert lines[-1]["ok"] is True
    assert lines[-1]["echoed"] == 20
    code, [failure] = bad
    assert code == 1
    assert (failure["close_code"], failure["close_name"]) == (1, "InvalidRequest")
    assert failure["close_reason"] == "handling session renewal request"
    code, lines = expired
    assert code == 0, lines
    assert (lines[-1]["close_code"], lines[-1]["close_name"]) == (4, "SessionExpired")
    code, lines = renewed
    assert code == 0, lines
    assert lines[-1]["ok"] is True
    assert lines[-1]["renewals"] >= 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_echo_server_exits_cleanly_on_signal(sig: signal.Signals, tmp_path: Path) -> None:
    argv = [*SNAPTUN, "echo-server", "--listen=127.0.0.1:0"]
    with listener(argv, tmp_path / "stderr.log") as (proc, address):
        assert address.startswith("127.0.0.1:")
        proc.send_signal(sig)
        assert proc.wait(10) == 0
    assert "self-signed certificate" in (tmp_path / "stderr.log").read_text()
