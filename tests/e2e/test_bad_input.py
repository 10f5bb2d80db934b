"""PROTOCOL.md's bad-input rules over TCP: the error, the close only where it says so, and
nobody else disturbed."""
import asyncio
import os

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import HEADER, encode_frame
from im_runtime.protocol.types import ErrorCode, RequestType


async def _bystander(stack):
    """A conversation that must keep working while someone sends garbage."""
    alice = await stack.client("alice")
    bob = await stack.client("bob")
    return alice, bob


async def _still_fine(alice, bob, text):
    await alice.send("bob", text)
    assert (await bob.receive(5)).content == text.encode()


async def test_bad_head_length_closes_with_bad_frame(stack):
    alice, bob = await _bystander(stack)
    bad = await stack.raw("mallory")
    bad.send_raw(HEADER.pack(16, 1, RequestType.HEARTBEAT_REQ, 9, 0))
    t, _, err = await bad.next_frame()
    assert t == RequestType.ERROR and err.code == ErrorCode.BAD_FRAME
    assert await bad.closed()
    await _still_fine(alice, bob, "after bad frame")


async def test_oversized_body_closes_with_frame_too_large(stack):
    alice, bob = await _bystander(stack)
    bad = await stack.raw("mallory")
    bad.send_raw(HEADER.pack(20, 1, RequestType.SEND_REQ, 9, 65_537))  # the body never needs to arrive
    t, _, err = await bad.next_frame()
    assert t == RequestType.ERROR and err.code == ErrorCode.FRAME_TOO_LARGE
    assert await bad.closed()
    await _still_fine(alice, bob, "after oversized")


async def test_body_at_the_limit_is_accepted(stack):
    raw = await stack.raw("alice")
    body = pb.SendRequest(message_id=5, type=pb.SINGLE, to="bob", content=b"x" * 100).SerializeToString()
    padded = body + b"\x00" * 0  # a legal body; the limit applies to body_length
    t, _, ack = await raw.request(RequestType.SEND_REQ, pb.SendRequest.FromString(padded))
    assert t == RequestType.SEND_ACK and ack.code == 0


async def test_unknown_type_answers_and_stays_open(stack):
    raw = await stack.raw("alice")
    for request_type in (7, 12, 100, 4242):
        t, seq, err = await raw.request(request_type)
        assert t == RequestType.ERROR and err.code == ErrorCode.NOT_FOUND
    t, _, _ = await raw.request(RequestType.HEARTBEAT_REQ)
    assert t == RequestType.HEARTBEAT_RESP


async def test_bad_body_answers_and_stays_open(stack):
    alice, bob = await _bystander(stack)
    raw = await stack.raw("mallory")
    raw.send_raw(encode_frame(RequestType.SEND_REQ, 11, b"\x0a\xff\xff\xff\xff"))
    t, seq, err = await raw.next_frame()
    assert (t, seq, err.code) == (RequestType.ERROR, 11, ErrorCode.BAD_BODY)
    t, _, ack = await raw.request(RequestType.SEND_REQ, pb.SendRequest(message_id=1, type=pb.SINGLE, to="bob", content=b"ok"))
    assert ack.code == 0
    assert (await bob.receive(5)).content == b"ok"
    await _still_fine(alice, bob, "after bad body")


async def test_requests_before_auth_are_unauthenticated(stack):
    raw = await stack.raw()
    for request_type, body in (
        (RequestType.SEND_REQ, pb.SendRequest(message_id=1, type=pb.SINGLE, to="bob")),
        (RequestType.PULL_OFFLINE_REQ, pb.PullOfflineRequest()),
        (RequestType.UNREAD_REQ, None),
        (RequestType.ID_BATCH_REQ, pb.IdBatchRequest(count=1)),
    ):
        t, _, err = await raw.request(request_type, body)
        assert t == RequestType.ERROR and err.code == ErrorCode.UNAUTHENTICATED
    t, _, _ = await raw.request(RequestType.HEARTBEAT_REQ)
    assert t == RequestType.HEARTBEAT_RESP


async def test_bad_and_expired_tokens_are_refused(stack):
    raw = await stack.raw()
    t, _, resp = await raw.request(RequestType.AUTH_REQ, pb.AuthRequest(uid="alice", token="nonsense"))
    assert t == RequestType.AUTH_RESP and resp.code == ErrorCode.UNAUTHENTICATED
    bob_token = await stack.token("bob")
    t, _, resp = await raw.request(RequestType.AUTH_REQ, pb.AuthRequest(uid="alice", token=bob_token))
    assert resp.code == ErrorCode.UNAUTHENTICATED
    expired = stack.app.signer.mint("alice", ttl_s=1, now=1_000_000).token
    t, _, resp = await raw.request(RequestType.AUTH_REQ, pb.AuthRequest(uid="alice", token=expired))
    assert resp.code == ErrorCode.UNAUTHENTICATED
    t, _, resp = await raw.request(RequestType.AUTH_REQ, pb.AuthRequest(uid="alice", token=await stack.token("alice")))
    assert resp.code == 0


