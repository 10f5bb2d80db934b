"""`imstack up`: access (TCP + WebSocket), dispatch, route and the id service in one process,
on the memory engine, with the defaults PROTOCOL.md names. No external servers."""
from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass

from google.protobuf.message import Message as ProtoMessage

from im_runtime.access.node import AccessNode, Response, RouteSessions
from im_runtime.access.tcp import TcpGateway, server_ssl_context
from im_runtime.config import Settings
from im_runtime.dispatch import offline_push
from im_runtime.dispatch.service import DispatchService
from im_runtime.idgen.segment import SegmentGenerator
from im_runtime.idgen.snowflake import SnowflakeGenerator
from im_runtime.route.http import HttpApi, serve
from im_runtime.route.iplist import LocalIpList
from im_runtime.route.service import RouteService
from im_runtime.route.tokens import TokenSigner
from im_runtime.runtime import tune_gc
from im_runtime.storage.interfaces import Stores
from im_runtime.storage.memory import memory_stores

log = logging.getLogger(__name__)


class LocalUpstream(RouteSessions):
    """Route and dispatch as local objects: the all-in-one upstream of the access node."""

    def __init__(self, route: RouteService, dispatch: DispatchService, node_id: str) -> None:
        super().__init__(route, node_id)
        self.dispatch = dispatch

    async def request(
        self, uid: str, device_id: str, conn_id: int, request_type: int, message: ProtoMessage | None, body: bytes
    ) -> Response | None:
        return await self.dispatch.handle(uid, request_type, message, device=device_id)


def make_ids(settings: Settings, stores: Stores):  # type: ignore[no-untyped-def]
    if settings.id_mode == "segment":
        return SegmentGenerator(stores.segments)
    if settings.id_mode == "snowflake":
        return SnowflakeGenerator(settings.worker_id)
    raise SystemExit(f"unknown id mode {settings.id_mode!r} (snowflake or segment)")


@dataclass
class AllInOne:
    settings: Settings
    stores: Stores | None = None  # None: the memory engine with the settings' timeline limits
    with_ws: bool = True

    async def start(self) -> None:
        s = self.settings
        if self.stores is None:
            self.stores = memory_stores(retention_s=s.timeline_retention_s, max_devices=s.max_devices)
        self.signer = TokenSigner(s.token_key.encode())
        self.route = RouteService(self.signer, self.stores.sessions, self.stores.offline)
        self.node = AccessNode(
            None,  # type: ignore[arg-type]  # set below: the upstream needs the node as pusher
            node_id="local",
            idle_timeout=s.idle_timeout,
            max_write_buffer=s.max_write_buffer,
            rate_per_s=s.rate_per_s,
            rate_burst=s.rate_per_s * 2,
        )
        self.dispatch = DispatchService(self.stores, make_ids(s, self.stores), self.node, recall_window_s=s.recall_window_s)
        self.node.upstream = LocalUpstream(self.route, self.dispatch, "local")
        self.node.start()
        self.webhook = offline_push.from_settings(s)
        if self.webhook is not None:
            self.webhook.start()
            self.node.offline_sink = self.webhook.notify
        total_backlog = getattr(self.stores.offline, "total_backlog", None)
        if total_backlog is not None:
            from im_runtime import metrics

            metrics.OFFLINE_BACKLOG.set_function(total_backlog)
        ssl_ctx = server_ssl_context(s.tls_cert, s.tls_key) if s.tls else None
        self.tcp = TcpGateway(self.node, s.host, s.tcp_port, ssl_context=ssl_ctx, max_body=s.max_body)
        await self.tcp.start()
        ips = LocalIpList()
        ips.add("tcp", s.advertise_host, lambda: self.tcp.port, lambda: self.node.count("tcp"), lambda: self.node.draining)
        self.ws = None
        if self.with_ws:
            try:
                from im_runtime.access.ws import WsGateway
            except ImportError:
                log.warning("WebSocket gateway not available in this build")
            else:
                origins = [o for o in s.ws_origins.split(",") if o] or None
                self.ws = WsGateway(self.node, s.host, s.ws_port, ssl=ssl_ctx, origins=origins, max_body=s.max_body)
                await self.ws.start()
                ips.add("ws", s.advertise_host, lambda: self.ws.port, lambda: self.node.count("ws"), lambda: self.node.draining)
        api = HttpApi(
            signer=self.signer,
            admin_key=s.admin_key,
            stores=self.stores,
            ips=ips,
            dev_login=s.dev_login,
        )
        self.http_runner = await serve(api.app(), s.host, s.http_port, ssl_context=ssl_ctx)
        self.http_port = self.http_runner.addresses[0][1] if self.http_runner.addresses else s.http_port

    async def close(self) -> None:
        await self.tcp.close()
        if self.ws is not None:
            await self.ws.close()
        await self.node.close()
        if self.webhook is not None:
            await self.webhook.close()
        await self.http_runner.cleanup()


async def run_forever(settings: Settings) -> None:
    generated = settings.ensure_keys()
    stack = AllInOne(settings)
    await stack.start()
    tune_gc()
    scheme = "https" if settings.tls else "http"
    print(f"imstack is up: HTTP {scheme}://{settings.host}:{stack.http_port}  TCP {settings.host}:{stack.tcp.port}"
          + (f"  WebSocket ws://{settings.host}:{stack.ws.port}/ws" if stack.ws else ""), file=sys.stderr, flush=True)
    if generated:
        print(f"admin key (printed once): {settings.admin_key}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await stack.close()
