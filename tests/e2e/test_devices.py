"""Several devices per user (issue 12, S18) end to end over real sockets, all-in-one stack:
one timeline per user read by a cursor per device, sender sync, read state across devices,
recall / edit / delete for me, seen by every device and by history."""
from __future__ import annotations

import asyncio
import itertools

import pytest

from im_runtime.client import GROUP, ImClient, RetryPolicy, SendFailed
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.types import ErrorCode, RequestType

pytestmark = pytest.mark.timeout(120)


async def device(stack, uid: str, name: str, **kwargs) -> ImClient:
    return await stack.client(uid, device_id=name, **kwargs)


async def take(client: ImClient, n: int, timeout: float = 5.0) -> list[pb.Message]:
    got = [await client.receive(timeout) for _ in range(n)]
    await asyncio.sleep(0.1)  # nothing more may follow
    extra = []
    while not client.inbox.empty():
        extra.append(client.inbox.get_nowait())
    assert not extra, f"{client.uid}/{client.device_id} got more: {[(m.seq, m.content) for m in extra]}"
    return got


async def offline_drained(stack, uid: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await stack.app.stores.offline.backlog(uid):
        assert loop.time() < deadline, f"{uid}'s timeline still holds {await stack.app.stores.offline.backlog(uid)}"
        await asyncio.sleep(0.02)


async def test_phone_acks_and_the_laptop_offline_meanwhile_still_gets_everything(stack):
    """The issue's first report: PUSH_ACK from the phone removed the messages for the laptop."""
    phone = await device(stack, "bob", "phone")
    laptop = await device(stack, "bob", "laptop")
    await laptop.close()
    alice = await stack.client("alice")
    for i in range(3):
        await alice.send("bob", f"m{i}")
    assert [m.content for m in await take(phone, 3)] == [b"m0", b"m1", b"m2"]
    await asyncio.sleep(0.1)  # the phone's acks land
    assert await stack.app.stores.offline.backlog("bob") == 3  # kept for the laptop
    laptop = await device(stack, "bob", "laptop")
    got = await take(laptop, 3)
    assert [m.seq for m in got] == [1, 2, 3] and laptop.duplicates == 0
    await offline_drained(stack, "bob")  # every device past them: gone


@pytest.mark.parametrize("count", [2, 3])
async def test_devices_online_and_offline_in_every_order_get_every_message_once_in_order(stack, count):
    names = [f"d{i}" for i in range(count)]
    alice = await stack.client("alice")
    online: dict[str, ImClient] = {n: await device(stack, "bob", n) for n in names}
    received: dict[str, list[pb.Message]] = {n: [] for n in names}
    sent: list[int] = []

    async def batch(k: int) -> None:
        for i in range(k):
            ack = await alice.send("bob", f"{len(sent)}")
            sent.append(ack.seq)

    async def settle() -> None:
        for n, c in online.items():
            received[n] += [await c.receive(5) for _ in range(len(sent) - len(received[n]))]

    for order in itertools.permutations(names):
        for n in order:  # one by one offline, a batch after each
            await online.pop(n).close()
            await batch(2)
            await settle()
        for n in order:  # and back, in the same order, a batch before each comes back
            await batch(2)
            online[n] = await device(stack, "bob", n)
            await settle()
    await settle()
    for n, got in received.items():
        seqs = [m.seq for m in got]
        assert seqs == sorted(sent), f"{n}: {seqs}"  # every message, once, in seq order
    for c in online.values():
        assert c.inbox.empty()
    await offline_drained(stack, "bob")


async def test_sender_sync_reaches_the_other_devices_never_the_sending_one(stack):
    phone = await device(stack, "alice", "phone")
    laptop = await device(stack, "alice", "laptop")
    tablet = await device(stack, "alice", "tablet")
    await tablet.close()
    bob = await stack.client("bob")
    acks = [await phone.send("bob", f"from phone {i}") for i in range(3)]
    mine = await take(laptop, 3)
    assert [m.seq for m in mine] == [a.seq for a in acks]
    assert all(getattr(m, "from") == "alice" and m.to == "bob" for m in mine)  # marked as her own
    assert len(await take(bob, 3)) == 3
    await bob.send("alice", "reply")
    assert [m.content for m in await take(laptop, 1)] == [b"reply"]
    assert [m.content for m in await take(phone, 1)] == [b"reply"]  # the phone got none of its own
    tablet = await device(stack, "alice", "tablet")  # catches up from its timeline
    assert [m.content for m in await take(tablet, 4)] == [b"from phone 0", b"from phone 1", b"from phone 2", b"reply"]
    # a group message too, to every other device of the sender and every member
    await stack.group("g1", ["alice", "bob"])
    await laptop.send("g1", "to the group", type=GROUP)
    for c in (phone, tablet, bob):
        assert [m.content for m in await take(c, 1)] == [b"to the group"]
    assert laptop.inbox.empty()
    await offline_drained(stack, "alice")


async def test_reading_on_one_device_clears_unread_on_all(stack):
    phone = await device(stack, "bob", "phone")
    laptop = await device(stack, "bob", "laptop")
    alice = await stack.client("alice")
    for i in range(3):
        await alice.send("bob", f"r{i}")
    await take(phone, 3)
    await take(laptop, 3)
    assert await laptop.unread() == (3, {"s:alice:bob": 3})
    await phone.read_report("s:alice:bob", 2)
    sync = await asyncio.wait_for(laptop.syncs.get(), 5)  # the laptop hears of it at once
    assert (sync.conversation_id, sync.read_seq) == ("s:alice:bob", 2)
    assert phone.syncs.empty()  # not the device that read
    assert await laptop.unread() == (1, {"s:alice:bob": 1})
    await laptop.read_report("s:alice:bob", 3)
    assert (await asyncio.wait_for(phone.syncs.get(), 5)).read_seq == 3
    assert await phone.unread() == (0, {})


async def test_recall_edit_and_delete_are_seen_by_every_device_and_by_history(stack):
    a_phone = await device(stack, "alice", "phone")
    a_laptop = await device(stack, "alice", "laptop")
    b_phone = await device(stack, "bob", "phone")
    b_laptop = await device(stack, "bob", "laptop")
    conv = "s:alice:bob"
    first = await a_phone.send("bob", "helo")
    second = await a_phone.send("bob", "secret")
    third = await b_phone.send("alice", "hi")
    for c, n in ((a_laptop, 3), (b_laptop, 3), (b_phone, 2), (a_phone, 1)):
        await take(c, n)

    edit = await a_phone.edit(conv, first.seq, "hello")
    assert edit.code == 0 and edit.seq == 4
    recall = await a_laptop.recall(conv, second.seq, target_message_id=second.message_id)
    assert recall.seq == 5
    events = {}
    for c, n in ((a_laptop, 1), (a_phone, 1), (b_phone, 2), (b_laptop, 2)):
        events[(c.uid, c.device_id)] = await take(c, n)
    assert [(e.seq, e.event.kind, e.event.target_seq, e.content) for e in events[("bob", "phone")]] == [
        (4, pb.EDIT, first.seq, b"hello"), (5, pb.RECALL, second.seq, b""),
    ]
    assert [e.event.kind for e in events[("alice", "laptop")]] == [pb.EDIT]  # it sent the recall
    assert [e.event.kind for e in events[("alice", "phone")]] == [pb.RECALL]

    history, _ = await b_laptop.history(conv)
    by_seq = {m.seq: m for m in history}
    assert (by_seq[1].content, by_seq[1].status, by_seq[1].revision_seq) == (b"hello", pb.EDITED, 4)
    assert (by_seq[2].content, by_seq[2].status) == (b"", pb.RECALLED)  # the tombstone
    assert by_seq[4].event.kind == pb.EDIT and by_seq[5].event.kind == pb.RECALL  # the events have their seqs

    # delete for me: bob's devices and bob's history only
    deleted = await b_phone.delete_for_me(conv, third.seq)
    assert deleted.code == 0 and deleted.seq == 0  # no conversation seq: alice must not see it
    sync = await asyncio.wait_for(b_laptop.syncs.get(), 5)
    assert list(sync.deleted_seqs) == [third.seq]
    bob_view = {m.seq: m for m in (await b_laptop.history(conv))[0]}
    alice_view = {m.seq: m for m in (await a_laptop.history(conv))[0]}
    assert bob_view[3].status == pb.DELETED and bob_view[3].content == b""
    assert alice_view[3].status == pb.MESSAGE_STATUS_NORMAL and alice_view[3].content == b"hi"
    status, body = await _http_history(stack, "bob", conv)
    assert status == 200 and [m.get("status") for m in body["messages"]][2] == "DELETED"
    assert await a_laptop.unread() == (0, {})  # alice sent the events: read up to them


async def test_modify_errors(stack_factory):
    stack = await stack_factory(recall_window_s=0.3)
    alice = await stack.client("alice")
    bob = await stack.client("bob")
    carol = await stack.client("carol")
    conv = "s:alice:bob"
    ack = await alice.send("bob", "mine")
    await take(bob, 1)

    async def refused(client, coro_fn) -> str:
        with pytest.raises(SendFailed) as failed:
            await coro_fn(client)
        return failed.value.reason

    assert (await refused(bob, lambda c: c.recall(conv, ack.seq))).startswith("403")  # not your message
    assert (await refused(bob, lambda c: c.edit(conv, ack.seq, "x"))).startswith("403")
    assert (await refused(alice, lambda c: c.recall(conv, 99))).startswith("404")  # unknown message
    assert (await refused(alice, lambda c: c.recall(conv, ack.seq, target_message_id=ack.message_id + 1))).startswith("404")
    assert (await refused(carol, lambda c: c.delete_for_me(conv, ack.seq))).startswith("403")  # not a member
    await asyncio.sleep(0.4)
    assert (await refused(alice, lambda c: c.recall(conv, ack.seq))).startswith("410")  # the window passed
    assert (await alice.edit(conv, ack.seq, "edits have no window")).code == 0
    # the same event id again is idempotent: one event, answered DUPLICATE
    raw = await stack.raw("alice")
    req = pb.ModifyRequest(message_id=424242, kind=pb.EDIT, conversation_id=conv, target_seq=ack.seq, content=b"v3")
    _, _, one = await raw.request(RequestType.MODIFY_REQ, req)
    _, _, two = await raw.request(RequestType.MODIFY_REQ, req)
    assert one.code == 0 and two.code == ErrorCode.DUPLICATE and two.seq == one.seq
    await take(bob, 2)  # the two edits, once each


async def _http_history(stack, uid: str, conv: str):
    headers = {"Authorization": f"Bearer {await stack.token(uid)}"}
    async with stack.http.get(f"/v1/conversations/{conv}/messages", headers=headers) as resp:
        return resp.status, await resp.json()


async def test_group_members_with_two_devices_each(stack):
    members = ["m1", "m2", "m3"]
    await stack.group("team", members)
    devices = {(m, d): await device(stack, m, d) for m in members for d in ("phone", "laptop")}

    async def talk(uid: str) -> list[pb.SendAck]:
        return [await devices[(uid, "phone")].send("team", f"{uid}-{i}", type=GROUP) for i in range(5)]

    acks = await asyncio.gather(*(talk(m) for m in members))
    all_seqs = sorted(a.seq for batch in acks for a in batch)
    assert all_seqs == list(range(1, 16))
    for (uid, d), c in devices.items():
        expect = 10 if d == "phone" else 15  # a phone does not get back what it sent itself
        got = await take(c, expect)
        seqs = [m.seq for m in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == expect, (uid, d, seqs)
    for m in members:
        await offline_drained(stack, m)
