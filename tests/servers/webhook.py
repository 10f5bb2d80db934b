"""A real HTTP server standing in for an offline-push gateway (the service a team runs in
front of APNs / FCM): records every webhook call, and can answer 503 or hang to exercise the
retries and the bounded queue. It runs in the test's event loop."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Gateway:
    """Records every call; answers 503 to the first `fail_first` calls; sleeps `hang_s` first."""

    fail_first: int = 0
    hang_s: float = 0.0
    calls: list[dict] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    got_one: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.calls.append(json.loads(await request.read()))
        self.headers.append(dict(request.headers))
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        status = 503 if len(self.calls) <= self.fail_first else 200
        self.answered.append(status)
        if status == 200:
            self.got_one.set()
        return web.json_response({"ok": status == 200}, status=status)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def start_gateway(*, host: str = "127.0.0.1", **options) -> Gateway:
    gateway = Gateway(**options)
    app = web.Application()
    app.router.add_post("/push", gateway._handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    gateway._runner = runner
    gateway.url = f"http://{host}:{runner.addresses[0][1]}/push"
    return gateway
