"""The chart and an ImCluster on a real node: every pod runs and is Ready by the kubelet's own
probes, the managed stores really work, and clients chat through the Services.

Runs first among the node tests (file order); later ones disturb the stack.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pymongo
import pytest
import redis

from im_runtime.client import ImClient
from tests.deploy import chat_check
from tests.node.conftest import FIGURES, srvr

# The first test also pays for the session's fixtures: images (minutes on a fresh machine),
# the node, helm install and the ImCluster reaching Ready.
pytestmark = pytest.mark.timeout(1200)


def test_every_pod_runs_ready_under_the_kubelet(stack) -> None:
    pods = stack.node.pods(stack.namespace)
    components = {p["metadata"]["labels"].get("app.kubernetes.io/component", p["metadata"]["labels"].get("app.kubernetes.io/name"))
                  for p in pods}
    # The operator (chart) plus every component of the ImCluster.
    assert {"access", "ws-access", "dispatch", "route", "zookeeper", "redis", "mongodb"} <= components, components
    for p in pods:
        st = p["status"]
        assert st["phase"] == "Running", f"{p['metadata']['name']}: {st['phase']}"
        assert all(c["ready"] for c in st["containerStatuses"]), f"{p['metadata']['name']} not ready: {st['containerStatuses']}"
        assert p["spec"]["nodeName"] == "imstack-node"
        assert st["podIP"].startswith("10.244.0."), st["podIP"]
    # Ready came from real readiness: the operator's status went Progressing before Ready.
    seen = [s for _, s in stack.status_log]
    assert seen and seen[-1].get("Ready") == "True"
    assert any(s.get("Progressing") == "True" and s.get("Ready") != "True" for s in seen), seen[:5]
    conds = stack.conditions()
    assert conds["Progressing"]["status"] == "False" and conds["Degraded"]["status"] == "False"
    assert conds["Ready"]["observedGeneration"] == stack.imcluster()["metadata"]["generation"]
    FIGURES["pods_running"] = len(pods)


def test_zookeeper_ensemble_has_a_quorum(stack) -> None:
    zk = stack.ready_pods("zookeeper")
    assert len(zk) == 3
    modes = sorted(srvr(p["status"]["podIP"])["Mode"] for p in zk)
    assert modes == ["follower", "follower", "leader"], modes
    # Every member serves the same data: the access and dispatch pods registered through it.
    zxids = {srvr(p["status"]["podIP"])["Zxid"][:10] for p in zk}  # epoch part of the zxid
    assert len(zxids) == 1, zxids


def test_redis_never_evicts_and_answers(stack) -> None:
    (pod,) = stack.ready_pods("redis")
    r = redis.Redis(host=pod["status"]["podIP"], port=6379, socket_timeout=5)
    assert r.ping()
    assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert r.config_get("appendonly")["appendonly"] == "yes"
    key = f"imstack-node-test:{secrets.token_hex(4)}"
    assert r.set(key, "v", ex=60) and r.get(key) == b"v"


def test_mongodb_protocol_store_takes_writes(stack) -> None:
    (pod,) = stack.ready_pods("mongodb")
    client = pymongo.MongoClient(pod["status"]["podIP"], 27017, directConnection=True, serverSelectionTimeoutMS=10_000)
    try:
        hello = client.admin.command("hello")
        assert hello["setName"] == "rs0" and hello["isWritablePrimary"]  # what the pods' ?replicaSet=rs0 URL needs
        probe = client["imstack-node-test"]["probe"]
        doc_id = secrets.token_hex(6)
        probe.insert_one({"_id": doc_id, "at": time.time()})
        assert probe.find_one({"_id": doc_id}) is not None
    finally:
        client.close()


def test_iplist_hands_out_pod_ips_the_client_reaches(stack) -> None:
    ips = stack.iplist()
    access_ips = {p["status"]["podIP"] for p in stack.ready_pods("access")}
    ws_ips = {p["status"]["podIP"] for p in stack.ready_pods("ws-access")}
    assert {n["host"] for n in ips["tcp"]} == access_ips
    assert {n["host"] for n in ips["ws"]} == ws_ips
    assert all(n["port"] == 9000 for n in ips["tcp"]) and all(n["port"] == 9001 for n in ips["ws"])


def test_every_role_is_scrapeable_through_its_metrics_service(stack) -> None:
    """What a ServiceMonitor follows: the metrics Services' endpoints, one per pod, each serving
    Prometheus text with the role's metrics (and the operator's Service, its own)."""
    import urllib.request

    status, body = stack.node.api("GET", f"/api/v1/namespaces/{stack.namespace}/services?labelSelector=imstack.io%2Fmetrics%3Dtrue")
    assert status == 200, body
    services = {s["metadata"]["name"]: s for s in body["items"]}
    assert {f"{stack.name}-{c}-metrics" for c in ("access", "ws-access", "dispatch", "route")} <= set(services), sorted(services)
    for name, svc in services.items():
        port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "metrics")
        status, slices = stack.node.api("GET", f"/apis/discovery.k8s.io/v1/namespaces/{stack.namespace}/endpointslices"
                                               f"?labelSelector=kubernetes.io%2Fservice-name%3D{name}")
        addresses = [a for sl in slices["items"] for e in sl.get("endpoints") or [] for a in e["addresses"]]
        component = name[len(stack.name) + 1:-len("-metrics")]
        assert len(addresses) == len(stack.ready_pods(component)) > 0, (name, addresses)
        for ip in addresses:
            with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=5) as r:  # noqa: S310
                text = r.read().decode()
            assert "imstack_" in text and "# TYPE" in text, (name, ip)
            if component in ("access", "ws-access"):
                assert "imstack_draining 0.0" in text, (name, ip)


async def test_one_to_one_and_group_chat_through_the_services(stack) -> None:
    tcp = stack.iplist()["tcp"][0]
    ws = stack.iplist()["ws"][0]
    result = await chat_check.run(route_url=stack.route_url, access=f"{tcp['host']}:{tcp['port']}", admin_key=stack.admin_key,
                                  ws_url=f"ws://{ws['host']}:{ws['port']}/ws")
    assert result["single_seq"][1] > result["single_seq"][0] and result["group_seq"][1] > result["group_seq"][0]


async def test_chat_through_the_access_service_cluster_ip(stack) -> None:
    """The access Service itself (kube-proxy's rules on the node), as an in-cluster client or a
    LoadBalancer in front of it would reach the pods."""
    status, svc = stack.node.api("GET", f"/api/v1/namespaces/{stack.namespace}/services/{stack.name}-access")
    assert status == 200, svc
    cluster_ip = svc["spec"]["clusterIP"]
    assert cluster_ip.startswith("10.97."), cluster_ip
    result = await chat_check.run(route_url=stack.route_url, access=f"{cluster_ip}:9000", admin_key=stack.admin_key)
    assert result["group_seq"][1] > result["group_seq"][0]


async def test_offline_messages_arrive_after_reconnect(stack) -> None:
    tag = secrets.token_hex(3)
    alice, bob, carol = f"alice-{tag}", f"bob-{tag}", f"carol-{tag}"
    tokens = {u: await asyncio.to_thread(stack.token, u) for u in (alice, bob, carol)}
    group = f"g-{tag}"
    await asyncio.to_thread(stack.create_group, group, [alice, bob, carol])
    a = await ImClient(alice, tokens[alice], http_url=stack.route_url).connect()
    try:
        acks = [await a.send(bob, f"while you were away {i}") for i in range(3)]
        acks.append(await a.send(group, "group while away", type=2))
        # bob was never connected; carol neither: both get what they missed on first sign-in.
        b = await ImClient(bob, tokens[bob], http_url=stack.route_url).connect()
        c = await ImClient(carol, tokens[carol], http_url=stack.route_url).connect()
        try:
            got_b = [await b.receive(timeout=15) for _ in range(4)]
            assert [m.message_id for m in got_b if m.type == 1] == [ack.message_id for ack in acks[:3]]
            assert [m.seq for m in got_b if m.type == 1] == [1, 2, 3]
            got_c = await c.receive(timeout=15)
            assert got_c.conversation_id == f"g:{group}" and got_c.content == b"group while away"
        finally:
            await b.close()
            await c.close()
        # bob goes away again, misses one more, and reconnects on another connection.
        more = await a.send(bob, "and one more")
        b2 = await ImClient(bob, tokens[bob], http_url=stack.route_url).connect()
        try:
            got = await b2.receive(timeout=15)
            assert got.message_id == more.message_id and got.seq == 4
        finally:
            await b2.close()
    finally:
        await a.close()
