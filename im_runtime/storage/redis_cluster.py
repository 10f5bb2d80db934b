"""Redis Cluster behind the interface of pools.AutoPipeline (S10: offline queues and every
other per-owner key spread over the cluster by a hash of their owner).

Every command goes to the master that owns its key's slot, on one pipelined connection per
master; the slot map comes from CLUSTER SLOTS. The keys of each Lua script share one hash tag
(redis_store's design), so a script runs on one node. Replies that move a call:
- MOVED (a slot moved for good: resharding, failover): the slot points at the named node at
  once, the whole map reloads in the background, the call is sent again;
- ASK (a slot half-way through a migration): ASKING plus the call to the named node, once;
- TRYAGAIN / CLUSTERDOWN (a migration or failover in progress): sent again after a pause;
- NOSCRIPT: the script is loaded on that node (pools.AutoPipeline.script) and run again.
A lost connection fails the calls on it (their callers retry, as with one Redis) and reloads
the map, so the next call finds the master that replaced a failed one.
"""
from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from im_runtime.storage.pools import AutoPipeline, _RespProtocol, relay

log = logging.getLogger(__name__)

SLOTS = 16384
REDIRECTS = 5  # moves one call may follow before it fails
Node = tuple[str, int]


def _key_of(args: tuple) -> bytes:
    """The key that picks a command's slot: EVALSHA's first key, else the first argument."""
    name = args[0].upper() if isinstance(args[0], str) else args[0].decode().upper()
    key = args[3] if name in ("EVALSHA", "EVAL") and int(args[2]) > 0 else args[1] if len(args) > 1 else b""
    return key if isinstance(key, bytes) else str(key).encode()


def _node_of(reply: str) -> Node:
    """The node of a MOVED/ASK reply: 'MOVED 3999 127.0.0.1:6381'."""
    host, port = reply.split()[2].rsplit(":", 1)
    return host, int(port)


async def is_cluster(client: aioredis.Redis) -> bool:
    """Whether the server at client's address runs in cluster mode (INFO cluster)."""
    return bool((await client.info("cluster")).get("cluster_enabled"))


