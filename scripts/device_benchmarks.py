#!/usr/bin/env python3
"""Several devices per user (issue 12): delivered messages/s and Redis memory per offline
message with 1 and 3 devices per user, medians of `--runs` runs, written into
docs/benchmarks.md between its markers.

    .venv/bin/python scripts/device_benchmarks.py [--runs 3] [--duration 10] [--pairs 50]

- Redis memory per offline message: a fresh redis-server, `--users` users with D registered
  devices, all offline, `--messages` messages of 100 bytes each; `INFO memory` used_memory
  before and after, divided by the messages. Then one of the D devices acks everything (the
  entries stay for the others).
- Delivered/s: the all-in-one stack on the cluster stores (real redis-server and FerretDB, the
  path of tests.storage.stack_on_cluster) in a process of its own; `--pairs` pairs of users,
  every user with D connected devices; device 0 of one side sends with `--window` sends in
  flight, the other side's D devices receive (and ack in batches), and the sender's other
  D-1 devices get the sender-sync copies. Reported: messages/s acked to senders, deliveries/s
  to devices, and CPU per message of the stack, redis-server and FerretDB (from /proc).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from im_runtime.proto import imstack_pb2 as pb  # noqa: E402
from im_runtime.protocol.frame import FrameDecoder, encode_message  # noqa: E402
from im_runtime.protocol.types import RequestType  # noqa: E402
from benchmarks import write_results  # noqa: E402  (scripts/benchmarks.py: this folder is on sys.path)

DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- devices results: start (scripts/device_benchmarks.py) -->", "<!-- devices results: end -->"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# ---------------------------------------------------------------------------- Redis memory


async def redis_memory(devices: int, users: int, messages: int) -> dict:
    from im_runtime.storage.pools import AutoPipeline, redis_client
    from im_runtime.storage.redis_store import RedisOfflineStore
    from tests.servers.redis import start_redis

    server = start_redis(Path(tempfile.mkdtemp(prefix="imstack-devmem-")))
    client = redis_client(server.url)
    pipe = AutoPipeline(client, server.url)
    try:
        off = RedisOfflineStore(pipe)
        for u in range(users):
            for d in range(devices):
                await off.register(f"user{u:05d}", f"device-{d}")
        before = (await client.info("memory"))["used_memory"]
        now = int(time.time() * 1000)
        for u in range(users):
            uid = f"user{u:05d}"
            await asyncio.gather(*(
                off.add(uid, pb.Message(message_id=10_000_000 + u * messages + i, conversation_id=f"s:{uid}:peer{u % 50}",
                                        seq=i + 1, to=uid, content=b"x" * 100, server_time=now))
                for i in range(messages)
            ))
        after = (await client.info("memory"))["used_memory"]
        for u in range(users):  # device 0 reads everything: the entries stay for the others
            await off.ack(f"user{u:05d}", [10_000_000 + u * messages + i for i in range(messages)], device="device-0")
        acked = (await client.info("memory"))["used_memory"]
        kept = await off.backlog("user00000")
        return {
            "devices": devices, "messages": users * messages,
            "bytes_per_message": round((after - before) / (users * messages), 1),
            "bytes_per_message_after_one_device_read": round((acked - before) / (users * messages), 1) if kept else 0.0,
            "entries_kept_per_user_after_one_device_read": kept,
        }
    finally:
        await pipe.close()
        await client.aclose()
        server.stop()


# ---------------------------------------------------------------------------- delivered/s


class Conn(asyncio.Protocol):
    """One device: raw frames, acks pushes in one PUSH_ACK per loop turn."""

    def __init__(self, tally: dict) -> None:
        self.decoder = FrameDecoder(max_body=1 << 24)
        self.tally = tally
        self.waiting: dict[int, asyncio.Future] = {}
        self.seq = 0
        self.acks: list[int] = []
        self.transport = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for f in self.decoder.receive_data(data):
            if f.request_type == RequestType.PUSH:
                m = pb.Message.FromString(f.body)
                self.tally["delivered"] += 1
                if not self.acks:
                    asyncio.get_running_loop().call_soon(self._flush)
                self.acks.append(m.message_id)
            elif f.request_type == RequestType.PULL_NOTIFY:
                self.tally["notifies"] += 1
            else:
                fut = self.waiting.pop(f.sequence, None)
                if fut is not None and not fut.done():
                    fut.set_result(f)

    def _flush(self) -> None:
        ids, self.acks = self.acks, []
        if ids and self.transport is not None:
            self.transport.write(encode_message(RequestType.PUSH_ACK, 0, pb.PushAck(message_ids=ids)))

    async def request(self, request_type: int, message) -> object:  # type: ignore[no-untyped-def]
        self.seq += 1
        fut = asyncio.get_running_loop().create_future()
        self.waiting[self.seq] = fut
        self.transport.write(encode_message(request_type, self.seq, message))
        return await asyncio.wait_for(fut, 30)


async def deliveries(port: int, token_key: str, devices: int, pairs: int, window: int, duration: float, tag: str) -> dict:
    from im_runtime.route.tokens import TokenSigner

    signer = TokenSigner(token_key.encode())
    loop = asyncio.get_running_loop()
    tally = {"delivered": 0, "notifies": 0, "acked": 0}
    conns: dict[tuple[str, int], Conn] = {}
    for p in range(pairs):
        for uid in (f"a{p}-{tag}", f"b{p}-{tag}"):
            for d in range(devices):
                _, conn = await loop.create_connection(lambda: Conn(tally), "127.0.0.1", port)
                auth = pb.AuthRequest(uid=uid, token=signer.mint(uid).token, device_id=f"d{d}", features=["sync"])
                resp = pb.AuthResponse.FromString((await conn.request(RequestType.AUTH_REQ, auth)).body)
                assert resp.code == 0, resp
                conns[(uid, d)] = conn
    ids = iter(range(1, 1 << 40))
    stop_at = [0.0]

    async def sender(p: int) -> None:
        conn = conns[(f"a{p}-{tag}", 0)]
        while loop.time() < stop_at[0]:
            req = pb.SendRequest(message_id=next(ids) + p * (1 << 30), type=pb.SINGLE, to=f"b{p}-{tag}", content=b"x" * 100)
            ack = pb.SendAck.FromString((await conn.request(RequestType.SEND_REQ, req)).body)
            if ack.code == 0:
                tally["acked"] += 1

    stop_at[0] = loop.time() + 1.0  # warm-up
    await asyncio.gather(*(sender(p) for p in range(pairs) for _ in range(window)))
    await asyncio.sleep(0.5)
    for k in tally:
        tally[k] = 0
    started = time.monotonic()
    stop_at[0] = loop.time() + duration
    await asyncio.gather(*(sender(p) for p in range(pairs) for _ in range(window)))
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)
    for conn in conns.values():
        conn.transport.close()
    return {"elapsed_s": elapsed, **tally}


def delivered_run(devices: int, pairs: int, window: int, duration: float) -> dict:
    from tests.servers.ferretdb import start_ferretdb
    from tests.servers.redis import start_redis

    tmp = Path(tempfile.mkdtemp(prefix="imstack-devbench-"))
    redis, mongo = start_redis(tmp / "redis"), start_ferretdb(tmp / "ferretdb")
    stack = subprocess.Popen(
        [sys.executable, "-c", _STACK, redis.url, mongo.url], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT), "IMSTACK_LOG_FORMAT": "text"}, stderr=subprocess.DEVNULL,
    )
    try:
        port, token_key = stack.stdout.readline().split()
        pids = {"stack": stack.pid, "redis": redis.process.pid, "ferretdb": mongo.process.pid}
        before = {k: cpu_s(p) for k, p in pids.items()}
        result = asyncio.run(deliveries(int(port), token_key, devices, pairs, window, duration, f"{time.time_ns():x}"))
        after = {k: cpu_s(p) for k, p in pids.items()}
    finally:
        stack.terminate()
        stack.wait(timeout=30)
        mongo.stop()
        redis.stop()
    messages = max(1, result["acked"])
    out = {
        "devices": devices,
        "messages_per_s": round(result["acked"] / result["elapsed_s"]),
        "deliveries_per_s": round(result["delivered"] / result["elapsed_s"]),
        "deliveries_per_message": round(result["delivered"] / messages, 2),
        "pull_notifies": result["notifies"],
    }
    for k in pids:
        out[f"{k}_cpu_us_per_message"] = round((after[k] - before[k]) * 1e6 / messages)
    return out


# The stack process: all-in-one on the cluster stores, prints "<tcp port> <token key>".
_STACK = """
import asyncio, secrets, signal, sys
import uvloop
from im_runtime.allinone import AllInOne
from im_runtime.config import Settings
from im_runtime.storage.cluster import cluster_stores
from tests.servers.redis import free_port

