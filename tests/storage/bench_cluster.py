"""Throughput of the cluster stores on this machine (not a test; run by hand):

    .venv/bin/python -m tests.storage.bench_cluster [--messages 20000] [--concurrency 256]

Starts its own redis-server and FerretDB, then measures each store call alone and the store
calls of one delivered 1:1 message (begin: claim + seq, persist, finish: offline add + claim
complete, receiver ack) with many messages in flight, as a dispatch node would.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import uvloop

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.storage.cluster import cluster_stores
from tests.servers.ferretdb import start_ferretdb
from tests.servers.redis import start_redis


async def run_many(n: int, concurrency: int, make) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await make(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - t0)


async def bench(redis_url: str, mongo_url: str, n: int, concurrency: int) -> None:
    s = await cluster_stores(redis_url, mongo_url, "bench")
    pairs = 500
    for p in range(pairs):
        await s.sessions.bind(f"r{p}", "access-1", p, "d")

    def message(i: int, seq: int = 0) -> pb.Message:
        p = i % pairs
        return pb.Message(message_id=10_000_000 + i, conversation_id=f"s{p}:r{p}", seq=seq, to=f"r{p}",
                          content=b"x" * 100, server_time=int(time.time() * 1000))

    results = {}
    results["steps.begin (claim + seq)"] = await run_many(
        n, concurrency, lambda i: s.steps.begin(f"s{i % pairs}:r{i % pairs}", f"s{i % pairs}", i, [f"r{i % pairs}"])
    )
    # first seq of each conversation: one MongoDB chain step (4 round trips) reserves a block
    results["sequences.next_seq, new conversations"] = await run_many(
        pairs, concurrency, lambda i: s.sequences.next_seq(f"s{i % pairs}:r{i % pairs}")
    )
    results["sequences.next_seq"] = await run_many(
        n, concurrency, lambda i: s.sequences.next_seq(f"s{i % pairs}:r{i % pairs}")
    )
    results["offline.add"] = await run_many(n, concurrency, lambda i: s.offline.add(f"r{i % pairs}", message(i)))
    results["sessions.lookup"] = await run_many(n, concurrency, lambda i: s.sessions.lookup([f"r{i % pairs}"]))
    results["messages.save"] = await run_many(n // 4, concurrency, lambda i: s.messages.save(message(i, seq=1_000_000 + i)))

    async def deliver(i: int) -> None:
        i += 5 * n
        sender, receiver = f"s{i % pairs}", f"r{i % pairs}"
        conv = f"{sender}:{receiver}"
        begun = await s.steps.begin(conv, sender, i, [receiver])
        assert begun.state.value == "new"
        m = message(i, seq=begun.seq)
        setattr(m, "from", sender)
        body = m.SerializeToString()
        await s.messages.save(m, body)
        await s.steps.finish(m, body, [receiver], pb.SendAck(message_id=i, conversation_id=conv, seq=begun.seq))
        await s.offline.ack(receiver, [m.message_id])

    results["delivered 1:1 message (all calls)"] = await run_many(n // 4, concurrency, deliver)
    for name, rate in results.items():
        print(f"{name:40s} {rate:10.0f} /s")
    await s.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=256)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="imstack-bench-")
    redis, mongo = start_redis(tmp), start_ferretdb(tmp)
    try:
        uvloop.run(bench(redis.url, mongo.url, args.messages, args.concurrency))
    finally:
        mongo.stop()
        redis.stop()


if __name__ == "__main__":
    main()