class ClusterAutoPipeline(AutoPipeline):
    def __init__(self, client: aioredis.Redis, url: str, *, reply_timeout_s: float = 10.0) -> None:
        super().__init__(client, url, connections=1, reply_timeout_s=reply_timeout_s)
        if self._db:
            raise ValueError("Redis Cluster serves database 0 only: drop the database from the URL")
        self._seeds: list[Node] = [(self._host, self._port)]
        self._slots: list[Node | None] = [None] * SLOTS
        self._nodes: dict[Node, _RespProtocol] = {}
        self._opening: dict[Node, asyncio.Lock] = {}
        self._refreshing: asyncio.Task | None = None
        self.refreshes = 0

    # ---- the slot map ------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Loads the slot map (one load at a time; concurrent callers wait for the same one)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._load_slots())
        await asyncio.shield(self._refreshing)

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = self._loop.create_task(self._load_slots())
            self._refreshing.add_done_callback(_log_failure)

    async def _load_slots(self) -> None:
        self.refreshes += 1
        last: BaseException | None = None
        for node in dict.fromkeys([*self.masters(), *self._seeds]):
            try:
                reply = await self.on_node(node, "CLUSTER", "SLOTS")
            except (OSError, ConnectionError, asyncio.TimeoutError, ResponseError) as exc:
                last = exc
                continue
            slots: list[Node | None] = [None] * SLOTS
            for entry in reply:
                start, end, master = int(entry[0]), int(entry[1]), entry[2]
                host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
                slots[start : end + 1] = [(host or node[0], int(master[1]))] * (end - start + 1)
            self._slots = slots
            self._seeds = list(dict.fromkeys([*self.masters(), *self._seeds]))[:16]
            return
        raise ConnectionError(f"no Redis Cluster node answered CLUSTER SLOTS (last error: {last!r})")

    def masters(self) -> list[Node]:
        return list(dict.fromkeys(n for n in self._slots if n is not None))

    async def _node(self, node: Node) -> _RespProtocol:
        conn = self._nodes.get(node)
        if conn is not None and not conn.lost:
            return conn
        async with self._opening.setdefault(node, asyncio.Lock()):
            conn = self._nodes.get(node)
            if conn is None or conn.lost:
                conn = self._nodes[node] = await self._open(*node)
            return conn

    async def on_node(self, node: Node, *args):
        """One command on one node (admin, checks): its reply."""
        conn = await self._node(node)
        self._loop = asyncio.get_running_loop()
        future = self._loop.create_future()
        conn.send(args, future)
        return await asyncio.wait_for(future, self._reply_timeout)

    async def node_clients(self) -> list[aioredis.Redis]:
        """A redis-py client per master (start-up checks such as the eviction policy)."""
        await self.refresh()
        return [
            aioredis.Redis(host=h, port=p, username=self._username, password=self._password, ssl=self._ssl is not None)
            for h, p in self.masters()
        ]

    # ---- commands ----------------------------------------------------------------------------

    def call(self, *args) -> asyncio.Future:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        result = self._loop.create_future()
        self._send(args, result, key_slot(_key_of(args)), REDIRECTS, None)
        return result

    def _send(self, args: tuple, result: asyncio.Future, slot: int, budget: int, ask: Node | None) -> None:
        node = ask or self._slots[slot]
        conn = self._nodes.get(node) if node is not None else None
        if conn is None or conn.lost:
            self._loop.create_task(self._send_connecting(args, result, slot, budget, ask))
            return
        if ask is not None:
            asking = self._loop.create_future()
            asking.add_done_callback(_retrieve)  # its OK (or error) matters only through the call's reply
            conn.send(("ASKING",), asking)
        reply = self._loop.create_future()
        conn.send(args, reply)
        reply.add_done_callback(lambda f: self._settle(f, args, result, slot, budget))

    async def _send_connecting(self, args: tuple, result: asyncio.Future, slot: int, budget: int, ask: Node | None) -> None:
        try:
            if ask is None and self._slots[slot] is None:
                await self.refresh()
            node = ask or self._slots[slot]
            if node is None:
                raise ConnectionError(f"no Redis Cluster master serves slot {slot}")
            await self._node(node)
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            if not result.done():
                result.set_exception(exc)
            self._refresh_soon()
            return
        self._send(args, result, slot, budget, ask)

    def _settle(self, reply: asyncio.Future, args: tuple, result: asyncio.Future, slot: int, budget: int) -> None:
        relay(reply, result, lambda exc: self._redirect(exc, args, result, slot, budget))

    def _redirect(self, exc: BaseException, args: tuple, result: asyncio.Future, slot: int, budget: int) -> bool:
        """Sends the call on where the cluster says (True), or lets its error stand (False)."""
        text = str(exc) if isinstance(exc, ResponseError) else ""
        if budget > 0 and text.startswith("MOVED "):
            self._slots[slot] = _node_of(text)
            self._refresh_soon()
            self._send(args, result, slot, budget - 1, None)
        elif budget > 0 and text.startswith("ASK "):
            self._send(args, result, slot, budget - 1, _node_of(text))
        elif budget > 0 and text.startswith(("TRYAGAIN", "CLUSTERDOWN")):
            self._loop.call_later(0.05 * (REDIRECTS - budget + 1), self._send, args, result, slot, budget - 1, None)
        else:
            if isinstance(exc, ConnectionError):
                self._refresh_soon()  # a failed master: the next call goes to its replacement
            return False
        return True

    def batch(self, script, keys: list, args: list):
        """No batches on a cluster: the items' keys would lie in different slots."""
        return self.script(script, keys, args)

    async def _load_script(self, script, keys: list) -> None:
        node = self._slots[key_slot(_key_of(("EVALSHA", "", len(keys), *keys)))]
        if node is None:
            await self.refresh()
            node = self._slots[key_slot(_key_of(("EVALSHA", "", len(keys), *keys)))]
        await self.on_node(node, "SCRIPT", "LOAD", script.script)

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for conn in self._nodes.values():
            if conn.transport is not None:
                conn.transport.close()
        self._nodes.clear()
        await super().close()


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("Redis Cluster slot map reload failed", extra={"error": repr(task.exception())})
