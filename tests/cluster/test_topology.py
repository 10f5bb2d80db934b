"""One route, dispatch and access process on real ZooKeeper, Redis and FerretDB: clients
talk through them, registrations appear in ZooKeeper, ipList reads them."""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from kazoo.client import KazooClient

from im_runtime.client import ImClient
from im_runtime.client.client import GROUP
from tests.cluster.conftest import http_json

pytestmark = pytest.mark.timeout(180)


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def test_messages_flow_through_separate_processes(topology):
    topology.start_route()
    topology.start_dispatch("dispatch-1")
    access = topology.start_access("access-1")

    status, ips = http_json(f"{topology.http_url}/v1/iplist")
    assert status == 200 and [e["port"] for e in ips["tcp"]] == [access.ports["tcp"]]

    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    clients = [ImClient(u, topology.token(u), http_url=topology.http_url) for u in (alice, bob, carol)]
    for c in clients:
        await c.connect()
    a, b, c = clients
    try:
        ack = await a.send(bob, "hello bob")
        assert ack.code == 0 and ack.seq == 1
        got = await b.receive(timeout=10)
        assert got.content == b"hello bob" and getattr(got, "from") == alice and got.seq == 1

        group = uid("g")
        topology.create_group(group, [alice, bob, carol])
        ack = await c.send(group, "hi all", type=GROUP)
        assert ack.code == 0 and ack.conversation_id == f"g:{group}"
        for receiver in (a, b):
            m = await receiver.receive(timeout=10)
            assert m.content == b"hi all" and m.conversation_id == f"g:{group}"
    finally:
        for cl in clients:
            await cl.close()


async def test_registrations_in_zookeeper(topology):
    topology.start_route()
    dispatch = topology.start_dispatch("dispatch-1")
    access = topology.start_access("access-1")
    # probes and metrics of every process; gRPC health of route
    for port in (access.ports["metrics"], dispatch.ports["metrics"]):
        assert http_json(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert http_json(f"http://127.0.0.1:{port}/readyz")[1]["ready"] is True
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{access.ports['metrics']}/metrics", timeout=5).read().decode()
    assert "imstack_dispatch_links 1.0" in text
    # structured logs: one JSON object per line
    lines = [line for line in access.log_path.read_text().splitlines() if line.strip()]
    assert lines and all(json.loads(line)["level"] for line in lines)
    from im_runtime.route.grpc_client import RouteClient

    route = RouteClient(f"127.0.0.1:{topology.grpc_port}")
    try:
        assert await route.health()
    finally:
        await route.close()
    zk = KazooClient(hosts=topology.servers.zk.hosts)
    zk.start(timeout=10)
    try:
        assert zk.get_children(f"{topology.zk_root}/dispatch") == ["dispatch-1"]
        assert zk.get_children(f"{topology.zk_root}/access/tcp") == ["access-1"]
        data = json.loads(zk.get(f"{topology.zk_root}/access/tcp/access-1")[0])
        assert data["node_id"] == "access-1" and data["kind"] == "tcp" and data["draining"] is False
        assert data["connections"] == 0
    finally:
        zk.stop()
        zk.close()


async def test_websocket_access_node_in_the_cluster(topology):
    """S6: a WebSocket access deployment registers under access/ws, ipList names it, and its
    clients reach TCP clients through the same dispatch nodes."""
    import websockets

    from im_runtime.proto import imstack_pb2 as pb
    from im_runtime.protocol.frame import decode_body, encode_message
    from im_runtime.protocol.types import RequestType

    topology.start_route()
    topology.start_dispatch("dispatch-1")
    topology.start_access("access-tcp")
    web = topology.start_access("access-ws", ws=True)
    status, ips = http_json(f"{topology.http_url}/v1/iplist")
    assert [e["port"] for e in ips["ws"]] == [web.ports["ws"]]

    agent, customer = uid("agent"), uid("customer")
    tcp_client = await ImClient(customer, topology.token(customer), http_url=topology.http_url).connect()
    try:
        async with websockets.connect(f"ws://127.0.0.1:{web.ports['ws']}/ws") as ws:
            async def call(request_type, message, seq):
                await ws.send(encode_message(request_type, seq, message))
                while True:
                    raw = await asyncio.wait_for(ws.recv(), 10)
                    if int.from_bytes(raw[12:16], "big") == seq:
                        return int.from_bytes(raw[8:12], "big"), decode_body(int.from_bytes(raw[8:12], "big"), raw[20:])

            t, auth = await call(RequestType.AUTH_REQ, pb.AuthRequest(uid=agent, token=topology.token(agent)), 1)
            assert t == RequestType.AUTH_RESP and auth.code == 0
            t, ids = await call(RequestType.ID_BATCH_REQ, pb.IdBatchRequest(count=1), 2)
            send = pb.SendRequest(message_id=ids.ids[0], type=pb.SINGLE, to=customer, content=b"how can I help?")
            t, ack = await call(RequestType.SEND_REQ, send, 3)
            assert t == RequestType.SEND_ACK and ack.code == 0
        got = await tcp_client.receive(timeout=10)
        assert got.content == b"how can I help?" and getattr(got, "from") == agent
    finally:
        await tcp_client.close()
