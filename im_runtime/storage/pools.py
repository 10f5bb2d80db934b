"""Driver pools (STYLE 6): the one place that opens Redis and MongoDB connections.

Stores receive a ready client and never build their own, so a process holds one Redis
connection pool and one MongoDB client however many stores it runs (no per-call setup).
redis-py picks the hiredis parser by itself when `hiredis` is installed.

`check_eviction_policy` is the S10 capacity guard: offline messages live in Redis until acked,
so a Redis that may evict keys would drop them silently. We refuse to start on one.
"""
from __future__ import annotations

import redis.asyncio as aioredis
from pymongo import AsyncMongoClient
from redis.exceptions import ResponseError


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
