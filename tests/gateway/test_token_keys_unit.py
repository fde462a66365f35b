"""gateway.token_keys: loading PEM and JWK Set files, change detection, reload keeping old keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from snaptun.core.tokens import (
    SnapTokenClaims,
    TrustedKey,
    generate_signing_key,
    jwks_document,
    mint_token,
)
from snaptun.errors import UnknownKeyId
from snaptun.gateway.token_keys import TokenKeys, load_key_set
from snaptun.keyfiles import write_public_key

K1, K2, K3 = generate_signing_key(), generate_signing_key(), generate_signing_key()
CLAIMS = SnapTokenClaims.from_claims({"pssid": "11111111-2222-4333-8444-555555555555", "exp": 10})


def write_jwks(path: Path, *keys: TrustedKey) -> None:
    path.write_text(json.dumps(jwks_document(keys)))
    stamp = path.stat().st_mtime_ns + 1_000_000_000  # a distinct mtime, whatever the clock
    os.utime(path, ns=(stamp, stamp))


def test_pem_and_jwks_combine(tmp_path: Path) -> None:
    pem = tmp_path / "k1.pem"
    write_public_key(K1.public_key(), pem)
    jwks = tmp_path / "set.json"
    write_jwks(jwks, TrustedKey(K2.public_key(), "k2"))
    keys = load_key_set([pem], [jwks])
    assert len(keys) == 2
    assert keys.kids == ("k2",)


@pytest.mark.parametrize(("content", "message"), [("{", "token JWK Set"), (None, "token JWK Set")])
def test_bad_files_are_named(tmp_path: Path, content: str | None, message: str) -> None:
    jwks = tmp_path / "set.json"
    if content is not None:
        jwks.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_key_set([], [jwks])
    assert str(jwks) in str(info.value)


def test_a_change_is_seen_and_a_bad_file_keeps_the_old_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jwks = tmp_path / "set.json"
    write_jwks(jwks, TrustedKey(K1.public_key(), "k1"))
    keys = TokenKeys.open([], [jwks])
    token3 = mint_token(K3, CLAIMS, kid="k3")
    with pytest.raises(UnknownKeyId):
        keys.validator.validate(0, token3)
    assert not keys.poll()  # nothing changed
    write_jwks(jwks, TrustedKey(K1.public_key(), "k1"), TrustedKey(K3.public_key(), "k3"))
    assert keys.changed()
    assert keys.poll()
    assert keys.validator.validate(0, token3) == CLAIMS
    jwks.write_text('{"keys": []}')
    os.utime(jwks, ns=(1, 1))
    with caplog.at_level("ERROR"):
        assert keys.poll()
        assert not keys.poll()  # logged once: the same broken file is not retried
    assert [r.message for r in caplog.records if "not reloaded" in r.message] != []
    assert len([r for r in caplog.records if "not reloaded" in r.message]) == 1
    assert keys.validator.validate(0, token3) == CLAIMS  # the old set stays
    assert (keys.reloads, keys.failures) == (1, 1)
