"""Writes charts/im-stack/dashboards/imstack.json, the Grafana dashboard of an ImCluster.

    python scripts/grafana_dashboard.py          # rewrite the file
    python scripts/grafana_dashboard.py --check  # exit 1 if the file is not what this makes

The dashboard is generated rather than hand-edited so that every PromQL query sits in one
readable place and every panel gets the same datasource, filters and layout rules; the chart
ships the generated file twice (the file itself for import by hand, and a ConfigMap for
Grafana's dashboard sidecar). tests/deploy/test_monitoring.py keeps the file equal to this
script's output and checks every query against what the running processes export.

Labels the queries rely on (docs/operator.md, "Monitoring"): `namespace` and `pod` (set by
Prometheus for every Kubernetes target), `imcluster` and `component` (the chart's
ServiceMonitor relabels them from the metrics Services' labels); the operator's own series
carry the ImCluster as `namespace` and `name` (scraped with honorLabels).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "charts" / "im-stack" / "dashboards" / "imstack.json"

# Grafana's classic dashboard model at its schema version 42 (Grafana 12): the JSON is
# already in that form, so Grafana runs no migration on it when it loads the file.
SCHEMA_VERSION = 42
UID = "imstack-imcluster"
DS = {"type": "prometheus", "uid": "${datasource}"}
STACK = 'namespace="$namespace", imcluster="$imcluster"'  # every stack query is filtered so
OPERATOR = 'namespace="$namespace", name="$imcluster"'  # the operator's series of that ImCluster
RATE = "$__rate_interval"


def rate(metric: str, by: str = "", sel: str = STACK) -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{sel}}}[{RATE}]))"


def quantile(q: float, metric: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}{{{STACK}}}[{RATE}])))"


def target(expr: str, legend: str = "", *, instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "range": not instant}
    if instant:
        t["instant"] = True
    return t


class Layout:
    """Places panels left to right in rows of 24 grid units; ids in order."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0
        self.row_h = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x = self.row_h = 0

    def add(self, panel: dict[str, Any], *, w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        for i, t in enumerate(panel["targets"]):
            t["refId"] = chr(ord("A") + i)
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def _base(kind: str, title: str, description: str, targets: list[dict[str, Any]], unit: str) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
    }


def stat(title: str, description: str, targets: list[dict[str, Any]], *, unit: str = "short") -> dict[str, Any]:
    p = _base("stat", title, description, targets, unit)
    p["fieldConfig"]["defaults"].update(
        color={"mode": "thresholds"}, thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None}]}
    )
    p["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto",
        "textMode": "auto", "wideLayout": True, "showPercentChange": False,
    }
    return p


