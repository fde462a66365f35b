"""``snaptun token keygen`` and ``snaptun token issue``, run in-process through ``main``."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from snaptun.cli.main import main
from snaptun.core.tokens import JwtTokenValidator, SnapTokenClaims, generate_signing_key
from snaptun.errors import InvalidSignature
from snaptun.keyfiles import load_public_key, write_private_key
from tests.cli._procs import _env


def keygen(capsys: pytest.CaptureFixture[str], folder: Path, *extra: str) -> dict[str, str]:
    assert main(["token", "keygen", "--out", str(folder), *extra]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    paths: dict[str, str] = json.loads(out)
    return paths


def issue(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["token", "issue", *argv]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    assert out.count("\n") == 1
    return out.strip()


def validate(public_pem: Path, token: str) -> SnapTokenClaims:
    return JwtTokenValidator([load_public_key(public_pem)]).validate(time.time(), token)


def test_keygen_writes_the_pair_with_private_mode_0600(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "new" / "keys"
    paths = keygen(capsys, folder)
    private, public = Path(paths["private_key"]), Path(paths["public_key"])
    assert private == folder / "signing-key.pem"
    assert public == folder / "signing-key.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in public.read_bytes()
    assert b"PRIVATE" not in public.read_bytes()


def test_keygen_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = keygen(capsys, tmp_path)
    before = Path(paths["private_key"]).read_bytes()
    assert main(["token", "keygen", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "already exists" in captured.err
    assert "--force" in captured.err
    assert Path(paths["private_key"]).read_bytes() == before
    # one of the two files suffices to refuse
    Path(paths["private_key"]).unlink()
    assert main(["token", "keygen", "--out", str(tmp_path)]) == 1
    assert "signing-key.pub.pem" in capsys.readouterr().err

    keygen(capsys, tmp_path, "--force")
    after = Path(paths["private_key"]).read_bytes()
    assert after != before
    assert stat.S_IMODE(Path(paths["private_key"]).stat().st_mode) == 0o600


def test_issue_with_key_validates_with_the_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = keygen(capsys, tmp_path)
    pssid = uuid.uuid4()
    token = issue(capsys, "--key", paths["private_key"], "--pssid", str(pssid), "--ttl", "120")
    claims = validate(Path(paths["public_key"]), token)
    assert claims.pssid == pssid
    assert time.time() + 115 <= claims.exp <= time.time() + 122
    # another key does not validate it
    other = tmp_path / "other"
    other_paths = keygen(capsys, other)
    with pytest.raises(InvalidSignature):
        validate(Path(other_paths["public_key"]), token)


def test_issue_defaults_to_a_random_pssid_and_one_hour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = keygen(capsys, tmp_path)
    first = validate(Path(paths["public_key"]), issue(capsys, "--key", paths["private_key"]))
    second = validate(Path(paths["public_key"]), issue(capsys, "--key", paths["private_key"]))
    assert first.pssid != second.pssid
    assert time.time() + 3590 <= first.exp <= time.time() + 3602


def test_issue_with_state_dir_uses_the_gateway_dev_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the gateway's state directory layout: signing-key.pem and signing-key.pub.pem
    state = tmp_path / "state"
    keygen(capsys, state)
    token = issue(capsys, "--state-dir", str(state))
    assert validate(state / "signing-key.pub.pem", token).exp > time.time()


def test_issue_default_state_dir_follows_xdg_state_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    key = generate_signing_key()
    (tmp_path / "snaptun").mkdir()
    write_private_key(key, tmp_path / "snaptun" / "signing-key.pem")
    token = issue(capsys)
    claims = JwtTokenValidator([key.public_key()]).validate(time.time(), token)
    assert claims.exp > time.time()


def test_issue_without_a_dev_key_says_how_to_get_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert main(["token", "issue"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(tmp_path / "snaptun" / "signing-key.pem") in captured.err
    assert "start `snaptun serve` once or pass --key" in captured.err

    assert main(["token", "issue", "--state-dir", str(tmp_path / "empty")]) == 1
    assert "start `snaptun serve` once" in capsys.readouterr().err


def test_issue_refuses_a_key_that_is_not_an_ed25519_private_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = keygen(capsys, tmp_path)
    assert main(["token", "issue", "--key", paths["public_key"]]) == 1
    assert "cannot use" in capsys.readouterr().err
    assert main(["token", "issue", "--key", str(tmp_path / "missing.pem")]) == 1
    assert "cannot use" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["token"],
        ["token", "issue", "--ttl", "0"],
        ["token", "issue", "--ttl", "nan"],
        ["token", "issue", "--pssid", "not-a-uuid"],
        ["token", "issue", "--key", "a.pem", "--state-dir", "d"],
        ["token", "keygen"],
    ],
)
def test_token_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().out == ""


def test_issue_refuses_a_ttl_beyond_the_uint64_expiry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = keygen(capsys, tmp_path)
    assert main(["token", "issue", "--key", paths["private_key"], "--ttl", "1e20"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "beyond 2^64-1" in captured.err
    # a lifetime inside the range is issued and validates
    token = issue(capsys, "--key", paths["private_key"], "--ttl", "1e19")
    assert validate(Path(paths["public_key"]), token).exp > 10**19


def test_the_token_module_does_not_load_the_quic_stack() -> None:
    heavy = "{'qh3', 'snaptun.gateway.service'}"
    probe = f"import sys, snaptun.cli._token; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(),
        check=True,
    )
    assert done.stdout.strip() == "[]"
