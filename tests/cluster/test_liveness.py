"""ipList tells the truth within a second (cluster/liveness.py): a SIGKILLed access node leaves
ipList long before ZooKeeper expires its session, and comes back when a new process listens."""
from __future__ import annotations

import time

import pytest

from tests.cluster.conftest import http_json

pytestmark = pytest.mark.timeout(120)


def _listed(topology) -> set[int]:
    return {e["port"] for e in http_json(f"{topology.http_url}/v1/iplist")[1]["tcp"]}


def _registered(topology) -> set[str]:
    from kazoo.client import KazooClient

    zk = KazooClient(hosts=topology.servers.zk.hosts)
    zk.start(timeout=10)
    try:
        return set(zk.get_children(f"{topology.zk_root}/access/tcp"))
    finally:
        zk.stop()
        zk.close()


def test_a_killed_access_node_leaves_iplist_within_a_second(topology):
    topology.start_route()
    topology.start_dispatch("dispatch-1")
    a1, a2 = topology.start_access("access-1"), topology.start_access("access-2")
    deadline = time.monotonic() + 20
    while _listed(topology) != {a1.ports["tcp"], a2.ports["tcp"]}:
        assert time.monotonic() < deadline, "both access nodes in ipList"
        time.sleep(0.1)

    a1.kill9()
    killed = time.monotonic()
    while a1.ports["tcp"] in _listed(topology):
        assert time.monotonic() - killed < 3, "the killed node is still in ipList"
        time.sleep(0.02)
    gone_after = time.monotonic() - killed
    print(f"left ipList {gone_after * 1000:.0f} ms after SIGKILL")
    assert gone_after < 1.0
    assert "access-1" in _registered(topology)  # ZooKeeper still lists it: the probe did this
    assert _listed(topology) == {a2.ports["tcp"]}
