"""The admin endpoint's handlers and files, without a gateway."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from snaptun.gateway.admin import (
    ADMIN_FILE,
    SECRET_FILE,
    SECRET_HEADER,
    AdminFileError,
    TunnelStatus,
    admin_url,
    iso_time,
    kick_action,
    page_route,
    read_admin,
    remove_admin_files,
    tunnels_route,
    write_admin_file,
    write_secret,
)
from snaptun.gateway.http import Request

SECRET = "s3cr3t"
ONE = TunnelStatus(
    pssid="p1",
    address="1-ff00:0:110,10.0.0.2",
    remote="127.0.0.1:5000",
    since="2025-01-01T00:00:00.000Z",
    session_expiry=None,
    from_client_packets=1,
    from_client_bytes=2,
    to_client_packets=3,
    to_client_bytes=4,
    drops=5,
    scmp_sent=6,
)


def post(query: str = "", body: bytes = b"", secret: str | None = SECRET) -> Request:
    headers = {SECRET_HEADER: secret} if secret is not None else {}
    parsed = {k: [v] for k, _, v in [query.partition("=")]} if query else {}
    return Request("POST", "/admin/kick", parsed, headers, body)


class Kicks:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, selector: str) -> list[TunnelStatus]:
        self.asked.append(selector)
        return [ONE] if selector in ("p1", "10.0.0.2") else []


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        pytest.param(post("tunnel=p1", secret=None), 403, id="no-secret"),
        pytest.param(post("tunnel=p1", secret="wrong"), 403, id="wrong-secret"),
        pytest.param(post(), 400, id="no-selector"),
        pytest.param(post("tunnel=  "), 400, id="blank-selector"),
        pytest.param(post("tunnel=" + "x" * 201), 400, id="long-selector"),
        pytest.param(post(body=b"not json"), 400, id="bad-body"),
        pytest.param(post(body=b'["p1"]'), 400, id="body-not-object"),
        pytest.param(post(body=b'{"tunnel": 7}'), 400, id="body-not-string"),
        pytest.param(post("tunnel=nobody"), 404, id="no-match"),
        pytest.param(post("tunnel=p1"), 200, id="by-query"),
        pytest.param(post(body=b'{"tunnel": " 10.0.0.2 "}'), 200, id="by-body"),
    ],
)
def test_kick_action(request_: Request, status: int) -> None:
    kicks = Kicks()
    answer = kick_action(kicks, SECRET)(request_)
    assert answer[0] == status
    assert answer[1] == "application/json"
    value = json.loads(answer[2])
    if status == 200:
        assert value == [ONE.as_record()]
    else:
        assert "error" in value
    if status in (403, 400):
        assert kicks.asked == []  # refused before anything is looked up


def test_tunnels_route_lists_records() -> None:
    status, kind, body = tunnels_route(lambda: [ONE])()[:3]
    assert (status, kind) == (200, "application/json")
    assert json.loads(body) == [ONE.as_record()]
    assert tunnels_route(list)()[2] == b"[]\n"


def test_page_is_self_contained_and_its_csp_admits_only_its_own_script() -> None:
    answer = page_route()()
    assert answer[0] == 200
    assert answer[1].startswith("text/html")
    html = answer[2].decode()
    headers = dict(answer[3]) if len(answer) == 4 else {}
    assert not re.search(r"(src|href)\s*=", html)  # no external assets
    assert "/admin/tunnels" in html
    script = re.search(r"<script>(.*?)</script>", html, re.DOTALL)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    csp = headers["content-security-policy"]
    assert f"script-src 'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp


def test_admin_url_maps_wildcards_to_loopback() -> None:
    assert admin_url("127.0.0.1", 9464) == "http://127.0.0.1:9464"
    assert admin_url("0.0.0.0", 1) == "http://127.0.0.1:1"
    assert admin_url("::", 2) == "http://[::1]:2"
    assert admin_url("::1", 3) == "http://[::1]:3"


def test_iso_time() -> None:
    assert iso_time(None) is None
    assert iso_time(0.25) == "1970-01-01T00:00:00.250Z"


def test_files_written_private_read_back_and_removed(tmp_path: Path) -> None:
    (tmp_path / ADMIN_FILE).write_text('{"url": "http://old", "pid": 1}')
    secret = write_secret(tmp_path)
    assert not (tmp_path / ADMIN_FILE).exists()  # the stale one went with the new secret
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    assert write_secret(tmp_path) != secret  # fresh at every start
    secret = (tmp_path / SECRET_FILE).read_text().strip()
    write_admin_file(tmp_path, "http://127.0.0.1:9")
    for name in (SECRET_FILE, ADMIN_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    found = read_admin(tmp_path)
    assert (found.url, found.pid, found.secret) == ("http://127.0.0.1:9", os.getpid(), secret)
    remove_admin_files(tmp_path)
    remove_admin_files(tmp_path)  # twice is fine
    assert not (tmp_path / SECRET_FILE).exists()
    with pytest.raises(AdminFileError, match="not found: no gateway runs"):
        read_admin(tmp_path)


def test_unreadable_admin_file_and_missing_secret(tmp_path: Path) -> None:
    (tmp_path / ADMIN_FILE).write_text("{not json")
    with pytest.raises(AdminFileError, match="unreadable"):
        read_admin(tmp_path)
    (tmp_path / ADMIN_FILE).write_text('{"url": "http://x", "pid": "?"}')
    found = read_admin(tmp_path)
    assert (found.url, found.pid, found.secret) == ("http://x", None, None)
