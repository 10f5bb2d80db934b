"""WebSocket connections for the load generator (`--ws`): the smallest client that does the
RFC 6455 handshake and sends masked binary messages, one protocol frame each."""
from __future__ import annotations

import asyncio
import base64
import os
import struct

from im_runtime.bench.conn import BenchConn, Peer, Tally
from im_runtime.protocol.frame import HEADER

try:
    from websockets.speedups import apply_mask  # C, shipped in the websockets wheel
except ImportError:  # pragma: no cover - pure Python fallback

    def apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        key = (mask * (n // 4 + 1))[:n]
        return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def ws_frame(payload: bytes) -> bytes:
    """A masked binary frame (clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x82, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    return head + mask + apply_mask(payload, mask)


class WsFraming:
    """Client side of the handshake and of server (unmasked) frames, sans I/O."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.buffer = b""
        self.upgraded = False
        self.refused: str | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Binary message payloads in the data (after the handshake answer)."""
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return []
            status = self.buffer[: self.buffer.find(b"\r\n")]
            self.buffer = self.buffer[end + 4 :]
            if b" 101 " not in status + b" ":
                self.refused = status.decode(errors="replace")
                return []
            self.upgraded = True
        payloads = []
        while len(self.buffer) >= 2:
            b1, b2 = self.buffer[0], self.buffer[1]
            n, offset = b2 & 0x7F, 2
            if n == 126:
                if len(self.buffer) < 4:
                    break
                n, offset = struct.unpack_from("!H", self.buffer, 2)[0], 4
            elif n == 127:
                if len(self.buffer) < 10:
                    break
                n, offset = struct.unpack_from("!Q", self.buffer, 2)[0], 10
            if len(self.buffer) < offset + n:
                break
            payload, self.buffer = self.buffer[offset : offset + n], self.buffer[offset + n :]
            if b1 & 0x0F == 0x2:
                payloads.append(payload)
        return payloads


def frames_of(data: bytes) -> list[bytes]:
    """Splits concatenated protocol frames (one WebSocket message each)."""
    out, offset = [], 0
    while offset < len(data):
        body_length = HEADER.unpack_from(data, offset)[4]
        end = offset + 20 + body_length
        out.append(data[offset:end])
        offset = end
    return out


class _WsWriter:
    """Looks like a transport to BenchConn: every protocol frame leaves as one WS message."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        self._transport.write(b"".join(ws_frame(f) for f in frames_of(data)))

    def close(self) -> None:
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()


class WsBenchConn(BenchConn):
    """BenchConn (throughput and idle connections) over WebSocket."""

    def __init__(self, peer: Peer, tally: Tally, measuring: list[bool], *, host: str, port: int, path: str) -> None:
        super().__init__(peer, tally, measuring)
        self.framing = WsFraming(host, port, path)
        self.raw: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.raw = transport
        transport.write(self.framing.request)

    def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        payloads = self.framing.feed(data)
        if not self.opened.done():
            if self.framing.refused:
                self.opened.set_exception(ConnectionError(self.framing.refused))
                return
            if self.framing.upgraded:
                self.transport = _WsWriter(self.raw)  # type: ignore[assignment]
                self.opened.set_result(None)
        if payloads:
            super().data_received(b"".join(payloads))


async def open_ws(host: str, port: int, path: str, peer: Peer, tally: Tally, measuring: list[bool], local_addr: str | None) -> WsBenchConn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: WsBenchConn(peer, tally, measuring, host=host, port=port, path=path),
        host, port, local_addr=(local_addr, 0) if local_addr else None,
    )
    await asyncio.wait_for(conn.opened, 30)
    return conn


async def open_ws_connections(job) -> tuple[list[WsBenchConn], int]:  # type: ignore[no-untyped-def]
    tally, measuring = Tally(), [False]
    conns: list[WsBenchConn] = []
    failed = 0

    async def one(peer: Peer, local_addr: str) -> WsBenchConn:
        conn = await open_ws(job.host, job.port, job.ws_path, peer, tally, measuring, local_addr)
        await conn.login()
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

