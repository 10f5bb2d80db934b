"""Reconnect without re-delivery (issue 11): acks lost on their way to the server do not bring
messages back. The ack path is a real TCP connection through tests/e2e/ackproxy.py, which
stops passing PUSH_ACK frames on and then cuts the connection."""
from __future__ import annotations

import asyncio

import pytest

from im_runtime.client import ImClient, RetryPolicy
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.types import RequestType
from tests.e2e.ackproxy import AckProxy

pytestmark = pytest.mark.timeout(60)
N = 40


@pytest.fixture
async def proxy(stack):
    p = await AckProxy(stack.tcp_port).start()
    yield p
    await p.close()


async def _via(stack, proxy: AckProxy, uid: str, device_id: str, **kwargs) -> ImClient:
    c = ImClient(uid, await stack.token(uid), port=proxy.port, device_id=device_id,
                 retry=RetryPolicy(attempts=4, base_delay=0.05, ack_timeout=3), **kwargs)
    await c.connect()
    stack._clients.append(c)
    return c


async def _until(predicate, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_acks_lost_with_the_connection_are_not_redelivered(stack, proxy):
    bob = await _via(stack, proxy, "bob", "phone")
    alice = await stack.client("alice")
    await alice.send("bob", "before")
    assert (await bob.receive(5)).content == b"before"
    off = stack.app.stores.offline
    await _until(lambda: _is(off.backlog("bob", device="phone"), 0))

    proxy.drop_acks = True  # from here bob's acks never reach the server
    for i in range(N):
        await alice.send("bob", f"m{i}")
    got = [await bob.receive(5) for _ in range(N)]
    assert [m.content for m in got] == [f"m{i}".encode() for i in range(N)]
    await asyncio.sleep(0.2)  # bob has acked all of them (into the proxy)
    assert proxy.dropped_ids >= N
    # Every PUSH_ACK was lost. Past 5 unacked the server sent PULL_NOTIFY, and those pulls
    # carried the lost acks (acked_ids); what came after the last pull is still unacked.
    lost = await off.backlog("bob", device="phone")
    assert lost > 0

    reconnects = bob.reconnects
    proxy.drop_connections()  # the connection dies; bob reconnects through the proxy and pulls
    await _until(lambda: _now(bob.reconnects > reconnects and bob.connected.is_set()))
    await _until(lambda: _is(off.backlog("bob", device="phone"), 0))  # acks came with the pull
    await asyncio.sleep(0.3)
    assert bob.duplicates == 0, f"{bob.duplicates} of {lost} messages came back"
    assert bob.inbox.empty()
    await alice.send("bob", "after")
    assert (await bob.receive(5)).content == b"after"


async def test_without_the_resume_position_the_same_loss_redelivers(stack, proxy):
    """The control: a client written from PROTOCOL.md alone (no resume fields) over the same
    path gets every message whose ack was lost again, so the test above measures something."""
    from tests.e2e.conftest import RawClient

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    raw = RawClient(reader, writer)
    _, _, resp = await raw.request(RequestType.AUTH_REQ, pb.AuthRequest(uid="bob", token=await stack.token("bob"), device_id="v1"))
    assert resp.code == 0
    alice = await stack.client("alice")
    proxy.drop_acks = True
    for i in range(N):
        await alice.send("bob", f"m{i}")  # 5 pushes, then PULL_NOTIFYs
    _, _, first = await raw.request(RequestType.PULL_OFFLINE_REQ, pb.PullOfflineRequest(limit=100))
    pushed = list(first.messages)
    assert len(pushed) == N
    raw.send(RequestType.PUSH_ACK, pb.PushAck(message_ids=[m.message_id for m in pushed]))  # lost in the proxy
    await raw.request(RequestType.HEARTBEAT_REQ)
    proxy.drop_connections()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.tcp_port)
    again = RawClient(reader, writer)
    _, _, resp = await again.request(RequestType.AUTH_REQ, pb.AuthRequest(uid="bob", token=await stack.token("bob"), device_id="v1"))
    _, _, page = await again.request(RequestType.PULL_OFFLINE_REQ, pb.PullOfflineRequest(limit=100))
    assert [m.message_id for m in page.messages] == [m.message_id for m in pushed]  # all of them again
    again.close()
    raw.close()


async def test_a_restarted_app_resumes_from_the_position_it_kept(stack, proxy):
    """The resume position alone (an app that keeps `resume_cursor` across restarts, with no
    acks in memory): a pulled page whose acks were lost is not pulled again."""
    alice = await stack.client("alice")
    for i in range(N):
        await alice.send("bob", f"m{i}")
    proxy.drop_acks = True
    first = await _via(stack, proxy, "bob", "phone")  # pulls the N on connect; its acks are lost
    assert len([await first.receive(5) for _ in range(N)]) == N
    kept = first.resume_cursor
    assert kept > 0
    await first.close()
    assert await stack.app.stores.offline.backlog("bob", device="phone") == N
    restarted = await stack.client("bob", device_id="phone", resume_cursor=kept)
    await alice.send("bob", "new")
    assert (await restarted.receive(5)).content == b"new"
    await asyncio.sleep(0.2)
    assert restarted.inbox.empty() and restarted.duplicates == 0
    assert await stack.app.stores.offline.backlog("bob", device="phone") == 0


async def _is(awaitable, value) -> bool:
    return await awaitable == value


async def _now(value: bool) -> bool:
    return value
