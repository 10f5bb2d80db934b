"""Which access nodes are alive right now, as route sees it: what ipList must not get wrong.

An access node's ZooKeeper registration outlives a killed process by the session timeout
(10 s by default); until then ipList would keep sending clients to a dead address. So route
holds one keep-alive HTTP connection to every registered access node's probe port (the
`probe_port` of its registration) and asks `GET /healthz` on it every `interval` seconds:

- a killed process's kernel closes the connection, which route sees at once (it always has a
  read pending on it): the node is down within milliseconds;
- a node that stops answering (hung, partitioned) is down after `timeout`;
- a refused connect is down; a node comes back up with its next good answer.

A node whose registration has no probe port (an older access node) counts as alive, as
before. Down only keeps a node out of ipList; its sessions are dropped as before, when its
registration vanishes (S9). Costs: one small HTTP request per node per interval.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

log = logging.getLogger(__name__)

Address = tuple[str, int]
_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: imstack-route\r\nConnection: keep-alive\r\n\r\n"
MAX_RESPONSE = 16 << 10


class AccessLiveness:
    def __init__(self, *, interval: float = 0.25, timeout: float = 1.0, on_change: Callable[[], None] | None = None) -> None:
        self.interval = interval
        self.timeout = timeout
        self.on_change = on_change
        self._probes: dict[str, tuple[Address, asyncio.Task[None]]] = {}
        self._down: set[str] = set()

    def alive(self, node_id: str) -> bool:
        return node_id not in self._down

    def track(self, nodes: dict[str, Address | None]) -> None:
        """The access nodes registered now (node id -> probe address, or None: not probed)."""
        for node_id in list(self._probes):
            address, task = self._probes[node_id]
            if nodes.get(node_id) != address:
                task.cancel()
                del self._probes[node_id]
                self._set(node_id, up=True)  # forgotten (or readdressed): no verdict yet
        loop = asyncio.get_running_loop()
        for node_id, address in nodes.items():
            if address is not None and node_id not in self._probes:
                self._probes[node_id] = (address, loop.create_task(self._probe(node_id, address)))

    def _set(self, node_id: str, *, up: bool) -> None:
        changed = (node_id in self._down) == up
        if up:
            self._down.discard(node_id)
        else:
            self._down.add(node_id)
        if changed:
            log.info("access node %s", "up" if up else "down", extra={"node_id": node_id})
            if self.on_change is not None:
                self.on_change()

    async def _probe(self, node_id: str, address: Address) -> None:
        while True:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), self.timeout)
                while True:
                    writer.write(_REQUEST)
                    status = await asyncio.wait_for(_response(reader), self.timeout)
                    self._set(node_id, up=status == 200)
                    try:  # wait for the next probe with a read pending: a dead peer shows at once
                        extra = await asyncio.wait_for(reader.read(1), self.interval)
                    except asyncio.TimeoutError:
                        continue
                    if not extra:
                        raise ConnectionError("closed by the access node")
                    raise ConnectionError("unexpected bytes from the probe port")
            except asyncio.CancelledError:
                raise
            except (OSError, asyncio.TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
                self._set(node_id, up=False)
            finally:
                if writer is not None:
                    writer.close()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        for _, task in self._probes.values():
            task.cancel()
        self._probes.clear()


async def _response(reader: asyncio.StreamReader) -> int:
    """The status of one HTTP/1.1 response, its body read (Content-Length, as aiohttp sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_RESPONSE:
        raise ValueError("probe response too large")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length > MAX_RESPONSE:
        raise ValueError("probe response too large")
    if length:
        await reader.readexactly(length)
    return status
