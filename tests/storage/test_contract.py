"""The store contract (im_runtime/storage/interfaces.py docstrings), run against every engine.

Each test names the guarantee it checks. Engine-specific checks (Redis key slots, the S11
Mongo key order, the eviction-policy refusal) are at the end.
"""
from __future__ import annotations

import asyncio
import random
import time

import pytest

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.types import is_gap
from im_runtime.storage.interfaces import SendState
from tests.storage.conftest import Engine, new_id

pytestmark = pytest.mark.timeout(120)


def now_ms() -> int:
    return int(time.time() * 1000)


# Timeline positions follow the message time, and entries older than the retention limit
# (7 days by default) are dropped: test messages are stamped with the time of the run.
NOW = now_ms()


def msg(conv: str, message_id: int, *, seq: int = 0, server_time: int = NOW, body: bytes = b"") -> pb.Message:
    return pb.Message(
        message_id=message_id, conversation_id=conv, seq=seq, server_time=server_time,
        content=body or f"m{message_id}".encode(), content_type=1, to="x",
    )


# ------------------------------------------------------------------ sessions (S5, S9)


async def test_sessions_bind_lookup_unbind(engine: Engine) -> None:
    s = engine.stores.sessions
    a, b, nobody = new_id("u"), new_id("u"), new_id("u")
    n1, n2 = new_id("node"), new_id("node")
    await s.bind(a, n1, 1, "phone")
    await s.bind(a, n2, 7, "laptop")
    await s.bind(a, n1, 2, "tablet")  # two connections of one user on one node
    await s.bind(b, n2, 3, "phone")
    assert await s.lookup([a, b, nobody]) == {a: sorted([n1, n2]), b: [n2]}
    assert await s.unbind(a, n1, 1) is True
    assert await s.unbind(a, n1, 1) is False  # not bound any more
    assert await s.lookup([a]) == {a: sorted([n1, n2])}  # conn 2 still on n1
    assert await s.unbind(a, n1, 2) is True
    assert await s.lookup([a]) == {a: [n2]}
    assert await s.unbind(nobody, n1, 9) is False


async def test_sessions_drop_node_removes_only_that_node(engine: Engine) -> None:
    s = engine.stores.sessions
    dead, alive = new_id("node"), new_id("node")
    users = [new_id("u") for _ in range(5)]
    for i, uid in enumerate(users):
        await s.bind(uid, dead, i, "d")
    await s.bind(users[0], alive, 100, "d")
    assert {dead, alive} <= await s.nodes()
    assert await s.drop_node(dead) == 5
    assert await s.lookup(users) == {users[0]: [alive]}
    assert await s.drop_node(dead) == 0
    nodes = await s.nodes()
    assert alive in nodes and dead not in nodes


# ------------------------------------------------------------------ timeline (S10, S18)


async def test_offline_add_counts_pending_per_conversation_and_dedups(engine: Engine) -> None:
    off = engine.stores.offline
    uid, c1, c2 = new_id("u"), new_id("c"), new_id("c")
    assert await off.add(uid, msg(c1, 1)) == 1
    assert await off.add(uid, msg(c1, 2)) == 2
    assert await off.add(uid, msg(c2, 3)) == 1
    assert await off.add(uid, msg(c1, 2)) == 2  # same message id again: one copy kept
    assert await off.backlog(uid) == 3
    page = await off.pull(uid, 0, 10)
    assert [m.message_id for m in page.messages] == [1, 2, 3] and page.has_more is False
    assert page.messages[0] == msg(c1, 1)  # stored whole


async def test_offline_pull_pages_in_timeline_order(engine: Engine) -> None:
    off = engine.stores.offline
    uid = new_id("u")
    convs = [new_id("c") for _ in range(3)]
    # S18: one timeline across conversations; equal and even decreasing server times (another
    # node's clock) keep the insertion order.
    times = [NOW, NOW, NOW, NOW - 1, NOW + 1000, NOW + 500, NOW + 2000]
    for i, t in enumerate(times):
        await off.add(uid, msg(convs[i % 3], 10 + i, server_time=t))
    got, cursor, pages = [], 0, 0
    while True:
        page = await off.pull(uid, cursor, 3)
        pages += 1
        assert len(page.messages) <= 3
        got += [m.message_id for m in page.messages]
        if page.messages:
            assert page.next_cursor != cursor
        cursor = page.next_cursor
        if not page.has_more:
            break
        assert pages < 10
    assert got == [10 + i for i in range(len(times))]
    assert pages == 3
    end = await off.pull(uid, cursor, 3)
    assert (end.messages, end.has_more, end.next_cursor) == ([], False, cursor)  # nothing after the end
    assert (await off.pull(uid, 0, 0)).has_more is True  # limit 0: nothing returned, more waiting
    assert (await off.pull(uid, 0, 10)).device_cursor == 0  # pulling is not acking (v1)


async def test_offline_ack_removes_and_decrements(engine: Engine) -> None:
    off = engine.stores.offline
    uid, c1, c2 = new_id("u"), new_id("c"), new_id("c")
    for i in range(1, 6):
        await off.add(uid, msg(c1 if i <= 3 else c2, i))
    assert await off.ack(uid, [1, 2, 99, 1]) == 2  # unknown and repeated ids are not counted
    assert await off.backlog(uid) == 3  # the only device is past 1 and 2: they are gone
    assert [m.message_id for m in (await off.pull(uid, 0, 10)).messages] == [3, 4, 5]
    assert await off.add(uid, msg(c1, 6)) == 2  # c1 pending was 3, minus 2 acked, plus 1
    assert await off.add(uid, msg(c2, 7)) == 3
    assert await off.ack(uid, [3, 4, 5, 6, 7]) == 5
    assert await off.backlog(uid) == 0
    assert (await off.pull(uid, 0, 10)).messages == []
    assert await off.ack(uid, [1]) == 0
    assert await off.add(uid, msg(c1, 1)) == 1  # acked id may come back as a new message
    assert await off.ack(new_id("u"), [1]) == 0


