"""Token keys an operator rotates and scopes, against a real `snaptun serve`.

JWK Sets made by `snaptun token keygen --jwks`, tokens by `snaptun token issue
--kid --audience --issuer`; rotation by SIGHUP without dropping a live tunnel;
each refusal's cause in the close reason, in our client's error and in the
/metrics refusal label.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from snaptun.aio import quic
from snaptun.aio.client import ClientBuilder
from snaptun.errors import ConnectionLost, ControlResponseError
from tests.cli._procs import SNAPTUN, _env, run_json
from tests.gateway._gateway import GatewayProcess, connect_argv, run_gateway, scrape
from tests.gateway.test_e2e import tunnel


def cli(*args: str) -> str:
    done = subprocess.run(
        [*SNAPTUN, *args], capture_output=True, text=True, env=_env(), timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def keygen(folder: Path, jwks: Path, kid: str) -> Path:
    record = json.loads(
        cli("token", "keygen", "--out", str(folder), "--jwks", str(jwks), "--kid", kid)
    )
    assert record["kid"] == kid
    assert record["jwks"] == str(jwks)
    return Path(record["private_key"])


def issue(key: Path, *extra: str, pssid: uuid.UUID | None = None) -> str:
    ident = ["--pssid", str(pssid)] if pssid else []
    return cli("token", "issue", "--key", str(key), "--ttl", "300", *ident, *extra)


async def refusal(gw: GatewayProcess, token: str) -> str:
    """The close reason (or answer) a setup with ``token`` gets."""
    async with quic.connect(gw.listen[0], gw.listen[1], fingerprint=gw.fingerprint) as conn:
        try:
            await asyncio.wait_for(ClientBuilder(token).connect(conn), 5)
        except ConnectionLost as exc:
            # The reference's code for a refused setup request, and its reason with the cause.
            return f"code {exc.code}: {exc.reason}"
        except ControlResponseError as exc:  # the answer won the race against the close
            return exc.body.decode()
    raise AssertionError("the token was accepted")


def wait_for(path: Path, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, path.read_text()[-2000:]
        time.sleep(0.05)


async def test_rotation_scoping_and_refusal_causes(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    key1 = keygen(tmp_path / "k1", jwks, "k1")
    with run_gateway(
        tmp_path / "state",
        tmp_path / "gw.log",
        ("127.0.0.1", 9),
        "--token-jwks", str(jwks),
        "--token-audience", "gw1",
        "--token-issuer", "ssr",
    ) as gw:  # fmt: skip
        scoped = ("--audience", "gw1", "--issuer", "ssr")
        live_identity = uuid.uuid4()
        async with tunnel(gw, issue(key1, "--kid", "k1", *scoped, pssid=live_identity)) as (
            _,
            _,
            _,
            live,
        ):
            # A second key, not yet trusted: refused, and the client is told why.
            key2 = tmp_path / "k2" / "signing-key.pem"
            cli("token", "keygen", "--out", str(tmp_path / "k2"))
            token2 = issue(key2, "--kid", "k2", *scoped)
            code, lines = run_json(connect_argv(gw, token2), timeout=30)
            assert code == 1, lines
            error = next(line for line in lines if line["event"] == "error")
            assert "gateway refused the tunnel" in error["error"]
            # The answer (HTTP 401 and the cause) or the close (code 1, the reference's
            # reason and the cause), whichever arrives first: the cause either way.
            assert 'unknown key id "k2"' in error["error"], error
            if error["close_reason"] is not None:
                reason = error["close_reason"]
                assert reason == 'handling session renewal request: unknown key id "k2"'

            # Each cause in the close reason.
            causes = {
                "token is for audience 'other', not 'gw1'": issue(
                    key1, "--kid", "k1", "--audience", "other", "--issuer", "ssr"
                ),
                "token is from issuer 'evil', not 'ssr'": issue(
                    key1, "--kid", "k1", "--audience", "gw1", "--issuer", "evil"
                ),
                "token signature does not verify": issue(key2, "--kid", "k1", *scoped),
                "malformed token: not three dot-separated segments": "garbage",
            }
            for cause, token in causes.items():
                reason = await refusal(gw, token)
                assert cause in reason, (cause, reason)
                if reason.startswith("code"):
                    assert reason.startswith("code 1: handling session renewal request: ")

            # Rotate: add k2 to the set, SIGHUP; the live tunnel stays, k2 works.
            cli(
                "token",
                "keygen",
                "--out",
                str(tmp_path / "k2b"),
                "--jwks",
                str(jwks),
                "--kid",
                "k2",
            )
            key2 = tmp_path / "k2b" / "signing-key.pem"
            gw.proc.send_signal(signal.SIGHUP)
            wait_for(gw.log, "keys_reloaded")
            async with tunnel(gw, issue(key2, "--kid", "k2", *scoped)):
                pass
            assert live.closed is None
            # A broken file keeps the old keys.
            jwks.write_text("{")
            gw.proc.send_signal(signal.SIGHUP)
            wait_for(gw.log, "token keys not reloaded")
            async with tunnel(gw, issue(key2, "--kid", "k2", *scoped)):
                pass
            assert live.closed is None

        m = scrape(gw.metrics)
        refused = (
            'snaptun_gateway_setups_total{reason="UnexpectedControlRequest:%s",result="refused"}'
        )
        assert m[refused % "UnknownKeyId"] == 1
        assert m[refused % "WrongAudience"] == 1
        assert m[refused % "WrongIssuer"] == 1
        assert m[refused % "InvalidSignature"] == 1
        assert m[refused % "MalformedToken"] == 1
        assert m['snaptun_gateway_token_key_reloads_total{result="ok"}'] == 1
        assert m['snaptun_gateway_token_key_reloads_total{result="failed"}'] == 1
        assert "unknown key id" in gw.log.read_text()  # the operator's log line names the cause


def test_the_start_up_line_connects_a_client(tmp_path: Path) -> None:
    with run_gateway(tmp_path / "state", tmp_path / "gw.log", ("127.0.0.1", 9)) as gw:
        wait_for(gw.log, "serve: client: ")
        line = next(
            text.split("serve: client: ", 1)[1]
            for text in gw.log.read_text().splitlines()
            if "serve: client: " in text
        )
        assert "--token-file" in line
        work = tmp_path / "client"
        work.mkdir()
        env = {**_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        # The line is for a shell: run it in one.
        assert first_event(["sh", "-c", line + " --max-reconnects 0"], work, env) == "connected"
        assert (work / "snaptun.token").exists()
        # token issue --connect: a ready command for the same gateway.
        command = cli("token", "issue", "--state-dir", str(gw.state.root), "--connect")
        argv = shlex.split(command)
        assert argv[:3] == ["snaptun", "connect", f"{gw.listen[0]}:{gw.listen[1]}"]
        assert argv[argv.index("--fingerprint") + 1] == gw.fingerprint
        assert first_event([*SNAPTUN, *argv[1:]], work) == "connected"


def first_event(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a `snaptun connect` command until its first JSON line; SIGTERM it."""
    client = subprocess.Popen(
        argv, cwd=cwd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert client.stdout is not None
        return str(json.loads(client.stdout.readline())["event"])
    finally:
        client.send_signal(signal.SIGTERM)
        client.wait(10)
        for stream in (client.stdout, client.stderr):
            if stream is not None:
                stream.close()
