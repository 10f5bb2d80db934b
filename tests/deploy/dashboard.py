"""The Grafana dashboard's queries, read the way Prometheus reads them.

Used by the monitoring tests (tests/deploy/test_monitoring.py, test_dashboard_metrics.py and
tests/operator/test_dashboard_metrics.py): every PromQL expression of
charts/im-stack/dashboards/imstack.json is parsed by promql-parser (a port of Prometheus's own
parser: an unknown function or a bad bracket fails), with Grafana's variables replaced by
placeholders first, and walked for the metric names and label names it uses. Those are then
compared with what the real processes export on /metrics.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import promql_parser as pq
from prometheus_client.parser import text_string_to_metric_families

from .tools import CHART

DASHBOARD = CHART / "dashboards" / "imstack.json"

# Target labels the Prometheus Operator puts on every series a ServiceMonitor scrapes (its
# generated scrape config); the chart's relabelings add more (read from the rendering).
SERVICE_MONITOR_TARGET_LABELS = frozenset({"namespace", "service", "pod", "container", "endpoint", "job", "instance"})


def load(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", v["query"]["query"])
            assert inner, f"variable {v['name']}: not a label_values(selector, label) query"
            out.append((f"variable {v['name']}", inner.group(1)))
    return out


def substitute(expr: str) -> str:
    """Grafana's variables -> values PromQL accepts ($__rate_interval etc. are durations)."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?(\w+)\}?", r"var_\1", expr)


@dataclass
class Uses:
    """What one expression reads: selectors (metric name -> its matchers) and every label name
    it names (matchers, by/without, on/ignoring, group_left/right)."""

    selectors: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)

    @property
    def metrics(self) -> set[str]:
        return {name for name, _ in self.selectors}


def uses(expr: str) -> Uses:
    found = Uses()
    _walk(pq.parse(substitute(expr)), found)
    return found


def _walk(node, found: Uses) -> None:  # noqa: ANN001 - promql_parser's node classes
    if isinstance(node, pq.VectorSelector):
        matchers = {m.name: m.value for m in node.matchers.matchers}
        name = node.name or matchers.get("__name__")
        assert name, f"a selector without a metric name: {node.prettify()}"
        found.selectors.append((name, {k: v for k, v in matchers.items() if k != "__name__"}))
        found.labels.update(k for k in matchers if k != "__name__")
    elif isinstance(node, pq.MatrixSelector):
        _walk(node.vector_selector, found)
    elif isinstance(node, pq.AggregateExpr):
        if node.modifier is not None:
            found.labels.update(node.modifier.labels)
        _walk(node.expr, found)
        if node.param is not None:
            _walk(node.param, found)
    elif isinstance(node, pq.BinaryExpr):
        mod = node.modifier
        if mod is not None:
            if mod.matching is not None:
                found.labels.update(mod.matching.labels)
            found.labels.update(mod.group_labels or [])
        _walk(node.lhs, found)
        _walk(node.rhs, found)
    elif isinstance(node, pq.Call):
        for arg in node.args:
            _walk(arg, found)
    elif isinstance(node, (pq.ParenExpr, pq.UnaryExpr, pq.SubqueryExpr)):
        _walk(node.expr, found)
    elif not isinstance(node, (pq.NumberLiteral, pq.StringLiteral)):
        raise AssertionError(f"unexpected PromQL node {type(node).__name__}: {node.prettify()}")


def all_uses(dashboard: dict) -> dict[str, Uses]:
    """PromQL -> what it reads, for the whole dashboard."""
    return {expr: uses(expr) for _, expr in queries(dashboard)}


def exported(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, of the samples in a /metrics page (families without a sample
    do not count: a panel over them would stay empty)."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out
