"""The Python client SDK: `ImClient` does the ack / retry / de-dup / reorder work (S12, S15).

- send: message ids come from cached ID batches (S17); a send waits for its SEND_ACK and is
  retried with the same id (exponential backoff with jitter, bounded attempts) across
  reconnects; DUPLICATE counts as success; then it raises SendFailed.
- receive: pushes and offline pulls go through a `Timeline` (de-dup by id, order by seq);
  a gap is filled from history; delivered messages are acked in batches (PUSH_ACK).
- PULL_NOTIFY and every (re)connect trigger an offline pull (S11, S9).
- connection loss or KICK: reconnect with backoff (to the KICK's target if it names one, or
  through ipList when the client was built with an HTTP address).
- several devices per user (S18, v1 extensions of docs/protocol.md): give each device a
  stable `device_id`; the server keeps a cursor per device. Messages the user sent from
  another device arrive like any other (`from` is the user's own uid). The resume position:
  acks are sent without an answer, so the ids acked since the last pull are kept (bounded) and
  sent again in the next pull (`acked_ids`), with the position the last pull reached
  (`resume_cursor`): acks lost with a dead access node do not bring messages back.
- recall / edit / delete for me (`recall`, `edit`, `delete_for_me`): events arrive in the
  inbox like messages, with `message.event` set; SYNC notices (another device read or
  deleted) go to `syncs`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator

from google.protobuf.message import Message as ProtoMessage

from im_runtime.client.connection import ClientConnection, ConnectionClosed, ServerError, is_retryable
from im_runtime.client.reorder import Timeline
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.types import FEATURE_SYNC, ErrorCode, RequestType

log = logging.getLogger(__name__)

SINGLE = pb.SINGLE
GROUP = pb.GROUP


class SendFailed(Exception):
    def __init__(self, message_id: int, reason: str) -> None:
        super().__init__(f"message {message_id} not sent: {reason}")
        self.message_id = message_id
        self.reason = reason


class AuthFailed(Exception):
    pass


UNCONFIRMED_ACKS = 2000  # acked ids kept for the next pull (they fit its 64 KiB body)


@dataclass
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 5.0
    ack_timeout: float = 5.0

    def delay(self, attempt: int) -> float:
        # full jitter (AWS architecture blog): uniform in [0, min(max, base * 2^attempt)]
        return random.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))


def fetch_iplist(http_url: str, *, timeout: float = 5.0) -> dict[str, list[dict]]:
    with urllib.request.urlopen(f"{http_url.rstrip('/')}/v1/iplist", timeout=timeout) as resp:  # noqa: S310
        return json.loads(resp.read())


class ImClient:
    def __init__(
        self,
        uid: str,
        token: str,
        *,
        host: str = "127.0.0.1",
        port: int = 9000,
        http_url: str | None = None,
        device_id: str = "",
        ssl_context: ssl.SSLContext | None = None,
        heartbeat_s: float = 10.0,
        retry: RetryPolicy | None = None,
        id_batch: int = 200,
        gap_wait_s: float = 0.5,
        gap_give_up_s: float = 10.0,
        first_wait_s: float = 0.2,
        auto_reconnect: bool = True,
        resume_cursor: int = 0,
        ack_delay_s: float = 0.0,
    ) -> None:
        self.uid = uid
        self.token = token
        self.host = host
        self.port = port
        self.http_url = http_url
        self.device_id = device_id
        self.ssl_context = ssl_context
        self.heartbeat_s = heartbeat_s
        self.retry = retry or RetryPolicy()
        self.id_batch = id_batch
        self.gap_wait_s = gap_wait_s
        self.gap_give_up_s = gap_give_up_s
        self.first_wait_s = first_wait_s
        self.auto_reconnect = auto_reconnect
        self.ack_delay_s = ack_delay_s  # > 0: acks of pushes are batched over this window
        self.inbox: asyncio.Queue[pb.Message] = asyncio.Queue()
        self.notices: asyncio.Queue[tuple[int, ProtoMessage | None]] = asyncio.Queue()  # KICK, PULL_NOTIFY, ERROR, SYNC
        self.syncs: asyncio.Queue[pb.Sync] = asyncio.Queue()  # another device of this user read or deleted
        # The device's position in its timeline: everything up to here is on this device.
        # An app that keeps it across restarts passes it back as `resume_cursor`.
        self.resume_cursor = resume_cursor
        self._unconfirmed: deque[int] = deque(maxlen=UNCONFIRMED_ACKS)  # acked since the last pull
        self.duplicates = 0  # messages received again (push or pull) after this client had them
        self.timeline = Timeline(uid)
        self.connected = asyncio.Event()
        self.reconnects = 0  # successful reconnects
        self.reconnect_attempts = 0  # connection attempts after a loss (refused ones too)
        self._lost: tuple[str, int] | None = None  # the address of the connection just lost
        self._conn: ClientConnection | None = None
        self._ids: list[int] = []
        self._id_lock = asyncio.Lock()
        self._pending_acks: list[int] = []
        self._ack_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._kick_target: tuple[str, int] | None = None
        self._pull_lock = asyncio.Lock()
        self._pull_queued = False
        self._supervisor: asyncio.Task | None = None

    # ---- connection lifecycle ---------------------------------------------------------

    async def connect(self) -> "ImClient":
        await self._connect_once()
        self._supervisor = asyncio.ensure_future(self._supervise())
        self._spawn(self._heartbeats())
        self._spawn(self._gap_filler())
        return self

    async def __aenter__(self) -> "ImClient":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _pick_address(self) -> tuple[str, int]:
        if self._kick_target:
            target, self._kick_target = self._kick_target, None
            return target
        if self.http_url:
            try:
                # off the event loop: the app's loop must never block on HTTP
                nodes = (await asyncio.to_thread(fetch_iplist, self.http_url)).get("tcp", [])
                # Not back to the node that just dropped us while ipList offers another: it may
                # be dead and still listed for a moment (the server drops it within a second).
                others = [n for n in nodes if (n["host"], int(n["port"])) != self._lost]
                for node in others or nodes:
                    return node["host"], int(node["port"])
            except OSError as exc:
                log.warning("ipList unavailable", extra={"error": str(exc)})
        return self.host, self.port

    async def _connect_once(self) -> None:
        host, port = await self._pick_address()
        conn = await ClientConnection.open(host, port, self._on_event, ssl_context=self.ssl_context)
        try:
            resp = await conn.request(
                RequestType.AUTH_REQ,
                pb.AuthRequest(
                    uid=self.uid, token=self.token, timestamp=int(time.time() * 1000), device_id=self.device_id,
                    features=[FEATURE_SYNC],
                ),
            )
        except Exception:
            conn.close()
            raise
        assert isinstance(resp, pb.AuthResponse)
        if resp.code != 0:
            conn.close()
            raise AuthFailed(f"{resp.code} {resp.message}")
        self.host, self.port = host, port
        self._conn = conn
        self._lost = None
        self.connected.set()
        await self.pull_offline()  # S9/S15: whatever waited while we were away

    async def _supervise(self) -> None:
        while not self._closing:
            conn = self._conn
            if conn is not None:
                await asyncio.shield(conn.closed)
            self.connected.clear()
            if self._closing or not self.auto_reconnect:
                return
            self._lost = (self.host, self.port)
            for attempt in range(1_000_000):
                if self._closing:
                    return
                await asyncio.sleep(self.retry.delay(min(attempt, 6)) + 0.05)
                self.reconnect_attempts += 1
                try:
                    await self._connect_once()
                    self.reconnects += 1
                    break
                except AuthFailed:
                    log.error("re-authentication refused; giving up", extra={"uid": self.uid})
                    return
                except (OSError, ConnectionClosed, asyncio.TimeoutError, ServerError):
                    continue

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closing = True
        self._flush_acks()
        for task in list(self._tasks) + ([self._supervisor] if self._supervisor else []):
            task.cancel()
        if self._conn is not None:
            self._conn.close()
            try:
                await asyncio.wait_for(asyncio.shield(self._conn.closed), 2)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass

    async def _live(self, timeout: float) -> ClientConnection:
        await asyncio.wait_for(self.connected.wait(), timeout)
        assert self._conn is not None
        return self._conn

    async def request(self, request_type: int, message: ProtoMessage | None = None, *, timeout: float = 10.0) -> ProtoMessage | None:
        conn = await self._live(timeout)
        return await conn.request(request_type, message, timeout=timeout)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                if self._conn is not None and self._conn.is_open:
                    await self._conn.request(RequestType.HEARTBEAT_REQ, timeout=self.heartbeat_s)
            except (ConnectionClosed, asyncio.TimeoutError, ServerError):
                if self._conn is not None:
                    self._conn.close()

    # ---- events from the server --------------------------------------------------------

    def _on_event(self, request_type: int, message: ProtoMessage | None) -> None:
        if request_type == RequestType.PUSH:
            assert isinstance(message, pb.Message)
            # Acked on receipt: from here the SDK holds it (a held message waits for its gap).
            self._offer(message, time.monotonic())
            self._ack(message.message_id)
        elif request_type == RequestType.SYNC:
            assert isinstance(message, pb.Sync)
            self.syncs.put_nowait(message)
            self.notices.put_nowait((request_type, message))
        elif request_type == RequestType.PULL_NOTIFY:
            self.notices.put_nowait((request_type, message))
            # Coalesced: a burst of notifies costs one pull in flight plus at most one after it.
            if not self._pull_queued:
                self._pull_queued = True
                self._spawn(self._pull_on_notify())
        elif request_type == RequestType.KICK:
            assert isinstance(message, pb.Kick)
            self.notices.put_nowait((request_type, message))
            if message.reconnect_host and message.reconnect_port:
                self._kick_target = (message.reconnect_host, message.reconnect_port)
        else:
            self.notices.put_nowait((request_type, message))

    def _deliver(self, messages: list[pb.Message]) -> None:
        for message in messages:
            self.inbox.put_nowait(message)

    def _offer(self, message: pb.Message, now: float) -> None:
        if self.timeline.seen(message.message_id):
            self.duplicates += 1
        self._deliver(self.timeline.offer(message, now))

    def _ack(self, message_id: int) -> None:
        self._pending_acks.append(message_id)
        if not self._ack_scheduled:
            self._ack_scheduled = True
            loop = asyncio.get_running_loop()
            if self.ack_delay_s > 0:
                loop.call_later(self.ack_delay_s, self._flush_acks)
            else:
                loop.call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_scheduled = False
        if not self._pending_acks or self._conn is None or not self._conn.is_open:
            return  # unacked messages stay offline on the server and come back on reconnect
        ids, self._pending_acks = self._pending_acks, []
        try:
            self._conn.write(RequestType.PUSH_ACK, pb.PushAck(message_ids=ids))
        except ConnectionClosed:
            self._pending_acks = ids + self._pending_acks  # they go with the next pull
            return
        self._unconfirmed.extend(ids)  # no answer comes: confirmed only by the next pull

    async def _pull_on_notify(self) -> None:
        async with self._pull_lock:
            self._pull_queued = False
            await self._pull_pages()

    async def pull_offline(self) -> int:
        async with self._pull_lock:
            return await self._pull_pages()

    async def _pull_pages(self) -> int:
        """Pulls every waiting message (paged), hands them over in order, acks them.

        The first page carries this device's resume position and the acks not yet confirmed
        (issue 11): the server moves the device's cursor before it reads the page."""
        conn = self._conn
        if conn is None:
            return 0
        acked = list(dict.fromkeys([*self._unconfirmed, *self._pending_acks]))
        self._pending_acks = []
        req = pb.PullOfflineRequest(cursor=0, limit=200, resume_cursor=self.resume_cursor, acked_ids=acked)
        cursor, total = 0, 0
        while True:
            try:
                resp = await conn.request(RequestType.PULL_OFFLINE_REQ, req)
            except BaseException:
                if acked:  # not confirmed: keep them for the next pull
                    self._unconfirmed.extend(a for a in acked if a not in self._unconfirmed)
                raise
            assert isinstance(resp, pb.PullOfflineResponse)
            if acked:
                confirmed = set(acked)
                self._unconfirmed = deque((a for a in self._unconfirmed if a not in confirmed), maxlen=UNCONFIRMED_ACKS)
                acked = []
            now = time.monotonic()
            ids = []
            for message in resp.messages:
                self._offer(message, now)
                ids.append(message.message_id)
            # everything up to next_cursor is on this device now (what the page did not hold,
            # the device had acked)
            self.resume_cursor = max(self.resume_cursor, resp.next_cursor, resp.device_cursor)
            total += len(ids)
            if not resp.has_more or resp.next_cursor == cursor:
                if ids:
                    conn.write(RequestType.PUSH_ACK, pb.PushAck(message_ids=ids))
                    self._unconfirmed.extend(ids)
                return total
            cursor = resp.next_cursor
            req = pb.PullOfflineRequest(cursor=cursor, limit=200, acked_ids=ids)  # this page's acks ride the next

    async def _gap_filler(self) -> None:
        """Orders what arrives out of order (see reorder.py): settles first-sight
        conversations, fills gaps from history with backoff, gives a gap up after a while."""
        while True:
            await asyncio.sleep(self.gap_wait_s / 4)
            now = time.monotonic()
            self._deliver(self.timeline.settle(now, after=self.first_wait_s))
            for conversation_id, after_seq, before_seq in self.timeline.gaps(now, after=self.gap_wait_s):
                try:
                    messages, _ = await self.history(conversation_id, after_seq=after_seq, before_seq=before_seq, limit=500)
                except (ServerError, ConnectionClosed, asyncio.TimeoutError):
                    continue
                now = time.monotonic()
                for message in messages:
                    fresh = not self.timeline.seen(message.message_id)
                    self._deliver(self.timeline.offer(message, now))
                    if fresh:
                        self._ack(message.message_id)  # it may wait in this device's timeline too
            self._deliver(self.timeline.expire(time.monotonic(), after=self.gap_give_up_s))

    async def messages(self) -> AsyncIterator[pb.Message]:
        while True:
            yield await self.inbox.get()

    async def receive(self, timeout: float = 10.0) -> pb.Message:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    # ---- requests ---------------------------------------------------------------------

    async def next_message_id(self) -> int:
        async with self._id_lock:
            if not self._ids:
                resp = await self.request(RequestType.ID_BATCH_REQ, pb.IdBatchRequest(count=self.id_batch))
                assert isinstance(resp, pb.IdBatchResponse)
                self._ids = list(resp.ids)[::-1]
            return self._ids.pop()

    async def send(
        self, to: str, content: bytes | str, *, type: int = SINGLE, content_type: int = 0, message_id: int | None = None
    ) -> pb.SendAck:
        if isinstance(content, str):
            content = content.encode()
        if message_id is None:
            message_id = await self.next_message_id()
        req = pb.SendRequest(
            message_id=message_id, type=type, to=to, content_type=content_type, content=content,
            client_time=int(time.time() * 1000),
        )
        return await self._acked(RequestType.SEND_REQ, req, message_id)

    async def _acked(self, request_type: int, req: ProtoMessage, message_id: int) -> pb.SendAck:
        """Sends until a SendAck says OK or DUPLICATE, with the same message_id every time
        (S15), then fills the seq's slot; raises SendFailed."""
        note_to_self = isinstance(req, pb.SendRequest) and req.type == SINGLE and req.to == self.uid
        if not note_to_self:  # a note to oneself is also received, like before
            self.timeline.expect_own(message_id)
        reason = "no attempt made"
        for attempt in range(self.retry.attempts):
            if attempt:
                await asyncio.sleep(self.retry.delay(attempt))
            try:
                ack = await self.request(request_type, req, timeout=self.retry.ack_timeout)
            except (ConnectionClosed, asyncio.TimeoutError, OSError) as exc:
                reason = f"no ack ({type_name(exc)})"
                continue
            except ServerError as exc:
                if is_retryable(exc.code):
                    reason = exc.message
                    continue
                raise SendFailed(message_id, f"{exc.code} {exc.message}") from exc
            assert isinstance(ack, pb.SendAck)
            if ack.code in (ErrorCode.OK, ErrorCode.DUPLICATE):
                if ack.seq:
                    self._deliver(self.timeline.own_sent(ack.conversation_id, ack.seq, message_id, time.monotonic()))
                return ack
            if is_retryable(ack.code):
                reason = ack.message
                continue
            raise SendFailed(message_id, f"{ack.code} {ack.message}")
        raise SendFailed(message_id, f"gave up after {self.retry.attempts} attempts: {reason}")

    # ---- recall, edit, delete for me (v1 extensions) -----------------------------------

    async def recall(self, conversation_id: str, seq: int, *, target_message_id: int = 0) -> pb.SendAck:
        """Recalls one of our messages (within the server's window: 410 after it)."""
        return await self._modify(pb.RECALL, conversation_id, seq, target_message_id)

    async def edit(
        self, conversation_id: str, seq: int, content: bytes | str, *, content_type: int = 0, target_message_id: int = 0
    ) -> pb.SendAck:
        if isinstance(content, str):
            content = content.encode()
        return await self._modify(pb.EDIT, conversation_id, seq, target_message_id, content=content, content_type=content_type)

    async def delete_for_me(self, conversation_id: str, seq: int, *, target_message_id: int = 0) -> pb.SendAck:
        """Hides a message (anyone's) from this user's own devices and history."""
        return await self._modify(pb.DELETE_FOR_ME, conversation_id, seq, target_message_id)

    async def _modify(
        self, kind: int, conversation_id: str, seq: int, target_message_id: int, *, content: bytes = b"", content_type: int = 0
    ) -> pb.SendAck:
        message_id = await self.next_message_id()
        req = pb.ModifyRequest(
            message_id=message_id, kind=kind, conversation_id=conversation_id, target_seq=seq,
            target_message_id=target_message_id, content=content, content_type=content_type,
        )
        return await self._acked(RequestType.MODIFY_REQ, req, message_id)

    async def history(
        self, conversation_id: str, *, after_seq: int = 0, before_seq: int = 0, limit: int = 50
    ) -> tuple[list[pb.Message], bool]:
        resp = await self.request(
            RequestType.PULL_HISTORY_REQ,
            pb.PullHistoryRequest(conversation_id=conversation_id, after_seq=after_seq, before_seq=before_seq, limit=limit),
        )
        assert isinstance(resp, pb.PullHistoryResponse)
        return list(resp.messages), resp.has_more

    async def read_report(self, conversation_id: str, seq: int) -> None:
        await self.request(RequestType.READ_REPORT, pb.ReadReport(conversation_id=conversation_id, seq=seq))

    async def read_status(self, conversation_id: str, after_seq: int = 0) -> list[pb.ReadState]:
        resp = await self.request(RequestType.READ_STATUS_REQ, pb.ReadStatusRequest(conversation_id=conversation_id, after_seq=after_seq))
        assert isinstance(resp, pb.ReadStatusResponse)
        return list(resp.states)

    async def watch_read_status(
        self, conversation_id: str, after_seq: int = 0, *, first_delay: float = 2.0, max_delay: float = 64.0, rounds: int = 8
    ) -> AsyncIterator[list[pb.ReadState]]:
        """S13: polls read state with backoff (2 s, 4 s, 8 s, ...), never a push storm."""
        delay = first_delay
        for _ in range(rounds):
            await asyncio.sleep(delay)
            yield await self.read_status(conversation_id, after_seq)
            delay = min(delay * 2, max_delay)

    async def unread(self) -> tuple[int, dict[str, int]]:
        resp = await self.request(RequestType.UNREAD_REQ)
        assert isinstance(resp, pb.UnreadResponse)
        return resp.total, {c.conversation_id: c.count for c in resp.conversations}


def type_name(exc: BaseException) -> str:
    return type(exc).__name__
