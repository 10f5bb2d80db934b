import asyncio

from im_runtime.idgen.segment import SegmentGenerator
from im_runtime.idgen.snowflake import MAX_SEQUENCE, SnowflakeGenerator
from im_runtime.storage.memory import MemorySegmentStore


def test_snowflake_unique_and_increasing():
    gen = SnowflakeGenerator(7)
    ids = [gen.next_id() for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all((i >> 12) & 0x3FF == 7 for i in ids)


def test_snowflake_clock_going_backwards_never_duplicates():
    now = [1_800_000_000_000]
    gen = SnowflakeGenerator(1, clock_ms=lambda: now[0])
    first = [gen.next_id() for _ in range(10)]
    now[0] -= 5_000  # NTP steps the clock back five seconds
    later = [gen.next_id() for _ in range(10)]
    assert gen.clock_regressions == 10
    assert later[0] > first[-1] and len(set(first + later)) == 20


def test_snowflake_sequence_exhaustion_borrows_next_millisecond():
    gen = SnowflakeGenerator(0, clock_ms=lambda: 1_800_000_000_000)
    ids = [gen.next_id() for _ in range(MAX_SEQUENCE + 10)]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)


def test_snowflake_worker_range():
    for bad in (-1, 1024):
        try:
            SnowflakeGenerator(bad)
        except ValueError:
            continue
        raise AssertionError("worker id out of range accepted")


async def test_segment_double_buffer_never_overlaps_across_nodes():
    store = MemorySegmentStore()
    a, b = SegmentGenerator(store, step=100), SegmentGenerator(store, step=100)
    ids = []
    for _ in range(30):
        ids += await a.next_ids(17)
        ids += await b.next_ids(23)
    assert len(ids) == len(set(ids)) == 30 * 40
    # the next segment is leased before the current one runs out (double buffer)
    assert a.leases >= 2


async def test_segment_concurrent_callers():
    gen = SegmentGenerator(MemorySegmentStore(), step=50)
    batches = await asyncio.gather(*(gen.next_ids(7) for _ in range(40)))
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat)) == 280
