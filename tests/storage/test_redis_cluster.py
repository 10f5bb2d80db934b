"""The stores on a real three-master Redis Cluster, beyond the contract suite (which runs on it
as the `redis-cluster` engine): keys spread over the masters (S10), stale slot maps (MOVED), a
slot in migration (ASK), and script caches lost on the nodes (NOSCRIPT)."""
from __future__ import annotations

import time

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
    return pb.Message(message_id=message_id, conversation_id=conv, seq=message_id, server_time=int(time.time() * 1000), content=b"x")


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


async def test_a_failed_master_is_replaced_by_its_replica(tmp_path, cluster_servers) -> None:
    """kill -9 of a master: calls on its slots fail until its replica takes over (cluster
    node timeout), then land on the new master, found by reloading the slot map."""
    import asyncio
    import signal
    import time

    from tests.servers.redis import start_redis_cluster

    cluster = start_redis_cluster(tmp_path / "rc", masters=3, replicas=1, node_timeout_ms=3000)
    stores = await cluster_stores(cluster.url, cluster_servers.mongo.url, "imstack_contract")
    try:
        pipe = stores.offline._p
        conv = new_id("c")
        users = [new_id("u") for _ in range(30)]
        for uid in users:
            assert await stores.offline.add(uid, _msg(conv, 1)) == 1
        for node in pipe.masters():  # the replicas have every write before the kill
            assert await pipe.on_node(node, "WAIT", 1, 5000) == 1
        victim = pipe._slots[key_slot(RedisOfflineStore._keys(users[0])[0].encode())]
        on_victim = [u for u in users if pipe._slots[key_slot(RedisOfflineStore._keys(u)[0].encode())] == victim]
        next(n for n in cluster.nodes if n.port == victim[1]).process.send_signal(signal.SIGKILL)
        failures = 0
        deadline = time.monotonic() + 60
        while True:  # bounded: the replica must take over within the deadline
            try:
                assert await asyncio.wait_for(stores.offline.backlog(on_victim[0]), 5) == 1
                break
            except (ConnectionError, OSError, asyncio.TimeoutError, ResponseError):
                failures += 1
                assert time.monotonic() < deadline, "no replica took over the killed master's slots"
                await asyncio.sleep(0.2)
        assert failures > 0  # the kill was seen
        assert pipe._slots[key_slot(RedisOfflineStore._keys(on_victim[0])[0].encode())] != victim
        for uid in users:  # nothing lost, every slot served again
            assert await stores.offline.backlog(uid) == 1
            assert await stores.offline.add(uid, _msg(conv, 2)) == 2
    finally:
        await stores.close()
        cluster.stop()
