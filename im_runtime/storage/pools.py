"""Driver pools (STYLE 6): the one place that opens Redis and MongoDB connections.

Stores receive a ready client and never build their own, so a process holds one Redis
connection pool and one MongoDB client however many stores it runs (no per-call setup).
redis-py picks the hiredis parser by itself when `hiredis` is installed.

`check_eviction_policy` is the S10 capacity guard: offline messages live in Redis until acked,
so a Redis that may evict keys would drop them silently. We refuse to start on one.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import Callable
from urllib.parse import parse_qs, unquote, urlparse

import hiredis

import redis.asyncio as aioredis
from prometheus_client import Counter
from pymongo import AsyncMongoClient
from redis.exceptions import NoScriptError, ResponseError

from im_runtime.metrics import REGISTRY


# Batch-level metrics (cheap: one update per write, not per command). The ratio
# commands/writes is the average pipeline depth.
REDIS_COMMANDS = Counter("imstack_redis_pipeline_commands_total", "Commands sent on the pipelined Redis connections", registry=REGISTRY)
REDIS_WRITES = Counter("imstack_redis_pipeline_writes_total", "Socket writes carrying those commands", registry=REGISTRY)
REDIS_CONNECTS = Counter("imstack_redis_pipeline_connects_total", "Pipelined Redis connections opened", registry=REGISTRY)
REDIS_LOST = Counter("imstack_redis_pipeline_connections_lost_total", "Pipelined Redis connections lost", registry=REGISTRY)
REDIS_TIMEOUTS = Counter("imstack_redis_pipeline_timeouts_total", "Pipelined Redis connections closed for lack of replies", registry=REGISTRY)


class EvictionPolicyError(RuntimeError):
    """Redis is configured to evict keys; imstack would lose offline messages (S10)."""


def redis_client(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """A pooled asyncio client; bytes in, bytes out (stores decode what they need).

    A blocking pool: a burst beyond max_connections waits for a free connection (up to
    `timeout` s) instead of failing, and the number of sockets to Redis stays bounded."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        decode_responses=False,
        health_check_interval=30,
        socket_keepalive=True,
    )
    return aioredis.Redis(connection_pool=pool)


def mongo_client(url: str, *, max_pool_size: int = 32) -> AsyncMongoClient:
    # directConnection: FerretDB and single mongod answer as standalone; a replica-set URL
    # (replicaSet=...) overrides it through the URL itself.
    kwargs: dict = {"maxPoolSize": max_pool_size, "serverSelectionTimeoutMS": 10_000, "tz_aware": False}
    if "replicaSet=" not in url and "directConnection=" not in url and not url.startswith("mongodb+srv://"):
        kwargs["directConnection"] = True
    return AsyncMongoClient(url, **kwargs)


async def eviction_policy(client: aioredis.Redis) -> str:
    """maxmemory-policy from CONFIG GET, or from INFO memory where CONFIG is disabled
    (managed Redis services rename or block it)."""
    try:
        reply = await client.config_get("maxmemory-policy")
        value = reply.get(b"maxmemory-policy", reply.get("maxmemory-policy"))
        if value is not None:
            return value.decode() if isinstance(value, bytes) else str(value)
    except ResponseError:
        pass
    info = await client.info("memory")
    value = info.get("maxmemory_policy")
    if value is None:
        raise EvictionPolicyError("cannot read Redis maxmemory-policy (CONFIG GET refused and INFO memory has no maxmemory_policy)")
    return value.decode() if isinstance(value, bytes) else str(value)


async def check_eviction_policy(client: aioredis.Redis) -> None:
    """Raises EvictionPolicyError unless Redis runs with maxmemory-policy noeviction (S10)."""
    policy = await eviction_policy(client)
    if policy != "noeviction":
        raise EvictionPolicyError(
            f"Redis maxmemory-policy is {policy!r}: it may evict offline messages silently (S10). "
            "Set `maxmemory-policy noeviction` (and size maxmemory for the offline backlog) before starting imstack."
        )


