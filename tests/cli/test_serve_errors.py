"""`snaptun serve` on damaged state: exit 2, one line naming the file, no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from snaptun.gateway.state_dir import StateFiles, ensure_state
from tests.cli._procs import SNAPTUN, TESTDATA, _env

RUN_TIMEOUT = 30.0
GARBAGE = b"this is not what the file should hold\n" * 4


def serve(state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        *SNAPTUN,
        "serve",
        "--state-dir", str(state),
        "--listen", "127.0.0.1:0",
        "--metrics", "127.0.0.1:0",
        "--underlay-bind", "127.0.0.1:0",
        "--underlay-next-hop", "127.0.0.1:9",
        *extra,
    ]  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=_env(), check=False
    )


def assert_one_line_about(done: subprocess.CompletedProcess[str], path: Path, problem: str) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "panic" not in done.stderr.lower()
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith(f"snaptun serve: {path}: {problem}"), line
    assert "; " in line.partition(problem)[2]  # followed by what to do
    assert done.stdout == ""  # never got to "listening"
    return line


@pytest.mark.parametrize(
    ("name", "problem", "remedy"),
    [
        ("key.pem", "not an unencrypted PEM private key", "delete cert.pem and key.pem"),
        ("cert.pem", "not a PEM certificate", "delete cert.pem and key.pem"),
        ("grants.sqlite3", "not an SQLite database", "move it aside"),
        ("signing-key.pem", "not an Ed25519 private key", "delete signing-key.pem"),
        ("signing-key.pub.pem", "not an Ed25519 key", "delete signing-key.pem"),
    ],
)
def test_a_damaged_state_file_is_named_and_kept(
    tmp_path: Path, name: str, problem: str, remedy: str
) -> None:
    files, _ = ensure_state(tmp_path)
    (files.root / name).write_bytes(GARBAGE)
    line = assert_one_line_about(serve(tmp_path), files.root / name, problem)
    assert remedy in line
    assert (files.root / name).read_bytes() == GARBAGE  # not overwritten: the operator decides


def test_a_dev_key_without_its_public_half_is_checked_too(tmp_path: Path) -> None:
    files, _ = ensure_state(tmp_path)
    files.signing_key.write_bytes(GARBAGE)
    files.signing_public_key.unlink()  # start-up would derive it from the private key
    assert_one_line_about(serve(tmp_path), files.signing_key, "not an Ed25519 private key")
    assert not files.signing_public_key.exists()


def test_a_bad_token_key_flag_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "token.pub.pem"
    bad.write_bytes(GARBAGE)
    line = assert_one_line_about(
        serve(tmp_path / "state", "--token-key", str(bad)), bad, "not an Ed25519 key"
    )
    assert "--token-key" in line
    missing = tmp_path / "absent.pem"
    done = serve(tmp_path / "state", "--token-key", str(missing))
    assert_one_line_about(done, missing, "cannot be read: No such file or directory")


def test_bad_cert_and_key_flags_are_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    garbage_key = tmp_path / "server.key"
    garbage_key.write_bytes(GARBAGE)
    cert = TESTDATA / "localhost-cert.pem"
    if not cert.exists():
        pytest.skip(f"{cert} is not there")
    done = serve(state, "--cert", str(cert), "--key", str(garbage_key))
    line = assert_one_line_about(done, garbage_key, "not an unencrypted PEM private key")
    assert "--key" in line

    # a valid key that belongs to another certificate
    other = StateFiles(tmp_path / "other")
    ensure_state(other.root)
    done = serve(state, "--cert", str(cert), "--key", str(other.key))
    assert_one_line_about(done, other.key, f"does not belong to the certificate {cert}")
