"""The status page at ``/``, rendered by a real headless Chromium against a live gateway."""

from __future__ import annotations

import asyncio
import html
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.cli._procs import _env
from tests.gateway._gateway import run_gateway, scion_udp
from tests.gateway.test_e2e import FOREIGN, tunnel, udp_sink

BROWSER_TIMEOUT = 90.0


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found is not None:
            return found
    pytest.skip("no Chromium here (scripts/system-deps installs Debian's chromium as root)")


def render(browser: str, url: str, profile: Path) -> str:
    """The page's DOM after its script ran for a few (virtual) seconds."""
    argv = [
        browser,
        "--headless",
        "--no-sandbox",  # the suite may run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",  # two polls, so that rates show
        "--dump-dom",
        url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=BROWSER_TIMEOUT, env=_env(), check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rows(dom: str) -> list[list[str]]:
    """The cells of each tunnel row."""
    found = []
    for row in re.findall(r'<tr class="tunnel">(.*?)</tr>', dom, re.DOTALL):
        found.append([html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)])
    return found


async def test_the_page_shows_the_live_tunnels_with_rates(tmp_path: Path) -> None:
    browser = _chromium()
    async with udp_sink() as router:
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.address) as gw:
            identity = uuid.uuid4()
            async with tunnel(gw, gw.token(identity)) as (sender, _, me, _):
                packets = [scion_udp(me, FOREIGN, b"p" * 100) for _ in range(4)]
                for packet in packets:
                    sender.send(packet)
                for _ in packets:
                    await router.get()
                url = f"http://{gw.metrics[0]}:{gw.metrics[1]}/"
                dom = await asyncio.to_thread(render, browser, url, tmp_path / "profile")
    state = re.search(r'<div id="state"[^>]*>(.*?)</div>', dom)
    assert state is not None
    assert state.group(1).startswith("1 tunnel, updated "), state.group(1)
    (cells,) = rows(dom)
    assert cells[0] == str(identity)
    assert cells[1] == str(me)
    assert cells[5] == f"{sum(map(len, packets))} B (4 pkt)"
    assert cells[7].endswith("pkt/s")  # a rate, once two polls were seen
