"""Dispatch: what happens to a client request once the access node has authenticated it.

Transport-agnostic: the access node (all-in-one) or a dispatch link (cluster mode) hands in
(uid, request type, decoded body) and gets back the response type and message. Pushes leave
through a `Pusher`, which either writes to local connections or forwards to access nodes.

Guarantees and where they come from:
- seq strictly increasing per conversation (S11, S12): `SequenceStore.next_seq` is atomic in
  every engine; pushes carry it and clients order by it (concurrent sends of one
  conversation may leave a node a little out of order).
- no loss (S15): the message is persisted and written into every receiver's offline queue
  *before* the sender is acked and before the push; the queue entry goes only on PUSH_ACK.
- idempotent send (S12): (sender, message_id) claimed together with the seq (SendSteps.begin);
  a re-send gets the original ack with code DUPLICATE and is not delivered again; a retry of
  a send whose node died resumes it with the same seq, so seqs stay without holes.
- pull notification (S11): a receiver with more than `notify_threshold` pending messages in
  the conversation gets PULL_NOTIFY instead of the message.
- unread (S14) is derived (latest seq - read seq); a sender's own send moves its read
  position, so the derivation stays exact.
"""
from __future__ import annotations

import logging
import time
from typing import Protocol

from google.protobuf.message import Message as ProtoMessage

from im_runtime import metrics
from im_runtime.idgen import IdGenerator
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import encode_frame, encode_message
from im_runtime.dispatch.queries import fit, history, membership, refusal
from im_runtime.protocol.types import ErrorCode, RequestType, group_conversation, single_conversation, valid_uid
from im_runtime.storage.interfaces import SendState, Stores

log = logging.getLogger(__name__)

NOTIFY_THRESHOLD = 5
MAX_PULL_LIMIT = 500
DEFAULT_PULL_LIMIT = 100
MAX_ID_BATCH = 1000
DEFAULT_ID_BATCH = 100
MAX_READ_STATES = 500


class Pusher(Protocol):
    """Delivers one already-encoded frame (server sequence 0) to every connection of uids."""

    async def deliver(self, uids: list[str], frame: bytes) -> None: ...


Response = tuple[int, ProtoMessage | None]


def error(code: ErrorCode, message: str) -> Response:
    return RequestType.ERROR, pb.Error(code=int(code), message=message)