def series(title: str, description: str, targets: list[dict[str, Any]], *, unit: str = "short", bars: bool = False,
           right_axis: str | None = None) -> dict[str, Any]:
    p = _base("timeseries", title, description, targets, unit)
    p["fieldConfig"]["defaults"].update(
        color={"mode": "palette-classic"},
        min=0,
        custom={"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                "spanNulls": False, "axisPlacement": "auto", "stacking": {"mode": "none", "group": "A"}},
    )
    if right_axis:  # a second quantity on its own axis (e.g. replicas next to connections)
        p["fieldConfig"]["overrides"].append({
            "matcher": {"id": "byRegexp", "options": right_axis},
            "properties": [{"id": "custom.axisPlacement", "value": "right"}, {"id": "unit", "value": "short"}],
        })
    p["options"] = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return p


def states(title: str, description: str, targets: list[dict[str, Any]], *, off: str, on: str) -> dict[str, Any]:
    """A state timeline of a 0/1 gauge, one lane per series."""
    p = _base("state-timeline", title, description, targets, "short")
    p["fieldConfig"]["defaults"].update(
        color={"mode": "thresholds"},
        thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 1}]},
        mappings=[{"type": "value", "options": {"0": {"text": off, "color": "green", "index": 0},
                                                 "1": {"text": on, "color": "orange", "index": 1}}}],
        custom={"fillOpacity": 80, "lineWidth": 0},
    )
    p["options"] = {
        "showValue": "never", "mergeValues": True, "alignValue": "left", "rowHeight": 0.9,
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return p


def panels() -> list[dict[str, Any]]:
    L = Layout()
    L.row("Overview")
    L.add(stat("Client connections", "Open client connections over all access pods (TCP and WebSocket).",
               [target(f"sum(imstack_connections{{{STACK}}})", "connections")]), w=4, h=4)
    L.add(stat("Access pods / draining", "Access pods scraped, and how many of them are draining.",
               [target(f"count(imstack_draining{{{STACK}}})", "pods"),
                target(f"sum(imstack_draining{{{STACK}}})", "draining")]), w=4, h=4)
    L.add(stat("Messages in /s", "Messages accepted (SEND_REQ acked) per second.",
               [target(rate("imstack_messages_in_total"), "in")], unit="short"), w=4, h=4)
    L.add(stat("Ack latency p99", "99th percentile of dispatch's SEND_REQ -> SEND_ACK time.",
               [target(quantile(0.99, "imstack_send_seconds_bucket"), "p99")], unit="s"), w=4, h=4)
    L.add(stat("Offline growth (range)",
               "Offline queue entries written minus entries removed by PUSH_ACK over the time range: "
               "how much the offline backlog grew (negative: it shrank).",
               [target(f"sum(increase(imstack_offline_writes_total{{{STACK}}}[$__range])) - "
                       f"sum(increase(imstack_push_acks_total{{{STACK}}}[$__range]))", "entries", instant=True)]), w=4, h=4)
    L.add(stat("Access replicas wanted", "Access replicas the operator's autoscaler set (TCP + WebSocket).",
               [target(f"sum(imstack_operator_desired_replicas{{{OPERATOR}}})", "replicas")]), w=4, h=4)

    L.row("Access pods")
    L.add(series("Connections per access pod",
                 "Open client connections of each access pod; pods without any show 0.",
                 [target(f"sum by (pod) (imstack_connections{{{STACK}}}) or sum by (pod) (0 * imstack_draining{{{STACK}}})",
                         "{{pod}}")]), w=12, h=8)
    L.add(states("Drain state per access pod",
                 "draining: the pod refuses new clients, is out of ipList and KICKs its clients towards "
                 "other pods (operator scale-down via its drain znode, or SIGTERM in a rolling upgrade).",
                 [target(f"max by (pod) (imstack_draining{{{STACK}}})", "{{pod}}")], off="serving", on="draining"), w=12, h=8)
    L.add(series("KICKs /s by reason", "KICK frames sent; reason drain = clients moved off a draining pod.",
                 [target(rate("imstack_kicks_total", "reason"), "{{reason}}")]), w=6, h=7)
    L.add(series("Frames /s", "Protocol frames received from and written to clients.",
                 [target(rate("imstack_frames_in_total"), "in"), target(rate("imstack_frames_out_total"), "out")]), w=6, h=7)
    L.add(series("Auth, errors, slow-client drops /s",
                 "Authentication attempts by result; ERROR frames by code (bad frames that close the connection, "
                 "errors answered by dispatch); clients dropped for a full write buffer.",
                 [target(rate("imstack_auth_total", "result"), "auth {{result}}"),
                  target(rate("imstack_protocol_errors_total", "code"), "error {{code}}"),
                  target(rate("imstack_slow_client_drops_total"), "slow-client drops")]), w=6, h=7)
    L.add(series("Dispatch links per access pod", "Live links from each access pod to the dispatch pods.",
                 [target(f"sum by (pod) (imstack_dispatch_links{{{STACK}}})", "{{pod}}")]), w=6, h=7)

    L.row("Messages")
    L.add(series("Messages in / out per second",
                 "in: messages accepted, by conversation type; out: pushes to receivers' connections; "
                 "pull notify: sent instead of a push to a receiver with more than 5 pending.",
                 [target(rate("imstack_messages_in_total", "type"), "in {{type}}"),
                  target(rate("imstack_messages_out_total"), "out (pushes)"),
                  target(rate("imstack_pull_notify_total"), "pull notify")]), w=12, h=8)
    L.add(series("Ack (send) latency", "Dispatch's time from SEND_REQ to SEND_ACK (persisted and queued for "
                                       "every receiver), over all dispatch pods.",
                 [target(quantile(0.5, "imstack_send_seconds_bucket"), "p50"),
                  target(quantile(0.99, "imstack_send_seconds_bucket"), "p99")], unit="s"), w=12, h=8)
    L.add(series("Ack latency p99 per dispatch pod", "The same p99, per dispatch pod.",
                 [target(quantile(0.99, "imstack_send_seconds_bucket", "le, pod"), "{{pod}}")], unit="s"), w=12, h=7)
    L.add(series("Re-sends answered from de-dup /s",
                 "Sends of a message id already accepted: the client retried (lost ack, reconnect).",
                 [target(rate("imstack_duplicate_sends_total"), "duplicates")]), w=12, h=7)

    L.row("Offline queues")
    L.add(series("Offline entries written / removed per second",
                 "written: one entry per receiver of each message (kept until acked); removed: by PUSH_ACK.",
                 [target(rate("imstack_offline_writes_total"), "written"),
                  target(rate("imstack_push_acks_total"), "removed (acked)")]), w=12, h=8)
    L.add(series("Offline backlog growth", "Net entries per second added to the offline queues: above 0 the "
                                           "backlog grows (receivers offline or not acking).",
                 [target(f"{rate('imstack_offline_writes_total')} - {rate('imstack_push_acks_total')}", "net")]), w=12, h=8)

    L.row("Stores")
    L.add(series("MongoDB insert batch latency", "Time of each coalesced insert_many batch (what every send in "
                                                "it waits for).",
                 [target(quantile(0.5, "imstack_mongo_insert_seconds_bucket"), "p50"),
                  target(quantile(0.99, "imstack_mongo_insert_seconds_bucket"), "p99")], unit="s"), w=12, h=7)
    L.add(series("Redis pipeline /s", "Commands and socket writes on the pipelined Redis connections, and "
                                      "connections lost or timed out.",
                 [target(rate("imstack_redis_pipeline_commands_total"), "commands"),
                  target(rate("imstack_redis_pipeline_writes_total"), "writes"),
                  target(rate("imstack_redis_pipeline_connections_lost_total"), "connections lost"),
                  target(rate("imstack_redis_pipeline_timeouts_total"), "timeouts")]), w=12, h=7)

    L.row("Operator")
    L.add(series("Connections seen / access replicas wanted",
                 "What the operator's autoscaler reads from ZooKeeper and the replicas it set, per access kind.",
                 [target(f"sum by (component) (imstack_operator_connections{{{OPERATOR}}})", "connections {{component}}"),
                  target(f"sum by (component) (imstack_operator_desired_replicas{{{OPERATOR}}})", "replicas {{component}}")],
                 right_axis="^replicas.*"), w=12, h=8)
    L.add(states("Operator drain in progress", "1 while the operator drains an access pod before removing it.",
                 [target(f"max by (component) (imstack_operator_draining{{{OPERATOR}}})", "{{component}}")],
                 off="idle", on="draining"), w=6, h=8)
    L.add(series("Autoscaler actions", "Scale-ups, drain starts/cancels and scale-downs.",
                 [target(f"sum by (component, action) (increase(imstack_operator_scale_events_total{{{OPERATOR}}}[{RATE}]))",
                         "{{component}} {{action}}")], bars=True), w=6, h=8)
    L.add(series("Reconcile passes /s by result", "ok, error (an API error; see the ImCluster's Degraded "
                                                  "condition) or invalid_spec.",
                 [target(rate("imstack_operator_reconciles_total", "result", OPERATOR), "{{result}}")]), w=12, h=7)
    return L.panels


def variables() -> list[dict[str, Any]]:
    def query(name: str, label: str, q: str) -> dict[str, Any]:
        return {
            "name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": q, "refId": f"{name}-variable"}, "definition": q,
            "refresh": 2, "sort": 1, "includeAll": False, "multi": False, "hide": 0,
            "current": {}, "options": [], "regex": "",
        }

    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "refresh": 1, "hide": 0, "includeAll": False, "multi": False, "current": {}, "options": [], "regex": ""},
        # imstack_draining: one sample per access pod from its start (every ImCluster has some).
        query("namespace", "Namespace", "label_values(imstack_draining, namespace)"),
        query("imcluster", "ImCluster", 'label_values(imstack_draining{namespace="$namespace"}, imcluster)'),
    ]


def dashboard() -> dict[str, Any]:
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "description": "One imstack ImCluster: connections and drain state per access pod, messages in/out, "
                       "ack latency, offline queues, stores, and the operator's autoscaler. "
                       "Generated by scripts/grafana_dashboard.py; see docs/operator.md, Monitoring.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [],
        "panels": panels(),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["imstack"],
        "templating": {"list": variables()},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": "imstack ImCluster",
        "uid": UID,
        "version": 1,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed file differs")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is not what scripts/grafana_dashboard.py makes; run it", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
