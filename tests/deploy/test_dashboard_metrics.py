"""Every metric the Grafana dashboard queries is exported by the running processes.

Real role processes (route, dispatch, two TCP access nodes; `python -m im_runtime.cli`) on a
real ZooKeeper, Redis and FerretDB, as in tests/cluster. Two clients chat through access-1,
one bad frame is sent, then access-1 is drained through its drain znode (as the operator does
on scale-down), which KICKs the clients over to access-2. Then every process's /metrics is
scraped and compared with the dashboard's PromQL (parsed, not a list kept here): every
imstack_* metric it reads outside the operator's must have samples, and every label it
filters or groups by must be one the samples carry or one the chart's ServiceMonitor adds.
The operator's metrics are checked the same way in tests/operator/test_dashboard_metrics.py.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import urllib.request
import uuid

import pytest
from kazoo.client import KazooClient

from im_runtime.client import ImClient
from tests.cluster.conftest import Topology
from tests.servers.backends import backends

from . import dashboard as dash
from .tools import by_kind, render

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    with backends(tmp_path_factory.mktemp("dashboard-servers")) as started:
        yield started


@pytest.fixture
def topology(servers, tmp_path):
    topo = Topology(servers, tmp_path)
    yield topo
    topo.stop()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310
        return resp.read().decode()


def value(text: str, sample: str) -> float:
    """The value of one unlabelled sample (or the sum over its label sets)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == sample)


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def target_labels() -> set[str]:
    """Labels Prometheus adds to what the stack ServiceMonitor scrapes (from the rendering)."""
    objs = render(sets=["serviceMonitor.enabled=true"])
    (sm,) = [o for o in by_kind(objs, "ServiceMonitor") if o["metadata"]["name"].endswith("-imclusters")]
    added = {r["targetLabel"] for e in sm["spec"]["endpoints"] for r in e.get("relabelings", [])}
    return set(dash.SERVICE_MONITOR_TARGET_LABELS) | added


async def test_every_metric_the_dashboard_reads_is_exported_by_the_roles(topology):
    route = topology.start_route()
    dispatch = topology.start_dispatch("dispatch-1")
    a1, a2 = topology.start_access("access-1"), topology.start_access("access-2")
    ports = {"route": route.ports["http"], "dispatch": dispatch.ports["metrics"],
             "access-1": a1.ports["metrics"], "access-2": a2.ports["metrics"]}
    for name in ("access-1", "access-2"):
        assert value(scrape(ports[name]), "imstack_draining") == 0, f"{name} reports a drain before any"

    tag = uuid.uuid4().hex[:6]
    alice_id, bob_id = f"alice-{tag}", f"bob-{tag}"
    alice = ImClient(alice_id, topology.token(alice_id), port=a1.ports["tcp"])
    bob = ImClient(bob_id, topology.token(bob_id), port=a1.ports["tcp"])
    for c in (alice, bob):
        await c.connect()
        c.http_url = topology.http_url
    zk = KazooClient(hosts=topology.servers.zk.hosts)
    zk.start(timeout=10)
    try:
        for i in range(3):
            assert (await alice.send(bob_id, f"m{i}")).code == 0
            assert (await bob.receive(timeout=10)).content == f"m{i}".encode()
        await until(lambda: value(scrape(ports["dispatch"]), "imstack_push_acks_total") >= 3, 15, "bob's PUSH_ACKs")

        # One bad frame (head_length 21): ERROR BAD_FRAME and a close (imstack_protocol_errors_total).
        reader, writer = await asyncio.open_connection("127.0.0.1", a1.ports["tcp"])
        writer.write(struct.pack(">5I", 21, 1, 3, 1, 0))
        await asyncio.wait_for(reader.read(1024), 5)
        writer.close()

        # Drain access-1 the way the operator does: its clients are KICKed over to access-2.
        drain = {"rate_per_s": 50, "deadline": int(time.time()) + 30, "requested_at": int(time.time())}
        zk.create(f"{topology.zk_root}/drain/access-1", json.dumps(drain).encode(), makepath=True)
        await until(lambda: all(c.port == a2.ports["tcp"] and c.connected.is_set() for c in (alice, bob)), 30,
                    "clients moved to access-2")
        assert (await alice.send(bob_id, "after the drain")).code == 0
        assert (await bob.receive(timeout=10)).content == b"after the drain"

        pages = {name: scrape(port) for name, port in ports.items()}
    finally:
        zk.stop()
        zk.close()
        for c in (alice, bob):
            await c.close()

    # The metrics this change added behave: drain state per pod, offline entries written.
    assert value(pages["access-1"], "imstack_draining") == 1
    assert value(pages["access-2"], "imstack_draining") == 0
    for role in ("route", "dispatch"):  # the dashboard counts access pods by it
        assert "imstack_draining" not in dash.exported(pages[role]), f"{role} exports imstack_draining"
    assert value(pages["dispatch"], "imstack_offline_writes_total") >= 4  # one receiver per message
    assert 'imstack_kicks_total{reason="drain"}' in pages["access-1"]

    exported: dict[str, set[str]] = {}
    for page in pages.values():
        for sample, labels in dash.exported(page).items():
            exported.setdefault(sample, set()).update(labels)
    added = target_labels()
    uses = dash.all_uses(dash.load())
    wanted = {m for u in uses.values() for m in u.metrics if not m.startswith("imstack_operator_")}
    assert len(wanted) >= 20, sorted(wanted)
    missing = sorted(m for m in wanted if m not in exported)
    assert not missing, f"the dashboard reads metrics no role exports: {missing}"
    for expr, used in uses.items():
        stack = [m for m in used.metrics if not m.startswith("imstack_operator_")]
        if not stack:
            continue
        known = added | set().union(*(exported[m] for m in stack))
        unknown = used.labels - known
        assert not unknown, f"{expr}: labels {sorted(unknown)} are neither exported nor added by the ServiceMonitor"
