"""`/healthz`, `/readyz`, `/metrics` on the metrics port of access and dispatch processes."""
from __future__ import annotations

from typing import Callable

from aiohttp import web

from im_runtime import metrics
from im_runtime.route.http import serve


async def serve_probes(host: str, port: int, ready: Callable[[], dict[str, bool]]) -> tuple[web.AppRunner, int]:
    """ready() names each readiness condition (zookeeper, links, stores...) and whether it holds."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = ready()
        ok = all(checks.values())
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    runner = await serve(app, host, port)
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, bound
