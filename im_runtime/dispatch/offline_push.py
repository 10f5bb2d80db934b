"""Offline push for phones: a webhook called when a message's receivers have no connected
device (the gateway a team runs in front of APNs / FCM).

Design:
- `notify(uids, message)` never blocks and never fails: it puts one job on a bounded queue
  (full: the job is dropped and counted; the message itself is already in every receiver's
  timeline, so a lost notification costs a phone banner, never a message). Delivery never
  waits for the webhook.
- A few workers POST each job as JSON; 5xx answers, timeouts and connection errors are retried
  with exponential backoff and full jitter, a bounded number of times; a 4xx is the gateway
  refusing the request, so it is not retried.
- One call per message names every offline receiver of it (`uids`, at most MAX_UIDS per
  call): a group message to 500 offline members is one call, not 500.
- The payload and the retry schedule are plain functions (no I/O), tested on their own.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import Counter, Gauge, Histogram

from im_runtime.metrics import REGISTRY
from im_runtime.proto import imstack_pb2 as pb

log = logging.getLogger(__name__)

MAX_UIDS = 500
PREVIEW_CHARS = 80

CALLS = Counter(
    "imstack_push_webhook_calls_total", "Offline-push webhook jobs by outcome (ok, retry, failed, refused, dropped)",
    ["result"], registry=REGISTRY,
)
QUEUED = Gauge("imstack_push_webhook_queue", "Offline-push webhook jobs waiting", registry=REGISTRY)
SECONDS = Histogram(
    "imstack_push_webhook_seconds", "Time of one webhook call", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)

_EVENTS = {pb.RECALL: "recall", pb.EDIT: "edit", pb.DELETE_FOR_ME: "delete"}


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    preview: bool = True  # IMSTACK_PUSH_WEBHOOK_PREVIEW=0 leaves message text out of the calls
    token: str = ""  # sent as "Authorization: Bearer <token>" when set
    attempts: int = 5
    timeout_s: float = 5.0
    max_queue: int = 10_000
    workers: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0


def preview_of(message: pb.Message, *, chars: int = PREVIEW_CHARS) -> str | None:
    """The start of a text message (content that is valid UTF-8), else None: binary content
    (an image, an app's own encoding) has no preview."""
    if message.event.kind == pb.RECALL:
        return None
    try:
        text = message.content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1] + "\u2026"


def payload(uids: list[str], message: pb.Message, *, preview: bool) -> dict[str, Any]:
    """The JSON body of one call (docs/protocol.md, "Offline push webhook")."""
    body: dict[str, Any] = {
        "uids": uids,
        "conversation_id": message.conversation_id,
        "type": "group" if message.type == pb.GROUP else "single",
        "from": getattr(message, "from"),
        "message_id": str(message.message_id),
        "seq": str(message.seq),
        "server_time": message.server_time,
        "event": _EVENTS.get(message.event.kind),
    }
    if preview:
        body["preview"] = preview_of(message)
    return body


_RNG = random.Random()


def retry_delay(attempt: int, *, base_s: float, max_s: float, rng: random.Random = _RNG) -> float:
    """Full jitter: uniform in [0, min(max, base * 2^attempt)] (attempt 0 is the first retry)."""
    return rng.uniform(0, min(max_s, base_s * (2**attempt)))


class WebhookNotifier:
    """The offline sink of a pusher (AccessNode in the all-in-one mode, ClusterPusher in
    dispatch): pushers call notify() for receivers that had no connection."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self._queue: asyncio.Queue[tuple[list[str], pb.Message]] = asyncio.Queue(maxsize=settings.max_queue)
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0
        self.dropped = 0

    def start(self) -> None:
        if self._workers:
            return
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout)
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(max(1, self.settings.workers))]
        log.info("offline push webhook on", extra={"url": self.settings.url, "preview": self.settings.preview})

    def notify(self, uids: list[str], message: pb.Message) -> None:
        for i in range(0, len(uids), MAX_UIDS):
            try:
                self._queue.put_nowait((uids[i : i + MAX_UIDS], message))
            except asyncio.QueueFull:
                self.dropped += 1
                CALLS.labels("dropped").inc()
                continue
        QUEUED.set(self._queue.qsize())

    async def _work(self) -> None:
        while True:
            uids, message = await self._queue.get()
            QUEUED.set(self._queue.qsize())
            try:
                await self._deliver(uids, message)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a worker must outlive any one job
                log.exception("offline push job failed")

    async def _deliver(self, uids: list[str], message: pb.Message) -> None:
        s = self.settings
        body = json.dumps(payload(uids, message, preview=s.preview)).encode()
        headers = {"Content-Type": "application/json"}
        if s.token:
            headers["Authorization"] = f"Bearer {s.token}"
        assert self._session is not None
        for attempt in range(s.attempts):
            started = time.perf_counter()
            status = 0
            try:
                async with self._session.post(s.url, data=body, headers=headers) as resp:
                    status = resp.status
                    await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.warning("offline push webhook unreachable", extra={"error": repr(exc), "attempt": attempt + 1})
            finally:
                SECONDS.observe(time.perf_counter() - started)
            if 200 <= status < 300:
                self.sent += 1
                CALLS.labels("ok").inc()
                return
            if 400 <= status < 500:
                CALLS.labels("refused").inc()
                log.warning("offline push webhook refused the call", extra={"status": status})
                return
            if attempt + 1 < s.attempts:
                CALLS.labels("retry").inc()
                await asyncio.sleep(retry_delay(attempt, base_s=s.base_delay_s, max_s=s.max_delay_s))
        CALLS.labels("failed").inc()
        log.warning("offline push webhook gave up", extra={"attempts": s.attempts, "conversation_id": message.conversation_id})

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._workers = []
        if self._session is not None:
            await self._session.close()
            self._session = None


def from_settings(settings) -> WebhookNotifier | None:  # type: ignore[no-untyped-def]
    """The notifier the config asks for (IMSTACK_PUSH_WEBHOOK_*), or None when no URL is set."""
    if not settings.push_webhook_url:
        return None
    return WebhookNotifier(
        WebhookSettings(
            url=settings.push_webhook_url,
            preview=settings.push_webhook_preview,
            token=settings.push_webhook_token,
            attempts=settings.push_webhook_attempts,
            max_queue=settings.push_webhook_queue,
        )
    )