class _RespProtocol(asyncio.Protocol):
    """One pipelined Redis connection: commands are packed by hiredis (C), written once per
    event-loop turn, and replies (parsed by hiredis) resolve the waiting futures in order."""

    def __init__(self, reply_timeout_s: float = 10.0) -> None:
        # Python 3.11's asyncio.get_running_loop() makes a getpid() system call; this runs
        # several times per command, so the loop is looked up once.
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future] = deque()
        self._out: list[bytes] = []
        self._write_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.lost = False
        # Watchdog: while replies are awaited, some must arrive every reply_timeout_s, else
        # the connection is closed and its callers fail (a hung Redis must not hang us).
        self._reply_timeout = reply_timeout_s
        self._progress = 0.0  # loop time of the last reply, or of the first wait after idling
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._watchdog = self._loop.call_later(self._reply_timeout / 4, self._check)

    def _check(self) -> None:
        loop = self._loop
        if self.lost:
            return
        if self._waiting and loop.time() - self._progress > self._reply_timeout:
            REDIS_TIMEOUTS.inc()
            self._fail(ConnectionError(f"Redis sent no reply for {self._reply_timeout:g} s"))
            self.lost = True
            self.transport.abort()
            return
        self._watchdog = loop.call_later(self._reply_timeout / 4, self._check)

    def data_received(self, data: bytes) -> None:
        self._progress = self._loop.time()
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(ConnectionError(f"Redis protocol error: {exc}"))
                self.transport.close()
                return
            if reply is False:
                return
            future = self._waiting.popleft()
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                future.set_exception(NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        REDIS_LOST.inc()
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._fail(ConnectionError(f"Redis connection lost: {exc or 'closed by the server'}"))

    def _fail(self, exc: Exception) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)

    def send(self, args: tuple, future: asyncio.Future) -> None:
        if self.lost:
            future.set_exception(ConnectionError("Redis connection lost"))
            return
        if not self._waiting:
            self._progress = self._loop.time()
        self._out.append(hiredis.pack_command(args))
        self._waiting.append(future)
        if not self._write_scheduled:
            self._write_scheduled = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        self._write_scheduled = False
        if self._out and not self.lost:
            REDIS_COMMANDS.inc(len(self._out))
            REDIS_WRITES.inc()
            data = b"".join(self._out)
            self._out.clear()
            self.transport.write(data)


def relay(reply: asyncio.Future, result: asyncio.Future, handle: Callable[[BaseException], bool]) -> None:
    """Passes a finished reply's outcome on to result, unless handle(error) takes the error
    over (returns True and settles result itself later: a retry, a redirect)."""
    if result.done():
        return
    if reply.cancelled():
        result.cancel()
        return
    exc = reply.exception()
    if exc is None:
        result.set_result(reply.result())
    elif not handle(exc):
        result.set_exception(exc)


def _no_handler(exc: BaseException) -> bool:
    return False


def _scatter(reply: asyncio.Future, items: list) -> None:
    """Hands each caller of a batch its own reply (or the batch's error)."""
    if reply.cancelled():
        for _, _, future in items:
            if not future.done():
                future.cancel()
        return
    exc = reply.exception()
    if exc is not None:
        for _, _, future in items:
            if not future.done():
                future.set_exception(exc)
        return
    for (_, _, future), value in zip(items, reply.result()):
        if future.done():
            continue
        if isinstance(value, hiredis.ReplyError):  # that item returned an error reply
            future.set_exception(ResponseError(str(value)))
        else:
            future.set_result(value)


# Runs a script once per item: ARGV = n, then (number of keys, number of args) per item, then
# every item's args; KEYS = every item's keys. Each item's KEYS/ARGV are rebuilt as tables for
# the original script body, which becomes a local function. Every script batched this way
# returns a value (never nil: a nil would cut the reply list short).
_BATCH_DRIVER = """
local n = tonumber(ARGV[1])
local out = {}
local ki, ai = 1, 2 + 2 * n
for j = 1, n do
  local nk, na = tonumber(ARGV[2 * j]), tonumber(ARGV[2 * j + 1])
  local k, a = {}, {}
  for x = 1, nk do k[x] = KEYS[ki + x - 1] end
  for x = 1, na do a[x] = ARGV[ai + x - 1] end
  ki, ai = ki + nk, ai + na
  out[j] = one(k, a)
end
return out
"""


def batched_source(source: str) -> str:
    """The Lua of a script that runs `source` once for each of many (keys, args) items."""
    return "local function one(KEYS, ARGV)\n" + source + "\nend\n" + _BATCH_DRIVER


async def await_all(*futures: asyncio.Future) -> list:
    """Results of futures that are already running, in order; every one is awaited even when
    an earlier one failed (no "exception never retrieved"), then the first error is raised.
    asyncio.gather would wrap each in a Task, which on the send path costs more than the call."""
    results, error = [], None
    for future in futures:
        try:
            results.append(await future)
        except Exception as exc:  # noqa: BLE001 - re-raised below
            results.append(None)
            error = error or exc
    if error is not None:
        raise error
    return results


