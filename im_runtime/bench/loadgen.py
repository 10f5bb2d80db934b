"""Load generator worker processes for `imstack bench` (one event loop each, raw frames).

The generator avoids the SDK's bookkeeping so that one core of load can drive the server:
sends are written in batches by one ticker per process (open loop at a fixed rate, or a
window of in-flight sends per client when the rate is 0), pushes are acked in batches, and
each message carries its send time (wall clock ns) so the receiver measures delivery latency.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from im_runtime.bench.conn import BenchConn, Peer, Tally, open_tcp
from im_runtime.bench.wsconn import open_ws, open_ws_connections
from im_runtime.protocol.types import RequestType


@dataclass
class ThroughputJob:
    host: str
    port: int
    peers: list[Peer]
    rate_per_client: float  # 0 = closed loop with `window` sends in flight per client
    window: int
    duration: float
    size: int
    local_addr: str | None = None
    ws_path: str | None = None  # WebSocket instead of TCP


async def run_throughput(job: ThroughputJob, ready, go, start_at, progress=None) -> Tally:  # type: ignore[no-untyped-def]
    """`progress`: a shared array (sent, delivered, errors) this process keeps current, read by
    the parent to show progress while the load runs."""
    tally = Tally()
    measuring = [False]
    conns = []
    if job.ws_path:
        def opener(p: Peer):  # type: ignore[no-untyped-def]
            return open_ws(job.host, job.port, job.ws_path, p, tally, measuring, job.local_addr)
    else:

        def opener(p: Peer):  # type: ignore[no-untyped-def]
            return open_tcp(job.host, job.port, p, tally, measuring, job.local_addr)

    for i in range(0, len(job.peers), 100):
        conns += await asyncio.gather(*(opener(p) for p in job.peers[i : i + 100]))
    await asyncio.gather(*(c.login() for c in conns))
    await asyncio.gather(*(c.refill_ids() for c in conns))
    ready.set()
    while not go.is_set():
        await asyncio.sleep(0.01)
    begin = start_at.value
    while time.time() < begin:
        await asyncio.sleep(0.001)
    measuring[0] = True
    sending = [True]
    padding = os.urandom(max(0, job.size - 8))
    for c in conns:
        c.padding = padding
        c.sending = sending
    tick = 0.002
    t0 = time.monotonic()
    end = t0 + job.duration
    refilling: set[int] = set()
    if job.rate_per_client <= 0:
        # Closed loop: fill each window once; every SEND_ACK then sends the next at once.
        for c in conns:
            c.window = job.window
            tally.sent += c.send_frames(job.window, padding)
    rate = job.rate_per_client * len(conns)
    next_conn = 0
    next_report = 0.0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if progress is not None and now >= next_report:
            next_report = now + 0.25
            progress[0], progress[1], progress[2] = tally.sent, tally.delivered, tally.errors
        if rate > 0:
            # Open loop: one schedule for the process, spread round-robin over the clients.
            due = int((now - t0) * rate) - tally.sent
            while due > 0:
                c = conns[next_conn]
                next_conn = (next_conn + 1) % len(conns)
                sent = c.send_frames(1, padding)
                tally.sent += sent
                due -= 1 if sent else 0
                if not sent:
                    break
        for i, c in enumerate(conns):
            if len(c.ids) < 200 and i not in refilling:
                refilling.add(i)
                asyncio.ensure_future(c.refill_ids()).add_done_callback(lambda _f, i=i: refilling.discard(i))
            if c.window and c.in_flight < c.window and c.ids:  # a window starved of ids while refilling
                tally.sent += c.send_frames(c.window - c.in_flight, padding)
        await asyncio.sleep(tick)
    sending[0] = False
    measured = time.monotonic() - t0
    # let what is in flight land, still counting (bounded)
    drain_end = time.monotonic() + 5
    while time.monotonic() < drain_end and any(c.in_flight > 0 for c in conns):
        for c in conns:
            c.flush_acks()
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    for c in conns:
        c.flush_acks()
    measuring[0] = False
    tally.latencies_ms.append(measured)  # last element: the measured duration (stripped by the parent)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return tally


def throughput_process(job: ThroughputJob, ready, go, start_at, results, progress=None) -> None:  # type: ignore[no-untyped-def]
    _run(_throughput_main(job, ready, go, start_at, results, progress))


async def _throughput_main(job, ready, go, start_at, results, progress=None) -> None:  # type: ignore[no-untyped-def]
    try:
        tally = await run_throughput(job, ready, go, start_at, progress)
        results.put(("ok", tally.sent, tally.acked, tally.delivered, tally.errors, tally.notifies, tally.latencies_ms.tobytes()))
    except Exception as exc:  # reported to the parent, which fails loudly
        ready.set()
        results.put(("error", repr(exc)))


@dataclass
class ConnectionsJob:
    host: str
    port: int
    peers: list[Peer]
    local_addrs: list[str]
    ws_path: str | None = None  # set for WebSocket connections
    heartbeat_s: float = 10.0


async def run_connections(job: ConnectionsJob, ready, stop, results) -> None:  # type: ignore[no-untyped-def]
    tally = Tally()
    measuring = [False]
    conns: list = []
    failed = 0
    if job.ws_path is None:
        for i in range(0, len(job.peers), 200):
            batch = job.peers[i : i + 200]
            opened = await asyncio.gather(
                *(
                    open_tcp(job.host, job.port, p, tally, measuring, job.local_addrs[(i + k) % len(job.local_addrs)])
                    for k, p in enumerate(batch)
                ),
                return_exceptions=True,
            )
            good = [c for c in opened if isinstance(c, BenchConn)]
            failed += len(opened) - len(good)
            logins = await asyncio.gather(*(c.login() for c in good), return_exceptions=True)
            failed += sum(1 for r in logins if isinstance(r, Exception))
            conns += good
    else:
        conns, failed = await open_ws_connections(job)
    results.put(("ready", len(conns) - 0, failed))
    ready.set()
    last_beat = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.2)
        if time.monotonic() - last_beat >= job.heartbeat_s:
            last_beat = time.monotonic()
            for c in conns:
                c.write(RequestType.HEARTBEAT_REQ)
    alive = sum(1 for c in conns if not c.closed)
    results.put(("done", alive))
    for c in conns:
        if c.transport is not None:
            c.transport.close()


def connections_process(job: ConnectionsJob, ready, stop, results) -> None:  # type: ignore[no-untyped-def]
    try:
        _run(run_connections(job, ready, stop, results))
    except Exception as exc:
        results.put(("error", repr(exc)))
        ready.set()


def _run(coro) -> None:  # type: ignore[no-untyped-def]
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)
