"""S9 across a route restart: sessions left by an access node that died while no route was
watching ZooKeeper are dropped when route starts (after a grace period)."""
import asyncio
import time

from im_runtime.storage.cluster import cluster_stores


def test_route_drops_sessions_of_nodes_that_died_unseen(topology, monkeypatch):
    async def bind_ghost():
        stores = await cluster_stores(topology.servers.redis.url, topology.servers.mongo.url, topology.mongo_db)
        try:
            await stores.sessions.bind("ghost-user", "ghost-node", 7, "phone")
            assert "ghost-node" in await stores.sessions.nodes()
        finally:
            await stores.close()

    asyncio.run(bind_ghost())
    monkeypatch.setenv("IMSTACK_STALE_NODE_GRACE", "0.5")
    topology.start_route()
    topology.start_dispatch("dispatch-1")
    live = topology.start_access("access-1")  # a live node with a session must keep it

    async def live_session_and_wait():
        from im_runtime.client import ImClient

        client = ImClient("alive-user", topology.token("alive-user"), port=live.ports["tcp"])
        await client.connect()
        try:
            stores = await cluster_stores(topology.servers.redis.url, topology.servers.mongo.url, topology.mongo_db)
            try:
                deadline = time.monotonic() + 20
                while "ghost-node" in await stores.sessions.nodes():
                    assert time.monotonic() < deadline, "route never dropped the dead node's sessions"
                    await asyncio.sleep(0.2)
                assert await stores.sessions.lookup(["ghost-user"]) == {}
                assert await stores.sessions.lookup(["alive-user"]) == {"alive-user": ["access-1"]}
            finally:
                await stores.close()
        finally:
            await client.close()

    asyncio.run(live_session_and_wait())
