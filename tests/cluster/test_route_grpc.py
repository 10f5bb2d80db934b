"""The route gRPC service: authenticate/bind, lookup, unbind, drop_node, health, deadlines."""
from __future__ import annotations

import pytest

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.route.grpc_client import RouteClient
from im_runtime.route.grpc_server import start_grpc
from im_runtime.route.service import RouteService
from im_runtime.route.tokens import TokenSigner
from im_runtime.storage.memory import memory_stores
from tests.servers.redis import free_port

pytestmark = pytest.mark.timeout(60)


async def test_route_over_grpc():
    signer = TokenSigner(b"k" * 32)
    ready = {"ok": True}
    server, port = await start_grpc(RouteService(signer, memory_stores().sessions), "127.0.0.1", 0, ready=lambda: ready["ok"])
    client = RouteClient(f"127.0.0.1:{port}", timeout=3)
    try:
        assert await client.health()
        ready["ok"] = False
        assert not await client.health()

        bad = await client.authenticate(pb.AuthRequest(uid="alice", token="nope"), node="a1", conn_id=1)
        assert bad.code == 401
        ok = await client.authenticate(pb.AuthRequest(uid="alice", token=signer.mint("alice").token), node="a1", conn_id=1)
        assert ok.code == 0
        await client.authenticate(pb.AuthRequest(uid="bob", token=signer.mint("bob").token), node="a2", conn_id=5)
        assert await client.lookup(["alice", "bob", "carol"]) == {"alice": ["a1"], "bob": ["a2"]}
        assert await client.unbind("alice", node="a1", conn_id=1)
        assert await client.drop_node("a2") == 1
        assert await client.lookup(["alice", "bob"]) == {}
    finally:
        await client.close()
        await server.stop(None)


async def test_unreachable_route_fails_within_the_deadline():
    import grpc

    client = RouteClient(f"127.0.0.1:{free_port()}", timeout=0.5, attempts=2)
    try:
        assert not await client.health()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.lookup(["alice"])
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        await client.close()



async def test_cluster_pusher_delivers_in_call_order_with_batched_lookups():
    """Dispatch side: deliver() returns at once; pushes reach the access node's link in the
    order they were queued, users without a session are skipped, lookups are batched."""
    import asyncio

    from im_runtime.cluster.dispatch import ClusterPusher
    from im_runtime.cluster.links import ClientLink, LinkServer
    from im_runtime.protocol.frame import encode_message
    from im_runtime.protocol.types import RequestType

    stores = memory_stores()
    server, port = await start_grpc(RouteService(TokenSigner(b"k" * 32), stores.sessions), "127.0.0.1", 0)
    client = RouteClient(f"127.0.0.1:{port}", timeout=3)
    links = LinkServer(lambda fwd: None)
    await links.start("127.0.0.1", 0)
    got: list = []
    _, link = await asyncio.get_running_loop().create_connection(
        lambda: ClientLink("d1", lambda uids, frame: got.append((uids, frame))), "127.0.0.1", links.port
    )
    pusher = ClusterPusher(client, links)
    try:
        await link.call(RequestType.LINK_REGISTER, pb.LinkRegister(node_id="a1").SerializeToString(), timeout=5)
        await stores.sessions.bind("bob", "a1", 1, "")
        await stores.sessions.bind("carol", "a1", 2, "")
        frames = [encode_message(RequestType.PUSH, 0, pb.Message(message_id=i, seq=i)) for i in range(1, 201)]
        for i, frame in enumerate(frames):
            await pusher.deliver(["bob", "nobody"] if i % 2 else ["bob", "carol"], frame)
        for _ in range(200):
            if len(got) == len(frames):
                break
            await asyncio.sleep(0.02)
        assert [f for _, f in got] == frames
        assert got[0][0] == ["bob", "carol"] and got[1][0] == ["bob"]
        assert pusher.lookups < len(frames) / 10
    finally:
        pusher.close()
        link.close()
        await links.close()
        await client.close()
        await server.stop(None)
