"""The dispatch role in cluster mode: DispatchService over the Redis/MongoDB stores, fed by
access links, pushing through a ClusterPusher.

- registration (S1): `<root>/dispatch/<node_id>` with the link address.
- snowflake worker id (S17): an ephemeral sequential znode under `<root>/workers` (mod 1024,
  unique among live nodes); `IMSTACK_ID_MODE=segment` uses Mongo id segments instead.
- pushes: the receivers' access nodes from the SessionCache (cluster/presence.py; a miss reads
  the session store in Redis, no route round trip), then one DELIVER per access node on the
  link it opened to us. A user with no session needs nothing: the offline store already has
  the message (S10), and so does a user whose access node has no link to us right now.
- the session table's epoch (SessionStore.epoch) is checked every second: when Redis lost it,
  every access node is told (REBIND) to bind its connections again.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable

from google.protobuf.message import DecodeError

from im_runtime.cluster.links import LinkServer, ServerLink, deliver_body
from im_runtime.cluster.presence import SessionCache
from im_runtime.cluster.probes import serve_probes
from im_runtime.cluster.zk import ZkRegistry
from im_runtime.config import Settings
from im_runtime.dispatch import offline_push
from im_runtime.dispatch.service import DispatchService
from im_runtime.idgen.segment import SegmentGenerator
from im_runtime.idgen.snowflake import SnowflakeGenerator
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import decode_body, encode_frame, encode_message
from im_runtime.protocol.types import ErrorCode, RequestType
from im_runtime.storage.interfaces import SessionStore

log = logging.getLogger(__name__)

_Push = tuple[bytes, "str | None", str, "pb.Message | None"]


MAX_LINK_BUFFER = 64 << 20
EPOCH_CHECK_S = 1.0


class ClusterPusher:
    """Pushes to the access nodes holding the receivers' sessions.

    The service calls deliver() after the message is persisted and in every receiver's offline
    queue (S10). A receiver whose access nodes the cache knows is pushed to at once (the
    DELIVER frames leave with this loop turn's link writes); the others wait while one worker
    reads their sessions from the store, many users per read, and are pushed to in the order
    their pushes came (a user whose lookup is pending queues behind it, so one user's pushes
    keep their order; concurrent sends of one conversation may be queued out of seq order,
    clients order by seq, S12). If the store cannot answer, those pushes are dropped: the
    messages wait offline and the clients pull them (S15)."""

    MAX_BATCH = 1000
    MAX_WAITING = 50_000  # users waiting for a lookup; past it pushes are dropped (they wait offline)
    UNREACHED_S = 10.0  # how long a push that found no session is remembered (see renotify)
    MAX_UNREACHED = 10_000

    def __init__(self, sessions: SessionStore, links: LinkServer, cache: SessionCache) -> None:
        self.sessions = sessions
        self.links = links
        self.cache = cache
        # uid -> the pushes waiting for its lookup, in order: (frame, skip_device, feature,
        # the message to announce if the user has no session)
        self._waiting: dict[str, list[_Push]] = {}
        self._unasked: list[str] = []
        self._worker: asyncio.Task[None] | None = None
        self._unreached: dict[str, float] = {}  # uid -> when a push to it last found no session
        self.lookups = 0
        self.dropped = 0
        # called with the uids that have no session for a message: the offline push webhook
        self.offline_sink: Callable[[list[str], pb.Message], None] | None = None

    async def deliver(
        self, uids: list[str], frame: bytes, *, skip_device: str | None = None, feature: str = "",
        offline: pb.Message | None = None,
    ) -> None:
        """skip_device: not to that device's connections (sender sync); feature: only to
        connections that listed it; offline: announce this message to the uids that have no
        session (the offline push webhook)."""
        cache, waiting = self.cache, self._waiting
        push = (frame, skip_device, feature, offline)
        by_node: dict[str, list[str]] | None = None
        away: list[str] | None = None
        for uid in uids:
            queued = waiting.get(uid)
            if queued is not None:
                queued.append(push)
                continue
            nodes = cache.get(uid)
            if nodes is None:
                if len(waiting) >= self.MAX_WAITING:
                    self.dropped += 1
                    continue
                waiting[uid] = [push]
                self._unasked.append(uid)
                continue
            if not nodes and offline is not None:
                if away is None:
                    away = []
                away.append(uid)
            for node in nodes:
                if by_node is None:
                    by_node = {}
                by_node.setdefault(node, []).append(uid)
        if by_node:
            for node, node_uids in by_node.items():
                self._write(node, node_uids, frame, skip_device, feature)
        if away and self.offline_sink is not None:
            self.offline_sink(away, offline)  # type: ignore[arg-type]
        if self._unasked and (self._worker is None or self._worker.done()):
            self._worker = asyncio.get_running_loop().create_task(self._look_up())

    async def _look_up(self) -> None:
        while self._unasked:
            batch, self._unasked = self._unasked[: self.MAX_BATCH], self._unasked[self.MAX_BATCH :]
            started = self.cache.lookup_started()
            found: dict[str, list[str]] = {}
            try:
                self.lookups += 1
                found = await self.sessions.lookup(batch)
                ok = True
            except Exception:
                log.warning("session lookup failed; %d users' pushes wait offline", len(batch), exc_info=True)
                ok = False
            self.cache.lookup_done(started, batch if ok else (), found)
            groups: dict[tuple[int, str], tuple[_Push, list[str]]] = {}
            away: dict[int, tuple[pb.Message, list[str]]] = {}
            now = time.monotonic()
            for uid in batch:
                pushes = self._waiting.pop(uid, ())
                nodes = found.get(uid, ())
                if ok and not nodes:
                    if len(self._unreached) < self.MAX_UNREACHED:
                        self._unreached[uid] = now
                    for push in pushes:
                        if push[3] is not None:
                            away.setdefault(id(push), (push[3], []))[1].append(uid)
                for node in nodes:
                    for push in pushes:
                        group = groups.get((id(push), node))
                        if group is None:
                            groups[(id(push), node)] = (push, [uid])
                        else:
                            group[1].append(uid)
            for (_, node), ((frame, skip_device, feature, _), node_uids) in groups.items():
                self._write(node, node_uids, frame, skip_device, feature)
            if self.offline_sink is not None:
                for message, away_uids in away.values():
                    self.offline_sink(away_uids, message)

    async def renotify(self) -> None:
        """After the session table was lost and bound again: users whose pushes found no
        session in the last UNREACHED_S seconds (offline users, and online ones the lost table
        did not know) get a PULL_NOTIFY if they have a session now, so they pull what waited
        offline. (An empty conversation id: pull the offline queue.)"""
        horizon = time.monotonic() - self.UNREACHED_S
        uids = [uid for uid, at in self._unreached.items() if at >= horizon]
        self._unreached.clear()
        if uids:
            await self.deliver(uids, encode_message(RequestType.PULL_NOTIFY, 0, pb.PullNotify()))

    def _write(self, node: str, uids: list[str], frame: bytes, skip_device: str | None = None, feature: str = "") -> None:
        link = self.links.links.get(node)
        if link is None or not link.is_open:
            return  # S9: the message waits offline; the client pulls it on reconnect
        if link.buffered() > MAX_LINK_BUFFER:
            # STYLE 5: an access node that does not read must not grow our memory; the
            # message waits offline and its receivers pull it.
            self.dropped += 1
            return
        link.write(encode_frame(RequestType.DELIVER, 0, deliver_body(uids, frame, skip_device, feature)))

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
        self.cache = SessionCache()
        self.links = LinkServer(self.handle, on_registered=self._linked, on_sessions_changed=self._sessions_changed)
        self.pusher = ClusterPusher(self.stores.sessions, self.links, self.cache)
        self.webhook = offline_push.from_settings(s)
        if self.webhook is not None:
            self.webhook.start()
            self.pusher.offline_sink = self.webhook.notify
        self.service = DispatchService(self.stores, ids, self.pusher, recall_window_s=s.recall_window_s)
        self.epoch = await self.stores.sessions.epoch()
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

    def _linked(self, link: ServerLink) -> None:
        # The access node may have seen sessions change while it was not linked to us: its
        # SESSION_CHANGED frames of that time never came (cluster/presence.py).
        self.cache.clear()

    def _sessions_changed(self, uids: list[str], everything: bool) -> None:
        if everything:  # an access node bound its connections again (REBIND)
            self.cache.clear()
            asyncio.get_running_loop().create_task(self.pusher.renotify())
        else:
            self.cache.invalidate(uids)

    async def _check_stores(self) -> None:
        """Readiness: one Redis and one MongoDB point read, each bounded, every 2 s (not a seq
        or message query: on FerretDB those can scan the whole messages collection); and the
        session table's epoch every second: when Redis lost the table (restart without
        persistence, FLUSHALL) the cache is dropped and every access node rebinds."""
        checks = 0
        while True:
            try:
                epoch = await asyncio.wait_for(self.stores.sessions.epoch(), 2)
                if epoch != self.epoch:
                    log.warning("the session table was lost: access nodes rebind", extra={"epoch": epoch})
                    self.epoch = epoch
                    self.cache.clear()
                    self.links.broadcast(encode_message(RequestType.REBIND, 0, pb.Rebind(epoch=epoch)))
                if checks % 2 == 0:
                    await asyncio.wait_for(self.stores.offline.backlog("_ready"), 2)
                    await asyncio.wait_for(self.stores.groups.members("_ready"), 2)
                self.stores_ok = True
            except Exception:
                if self.stores_ok:
                    log.warning("stores not answering", exc_info=True)
                self.stores_ok = False
            checks += 1
            await asyncio.sleep(EPOCH_CHECK_S)

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
        await self.stores.close()
        await self.probes.cleanup()
