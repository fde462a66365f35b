"""contrib/grafana and contrib/prometheus: only metrics a real gateway exports; promtool agrees."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cli._procs import REPO
from tests.contrib._promql import exported_names, metric_names
from tests.gateway._gateway import run_gateway

DASHBOARD = REPO / "contrib" / "grafana" / "snaptun-gateway.json"
ALERTS = REPO / "contrib" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "contrib" / "prometheus" / "alerts_test.yml"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes for every target itself
NO_PROMTOOL = "promtool not installed (Debian package prometheus; scripts/system-deps installs it)"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The series names of a real gateway's /metrics."""
    folder = tmp_path_factory.mktemp("gateway")
    with run_gateway(folder / "state", folder / "gw.log", ("127.0.0.1", 9)) as gw:
        host, port = gw.metrics
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        gw.stop()
    names = exported_names(text)
    assert "snaptun_gateway_active_tunnels" in names, text
    return names


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template queries."""
    document = json.loads(DASHBOARD.read_text())
    expressions = [node["expr"] for node in _walk(document) if isinstance(node.get("expr"), str)]
    for variable in document["templating"]["list"]:
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if variable["type"] == "query" and isinstance(query, str):
            # Grafana's label_values(METRIC, LABEL): only METRIC is a series.
            expressions.append(re.sub(r"label_values\(\s*([^,()]+),\s*\w+\s*\)", r"\1", query))
    return expressions


def alert_expressions() -> list[str]:
    """The ``expr:`` of every rule (a block scalar or a one-line value)."""
    expressions: list[str] = []
    lines = ALERTS.read_text().splitlines()
    for index, line in enumerate(lines):
        found = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not found:
            continue
        indent, value = len(found.group(1)), found.group(2).strip()
        if value not in ("|", ">", "|-", ">-"):
            expressions.append(value)
            continue
        block = []
        for following in lines[index + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        expressions.append(" ".join(block))
    return expressions


def test_the_dashboard_queries_only_exported_metrics(exported: set[str]) -> None:
    referenced = set().union(*map(metric_names, dashboard_expressions()))
    assert referenced - exported == set()
    # What an operator looks at first is all there.
    assert {
        "snaptun_gateway_active_tunnels",
        "snaptun_gateway_setups_total",
        "snaptun_gateway_packets_total",
        "snaptun_gateway_bytes_total",
        "snaptun_gateway_drops_total",
        "snaptun_gateway_queue_depth",
        "snaptun_gateway_free_addresses",
    } <= referenced


def test_the_dashboard_is_well_formed() -> None:
    document = json.loads(DASHBOARD.read_text())
    panels = document["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert all(expr.strip() for expr in dashboard_expressions())


def test_the_alerts_query_only_exported_metrics(exported: set[str]) -> None:
    expressions = alert_expressions()
    assert len(expressions) == ALERTS.read_text().count("- alert:")
    referenced = set().union(*map(metric_names, expressions))
    assert referenced - exported - PROMETHEUS_OWN == set()
    assert "up" in referenced  # a gateway that is down is noticed


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(NO_PROMTOOL)
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_checks_the_rules() -> None:
    done = _promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_alerts_fire_as_their_unit_tests_say() -> None:
    done = _promtool("test", "rules", str(ALERT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
