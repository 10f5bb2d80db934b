"""PVCs follow `spec.pvcRetention` when an ImCluster is deleted.

A control plane of its own, whose kube-controller-manager also runs the StatefulSet controller:
it makes the managed stores' Pods and PVCs (and, for `Delete`, makes each PVC owned by its
StatefulSet), so the whole chain ImCluster -> StatefulSet -> PVC runs as in a cluster. Pods
stay Pending (no scheduler or kubelet), which is all this needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from im_operator.kubeapi import Kube
from tests.servers.kube import ControlPlane, start_control_plane

from .conftest import OperatorRunner, create_cluster, delete_cluster, install_crd, kube_for, make_namespace, wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster_with_statefulsets(tmp_path_factory) -> Iterator[tuple[ControlPlane, Kube]]:
    cp = start_control_plane(tmp_path_factory.mktemp("kube-sts"), controller_manager=True, controllers=("garbagecollector", "statefulset", "pvc-protection"))
    runner = OperatorRunner(cp.kubeconfig, Path(tmp_path_factory.mktemp("operator-sts")))
    try:
        k = kube_for(cp)
        install_crd(k)
        runner.start()
        yield cp, k
    finally:
        runner.stop()
        cp.stop()


def pvcs(kube: Kube, ns: str) -> set[str]:
    return {p["metadata"]["name"] for p in kube.list("PersistentVolumeClaim", ns, selector={"app.kubernetes.io/managed-by": "imstack-operator"})}


@pytest.mark.parametrize("retention", ["Delete", "Retain"])
def test_pvcs_follow_the_retention_field(cluster_with_statefulsets, zookeeper, retention: str):
    _, kube = cluster_with_statefulsets
    ns = make_namespace(kube)
    create_cluster(kube, ns, "im", {
        "pvcRetention": retention,
        "zookeeper": {"external": {"connectionString": zookeeper.hosts}},
        "redis": {"managed": {"storage": {"size": "3Gi"}}},
        "mongodb": {"external": {"connectionString": "mongodb://mongo.example:27017"}},
    })
    wait_for(lambda: pvcs(kube, ns) == {"data-im-redis-0"}, timeout=60, what="the StatefulSet controller's PVC")
    pvc = kube.get("PersistentVolumeClaim", ns, "data-im-redis-0")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "3Gi"
    if retention == "Delete":
        # whenDeleted=Delete: the StatefulSet controller makes the StatefulSet own its PVCs.
        pvc = wait_for(lambda: (p := kube.get("PersistentVolumeClaim", ns, "data-im-redis-0")) and p["metadata"].get("ownerReferences") and p,
                       what="PVC owned by the StatefulSet")
        assert [r["kind"] for r in pvc["metadata"]["ownerReferences"]] == ["StatefulSet"]
    delete_cluster(kube, ns, "im")
    wait_for(lambda: kube.get("StatefulSet", ns, "im-redis") is None, timeout=60, what="StatefulSet garbage-collected")
    if retention == "Delete":
        wait_for(lambda: pvcs(kube, ns) == set(), timeout=60, what="PVC deleted with its StatefulSet")
    else:
        wait_for(lambda: kube.list("Pod", ns, selector={"app.kubernetes.io/component": "redis"}) == [], timeout=60, what="redis pod gone")
        pvc = kube.get("PersistentVolumeClaim", ns, "data-im-redis-0")
        assert pvc is not None and pvc["metadata"].get("deletionTimestamp") is None, "a retained PVC was deleted"
        assert not pvc["metadata"].get("ownerReferences"), "a retained PVC must not be owned by anything"
