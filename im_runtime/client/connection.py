"""One client connection: the frame codec over an asyncio stream, requests matched to
responses by sequence, server-initiated frames (PUSH, PULL_NOTIFY, KICK) handed to a callback."""
from __future__ import annotations

import asyncio
import itertools
import ssl
from typing import Callable

from google.protobuf.message import Message as ProtoMessage

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import Frame, FrameDecoder, FrameError, decode_body, encode_message
from im_runtime.protocol.types import ErrorCode, RequestType

SERVER_INITIATED = frozenset({RequestType.PUSH, RequestType.PULL_NOTIFY, RequestType.KICK, RequestType.SYNC})


class ServerError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class ConnectionClosed(Exception):
    pass


class ClientConnection(asyncio.Protocol):
    def __init__(self, on_event: Callable[[int, ProtoMessage | None], None], *, max_body: int = 1 << 24) -> None:
        self.on_event = on_event
        self.decoder = FrameDecoder(max_body=max_body)
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[int, asyncio.Future[tuple[int, ProtoMessage | None]]] = {}
        self.closed = asyncio.get_running_loop().create_future()
        self._seq = itertools.count(1)

    @classmethod
    async def open(
        cls, host: str, port: int, on_event: Callable[[int, ProtoMessage | None], None], *, ssl_context: ssl.SSLContext | None = None,
        local_addr: tuple[str, int] | None = None, timeout: float = 10.0,
    ) -> "ClientConnection":
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: cls(on_event), host, port, ssl=ssl_context, local_addr=local_addr), timeout
        )
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for event in self.decoder.receive_data(data):
            if isinstance(event, FrameError):
                self.close()
                return
            self._frame(event)

    def _frame(self, frame: Frame) -> None:
        try:
            message = decode_body(frame.request_type, frame.body)
        except Exception:
            return  # a server frame we cannot read: ignore it, never crash
        if frame.request_type in SERVER_INITIATED:
            self.on_event(frame.request_type, message)
            return
        future = self.waiting.pop(frame.sequence, None)
        if future is not None and not future.done():
            future.set_result((frame.request_type, message))
        elif frame.request_type == RequestType.ERROR:
            self.on_event(frame.request_type, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionClosed("connection closed"))
        self.waiting.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def write(self, request_type: int, message: ProtoMessage | None = None, sequence: int | None = None) -> int:
        if not self.is_open:
            raise ConnectionClosed("connection closed")
        seq = next(self._seq) & 0xFFFFFFFF if sequence is None else sequence
        self.transport.write(encode_message(request_type, seq, message))  # type: ignore[union-attr]
        return seq

    async def request(self, request_type: int, message: ProtoMessage | None = None, *, timeout: float = 10.0) -> ProtoMessage | None:
        """Sends a request and returns the response body; ERROR answers raise ServerError."""
        seq = self.write(request_type, message)
        future: asyncio.Future[tuple[int, ProtoMessage | None]] = asyncio.get_running_loop().create_future()
        self.waiting[seq] = future
        try:
            response_type, body = await asyncio.wait_for(future, timeout)
        finally:
            self.waiting.pop(seq, None)
        if response_type == RequestType.ERROR:
            assert isinstance(body, pb.Error)
            raise ServerError(body.code, body.message)
        return body

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def is_retryable(code: int) -> bool:
    return code in (ErrorCode.UNAVAILABLE, ErrorCode.RATE_LIMITED)