async def test_timeline_each_device_reads_by_its_own_cursor_and_entries_go_when_all_are_past(engine: Engine) -> None:
    """The issue's scenario: the phone acks three messages; the laptop, offline meanwhile,
    still pulls all three; only then do they leave the timeline."""
    off = engine.stores.offline
    uid, conv = new_id("bob"), new_id("c")
    assert (await off.pull(uid, 0, 10, device="phone")).messages == []  # both devices known
    assert (await off.pull(uid, 0, 10, device="laptop")).messages == []
    for i in (1, 2, 3):
        await off.add(uid, msg(conv, i))
    assert await off.ack(uid, [1, 2, 3], device="phone") == 3
    assert await off.backlog(uid) == 3
    assert await off.backlog(uid, device="phone") == 0
    assert await off.backlog(uid, device="laptop") == 3
    assert (await off.pull(uid, 0, 10, device="phone")).messages == []
    laptop = await off.pull(uid, 0, 10, device="laptop")
    assert [m.message_id for m in laptop.messages] == [1, 2, 3]
    assert await off.ack(uid, [1, 2], device="laptop") == 2
    assert await off.backlog(uid) == 1  # 1 and 2 are past every device
    assert await off.ack(uid, [3], device="laptop") == 1
    assert await off.backlog(uid) == 0
    devices = await off.devices(uid)
    assert set(devices) == {"phone", "laptop"} and devices["phone"] == devices["laptop"] > 0


async def test_timeline_out_of_order_acks_are_kept_until_the_cursor_passes(engine: Engine) -> None:
    off = engine.stores.offline
    uid, conv = new_id("u"), new_id("c")
    await off.pull(uid, 0, 1, device="a")
    await off.pull(uid, 0, 1, device="b")
    for i in range(1, 7):
        await off.add(uid, msg(conv, i))
    assert await off.ack(uid, [2, 4, 5], device="a") == 3  # 1 and 3 missing (a lost push)
    assert await off.ack(uid, [4], device="a") == 0
    page = await off.pull(uid, 0, 10, device="a")
    assert [m.message_id for m in page.messages] == [1, 3, 6]  # what a has not acked
    cursor_before = page.device_cursor
    await off.ack(uid, [1], device="a")
    assert (await off.pull(uid, 0, 10, device="a")).device_cursor > cursor_before  # past 1 and 2
    await off.ack(uid, [3, 6], device="a")
    assert await off.backlog(uid, device="a") == 0
    assert [m.message_id for m in (await off.pull(uid, 0, 10, device="b")).messages] == [1, 2, 3, 4, 5, 6]
    # paging skips what a device acked: limit 1 pages of b after it acked 2 and 3
    await off.ack(uid, [2, 3], device="b")
    first = await off.pull(uid, 0, 1, device="b")
    second = await off.pull(uid, first.next_cursor, 1, device="b")
    assert [m.message_id for m in first.messages + second.messages] == [1, 4] and second.has_more


async def test_timeline_pending_counts_what_no_device_has_acked(engine: Engine) -> None:
    """PULL_NOTIFY stays for users all of whose devices are behind: a device that keeps up
    keeps the pushes coming while another one is offline."""
    off = engine.stores.offline
    uid, conv = new_id("u"), new_id("c")
    await off.pull(uid, 0, 1, device="phone")
    await off.pull(uid, 0, 1, device="laptop")
    for i in range(1, 9):
        assert await off.add(uid, msg(conv, i)) == 1  # phone acks each
        await off.ack(uid, [i], device="phone")
    assert await off.backlog(uid) == 8  # all kept for the laptop
    assert await off.add(uid, msg(conv, 9)) == 1
    assert await off.add(uid, msg(conv, 10)) == 2


async def test_timeline_holder_has_its_own_message(engine: Engine) -> None:
    """Sender sync: the sending device has the message; the sender's other devices get it."""
    off = engine.stores.offline
    alice, conv = new_id("alice"), new_id("c")
    await off.pull(alice, 0, 1, device="phone")
    await off.add(alice, msg(conv, 1), holder="phone")  # only the phone: nothing to keep
    assert await off.backlog(alice) == 0
    await off.pull(alice, 0, 1, device="laptop")
    await off.add(alice, msg(conv, 2), holder="phone")
    await off.add(alice, msg(conv, 3))
    assert await off.backlog(alice, device="phone") == 1 and await off.backlog(alice, device="laptop") == 2
    assert [m.message_id for m in (await off.pull(alice, 0, 10, device="phone")).messages] == [3]
    assert [m.message_id for m in (await off.pull(alice, 0, 10, device="laptop")).messages] == [2, 3]
    assert await off.add(alice, msg(conv, 4), holder="laptop") == 1  # a held message is not pending
    await off.ack(alice, [2, 3], device="laptop")
    await off.ack(alice, [3, 4], device="phone")
    assert await off.backlog(alice) == 0


async def test_timeline_resume_position_and_acks_in_the_pull(engine: Engine) -> None:
    """issue 11: a device that reconnects moves its own cursor (acks lost with a dead access
    node are not re-delivered); never backwards, never past the last position."""
    off = engine.stores.offline
    uid, conv = new_id("u"), new_id("c")
    await off.pull(uid, 0, 1, device="d")
    await off.pull(uid, 0, 1, device="other")
    for i in range(1, 11):
        await off.add(uid, msg(conv, i))
    page = await off.pull(uid, 0, 4, device="d")
    assert [m.message_id for m in page.messages] == [1, 2, 3, 4]
    # the acks of that page were lost; the device resumes from where it was
    resumed = await off.pull(uid, 0, 10, device="d", resume_cursor=page.next_cursor, acked_ids=[6, 7])
    assert [m.message_id for m in resumed.messages] == [5, 8, 9, 10]
    assert resumed.device_cursor == page.next_cursor
    again = await off.pull(uid, 0, 10, device="d", resume_cursor=1)  # an older position: ignored
    assert again.device_cursor == page.next_cursor
    beyond = await off.pull(uid, 0, 10, device="d", resume_cursor=resumed.next_cursor + 10**12)
    assert beyond.messages == [] and beyond.device_cursor == resumed.next_cursor  # clamped to the end
    await off.add(uid, msg(conv, 11))
    assert [m.message_id for m in (await off.pull(uid, 0, 10, device="d")).messages] == [11]
    assert len((await off.pull(uid, 0, 20, device="other")).messages) == 11


async def test_timeline_retention_drops_old_entries_and_unseen_devices(engine: Engine) -> None:
    off = await engine.timeline(retention_s=1.0)
    uid, conv = new_id("u"), new_id("c")
    await off.pull(uid, 0, 1, device="gone")  # registered, then never seen again
    await off.pull(uid, 0, 1, device="here")
    await off.add(uid, msg(conv, 1, server_time=now_ms()))
    await asyncio.sleep(1.3)
    await off.add(uid, msg(conv, 2, server_time=now_ms()))  # the first is past the limit now
    assert [m.message_id for m in (await off.pull(uid, 0, 10, device="here")).messages] == [2]
    assert set(await off.devices(uid)) == {"here"}  # "gone" was unseen for longer than the limit
    await off.ack(uid, [2], device="here")
    assert await off.backlog(uid) == 0  # only "here" counted
    assert await off.add(uid, msg(conv, 3, server_time=now_ms())) == 1


