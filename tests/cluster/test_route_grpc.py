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
