"""Draining an access node (operator scale-down): its drain znode makes it leave ipList and KICK
its clients towards the least-loaded other access node; SIGTERM drains and exits. A vanished
client's session ends at once (S9)."""
from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import pytest
from kazoo.client import KazooClient

from im_runtime.client import ImClient
from im_runtime.protocol.types import RequestType
from tests.cluster.conftest import http_json

pytestmark = pytest.mark.timeout(180)


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_drain_znode_moves_clients_and_sigterm_exits(topology):
    topology.start_route()
    topology.start_dispatch("dispatch-1")
    a1, a2 = topology.start_access("access-1"), topology.start_access("access-2")
    tag = uuid.uuid4().hex[:6]
    uids = [f"d{i}-{tag}" for i in range(4)]
    clients = [ImClient(u, topology.token(u), port=a1.ports["tcp"]) for u in uids]
    for c in clients:
        await c.connect()
        c.http_url = topology.http_url
    zk = KazooClient(hosts=topology.servers.zk.hosts)
    zk.start(timeout=10)
    try:
        drain = {"rate_per_s": 20, "deadline": int(time.time()) + 30, "requested_at": int(time.time())}
        zk.create(f"{topology.zk_root}/drain/access-1", json.dumps(drain).encode(), makepath=True)

        await _until(lambda: all(c.reconnects >= 1 and c.connected.is_set() for c in clients), 30, "clients to move")
        assert all(c.port == a2.ports["tcp"] for c in clients)
        kicks = [c.notices.get_nowait() for c in clients]
        assert all(t == RequestType.KICK and k.reconnect_port == a2.ports["tcp"] for t, k in kicks)

        reg = json.loads(zk.get(f"{topology.zk_root}/access/tcp/access-1")[0])
        assert reg["draining"] is True

        def iplist_ports() -> list[int]:
            return [e["port"] for e in http_json(f"{topology.http_url}/v1/iplist")[1]["tcp"]]

        await _until(lambda: iplist_ports() == [a2.ports["tcp"]], 10, "ipList to leave the draining node out")

        ack = await clients[0].send(uids[1], "after the move")
        assert ack.code == 0
        got = await clients[1].receive(timeout=10)
        assert got.content == b"after the move"

        # A client that vanishes: its session ends at once, so route no longer lists it.
        await clients[3].close()
        from im_runtime.route.grpc_client import RouteClient

        route = RouteClient(f"127.0.0.1:{topology.grpc_port}")
        try:
            async def bound() -> dict:
                return await route.lookup([uids[3]])

            deadline = time.monotonic() + 10
            while await bound() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await bound() == {}
        finally:
            await route.close()

        a1.process.send_signal(signal.SIGTERM)
        assert a1.process.wait(timeout=30) == 0

        # SIGTERM with clients connected: they are KICKed to the other node, then it exits.
        a3 = topology.start_access("access-3")
        live = clients[:3]
        before = {id(c): c.reconnects for c in live}
        a2.process.send_signal(signal.SIGTERM)
        await _until(lambda: all(c.reconnects > before[id(c)] and c.connected.is_set() for c in live), 30,
                     "clients to leave the terminating node")
        assert all(c.port == a3.ports["tcp"] for c in live)
        assert a2.process.wait(timeout=30) == 0
    finally:
        zk.stop()
        zk.close()
        for c in clients:
            await c.close()
