"""TCP (and TLS) client gateway: an asyncio Protocol around the connection core (S6, S8).

One object per connection with __slots__ and no task while idle, so an idle authenticated
connection costs a few KiB (see docs/benchmarks.md). Reading pauses when the request queue
fills; writes past the buffer limit drop the client (its messages stay offline).
"""
from __future__ import annotations

import asyncio
import logging
import ssl

from im_runtime.access.gateway import Gateway
from im_runtime.access.node import AccessNode
from im_runtime.access.session import GatewayConnection
from im_runtime.coalesced_writes import CoalescedWrites
from im_runtime.protocol.types import DEFAULT_MAX_BODY

log = logging.getLogger(__name__)


class TcpConnection(CoalescedWrites, GatewayConnection, asyncio.Protocol):
    """A client connection over TCP (or TLS); its frames leave coalesced per loop turn."""

    kind = "tcp"
    __slots__ = ("transport", "_out", "_out_bytes")

    def __init__(self, node: AccessNode, *, max_body: int) -> None:
        GatewayConnection.__init__(self, node, max_body=max_body)
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] | None = None
        self._out_bytes = 0

    # asyncio.Protocol (connection_made: GatewayConnection)
    def data_received(self, data: bytes) -> None:
        self.received(self.core.receive_data(data))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn_id:
            self.lost()
        self.transport = None

    # GatewayConnection hooks
    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self._queue_write(data, self._loop())

    def _write_buffer_size(self) -> int:
        return self._pending_bytes()

    def _close_transport(self) -> None:
        if self.transport is not None:
            self._flush()
            if self._write_buffer_size() > self.node.max_write_buffer:
                self.transport.abort()  # a slow reader gets no more bytes
            else:
                self.transport.close()  # flushes what is queued (KICK, the last ERROR)

    def _pause_reading(self, pause: bool) -> None:
        if self.transport is not None:
            (self.transport.pause_reading if pause else self.transport.resume_reading)()


class TcpGateway(Gateway):
    kind = "tcp"

    def __init__(
        self,
        node: AccessNode,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        backlog: int = 4096,
    ) -> None:
        super().__init__(node, host, port, ssl_context=ssl_context, max_body=max_body, backlog=backlog)

    def _connection(self) -> TcpConnection:
        return TcpConnection(self.node, max_body=self.max_body)


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
