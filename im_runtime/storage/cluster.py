"""Cluster mode: assembles the Redis and MongoDB engines into one `Stores`.

Where each domain lives (docs/storage.md):
- Redis: sessions, offline queues, seq counters, de-dup claims, read positions (hot, shared,
  one round trip per call) and the group member cache.
- MongoDB: messages, id segments, seq high-water marks (the durable floor of the Redis
  counters) and groups (the truth behind the Redis cache), so nothing that cannot be rebuilt
  is lost when Redis loses writes.

`cluster_stores` checks the Redis eviction policy (S10) and creates the MongoDB indexes before
returning; `Stores.close()` closes both pools.
"""
from __future__ import annotations

import os

from im_runtime.storage.interfaces import Stores
from im_runtime.storage.mongo_store import (
    MongoGroupStore,
    MongoHiddenStore,
    MongoMessageStore,
    MongoSegmentStore,
    MongoSeqFloor,
    ensure_indexes,
)
from im_runtime.storage.pools import AutoPipeline, check_eviction_policy, mongo_client, redis_client
from im_runtime.storage.redis_cluster import ClusterAutoPipeline, is_cluster
from im_runtime.storage.redis_store import (
    RedisGroupCache,
    RedisOfflineStore,
    RedisReadStore,
    RedisSendSteps,
    RedisSequenceStore,
    RedisSessionStore,
)


class _Pools:
    """The two driver pools every store of one Stores shares."""

    def __init__(self, redis, mongo) -> None:
        self.redis = redis
        self.mongo = mongo
        self.pipe: AutoPipeline | None = None

    async def close(self) -> None:
        if self.pipe is not None:
            await self.pipe.close()
        await self.redis.aclose(close_connection_pool=True)
        await self.mongo.close()


class _ClosingSegments(MongoSegmentStore):
    """The last store Stores.close() visits closes the shared pools (once)."""

    def __init__(self, db, pools: _Pools) -> None:
        super().__init__(db)
        self._pools = pools

    async def close(self) -> None:
        await self._pools.close()


async def cluster_stores(
    redis_url: str,
    mongo_url: str,
    mongo_db: str,
    *,
    dedup_ttl_s: float = 24 * 3600,
    dedup_pending_ttl_s: float | None = None,
    seq_block: int = 100,
    redis_max_connections: int = 64,
    redis_reply_timeout_s: float = 10.0,
    mongo_max_pool_size: int = 32,
    timeline_retention_s: float = 7 * 24 * 3600,
    max_devices: int = 16,
) -> Stores:
    """Stores backed by Redis (`redis_url`) and MongoDB (`mongo_url`, database `mongo_db`).

    Raises pools.EvictionPolicyError if Redis may evict keys (S10)."""
    redis = redis_client(redis_url, max_connections=redis_max_connections)
    mongo = mongo_client(mongo_url, max_pool_size=mongo_max_pool_size)
    pools = _Pools(redis, mongo)
    try:
        # one pipelined path for every Redis store of this process; a Redis Cluster (found by
        # asking the URL's node) gets one that sends each key to the master of its slot
        if await is_cluster(redis):
            pipe: AutoPipeline = ClusterAutoPipeline(redis, redis_url, reply_timeout_s=redis_reply_timeout_s)
            pools.pipe = pipe
            for node in await pipe.node_clients():  # S10: no master may evict
                try:
                    await check_eviction_policy(node)
                finally:
                    await node.aclose()
        else:
            pipe = pools.pipe = AutoPipeline(redis, redis_url, reply_timeout_s=redis_reply_timeout_s)
            await check_eviction_policy(redis)
        db = mongo[mongo_db]
        await ensure_indexes(db)
    except BaseException:
        await pools.close()
        raise
    messages = MongoMessageStore(db)
    offline = RedisOfflineStore(pipe, retention_s=timeline_retention_s, max_devices=max_devices)
    sequences = RedisSequenceStore(pipe, MongoSeqFloor(db, messages), block=seq_block)
    lease_s = dedup_pending_ttl_s if dedup_pending_ttl_s is not None else min(dedup_ttl_s, 10.0)
    steps = RedisSendSteps(
        pipe, sequences, messages, offline, single_node=not isinstance(pipe, ClusterAutoPipeline), ttl_s=dedup_ttl_s, lease_s=lease_s,
    )
    return Stores(
        sessions=RedisSessionStore(pipe),
        offline=offline,
        sequences=sequences,
        messages=messages,
        groups=MongoGroupStore(db, RedisGroupCache(pipe)),
        reads=RedisReadStore(pipe),
        segments=_ClosingSegments(db, pools),
        hidden=MongoHiddenStore(db),
        steps=steps,
    )


async def cluster_stores_from_env(**options) -> Stores:
    """cluster_stores with the addresses of docs/contracts.md (IMSTACK_REDIS_URL,
    IMSTACK_MONGO_URL, IMSTACK_MONGO_DB) and their defaults, and the timeline settings
    (IMSTACK_TIMELINE_RETENTION, IMSTACK_MAX_DEVICES)."""
    options.setdefault("timeline_retention_s", float(os.environ.get("IMSTACK_TIMELINE_RETENTION", 7 * 24 * 3600)))
    options.setdefault("max_devices", int(os.environ.get("IMSTACK_MAX_DEVICES", 16)))
    return await cluster_stores(
        os.environ.get("IMSTACK_REDIS_URL", "redis://127.0.0.1:6379/0"),
        os.environ.get("IMSTACK_MONGO_URL", "mongodb://127.0.0.1:27017"),
        os.environ.get("IMSTACK_MONGO_DB", "imstack"),
        **options,
    )
