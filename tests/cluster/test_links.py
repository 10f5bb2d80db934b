"""Access <-> dispatch links in-process: register, forward with correlation ids, deliver,
heartbeats, idle links closed, a dead link failing its in-flight requests at once."""
from __future__ import annotations

import asyncio

import pytest

from im_runtime.cluster.links import ClientLink, LinkClosed, LinkServer, deliver_body
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import encode_frame, encode_message
from im_runtime.protocol.types import RequestType

pytestmark = pytest.mark.timeout(30)


async def _link(server: LinkServer, delivered: list) -> ClientLink:
    loop = asyncio.get_running_loop()
    _, link = await loop.create_connection(lambda: ClientLink("d1", lambda uids, frame: delivered.append((uids, frame))), "127.0.0.1", server.port)
    await link.call(RequestType.LINK_REGISTER, pb.LinkRegister(node_id="a1", kind="tcp").SerializeToString(), timeout=5)
    return link


async def test_forward_deliver_and_heartbeat():
    release = asyncio.Event()

    async def handle(fwd: pb.Forward):
        if fwd.uid == "slow":
            await release.wait()
        return RequestType.SEND_ACK, pb.SendAck(message_id=int(fwd.body.decode())).SerializeToString()

    server = LinkServer(handle)
    await server.start("127.0.0.1", 0)
    delivered: list = []
    link = await _link(server, delivered)
    try:
        assert set(server.links) == {"a1"}
        slow = asyncio.ensure_future(link.forward(pb.Forward(uid="slow", body=b"1"), timeout=5))
        fast = await link.forward(pb.Forward(uid="fast", body=b"2"), timeout=5)  # answered out of order
        assert pb.SendAck.FromString(fast.body).message_id == 2
        release.set()
        assert pb.SendAck.FromString((await slow).body).message_id == 1

        frame = await link.call(RequestType.LINK_HEARTBEAT, b"", timeout=5)
        assert frame.request_type == RequestType.LINK_HEARTBEAT_RESP

        push = encode_message(RequestType.PUSH, 0, pb.Message(message_id=9, seq=1))
        server.links["a1"].write(encode_frame(RequestType.DELIVER, 0, deliver_body(["bob", "carol"], push)))
        for _ in range(100):
            if delivered:
                break
            await asyncio.sleep(0.01)
        assert delivered == [(["bob", "carol"], push)]
    finally:
        link.close()
        await server.close()


async def test_dead_link_fails_in_flight_requests_at_once():
    async def never(fwd: pb.Forward):
        await asyncio.sleep(3600)

    server = LinkServer(never)
    await server.start("127.0.0.1", 0)
    link = await _link(server, [])
    pending = asyncio.ensure_future(link.forward(pb.Forward(uid="x"), timeout=30))
    await asyncio.sleep(0.05)
    server.links["a1"].abort()  # the dispatch side dies
    with pytest.raises(LinkClosed):
        await asyncio.wait_for(pending, 2)
    await server.close()


async def test_idle_link_is_closed_by_the_dispatch_side():
    server = LinkServer(lambda fwd: None, idle_s=0.4)
    await server.start("127.0.0.1", 0)
    link = await _link(server, [])
    await asyncio.wait_for(asyncio.shield(link.closed), 5)  # no heartbeats were sent
    assert "a1" not in server.links
    await server.close()


async def test_coalesced_writes_keep_order_survive_close_and_time_out():
    """Frames written in one loop turn leave in one send(), in order; close() sends what is
    still queued (a last DELIVER is not lost); abort() drops it; a call with no answer times
    out (its timer, not asyncio.wait_for) and leaves nothing waiting."""
    async def never(fwd: pb.Forward):
        await asyncio.sleep(60)

    server = LinkServer(never)
    await server.start("127.0.0.1", 0)
    delivered: list = []
    link = await _link(server, delivered)
    try:
        theirs = server.links["a1"]
        pushes = [encode_message(RequestType.PUSH, 0, pb.Message(message_id=i, seq=i)) for i in range(1, 201)]
        for push in pushes:  # one loop turn: queued, not yet sent
            theirs.write(encode_frame(RequestType.DELIVER, 0, deliver_body([f"u{len(delivered)}"], push)))
        assert theirs.buffered() > 0
        theirs.close()  # flushes the queue before closing
        for _ in range(300):
            if len(delivered) == len(pushes):
                break
            await asyncio.sleep(0.01)
        assert [frame for _, frame in delivered] == pushes
        await asyncio.wait_for(link.closed, 5)
        link = await _link(server, delivered)
        theirs = server.links["a1"]
        theirs.write(encode_frame(RequestType.DELIVER, 0, deliver_body(["x"], pushes[0])))
        theirs.abort()  # drops what is queued
        await asyncio.wait_for(link.closed, 5)
        assert len(delivered) == len(pushes)
        link = await _link(server, delivered)
        with pytest.raises(asyncio.TimeoutError):
            await link.forward(pb.Forward(uid="u", body=b"1"), timeout=0.2)
        assert link.waiting == {}
    finally:
        link.close()
        await server.close()
