"""Several devices per user in the distributed mode (issue 12, S18) on real ZooKeeper, Redis
and FerretDB with route, dispatch and access processes: the devices of one user on different
access nodes, offline and back, sender sync, unread across devices, recall / edit / delete,
the offline push webhook; and issue 11's "reconnect without re-delivery" with an access node
killed under traffic while every user has two devices."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import pytest

from im_runtime.client import GROUP, ImClient, RetryPolicy, SendFailed
from im_runtime.proto import imstack_pb2 as pb
from tests.cluster.conftest import http_json
from tests.servers.webhook import start_gateway

pytestmark = pytest.mark.timeout(300)


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _take(c: ImClient, n: int, timeout: float = 10) -> list[pb.Message]:
    got = [await c.receive(timeout) for _ in range(n)]
    await asyncio.sleep(0.3)
    assert c.inbox.empty(), f"{c.uid}/{c.device_id}: more than {n}"
    return got


async def test_devices_in_the_distributed_mode(topology):
    gateway = await start_gateway()
    topology.extra_env = {"IMSTACK_PUSH_WEBHOOK_URL": gateway.url, "IMSTACK_RECALL_WINDOW": "60"}
    topology.start_route()
    topology.start_dispatch("dispatch-1")
    topology.start_dispatch("dispatch-2")
    access = [topology.start_access("access-1"), topology.start_access("access-2")]
    tag = uuid.uuid4().hex[:6]
    alice, bob, carol = f"alice-{tag}", f"bob-{tag}", f"carol-{tag}"
    conv = f"s:{alice}:{bob}"
    retry = RetryPolicy(attempts=10, base_delay=0.1, ack_timeout=5)
    clients: list[ImClient] = []

    async def device(uid: str, name: str, node: int) -> ImClient:
        c = ImClient(uid, topology.token(uid), port=access[node].ports["tcp"], device_id=name, retry=retry)
        await c.connect()
        clients.append(c)
        return c

    try:
        a_phone, a_laptop = await device(alice, "phone", 0), await device(alice, "laptop", 1)
        b_phone, b_laptop = await device(bob, "phone", 1), await device(bob, "laptop", 0)
        acks = [await a_phone.send(bob, f"m{i}") for i in range(5)]
        assert [m.seq for m in await _take(b_phone, 5)] == [1, 2, 3, 4, 5]
        assert [m.seq for m in await _take(b_laptop, 5)] == [1, 2, 3, 4, 5]
        synced = await _take(a_laptop, 5)  # sender sync across access nodes
        assert all(getattr(m, "from") == alice for m in synced) and a_phone.inbox.empty()

        # the laptop goes offline; the phone reads and acks; the laptop comes back on the other node
        await b_laptop.close()
        more = [await a_phone.send(bob, f"n{i}") for i in range(3)]
        assert [m.content for m in await _take(b_phone, 3)] == [b"n0", b"n1", b"n2"]
        await _take(a_laptop, 3)
        b_laptop = await device(bob, "laptop", 1)
        assert [m.seq for m in await _take(b_laptop, 3)] == [a.seq for a in more]
        assert b_laptop.duplicates == 0

        # reading on one device clears unread on all
        assert (await b_laptop.unread())[0] == 8
        await b_phone.read_report(conv, 8)
        assert (await asyncio.wait_for(b_laptop.syncs.get(), 10)).read_seq == 8
        assert await b_laptop.unread() == (0, {})

        # recall and edit reach every device, and history (SDK and HTTP) shows the current state
        await a_laptop.edit(conv, acks[0].seq, "m0, edited")
        await a_phone.recall(conv, acks[1].seq)
        for c, n in ((b_phone, 2), (b_laptop, 2), (a_phone, 1), (a_laptop, 1)):
            events = await _take(c, n)
            assert {e.event.kind for e in events} <= {pb.EDIT, pb.RECALL}
        history = {m.seq: m for m in (await b_phone.history(conv))[0]}
        assert (history[1].content, history[1].status) == (b"m0, edited", pb.EDITED)
        assert (history[2].content, history[2].status) == (b"", pb.RECALLED)
        status, body = http_json(
            f"{topology.http_url}/v1/conversations/{conv}/messages",
            key=topology.token(alice),
        )
        assert status == 200 and body["messages"][1]["status"] == "RECALLED"
        with pytest.raises(SendFailed) as refused:
            await b_phone.recall(conv, acks[2].seq)
        assert refused.value.reason.startswith("403")

        # delete for me: bob's devices and bob's history only
        await b_laptop.delete_for_me(conv, acks[3].seq)
        assert list((await asyncio.wait_for(b_phone.syncs.get(), 10)).deleted_seqs) == [acks[3].seq]
        assert {m.seq: m for m in (await b_phone.history(conv))[0]}[4].status == pb.DELETED
        assert {m.seq: m for m in (await a_phone.history(conv))[0]}[4].content == b"m3"

        # the webhook: carol has never connected (no device at all), then bob has none connected
        assert gateway.calls == []  # everyone was online so far
        await a_phone.send(carol, "hello carol")
        await _until(lambda: len(gateway.calls) == 1, 15, "the webhook call for carol")
        assert gateway.calls[0]["uids"] == [carol] and gateway.calls[0]["preview"] == "hello carol"
        await b_phone.close()
        await b_laptop.close()
        await asyncio.sleep(0.5)  # their sessions end at once (S9)
        await a_phone.send(bob, "bob, you are away")
        await _until(lambda: len(gateway.calls) == 2, 15, "the webhook call for bob")
        assert gateway.calls[1]["uids"] == [bob] and gateway.calls[1]["conversation_id"] == conv
    finally:
        for c in clients:
            await c.close()
        await gateway.stop()


async def test_acks_held_by_a_killed_access_node_are_not_redelivered(topology):
    """The ack path killed on purpose: the devices on access-1 get a burst of pushes and ack
    them, but access-1 is stopped (SIGSTOP) before it reads the acks and then SIGKILLed, so
    the acks die in its socket buffers. The devices reconnect through ipList to access-2 and
    pull: nothing they had comes back, because the pull carries what they acked."""
    import signal

    topology.start_route()
    topology.start_dispatch("dispatch-1")
    access = [topology.start_access("access-1"), topology.start_access("access-2")]
    tag = uuid.uuid4().hex[:6]
    retry = RetryPolicy(attempts=20, base_delay=0.2, max_delay=1.0, ack_timeout=5.0)
    senders = []
    for i in range(10):  # 5 messages per conversation: pushes only, no PULL_NOTIFY (and no pull)
        s = ImClient(f"s{i}-{tag}", topology.token(f"s{i}-{tag}"), port=access[1].ports["tcp"], retry=retry)
        await s.connect()
        senders.append(s)
    phones = []
    for i in range(3):
        u = f"r{i}-{tag}"
        # acks batched over 3 s: still in the device when access-1 stops
        c = ImClient(u, topology.token(u), port=access[0].ports["tcp"], device_id="phone", retry=retry, ack_delay_s=3.0)
        await c.connect()
        c.http_url = topology.http_url
        phones.append(c)
    per_phone = 5 * len(senders)
    try:
        await asyncio.gather(*(s.send(c.uid, f"{n}") for s in senders for c in phones for n in range(5)))
        for c in phones:
            assert len([await c.receive(10) for _ in range(per_phone)]) == per_phone
        assert all(c.notices.empty() for c in phones)  # pushes only
        access[0].process.send_signal(signal.SIGSTOP)  # it reads nothing more
        await asyncio.sleep(3.5)  # the devices flush their acks into its socket
        assert all(not c._pending_acks for c in phones)
        access[0].kill9()
        await _until(lambda: all(c.reconnects >= 1 and c.connected.is_set() for c in phones), 60,
                     "the devices to reconnect to access-2")
        await asyncio.sleep(1.0)
        duplicates = sum(c.duplicates for c in phones)
        assert all(c.inbox.empty() for c in phones)
        print(f"acks lost with access-1: {per_phone * len(phones)}, duplicate pushes after the reconnect: {duplicates}")
        assert duplicates == 0, f"{duplicates} of {per_phone * len(phones)} messages came back"
        for c in phones:
            await senders[0].send(c.uid, "after")
            assert (await c.receive(10)).content == b"after"
    finally:
        for c in senders + phones:
            await c.close()


USERS = 6
PACE_S = 0.02


async def test_kill_access_node_under_traffic_two_devices_each_duplicates_under_one_percent(topology):
    """issue 11: acks taken by an access node that is SIGKILLed are not re-delivered when the
    devices reconnect (they resume their position), and every device gets every message."""
    topology.start_route()
    topology.start_dispatch("dispatch-1")
    access = [topology.start_access("access-1"), topology.start_access("access-2")]
    tag = uuid.uuid4().hex[:6]
    uids = [f"u{i}-{tag}" for i in range(USERS)]
    group = f"g-{tag}"
    topology.create_group(group, uids)
    retry = RetryPolicy(attempts=40, base_delay=0.2, max_delay=1.0, ack_timeout=5.0)
    devices: dict[tuple[str, str], ImClient] = {}
    for i, u in enumerate(uids):
        for d, node in (("phone", i % 2), ("laptop", (i + 1) % 2)):  # every user on both nodes
            c = ImClient(u, topology.token(u), port=access[node].ports["tcp"], device_id=d, retry=retry,
                         heartbeat_s=2.0, gap_wait_s=5.0)
            await c.connect()
            c.http_url = topology.http_url  # reconnects go through ipList
            devices[(u, d)] = c

    sent: dict[int, tuple[str, list[str], str]] = {}  # message id -> (conversation, recipients, sender)
    got: dict[tuple[str, str], list[int]] = defaultdict(list)
    stop = asyncio.Event()

    async def receive(key) -> None:
        c = devices[key]
        while True:
            m = await c.inbox.get()
            got[key].append(m.message_id)

    async def send(u: str) -> None:
        c = devices[(u, "phone")]
        partner = uids[uids.index(u) ^ 1]
        for n in range(2000):
            if stop.is_set():
                return
            to, kind = (group, GROUP) if n % 3 == 2 else (partner, pb.SINGLE)
            try:
                ack = await c.send(to, f"{u}:{n}", type=kind)
            except SendFailed:
                continue
            recipients = [m for m in uids if m != u] if kind == GROUP else [partner]
            sent[ack.message_id] = (ack.conversation_id, recipients, u)
            await asyncio.sleep(PACE_S)

    receivers = [asyncio.ensure_future(receive(k)) for k in devices]
    for u in uids:  # open every conversation before the load (see test_faults)
        partner = uids[uids.index(u) ^ 1]
        ack = await devices[(u, "phone")].send(partner, "open")
        sent[ack.message_id] = (ack.conversation_id, [partner], u)
    ack = await devices[(uids[0], "phone")].send(group, "open", type=GROUP)
    sent[ack.message_id] = (ack.conversation_id, uids[1:], uids[0])
    senders = [asyncio.ensure_future(send(u)) for u in uids]
    try:
        await _until(lambda: len(sent) > 300, 60, "traffic to start")
        access[0].kill9()
        moved = [c for (u, d), c in devices.items() if c.port == access[0].ports["tcp"]]
        await _until(lambda: all(c.reconnects >= 1 and c.connected.is_set() for c in moved), 60,
                     "devices of the killed node to reconnect")
        before = len(sent)
        await _until(lambda: len(sent) > before + 300, 60, "traffic after the kill")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*senders), 60)

        def expected(key) -> set[int]:
            u, d = key
            return {mid for mid, (_, recipients, sender) in sent.items() if u in recipients or (sender == u and d == "laptop")}

        await _until(lambda: all(expected(k) <= set(got[k]) for k in devices), 90, "every device to get every message")
    finally:
        stop.set()
        for t in senders + receivers:
            t.cancel()
        for c in devices.values():
            await c.close()
    deliveries = sum(len(v) for v in got.values())
    duplicates = sum(c.duplicates for c in devices.values())
    for key, ids in got.items():
        assert len(ids) == len(set(ids)), f"{key}: a message reached the app twice"
        assert set(ids) == expected(key), key
    print(f"messages={len(sent)} deliveries={deliveries} duplicate pushes={duplicates} "
          f"({100 * duplicates / deliveries:.2f}%) reconnected devices={len(moved)}")
    assert duplicates < 0.01 * len(sent), f"{duplicates} duplicate pushes for {len(sent)} messages"
