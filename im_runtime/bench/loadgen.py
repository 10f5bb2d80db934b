"""Load generator worker processes for `imstack bench` (one event loop each, raw frames).

The generator avoids the SDK's bookkeeping so that one core of load can drive the server:
sends are written in batches by one ticker per process (open loop at a fixed rate, or a
window of in-flight sends per client when the rate is 0), pushes are acked in batches, and
each message carries its send time (wall clock ns) so the receiver measures delivery latency.
"""
from __future__ import annotations

import array
import asyncio
import itertools
import os
import struct
import time
from dataclasses import dataclass, field

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import FrameDecoder, encode_frame, encode_message
from im_runtime.protocol.types import RequestType

STAMP = struct.Struct(">q")


@dataclass
class Peer:
    uid: str
    token: str
    to: str  # peer uid or group id
    group: bool


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


@dataclass
class Tally:
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    errors: int = 0
    notifies: int = 0
    latencies_ms: array.array = field(default_factory=lambda: array.array("d"))


class BenchConn(asyncio.Protocol):
    def __init__(self, peer: Peer, tally: Tally, measuring: list[bool]) -> None:
        self.peer = peer
        self.tally = tally
        self.measuring = measuring
        self.decoder = FrameDecoder(max_body=1 << 24)
        self.transport: asyncio.Transport | None = None
        self.waiters: dict[int, asyncio.Future] = {}
        self.seq = itertools.count(1)
        self.ids: list[int] = []
        self.to_ack: list[int] = []
        self.in_flight = 0
        self.closed = False
        self.seen: set[int] = set()
        self.pulling = False
        self.pull_again = False
        self.window = 0  # closed loop: sends in flight kept at this many, refilled on each ack
        self.sending = measuring  # replaced by the run's own flag
        self.padding = b""

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
        self.closed = True
        for f in self.waiters.values():
            if not f.done():
                f.set_exception(ConnectionError("closed"))

    def data_received(self, data: bytes) -> None:
        now_ns = time.time_ns()
        tally = self.tally
        for frame in self.decoder.receive_data(data):
            t = getattr(frame, "request_type", None)
            if t is None:
                tally.errors += 1
                continue
            if t == RequestType.PUSH:
                message = pb.Message.FromString(frame.body)
                self._delivered(message, now_ns)
            elif t == RequestType.SEND_ACK:
                self.in_flight -= 1
                if self.measuring[0]:
                    ack = pb.SendAck.FromString(frame.body)
                    if ack.code in (0, 409):
                        tally.acked += 1
                    else:
                        tally.errors += 1

            elif t == RequestType.PULL_NOTIFY:
                tally.notifies += 1
                if self.pulling:
                    self.pull_again = True  # coalesce: one pull in flight, one more after it
                else:
                    self.pull_offline()
            elif t == RequestType.PULL_OFFLINE_RESP:
                resp = pb.PullOfflineResponse.FromString(frame.body)
                for message in resp.messages:
                    self._delivered(message, now_ns)
                if resp.has_more:
                    self.pull_offline(resp.next_cursor)
                elif self.pull_again:
                    self.pull_again = False
                    self.pull_offline()
                else:
                    self.pulling = False
            else:
                waiter = self.waiters.pop(frame.sequence, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result((t, frame.body))
                elif t == RequestType.ERROR:
                    tally.errors += 1
        # One write per read: the acks of what this read brought (at once, which keeps pending
        # under the notify threshold) and, in closed loop, the sends the acks made room for.
        out = []
        if self.to_ack:
            ids, self.to_ack = self.to_ack, []
            out.append(encode_message(RequestType.PUSH_ACK, 0, pb.PushAck(message_ids=ids)))
        if self.window and self.sending[0] and self.in_flight < self.window:
            n = self._encode_sends(self.window - self.in_flight, self.padding, out)
            tally.sent += n
        if out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(out))

    def _delivered(self, message: pb.Message, now_ns: int) -> None:
        self.to_ack.append(message.message_id)
        if message.message_id in self.seen:  # pushed, then pulled again before the ack landed
            return
        self.seen.add(message.message_id)
        if self.measuring[0] and len(message.content) >= 8:
            self.tally.delivered += 1
            self.tally.latencies_ms.append((now_ns - STAMP.unpack_from(message.content)[0]) / 1e6)

    def pull_offline(self, cursor: int = 0) -> None:
        self.pulling = True
        self.write(RequestType.PULL_OFFLINE_REQ, pb.PullOfflineRequest(cursor=cursor, limit=500))

    def write(self, request_type: int, message=None) -> int:  # type: ignore[no-untyped-def]
        seq = next(self.seq)
        if self.transport is not None and not self.closed:
            self.transport.write(encode_message(request_type, seq, message))
        return seq

    async def request(self, request_type: int, message=None, timeout: float = 30.0):  # type: ignore[no-untyped-def]
        seq = self.write(request_type, message)
        fut = asyncio.get_running_loop().create_future()
        self.waiters[seq] = fut
        return await asyncio.wait_for(fut, timeout)

    async def login(self) -> None:
        t, body = await self.request(RequestType.AUTH_REQ, pb.AuthRequest(uid=self.peer.uid, token=self.peer.token))
        resp = pb.AuthResponse.FromString(body)
        if t != RequestType.AUTH_RESP or resp.code != 0:
            raise RuntimeError(f"auth failed for {self.peer.uid}: {resp.code} {resp.message}")

    async def refill_ids(self) -> None:
        t, body = await self.request(RequestType.ID_BATCH_REQ, pb.IdBatchRequest(count=1000))
        self.ids.extend(pb.IdBatchResponse.FromString(body).ids)

    def _encode_sends(self, count: int, padding: bytes, out: list[bytes]) -> int:
        count = min(count, len(self.ids))
        if count <= 0:
            return 0
        peer = self.peer
        kind = pb.GROUP if peer.group else pb.SINGLE
        for _ in range(count):
            req = pb.SendRequest()
            req.message_id = self.ids.pop()
            req.type = kind
            req.to = peer.to
            req.content = STAMP.pack(time.time_ns()) + padding
            out.append(encode_frame(RequestType.SEND_REQ, next(self.seq), req.SerializeToString()))
        self.in_flight += count
        return count

    def send_frames(self, count: int, padding: bytes) -> int:
        """Writes up to count SEND_REQ frames in one write; returns how many."""
        if self.transport is None or self.closed:
            return 0
        out: list[bytes] = []
        sent = self._encode_sends(count, padding, out)
        if out:
            self.transport.write(b"".join(out))
        return sent

    def flush_acks(self) -> None:
        if self.to_ack and self.transport is not None and not self.closed:
            ids, self.to_ack = self.to_ack, []
            self.transport.write(encode_message(RequestType.PUSH_ACK, 0, pb.PushAck(message_ids=ids)))


