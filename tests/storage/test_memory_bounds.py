"""The memory engine (all-in-one mode) stays bounded on a long-running laptop stack."""
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.storage.interfaces import SendState
from im_runtime.storage.memory import (
    MemoryMessageStore, MemoryOfflineStore, MemoryReadStore, MemorySendSteps, MemorySequenceStore,
)


async def test_history_keeps_the_newest_per_conversation_and_exact_max_seq():
    store = MemoryMessageStore(per_conversation=100)
    for seq in range(1, 1001):
        await store.save(pb.Message(message_id=seq, conversation_id="s:a:b", seq=seq))
    page, more = await store.range("s:a:b", limit=500)
    assert len(page) <= 110 and page[-1].seq == 1000 and not more
    assert [m.seq for m in page] == list(range(1001 - len(page), 1001))
    assert await store.max_seq("s:a:b") == 1000


async def test_claims_are_capped_oldest_first():
    messages = MemoryMessageStore()
    steps = MemorySendSteps(MemorySequenceStore(), MemoryOfflineStore(), MemoryReadStore(), messages, max_entries=10)
    for i in range(1, 31):
        assert (await steps.begin("s:a:b", "a", i, ["b"])).state is SendState.NEW
    assert (await steps.begin("s:a:b", "a", 30, ["b"])).state is SendState.PENDING  # recent: remembered
    assert (await steps.begin("s:a:b", "a", 1, ["b"])).state is SendState.NEW  # oldest: dropped by the cap


async def test_trimmed_history_is_never_taken_for_gaps():
    """Seqs the memory engine dropped to stay bounded held messages: settle must not mark them."""
    messages = MemoryMessageStore(per_conversation=10)
    sequences = MemorySequenceStore()
    steps = MemorySendSteps(sequences, MemoryOfflineStore(), MemoryReadStore(), messages)
    for _ in range(30):
        seq = await sequences.next_seq("s:a:b")
        await messages.save(pb.Message(message_id=seq, conversation_id="s:a:b", seq=seq))
    kept = {m.seq for m in (await messages.range("s:a:b", limit=100))[0]}
    assert 1 not in kept
    assert await steps.settle("s:a:b", list(range(1, 31))) == []
