"""The metric-name extraction the dashboard and alert checks rely on."""

from __future__ import annotations

import pytest

from tests.contrib._promql import exported_names, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('up{job="snaptun"} == 0', {"up"}),
        (
            'sum by (instance, reason) (rate(a_total{reason=~"x|sum(b)", y!="c"}[5m]))'
            " / on(instance) group_left(job) d > 0.5 and e offset 5m",
            {"a_total", "d", "e"},
        ),
        (
            "histogram_quantile(0.9, sum by (le) (rate(h_bucket[$__rate_interval])))",
            {"h_bucket"},
        ),
        ('count_values("value", f) or vector(0)', {"f"}),
        ("1e3 * topk(3, g) + 0x1F - inf", {"g"}),
        ('sum without(instance)(h{instance=~"$instance"}) * 8', {"h"}),
        ("max_over_time(i[1h:5m]) unless ignoring (ip_version) j", {"i", "j"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_exported_names_include_families_without_samples() -> None:
    text = "\n".join(
        [
            "# HELP a_total Counter without a sample yet.",
            "# TYPE a_total counter",
            "# TYPE b counter",
            "b_total 1.0",
            "# TYPE c histogram",
            'c_bucket{le="+Inf"} 0.0',
            "# TYPE d gauge",
            'd{x="1"} 2.0',
        ]
    )
    assert exported_names(text) == {
        "a_total",
        "b",
        "b_total",
        "c",
        "c_bucket",
        "c_sum",
        "c_count",
        "d",
    }