async def _open(job_host: str, port: int, peer: Peer, tally: Tally, measuring: list[bool], local_addr: str | None) -> BenchConn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: BenchConn(peer, tally, measuring), job_host, port, local_addr=(local_addr, 0) if local_addr else None
    )
    return conn


async def run_throughput(job: ThroughputJob, ready, go, start_at) -> Tally:  # type: ignore[no-untyped-def]
    tally = Tally()
    measuring = [False]
    conns = []
    if job.ws_path:
        from im_runtime.bench.wsconn import open_ws

        def opener(p: Peer):  # type: ignore[no-untyped-def]
            return open_ws(job.host, job.port, job.ws_path, p, tally, measuring, job.local_addr)
    else:

        def opener(p: Peer):  # type: ignore[no-untyped-def]
            return _open(job.host, job.port, p, tally, measuring, job.local_addr)

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
    while True:
        now = time.monotonic()
        if now >= end:
            break
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


def throughput_process(job: ThroughputJob, ready, go, start_at, results) -> None:  # type: ignore[no-untyped-def]
    _run(_throughput_main(job, ready, go, start_at, results))


async def _throughput_main(job, ready, go, start_at, results) -> None:  # type: ignore[no-untyped-def]
    try:
        tally = await run_throughput(job, ready, go, start_at)
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
                    _open(job.host, job.port, p, tally, measuring, job.local_addrs[(i + k) % len(job.local_addrs)])
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
        from im_runtime.bench.wsconn import open_ws_connections

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
