"""Autoscaling on a real control plane and a real ZooKeeper.

The test plays the access pods: it creates their registrations in ZooKeeper (the layout of
docs/contracts.md) and Pod objects with their names, and drives the connection counts. The
operator (a real kopf process) must scale up at once, hold steady under a noisy count, and scale
down by draining the emptiest pod first, never the busiest.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from kazoo.client import KazooClient

from im_operator.kubeapi import Kube

from .conftest import condition, create_cluster, events, get_cluster, wait_for

pytestmark = pytest.mark.timeout(240)

STABILIZATION = 5


class FakeAccessPods:
    def __init__(self, zk: KazooClient, root: str) -> None:
        self.zk, self.root = zk, root

    def path(self, pod: str) -> str:
        return f"{self.root}/access/tcp/{pod}"

    def set(self, pod: str, connections: int, *, draining: bool = False) -> None:
        data = json.dumps({"node_id": pod, "host": "127.0.0.1", "port": 9000, "kind": "tcp", "connections": connections,
                           "draining": draining, "pod": pod, "updated_at": time.time()}).encode()
        if self.zk.exists(self.path(pod)):
            self.zk.set(self.path(pod), data)
        else:
            self.zk.create(self.path(pod), data, ephemeral=True, makepath=True)

    def gone(self, pod: str) -> None:
        self.zk.delete(self.path(pod))

    def drains(self) -> list[str]:
        return self.zk.get_children(f"{self.root}/drain") if self.zk.exists(f"{self.root}/drain") else []


def replicas(kube: Kube, ns: str) -> int:
    return kube.get("Deployment", ns, "im-access")["spec"]["replicas"]


def test_scale_up_hold_under_noise_then_drain_the_emptiest(kube: Kube, namespace: str, zookeeper, operator_process):
    ns = namespace
    root = f"/imstack/{ns}-im"
    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start(timeout=10)
    try:
        pods = FakeAccessPods(zk, root)
        names = [f"im-access-{i}" for i in range(4)]
        for n in names:  # Pod objects, so the operator can set the deletion cost on the drained one
            kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n, "namespace": ns, "labels": {"app.kubernetes.io/instance": "im"}},
                         "spec": {"containers": [{"name": "access", "image": "imstack/access:test"}]}})
        pods.set(names[0], 0)
        create_cluster(kube, ns, "im", {
            "access": {"minReplicas": 1, "maxReplicas": 4, "targetConnectionsPerPod": 10, "scaleDownStabilizationSeconds": STABILIZATION,
                       "drainTimeoutSeconds": 60, "drainRatePerSecond": 7},
            "wsAccess": {"enabled": False},
            "zookeeper": {"external": {"connectionString": zookeeper.hosts}},
        })
        wait_for(lambda: kube.get("Deployment", ns, "im-access"), what="access deployment")
        assert replicas(kube, ns) == 1

        # Scale up at once: 35 connections at 10 per pod -> 4 pods.
        t0 = time.monotonic()
        pods.set(names[0], 35)
        wait_for(lambda: replicas(kube, ns) == 4, timeout=15, what="scale up to 4")
        scale_up_s = time.monotonic() - t0
        print(f"scale-up latency: {scale_up_s:.2f} s")
        assert scale_up_s < 5, scale_up_s
        cl = wait_for(lambda: (c := get_cluster(kube, ns, "im"))["status"].get("connections") == 35 and c, what="status connections")
        assert cl["status"]["autoscaling"]["desiredReplicas"] == 4 and "35 connections" in cl["status"]["autoscaling"]["lastScaleReason"]
        wait_for(lambda: any(e["reason"] == "ScaledUp" for e in events(kube, ns)), what="ScaledUp event")

        # Noise: the total swings between 25 (3 pods) and 38 (4 pods) every second, for twice
        # the window. Never a drain, never fewer than 4 pods.
        for n in names[1:]:
            pods.set(n, 1)
        end = time.monotonic() + 2 * STABILIZATION + 2
        i = 0
        while time.monotonic() < end:
            total = 38 if i % 2 == 0 else 25
            pods.set(names[0], total - 3)
            i += 1
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert replicas(kube, ns) == 4, "scaled down under a noisy count"
                assert pods.drains() == [], "drained under a noisy count"
                time.sleep(0.1)

        pods.set(names[0], 35)  # end the noise on a 4-pod sample the operator sees
        time.sleep(1.3)

        # Load drops to 22 (3 pods): after the window, the emptiest pod (im-access-2) is drained,
        # never the busiest (im-access-0); replicas stay 4 while it still has clients.
        counts = {names[0]: 12, names[1]: 6, names[2]: 1, names[3]: 3}
        for n, c in counts.items():
            pods.set(n, c)
        t_drop = time.monotonic()
        wait_for(lambda: pods.drains() == [names[2]], timeout=STABILIZATION + 10, what="drain of the emptiest pod")
        print(f"drain started {time.monotonic() - t_drop:.2f} s after the drop (window {STABILIZATION} s)")
        assert time.monotonic() - t_drop >= STABILIZATION - 2.5  # not before the window
        drain = json.loads(zk.get(f"{root}/drain/{names[2]}")[0])
        assert drain["rate_per_s"] == 7 and drain["deadline"] > time.time()
        cl = wait_for(lambda: (c := get_cluster(kube, ns, "im")) and condition(c, "AutoscalingActive")["reason"] == "Draining" and c,
                      what="AutoscalingActive=Draining")
        time.sleep(2.5)  # the drained pod still holds a client: nothing may be removed yet
        assert replicas(kube, ns) == 4
        assert pods.drains() == [names[2]]

        # The access node empties (its clients were KICKed elsewhere): replicas 4 -> 3, and the
        # ReplicaSet is told to remove that pod.
        pods.set(names[2], 0, draining=True)
        pods.set(names[1], 7)
        wait_for(lambda: replicas(kube, ns) == 3, what="scale down to 3 after the drain")
        ann = kube.get("Pod", ns, names[2])["metadata"].get("annotations", {})
        assert ann.get("controller.kubernetes.io/pod-deletion-cost") == "-1000000"
        for n in (names[0], names[1], names[3]):
            assert "controller.kubernetes.io/pod-deletion-cost" not in (kube.get("Pod", ns, n)["metadata"].get("annotations") or {})
        # Status and Events follow the Deployment (kopf writes status after the pass).
        wait_for(lambda: "drained im-access-2" in get_cluster(kube, ns, "im")["status"]["autoscaling"]["lastScaleReason"], what="status names the drain")
        wait_for(lambda: any(e["reason"] == "ScaledDown" for e in events(kube, ns)), what="ScaledDown event")
        assert replicas(kube, ns) == 3  # one pod at a time: still 3 while 22 connections need 3

        # The pod is gone: its registration expires and the operator deletes the drain request.
        pods.gone(names[2])
        wait_for(lambda: pods.drains() == [], what="drain znode removed after the pod left")
        time.sleep(2)
        assert replicas(kube, ns) == 3

        # The operator's own metrics say the same.
        body = urllib.request.urlopen(f"http://127.0.0.1:{operator_process.metrics_port}/metrics", timeout=5).read().decode()
        lbl = f'component="access",name="im",namespace="{ns}"'
        assert f"imstack_operator_desired_replicas{{{lbl}}} 3.0" in body
        assert f'imstack_operator_scale_events_total{{action="ScaleDown",{lbl}}} 1.0' in body
        assert f'imstack_operator_scale_events_total{{action="StartDrain",{lbl}}} 1.0' in body
    finally:
        zk.stop()
        zk.close()


def test_a_restarted_operator_resumes_the_drain_it_started(kube: Kube, namespace: str, zookeeper, operator_process):
    ns = namespace
    root = f"/imstack/{ns}-im"
    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start(timeout=10)
    try:
        pods = FakeAccessPods(zk, root)
        a = [f"im-access-{i}" for i in range(3)]
        pods.set(a[0], 25)
        create_cluster(kube, ns, "im", {
            "access": {"minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerPod": 10, "scaleDownStabilizationSeconds": 2,
                       "drainTimeoutSeconds": 60},
            "wsAccess": {"enabled": False},
            "zookeeper": {"external": {"connectionString": zookeeper.hosts}},
        })
        wait_for(lambda: kube.get("Deployment", ns, "im-access")["spec"]["replicas"] == 3, what="scale up to 3")
        pods.set(a[0], 5)
        pods.set(a[1], 1)
        pods.set(a[2], 2)
        wait_for(lambda: pods.drains() == [a[1]], what="drain of the emptiest")
        wait_for(lambda: (get_cluster(kube, ns, "im")["status"]["autoscaling"]["tcp"].get("drain") or {}).get("nodeId") == a[1],
                 what="the drain saved in status")
        # Now a[2] is the emptiest that is not draining. A restarted operator that forgot its
        # drain would start a second one; it must resume the first instead.
        pods.set(a[1], 3)
        operator_process.restart()
        end = time.monotonic() + 5
        while time.monotonic() < end:
            assert pods.drains() == [a[1]], "a second drain started after the restart"
            assert kube.get("Deployment", ns, "im-access")["spec"]["replicas"] == 3
            time.sleep(0.2)
        pods.set(a[1], 0, draining=True)
        wait_for(lambda: kube.get("Deployment", ns, "im-access")["spec"]["replicas"] == 2, what="scale down after the resumed drain")
        wait_for(lambda: f"drained {a[1]}" in get_cluster(kube, ns, "im")["status"]["autoscaling"]["lastScaleReason"], what="status names the drain")
    finally:
        zk.stop()
        zk.close()
