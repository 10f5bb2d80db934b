"""WebSocket connections for `imstack bench connections --ws`: the smallest client that does
the RFC 6455 handshake and sends masked binary messages, one protocol frame each."""
from __future__ import annotations

import asyncio
import base64
import itertools
import os
import struct

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import FrameDecoder, encode_message
from im_runtime.protocol.types import RequestType


def _ws_frame(payload: bytes) -> bytes:
    """A masked binary frame (clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x82, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class WsBenchConn(asyncio.Protocol):
    def __init__(self, host: str, port: int, path: str) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.closed = False
        self.seq = itertools.count(1)
        self.decoder = FrameDecoder(max_body=1 << 20)
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters: dict[int, asyncio.Future] = {}

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during handshake"))
        for f in self.waiters.values():
            if not f.done():
                f.set_exception(ConnectionError("closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buffer[: self.buffer.find(b"\r\n")]
            self.buffer = self.buffer[end + 4 :]
            if b" 101 " not in status + b" ":
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.upgraded = True
            self.opened.set_result(None)
        while len(self.buffer) >= 2:
            b1, b2 = self.buffer[0], self.buffer[1]
            n, offset = b2 & 0x7F, 2
            if n == 126:
                if len(self.buffer) < 4:
                    return
                n, offset = struct.unpack_from("!H", self.buffer, 2)[0], 4
            elif n == 127:
                if len(self.buffer) < 10:
                    return
                n, offset = struct.unpack_from("!Q", self.buffer, 2)[0], 10
            if len(self.buffer) < offset + n:
                return
            payload, self.buffer = self.buffer[offset : offset + n], self.buffer[offset + n :]
            if b1 & 0x0F == 0x2:
                for frame in self.decoder.receive_data(payload):
                    waiter = self.waiters.pop(getattr(frame, "sequence", -1), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result((frame.request_type, frame.body))

    def write(self, request_type: int, message=None) -> int:  # type: ignore[no-untyped-def]
        seq = next(self.seq)
        if self.transport is not None and not self.closed:
            self.transport.write(_ws_frame(encode_message(request_type, seq, message)))
        return seq

    async def login(self, uid: str, token: str) -> None:
        seq = self.write(RequestType.AUTH_REQ, pb.AuthRequest(uid=uid, token=token))
        future = asyncio.get_running_loop().create_future()
        self.waiters[seq] = future
        request_type, body = await asyncio.wait_for(future, 30)
        if request_type != RequestType.AUTH_RESP or pb.AuthResponse.FromString(body).code != 0:
            raise RuntimeError(f"auth failed for {uid}")


async def open_ws_connections(job) -> tuple[list[WsBenchConn], int]:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    conns: list[WsBenchConn] = []
    failed = 0

    async def one(peer, local_addr):  # type: ignore[no-untyped-def]
        _, conn = await loop.create_connection(
            lambda: WsBenchConn(job.host, job.port, job.ws_path), job.host, job.port, local_addr=(local_addr, 0)
        )
        await asyncio.wait_for(conn.opened, 30)
        await conn.login(peer.uid, peer.token)
        return conn

    for i in range(0, len(job.peers), 200):
        batch = job.peers[i : i + 200]
        results = await asyncio.gather(
            *(one(p, job.local_addrs[(i + k) % len(job.local_addrs)]) for k, p in enumerate(batch)), return_exceptions=True
        )
        for r in results:
            if isinstance(r, WsBenchConn):
                conns.append(r)
            else:
                failed += 1
    return conns, failed
