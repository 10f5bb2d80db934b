"""Every request type end to end over real sockets, and the delivery guarantees."""
import asyncio

from im_runtime.client import GROUP, SendFailed
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.types import ErrorCode, RequestType


async def test_auth_heartbeat_ids_send_push_ack(stack):
    alice = await stack.raw("alice")
    bob = await stack.raw("bob")
    hb = await alice.request(RequestType.HEARTBEAT_REQ)
    assert hb[0] == RequestType.HEARTBEAT_RESP
    _, _, ids = await alice.request(RequestType.ID_BATCH_REQ, pb.IdBatchRequest(count=5))
    assert len(ids.ids) == 5 and len(set(ids.ids)) == 5
    _, _, ack = await alice.request(
        RequestType.SEND_REQ, pb.SendRequest(message_id=ids.ids[0], type=pb.SINGLE, to="bob", content=b"hello")
    )
    assert ack.code == 0 and ack.seq == 1 and ack.conversation_id == "s:alice:bob"
    _, seq, push = await bob.expect(RequestType.PUSH)
    assert getattr(push, "from") == "alice" and push.content == b"hello" and push.seq == 1
    assert await stack.app.stores.offline.backlog("bob") == 1
    bob.send(RequestType.PUSH_ACK, pb.PushAck(message_ids=[push.message_id]))
    await bob.request(RequestType.HEARTBEAT_REQ)  # PUSH_ACK has no answer: a round trip orders it
    assert await stack.app.stores.offline.backlog("bob") == 0


async def test_offline_delivery_in_order_on_connect(stack):
    alice = await stack.client("alice")
    acks = [await alice.send("bob", f"m{i}") for i in range(3)]
    assert [a.seq for a in acks] == [1, 2, 3]
    bob = await stack.client("bob")  # connect pulls the offline queue
    got = [await bob.receive(5) for _ in range(3)]
    assert [m.content for m in got] == [b"m0", b"m1", b"m2"]
    for _ in range(50):
        if await stack.app.stores.offline.backlog("bob") == 0:
            break
        await asyncio.sleep(0.02)
    assert await stack.app.stores.offline.backlog("bob") == 0


async def test_resend_is_idempotent_and_delivered_once(stack):
    alice = await stack.raw("alice")
    bob = await stack.client("bob")
    req = pb.SendRequest(message_id=777, type=pb.SINGLE, to="bob", content=b"once")
    _, _, first = await alice.request(RequestType.SEND_REQ, req)
    _, _, second = await alice.request(RequestType.SEND_REQ, req)
    assert first.code == 0 and second.code == ErrorCode.DUPLICATE
    assert (second.seq, second.conversation_id, second.server_time) == (first.seq, first.conversation_id, first.server_time)
    assert (await bob.receive(5)).content == b"once"
    await alice.request(RequestType.SEND_REQ, pb.SendRequest(message_id=778, type=pb.SINGLE, to="bob", content=b"next"))
    assert (await bob.receive(5)).content == b"next"  # the duplicate was never delivered in between
    # the same id from another sender is another message
    carol = await stack.raw("carol")
    _, _, other = await carol.request(RequestType.SEND_REQ, pb.SendRequest(message_id=777, type=pb.SINGLE, to="bob"))
    assert other.code == 0


async def test_group_order_with_concurrent_senders(stack):
    members = ["m1", "m2", "m3", "m4"]
    await stack.group("team", members)
    clients = {m: await stack.client(m) for m in members}

    async def talk(uid):
        return [await clients[uid].send("team", f"{uid}-{i}", type=GROUP) for i in range(15)]

    acks = await asyncio.gather(*(talk(m) for m in members[:3]))
    all_seqs = sorted(a.seq for batch in acks for a in batch)
    assert all_seqs == list(range(1, 46))  # server-assigned, gapless, strictly increasing
    for uid, client in clients.items():
        own = 15 if uid != "m4" else 0
        got = [await client.receive(5) for _ in range(45 - own)]
        seqs = [m.seq for m in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), uid
        assert all(getattr(m, "from") != uid for m in got)
        assert client.inbox.empty()


