"""A real TCP proxy between a client and an access node that can lose what PUSH_ACKs say.

It reads the client's frames (the 20-byte header of PROTOCOL.md) and, while `drop_acks` is
set, does not pass PUSH_ACK frames on: the acks are lost on their way, as they are when the
access node holding them dies. `drop_connections()` cuts every connection (both ends), and
the client reconnects through the proxy. Server-to-client bytes pass untouched."""
from __future__ import annotations

import asyncio
import struct

from im_runtime.protocol.types import RequestType

HEADER = struct.Struct(">IIIII")


class AckProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.drop_acks = False
        self.dropped_acks = 0  # PUSH_ACK frames not passed on
        self.dropped_ids = 0
        self._server: asyncio.base_events.Server | None = None
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._tasks: set[asyncio.Task] = set()
        self.port = 0

    async def start(self) -> "AckProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._pairs.append((writer, up_writer))
        for coro in (self._upstream(reader, up_writer), self._downstream(up_reader, writer)):
            task = asyncio.ensure_future(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from im_runtime.proto import imstack_pb2 as pb

        try:
            while True:
                head = await reader.readexactly(20)
                length = HEADER.unpack(head)[4]
                body = await reader.readexactly(length) if length else b""
                if self.drop_acks and HEADER.unpack(head)[2] == RequestType.PUSH_ACK:
                    self.dropped_acks += 1
                    self.dropped_ids += len(pb.PushAck.FromString(body).message_ids)
                    continue
                writer.write(head + body)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def drop_connections(self) -> None:
        for client, server in self._pairs:
            for w in (client, server):
                transport = w.transport
                if transport is not None:
                    transport.abort()
        self._pairs.clear()

    async def close(self) -> None:
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
