"""The memory engine (all-in-one mode) stays bounded on a long-running laptop stack."""
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.storage.interfaces import ClaimState
from im_runtime.storage.memory import MemoryDedupStore, MemoryMessageStore


async def test_history_keeps_the_newest_per_conversation_and_exact_max_seq():
    store = MemoryMessageStore(per_conversation=100)
    for seq in range(1, 1001):
        await store.save(pb.Message(message_id=seq, conversation_id="s:a:b", seq=seq))
    page, more = await store.range("s:a:b", limit=500)
    assert len(page) <= 110 and page[-1].seq == 1000 and not more
    assert [m.seq for m in page] == list(range(1001 - len(page), 1001))
    assert await store.max_seq("s:a:b") == 1000


async def test_dedup_entries_are_capped_oldest_first():
    store = MemoryDedupStore(max_entries=10)
    for i in range(1, 31):
        assert (await store.claim("a", i)).state is ClaimState.NEW
    assert (await store.claim("a", 30)).state is ClaimState.PENDING  # recent: remembered
    assert (await store.claim("a", 1)).state is ClaimState.NEW  # oldest: dropped by the cap
