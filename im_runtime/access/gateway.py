"""A listening socket that makes one gateway connection per client: what the TCP and the
WebSocket gateways share (they differ only in the connection class they make)."""
from __future__ import annotations

import asyncio
import logging
import ssl

from im_runtime.access.node import AccessNode

log = logging.getLogger(__name__)


class Gateway:
    kind = "?"

    def __init__(
        self, node: AccessNode, host: str, port: int, *, ssl_context: ssl.SSLContext | None, max_body: int, backlog: int
    ) -> None:
        self.node = node
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.max_body = max_body
        self.backlog = backlog
        self._server: asyncio.base_events.Server | None = None

    def _connection(self) -> asyncio.Protocol:
        raise NotImplementedError

    def _describe(self) -> dict[str, object]:
        """Extra fields for the 'listening' log line."""
        return {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._connection, self.host, self.port, ssl=self.ssl_context, backlog=self.backlog, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            f"{self.kind} gateway listening",
            extra={"host": self.host, "port": self.port, "tls": self.ssl_context is not None, **self._describe()},
        )

    @property
    def connection_count(self) -> int:
        return self.node.count(self.kind)

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        await self.stop_accepting()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