async def test_timeline_at_most_max_devices_the_least_recently_seen_goes(engine: Engine) -> None:
    off = await engine.timeline(max_devices=3)
    uid, conv = new_id("u"), new_id("c")
    for d in ("d1", "d2", "d3"):
        await off.pull(uid, 0, 1, device=d)
        await asyncio.sleep(0.01)
    await off.add(uid, msg(conv, 1, server_time=now_ms()))
    await off.ack(uid, [1], device="d1")  # d1 is now the most recently seen
    await asyncio.sleep(0.01)
    await off.pull(uid, 0, 1, device="d4")
    assert set(await off.devices(uid)) == {"d1", "d3", "d4"}


async def test_timeline_a_device_that_signed_in_keeps_its_messages(engine: Engine) -> None:
    off = engine.stores.offline
    uid, conv = new_id("u"), new_id("c")
    assert await off.register(uid, "phone") == 0
    assert await off.register(uid, "laptop") == 0  # signed in once, never pulled
    await off.add(uid, msg(conv, 1))
    await off.ack(uid, [1], device="phone")
    assert await off.backlog(uid) == 1
    assert await off.register(uid, "phone") > 0  # a sign-in again: its cursor, unchanged
    assert [m.message_id for m in (await off.pull(uid, 0, 5, device="laptop")).messages] == [1]


async def test_timeline_entries_are_revised_in_place(engine: Engine) -> None:
    """A recall or edit replaces the copies still waiting, so a device that pulls later does
    not get the recalled content."""
    off = engine.stores.offline
    uid, conv = new_id("u"), new_id("c")
    await off.add(uid, msg(conv, 1, seq=1, body=b"secret"))
    recalled = msg(conv, 1, seq=1, body=b"-")
    recalled.content, recalled.status = b"", pb.RECALLED
    assert await off.revise(uid, recalled) is True
    assert (await off.pull(uid, 0, 5)).messages == [recalled]
    assert await off.revise(uid, msg(conv, 9, seq=9)) is False  # not there
    assert await off.revise(uid, msg(new_id("c"), 1, seq=1)) is False  # another conversation's id
    assert await off.add(uid, msg(conv, 2)) == 2  # still pending: revising is not acking


async def test_offline_cursor_keeps_growing_after_the_queue_empties(engine: Engine) -> None:
    off = engine.stores.offline
    uid, conv = new_id("u"), new_id("c")
    await off.add(uid, msg(conv, 1, server_time=NOW + 5000))
    cursor = (await off.pull(uid, 0, 10)).next_cursor
    assert await off.ack(uid, [1]) == 1
    await off.add(uid, msg(conv, 2, server_time=NOW))  # an older clock on another node
    page = await off.pull(uid, cursor, 10)  # a client resuming from its cursor
    assert [m.message_id for m in page.messages] == [2] and page.has_more is False


async def test_offline_concurrent_adds_are_exact(engine: Engine) -> None:
    other = await engine.another()
    uid, conv = new_id("u"), new_id("c")
    ids = list(range(1, 201))
    results = await asyncio.gather(
        *((engine.stores.offline if i % 2 else other.offline).add(uid, msg(conv, i)) for i in ids + ids[:50])
    )
    assert max(results) == 200
    assert await engine.stores.offline.backlog(uid) == 200
    page = await engine.stores.offline.pull(uid, 0, 500)
    assert sorted(m.message_id for m in page.messages) == ids and page.has_more is False


async def test_timeline_concurrent_acks_from_devices_on_two_nodes_are_exact(engine: Engine) -> None:
    other = await engine.another()
    uid, conv = new_id("u"), new_id("c")
    devices = ["p", "l", "t"]
    for d in devices:
        await engine.stores.offline.pull(uid, 0, 1, device=d)
    ids = list(range(1, 121))
    for i in ids:
        await engine.stores.offline.add(uid, msg(conv, i))
    order = [(d, i) for d in devices for i in ids]
    random.Random(3).shuffle(order)
    results = await asyncio.gather(
        *((engine.stores if k % 2 else other).offline.ack(uid, [i], device=d) for k, (d, i) in enumerate(order))
    )
    assert sum(results) == 360
    assert await engine.stores.offline.backlog(uid) == 0
    cursors = await engine.stores.offline.devices(uid)
    assert len(set(cursors.values())) == 1


# ------------------------------------------------------------------ messages: recall, edit, delete for me


async def test_messages_get_and_revise(engine: Engine) -> None:
    m = engine.stores.messages
    conv = new_id("c")
    await m.save(msg(conv, 1, seq=1, body=b"first"))
    assert (await m.get(conv, 1)).content == b"first"
    assert await m.get(conv, 2) is None

    def edit(text: bytes):
        def change(stored: pb.Message):
            if stored.status == pb.RECALLED:
                return None
            out = pb.Message()
            out.CopyFrom(stored)
            out.content, out.status = text, pb.EDITED
            return out
        return change

    assert (await m.revise(conv, 1, edit(b"second"))).content == b"second"
    assert (await m.get(conv, 1)).status == pb.EDITED
    assert await m.revise(conv, 9, edit(b"x")) is None
    # concurrent revisions from two nodes: every one lands, none is lost (compare-and-set)
    other = await engine.another()
    await m.save(msg(conv, 2, seq=2, body=b"0"))

    def append(stored: pb.Message):
        out = pb.Message()
        out.CopyFrom(stored)
        out.content = stored.content + b"x"
        return out

    await asyncio.gather(*((m if i % 2 else other.messages).revise(conv, 2, append) for i in range(20)))
    assert (await m.get(conv, 2)).content == b"0" + b"x" * 20
    page, _ = await m.range(conv, limit=5)
    assert [x.content for x in page] == [b"second", b"0" + b"x" * 20]


async def test_hidden_messages_per_user(engine: Engine) -> None:
    h = engine.stores.hidden
    alice, bob, conv = new_id("alice"), new_id("bob"), new_id("c")
    await h.hide(alice, conv, [3, 5])
    await h.hide(alice, conv, [5])
    assert await h.hidden(alice, conv, [1, 3, 5, 7]) == {3, 5}
    assert await h.hidden(bob, conv, [3, 5]) == set()
    assert await h.hidden(alice, new_id("c"), [3]) == set()
    assert await h.hidden(alice, conv, []) == set()


# ------------------------------------------------------------------ sequences (S11, S12)


