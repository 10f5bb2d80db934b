"""The route role in cluster mode: HTTP API (ipList from ZooKeeper), gRPC Route service,
session table in Redis.

- ipList (S4, S16): the access registrations in ZooKeeper with their published connection
  counts, least loaded first, never a draining node, one with a drain znode, or one that
  AccessLiveness finds dead (cluster/liveness.py: a killed node leaves ipList at once, not
  when its ZooKeeper session expires). Read at most once a second (cached; a liveness change
  drops the cache), so a burst of ipList calls costs ZooKeeper nothing.
- S9: when an access node's ephemeral znode disappears (the process died and its ZooKeeper
  session expired), its sessions are dropped at once, so pushes stop going to it.
"""
from __future__ import annotations

import asyncio
import os
import logging
import time

from im_runtime.cluster.liveness import AccessLiveness
from im_runtime.cluster.zk import ZkRegistry
from im_runtime.config import Settings
from im_runtime.route.grpc_server import start_grpc
from im_runtime.route.http import HttpApi, serve
from im_runtime.route.iplist import AccessEndpoint
from im_runtime.route.service import RouteService
from im_runtime.route.tokens import TokenSigner

log = logging.getLogger(__name__)

CACHE_S = 1.0


class ZkIpList:
    def __init__(self, zk: ZkRegistry, liveness: AccessLiveness | None = None) -> None:
        self.zk = zk
        self.liveness = liveness
        self._cache: tuple[float, list[AccessEndpoint]] = (0.0, [])

    def invalidate(self) -> None:
        """A node went down or up: the next answer reads ZooKeeper again."""
        self._cache = (0.0, [])

    async def endpoints(self) -> list[AccessEndpoint]:
        at, cached = self._cache
        if time.monotonic() - at < CACHE_S:
            return cached
        drains = set((await self.zk.children_data(self.zk.path("drain"))).keys())
        out = []
        for kind in ("tcp", "ws"):
            for nid, d in (await self.zk.children_data(self.zk.path("access", kind))).items():
                try:
                    out.append(
                        AccessEndpoint(
                            node_id=nid, kind=kind, host=str(d["host"]), port=int(d["port"]),
                            connections=int(d.get("connections", 0)),
                            draining=bool(d.get("draining")) or nid in drains
                            or (self.liveness is not None and not self.liveness.alive(nid)),
                        )
                    )
                except (KeyError, TypeError, ValueError):
                    continue
        self._cache = (time.monotonic(), out)
        return out


def _probe_address(registration: dict) -> tuple[str, int] | None:
    try:
        port = int(registration["probe_port"])
        return str(registration["host"]), port
    except (KeyError, TypeError, ValueError):
        return None  # an access node that publishes no probe port: not probed


class RouteRole:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopped = asyncio.Event()
        self._access: dict[str, set[str]] = {"tcp": set(), "ws": set()}
        self._registered: dict[str, dict[str, tuple[str, int] | None]] = {"tcp": {}, "ws": {}}
        self.stale_grace_s = float(os.environ.get("IMSTACK_STALE_NODE_GRACE", "10"))
        self._reconciler: asyncio.Future | None = None

    async def start(self) -> None:
        from im_runtime.storage.cluster import cluster_stores

        s = self.settings
        if not s.token_key or not s.admin_key:
            raise SystemExit("route needs IMSTACK_TOKEN_KEY (shared by every route replica) and IMSTACK_ADMIN_KEY")
        self.zk = ZkRegistry(s.zk, s.zk_root)
        await self.zk.start()
        self.stores = await cluster_stores(
            s.redis_url, s.mongo_url, s.mongo_db, timeline_retention_s=s.timeline_retention_s, max_devices=s.max_devices
        )
        self.signer = TokenSigner(s.token_key.encode())
        self.route = RouteService(self.signer, self.stores.sessions, self.stores.offline)
        self.grpc, self.grpc_port = await start_grpc(self.route, s.host, s.grpc_port, ready=lambda: self.zk.connected)
        self.ips = ZkIpList(self.zk)
        self.liveness = AccessLiveness(on_change=self.ips.invalidate)
        self.ips.liveness = self.liveness
        api = HttpApi(signer=self.signer, admin_key=s.admin_key, stores=self.stores, ips=self.ips, ready=self._ready)
        self.http = await serve(api.app(), s.host, s.http_port)
        self.http_port = self.http.addresses[0][1] if self.http.addresses else s.http_port
        for kind in ("tcp", "ws"):
            self.zk.watch_children(self.zk.path("access", kind), lambda data, kind=kind: self._access_changed(kind, data))
        self._reconciler = asyncio.ensure_future(self._drop_unseen_dead_nodes())
        log.info("route up", extra={"http_port": self.http_port, "grpc_port": self.grpc_port})

    async def _live_access_nodes(self) -> set[str]:
        live: set[str] = set()
        for kind in ("tcp", "ws"):
            live |= set((await self.zk.children_data(self.zk.path("access", kind))).keys())
        return live

    async def _drop_unseen_dead_nodes(self) -> None:
        """S9 across a route restart: an access node that died while no route was watching
        left its sessions behind. Nodes with sessions but no registration are dropped when
        they are still unregistered after a grace period (a starting node registers a moment
        after it starts accepting clients)."""
        try:
            candidates = await self.stores.sessions.nodes() - await self._live_access_nodes()
            if not candidates:
                return
            await asyncio.sleep(self.stale_grace_s)
            for node in candidates - await self._live_access_nodes():
                removed = await self.route.drop_node(node)
                log.info("access node died unseen; sessions dropped", extra={"node_id": node, "sessions": removed})
        except Exception:
            log.warning("could not reconcile sessions with ZooKeeper", exc_info=True)

    async def _ready(self) -> bool:
        return self.zk.connected

    async def _access_changed(self, kind: str, data: dict[str, dict]) -> None:
        now = set(data)
        gone = self._access[kind] - now
        self._access[kind] = now
        self._registered[kind] = {nid: _probe_address(d) for nid, d in data.items()}
        self.liveness.track({nid: a for registered in self._registered.values() for nid, a in registered.items()})
        for node in gone:
            removed = await self.route.drop_node(node)  # S9: its sessions end at once
            log.info("access node gone; sessions dropped", extra={"node_id": node, "sessions": removed})

    def terminate(self) -> None:
        self.stopped.set()

    async def close(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
        await self.liveness.close()
        await self.grpc.stop(grace=2)
        await self.http.cleanup()
        await self.zk.stop()
        await self.stores.close()
