"""``snaptun echo-client`` against an in-process ``snaptun echo-server`` (both in this loop)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from snaptun.aio.quic import fingerprint_of
from snaptun.cli._client import ClientOptions, run_echo_client
from snaptun.cli._server import ServerOptions, run_echo_server
from snaptun.cli.main import main
from snaptun.core.addressing import EndhostAddress, IsdAs
from snaptun.core.tokens import (
    SnapTokenClaims,
    TrustedKey,
    generate_signing_key,
    jwks_document,
    mint_token,
)
from snaptun.keyfiles import write_public_key


@dataclasses.dataclass
class RunningServer:
    host: str
    port: int
    cert: Path
    out: io.StringIO

    def client(self, **overrides: Any) -> ClientOptions:
        base: dict[str, Any] = {"host": self.host, "port": self.port, "ca": self.cert}
        base.update(overrides)
        return ClientOptions(**base)


@contextlib.asynccontextmanager
async def echo_server(certs: tuple[Path, Path], **overrides: Any) -> AsyncIterator[RunningServer]:
    """Run ``run_echo_server`` as a task until the block ends."""
    cert, key = certs
    options = ServerOptions(
        **{"host": "127.0.0.1", "port": 0, "cert": cert, "key": key, **overrides}
    )
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
    out = io.StringIO()
    task = asyncio.ensure_future(
        run_echo_server(options, stop=stop, ready=ready.set_result, out=out, err=io.StringIO())
    )
    try:
        await asyncio.wait({ready, task}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        host, port = ready.result()
        yield RunningServer(host, port, cert, out)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 5) == 0


async def run_client(options: ClientOptions) -> tuple[int, list[dict[str, Any]]]:
    out = io.StringIO()
    code = await run_echo_client(options, out=out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


async def test_echo_round_trip(certs: tuple[Path, Path]) -> None:
    async with echo_server(certs) as server:
        assert server.out.getvalue() == f"listening 127.0.0.1:{server.port}\n"
        code, lines = await run_client(server.client(count=20, size=1200))
    assert code == 0
    established, done = lines
    assert established["event"] == "established"
    [assigned] = established["assigned"]
    assert assigned["isd_as"] == "1-ff00:0:110"
    assert assigned["ip"].startswith("10.0.0.")
    assert established["valid_until"] >= int(time.time()) + 58
    assert established["max_datagram_size"] >= 1414
    assert done["ok"] is True
    assert done["event"] == "done"
    assert (done["datagrams"], done["echoed"], done["resent"]) == (20, 20, 0)
    assert done["size"] == 1200
    assert done["valid_until"] == established["valid_until"]


async def test_bad_token_is_refused(certs: tuple[Path, Path]) -> None:
    async with echo_server(certs) as server:
        bad, expected = await asyncio.gather(
            run_client(server.client(token="WRONG")),
            run_client(server.client(token="WRONG", expect_close=1)),
        )
    code, [failure] = bad
    assert code == 1
    assert failure["ok"] is False
    assert failure["close_code"] == 1
    assert failure["close_name"] == "InvalidRequest"
    assert failure["http_status"] in (401, None)
    code, [done] = expected
    assert code == 0
    assert done["ok"] is True
    assert done["close_code"] == 1
    assert done["closed_as_expected"]


async def test_session_expiry_during_hold(certs: tuple[Path, Path]) -> None:
    # Expiries are whole unix seconds: a 1 s token may end at once, a 2 s one lasts > 1 s.
    async with (
        echo_server(certs, token_validity=1) as short,
        echo_server(certs, token_validity=2) as longer,
    ):
        expected, unexpected, renewed, auto = await asyncio.gather(
            run_client(short.client(hold=3, expect_close=4)),
            run_client(short.client(hold=3, count=1)),
            run_client(longer.client(hold=3, renew_every=0.5, count=1)),
            run_client(longer.client(hold=3, auto_renew=True, count=1)),
        )
    # A 1 s token may end within milliseconds: the close can come during setup or echo.
    code, lines = expected
    assert code == 0, lines
    done = lines[-1]
    assert done["ok"] is True
    assert (done["close_code"], done["close_name"], done["close_reason"]) == (
        4,
        "SessionExpired",
        "session expired",
    )
    code, lines = unexpected
    assert code == 1
    assert lines[-1]["ok"] is False
    assert lines[-1]["close_code"] == 4
    code, lines = renewed
    assert code == 0, lines
    assert lines[-1]["ok"]
    assert lines[-1]["renewals"] >= 4
    assert sum(line["event"] == "renewed" for line in lines) == lines[-1]["renewals"]
    code, lines = auto
    assert code == 0, lines
    assert lines[-1]["ok"]
    assert lines[-1]["renewals"] >= 1


async def test_renewal_refused_and_close_not_seen(certs: tuple[Path, Path]) -> None:
    async with echo_server(certs) as server:
        refused, not_closed = await asyncio.gather(
            run_client(server.client(hold=1, renew_every=0.2, renew_token="WRONG", count=1)),
            run_client(server.client(expect_close=4, count=1)),
        )
    code, [_, failure] = refused
    assert code == 1
    assert failure["http_status"] == 401
    assert failure["close_code"] is None
    code, [_, failure] = not_closed
    assert code == 1
    assert failure["error"] == "expected the server to close with code 4, but it did not"


async def test_no_echo_and_too_large(certs: tuple[Path, Path]) -> None:
    async with echo_server(certs, echo=False) as server:
        silent, large = await asyncio.gather(
            run_client(server.client(count=2, echo_timeout=0.1, retries=1)),
            run_client(server.client(count=1, size=1500)),
        )
    code, [_, failure] = silent
    assert code == 1
    assert "no echo for datagram 0" in failure["error"]
    assert (failure["datagrams"], failure["echoed"], failure["resent"]) == (1, 0, 1)
    code, [established, failure] = large
    assert code == 1
    assert str(established["max_datagram_size"]) in failure["error"]
    assert "1500" in failure["error"]


async def test_pool_isd_as_and_requested_address(certs: tuple[Path, Path]) -> None:
    import ipaddress  # noqa: PLC0415

    pools = (ipaddress.ip_network("192.0.2.0/28"), ipaddress.ip_network("2001:db8::/120"))
    async with echo_server(certs, isd_as=IsdAs.parse("2-64496"), pools=pools) as server:
        wanted = EndhostAddress.parse("2-64496,2001:db8::7")
        (code, lines), (code_any, lines_any) = await asyncio.gather(
            run_client(server.client(addresses=(wanted,), count=1, mtu=1200)),
            run_client(server.client(count=1)),
        )
    assert code == 0, lines
    assert lines[0]["assigned"] == [{"isd_as": "2-64496", "ip": "2001:db8::7"}]
    assert lines[0]["max_datagram_size"] < 1200
    assert code_any == 0, lines_any
    assert lines_any[0]["assigned"][0]["ip"].startswith("192.0.2.")


async def test_ipv6_listen_and_fingerprint(certs: tuple[Path, Path]) -> None:
    fingerprint = fingerprint_of(certs[0].read_bytes())
    async with echo_server(certs, host="::1") as server:
        assert server.out.getvalue() == f"listening [::1]:{server.port}\n"
        good = await run_client(server.client(ca=None, fingerprint=fingerprint, count=3))
        wrong = await run_client(server.client(ca=None, fingerprint="00" * 32, count=1))
    assert good[0] == 0, good[1]
    code, [failure] = wrong
    assert code == 1
    assert failure["ok"] is False
    assert failure["close_code"] is None


async def test_jwt_tokens(certs: tuple[Path, Path], tmp_path: Path) -> None:
    signing = generate_signing_key()
    public = tmp_path / "token-key.pem"
    write_public_key(signing.public_key(), public)
    expiry = int(time.time()) + 30
    token = mint_token(signing, SnapTokenClaims(uuid.uuid4(), expiry))
    async with echo_server(certs, token_keys=(public,)) as server:
        (code, lines), (code_static, static) = await asyncio.gather(
            run_client(server.client(token=token, count=1)),
            run_client(server.client(count=1)),
        )
    assert code == 0, lines
    assert lines[0]["valid_until"] == expiry
    assert code_static == 1
    assert static[-1]["close_code"] == 1


async def test_connect_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        code, [failure] = await run_client(
            ClientOptions("127.0.0.1", port, insecure=True, connect_timeout=0.3)
        )
    assert code == 1
    assert failure["error"] == f"connection failed: no handshake with 127.0.0.1:{port} within 0.3 s"


async def test_main_echo_client(
    certs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fingerprint = fingerprint_of(certs[0].read_bytes())
    async with echo_server(certs) as server:
        argv = ["echo-client", f"--connect=127.0.0.1:{server.port}", f"--fingerprint={fingerprint}"]
        code = await asyncio.to_thread(main, [*argv, "--count=5", "--size=64"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == ["established", "done"]
    assert lines[1]["echoed"] == 5


def test_main_echo_server_self_signed(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code = main(["echo-server", "--listen", "127.0.0.1:0", "--max-lifetime", "0.2"])
    assert code == 0
    assert time.monotonic() - started < 5
    captured = capsys.readouterr()
    assert captured.out.startswith("listening 127.0.0.1:")
    assert int(captured.out.split(":")[1]) > 0
    assert "self-signed certificate" in captured.err
    assert "sha256 fingerprint" in captured.err


async def test_jwks_tokens_by_kid_and_reload(certs: tuple[Path, Path], tmp_path: Path) -> None:
    first, second, third, pem_only = (generate_signing_key() for _ in range(4))
    jwks = tmp_path / "keys.jwks"
    jwks.write_text(
        json.dumps(
            jwks_document(
                [TrustedKey(first.public_key(), "k1"), TrustedKey(second.public_key(), "k2")]
            )
        )
    )
    pem = tmp_path / "pem-key.pem"
    write_public_key(pem_only.public_key(), pem)
    expiry = int(time.time()) + 30

    def token(key: Any, kid: str | None) -> str:
        return mint_token(key, SnapTokenClaims(uuid.uuid4(), expiry), kid=kid)

    options = {"token_jwks": (jwks,), "token_keys": (pem,), "token_poll": 0.05}
    async with echo_server(certs, **options) as server:
        results = await asyncio.gather(
            *(
                run_client(server.client(token=t, count=1))
                for t in (token(first, "k1"), token(second, "k2"), token(pem_only, None))
            )
        )
        assert [code for code, _ in results] == [0, 0, 0], results
        code, [refused] = await run_client(server.client(token=token(third, "k3"), count=1))
        assert code == 1
        assert 'unknown key id "k3"' in refused["error"], refused
        assert refused["close_code"] in (1, None)
        # Rotation: a new set replaces the old one without a restart.
        jwks.write_text(json.dumps(jwks_document([TrustedKey(third.public_key(), "k3")])))
        for _ in range(100):
            code, lines = await run_client(server.client(token=token(third, "k3"), count=1))
            if code == 0:
                break
            await asyncio.sleep(0.05)
        assert code == 0, lines
        code, [refused] = await run_client(server.client(token=token(first, "k1"), count=1))
        assert code == 1
        assert 'unknown key id "k1"' in refused["error"], refused


async def test_issuer_and_audience(certs: tuple[Path, Path], tmp_path: Path) -> None:
    signing = generate_signing_key()
    public = tmp_path / "token-key.pem"
    write_public_key(signing.public_key(), public)
    claims = SnapTokenClaims(uuid.uuid4(), int(time.time()) + 30)

    def token(**extra: str) -> str:
        return mint_token(signing, claims, extra=extra)

    scope = {"token_keys": (public,), "token_issuer": "ops", "token_audience": "edge"}
    async with echo_server(certs, **scope) as server:
        good, wrong_aud, no_iss = await asyncio.gather(
            run_client(server.client(token=token(iss="ops", aud="edge"), count=1)),
            run_client(server.client(token=token(iss="ops", aud="snap"), count=1)),
            run_client(server.client(token=token(aud="edge"), count=1)),
        )
    assert good[0] == 0, good
    assert wrong_aud[0] == 1
    assert "not 'edge'" in wrong_aud[1][-1]["error"]
    assert no_iss[0] == 1
    assert "no issuer" in no_iss[1][-1]["error"]


def test_main_echo_server_bad_jwks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jwks"
    bad.write_text('{"keys": [{"kty": "RSA"}]}')
    with pytest.raises(SystemExit) as stopped:
        main(["echo-server", "--listen", "127.0.0.1:0", "--token-jwks", str(bad)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "usage: snaptun echo-server" in err
    assert f"token JWK Set {bad}" in err