async def test_seq_starts_at_one_and_increases(engine: Engine) -> None:
    seqs = engine.stores.sequences
    conv, untouched = new_id("c"), new_id("c")
    assert [await seqs.next_seq(conv) for _ in range(250)] == list(range(1, 251))  # crosses lease blocks
    assert await seqs.latest_seqs([conv, untouched]) == {conv: 250, untouched: 0}


async def test_seq_concurrent_next_seq_from_two_nodes_is_exact(engine: Engine) -> None:
    other = await engine.another()
    conv = new_id("c")
    got = await asyncio.gather(*((engine.stores if i % 2 else other).sequences.next_seq(conv) for i in range(400)))
    assert sorted(got) == list(range(1, 401))
    assert (await other.sequences.latest_seqs([conv]))[conv] == 400


async def test_seq_new_conversations_started_by_several_nodes_at_once_start_at_one(engine: Engine) -> None:
    nodes = [engine.stores] + [await engine.another() for _ in range(3)]
    convs = [new_id("c") for _ in range(20)]
    got = await asyncio.gather(*(node.sequences.next_seq(conv) for conv in convs for node in nodes for _ in range(3)))
    for k, conv in enumerate(convs):
        mine = got[k * 12 : (k + 1) * 12]
        assert sorted(mine) == list(range(1, 13)), f"{conv}: {sorted(mine)}"


async def test_seq_never_goes_backwards_when_the_fast_store_loses_everything(engine: Engine) -> None:
    stores = engine.stores
    conv = new_id("c")
    handed = [await stores.sequences.next_seq(conv) for _ in range(130)]
    for seq in handed[:120]:  # the last 10 are still in flight: handed out, not yet persisted
        await stores.messages.save(msg(conv, 10_000 + seq, seq=seq))
    await engine.lose_fast_state()  # FLUSHALL mid-conversation
    assert (await stores.sequences.latest_seqs([conv]))[conv] >= 120  # the stored messages know
    after = await asyncio.gather(*(stores.sequences.next_seq(conv) for _ in range(50)))
    assert len(set(after)) == 50
    assert min(after) > max(handed)
    assert min(after) > await stores.messages.max_seq(conv)
    more = await stores.sequences.next_seq(conv)
    assert more > max(after)
    if engine.name != "memory":  # the block jump above the stored seqs is marked (no holes)
        page, _ = await stores.messages.range(conv, after_seq=120, before_seq=min(after), limit=500)
        assert [x.seq for x in page] == list(range(121, min(after))) and all(is_gap(x) for x in page)


# ------------------------------------------------------------------ messages (S11)


async def test_messages_save_is_idempotent_and_ranges_work(engine: Engine) -> None:
    m = engine.stores.messages
    conv, other = new_id("c"), new_id("c")
    order = list(range(1, 31))
    random.Random(7).shuffle(order)
    for seq in order:  # out-of-order saves
        await m.save(msg(conv, 500 + seq, seq=seq))
    await m.save(msg(conv, 505, seq=5))  # same message again
    await m.save(msg(conv, 999, seq=5, body=b"impostor"))  # same (conversation, seq): first wins
    await m.save(msg(other, 1, seq=1))
    assert await m.max_seq(conv) == 30 and await m.max_seq(other) == 1 and await m.max_seq(new_id("c")) == 0

    page, more = await m.range(conv, limit=10)
    assert [x.seq for x in page] == list(range(1, 11)) and more is True
    assert page[4] == msg(conv, 505, seq=5)
    page, more = await m.range(conv, after_seq=25, limit=10)
    assert [x.seq for x in page] == [26, 27, 28, 29, 30] and more is False
    page, more = await m.range(conv, after_seq=10, before_seq=15, limit=10)
    assert [x.seq for x in page] == [11, 12, 13, 14] and more is False
    page, more = await m.range(conv, newest_first=True, limit=3)
    assert [x.seq for x in page] == [30, 29, 28] and more is True
    page, more = await m.range(conv, before_seq=4, newest_first=True, limit=3)
    assert [x.seq for x in page] == [3, 2, 1] and more is False
    page, more = await m.range(conv, after_seq=2, before_seq=6, newest_first=True, limit=2)
    assert [x.seq for x in page] == [5, 4] and more is True
    assert await m.range(new_id("c")) == ([], False)


# ------------------------------------------------------------------ the send steps (S10-S15)


async def send(st, conv: str, sender: str, message_id: int, recipients: list[str]) -> tuple[int, list[int]]:
    """One whole send as the dispatch service makes it: begin, save, finish."""
    begun = await st.steps.begin(conv, sender, message_id, recipients)
    assert begun.state in (SendState.NEW, SendState.RESUMED), begun
    m = msg(conv, message_id, seq=begun.seq, server_time=begun.server_time)
    setattr(m, "from", sender)
    body = m.SerializeToString()
    await st.messages.save(m, body)
    ack = pb.SendAck(message_id=message_id, conversation_id=conv, seq=begun.seq, server_time=begun.server_time)
    return begun.seq, await st.steps.finish(m, body, recipients, ack)


async def test_send_steps_leave_what_the_single_stores_would(engine: Engine) -> None:
    """begin + finish: the sender read up to its seq, every recipient joined and queued, the
    claim done; across more than one seq block (the slow path every 100)."""
    st = engine.stores
    sender, r1, r2 = new_id("u"), new_id("u"), new_id("u")
    conv = new_id("g")
    await st.reads.join(r1, conv, 0)
    await st.reads.advance(r1, conv, 1)  # a recipient with a position keeps it
    seqs = []
    for i in range(1, 131):
        seq, pending = await send(st, conv, sender, i, [r1, r2])
        seqs.append(seq)
        assert pending == [i, i]
    assert seqs == list(range(1, 131))
    assert (await st.sequences.latest_seqs([conv]))[conv] == 130
    assert await st.reads.positions(conv) == {sender: 130, r1: 1, r2: 0}
    assert (await st.reads.conversations(sender))[conv] == 130
    assert (await st.reads.conversations(r1))[conv] == 1
    assert (await st.reads.conversations(r2))[conv] == 0
    assert await st.offline.backlog(r2) == 130
    begun = await st.steps.begin(conv, sender, 7, [r1, r2])
    assert begun.state is SendState.DONE and begun.ack.seq == 7
    assert (await st.sequences.latest_seqs([conv]))[conv] == 130  # a duplicate takes no seq
    # a duplicate finish (a resumed send whose first attempt had queued) adds nothing
    m = msg(conv, 5, seq=5)
    setattr(m, "from", sender)
    assert await st.steps.finish(m, m.SerializeToString(), [r2], pb.SendAck(message_id=5, conversation_id=conv, seq=5)) == [130]
    assert await st.offline.backlog(r2) == 130


