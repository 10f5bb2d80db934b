"""The operator side of monitoring, on the real control plane with the real operator process:
the metrics Services it applies are the ones the chart's ServiceMonitor selects, and every
imstack_operator_* metric the Grafana dashboard queries is exported by the operator with the
labels the dashboard filters on (parsed from the dashboard's PromQL, not listed here).

The test plays one access pod in ZooKeeper with enough connections to make the autoscaler scale
up, so the scale-event counter has a sample too.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from kazoo.client import KazooClient

from im_operator import manifests
from im_operator.kubeapi import Kube
from tests.deploy import dashboard as dash
from tests.deploy.tools import by_kind, render

from .conftest import create_cluster, wait_for

pytestmark = pytest.mark.timeout(180)


def operator_uses() -> dict[str, dash.Uses]:
    return {expr: u for expr, u in dash.all_uses(dash.load()).items() if any(m.startswith("imstack_operator_") for m in u.metrics)}


def test_metrics_services_and_operator_metrics_the_dashboard_reads(kube: Kube, namespace: str, zookeeper, operator_process):
    ns = namespace
    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start(timeout=10)
    try:
        reg = {"node_id": "im-access-0", "host": "127.0.0.1", "port": 9000, "kind": "tcp", "connections": 25,
               "draining": False, "pod": "im-access-0", "updated_at": time.time()}
        zk.create(f"/imstack/{ns}-im/access/tcp/im-access-0", json.dumps(reg).encode(), ephemeral=True, makepath=True)
        create_cluster(kube, ns, "im", {
            "access": {"minReplicas": 1, "maxReplicas": 4, "targetConnectionsPerPod": 10},
            "zookeeper": {"external": {"connectionString": zookeeper.hosts}},
        })
        # 25 connections at 10 per pod: the autoscaler scales access up to 3.
        wait_for(lambda: (d := kube.get("Deployment", ns, "im-access")) and d["spec"]["replicas"] == 3,
                 timeout=30, what="scale-up to 3")

        # The metrics Services, as applied by the operator, are what the chart's ServiceMonitor selects.
        objs = render(sets=["serviceMonitor.enabled=true"])
        (sm,) = [o for o in by_kind(objs, "ServiceMonitor") if o["metadata"]["name"].endswith("-imclusters")]
        wanted = sm["spec"]["selector"]["matchLabels"]
        found = kube.list("Service", ns, selector=wanted)
        assert sorted(s["metadata"]["name"] for s in found) == [
            "im-access-metrics", "im-dispatch-metrics", "im-route-metrics", "im-ws-access-metrics"]
        for svc in found:
            assert [p["name"] for p in svc["spec"]["ports"]] == [sm["spec"]["endpoints"][0]["port"]]
            assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
            comp = svc["metadata"]["labels"]["app.kubernetes.io/component"]
            dep = kube.get("Deployment", ns, manifests.child_name("im", comp))
            assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]

        def page() -> dict[str, set[str]] | None:
            text = urllib.request.urlopen(f"http://127.0.0.1:{operator_process.metrics_port}/metrics", timeout=5).read().decode()
            mine = "\n".join(line for line in text.splitlines() if line.startswith("#") or f'namespace="{ns}"' in line)
            got = dash.exported(mine)
            needed = {m for u in operator_uses().values() for m in u.metrics}
            return got if needed <= set(got) else None

        exported = wait_for(page, timeout=30, what="every operator metric of the dashboard, for this ImCluster")
    finally:
        zk.stop()
        zk.close()

    uses = operator_uses()
    assert len({m for u in uses.values() for m in u.metrics}) >= 4
    for expr, used in uses.items():
        # Scraped with honorLabels, so the series keep namespace/name of the ImCluster; the
        # Prometheus Operator's target labels (pod, job, ...) come on top.
        known = set(dash.SERVICE_MONITOR_TARGET_LABELS).union(*(exported[m] for m in used.metrics))
        assert used.labels <= known, f"{expr}: {sorted(used.labels - known)} not exported by the operator"