async def test_group_membership_rules(stack):
    await stack.group("club", ["alice", "bob"])
    carol = await stack.raw("carol")
    _, _, ack = await carol.request(RequestType.SEND_REQ, pb.SendRequest(message_id=1, type=pb.GROUP, to="club"))
    assert ack.code == ErrorCode.FORBIDDEN
    _, _, ack = await carol.request(RequestType.SEND_REQ, pb.SendRequest(message_id=2, type=pb.GROUP, to="nope"))
    assert ack.code == ErrorCode.NOT_FOUND
    t, _, err = await carol.request(RequestType.PULL_HISTORY_REQ, pb.PullHistoryRequest(conversation_id="g:club"))
    assert t == RequestType.ERROR and err.code == ErrorCode.FORBIDDEN
    t, _, err = await carol.request(RequestType.PULL_HISTORY_REQ, pb.PullHistoryRequest(conversation_id="s:alice:bob"))
    assert t == RequestType.ERROR and err.code == ErrorCode.FORBIDDEN
    _, _, ack = await carol.request(RequestType.SEND_REQ, pb.SendRequest(message_id=0, type=pb.SINGLE, to="bob"))
    assert ack.code == ErrorCode.BAD_BODY
    _, _, ack = await carol.request(RequestType.SEND_REQ, pb.SendRequest(message_id=3, type=pb.SINGLE, to="bad:uid"))
    assert ack.code == ErrorCode.BAD_BODY
    _, _, ack = await carol.request(RequestType.SEND_REQ, pb.SendRequest(message_id=4, to="bob"))
    assert ack.code == ErrorCode.BAD_BODY  # no conversation type


async def test_pull_notify_when_more_than_five_pending(stack):
    bob = await stack.raw("bob")  # never acks
    alice = await stack.client("alice")
    for i in range(8):
        await alice.send("bob", f"n{i}")
    pushes, notifies = [], []
    for _ in range(8):
        t, _, body = await bob.next_frame()
        (pushes if t == RequestType.PUSH else notifies).append(body)
    assert [p.seq for p in pushes] == [1, 2, 3, 4, 5]
    assert [(n.latest_seq, n.pending) for n in notifies] == [(6, 6), (7, 7), (8, 8)]
    assert notifies[0].conversation_id == "s:alice:bob"
    _, _, page1 = await bob.request(RequestType.PULL_OFFLINE_REQ, pb.PullOfflineRequest(limit=5))
    assert [m.seq for m in page1.messages] == [1, 2, 3, 4, 5] and page1.has_more
    _, _, page2 = await bob.request(RequestType.PULL_OFFLINE_REQ, pb.PullOfflineRequest(cursor=page1.next_cursor, limit=5))
    assert [m.seq for m in page2.messages] == [6, 7, 8] and not page2.has_more
    bob.send(RequestType.PUSH_ACK, pb.PushAck(message_ids=[m.message_id for m in page1.messages]))
    _, _, again = await bob.request(RequestType.PULL_OFFLINE_REQ, pb.PullOfflineRequest())
    assert [m.seq for m in again.messages] == [6, 7, 8]


async def test_sdk_handles_pull_notify(stack):
    alice = await stack.client("alice")
    for i in range(9):
        await alice.send("bob", f"x{i}")
    bob = await stack.client("bob")
    got = [await bob.receive(5) for _ in range(9)]
    assert [m.seq for m in got] == list(range(1, 10))
    for i in range(9, 20):
        await alice.send("bob", f"x{i}")
    got = [await bob.receive(5) for _ in range(11)]
    assert [m.seq for m in got] == list(range(10, 21))


async def test_history_paging(stack):
    alice = await stack.client("alice")
    for i in range(12):
        await alice.send("bob", f"h{i}")
    conv = "s:alice:bob"
    latest, more = await alice.history(conv, limit=5)
    assert [m.seq for m in latest] == [8, 9, 10, 11, 12] and more
    older, more = await alice.history(conv, before_seq=8, limit=5)
    assert [m.seq for m in older] == [3, 4, 5, 6, 7] and more
    oldest, more = await alice.history(conv, before_seq=3, limit=5)
    assert [m.seq for m in oldest] == [1, 2] and not more
    after, more = await alice.history(conv, after_seq=10, limit=5)
    assert [m.seq for m in after] == [11, 12] and not more
    window, _ = await alice.history(conv, after_seq=4, before_seq=7)
    assert [m.seq for m in window] == [5, 6]