async def test_begin_claim_states(engine: Engine) -> None:
    """NEW, then PENDING while in flight, DONE once finished (with the ack), per sender; an
    aborted send is RESUMED at once with its seq and time; claims are per conversation."""
    st = engine.stores
    sender, peer, conv = new_id("u"), new_id("u"), new_id("c")
    first = await st.steps.begin(conv, sender, 1, [peer])
    assert first.state is SendState.NEW and first.seq == 1 and first.server_time > 0
    assert (await st.steps.begin(conv, sender, 1, [peer])).state is SendState.PENDING
    other = await st.steps.begin(conv, new_id("u"), 1, [peer])  # per sender
    assert other.state is SendState.NEW and other.seq == 2
    await st.steps.abort(conv, sender, 1)
    resumed = await st.steps.begin(conv, sender, 1, [peer])
    assert (resumed.state, resumed.seq, resumed.server_time) == (SendState.RESUMED, 1, first.server_time)
    assert (await st.steps.begin(conv, sender, 1, [peer])).state is SendState.PENDING  # resumed holds it
    seq, _ = await send(st, conv, sender, 3, [peer])
    done = await st.steps.begin(conv, sender, 3, [peer])
    assert done.state is SendState.DONE and done.ack.seq == seq == 3 and done.ack.message_id == 3
    assert (await st.sequences.latest_seqs([conv]))[conv] == 3  # resuming took no new seq


async def test_a_send_whose_node_died_is_resumed_with_its_seq_after_the_lease(engine: Engine) -> None:
    """S9 with no holes: the first attempt began (took seq 1) and vanished; a retry is PENDING
    while its lease lasts, then RESUMES with seq 1, so the conversation stays contiguous."""
    st = await engine.another(lease_s=0.3)
    sender, peer, conv = new_id("u"), new_id("u"), new_id("c")
    assert (await st.steps.begin(conv, sender, 1, [peer])).seq == 1  # ...and the node dies
    assert (await st.steps.begin(conv, sender, 1, [peer])).state is SendState.PENDING
    deadline = time.monotonic() + 10
    while (begun := await st.steps.begin(conv, sender, 1, [peer])).state is SendState.PENDING:
        assert time.monotonic() < deadline, "the lease never ran out"
        await asyncio.sleep(0.05)
    assert (begun.state, begun.seq) == (SendState.RESUMED, 1)
    seq, _ = await send(st, conv, sender, 2, [peer])
    assert seq == 2
    page, _ = await st.messages.range(conv, limit=10)
    assert [m.seq for m in page] == [2]  # seq 1 is still in flight (resumed): not a gap
    assert await st.steps.settle(conv, [1]) == []


async def test_begin_concurrent_claims_have_one_winner(engine: Engine) -> None:
    other = await engine.another()
    sender, conv = new_id("u"), new_id("c")
    begun = await asyncio.gather(*((engine.stores if i % 2 else other).steps.begin(conv, sender, 9, ["x"]) for i in range(50)))
    assert [b.state for b in begun].count(SendState.NEW) == 1
    assert (await other.sequences.latest_seqs([conv]))[conv] == 1


async def test_completed_claims_expire(engine: Engine) -> None:
    st = await engine.another(dedup_ttl_s=0.5)
    sender, conv = new_id("u"), new_id("c")
    await send(st, conv, sender, 1, ["x"])
    assert (await st.steps.begin(conv, sender, 1, ["x"])).state is SendState.DONE
    deadline = time.monotonic() + 10
    while (begun := await st.steps.begin(conv, sender, 1, ["x"])).state is SendState.DONE:
        assert time.monotonic() < deadline, "completed claim never expired"
        await asyncio.sleep(0.05)
    assert begun.state is SendState.NEW and begun.seq == 2  # past the de-dup horizon: a new send


async def test_settle_marks_only_seqs_that_will_never_carry_a_message(engine: Engine) -> None:
    st = await engine.another(lease_s=0.3)
    sender, peer, conv = new_id("u"), new_id("u"), new_id("c")
    await send(st, conv, sender, 1, [peer])  # seq 1: stored
    assert (await st.steps.begin(conv, sender, 2, [peer])).seq == 2  # seq 2: begun, never finished
    assert await st.sequences.next_seq(conv) == 3  # seq 3: handed out, no send holds it
    await send(st, conv, sender, 4, [peer])  # seq 4: stored
    assert await st.steps.settle(conv, [2, 3, 99]) == [3]  # 2 is in flight; 99 was never handed out
    deadline = time.monotonic() + 10
    while await st.steps.settle(conv, [2]) != [2]:  # its lease runs out: given up
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    page, _ = await st.messages.range(conv, limit=10)
    assert [(m.seq, is_gap(m)) for m in page] == [(1, False), (2, True), (3, True), (4, False)]
    gap = page[1]
    assert (gap.message_id, gap.conversation_id, gap.gap, gap.content_type) == (0, conv, True, -1)
    again = await st.steps.begin(conv, sender, 2, [peer])  # the client retries after all
    assert again.state is SendState.NEW and again.seq == 5  # a new seq: seq 2 stays a gap
    assert await st.steps.settle(conv, [1, 2, 3, 4]) == []  # markers and messages: nothing to do


async def test_gap_markers_never_hide_a_message(engine: Engine) -> None:
    m = engine.stores.messages
    conv = new_id("c")
    await m.save(msg(conv, 10, seq=1))
    await m.mark_gaps(conv, [1, 2, 3])  # 1 holds a message: it stays
    await m.save(msg(conv, 30, seq=3))  # a send given up on stores after all: it replaces the marker
    page, _ = await m.range(conv, limit=10)
    assert [(x.seq, x.message_id, is_gap(x)) for x in page] == [(1, 10, False), (2, 0, True), (3, 30, False)]
    assert await m.max_seq(conv) == 3


# ------------------------------------------------------------------ groups


async def test_groups_create_add_remove(engine: Engine) -> None:
    g = engine.stores.groups
    gid, missing = new_id("g"), new_id("g")
    assert await g.create(gid, ["a", "b", "a"]) is True
    assert await g.create(gid, ["z"]) is False
    assert await g.members(gid) == frozenset({"a", "b"})
    assert await g.add_members(gid, ["b", "c", "d", "c"]) == ["c", "d"]
    assert await g.members(gid) == frozenset({"a", "b", "c", "d"})
    assert await g.remove_members(gid, ["a", "x", "a"]) == ["a"]
    assert await g.members(gid) == frozenset({"b", "c", "d"})
    assert await g.add_members(missing, ["a"]) is None
    assert await g.remove_members(missing, ["a"]) is None
    assert await g.members(missing) is None
    empty = new_id("g")
    assert await g.create(empty, []) is True
    assert await g.members(empty) == frozenset()
    assert await g.create(empty, ["a"]) is False