class DispatchService:
    def __init__(
        self,
        stores: Stores,
        ids: IdGenerator,
        pusher: Pusher,
        *,
        notify_threshold: int = NOTIFY_THRESHOLD,
        max_content: int = 60_000,
    ) -> None:
        self.stores = stores
        self.ids = ids
        self.pusher = pusher
        self.notify_threshold = notify_threshold
        self.max_content = max_content
        self._handlers = {
            RequestType.SEND_REQ: self._send,
            RequestType.PUSH_ACK: self._push_ack,
            RequestType.PULL_OFFLINE_REQ: self._pull_offline,
            RequestType.PULL_HISTORY_REQ: self._pull_history,
            RequestType.READ_REPORT: self._read_report,
            RequestType.READ_STATUS_REQ: self._read_status,
            RequestType.UNREAD_REQ: self._unread,
            RequestType.ID_BATCH_REQ: self._id_batch,
        }

    async def handle(self, uid: str, request_type: int, message: ProtoMessage | None) -> Response | None:
        """The response to one request, or None when the request has none (PUSH_ACK)."""
        handler = self._handlers.get(request_type)
        if handler is None:
            return error(ErrorCode.NOT_FOUND, f"unknown request type {request_type}")
        try:
            return await handler(uid, message)
        except Exception:
            log.exception("request failed", extra={"uid": uid, "request_type": request_type})
            return error(ErrorCode.UNAVAILABLE, "temporarily unavailable, retry")

    # ---- send ---------------------------------------------------------------------------

    async def _send(self, uid: str, req: pb.SendRequest) -> Response:
        started = time.perf_counter()
        # each field read once: attribute access on upb messages is a measurable cost per send
        message_id, kind, to, content = req.message_id, req.type, req.to, req.content
        if message_id <= 0:
            return _refuse(message_id, ErrorCode.BAD_BODY, "message_id must be a positive id from ID_BATCH_REQ")
        if len(content) > self.max_content:
            return _refuse(message_id, ErrorCode.FRAME_TOO_LARGE, f"content over {self.max_content} bytes")
        if kind == pb.SINGLE:
            if not valid_uid(to):
                return _refuse(message_id, ErrorCode.BAD_BODY, "to must be a valid uid")
            conversation_id = single_conversation(uid, to)
            recipients = [to]
        elif kind == pb.GROUP:
            if not to:
                return _refuse(message_id, ErrorCode.BAD_BODY, "to must be a group id")
            members = await self.stores.groups.members(to)
            if members is None:
                return _refuse(message_id, ErrorCode.NOT_FOUND, f"unknown group {to}")
            if uid not in members:
                return _refuse(message_id, ErrorCode.FORBIDDEN, "not a member of the group")
            conversation_id = group_conversation(to)
            recipients = [m for m in members if m != uid]
        else:
            return _refuse(message_id, ErrorCode.BAD_BODY, "type must be SINGLE or GROUP")

        stores = self.stores
        steps = stores.steps
        # The de-dup claim and the seq in one step (S12, S11): a retry of a send whose node
        # died gets the same seq back, so no seq is left without its message.
        begun = await steps.begin(conversation_id, uid, message_id, recipients)
        state = begun.state
        if state is SendState.DONE:
            metrics.HOT.duplicates += 1
            ack = pb.SendAck()
            ack.CopyFrom(begun.ack)
            ack.code = ErrorCode.DUPLICATE
            ack.message = "duplicate: already accepted"
            return RequestType.SEND_ACK, ack
        if state is SendState.PENDING:
            return _refuse(message_id, ErrorCode.UNAVAILABLE, "the same message is being sent; retry")
        seq = begun.seq
        try:
            # No lock per conversation: the seq is atomic in every store, and holding a lock
            # across the store round trips below capped a conversation at one send per
            # round-trip time on Redis/MongoDB. Pushes of one conversation may therefore
            # leave out of seq order under concurrency; clients order by seq (S12).
            # attribute assignment: several times cheaper than keyword construction in upb
            message = pb.Message(**{"from": uid})
            message.message_id = message_id
            message.conversation_id = conversation_id
            message.seq = seq
            message.type = kind
            message.to = to
            message.content_type = req.content_type
            message.content = content
            message.server_time = begun.server_time
            body = message.SerializeToString()  # once: the store, the offline queues and the push share it
            await stores.messages.save(message, body)  # S11: persisted before the ack
            ack = pb.SendAck()
            ack.message_id = message_id
            ack.conversation_id = conversation_id
            ack.seq = seq
            ack.server_time = message.server_time
            pending = await steps.finish(message, body, recipients, ack)  # S10: queued before the ack
        except Exception:
            try:  # its lease ends now: the client's retry resumes the same seq at once
                await steps.abort(conversation_id, uid, message_id)
            except Exception:  # noqa: BLE001 - the lease runs out by itself
                log.warning("could not end the lease of a failed send", exc_info=True)
            raise
        await self._fan_out(message, body, recipients, pending)
        hot = metrics.HOT
        if kind == pb.GROUP:
            hot.messages_in_group += 1
        else:
            hot.messages_in_single += 1
        hot.observe_send(time.perf_counter() - started)
        return RequestType.SEND_ACK, ack

    async def _fan_out(self, message: pb.Message, body: bytes, recipients: list[str], pending: list[int]) -> None:
        """One push, or a notify once a receiver has more than `notify_threshold` pending
        (S11); every receiver's queue already holds the message (write diffusion, S10)."""
        push_to: list[str] = []
        metrics.HOT.offline_writes += len(recipients)
        threshold = self.notify_threshold
        for uid, waiting in zip(recipients, pending):
            if waiting > threshold:
                notify = pb.PullNotify(conversation_id=message.conversation_id, latest_seq=message.seq, pending=waiting)
                await self.pusher.deliver([uid], encode_message(RequestType.PULL_NOTIFY, 0, notify))
                metrics.HOT.pull_notifies += 1
            else:
                push_to.append(uid)
        if push_to:
            await self.pusher.deliver(push_to, encode_frame(RequestType.PUSH, 0, body))
            metrics.HOT.messages_out += len(push_to)

    # ---- offline, history ---------------------------------------------------------------

    async def _push_ack(self, uid: str, req: pb.PushAck) -> None:
        removed = await self.stores.offline.ack(uid, req.message_ids)
        metrics.HOT.acks += removed
        return None

    async def _pull_offline(self, uid: str, req: pb.PullOfflineRequest) -> Response:
        if req.limit < 0 or req.cursor < 0:
            return error(ErrorCode.BAD_BODY, "cursor and limit must not be negative")
        limit = min(req.limit or DEFAULT_PULL_LIMIT, MAX_PULL_LIMIT)
        messages, has_more, next_cursor = await self.stores.offline.pull(uid, req.cursor, limit)
        fitting, trimmed = fit(messages, keep_newest=False)
        if trimmed:  # re-read the shorter page so the store names its cursor
            messages, has_more, next_cursor = await self.stores.offline.pull(uid, req.cursor, len(fitting))
            has_more = True
        return RequestType.PULL_OFFLINE_RESP, pb.PullOfflineResponse(
            messages=messages, has_more=has_more, next_cursor=next_cursor
        )

    async def _pull_history(self, uid: str, req: pb.PullHistoryRequest) -> Response:
        verdict = await membership(self.stores, uid, req.conversation_id)
        if verdict is not ErrorCode.OK:
            return error(verdict, refusal(verdict, req.conversation_id))
        if req.limit < 0:
            return error(ErrorCode.BAD_BODY, "limit must not be negative")
        messages, has_more = await history(
            self.stores, req.conversation_id, after_seq=req.after_seq, before_seq=req.before_seq, limit=req.limit
        )
        return RequestType.PULL_HISTORY_RESP, pb.PullHistoryResponse(messages=messages, has_more=has_more)

    # ---- read state ---------------------------------------------------------------------

    async def _read_report(self, uid: str, req: pb.ReadReport) -> Response:
        verdict = await membership(self.stores, uid, req.conversation_id)
        if verdict is not ErrorCode.OK:
            return error(verdict, refusal(verdict, req.conversation_id))
        latest = (await self.stores.sequences.latest_seqs([req.conversation_id]))[req.conversation_id]
        await self.stores.reads.advance(uid, req.conversation_id, min(req.seq, latest))
        return RequestType.READ_REPORT_ACK, None

    async def _read_status(self, uid: str, req: pb.ReadStatusRequest) -> Response:
        """Read state of the caller's own messages after after_seq (S13: pulled, not pushed)."""
        verdict = await membership(self.stores, uid, req.conversation_id)
        if verdict is not ErrorCode.OK:
            return error(verdict, refusal(verdict, req.conversation_id))
        messages, _ = await self.stores.messages.range(
            req.conversation_id, after_seq=req.after_seq, limit=MAX_READ_STATES * 4
        )
        positions = await self.stores.reads.positions(req.conversation_id)
        states = []
        for message in messages:
            if getattr(message, "from") != uid:
                continue
            read_by = sorted(u for u, seq in positions.items() if seq >= message.seq and u != uid)
            states.append(
                pb.ReadState(message_id=message.message_id, seq=message.seq, read_count=len(read_by), read_by=read_by)
            )
            if len(states) >= MAX_READ_STATES:
                break
        return RequestType.READ_STATUS_RESP, pb.ReadStatusResponse(states=states)

    async def _unread(self, uid: str, _req: None) -> Response:
        positions = await self.stores.reads.conversations(uid)
        latest = await self.stores.sequences.latest_seqs(positions)
        counts = [
            pb.UnreadCount(conversation_id=conv, count=latest[conv] - read)
            for conv, read in sorted(positions.items())
            if latest.get(conv, 0) > read
        ]
        return RequestType.UNREAD_RESP, pb.UnreadResponse(total=sum(c.count for c in counts), conversations=counts)

    async def _id_batch(self, uid: str, req: pb.IdBatchRequest) -> Response:
        if req.count < 0:
            return error(ErrorCode.BAD_BODY, "count must not be negative")
        count = min(req.count or DEFAULT_ID_BATCH, MAX_ID_BATCH)
        return RequestType.ID_BATCH_RESP, pb.IdBatchResponse(ids=await self.ids.next_ids(count))


def _refuse(message_id: int, code: ErrorCode, text: str) -> Response:
    return RequestType.SEND_ACK, pb.SendAck(code=int(code), message=text, message_id=message_id)
