"""Absurd token claims over real QUIC: an exact answer or a clear refusal, never a hang."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from snaptun.aio.client import ClientBuilder
from snaptun.core.tokens import MAX_UINT64, JwtTokenValidator
from snaptun.errors import ConnectionLost, ControlResponseError
from tests.aio.harness import running_server
from tests.core.test_tokens_strict import KEY, PSSID, signed

VALIDATOR = JwtTokenValidator([KEY.public_key()])


def _token(exp: bytes) -> str:
    return signed(b'{"pssid":"%s","exp":%s}' % (PSSID.encode(), exp))


async def test_exp_2_64_minus_1_is_answered_as_valid_until_2_64_minus_1(
    certs: tuple[Path, Path],
) -> None:
    async with running_server(certs, validator=VALIDATOR) as harness, harness.connect() as conn:
        token = _token(str(MAX_UINT64).encode())
        sender, receiver, control = await asyncio.wait_for(ClientBuilder(token).connect(conn), 5)
        assert control.session_expiry == MAX_UINT64
        sender.send(b"still works")
        assert await asyncio.wait_for(receiver.receive(), 5) == b"still works"


@pytest.mark.parametrize(
    "exp",
    [b"18446744073709551616", b"1e400", b"1" + b"0" * 400],
    ids=["2^64", "1e400", "10^400"],
)
async def test_exp_beyond_uint64_is_refused_not_hung(certs: tuple[Path, Path], exp: bytes) -> None:
    async with running_server(certs, validator=VALIDATOR) as harness, harness.connect() as conn:
        with pytest.raises((ControlResponseError, ConnectionLost)) as caught:
            await asyncio.wait_for(ClientBuilder(_token(exp)).connect(conn), 5)
        error = caught.value
        if isinstance(error, ControlResponseError):
            assert error.status == 400
        else:  # the reference's setup behaviour: the close usually wins the race
            assert (error.code, error.reason) == (1, "handling session renewal request")
        refusal = await harness.next_refusal()
        assert "400" in str(refusal)
