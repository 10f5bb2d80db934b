"""The stores on a real three-master Redis Cluster, beyond the contract suite (which runs on it
as the `redis-cluster` engine): keys spread over the masters (S10), stale slot maps (MOVED), a
slot in migration (ASK), and script caches lost on the nodes (NOSCRIPT)."""
from __future__ import annotations

import pytest
from redis.crc import key_slot
from redis.exceptions import ResponseError

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.storage.cluster import cluster_stores
from im_runtime.storage.redis_cluster import ClusterAutoPipeline
from im_runtime.storage.redis_store import RedisOfflineStore
from tests.storage.conftest import new_id

pytestmark = pytest.mark.timeout(120)


def _msg(conv: str, message_id: int) -> pb.Message:
    return pb.Message(message_id=message_id, conversation_id=conv, seq=message_id, server_time=1_700_000_000_000, content=b"x")


async def test_keys_spread_over_masters_and_stale_maps_and_lost_scripts_recover(redis_cluster, cluster_servers) -> None:
    stores = await cluster_stores(redis_cluster.url, cluster_servers.mongo.url, "imstack_contract")
    try:
        pipe = stores.offline._p
        assert isinstance(pipe, ClusterAutoPipeline)
        assert len(pipe.masters()) == 3
        conv = new_id("c")
        users = [new_id("u") for _ in range(60)]
        for uid in users:
            assert await stores.offline.add(uid, _msg(conv, 1)) == 1
        owners = {}
        for uid in users:  # each user's queue is on the master of its slot; the others send there
            key = RedisOfflineStore._keys(uid)[0]
            slot = key_slot(key.encode())
            owner = owners[uid] = pipe._slots[slot]
            assert await pipe.on_node(owner, "EXISTS", key) == 1
            for node in pipe.masters():
                if node != owner:
                    with pytest.raises(ResponseError, match=f"^MOVED {slot} {owner[0]}:{owner[1]}$"):
                        await pipe.on_node(node, "EXISTS", key)
        assert set(owners.values()) == set(pipe.masters())  # S10: spread over the whole cluster

        # a stale map (every slot on one master): the others answer MOVED, calls still land
        pipe._slots = [pipe.masters()[0]] * len(pipe._slots)
        refreshes = pipe.refreshes
        for uid in users:
            assert await stores.offline.backlog(uid) == 1
        await pipe.refresh()
        assert pipe.refreshes > refreshes and len(pipe.masters()) == 3
        assert {pipe._slots[key_slot(RedisOfflineStore._keys(u)[0].encode())] for u in users} == set(owners.values())

        # every node lost its scripts (restarts): NOSCRIPT loads them on the node that asked
        for node in pipe.masters():
            assert await pipe.on_node(node, "SCRIPT", "FLUSH") == b"OK"
        for uid in users:
            assert await stores.offline.add(uid, _msg(conv, 2)) == 2
        assert await stores.offline.ack(users[0], [1, 2]) == 2
    finally:
        await stores.close()


async def test_a_slot_in_migration_is_followed_with_asking(redis_cluster, cluster_servers) -> None:
    stores = await cluster_stores(redis_cluster.url, cluster_servers.mongo.url, "imstack_contract")
    key = f"ask-{new_id('k')}"
    slot = key_slot(key.encode())
    pipe = stores.offline._p
    source = pipe._slots[slot]
    target = next(n for n in pipe.masters() if n != source)
    source_id = (await pipe.on_node(source, "CLUSTER", "MYID")).decode()
    target_id = (await pipe.on_node(target, "CLUSTER", "MYID")).decode()
    try:
        assert await pipe.on_node(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id) == b"OK"
        assert await pipe.on_node(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id) == b"OK"
        # a new key of a migrating slot: the source answers ASK, the call goes on to the target
        assert await pipe.call("SET", key, "v") == b"OK"
        assert await pipe.call("GET", key) == b"v"
        with pytest.raises(ResponseError, match="^ASK "):
            await pipe.on_node(source, "GET", key)  # not on the source
        assert await pipe.on_node(target, "ASKING") == b"OK"
        assert await pipe.on_node(target, "GET", key) == b"v"  # on the target
        assert pipe._slots[slot] == source  # ASK moves one call, not the slot
    finally:
        await pipe.on_node(target, "ASKING")
        await pipe.on_node(target, "DEL", key)
        for node in (source, target):
            await pipe.on_node(node, "CLUSTER", "SETSLOT", slot, "STABLE")
        await stores.close()