async def test_ids_with_separator_characters_stay_apart(engine: Engine) -> None:
    g, base = engine.stores.groups, new_id("g")
    assert await g.create(f"{base}|x", ["y"]) is True
    assert await g.create(base, ["x|y"]) is True
    assert await g.members(f"{base}|x") == frozenset({"y"})
    assert await g.remove_members(base, ["y"]) == []
    assert await g.members(base) == frozenset({"x|y"})
    s, uid, node = engine.stores.sessions, new_id("u|{odd}:"), new_id("node")
    await s.bind(uid, f"{node}|a", 1, "d")
    await s.bind(uid, node, 2, "d")
    assert await s.lookup([uid]) == {uid: [node, f"{node}|a"]}
    assert await s.drop_node(node) == 1
    assert await s.lookup([uid]) == {uid: [f"{node}|a"]}
    seg = engine.stores.segments
    name = new_id("seg")
    assert await seg.lease(name, 5) == (1, 6)
    assert await seg.lease(f"{name}#head", 5) == (1, 6)  # a name that looks like a head id
    assert await seg.lease(name, 5) == (6, 11)


async def test_groups_concurrent_updates_from_two_nodes(engine: Engine) -> None:
    other = await engine.another()
    gid = new_id("g")
    assert await engine.stores.groups.create(gid, []) is True
    users = [f"m{i}" for i in range(60)]
    added = await asyncio.gather(
        *((engine.stores if i % 2 else other).groups.add_members(gid, [u]) for i, u in enumerate(users + users[:20]))
    )
    assert sorted(u for batch in added for u in batch) == sorted(users)  # each added exactly once
    removed = await asyncio.gather(*(other.groups.remove_members(gid, [u]) for u in users[:30]))
    assert sorted(u for batch in removed for u in batch) == sorted(users[:30])
    expect = frozenset(users[30:])
    assert await engine.stores.groups.members(gid) == expect  # each node sees the last write
    assert await other.groups.members(gid) == expect


# ------------------------------------------------------------------ read positions (S13, S14)


async def test_reads_join_advance_max_only(engine: Engine) -> None:
    r = engine.stores.reads
    uid, c1, c2 = new_id("u"), new_id("c"), new_id("c")
    await r.join(uid, c1)
    await r.join(uid, c2, read_seq=4)
    assert await r.conversations(uid) == {c1: 0, c2: 4}
    assert await r.advance(uid, c1, 7) == 7
    assert await r.advance(uid, c1, 3) == 7  # never backwards
    await r.join(uid, c1, read_seq=1)  # joining again keeps the position
    assert await r.conversations(uid) == {c1: 7, c2: 4}
    other = new_id("u")
    assert await r.advance(other, c1, 2) == 2  # advance without join adds the conversation
    assert await r.positions(c1) == {uid: 7, other: 2}
    assert await r.conversations(other) == {c1: 2}
    assert await r.positions(new_id("c")) == {} and await r.conversations(new_id("u")) == {}


async def test_reads_concurrent_advances_stay_exact(engine: Engine) -> None:
    other = await engine.another()
    uid, conv = new_id("u"), new_id("c")
    seqs = list(range(1, 301))
    random.Random(3).shuffle(seqs)
    results = await asyncio.gather(
        *((engine.stores if i % 2 else other).reads.advance(uid, conv, s) for i, s in enumerate(seqs))
    )
    assert all(res >= s for res, s in zip(results, seqs))
    assert await engine.stores.reads.conversations(uid) == {conv: 300}
    assert await other.reads.positions(conv) == {uid: 300}


# ------------------------------------------------------------------ segments (S17)


async def test_segment_leases_never_overlap_across_instances(engine: Engine) -> None:
    other = await engine.another()
    name = new_id("seg")
    assert await engine.stores.segments.lease(name, 10) == (1, 11)
    leases = await asyncio.gather(
        *((engine.stores if i % 2 else other).segments.lease(name, 1 + i % 7) for i in range(60))
    )
    spans = sorted([(1, 11), *leases])
    for (s1, e1), (s2, _) in zip(spans, spans[1:]):
        assert e1 == s2, f"gap or overlap between {s1}-{e1} and the next lease"
    assert all(e - s == 1 + i % 7 for i, (s, e) in enumerate(leases))



# ------------------------------------------------------------------ cluster engine only


async def test_redis_refuses_an_evicting_policy(cluster_servers, tmp_path) -> None:
    from im_runtime.storage.cluster import cluster_stores
    from im_runtime.storage.pools import EvictionPolicyError
    from tests.servers.redis import start_redis

    lru = start_redis(tmp_path / "lru", maxmemory_policy="allkeys-lru")
    # a managed Redis that blocks CONFIG: the policy is read from INFO memory instead
    managed = start_redis(tmp_path / "managed", maxmemory_policy="volatile-lfu", extra_args=["--rename-command", "CONFIG", ""])
    try:
        for server, policy in ((lru, "allkeys-lru"), (managed, "volatile-lfu")):
            with pytest.raises(EvictionPolicyError, match=f"maxmemory-policy is '{policy}'.*noeviction"):
                await cluster_stores(server.url, cluster_servers.mongo.url, "imstack_contract")
    finally:
        lru.stop()
        managed.stop()


async def test_redis_config_disabled_noeviction_is_accepted(cluster_servers, tmp_path) -> None:
    from im_runtime.storage.cluster import cluster_stores
    from im_runtime.storage.pools import eviction_policy, redis_client
    from tests.servers.redis import start_redis

    managed = start_redis(tmp_path / "managed", extra_args=["--rename-command", "CONFIG", ""])
    try:
        client = redis_client(managed.url)
        try:
            assert await eviction_policy(client) == "noeviction"
        finally:
            await client.aclose()
        stores = await cluster_stores(managed.url, cluster_servers.mongo.url, "imstack_contract")
        conv = new_id("c")
        assert await stores.sequences.next_seq(conv) == 1
        await stores.close()
    finally:
        managed.stop()


