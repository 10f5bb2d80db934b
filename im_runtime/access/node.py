"""The access role: the user <-> connection map of one node, and its upstream.

Gateways (TCP, WebSocket) create connections; the node authenticates them through the
upstream (route), runs their requests through the upstream (dispatch), delivers pushes to
every connection of a user, closes idle ones, and drains (KICK with a reconnect target at a
bounded rate) when asked to (S3, S5, S9, operator scale-down).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Callable, Iterable, Protocol

from google.protobuf.message import Message as ProtoMessage

from im_runtime import metrics
from im_runtime.proto import imstack_pb2 as pb

log = logging.getLogger(__name__)

Response = tuple[int, ProtoMessage | None]


class GatewayConnection(Protocol):
    """What the node needs of a client connection. `access.session.GatewayConnection` is the
    one implementation; it imports this module, so this module names it only as a Protocol
    (no import cycle between the two)."""

    kind: str
    conn_id: int
    last_seen: float

    @property
    def uid(self) -> str | None: ...
    @property
    def device_id(self) -> str: ...
    def send(self, data: bytes) -> None: ...
    def kick(self, code: int, message: str, host: str = "", port: int = 0, *, reason: str = "kick") -> None: ...
    def close(self) -> None: ...


class Upstream(Protocol):
    """What an access node needs from route and dispatch (local objects or remote links)."""

    async def authenticate(self, req: pb.AuthRequest, *, conn_id: int) -> pb.AuthResponse: ...
    async def request(
        self, uid: str, device_id: str, conn_id: int, request_type: int, message: ProtoMessage | None, body: bytes
    ) -> Response | None: ...
    async def disconnected(self, uid: str, conn_id: int) -> None: ...


class RouteSessions:
    """The route half of an Upstream, the same for a local RouteService and a gRPC RouteClient:
    authenticating binds the user's session to this node (S5), a disconnect unbinds it."""

    def __init__(self, route, node_id: str) -> None:  # RouteService or RouteClient
        self.route = route
        self.node_id = node_id

    async def authenticate(self, req: pb.AuthRequest, *, conn_id: int) -> pb.AuthResponse:
        return await self.route.authenticate(req, node=self.node_id, conn_id=conn_id)

    async def disconnected(self, uid: str, conn_id: int) -> None:
        await self.route.unbind(uid, node=self.node_id, conn_id=conn_id)


