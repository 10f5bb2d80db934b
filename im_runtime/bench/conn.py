"""One load-generator client connection (TCP) and what the generator's processes share:
the peer it plays, the tally it counts into, the send-time stamp in each message.

Its own module so that the TCP worker (loadgen) and the WebSocket one (wsconn) both import it
and neither imports the other.
"""
from __future__ import annotations

import array
import asyncio
import itertools
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


async def open_tcp(job_host: str, port: int, peer: Peer, tally: Tally, measuring: list[bool], local_addr: str | None) -> BenchConn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: BenchConn(peer, tally, measuring), job_host, port, local_addr=(local_addr, 0) if local_addr else None
    )
    return conn
