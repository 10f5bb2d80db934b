"""The ZooKeeper registry on a real server: ephemerals, watches bridged into asyncio, worker
ids, and recovery from an expired session without restarting (re-registration)."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from kazoo.client import KazooClient

from im_runtime.cluster.zk import ZkRegistry

pytestmark = pytest.mark.timeout(120)


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def registry(servers):
    reg = ZkRegistry(servers.zk.hosts, f"/imstack/zk-{uuid.uuid4().hex[:8]}", session_timeout=4)
    await reg.start()
    yield reg
    await reg.stop()


def _expire(hosts: str, reg: ZkRegistry) -> None:
    """Ends reg's session from outside, as a ZooKeeper session expiry does."""
    session_id, password = reg.client.client_id
    other = KazooClient(hosts=hosts, client_id=(session_id, password))
    other.start(timeout=10)
    other.stop()
    other.close()


async def test_watch_sees_registrations_come_and_go(registry):
    seen: list[dict] = []
    registry.watch_children(registry.path("dispatch"), seen.append)
    await _until(lambda: seen and seen[-1] == {}, 10, "the initial empty children")
    await registry.register(registry.path("dispatch", "d1"), {"node_id": "d1", "host": "127.0.0.1", "port": 1})
    await _until(lambda: "d1" in seen[-1], 10, "d1 to appear")
    assert seen[-1]["d1"]["port"] == 1
    await registry.unregister(registry.path("dispatch", "d1"))
    await _until(lambda: seen[-1] == {}, 10, "d1 to disappear")


async def test_expired_session_is_recovered_by_re_registering(registry, servers):
    path = registry.path("access", "tcp", "a1")
    await registry.register(path, {"node_id": "a1", "connections": 0})
    old_session = registry.client.client_id[0]
    recovered = asyncio.Event()
    registry.on_recovered = recovered.set
    await asyncio.get_running_loop().run_in_executor(None, _expire, servers.zk.hosts, registry)
    await _until(lambda: registry.sessions_recovered >= 1, 30, "a new session")

    def registered_again() -> bool:
        stat = registry.client.exists(path)
        return stat is not None and stat.ephemeralOwner == registry.client.client_id[0] != old_session

    await _until(registered_again, 30, "the ephemeral node to be re-created under the new session")
    await asyncio.wait_for(recovered.wait(), 10)  # the access node re-binds its clients on this
    await registry.update(path, {"node_id": "a1", "connections": 7})
    assert (await registry.children_data(registry.path("access", "tcp")))["a1"]["connections"] == 7


async def test_worker_ids_are_unique_among_live_nodes(servers, registry):
    others = [ZkRegistry(servers.zk.hosts, registry.root) for _ in range(3)]
    for o in others:
        await o.start()
    try:
        ids = [await registry.worker_id()] + [await o.worker_id() for o in others]
        assert len(set(ids)) == 4 and all(0 <= i < 1024 for i in ids)
    finally:
        for o in others:
            await o.stop()