async def test_redis_keys_of_one_user_share_a_slot_and_users_spread(cluster_servers) -> None:
    import redis.asyncio as aioredis
    from redis.crc import key_slot

    from im_runtime.storage.cluster import cluster_stores

    stores = await cluster_stores(cluster_servers.redis.url, cluster_servers.mongo.url, "imstack_contract")
    client = aioredis.Redis.from_url(cluster_servers.redis.url)
    try:
        users = [new_id("u") for _ in range(40)]
        for uid in users:
            await stores.offline.pull(uid, 0, 1, device="laptop")
            for i in (1, 2, 3):
                await stores.offline.add(uid, msg("c", i))
        slots = set()
        for uid in users:
            await stores.offline.ack(uid, [2], device="phone")  # the device registry and marks too
            keys = [k async for k in client.scan_iter(match=f"im:tl*:{uid}")]
            assert len(keys) == 6, keys  # timeline, messages, pending, last position, devices, marks
            assert {k.split(b":")[1] for k in keys} == {b"tl", b"tlm", b"tlp", b"tll", b"tld", b"tla"}
            user_slots = {key_slot(k) for k in keys}
            assert len(user_slots) == 1, f"keys of {uid} span slots {user_slots}"
            slots |= user_slots
        assert len(slots) > 30  # S10: receivers spread over the cluster's slots
    finally:
        await client.aclose()
        await stores.close()


async def test_redis_memory_per_offline_message_does_not_grow_with_devices(cluster_servers) -> None:
    """Issue 12: one timeline, a cursor per device, not a copy per device."""
    import redis.asyncio as aioredis

    from im_runtime.storage.cluster import cluster_stores
    from im_runtime.storage.redis_store import RedisOfflineStore

    stores = await cluster_stores(cluster_servers.redis.url, cluster_servers.mongo.url, "imstack_contract")
    client = aioredis.Redis.from_url(cluster_servers.redis.url)
    try:
        usage = {}
        for devices in (1, 3, 8):
            uid, conv = new_id("u"), new_id("c")
            for d in range(devices):
                await stores.offline.register(uid, f"device-{d}")
            for i in range(1, 301):
                await stores.offline.add(uid, msg(conv, i, body=b"x" * 100))
            total = 0
            for key in RedisOfflineStore._keys(uid):
                total += await client.memory_usage(key, samples=0) or 0
            usage[devices] = total
        assert usage[3] <= usage[1] * 1.01 + 256, usage
        assert usage[8] <= usage[1] * 1.01 + 1024, usage
    finally:
        await client.aclose()
        await stores.close()


async def test_mongo_messages_keyed_newest_first_and_ranges_stay_in_their_conversation(cluster_servers) -> None:
    """S11 key: conversation + reversed seq; history and max_seq are `_id` ranges, so a
    conversation whose id extends another's must not leak into its ranges."""
    from pymongo import AsyncMongoClient

    from im_runtime.storage.cluster import cluster_stores
    from im_runtime.storage.mongo_store import message_key, seq_of

    stores = await cluster_stores(cluster_servers.redis.url, cluster_servers.mongo.url, "imstack_contract")
    client = AsyncMongoClient(cluster_servers.mongo.url, directConnection=True)
    try:
        conv = new_id("c")
        neighbours = [f"{conv}0", f"{conv}-", conv[:-1]]  # ids whose keys sort right beside conv's
        for n in neighbours:
            await stores.messages.save(msg(n, 1, seq=1))
            await stores.messages.save(msg(n, 2, seq=2**40))
        for seq, message_id in enumerate([5, 900_000_000_001, 77, 2**62], start=1):
            await stores.messages.save(msg(conv, message_id, seq=seq))
        docs = await client["imstack_contract"].messages.find({"_id": {"$regex": f"^{conv}:"}}).sort("_id", 1).to_list(10)
        assert [seq_of(d["_id"]) for d in docs] == [4, 3, 2, 1]  # S11: newest first
        assert docs[0]["_id"] == message_key(conv, 4) == f"{conv}:{2**63 - 1 - 4:019d}"
        assert pb.Message.FromString(docs[0]["b"]).message_id == 2**62
        assert await stores.messages.max_seq(conv) == 4
        page, more = await stores.messages.range(conv, after_seq=0, limit=10)
        assert [m.seq for m in page] == [1, 2, 3, 4] and not more
        page, more = await stores.messages.range(conv, after_seq=1, before_seq=4, limit=10)
        assert [m.seq for m in page] == [2, 3] and not more
        page, more = await stores.messages.range(conv, limit=2, newest_first=True)
        assert [m.seq for m in page] == [4, 3] and more
        assert await stores.messages.max_seq(new_id("c")) == 0
    finally:
        await client.close()
        await stores.close()


async def test_redis_connection_loss_and_script_cache_loss_recover(cluster_servers, tmp_path) -> None:
    """Redis restarts (script cache gone) and dropped connections must not wedge the stores."""
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from im_runtime.storage.cluster import cluster_stores
    from tests.servers.redis import start_redis

    server = start_redis(tmp_path / "redis")
    stores = await cluster_stores(server.url, cluster_servers.mongo.url, "imstack_contract")
    admin = aioredis.Redis.from_url(server.url)
    try:
        conv, uid = new_id("c"), new_id("u")
        assert await stores.sequences.next_seq(conv) == 1
        assert await stores.offline.add(uid, msg(conv, 1)) == 1
        await admin.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT
        assert await stores.sequences.next_seq(conv) == 2
        assert await stores.offline.add(uid, msg(conv, 2)) == 2
        killed = await admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        deadline = time.monotonic() + 10
        while True:  # a call racing the kill may fail once; the next ones reconnect
            try:
                seq = await stores.sequences.next_seq(conv)
                break
            except (ConnectionError, RedisConnectionError):
                assert time.monotonic() < deadline, "stores never reconnected to Redis"
                await asyncio.sleep(0.05)
        assert seq >= 3
        assert (await stores.offline.pull(uid, 0, 10))[0] == [msg(conv, 1), msg(conv, 2)]
    finally:
        await admin.aclose()
        await stores.close()
        server.stop()


