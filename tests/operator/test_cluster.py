"""The operator (kopf, real process) against a real kube-apiserver: children, status, repair,
refusal of bad specs, garbage collection."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from im_operator.kubeapi import Kube, KubeError

from .conftest import condition, create_cluster, delete_cluster, events, get_cluster, patch_cluster, play_kubelet, wait_for

pytestmark = pytest.mark.timeout(240)

EXPECTED = {
    ("ConfigMap", "im-config"), ("Secret", "im-keys"),
    ("Deployment", "im-access"), ("Deployment", "im-ws-access"), ("Deployment", "im-dispatch"), ("Deployment", "im-route"),
    ("Service", "im-access"), ("Service", "im-ws-access"), ("Service", "im-route"),
    ("StatefulSet", "im-redis"), ("Service", "im-redis-headless"),
    ("StatefulSet", "im-mongodb"), ("Service", "im-mongodb-headless"),
    ("PodDisruptionBudget", "im-access"), ("PodDisruptionBudget", "im-route"), ("PodDisruptionBudget", "im-redis"),
}


def spec_for(zk_hosts: str, **extra) -> dict:
    spec = {
        "image": {"repository": "reg.test/imstack", "tag": "9.9.9"},
        "access": {"minReplicas": 2, "maxReplicas": 5, "targetConnectionsPerPod": 100, "service": {"type": "NodePort"}},
        "dispatch": {"replicas": 3, "nodeSelector": {"pool": "im"}},
        "zookeeper": {"external": {"connectionString": zk_hosts}},
        "pvcRetention": "Delete",
    }
    spec.update(extra)
    return spec


def all_present(kube: Kube, ns: str) -> bool:
    return all(kube.get(kind, ns, name) is not None for kind, name in EXPECTED)


def test_apply_creates_children_then_ready_and_repairs(kube: Kube, namespace: str, zookeeper, operator_process):
    ns = namespace
    created = create_cluster(kube, ns, "im", spec_for(zookeeper.hosts))
    uid = created["metadata"]["uid"]
    # The API server applied the schema defaults.
    assert created["spec"]["wsAccess"]["minReplicas"] == 1 and created["spec"]["redis"] == {"managed": {"replicas": 1, "image": "redis:7.2", "storage": {"size": "1Gi"}}}

    wait_for(lambda: all_present(kube, ns), timeout=60, what="every child")
    for kind, name in EXPECTED:
        obj = kube.get(kind, ns, name)
        if kind != "Secret" or True:
            refs = obj["metadata"].get("ownerReferences", [])
            assert [(r["kind"], r["uid"], r.get("controller")) for r in refs] == [("ImCluster", uid, True)], (kind, name)
    assert kube.get("StatefulSet", ns, "im-zookeeper") is None  # external ZooKeeper: none managed
    access = kube.get("Deployment", ns, "im-access")
    assert access["spec"]["replicas"] == 2
    c = access["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "reg.test/imstack/access:9.9.9"
    assert kube.get("Service", ns, "im-access")["spec"]["type"] == "NodePort"
    dispatch = kube.get("Deployment", ns, "im-dispatch")
    assert dispatch["spec"]["replicas"] == 3 and dispatch["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "im"}
    assert kube.get("ConfigMap", ns, "im-config")["data"]["IMSTACK_ZK"] == zookeeper.hosts
    assert kube.get("StatefulSet", ns, "im-redis")["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"

    # Nothing is ready yet: Progressing, not Ready, and the status says which.
    def progressing():
        cl = get_cluster(kube, ns, "im")
        p, r = condition(cl, "Progressing"), condition(cl, "Ready")
        return cl if p and p["status"] == "True" and r["status"] == "False" else None

    cl = wait_for(progressing, what="Progressing=True")
    assert cl["status"]["observedGeneration"] == cl["metadata"]["generation"]
    assert "access 0/2" in condition(cl, "Ready")["message"]
    assert cl["status"]["components"]["dispatch"] == {"desiredReplicas": 3, "readyReplicas": 0}

    # Play the kubelet: every workload ready -> Ready.
    assert play_kubelet(kube, ns, "im") >= 6

    def ready():
        cl = get_cluster(kube, ns, "im")
        r = condition(cl, "Ready")
        return cl if r and r["status"] == "True" else None

    cl = wait_for(ready, what="Ready=True")
    assert condition(cl, "Progressing")["status"] == "False" and condition(cl, "Degraded")["status"] == "False"
    assert cl["status"]["components"]["access"] == {"desiredReplicas": 2, "readyReplicas": 2}
    # What `kubectl get imc` prints (the CRD's printer columns, rendered by the API server).
    table = kube.request("GET", f"/apis/imstack.io/v1alpha1/namespaces/{ns}/imclusters/im", accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    row = dict(zip([c["name"] for c in table["columnDefinitions"]], table["rows"][0]["cells"]))
    assert (row["Ready"], row["Reason"], row["Access"], row["Desired"], row["Connections"]) == ("True", "AllComponentsReady", 2, 2, 0)

    # The keys are generated once and survive a spec change.
    key = kube.get("Secret", ns, "im-keys")["data"]["tokenKey"]
    assert len(base64.b64decode(key)) >= 48
    patch_cluster(kube, ns, "im", {"spec": {"route": {"replicas": 4}}})
    wait_for(lambda: kube.get("Deployment", ns, "im-route")["spec"]["replicas"] == 4, what="route scaled by spec")
    assert kube.get("Secret", ns, "im-keys")["data"]["tokenKey"] == key
    cl = wait_for(lambda: (c := get_cluster(kube, ns, "im"))["status"]["observedGeneration"] == c["metadata"]["generation"] and c, what="observedGeneration")
    assert condition(cl, "Ready")["status"] == "False"  # route 4 wanted, status still says 2
    play_kubelet(kube, ns, "im")
    wait_for(ready, what="Ready again after the route rollout")

    # A child deleted by hand comes back; a hand edit is put back.
    kube.delete("Deployment", ns, "im-route")
    kube.delete("ConfigMap", ns, "im-config")
    wait_for(lambda: kube.get("Deployment", ns, "im-route") and kube.get("ConfigMap", ns, "im-config"), what="deleted children re-created")
    kube.merge_patch("Deployment", ns, "im-access", {"spec": {"replicas": 5}})
    kube.merge_patch("Service", ns, "im-access", {"spec": {"type": "ClusterIP"}})
    wait_for(lambda: kube.get("Deployment", ns, "im-access")["spec"]["replicas"] == 2, what="access replicas put back")
    wait_for(lambda: kube.get("Service", ns, "im-access")["spec"]["type"] == "NodePort", what="service type put back")

    # Disabling WebSocket access prunes its children.
    patch_cluster(kube, ns, "im", {"spec": {"wsAccess": {"enabled": False}}})
    wait_for(lambda: kube.get("Deployment", ns, "im-ws-access") is None and kube.get("Service", ns, "im-ws-access") is None, what="ws children pruned")

    # Deleting the ImCluster removes its children (garbage collector, owner references), even
    # with the operator stopped: no finalizer waits for it.
    assert not get_cluster(kube, ns, "im")["metadata"].get("finalizers")
    operator_process.stop()
    delete_cluster(kube, ns, "im")
    wait_for(lambda: all(kube.get(k, ns, n) is None for k, n in EXPECTED), timeout=60, what="children garbage-collected")
    operator_process.start()


def test_bad_specs_are_refused_by_the_schema(kube: Kube, namespace: str):
    # The example of docs/operator.md is accepted as it stands (server-side dry run).
    text = (Path(__file__).resolve().parents[2] / "docs/operator.md").read_text()
    example = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    example["metadata"]["namespace"] = namespace
    got = kube.request("POST", f"/apis/imstack.io/v1alpha1/namespaces/{namespace}/imclusters", query={"dryRun": "All"}, body=example)
    assert got["spec"]["access"]["maxReplicas"] == 20 and got["spec"]["wsAccess"]["drainTimeoutSeconds"] == 120

    bad = [
        ({"access": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must not exceed maxReplicas"),
        ({"zookeeper": {"managed": {"replicas": 2}}}, "odd number"),
        ({"redis": {"managed": {}, "external": {"connectionString": "redis://x"}}}, "exactly one of managed or external"),
        ({"mongodb": {"external": {}}}, "exactly one of connectionString or secretRef"),
        ({"access": {"service": {"type": "Magic"}}}, "Unsupported value"),
        ({"dispatch": {"replicas": 0}}, "should be greater than or equal to 1"),
    ]
    for spec, message in bad:
        with pytest.raises(KubeError) as err:
            create_cluster(kube, namespace, "bad", spec)
        assert err.value.status == 422 and message in err.value.message, (spec, str(err.value))


def test_missing_secret_is_degraded_with_reason_and_event(kube: Kube, namespace: str, zookeeper):
    ns = namespace
    create_cluster(kube, ns, "im", spec_for(zookeeper.hosts, access={"tlsSecretName": "no-such-tls"}))

    def degraded():
        cl = get_cluster(kube, ns, "im")
        d = condition(cl, "Degraded")
        return cl if d and d["status"] == "True" else None

    cl = wait_for(degraded, what="Degraded=True")
    d = condition(cl, "Degraded")
    assert d["reason"] == "ReconcileFailed" and "secret no-such-tls not found" in d["message"]
    assert condition(cl, "Ready")["status"] == "False"
    wait_for(lambda: any(e["reason"] == "ReconcileError" and e["type"] == "Warning" and "no-such-tls" in e["message"] for e in events(kube, ns)),
             what="a Warning event for the error")
    # Fixing it clears Degraded.
    kube.create({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": "no-such-tls", "namespace": ns},
                 "data": {"tls.crt": base64.b64encode(b"x").decode(), "tls.key": base64.b64encode(b"y").decode()}})
    wait_for(lambda: condition(get_cluster(kube, ns, "im"), "Degraded")["status"] == "False", what="Degraded cleared")


def test_managed_stores_and_zookeeper_from_a_secret(kube: Kube, namespace: str, zookeeper):
    ns = namespace
    # Everything managed: a 3-server ZooKeeper quorum, Redis, a MongoDB replica set.
    create_cluster(kube, ns, "full", {})
    wait_for(lambda: all(kube.get("StatefulSet", ns, f"full-{c}") for c in ("zookeeper", "redis", "mongodb")), what="managed stores")
    zk_sts = kube.get("StatefulSet", ns, "full-zookeeper")
    assert zk_sts["spec"]["replicas"] == 3 and zk_sts["spec"]["serviceName"] == "full-zookeeper-headless"
    env = {e["name"]: e.get("value") for e in zk_sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert len(env["ZOO_SERVERS"].split()) == 3
    cm = kube.get("ConfigMap", ns, "full-config")["data"]
    assert cm["IMSTACK_ZK"].count("full-zookeeper-headless") == 3
    # Its quorum's DNS names do not resolve here (no cluster DNS): the status says so, and why.
    cl = wait_for(lambda: (c := get_cluster(kube, ns, "full")) and (a := condition(c, "AutoscalingActive")) and a["status"] == "False" and c,
                  timeout=45, what="AutoscalingActive=False")
    assert condition(cl, "AutoscalingActive")["reason"] == "ZooKeeperUnavailable"
    wait_for(lambda: any(e["reason"] == "ZooKeeperUnavailable" and e["type"] == "Warning" for e in events(kube, ns)), what="Warning event")
    assert kube.get("Deployment", ns, "full-access")["spec"]["replicas"] == 2  # left at minReplicas

    # External ZooKeeper named by a Secret: the pods get it by secretKeyRef, the operator reads it.
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "zk-conn", "namespace": ns},
                 "data": {"hosts": base64.b64encode(zookeeper.hosts.encode()).decode()}})
    create_cluster(kube, ns, "viasecret", {"zookeeper": {"external": {"secretRef": {"name": "zk-conn", "key": "hosts"}}},
                                           "access": {"minReplicas": 1, "targetConnectionsPerPod": 10}, "wsAccess": {"enabled": False}})
    from kazoo.client import KazooClient

    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start(timeout=10)
    try:
        zk.create(f"/imstack/{ns}-viasecret/access/tcp/viasecret-access-0", b'{"connections": 25, "draining": false, "pod": "viasecret-access-0"}',
                  ephemeral=True, makepath=True)
        wait_for(lambda: kube.get("Deployment", ns, "viasecret-access")["spec"]["replicas"] == 3, what="scale up from counts read via the secret")
        d = kube.get("Deployment", ns, "viasecret-dispatch")["spec"]["template"]["spec"]["containers"][0]
        zk_env = next(e for e in d["env"] if e["name"] == "IMSTACK_ZK")
        assert zk_env["valueFrom"]["secretKeyRef"] == {"name": "zk-conn", "key": "hosts"}
    finally:
        zk.stop()
        zk.close()
