"""The chart's monitoring pieces (docs/operator.md, "Monitoring"): ServiceMonitors and the
Grafana dashboard, off by default.

Checked here: helm lint with them on and off; the values schema; that the stack ServiceMonitor
selects exactly the metrics Services the operator makes (operator/im_operator/manifests.py,
a pure function) by a port they have; the dashboard file is the generated one, is a well-formed
Grafana dashboard with a datasource variable and namespace/ImCluster variables, and every
query parses as PromQL and filters on those variables; the ConfigMap carries the same JSON;
and every object of the monitoring renderings passes a strict server-side dry run against a
real kube-apiserver with the Prometheus Operator's ServiceMonitor CRD installed (vendored in
tests/deploy/crds/, see its README), then a real helm install. That the queried metrics are
exported is tests/deploy/test_dashboard_metrics.py (runtime) and
tests/operator/test_dashboard_metrics.py (operator).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
import time

import pytest
import yaml

from im_operator import manifests, spec as specmod

from . import dashboard as dash
from .tools import CHART, REPO, by_kind, helm, render

CRD_DIR = REPO / "tests" / "deploy" / "crds"
SERVICEMONITOR_CRD = CRD_DIR / "monitoring.coreos.com_servicemonitors.yaml"
ON = ["serviceMonitor.enabled=true", "grafanaDashboard.enabled=true"]

RENDERINGS = {
    "off": [],
    "on": ON,
    "on-namespaced": ON + ["operator.watchNamespaces={team-a,team-b}"],
    "on-custom": ON + ["serviceMonitor.labels.release=kube-prometheus-stack", "serviceMonitor.interval=15s",
                       "serviceMonitor.namespaceSelector.matchNames={im}", "grafanaDashboard.namespace=monitoring",
                       "grafanaDashboard.annotations.grafana_folder=imstack"],
}


def service_monitors(objs: list[dict]) -> dict[str, dict]:
    """'imclusters' / 'operator' -> ServiceMonitor."""
    return {o["metadata"]["name"].rsplit("-", 1)[-1]: o for o in by_kind(objs, "ServiceMonitor")}


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_helm_lint_strict_with_monitoring_on_and_off(name):
    args = ["lint", "--strict", str(CHART)]
    for s in RENDERINGS[name]:
        args += ["--set", s]
    out = helm(*args).stdout
    assert "0 chart(s) failed" in out, out


def test_monitoring_is_off_by_default():
    objs = render()
    assert not by_kind(objs, "ServiceMonitor")
    assert not by_kind(objs, "Service"), "no operator metrics Service unless serviceMonitor.enabled"
    assert not [o for o in by_kind(objs, "ConfigMap") if "grafana_dashboard" in o["metadata"].get("labels", {})]
    on = render(sets=ON)
    assert sorted(service_monitors(on)) == ["imclusters", "operator"]
    assert len(by_kind(on, "ConfigMap")) == 1 and len(by_kind(on, "Service")) == 1


@pytest.mark.parametrize(
    "bad",
    [
        "serviceMonitor.interval=soon",
        "serviceMonitor.scrapeTimeout=10",
        "serviceMonitor.namespaceSelector.matchNames={Not_A_Namespace}",
        "serviceMonitor.namespaceSelector.all=true",
        "serviceMonitor.operatorMetricsPort=0",
        "serviceMonitor.enable=true",
        "grafanaDashboard.namespace=Bad_NS",
        "grafanaDashboard.labels.grafana_dashboard=1",  # a number: labels are strings
    ],
)
def test_schema_refuses_bad_monitoring_values(bad):
    proc = helm("template", "im-stack", str(CHART), "--set", bad, check=False)
    assert proc.returncode != 0, f"--set {bad} was accepted"
    assert "schema" in proc.stderr.lower(), proc.stderr


def _operator_children(ws: bool = True) -> list[dict]:
    spec = specmod.normalize({"wsAccess": {"enabled": ws}})
    return manifests.desired_children(spec, name="chat", namespace="im", owner={"name": "chat", "uid": "u1"},
                                      access_replicas=2, ws_replicas=1)


def _selects(selector: dict, obj: dict) -> bool:
    return selector["matchLabels"].items() <= obj["metadata"].get("labels", {}).items()


def test_stack_service_monitor_selects_the_operators_metrics_services():
    """The contract between the chart and the operator: the ServiceMonitor's selector picks the
    metrics Service of every role and nothing else the operator makes, by a port they all have."""
    sm = service_monitors(render(sets=ON))["imclusters"]
    children = _operator_children()
    picked = sorted(o["metadata"]["name"] for o in children if o["kind"] == "Service" and _selects(sm["spec"]["selector"], o))
    assert picked == ["chat-access-metrics", "chat-dispatch-metrics", "chat-route-metrics", "chat-ws-access-metrics"]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "30s" and endpoint["scrapeTimeout"] == "10s"
    for svc in (o for o in children if o["metadata"]["name"] in picked):
        assert endpoint["port"] in [p["name"] for p in svc["spec"]["ports"]], svc["metadata"]["name"]
    # The relabelings make the labels the dashboard filters on, from labels the Services carry.
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert set(relabel) == {"imcluster", "component"}
    for svc in (o for o in children if o["metadata"]["name"] in picked):
        # Prometheus names a Service label __meta_kubernetes_service_label_<label, sanitized>.
        meta = {"__meta_kubernetes_service_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v
                for k, v in svc["metadata"]["labels"].items()}
        assert meta[relabel["imcluster"][0]] == "chat"
        assert meta[relabel["component"][0]] == svc["metadata"]["labels"]["app.kubernetes.io/component"]
    # Where the ImClusters are: any namespace by default, the watched ones with a list, or as set.
    assert sm["spec"]["namespaceSelector"] == {"any": True}
    namespaced = service_monitors(render(sets=RENDERINGS["on-namespaced"]))["imclusters"]
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    custom = render(sets=RENDERINGS["on-custom"])
    assert service_monitors(custom)["imclusters"]["spec"]["namespaceSelector"] == {"matchNames": ["im"]}
    for m in service_monitors(custom).values():
        assert m["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert m["spec"]["endpoints"][0]["interval"] == "15s"


def _default_metrics_port() -> int:
    """imstack-operator's --metrics-port default, read from its argument parser's source."""
    tree = ast.parse((REPO / "operator" / "im_operator" / "main.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value == "--metrics-port":
            return next(ast.literal_eval(k.value) for k in node.keywords if k.arg == "default")
    raise AssertionError("no --metrics-port argument in im_operator/main.py")


def test_operator_service_monitor_reaches_the_operator_pod():
    objs = render(sets=ON)
    sm = service_monitors(objs)["operator"]
    (svc,) = by_kind(objs, "Service")
    (dep,) = by_kind(objs, "Deployment")
    assert _selects(sm["spec"]["selector"], svc)
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["imstack-system"]}
    assert svc["metadata"]["namespace"] == "imstack-system"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    (port,) = svc["spec"]["ports"]
    assert port["name"] == sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert port["targetPort"] == _default_metrics_port() == 9090
    # Its series carry the ImCluster as namespace/name: kept, not renamed exported_namespace.
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    # The stack ServiceMonitor does not pick the operator's Service, nor the reverse.
    stack = service_monitors(objs)["imclusters"]
    assert not _selects(stack["spec"]["selector"], svc)
    assert not any(_selects(sm["spec"]["selector"], o) for o in _operator_children() if o["kind"] == "Service")


# --- the dashboard ----------------------------------------------------------------------------


def test_dashboard_file_is_the_generated_one():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "grafana_dashboard.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_dashboard_is_a_grafana_dashboard_with_datasource_and_cluster_variables():
    db = dash.load()
    assert db["schemaVersion"] >= 39, "Grafana 11's classic model or later"
    assert db["uid"] and db["title"] and "imstack" in db["tags"]
    variables = {v["name"]: v for v in db["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "imcluster"]
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "imcluster"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert "$namespace" in variables["imcluster"]["query"]["query"], "ImClusters of the chosen namespace"
    ids, cells = set(), set()
    for p in dash.panels(db):
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        assert p["description"], f"{p['title']}: say what the panel shows"
    titles = " | ".join(p["title"].lower() for p in dash.panels(db))
    for wanted in ("connections per access pod", "messages in / out per second", "ack (send) latency",
                   "offline backlog", "drain state per access pod"):
        assert wanted in titles, f"no panel '{wanted}'"
    latency = next(p for p in dash.panels(db) if p["title"] == "Ack (send) latency")
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p99"]
    assert [dash.uses(t["expr"]).metrics for t in latency["targets"]] == [{"imstack_send_seconds_bucket"}] * 2


def test_every_query_parses_as_promql_and_filters_on_the_chosen_cluster():
    """A query that forgot `namespace`/`imcluster` would mix every ImCluster into one line."""
    queries = dash.queries(dash.load())
    assert len(queries) >= 30
    for where, expr in queries:
        used = dash.uses(expr)  # raises on bad PromQL (unknown function, brackets, ...)
        assert used.selectors, (where, expr)
        for metric, matchers in used.selectors:
            if where == "variable namespace":
                continue
            assert matchers.get("namespace") == "var_namespace", (where, expr)
            if where == "variable imcluster":
                continue
            key = "name" if metric.startswith("imstack_operator_") else "imcluster"
            assert matchers.get(key) == "var_imcluster", (where, metric, expr)


def test_dashboard_configmap_holds_the_file_for_the_grafana_sidecar():
    (cm,) = by_kind(render(sets=ON), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "imstack-system"
    (key,) = cm["data"]
    assert key.endswith(".json")
    assert json.loads(cm["data"][key]) == dash.load()
    (custom,) = by_kind(render(sets=RENDERINGS["on-custom"]), "ConfigMap")
    assert custom["metadata"]["namespace"] == "monitoring"
    assert custom["metadata"]["annotations"] == {"grafana_folder": "imstack"}


# --- against a real kube-apiserver with the ServiceMonitor CRD ----------------------------------


def test_vendored_servicemonitor_crd_is_the_one_the_readme_names():
    note = (CRD_DIR / "README.md").read_text()
    digest = hashlib.sha256(SERVICEMONITOR_CRD.read_bytes()).hexdigest()
    assert f"sha256 `{digest}`" in note, "tests/deploy/crds/README.md names another file: update it"
    crd = yaml.safe_load(SERVICEMONITOR_CRD.read_text())
    assert crd["metadata"]["name"] == "servicemonitors.monitoring.coreos.com"
    version = crd["metadata"]["annotations"]["operator.prometheus.io/version"]
    assert f"v{version}" in note


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    from tests.servers.kube import start_control_plane

    from .kubeapply import KubeApi

    cp = start_control_plane(tmp_path_factory.mktemp("kube-monitoring"))
    try:
        api = KubeApi(cp.url, cp.token, cp.ca_file)
        api.kubeconfig = str(cp.kubeconfig)
        yield api
    finally:
        cp.stop()


def _apply_for_real(api, obj: dict) -> None:
    res = api.apply(obj, dry_run=False)
    assert res.status in (200, 201), f"{obj['kind']} {obj['metadata']['name']}: {res.status} {res.body}"


def _established(api, crd: dict) -> None:
    deadline = time.monotonic() + 60
    while True:
        status = api.get(crd).body.get("status", {})
        if any(c["type"] == "Established" and c["status"] == "True" for c in status.get("conditions") or []):
            return
        assert time.monotonic() < deadline, f"CRD {crd['metadata']['name']} not Established: {status}"
        time.sleep(0.2)


@pytest.mark.timeout(240)
def test_monitoring_objects_pass_a_strict_dry_run_with_the_real_servicemonitor_crd(kube):
    sm_crd = yaml.safe_load(SERVICEMONITOR_CRD.read_text())
    (im_crd,) = by_kind(render(), "CustomResourceDefinition")
    for crd in (sm_crd, im_crd):
        _apply_for_real(kube, crd)
        _established(kube, crd)
    for ns in ("imstack-system", "team-a", "team-b", "monitoring"):
        _apply_for_real(kube, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    failures, monitors = [], 0
    for name, sets in RENDERINGS.items():
        for obj in render(sets=sets):
            res = kube.apply(obj, dry_run=True)
            monitors += obj["kind"] == "ServiceMonitor"
            if res.status not in (200, 201):
                failures.append(f"[{name}] {obj['kind']} {obj['metadata']['name']}: {res.status} "
                                f"{res.body.get('message', res.body)}")
    assert not failures, "\n".join(failures)
    assert monitors == 6, monitors
    # The CRD's schema is really applied: a ServiceMonitor it refuses is refused here.
    bad = service_monitors(render(sets=ON))["imclusters"]
    bad["spec"]["endpoints"][0]["interval"] = "every 30 seconds"
    res = kube.apply(bad, dry_run=True)
    assert res.status == 422, (res.status, res.body)
    assert "interval" in res.body.get("message", "")
    unknown = service_monitors(render(sets=ON))["imclusters"]
    unknown["spec"]["endpoints"][0]["scrapeEvery"] = "30s"
    res = kube.apply(unknown, dry_run=True)
    # Server-side apply refuses a field the schema does not declare while typing the patch
    # (the API server answers 500 for that, not 422).
    assert res.status >= 400 and "scrapeEvery: field not declared in schema" in res.body.get("message", ""), res


@pytest.mark.timeout(240)
def test_helm_install_with_monitoring_on_a_real_apiserver(kube):
    sm_crd = yaml.safe_load(SERVICEMONITOR_CRD.read_text())
    _apply_for_real(kube, sm_crd)
    _established(kube, sm_crd)
    ns = "helm-monitoring"
    base = ["--kubeconfig", kube.kubeconfig, "--namespace", ns]
    helm("install", "im-mon", str(CHART), *base, "--create-namespace", *sum((["--set", s] for s in ON), []))
    sm = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
          "metadata": {"name": "im-mon-im-stack-imclusters", "namespace": ns}}
    got = kube.get(sm)
    assert got.status == 200, got.body
    assert got.body["spec"]["selector"]["matchLabels"]["imstack.io/metrics"] == "true"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "im-mon-im-stack-dashboard", "namespace": ns}}
    got = kube.get(cm)
    assert got.status == 200 and json.loads(got.body["data"]["imstack.json"])["uid"] == dash.load()["uid"]
    helm("uninstall", "im-mon", *base, "--wait", "--timeout", "60s")
    assert kube.get(sm).status == 404 and kube.get(cm).status == 404
