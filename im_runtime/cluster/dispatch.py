"""The dispatch role in cluster mode: DispatchService over the Redis/MongoDB stores, fed by
access links, pushing through a ClusterPusher.

- registration (S1): `<root>/dispatch/<node_id>` with the link address.
- snowflake worker id (S17): an ephemeral sequential znode under `<root>/workers` (mod 1024,
  unique among live nodes); `IMSTACK_ID_MODE=segment` uses Mongo id segments instead.
- pushes: route Lookup(uids) -> access node ids -> one DELIVER per access node on the link it
  opened to us. A user with no session needs nothing: the offline store already has the
  message (S10), and so does a user whose access node has no link to us right now.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

from google.protobuf.message import DecodeError

from im_runtime.cluster.links import LinkServer, deliver_body
from im_runtime.cluster.probes import serve_probes
from im_runtime.cluster.zk import ZkRegistry
from im_runtime.config import Settings
from im_runtime.dispatch.service import DispatchService
from im_runtime.idgen.segment import SegmentGenerator
from im_runtime.idgen.snowflake import SnowflakeGenerator
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import decode_body, encode_frame
from im_runtime.protocol.types import ErrorCode, RequestType
from im_runtime.route.grpc_client import RouteClient

log = logging.getLogger(__name__)


class LookupBatcher:
    """Coalesces the Lookup calls of one event-loop turn into one route gRPC call.

    Every message fans out through a Lookup; one call each would make route (and gRPC's
    per-call cost) the ceiling of the whole cluster. Callers still get exactly their uids."""

    MAX_BATCH = 2000

    def __init__(self, route: RouteClient) -> None:
        self.route = route
        self._waiting: list[tuple[list[str], asyncio.Future[dict[str, list[str]]]]] = []
        self._scheduled = False
        self.calls = 0

    def lookup(self, uids: list[str]) -> "asyncio.Future[dict[str, list[str]]]":
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, list[str]]] = loop.create_future()
        self._waiting.append((uids, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        batch: list[tuple[list[str], asyncio.Future]] = []
        size = 0
        for item in waiting:
            batch.append(item)
            size += len(item[0])
            if size >= self.MAX_BATCH:
                asyncio.ensure_future(self._call(batch))
                batch, size = [], 0
        if batch:
            asyncio.ensure_future(self._call(batch))

    async def _call(self, batch: list[tuple[list[str], asyncio.Future]]) -> None:
        self.calls += 1
        try:
            found = await self.route.lookup({u for uids, _ in batch for u in uids})
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for uids, future in batch:
            if not future.done():
                future.set_result({u: found[u] for u in uids if u in found})


class ClusterPusher:
    def __init__(self, route: RouteClient, links: LinkServer) -> None:
        self.route = route
        self.links = links
        self.batcher = LookupBatcher(route)

    async def deliver(self, uids: list[str], frame: bytes) -> None:
        nodes = await self.batcher.lookup(uids)
        by_node: dict[str, list[str]] = {}
        for uid, access_nodes in nodes.items():
            for node in access_nodes:
                by_node.setdefault(node, []).append(uid)
        for node, node_uids in by_node.items():
            link = self.links.links.get(node)
            if link is None or not link.is_open:
                continue  # S9: the message waits offline; the client pulls it on reconnect
            link.write(encode_frame(RequestType.DELIVER, 0, deliver_body(node_uids, frame)))


class DispatchRole:
    def __init__(self, settings: Settings, *, dedup_pending_ttl_s: float | None = None) -> None:
        self.settings = settings
        self.dedup_pending_ttl_s = dedup_pending_ttl_s or float(os.environ.get("IMSTACK_DEDUP_PENDING_TTL", "10"))
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        from im_runtime.storage.cluster import cluster_stores

        s = self.settings
        self.zk = ZkRegistry(s.zk, s.zk_root)
        await self.zk.start()
        # A send that dies with its dispatch node leaves a pending de-dup claim; it frees
        # itself after this many seconds so the client's retry can go through (S9).
        self.stores = await cluster_stores(
            s.redis_url, s.mongo_url, s.mongo_db, dedup_pending_ttl_s=self.dedup_pending_ttl_s
        )
        if s.id_mode == "segment":
            ids = SegmentGenerator(self.stores.segments)
            self.worker_id = -1
        else:
            self.worker_id = await self.zk.worker_id()
            ids = SnowflakeGenerator(self.worker_id)
        self.route = RouteClient(s.route_grpc)
        self.links = LinkServer(self.handle)
        self.service = DispatchService(self.stores, ids, ClusterPusher(self.route, self.links))
        await self.links.start(s.host, s.link_port)
        self.path = self.zk.path("dispatch", s.node_id)
        await self.zk.register(
            self.path,
            {"node_id": s.node_id, "host": s.advertise_host, "port": self.links.port, "started_at": int(time.time())},
        )
        self.stores_ok = True
        self._checker = asyncio.get_running_loop().create_task(self._check_stores())
        self.probes, self.metrics_port = await serve_probes(s.host, s.metrics_port, self._ready)
        log.info("dispatch node up", extra={"node_id": s.node_id, "link_port": self.links.port, "worker_id": self.worker_id})

    def _ready(self) -> dict[str, bool]:
        return {"zookeeper": self.zk.connected, "stores": self.stores_ok}

    async def _check_stores(self) -> None:
        """Readiness: one Redis and one MongoDB point read every 2 s, each bounded. (Not a
        seq or message query: on FerretDB those can scan the whole messages collection.)"""
        while True:
            try:
                await asyncio.wait_for(self.stores.offline.backlog("_ready"), 2)
                await asyncio.wait_for(self.stores.groups.members("_ready"), 2)
                self.stores_ok = True
            except Exception:
                if self.stores_ok:
                    log.warning("stores not answering", exc_info=True)
                self.stores_ok = False
            await asyncio.sleep(2)

    async def handle(self, fwd: pb.Forward) -> tuple[int, bytes] | None:
        try:
            message = decode_body(fwd.request_type, fwd.body)
        except (KeyError, DecodeError, ValueError):
            err = pb.Error(code=int(ErrorCode.BAD_BODY), message="body does not decode")
            return RequestType.ERROR, err.SerializeToString()
        result = await self.service.handle(fwd.uid, fwd.request_type, message)
        if result is None:
            return None
        response_type, body = result
        return response_type, body.SerializeToString() if body is not None else b""

    def terminate(self) -> None:
        self.stopped.set()

    async def close(self) -> None:
        self._checker.cancel()
        try:  # access nodes drop us before the links close
            await asyncio.wait_for(self.zk.unregister(self.path), 5)
        except Exception:
            log.warning("could not leave zookeeper", exc_info=True)
        await self.links.close()
        await self.zk.stop()
        await self.route.close()
        await self.stores.close()
        await self.probes.cleanup()