async def main(redis_url, mongo_url):
    s = Settings(http_port=free_port(), tcp_port=free_port(), ws_port=free_port(), admin_key="bench",
                 token_key=secrets.token_urlsafe(32), rate_per_s=100_000)
    stores = await cluster_stores(redis_url, mongo_url, "imstack_devbench", dedup_ttl_s=600)
    stack = AllInOne(s, stores=stores, with_ws=False)
    await stack.start()
    print(stack.tcp.port, s.token_key, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await stack.close()
    await stores.close()

uvloop.run(main(sys.argv[1], sys.argv[2]))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--messages", type=int, default=100)
    args = parser.parse_args()
    memory_runs = {d: [asyncio.run(redis_memory(d, args.users, args.messages)) for _ in range(args.runs)] for d in (1, 3)}
    for d, runs in memory_runs.items():
        print(f"redis memory, {d} device(s): {runs}", file=sys.stderr, flush=True)
    delivered_runs: dict[int, list[dict]] = {1: [], 3: []}
    for i in range(args.runs):  # interleaved, so both see the same machine load
        for d in (1, 3):
            delivered_runs[d].append(delivered_run(d, args.pairs, args.window, args.duration))
            print(f"delivered, {d} device(s), run {i + 1}: {delivered_runs[d][-1]}", file=sys.stderr, flush=True)

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    load = os.getloadavg()
    cmd = (f".venv/bin/python scripts/device_benchmarks.py --runs {args.runs} --duration {args.duration:g} "
           f"--pairs {args.pairs} --window {args.window} --users {args.users} --messages {args.messages}")
    lines = [
        START,
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores "
        f"({platform.python_implementation()} {platform.python_version()}, load average after the runs {load[0]:.1f}), "
        f"medians of {args.runs} runs, by `{cmd}`.",
        "",
        "| devices per user | Redis bytes per offline message | ... after one device read them all | "
        "messages/s | deliveries/s | deliveries per message | stack CPU µs/message | redis-server µs/message | FerretDB µs/message |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in (1, 3):
        m, r = memory_runs[d], delivered_runs[d]
        after_read = f"{med(m, 'bytes_per_message_after_one_device_read'):g}" if d > 1 else "(gone: the only device read them)"
        lines.append(
            f"| {d} | {med(m, 'bytes_per_message'):g} | {after_read} | {med(r, 'messages_per_s'):g} | "
            f"{med(r, 'deliveries_per_s'):g} | {med(r, 'deliveries_per_message'):g} | {med(r, 'stack_cpu_us_per_message'):g} | "
            f"{med(r, 'redis_cpu_us_per_message'):g} | {med(r, 'ferretdb_cpu_us_per_message'):g} |"
        )
    runs = [(f"redis memory, {d} devices", memory_runs[d]) for d in (1, 3)]
    runs += [(f"delivered, {d} devices", delivered_runs[d]) for d in (1, 3)]
    print(write_results(DOC, START, END, lines, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
