"""Access <-> dispatch links (S2, S3): long-lived TCP connections in the client framing.

The access node opens one link to every dispatch node it sees in ZooKeeper and registers
(LINK_REGISTER -> LINK_REGISTER_ACK); it sends LINK_HEARTBEAT every 5 s; either side closes a
link that received nothing for 30 s. Over a link travel FORWARD (one authenticated client
request; the header sequence is a link-level correlation id) answered by FORWARD_RESP with the
same sequence, DELIVER (dispatch -> access: one PUSH / PULL_NOTIFY body for the local
connections of some uids), SESSION_CHANGED (access -> dispatch: these users connected or
disconnected here; cluster/presence.py) and REBIND (dispatch -> access: Redis lost the session
table, bind your connections again).

Both ends are `asyncio.Protocol`s around the sans-I/O `FrameDecoder`. A link that dies fails
its in-flight requests at once with UNAVAILABLE, so the client SDK retries with the same
message id (the de-dup store makes that exactly-once) on whichever dispatch node owns the
conversation now (S9).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Callable

from google.protobuf.message import DecodeError

from im_runtime.coalesced_writes import CoalescedWrites
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import Frame, FrameDecoder, FrameError, decode_body, encode_frame, encode_message
from im_runtime.protocol.types import HEAD_LENGTH, RequestType

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
IDLE_S = 30.0
LINK_MAX_BODY = 16 << 20  # a Forward wraps a client body (64 KiB max) plus ids; Deliver lists uids
NO_RESPONSE = 0  # FORWARD sequence 0: the request has no answer (PUSH_ACK)


class LinkClosed(Exception):
    pass


class _LinkProtocol(CoalescedWrites, asyncio.Protocol):
    """Framing, liveness and writes (coalesced per loop turn, as the client gateway's) shared
    by both ends."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.decoder = FrameDecoder(max_body=LINK_MAX_BODY)
        self.transport: asyncio.Transport | None = None
        self.last_seen = self.loop.time()
        self.closed = self.loop.create_future()
        self._out: list[bytes] | None = None
        self._out_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last_seen = self.loop.time()

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        for event in self.decoder.receive_data(data):
            if isinstance(event, FrameError):
                log.error("bad frame on link; closing", extra={"error": event.message})
                self.close()
                return
            try:
                self.frame(event)
            except Exception:
                log.exception("link frame failed", extra={"request_type": event.request_type})

    def frame(self, frame: Frame) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise LinkClosed("link closed")
        self._queue_write(data, self.loop)

    def buffered(self) -> int:
        """Bytes written but not yet taken by the peer."""
        return self._pending_bytes()

    def close(self) -> None:
        if self.transport is not None:
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        self._drop_queued()
        if self.transport is not None:
            self.transport.abort()


# ---- dispatch side --------------------------------------------------------------------------


Handler = Callable[[pb.Forward], "asyncio.Future[tuple[int, bytes] | None] | object"]


class ServerLink(_LinkProtocol):
    """One access node's link, as the dispatch node sees it."""

    def __init__(self, server: "LinkServer") -> None:
        super().__init__()
        self.server = server
        self.node_id: str | None = None
        self.kind = ""

    def frame(self, frame: Frame) -> None:
        t = frame.request_type
        if t == RequestType.FORWARD:
            fwd = pb.Forward()
            try:
                fwd.ParseFromString(frame.body)
            except DecodeError:
                return
            self.loop.create_task(self._forward(frame.sequence, fwd))
        elif t == RequestType.LINK_HEARTBEAT:
            self.write(encode_frame(RequestType.LINK_HEARTBEAT_RESP, frame.sequence))
        elif t == RequestType.SESSION_CHANGED:
            changed = pb.SessionChanged()
            changed.ParseFromString(frame.body)
            self.server.sessions_changed(list(changed.uids), changed.all)
        elif t == RequestType.LINK_REGISTER:
            reg = pb.LinkRegister()
            reg.ParseFromString(frame.body)
            self.node_id, self.kind = reg.node_id, reg.kind
            self.server.registered(self)
            self.write(encode_frame(RequestType.LINK_REGISTER_ACK, frame.sequence))

    async def _forward(self, sequence: int, fwd: pb.Forward) -> None:
        try:
            result = await self.server.handle(fwd)
        except Exception:
            log.exception("forward failed", extra={"uid": fwd.uid})
            err = pb.Error(code=503, message="temporarily unavailable, retry").SerializeToString()
            result = (RequestType.ERROR, err)
        if sequence == NO_RESPONSE or not self.is_open:
            return
        response_type, body = result if result is not None else (0, b"")
        resp = pb.ForwardResponse(conn_id=fwd.conn_id, request_type=response_type, sequence=fwd.sequence, body=body)
        self.write(encode_message(RequestType.FORWARD_RESP, sequence, resp))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.server.lost(self)


class LinkServer:
    """Accepts access links on the dispatch node; keeps them by access node id (S2).

    `on_registered(link)`: an access node (re)linked; `on_sessions_changed(uids, all)`: an access
    node says these users' sessions changed (SESSION_CHANGED; cluster/presence.py)."""

    def __init__(
        self, handle: Callable[[pb.Forward], "asyncio.Future"], *, idle_s: float = IDLE_S,
        on_registered: Callable[["ServerLink"], None] | None = None,
        on_sessions_changed: Callable[[list[str], bool], None] | None = None,
    ) -> None:
        self.handle = handle
        self.idle_s = idle_s
        self.on_registered = on_registered
        self.on_sessions_changed = on_sessions_changed
        self.links: dict[str, ServerLink] = {}
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: ServerLink(self), host, port, reuse_address=True, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.create_task(self._sweep())
        log.info("link server listening", extra={"host": host, "port": self.port})

    def registered(self, link: ServerLink) -> None:
        old = self.links.get(link.node_id)  # type: ignore[arg-type]
        if old is not None and old is not link:
            old.close()  # the access node reconnected: the newer link wins
        self.links[link.node_id] = link  # type: ignore[index]
        log.info("access node linked", extra={"node_id": link.node_id, "kind": link.kind})
        if self.on_registered is not None:
            self.on_registered(link)

    def sessions_changed(self, uids: list[str], everything: bool) -> None:
        if self.on_sessions_changed is not None:
            self.on_sessions_changed(uids, everything)

    def broadcast(self, frame: bytes) -> int:
        """Writes one frame on every open link; returns how many."""
        sent = 0
        for link in list(self.links.values()):
            if link.is_open:
                link.write(frame)
                sent += 1
        return sent

    def lost(self, link: ServerLink) -> None:
        if link.node_id is not None and self.links.get(link.node_id) is link:
            del self.links[link.node_id]
            log.info("access node link closed", extra={"node_id": link.node_id})

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, self.idle_s / 4))
            deadline = loop.time() - self.idle_s
            for link in list(self.links.values()):
                if link.last_seen < deadline:
                    log.warning("closing idle link", extra={"node_id": link.node_id})
                    link.abort()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for link in list(self.links.values()):
            link.abort()