class AccessNode:
    def __init__(
        self,
        upstream: Upstream,
        *,
        node_id: str = "local",
        idle_timeout: float = 30.0,
        max_write_buffer: int = 1 << 20,
        rate_per_s: float = 2000.0,
        rate_burst: float = 4000.0,
        max_connections: int = 100_000,
    ) -> None:
        self.upstream = upstream
        self.node_id = node_id
        self.idle_timeout = idle_timeout
        self.max_write_buffer = max_write_buffer
        self.rate_per_s = rate_per_s
        self.rate_burst = rate_burst
        self.max_connections = max_connections
        self.connections: dict[int, GatewayConnection] = {}
        self.by_uid: dict[str, set[GatewayConnection]] = {}
        self.draining = False  # the property below: also zeroes the gauge
        self._ids = itertools.count(1)
        self._sweeper: asyncio.Task[None] | None = None
        # Set by start(): connections use it instead of asyncio.get_running_loop(), which on
        # Python 3.11 makes a getpid() system call every time (seen in profiles per frame).
        self.loop: asyncio.AbstractEventLoop | None = None
        self._kinds: dict[str, int] = {}
        # Where drained clients should reconnect: (host, port) for a gateway kind, or None.
        self.reconnect_target: Callable[[str], tuple[str, int] | None] = lambda kind: None
        # All-in-one: called with the uids that had no connection for a message (the offline
        # push webhook, dispatch/offline_push.py); None = off.
        self.offline_sink: Callable[[list[str], pb.Message], None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep_idle())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections.values()):
            conn.close()

    @property
    def draining(self) -> bool:
        """True once a drain started (drain znode or SIGTERM): refuse new clients, leave ipList.
        A property so that every writer (this node's drain(), the cluster role's) also moves
        the `imstack_draining` gauge the dashboard shows per pod."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        metrics.set_draining(value)

    def count(self, kind: str | None = None) -> int:
        return len(self.connections) if kind is None else self._kinds.get(kind, 0)

    # ---- connections --------------------------------------------------------------------

    def accepts(self) -> bool:
        return not self.draining and len(self.connections) < self.max_connections

    def opened(self, conn: GatewayConnection) -> int:
        conn_id = next(self._ids)
        self.connections[conn_id] = conn
        self._kinds[conn.kind] = self._kinds.get(conn.kind, 0) + 1
        metrics.connections(conn.kind).inc()
        return conn_id

    def bound(self, conn: GatewayConnection) -> None:
        """The connection authenticated: it now receives the user's pushes."""
        self.by_uid.setdefault(conn.uid, set()).add(conn)  # type: ignore[arg-type]
        metrics.authenticated(conn.kind).inc()

    def lost(self, conn: GatewayConnection) -> None:
        if self.connections.pop(conn.conn_id, None) is None:
            return
        self._kinds[conn.kind] -= 1
        metrics.connections(conn.kind).dec()
        uid = conn.uid
        if uid is not None:
            conns = self.by_uid.get(uid)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self.by_uid[uid]
            metrics.authenticated(conn.kind).dec()
            # S9: the session ends at once; messages for the user wait offline.
            (self.loop or asyncio.get_running_loop()).create_task(self._unbind(uid, conn.conn_id))

    async def _unbind(self, uid: str, conn_id: int) -> None:
        try:
            await self.upstream.disconnected(uid, conn_id)
        except Exception:
            log.warning("unbind failed", extra={"uid": uid, "conn_id": conn_id}, exc_info=True)

    def same_device(self, uid: str, device_id: str) -> list[GatewayConnection]:
        if not device_id:
            return []
        return [c for c in self.by_uid.get(uid, ()) if c.device_id == device_id]

    # ---- delivery -----------------------------------------------------------------------

    async def deliver(
        self, uids: list[str], frame: bytes, *, skip_device: str | None = None, feature: str = "",
        offline: pb.Message | None = None,
    ) -> None:
        """Pusher for the all-in-one mode (dispatch.service.Pusher): the frame to every local
        connection of uids; the ones with none go to the offline sink."""
        self.deliver_now(uids, frame, skip_device, feature)
        if offline is not None and self.offline_sink is not None:
            away = [u for u in uids if u not in self.by_uid]
            if away:
                self.offline_sink(away, offline)

    def deliver_now(self, uids: Iterable[str], frame: bytes, skip_device: str | None = None, feature: str = "") -> int:
        """skip_device: not to connections of that device id (sender sync); feature: only to
        connections that asked for it in AUTH (frames of the v1 extensions)."""
        if skip_device is not None or feature:
            return self._deliver_some(uids, frame, skip_device, feature)
        sent = 0
        by_uid = self.by_uid
        for uid in uids:
            conns = by_uid.get(uid)
            if conns:
                for conn in tuple(conns):
                    conn.send(frame)
                    sent += 1
        return sent

    def _deliver_some(self, uids: Iterable[str], frame: bytes, skip_device: str | None, feature: str) -> int:
        sent = 0
        for uid in uids:
            for conn in tuple(self.by_uid.get(uid, ())):
                if conn.device_id == skip_device or (feature and feature not in conn.core.features):
                    continue
                conn.send(frame)
                sent += 1
        return sent

    # ---- idle and drain -----------------------------------------------------------------

    async def _sweep_idle(self) -> None:
        period = max(0.2, min(5.0, self.idle_timeout / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            deadline = loop.time() - self.idle_timeout
            idle = [c for c in self.connections.values() if c.last_seen < deadline]
            for conn in idle:
                log.info("closing idle connection", extra={"conn_id": conn.conn_id, "uid": conn.uid})
                conn.close()

    async def drain(self, *, rate_per_s: float, deadline: float, code: int = 503, message: str = "node draining") -> int:
        """Stops accepting, then KICKs every client (with a reconnect target) at a bounded rate
        until none is left or the deadline (monotonic seconds) passes. Returns the number left."""
        self.draining = True
        interval = 1.0 / max(rate_per_s, 0.1)
        while self.connections and time.monotonic() < deadline:
            conn = next(iter(self.connections.values()))
            target = self.reconnect_target(conn.kind)
            host, port = target if target else ("", 0)
            conn.kick(code, message, host, port, reason="drain")
            await asyncio.sleep(interval)
        return len(self.connections)
