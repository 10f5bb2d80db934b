"""What every gateway connection does, whatever its transport.

Subclasses (TCP, WebSocket) provide `_write(bytes)`, `_write_buffer_size()` and
`_close_transport()`, and feed input through `received(events)`. Requests of one connection
run one at a time, in order, in a worker task that exists only while there is work (an idle
connection holds no task: memory per connection matters, S4/benchmarks).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from im_runtime import metrics
from im_runtime.access.connection import Admitted, ConnectionCore, Reply
from im_runtime.access.node import AccessNode
from im_runtime.access.state import ConnState
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import Frame, FrameError, encode_frame, encode_message, error_frame, try_decode_body
from im_runtime.protocol.types import ErrorCode, RequestType

log = logging.getLogger(__name__)

INBOX_HIGH = 256  # frames queued before reading pauses (STYLE 5)
INBOX_LOW = 32


class GatewayConnection:
    kind = "tcp"

    __slots__ = ("node", "core", "conn_id", "last_seen", "_inbox", "_worker", "_tokens", "_refill", "_paused", "__weakref__")

    def __init__(self, node: AccessNode, *, max_body: int) -> None:
        self.node = node
        self.core = ConnectionCore(max_body=max_body)
        self.conn_id = 0
        self.last_seen = 0.0
        self._inbox: deque[Frame | FrameError] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._tokens = node.rate_burst
        self._refill = 0.0
        self._paused = False

    # ---- transport hooks (subclasses) -------------------------------------------------

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _write_buffer_size(self) -> int:
        raise NotImplementedError

    def _close_transport(self) -> None:
        raise NotImplementedError

    def _pause_reading(self, pause: bool) -> None:
        pass

    def _loop(self) -> asyncio.AbstractEventLoop:
        return self.node.loop or asyncio.get_running_loop()

    # ---- identity -----------------------------------------------------------------------

    @property
    def uid(self) -> str | None:
        return self.core.uid

    @property
    def device_id(self) -> str:
        return self.core.device_id

    # ---- lifecycle ----------------------------------------------------------------------

    def opened(self) -> bool:
        """Registers with the node; False when the node refuses new clients (draining/full)."""
        if not self.node.accepts():
            return False
        self.conn_id = self.node.opened(self)
        self.last_seen = self._loop().time()
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """asyncio.Protocol, for every gateway: subclasses keep `transport` in a slot."""
        self.transport = transport  # type: ignore[attr-defined]
        if not self.opened():
            transport.close()
            self.core.close()

    def lost(self) -> None:
        inbox, self._inbox = self._inbox, None
        if inbox and self.core.state in (ConnState.AUTHENTICATED, ConnState.DRAINING):
            self._acks_left(inbox)
        self.core.close()
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self.node.lost(self)

    def _acks_left(self, inbox: deque[Frame | FrameError]) -> None:
        """PUSH_ACKs that arrived with the close (a client acks, then hangs up) are still
        honoured: dropping them would bring those messages back on the next pull."""
        core, upstream, loop = self.core, self.node.upstream, self._loop()
        for event in inbox:
            if isinstance(event, Frame) and event.request_type == RequestType.PUSH_ACK:
                message, problem = try_decode_body(event.request_type, event.body)
                if problem is None:
                    loop.create_task(_quietly(upstream.request(
                        core.uid, core.device_id, self.conn_id, event.request_type, message, event.body  # type: ignore[arg-type]
                    )))

    def close(self) -> None:
        if self.core.state is not ConnState.CLOSED:
            self.core.close()
            self._close_transport()

    # ---- output -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Writes one frame; a client whose buffer is over the limit is dropped (its
        messages stay offline) rather than allowed to grow memory (STYLE 5)."""
        if self.core.state is ConnState.CLOSED:
            return
        if self._write_buffer_size() > self.node.max_write_buffer:
            # Still over the limit from earlier writes: the client is not reading. Memory per
            # connection stays under the limit plus one frame.
            metrics.DROPPED_SLOW.inc()
            log.warning("dropping slow client", extra={"conn_id": self.conn_id, "uid": self.uid})
            self.close()
            return
        self._write(data)
        out = metrics.HOT.frames_out
        out[self.kind] = out.get(self.kind, 0) + 1

    def kick(self, code: int, message: str, host: str = "", port: int = 0, *, reason: str = "kick") -> None:
        if self.core.state is ConnState.CLOSED:
            return
        metrics.KICKS.labels(reason).inc()
        self.core.drain()
        self.send(encode_message(RequestType.KICK, 0, pb.Kick(code=code, message=message, reconnect_host=host, reconnect_port=port)))
        self.close()

    # ---- input --------------------------------------------------------------------------

    def received(self, events: list[Frame | FrameError]) -> None:
        if not events:
            return
        loop = self._loop()
        self.last_seen = loop.time()
        counts = metrics.HOT.frames_in
        counts[self.kind] = counts.get(self.kind, 0) + len(events)
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        if inbox or (self._worker is not None and not self._worker.done()):
            # Requests are busy (a send waits for dispatch): heartbeats are answered now, not
            # behind them, or a client whose send waits longer than its heartbeat timeout
            # would take the connection for dead and reconnect. Their answers carry their own
            # sequence, so answering out of turn is fine.
            kept = []
            for event in events:
                if isinstance(event, Frame) and event.request_type == RequestType.HEARTBEAT_REQ:
                    verdict = self.core.admit(event)
                    if isinstance(verdict, Reply):
                        self.send(verdict.data)
                    continue
                kept.append(event)
            events = kept
        inbox.extend(events)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        if len(inbox) > INBOX_HIGH and not self._paused:
            self._paused = True
            self._pause_reading(True)

    def _rate_ok(self) -> bool:
        now = time.monotonic()
        node = self.node
        self._tokens = min(node.rate_burst, self._tokens + (now - self._refill) * node.rate_per_s)
        self._refill = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def _run(self) -> None:
        inbox = self._inbox
        core = self.core
        while inbox:
            event = inbox.popleft()
            if self._paused and len(inbox) < INBOX_LOW:
                self._paused = False
                self._pause_reading(False)
            verdict = core.admit(event)
            if verdict is None:
                continue
            if isinstance(verdict, Reply):
                self.send(verdict.data)
                if verdict.close:
                    metrics.PROTOCOL_ERRORS.labels(str(getattr(event, "code", 0))).inc()
                    self.close()
                    return
                continue
            if not self._rate_ok():
                self.send(error_frame(verdict.sequence, ErrorCode.RATE_LIMITED, "too many requests; slow down"))
                continue
            try:
                if verdict.request_type == RequestType.AUTH_REQ:
                    await self._authenticate(verdict)
                else:
                    await self._forward(verdict)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("request failed", extra={"conn_id": self.conn_id})
                self.send(error_frame(verdict.sequence, ErrorCode.UNAVAILABLE, "temporarily unavailable, retry"))
            if core.state is ConnState.CLOSED:
                return

    async def _authenticate(self, req: Admitted) -> None:
        core = self.core
        auth: pb.AuthRequest = req.message  # type: ignore[assignment]
        if core.state is ConnState.AUTHENTICATED:
            resp = pb.AuthResponse(code=ErrorCode.FORBIDDEN, message="already authenticated", server_time=_now_ms())
            self.send(encode_message(RequestType.AUTH_RESP, req.sequence, resp))
            return
        resp = await self.node.upstream.authenticate(auth, conn_id=self.conn_id)
        if core.state is ConnState.CLOSED:
            return
        if resp.code == 0:
            metrics.AUTH_RESULTS.labels("ok").inc()
            for old in self.node.same_device(auth.uid, auth.device_id):
                old.kick(409, "signed in on the same device elsewhere", reason="replaced")
            core.authenticated(auth.uid, auth.device_id, frozenset(auth.features))
            self.node.bound(self)
            self.send(encode_message(RequestType.AUTH_RESP, req.sequence, resp))
            return
        metrics.AUTH_RESULTS.labels("refused").inc()
        self.send(encode_message(RequestType.AUTH_RESP, req.sequence, resp))
        if core.auth_failed():
            self.close()

    async def _forward(self, req: Admitted) -> None:
        core = self.core
        result = await self.node.upstream.request(
            core.uid, core.device_id, self.conn_id, req.request_type, req.message, req.body  # type: ignore[arg-type]
        )
        if result is None:
            return
        response_type, message = result
        if response_type == RequestType.ERROR:
            metrics.PROTOCOL_ERRORS.labels(str(getattr(message, "code", 0))).inc()
        if isinstance(message, (bytes, bytearray)):  # already serialized (cluster links)
            self.send(encode_frame(response_type, req.sequence, bytes(message)))
        else:
            self.send(encode_message(response_type, req.sequence, message))


async def _quietly(call) -> None:  # type: ignore[no-untyped-def]
    try:
        await call
    except Exception:  # noqa: BLE001 - the messages stay in the timeline; the next pull resends them
        log.warning("ack after close failed", exc_info=True)


def _now_ms() -> int:
    return int(time.time() * 1000)