# ---- access side ----------------------------------------------------------------------------


class ClientLink(_LinkProtocol):
    """The access node's link to one dispatch node."""

    def __init__(
        self, dispatch_id: str, on_deliver: Callable[..., object],
        on_rebind: Callable[[str], object] | None = None,
    ) -> None:
        super().__init__()
        self.dispatch_id = dispatch_id
        self.on_deliver = on_deliver
        self.on_rebind = on_rebind
        self.waiting: dict[int, asyncio.Future[Frame]] = {}
        self._seq = itertools.count(1)

    def _next_seq(self) -> int:
        seq = next(self._seq) & 0xFFFFFFFF
        if seq == NO_RESPONSE:
            seq = next(self._seq) & 0xFFFFFFFF
        return seq

    def frame(self, frame: Frame) -> None:
        t = frame.request_type
        if t == RequestType.DELIVER:
            d = pb.Deliver()
            d.ParseFromString(frame.body)
            if d.feature or d.HasField("skip_device"):  # sender sync, extension frames
                skip = d.skip_device if d.HasField("skip_device") else None
                self.on_deliver(list(d.uids), encode_frame(d.request_type, 0, d.body), skip, d.feature)
            else:
                self.on_deliver(list(d.uids), encode_frame(d.request_type, 0, d.body))
            return
        if t == RequestType.REBIND:
            if self.on_rebind is not None:
                self.on_rebind(pb.Rebind.FromString(frame.body).epoch)
            return
        future = self.waiting.pop(frame.sequence, None)
        if future is not None and not future.done():
            future.set_result(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(LinkClosed(f"link to {self.dispatch_id} closed"))

    async def call(self, request_type: int, body: bytes, *, timeout: float) -> Frame:
        """The answer frame; asyncio.TimeoutError after `timeout` s. (A timer handle rather than
        asyncio.wait_for: this runs for every forwarded request, and wait_for costs several
        times more.)"""
        seq = self._next_seq()
        future: asyncio.Future[Frame] = self.loop.create_future()
        self.waiting[seq] = future
        timer = self.loop.call_later(timeout, _expire, future)
        try:
            self.write(encode_frame(request_type, seq, body))
            return await future
        finally:
            timer.cancel()
            self.waiting.pop(seq, None)

    def send(self, request_type: int, body: bytes) -> None:
        self.write(encode_frame(request_type, NO_RESPONSE, body))

    async def forward(self, fwd: pb.Forward, *, timeout: float) -> pb.ForwardResponse:
        frame = await self.call(RequestType.FORWARD, fwd.SerializeToString(), timeout=timeout)
        resp = pb.ForwardResponse()
        resp.ParseFromString(frame.body)
        return resp


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(asyncio.TimeoutError())


def split_frame(frame: bytes) -> tuple[int, bytes]:
    """(request_type, body) of one encoded frame (DispatchService pushes whole frames)."""
    return int.from_bytes(frame[8:12], "big"), frame[HEAD_LENGTH:]


def deliver_body(uids: list[str], frame: bytes, skip_device: str | None = None, feature: str = "") -> bytes:
    request_type, body = split_frame(frame)
    d = pb.Deliver(uids=uids, request_type=request_type, body=body, feature=feature)
    if skip_device is not None:
        d.skip_device = skip_device
    return d.SerializeToString()


__all__ = ["ClientLink", "LinkClosed", "LinkServer", "ServerLink", "decode_body", "deliver_body", "HEARTBEAT_S", "IDLE_S"]
