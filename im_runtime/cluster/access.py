"""The access role in cluster mode: an AccessNode whose upstream is remote.

- authenticate / unbind: route over gRPC (S5), with this node's id and the connection id.
- every other request: FORWARD over the link to the dispatch node the hash ring picks: group
  sends by group id (S11: one node per group), single sends by conversation id (S12: one
  conversation keeps its order), everything else by uid.
- links (S2, S3): one per dispatch node in ZooKeeper; a node leaves the ring the moment its
  link drops (S9), not when ZooKeeper notices; it comes back when the link is re-made.
- registration (S4): `<root>/access/<kind>/<node_id>` with the connection count every 3 s.
- drain: the drain znode of this node, or SIGTERM, stops accepting, leaves ipList
  (draining=true) and KICKs clients at a bounded rate towards the least-loaded other node.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable, Iterable

from google.protobuf.message import Message as ProtoMessage
from prometheus_client import Gauge

from im_runtime import metrics
from im_runtime.access.node import AccessNode, Response, RouteSessions
from im_runtime.cluster.links import HEARTBEAT_S, IDLE_S, ClientLink, LinkClosed
from im_runtime.cluster.probes import serve_probes
from im_runtime.cluster.ring import HashRing
from im_runtime.cluster.zk import ZkRegistry
from im_runtime.config import Settings
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.types import ErrorCode, RequestType, single_conversation
from im_runtime.route.grpc_client import RouteClient

log = logging.getLogger(__name__)

PUBLISH_S = 3.0
FORWARD_TIMEOUT_S = 10.0
LINKS = Gauge("imstack_dispatch_links", "Live links from this access node to dispatch nodes", registry=metrics.REGISTRY)


def _unavailable(text: str) -> Response:
    return RequestType.ERROR, pb.Error(code=int(ErrorCode.UNAVAILABLE), message=text)


def route_key(uid: str, request_type: int, message: ProtoMessage | None) -> str:
    """Which key picks the dispatch node for a request (hash ring)."""
    if request_type == RequestType.SEND_REQ and isinstance(message, pb.SendRequest):
        if message.type == pb.GROUP:
            return f"g:{message.to}"
        if message.type == pb.SINGLE and message.to and ":" not in message.to:
            return single_conversation(uid, message.to)
    return f"u:{uid}"


class DispatchLinks:
    """Links to every dispatch node in ZooKeeper, and the ring of those that are linked."""

    def __init__(self, node: AccessNode, *, node_id: str, host: str, port: int, kind: str) -> None:
        self.node = node
        self.register = pb.LinkRegister(node_id=node_id, host=host, port=port, kind=kind).SerializeToString()
        self.ring = HashRing()
        self.links: dict[str, ClientLink] = {}
        self._wanted: dict[str, tuple[str, int]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.seen_dispatch = asyncio.Event()
        self.on_rebind: Callable[[str], object] | None = None  # REBIND from a dispatch node
        self._changed: set[str] = set()
        self._changed_all = False
        self._flush_scheduled = False

    def sessions_changed(self, uids: Iterable[str] = (), *, everything: bool = False) -> None:
        """Tells every dispatch node these users' sessions changed here (SESSION_CHANGED,
        cluster/presence.py), once per loop turn for all the users of that turn."""
        self._changed.update(uids)
        self._changed_all |= everything
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_changed)

    def _flush_changed(self) -> None:
        self._flush_scheduled = False
        uids, self._changed = sorted(self._changed), set()
        everything, self._changed_all = self._changed_all, False
        body = pb.SessionChanged(uids=[] if everything else uids, all=everything).SerializeToString()
        for link in list(self.links.values()):
            try:
                link.send(RequestType.SESSION_CHANGED, body)
            except LinkClosed:
                pass  # a link that (re)registers has the dispatch node drop its whole cache

    def update(self, dispatch: dict[str, dict]) -> None:
        """ZooKeeper's current dispatch children (called on the loop)."""
        wanted = {nid: (str(d.get("host", "127.0.0.1")), int(d.get("port", 9100))) for nid, d in dispatch.items()}
        if wanted:
            self.seen_dispatch.set()
        for nid in list(self._wanted):
            if nid not in wanted or wanted[nid] != self._wanted[nid]:
                self._drop(nid)
        for nid, addr in wanted.items():
            if nid not in self._tasks:
                self._wanted[nid] = addr
                self._tasks[nid] = asyncio.get_running_loop().create_task(self._maintain(nid, addr))

    def _drop(self, nid: str) -> None:
        self._wanted.pop(nid, None)
        task = self._tasks.pop(nid, None)
        if task is not None:
            task.cancel()
        self.ring.remove(nid)
        link = self.links.pop(nid, None)
        if link is not None:
            link.abort()
        LINKS.set(len(self.links))

    async def _maintain(self, nid: str, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.1
        while nid in self._wanted:
            link: ClientLink | None = None
            try:
                _, link = await asyncio.wait_for(
                    loop.create_connection(lambda: ClientLink(nid, self.node.deliver_now, self._rebind), *addr), 5
                )
                await link.call(RequestType.LINK_REGISTER, self.register, timeout=5)
                self.links[nid] = link
                self.ring.add(nid)
                LINKS.set(len(self.links))
                log.info("linked to dispatch", extra={"dispatch": nid, "host": addr[0], "port": addr[1]})
                delay = 0.1
                await self._keepalive(link)
            except asyncio.CancelledError:
                if link is not None:
                    link.abort()
                raise
            except (OSError, asyncio.TimeoutError, LinkClosed) as exc:
                log.warning("dispatch link failed", extra={"dispatch": nid, "error": repr(exc)})
            finally:
                # S9: the node leaves the ring at once; its in-flight requests already failed.
                if link is not None and self.links.get(nid) is link:
                    del self.links[nid]
                    self.ring.remove(nid)
                    LINKS.set(len(self.links))
                if link is not None:
                    link.abort()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _keepalive(self, link: ClientLink) -> None:
        """S3: heartbeat every 5 s; a link that heard nothing for 30 s is closed."""
        loop = asyncio.get_running_loop()
        while link.is_open:
            try:
                await asyncio.wait_for(asyncio.shield(link.closed), HEARTBEAT_S)
                return
            except asyncio.TimeoutError:
                pass
            if loop.time() - link.last_seen > IDLE_S:
                log.warning("dispatch link idle; closing", extra={"dispatch": link.dispatch_id})
                return
            try:
                link.send(RequestType.LINK_HEARTBEAT, b"")
            except LinkClosed:
                return

    def _rebind(self, epoch: str) -> None:
        if self.on_rebind is not None:
            self.on_rebind(epoch)

    def complete(self) -> bool:
        """Linked to every dispatch node ZooKeeper lists (and at least one): until then this
        node's ring may pick a different owner for a group than the other access nodes do."""
        return bool(self.links) and set(self.links) >= set(self._wanted)

    def pick(self, key: str) -> ClientLink | None:
        nid = self.ring.owner(key)
        return self.links.get(nid) if nid is not None else None

    async def close(self) -> None:
        for nid in list(self._tasks):
            self._drop(nid)


class RemoteUpstream(RouteSessions):
    def __init__(self, route: RouteClient, links: DispatchLinks, node_id: str) -> None:
        super().__init__(route, node_id)
        self.links = links

    async def authenticate(self, req: pb.AuthRequest, *, conn_id: int) -> pb.AuthResponse:
        resp = await super().authenticate(req, conn_id=conn_id)
        if resp.code == 0:  # bound in the session table: dispatch nodes must look it up again
            self.links.sessions_changed((req.uid,))
        return resp

    async def disconnected(self, uid: str, conn_id: int) -> None:
        try:
            await super().disconnected(uid, conn_id)
        finally:
            self.links.sessions_changed((uid,))

    async def request(
        self, uid: str, device_id: str, conn_id: int, request_type: int, message: ProtoMessage | None, body: bytes
    ) -> Response | None:
        link = self.links.pick(route_key(uid, request_type, message))
        if link is None:
            return _unavailable("no dispatch node available, retry")
        fwd = pb.Forward(uid=uid, device_id=device_id, conn_id=conn_id, request_type=request_type, body=body)
        if request_type == RequestType.PUSH_ACK:  # no answer expected
            try:
                link.send(RequestType.FORWARD, fwd.SerializeToString())
            except LinkClosed:
                pass  # unacked messages stay offline and come back on the next pull
            return None
        try:
            resp = await link.forward(fwd, timeout=FORWARD_TIMEOUT_S)
        except (LinkClosed, asyncio.TimeoutError):
            return _unavailable("dispatch node unavailable, retry")
        if resp.request_type == 0:
            return None
        return resp.request_type, resp.body  # already serialized: session.py sends it as is


class AccessRole:
    def __init__(self, settings: Settings, *, kind: str = "tcp", drain_rate: float = 200.0, grace_s: float = 25.0) -> None:
        self.settings = settings
        self.kind = kind
        self.drain_rate = drain_rate
        self.grace_s = grace_s
        self.stopped = asyncio.Event()
        self._peers: dict[str, dict] = {}
        self._draining_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        self.zk = ZkRegistry(s.zk, s.zk_root)
        await self.zk.start()
        self.route = RouteClient(s.route_grpc)
        self.node = AccessNode(
            None,  # type: ignore[arg-type]  # set below
            node_id=s.node_id,
            idle_timeout=s.idle_timeout,
            max_write_buffer=s.max_write_buffer,
            rate_per_s=s.rate_per_s,
            rate_burst=s.rate_per_s * 2,
        )
        from im_runtime.access.tcp import server_ssl_context

        ssl_ctx = server_ssl_context(s.tls_cert, s.tls_key) if s.tls else None
        if self.kind == "ws":
            try:
                from im_runtime.access.ws import WsGateway
            except ImportError as exc:
                raise SystemExit(f"the WebSocket gateway is not in this build: {exc}") from exc
            origins = [o for o in s.ws_origins.split(",") if o] or None
            self.gateway = WsGateway(self.node, s.host, s.ws_port, ssl=ssl_ctx, origins=origins, max_body=s.max_body)
        else:
            from im_runtime.access.tcp import TcpGateway

            self.gateway = TcpGateway(self.node, s.host, s.tcp_port, ssl_context=ssl_ctx, max_body=s.max_body)
        self.links = DispatchLinks(self.node, node_id=s.node_id, host=s.advertise_host, port=0, kind=self.kind)
        self.node.upstream = RemoteUpstream(self.route, self.links, s.node_id)
        self.links.on_rebind = self._rebind
        self._rebound: str | None = None
        self._rebinding: asyncio.Task[None] | None = None
        self.node.reconnect_target = self._reconnect_target
        self.node.start()
        self.zk.watch_children(self.zk.path("dispatch"), self.links.update)
        await self.gateway.start()
        # the probe port before the registration: route probes it (cluster/liveness.py)
        self.probes, self.metrics_port = await serve_probes(s.host, s.metrics_port, self._ready)
        self.path = self.zk.path("access", self.kind, s.node_id)
        await self.zk.register(self.path, self._registration())
        self.zk.watch_data(self.zk.path("drain", s.node_id), self._drain_requested)
        self.zk.on_recovered = self._session_recovered
        self._publisher = asyncio.get_running_loop().create_task(self._publish())
        log.info("access node up", extra={"node_id": s.node_id, "kind": self.kind, "port": self.gateway.port})

    def _ready(self) -> dict[str, bool]:
        return {"zookeeper": self.zk.connected, "links": self.links.complete(), "accepting": not self.node.draining}

    def _registration(self) -> dict:
        s = self.settings
        return {
            "node_id": s.node_id,
            "host": s.advertise_host,
            "port": self.gateway.port,
            "probe_port": self.metrics_port,
            "kind": self.kind,
            "connections": self.node.count(self.kind),
            "draining": self.node.draining,
            "pod": os.environ.get("POD_NAME", s.node_id),
            "updated_at": int(time.time()),
        }

    async def _publish(self) -> None:
        """S4: the connection count in ZooKeeper every 3 s (and the peers, for drain targets)."""
        while True:
            try:
                await asyncio.wait_for(self.zk.update(self.path, self._registration()), 10)
                self._peers = await asyncio.wait_for(self.zk.children_data(self.zk.path("access", self.kind)), 10)
            except Exception:
                log.warning("zookeeper publish failed", exc_info=True)
            await asyncio.sleep(PUBLISH_S)

    def _reconnect_target(self, kind: str) -> tuple[str, int] | None:
        peers = [
            d for nid, d in self._peers.items()
            if nid != self.settings.node_id and not d.get("draining") and d.get("kind", kind) == kind
        ]
        if not peers:
            return None
        best = min(peers, key=lambda d: (int(d.get("connections", 0)), str(d.get("node_id", ""))))
        return str(best["host"]), int(best["port"])

    async def _session_recovered(self) -> None:
        """Our ZooKeeper session expired, so route dropped our sessions (S9 treats us as dead):
        ask every client to reconnect (here again is fine) so it re-authenticates and pulls
        what it missed. Bounded rate, like a drain."""
        conns = list(self.node.connections.values())
        log.warning("zookeeper session was lost: clients re-authenticate", extra={"connections": len(conns)})
        target = (self.settings.advertise_host, self.gateway.port)
        for i, conn in enumerate(conns):
            conn.kick(503, "reconnect: session table was reset", *target, reason="zk-session")
            if i % 50 == 49:
                await asyncio.sleep(0.1)

    def _rebind(self, epoch: str) -> None:
        """REBIND: Redis lost the session table (every dispatch node that noticed says so; once
        per epoch is enough). The connections are bound again, then the dispatch nodes are told
        (SESSION_CHANGED all): they drop their cached lookups and send PULL_NOTIFY to the users
        whose pushes found no session meanwhile."""
        if epoch == self._rebound:
            return
        self._rebound = epoch
        if self._rebinding is not None:
            self._rebinding.cancel()
        self._rebinding = asyncio.get_running_loop().create_task(self._rebind_all(epoch))

    async def _rebind_all(self, epoch: str) -> None:
        conns = [c for c in list(self.node.connections.values()) if c.uid is not None]
        log.warning("the session table was lost: binding again", extra={"epoch": epoch, "connections": len(conns)})
        for attempt in range(20):
            try:
                for i in range(0, len(conns), 1000):
                    batch = [(c.uid, c.conn_id, c.device_id) for c in conns[i : i + 1000] if c.uid is not None]
                    await self.route.rebind(self.settings.node_id, batch)
                break
            except Exception:
                log.warning("rebind failed; retrying", exc_info=True)
                await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        # the dispatch nodes drop their cached lookups, and notify the users whose pushes found
        # no session meanwhile (their messages wait in the offline queues)
        self.links.sessions_changed(everything=True)

    def _drain_requested(self, data: dict | None) -> None:
        if data is None or self._draining_task is not None:
            return
        rate = float(data.get("rate_per_s") or self.drain_rate)
        deadline = float(data.get("deadline") or time.time() + self.grace_s)
        log.info("drain requested", extra={"rate_per_s": rate, "deadline": deadline})
        self._draining_task = asyncio.ensure_future(self.drain(rate, deadline, exit_after=False))

    async def drain(self, rate: float, deadline_unix: float, *, exit_after: bool) -> None:
        self.node.draining = True
        await self.gateway.stop_accepting()
        try:
            await asyncio.wait_for(self.zk.update(self.path, self._registration()), 5)  # leaves ipList at once
            self._peers = await asyncio.wait_for(self.zk.children_data(self.zk.path("access", self.kind)), 5)
        except Exception:
            log.warning("zookeeper unavailable while draining; kicking with the last known peers", exc_info=True)
        left = await self.node.drain(rate_per_s=rate, deadline=time.monotonic() + max(0.0, deadline_unix - time.time()))
        log.info("drained", extra={"left": left})
        if exit_after:
            self.stopped.set()

    def terminate(self) -> None:
        """SIGTERM: drain within the grace period, then exit."""
        if self._draining_task is None:
            self._draining_task = asyncio.ensure_future(self.drain(self.drain_rate, time.time() + self.grace_s, exit_after=True))
        else:
            self._draining_task.add_done_callback(lambda _: self.stopped.set())

    async def close(self) -> None:
        self._publisher.cancel()
        await self.gateway.close()
        await self.node.close()
        await self.links.close()
        await self.zk.stop()
        await self.route.close()
        await self.probes.cleanup()
