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
from collections import deque

from google.protobuf.message import DecodeError

from im_runtime.cluster.links import LinkServer, deliver_body
from im_runtime.cluster.probes import serve_probes
from im_runtime.cluster.zk import ZkRegistry
from im_runtime.config import Settings
from im_runtime.dispatch import offline_push
from im_runtime.dispatch.service import DispatchService
from im_runtime.idgen.segment import SegmentGenerator
from im_runtime.idgen.snowflake import SnowflakeGenerator
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import decode_body, encode_frame
from im_runtime.protocol.types import ErrorCode, RequestType
from im_runtime.route.grpc_client import RouteClient

log = logging.getLogger(__name__)


MAX_LINK_BUFFER = 64 << 20


class ClusterPusher:
    """Pushes to the access nodes holding the receivers' sessions, in call order.

    The service calls deliver() after the message is persisted and in every receiver's offline
    queue (S10). deliver() only queues the push, so no send waits on a route round trip; one
    worker takes the queue in batches, asks route once per batch (Lookup), and writes DELIVER
    frames in the order the pushes were queued (concurrent sends of one conversation may be
    queued out of seq order; clients order by seq, S12). If route cannot answer, the batch's
    pushes are dropped: the messages wait offline and the clients pull them (S15).

    The worker lingers LINGER_S after the first push of a batch: a Lookup costs route a few
    hundred microseconds of CPU however many uids it names, so at a few thousand sends/s
    batches of one or two made route lookups a large share of the cluster's CPU per message."""

    MAX_BATCH = 500
    MAX_QUEUED = 50_000
    LINGER_S = 0.004

    def __init__(self, route: RouteClient, links: LinkServer) -> None:
        self.route = route
        self.links = links
        # (uids, frame, skip_device, feature, message to announce to the offline ones)
        self._queue: deque[tuple[list[str], bytes, str | None, str, pb.Message | None]] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.lookups = 0
        self.dropped = 0
        # called with the uids that have no session for a message: the offline push webhook
        self.offline_sink = None

    async def deliver(
        self, uids: list[str], frame: bytes, *, skip_device: str | None = None, feature: str = "",
        offline: pb.Message | None = None,
    ) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        for _ in range(500):  # backpressure, bounded: a stuck route must not stall sends
            if len(self._queue) < self.MAX_QUEUED:
                break
            await asyncio.sleep(0.01)
        self._queue.append((uids, frame, skip_device, feature, offline))
        self._wake.set()

    async def _run(self) -> None:
        queue = self._queue
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(queue) < self.MAX_BATCH:
                await asyncio.sleep(self.LINGER_S)
            while queue:
                batch = [queue.popleft() for _ in range(min(self.MAX_BATCH, len(queue)))]
                try:
                    self.lookups += 1
                    nodes = await self.route.lookup({u for item in batch for u in item[0]})
                except Exception:
                    log.warning("route lookup failed; %d pushes wait offline", len(batch), exc_info=True)
                    continue
                for uids, frame, skip_device, feature, offline in batch:
                    self._write(uids, frame, nodes, skip_device, feature)
                    if offline is not None and self.offline_sink is not None:
                        away = [u for u in uids if u not in nodes]
                        if away:
                            self.offline_sink(away, offline)

    def _write(
        self, uids: list[str], frame: bytes, nodes: dict[str, list[str]], skip_device: str | None = None, feature: str = ""
    ) -> None:
        by_node: dict[str, list[str]] = {}
        for uid in uids:
            for node in nodes.get(uid, ()):
                by_node.setdefault(node, []).append(uid)
        for node, node_uids in by_node.items():
            link = self.links.links.get(node)
            if link is None or not link.is_open:
                continue  # S9: the message waits offline; the client pulls it on reconnect
            if link.buffered() > MAX_LINK_BUFFER:
                # STYLE 5: an access node that does not read must not grow our memory; the
                # message waits offline and its receivers pull it.
                self.dropped += 1
                continue
            link.write(encode_frame(RequestType.DELIVER, 0, deliver_body(node_uids, frame, skip_device, feature)))

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()


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
            s.redis_url, s.mongo_url, s.mongo_db, dedup_pending_ttl_s=self.dedup_pending_ttl_s,
            timeline_retention_s=s.timeline_retention_s, max_devices=s.max_devices,
        )
        if s.id_mode == "segment":
            ids = SegmentGenerator(self.stores.segments)
            self.worker_id = -1
        else:
            self.worker_id = await self.zk.worker_id()
            ids = SnowflakeGenerator(self.worker_id)
        self.route = RouteClient(s.route_grpc)
        self.links = LinkServer(self.handle)
        self.pusher = ClusterPusher(self.route, self.links)
        self.webhook = offline_push.from_settings(s)
        if self.webhook is not None:
            self.webhook.start()
            self.pusher.offline_sink = self.webhook.notify
        self.service = DispatchService(self.stores, ids, self.pusher, recall_window_s=s.recall_window_s)
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
        result = await self.service.handle(fwd.uid, fwd.request_type, message, device=fwd.device_id)
        if result is None:
            return None
        response_type, body = result
        return response_type, body.SerializeToString() if body is not None else b""

    def terminate(self) -> None:
        self.stopped.set()

    async def close(self) -> None:
        self._checker.cancel()
        self.pusher.close()
        if self.webhook is not None:
            await self.webhook.close()
        try:  # access nodes drop us before the links close
            await asyncio.wait_for(self.zk.unregister(self.path), 5)
        except Exception:
            log.warning("could not leave zookeeper", exc_info=True)
        await self.links.close()
        await self.zk.stop()
        await self.route.close()
        await self.stores.close()
        await self.probes.cleanup()