async def test_redis_calls_share_few_connections_and_errors_stay_with_their_caller(cluster_servers) -> None:
    import redis.asyncio as aioredis
    from redis.exceptions import ResponseError

    from im_runtime.metrics import REGISTRY
    from im_runtime.storage.pools import AutoPipeline, redis_client

    def metric(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    admin = aioredis.Redis.from_url(cluster_servers.redis.url)
    client = redis_client(cluster_servers.redis.url)
    pipe = AutoPipeline(client, cluster_servers.redis.url, connections=2)
    try:
        before = (await admin.info("clients"))["connected_clients"]
        key = new_id("k")
        ok, wrong, got = await asyncio.gather(
            pipe.call("SET", key, "x"), pipe.call("HINCRBY", key, "f", 1), pipe.call("GET", key), return_exceptions=True
        )
        assert ok == b"OK" and got == b"x"
        assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
        commands, writes = metric("imstack_redis_pipeline_commands_total"), metric("imstack_redis_pipeline_writes_total")
        echoes = await asyncio.gather(*(pipe.call("ECHO", f"e{i}") for i in range(3000)))
        assert metric("imstack_redis_pipeline_commands_total") - commands == 3000
        assert metric("imstack_redis_pipeline_writes_total") - writes <= 4  # pipelined: one write per connection per loop turn
        assert echoes == [f"e{i}".encode() for i in range(3000)]  # every reply reached its own caller
        counts = await asyncio.gather(*(pipe.call("INCR", f"{key}:n") for _ in range(3000)))
        assert sorted(counts) == list(range(1, 3001))
        after = (await admin.info("clients"))["connected_clients"]
        assert after - before <= 2  # no per-call connections: the two pipelined ones at most
    finally:
        await pipe.close()
        await client.aclose()
        await admin.aclose()


async def test_seq_restart_waits_for_another_nodes_restart_and_takes_over_when_it_dies(cluster_servers) -> None:
    import redis.asyncio as aioredis

    from im_runtime.storage.cluster import cluster_stores
    from im_runtime.storage.redis_store import _key

    stores = await cluster_stores(cluster_servers.redis.url, cluster_servers.mongo.url, "imstack_contract")
    admin = aioredis.Redis.from_url(cluster_servers.redis.url)
    try:
        conv = new_id("c")
        # a node took the restart lock for this new conversation and died before installing it
        assert await admin.set(_key("seqr", conv), "1", nx=True, px=400)
        started = time.monotonic()
        assert await stores.sequences.next_seq(conv) == 1  # waited, took over, no gap
        assert time.monotonic() - started >= 0.3
        assert await admin.exists(_key("seqr", conv)) == 0  # released after the install
        assert await stores.sequences.next_seq(conv) == 2
    finally:
        await admin.aclose()
        await stores.close()


async def test_a_hung_redis_fails_calls_instead_of_hanging_them(cluster_servers, tmp_path) -> None:
    import signal

    from im_runtime.storage.cluster import cluster_stores
    from tests.servers.redis import start_redis

    server = start_redis(tmp_path / "redis")
    stores = await cluster_stores(server.url, cluster_servers.mongo.url, "imstack_contract", redis_reply_timeout_s=1)
    try:
        uid, conv = new_id("u"), new_id("c")
        assert await stores.offline.add(uid, msg(conv, 1)) == 1
        server.process.send_signal(signal.SIGSTOP)  # Redis stops answering, connections stay open
        try:
            started = time.monotonic()
            with pytest.raises(ConnectionError, match="no reply"):
                await asyncio.wait_for(stores.offline.backlog(uid), timeout=10)
            assert time.monotonic() - started < 5
        finally:
            server.process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert await stores.offline.backlog(uid) == 1
                break
            except ConnectionError:
                assert time.monotonic() < deadline, "stores never recovered after Redis resumed"
                await asyncio.sleep(0.05)
    finally:
        await stores.close()
        server.stop()


async def test_redis_url_with_password_and_database_is_honoured(cluster_servers, tmp_path) -> None:
    import redis.asyncio as aioredis

    from im_runtime.storage.cluster import cluster_stores
    from im_runtime.storage.redis_store import _key
    from tests.servers.redis import start_redis

    server = start_redis(tmp_path / "redis", extra_args=["--requirepass", "s3cret/pw"])
    url = f"redis://:s3cret%2Fpw@127.0.0.1:{server.port}/3"
    stores = await cluster_stores(url, cluster_servers.mongo.url, "imstack_contract")
    admin = aioredis.Redis.from_url(url)
    try:
        conv, uid = new_id("c"), new_id("u")
        assert await stores.sequences.next_seq(conv) == 1
        assert await stores.offline.add(uid, msg(conv, 1)) == 1
        assert await admin.exists(_key("seq", conv), _key("tl", uid)) == 2  # in database 3
        db0 = aioredis.Redis.from_url(f"redis://:s3cret%2Fpw@127.0.0.1:{server.port}/0")
        try:
            assert await db0.dbsize() == 0
        finally:
            await db0.aclose()
    finally:
        await admin.aclose()
        await stores.close()
        server.stop()


async def test_redis_batches_one_scripts_calls_of_a_loop_turn_into_one_evalsha(cluster_servers) -> None:
    """pools.AutoPipeline.batch: the calls of one script made in one loop turn run as one
    EVALSHA of the batched form; each caller gets its own reply; an error fails the batch;
    a Redis that lost its scripts (SCRIPT FLUSH) is given the batched form again."""
    import redis.asyncio as aioredis

    from im_runtime.storage.pools import AutoPipeline, redis_client

    url = cluster_servers.redis.url
    client = redis_client(url)
    admin = aioredis.Redis.from_url(url)
    pipe = AutoPipeline(client, url)
    script = client.register_script("if ARGV[1] == 'boom' then return redis.error_reply('boom') end "
                                    "return {redis.call('INCRBY', KEYS[1], ARGV[1]), #KEYS}")
    key = new_id("k")
    try:
        await pipe.call("PING")

        async def evalshas() -> int:
            stats = await admin.info("commandstats")
            return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

        before = await evalshas()
        replies = await asyncio.gather(*(pipe.batch(script, [key], [i]) for i in range(1, 51)))
        assert sorted(r[0] for r in replies) == [sum(range(1, i + 1)) for i in range(1, 51)]
        assert all(r[1] == 1 for r in replies)  # each item saw its own KEYS
        assert await evalshas() - before <= 2  # one batch (plus at most a NOSCRIPT retry)
        good = pipe.batch(script, [key], [1])
        bad = pipe.batch(script, [key], ["boom"])
        results = await asyncio.gather(good, bad, return_exceptions=True)
        assert results[0][0] == sum(range(1, 51)) + 1 and isinstance(results[1], Exception) and "boom" in str(results[1])
        crash = client.register_script("if ARGV[1] == 'boom' then redis.call('NOSUCHCOMMAND') end return 1")
        results = await asyncio.gather(pipe.batch(crash, [key], [1]), pipe.batch(crash, [key], ["boom"]), return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results)  # a raising command fails the batch
        await admin.script_flush()
        replies = await asyncio.gather(*(pipe.batch(script, [key], [1]) for _ in range(3)))
        assert len(replies) == 3 and max(r[0] for r in replies) == sum(range(1, 51)) + 4
    finally:
        await pipe.close()
        await client.aclose()
        await admin.aclose()
