"""Engines for the storage contract suite: the memory engine and the real Redis + FerretDB
cluster engine. The servers start once per session (tests/servers); each test opens its own
Stores on them and works on fresh random ids, so tests do not see each other's data."""
from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import pytest

from im_runtime.storage.cluster import cluster_stores
from im_runtime.storage.interfaces import OfflineStore, Stores
from im_runtime.storage.memory import MemoryOfflineStore, MemorySendSteps, memory_stores
from tests.servers.ferretdb import FerretDB, start_ferretdb
from tests.servers.redis import RedisCluster, RedisServer, start_redis, start_redis_cluster

MONGO_DB = "imstack_contract"


@dataclass
class ClusterServers:
    redis: RedisServer
    mongo: FerretDB


@pytest.fixture(scope="session")
def cluster_servers(tmp_path_factory) -> ClusterServers:
    base = tmp_path_factory.mktemp("cluster-servers")
    redis = start_redis(base / "redis")
    try:
        mongo = start_ferretdb(base / "ferretdb")
    except BaseException:
        redis.stop()
        raise
    yield ClusterServers(redis, mongo)
    mongo.stop()
    redis.stop()


@dataclass
class Engine:
    """One engine under test. `another()` opens a second handle on the same data, as a second
    node would (the memory engine has one world per process, so it returns the same stores)."""

    name: str
    stores: Stores
    another: Callable[..., Awaitable[Stores]]
    lose_fast_state: Callable[[], Awaitable[None]]  # Redis losing everything (FLUSHALL)
    opened: list[Stores] = field(default_factory=list)
    # an offline store on the same data with other timeline settings (retention_s, max_devices)
    timeline: Callable[..., Awaitable[OfflineStore]] | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> RedisCluster:
    """A real three-master Redis Cluster (the contract runs on it too: S10 spreads keys over one)."""
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(params=["memory", "cluster", "redis-cluster"])
async def engine(request) -> Engine:
    if request.param == "memory":
        stores = memory_stores()

        async def another(*, dedup_ttl_s: float | None = None, lease_s: float | None = None) -> Stores:
            if dedup_ttl_s is None and lease_s is None:
                return stores
            steps = MemorySendSteps(
                stores.sequences, stores.offline, stores.reads, stores.messages,
                ttl_s=dedup_ttl_s or 24 * 3600, lease_s=lease_s if lease_s is not None else 10.0,
            )
            return dataclasses.replace(stores, steps=steps)

        async def lose_fast_state() -> None:
            return None  # nothing volatile beyond the process itself

        async def timeline(**options) -> OfflineStore:
            return MemoryOfflineStore(**options)

        yield Engine("memory", stores, another, lose_fast_state, timeline=timeline)
        return

    servers: ClusterServers = request.getfixturevalue("cluster_servers")
    if request.param == "redis-cluster":
        redis_urls = [n.url for n in request.getfixturevalue("redis_cluster").nodes]
    else:
        redis_urls = [servers.redis.url]
    opened: list[Stores] = []

    async def another(*, dedup_ttl_s: float | None = None, lease_s: float | None = None) -> Stores:
        kwargs = {} if dedup_ttl_s is None else {"dedup_ttl_s": dedup_ttl_s}
        if lease_s is not None:
            kwargs["dedup_pending_ttl_s"] = lease_s
        s = await cluster_stores(redis_urls[0], servers.mongo.url, MONGO_DB, **kwargs)
        opened.append(s)
        return s

    stores = await another()

    async def timeline(*, retention_s: float = 7 * 24 * 3600, max_devices: int = 16) -> OfflineStore:
        s = await cluster_stores(
            redis_urls[0], servers.mongo.url, MONGO_DB, timeline_retention_s=retention_s, max_devices=max_devices
        )
        opened.append(s)
        return s.offline

    async def lose_fast_state() -> None:
        import redis.asyncio as aioredis

        for url in redis_urls:  # every master of a Redis Cluster
            client = aioredis.Redis.from_url(url)
            try:
                await client.flushall()
            finally:
                await client.aclose()

    yield Engine(request.param, stores, another, lose_fast_state, opened, timeline)
    for s in opened:
        await s.close()