class AutoPipeline:
    """The hot path to Redis: every store call of a process goes through here, pipelined.

    A dispatch node has hundreds of store calls in flight. Through redis-py each one costs a
    pool checkout, Python-side command packing and its own round trip; here commands from all
    concurrent callers are packed by hiredis and written together once per event-loop turn on
    a few long-lived connections, and replies come back in order. Measured on this 2-core
    machine: about 5x the throughput of direct redis-py calls. An idle caller still waits one
    round trip. `client` (redis-py) stays for everything else (scripts loading, admin, checks).

    Lua scripts go as EVALSHA; a NOSCRIPT reply (Redis restarted and lost its script cache)
    loads the script and retries that call. A lost connection fails the calls in flight on it
    (the caller decides whether to retry) and is replaced on the next call; so does a
    connection that gets no reply for `reply_timeout_s` while calls wait (a hung Redis).
    """

    def __init__(self, client: aioredis.Redis, url: str, *, connections: int = 2, reply_timeout_s: float = 10.0) -> None:
        self.client = client
        self._reply_timeout = reply_timeout_s
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r} (redis:// or rediss://)")
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 6379
        self._ssl = ssl.create_default_context() if parsed.scheme == "rediss" else None
        self._username = unquote(parsed.username) if parsed.username else None
        self._password = unquote(parsed.password) if parsed.password else None
        db = (parsed.path or "/").lstrip("/") or parse_qs(parsed.query).get("db", ["0"])[0]
        self._db = int(db or 0)
        self._conns: list[_RespProtocol | None] = [None] * connections
        self._connecting: list[asyncio.Lock] = [asyncio.Lock() for _ in range(connections)]
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first call (see _RespProtocol)
        self._batches: dict[str, tuple] = {}  # script sha -> (script, [(keys, args, future)]) of this turn
        self._batched: dict[str, object] = {}  # script sha -> its batched form (registered once)
        self._batch_scheduled = False

    async def _connection(self, slot: int) -> _RespProtocol:
        conn = self._conns[slot]
        if conn is not None and not conn.lost:
            return conn
        async with self._connecting[slot]:
            conn = self._conns[slot]
            if conn is not None and not conn.lost:
                return conn
            conn = await self._open(self._host, self._port)
            self._conns[slot] = conn
            return conn

    async def _open(self, host: str, port: int) -> _RespProtocol:
        """A new pipelined connection, authenticated and on the URL's database."""
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _RespProtocol(self._reply_timeout), host, port, ssl=self._ssl),
            timeout=10,
        )
        REDIS_CONNECTS.inc()
        hello = []
        if self._password is not None:
            hello.append(("AUTH", self._username, self._password) if self._username else ("AUTH", self._password))
        if self._db:
            hello.append(("SELECT", self._db))
        for args in hello:
            future = loop.create_future()
            conn.send(args, future)
            await asyncio.wait_for(future, timeout=10)
        return conn

    def call(self, *args) -> asyncio.Future:
        """Sends one command; the returned future holds its raw reply (bytes, int, list, None).

        A plain function returning a future (not a coroutine), so store methods can gather
        several commands without creating a Task for each."""
        slot = self._next
        self._next = (slot + 1) % len(self._conns)
        conn = self._conns[slot]
        if conn is None or conn.lost:
            self._loop = asyncio.get_running_loop()
            return self._loop.create_task(self._call_connecting(slot, args))
        future = self._loop.create_future()
        conn.send(args, future)
        return future

    async def _call_connecting(self, slot: int, args: tuple):
        conn = await self._connection(slot)
        future = asyncio.get_running_loop().create_future()
        conn.send(args, future)
        return await future

    def script(self, script, keys: list, args: list) -> asyncio.Future:
        """Runs a Lua script (EVALSHA); like call(), the command leaves before the caller awaits,
        so a store can send several scripts in one pipeline write. A NOSCRIPT reply loads the
        script and retries once."""
        first = self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        result = self._loop.create_future()

        def load_and_retry(exc: BaseException) -> bool:
            if not isinstance(exc, NoScriptError):
                return False
            self._loop.create_task(self._load_and_retry(script, keys, args, result))
            return True

        first.add_done_callback(lambda f: relay(f, result, load_and_retry))
        return result

    def batch(self, script, keys: list, args: list) -> asyncio.Future:
        """script(), but the calls of one script made in one event-loop turn go to Redis as one
        EVALSHA of its batched form (batched_source): on the send path the fixed cost of an
        EVALSHA (Redis sets up the script's Lua call, we pack and await one more command) was
        most of what a small script cost, paid three times per message. A batch runs as one
        script, atomically: an item that returns an error reply fails alone, one whose Redis
        command raises fails the whole batch (its callers retry)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        queued = self._batches.get(script.sha)
        if queued is None:
            queued = self._batches[script.sha] = (script, [])
        queued[1].append((keys, args, future))
        if not self._batch_scheduled:
            self._batch_scheduled = True
            loop.call_soon(self._flush_batches)
        return future

    def _flush_batches(self) -> None:
        self._batch_scheduled = False
        batches, self._batches = self._batches, {}
        for script, items in batches.values():
            if len(items) == 1:
                keys, args, future = items[0]
                reply = self.script(script, keys, args)
                reply.add_done_callback(lambda f, future=future: relay(f, future, _no_handler))
                continue
            batched = self._batched.get(script.sha)
            if batched is None:
                batched = self._batched[script.sha] = self.client.register_script(batched_source(script.script))
            all_keys: list = []
            counts: list = [len(items)]
            all_args: list = []
            for keys, args, _ in items:
                counts.append(len(keys))
                counts.append(len(args))
                all_keys += keys
                all_args += args
            reply = self.script(batched, all_keys, counts + all_args)
            reply.add_done_callback(lambda f, items=items: _scatter(f, items))

    async def _load_script(self, script, keys: list) -> None:
        await self.client.script_load(script.script)

    async def _load_and_retry(self, script, keys: list, args: list, result: asyncio.Future) -> None:
        try:
            await self._load_script(script, keys)
            value = await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            if not result.done():
                result.set_exception(exc)
            return
        if not result.done():
            result.set_result(value)

    async def close(self) -> None:
        for conn in self._conns:
            if conn is not None and conn.transport is not None:
                conn.transport.close()
        self._conns = [None] * len(self._conns)