async def test_read_reports_status_and_unread(stack):
    alice = await stack.client("alice")
    bob = await stack.client("bob")
    await stack.group("trio", ["alice", "bob", "carol"])
    for i in range(3):
        await alice.send("bob", f"r{i}")
    await alice.send("trio", "g0", type=GROUP)
    await alice.send("trio", "g1", type=GROUP)
    for _ in range(5):
        await bob.receive(5)
    total, per = await bob.unread()
    assert total == 5 and per == {"s:alice:bob": 3, "g:trio": 2}
    await bob.read_report("s:alice:bob", 2)
    total, per = await bob.unread()
    assert total == 3 and per == {"s:alice:bob": 1, "g:trio": 2}
    states = await alice.read_status("s:alice:bob")
    assert [(s.seq, s.read_count, list(s.read_by)) for s in states] == [(1, 1, ["bob"]), (2, 1, ["bob"]), (3, 0, [])]
    assert [s.seq for s in await alice.read_status("s:alice:bob", after_seq=2)] == [3]
    await bob.read_report("g:trio", 1)
    states = await alice.read_status("g:trio")
    assert [(s.seq, list(s.read_by)) for s in states] == [(1, ["bob"]), (2, [])]
    # bob replies: his own send marks the conversation read for him
    await bob.send("alice", "ok")
    total, per = await bob.unread()
    assert per == {"g:trio": 1} and total == 1
    # reading past the end is clamped; reading backwards never lowers the position
    await bob.read_report("g:trio", 99)
    await bob.read_report("g:trio", 1)
    assert await bob.unread() == (0, {})
    # alice never has her own messages unread
    total, per = await alice.unread()
    assert per.get("g:trio", 0) == 0


async def test_concurrent_unread_stays_exact(stack):
    await stack.group("busy", ["a1", "a2", "a3", "reader"])
    senders = [await stack.client(u) for u in ("a1", "a2", "a3")]
    reader = await stack.client("reader")

    async def burst(client):
        for i in range(20):
            await client.send("busy", f"{i}", type=GROUP)

    async def reading():
        for seq in range(1, 60, 7):
            await reader.read_report("g:busy", seq)

    await asyncio.gather(*(burst(c) for c in senders), reading())
    total, per = await reader.unread()
    read_pos = (await stack.app.stores.reads.conversations("reader"))["g:busy"]
    assert total == per["g:busy"] == 60 - read_pos


async def test_new_group_member_starts_with_nothing_unread(stack):
    await stack.group("g", ["alice", "bob"])
    alice = await stack.client("alice")
    await alice.send("g", "before dave", type=GROUP)
    status, body = await stack.admin("PUT", "/v1/groups/g/members", {"members": ["dave"]})
    assert status == 200 and body["added"] == ["dave"]
    dave = await stack.client("dave")
    assert await dave.unread() == (0, {})
    await alice.send("g", "after dave", type=GROUP)
    assert (await dave.receive(5)).content == b"after dave"
    assert await dave.unread() == (1, {"g:g": 1})
    status, body = await stack.admin("DELETE", "/v1/groups/g/members", {"members": ["dave"]})
    assert status == 200 and body["removed"] == ["dave"]
    try:
        await dave.send("g", "still here?", type=GROUP)
    except SendFailed as exc:
        assert "403" in exc.reason
    else:
        raise AssertionError("a removed member could still send")


async def test_same_device_login_kicks_the_old_connection(stack):
    old = await stack.raw()
    token = await stack.token("alice")
    _, _, resp = await old.request(RequestType.AUTH_REQ, pb.AuthRequest(uid="alice", token=token, device_id="phone"))
    assert resp.code == 0
    new = await stack.raw()
    _, _, resp = await new.request(RequestType.AUTH_REQ, pb.AuthRequest(uid="alice", token=token, device_id="phone"))
    assert resp.code == 0
    _, _, kick = await old.expect(RequestType.KICK)
    assert kick.code == 409
    assert await old.closed()


async def test_two_devices_share_one_timeline(stack):
    phone = await stack.client("bob", device_id="phone")
    laptop = await stack.client("bob", device_id="laptop")
    alice = await stack.client("alice")
    await alice.send("bob", "to both")
    assert (await phone.receive(5)).content == b"to both"
    assert (await laptop.receive(5)).content == b"to both"


async def test_sdk_reconnects_and_gets_what_it_missed(stack):
    bob = await stack.client("bob")
    alice = await stack.client("alice")
    await alice.send("bob", "before")
    assert (await bob.receive(5)).content == b"before"
    for conn in list(stack.app.node.by_uid["bob"]):
        conn.close()  # the server drops bob
    for i in range(3):
        await alice.send("bob", f"while away {i}")
    got = [await bob.receive(10) for _ in range(3)]
    assert [m.content for m in got] == [b"while away 0", b"while away 1", b"while away 2"]
    assert bob.reconnects >= 1


async def test_sdk_send_retries_across_a_dropped_connection(stack):
    alice = await stack.client("alice")
    bob = await stack.client("bob")
    message_id = await alice.next_message_id()
    for conn in list(stack.app.node.by_uid["alice"]):
        conn.close()
    ack = await alice.send("bob", "survives", message_id=message_id)
    assert ack.code in (0, ErrorCode.DUPLICATE)
    assert (await bob.receive(5)).content == b"survives"
