import asyncio

from im_runtime.dispatch.service import _ConversationLocks


async def test_mutual_exclusion_in_arrival_order():
    locks, inside, order = _ConversationLocks(), [], []

    async def worker(i):
        await locks.acquire("c")
        try:
            inside.append(i)
            assert len(inside) == 1
            order.append(i)
            await asyncio.sleep(0.001)
            inside.remove(i)
        finally:
            locks.release("c")

    tasks = [asyncio.ensure_future(worker(i)) for i in range(20)]
    await asyncio.gather(*tasks)
    assert order == list(range(20))
    assert locks._queues == {}  # nothing left behind


async def test_other_conversations_do_not_wait():
    locks = _ConversationLocks()
    await locks.acquire("a")
    await asyncio.wait_for(locks.acquire("b"), 0.5)
    locks.release("b")
    locks.release("a")


async def test_cancelled_waiter_never_holds_the_lock():
    locks = _ConversationLocks()
    await locks.acquire("c")
    waiter = asyncio.ensure_future(locks.acquire("c"))
    third = asyncio.ensure_future(locks.acquire("c"))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)
    locks.release("c")  # must skip the cancelled waiter and hand over to the third
    await asyncio.wait_for(third, 0.5)
    locks.release("c")
    assert locks._queues == {}


async def test_cancellation_arriving_with_ownership_passes_it_on():
    locks = _ConversationLocks()
    await locks.acquire("c")
    waiter = asyncio.ensure_future(locks.acquire("c"))
    third = asyncio.ensure_future(locks.acquire("c"))
    await asyncio.sleep(0)
    locks.release("c")  # ownership handed to waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    await asyncio.sleep(0)
    assert waiter.cancelled()
    await asyncio.wait_for(third, 0.5)
    locks.release("c")
    assert locks._queues == {}