async def test_repeated_failed_auth_closes(stack):
    raw = await stack.raw()
    for _ in range(5):
        raw.send(RequestType.AUTH_REQ, pb.AuthRequest(uid="alice", token="bad"))
    assert await raw.closed()


async def test_idle_connection_is_closed(stack_factory):
    stack = await stack_factory(idle_timeout=0.6)
    idle = await stack.raw("alice")
    beating = await stack.raw("bob")
    for _ in range(6):
        await asyncio.sleep(0.25)
        await beating.request(RequestType.HEARTBEAT_REQ)
    assert await idle.closed(timeout=3)
    t, _, _ = await beating.request(RequestType.HEARTBEAT_REQ)
    assert t == RequestType.HEARTBEAT_RESP


async def test_random_garbage_never_disturbs_others(stack):
    alice, bob = await _bystander(stack)
    for i in range(5):
        raw = await stack.raw("mallory" if i % 2 else None)
        raw.send_raw(os.urandom(2000))
        await raw.closed(timeout=5)
    await _still_fine(alice, bob, "after garbage")


async def test_slow_reader_is_dropped_and_loses_nothing(stack_factory):
    """Per conversation, an unacking reader gets 5 pushes and then only PULL_NOTIFYs; many
    conversations of full-size pushes fill its buffer, and the server drops it at the limit
    instead of buffering without bound. Everything waits offline for its return."""
    limit = 256 * 1024
    stack = await stack_factory(max_write_buffer=limit)
    slow = await stack.raw("bob")
    slow.writer.transport.pause_reading()  # bob stops reading; the kernel buffers fill up
    (conn,) = stack.app.node.by_uid["bob"]
    senders = [await stack.raw(f"s{i}") for i in range(40)]
    payload = b"x" * 30_000
    sent, peak = 0, 0
    for round_ in range(5):
        for i, raw in enumerate(senders):
            t, _, ack = await raw.request(
                RequestType.SEND_REQ, pb.SendRequest(message_id=round_ * 100 + i + 1, type=pb.SINGLE, to="bob", content=payload)
            )
            assert ack.code == 0
            sent += 1
            if conn.transport is not None:
                peak = max(peak, conn.transport.get_write_buffer_size())
    assert "bob" not in stack.app.node.by_uid, "the slow reader was never dropped"
    assert peak <= limit + 64 * 1024  # bounded: one push past the limit at most
    assert await stack.app.stores.offline.backlog("bob") == sent  # nothing lost
    bob = await stack.client("bob")
    got = [await bob.receive(5) for _ in range(sent)]
    assert len({m.message_id for m in got}) == sent


async def test_rate_limit_answers_429(stack_factory):
    stack = await stack_factory(rate_per_s=5.0)
    raw = await stack.raw("alice")
    codes = []
    for _ in range(30):
        t, _, body = await raw.request(RequestType.ID_BATCH_REQ, pb.IdBatchRequest(count=1))
        codes.append(body.code if t == RequestType.ERROR else 0)
    assert ErrorCode.RATE_LIMITED in codes and codes[0] == 0
    t, _, _ = await raw.request(RequestType.HEARTBEAT_REQ)
    assert t == RequestType.HEARTBEAT_RESP  # heartbeats are never limited


async def test_negative_limits_and_bad_conversation_ids(stack):
    raw = await stack.raw("alice")
    t, _, err = await raw.request(RequestType.PULL_OFFLINE_REQ, pb.PullOfflineRequest(limit=-1))
    assert t == RequestType.ERROR and err.code == ErrorCode.BAD_BODY
    t, _, err = await raw.request(RequestType.ID_BATCH_REQ, pb.IdBatchRequest(count=-3))
    assert t == RequestType.ERROR and err.code == ErrorCode.BAD_BODY
    t, _, err = await raw.request(RequestType.READ_REPORT, pb.ReadReport(conversation_id="x:y", seq=1))
    assert t == RequestType.ERROR and err.code == ErrorCode.BAD_BODY
    t, _, ids = await raw.request(RequestType.ID_BATCH_REQ, pb.IdBatchRequest(count=5000))
    assert t == RequestType.ID_BATCH_RESP and len(ids.ids) == 1000  # clamped
