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
  position, so the derivation stays exact. Read positions are per user, so reading on one
  device clears unread on all; the user's other devices that asked for it get a SYNC notice.
- several devices per user (S18): every request names its device; the timeline keeps one
  cursor per device (storage OfflineStore). Sender sync: a message also goes into the
  sender's own timeline, held by the sending device, and is pushed to the sender's other
  devices (never back to the one that sent it).
- recall / edit (sender) are events of the conversation with their own seq, delivered like
  messages; the stored original is revised so history shows the current content (or the
  recall tombstone). Delete for me is the deleter's own state (hidden store), shown as a
  tombstone in that user's history and pulls, and a SYNC notice to their other devices; it
  takes no conversation seq, which would raise every other member's unread count for
  something they must never see.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from google.protobuf.message import Message as ProtoMessage

from im_runtime import metrics
from im_runtime.idgen import IdGenerator
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import encode_frame, encode_message
from im_runtime.dispatch.queries import fit, history, membership, refusal, tombstones
from im_runtime.protocol.types import (
    FEATURE_SYNC,
    ErrorCode,
    RequestType,
    group_conversation,
    parse_conversation,
    single_conversation,
    valid_uid,
)
from im_runtime.storage.interfaces import SendState, Stores

log = logging.getLogger(__name__)

NOTIFY_THRESHOLD = 5
MAX_PULL_LIMIT = 500
DEFAULT_PULL_LIMIT = 100
MAX_ID_BATCH = 1000
DEFAULT_ID_BATCH = 100
MAX_READ_STATES = 500
MAX_PULL_ACKS = 4000  # PullOfflineRequest.acked_ids: 4,000 ids fit a 64 KiB body with room to spare


class Pusher(Protocol):
    """Delivers one already-encoded frame (server sequence 0) to every connection of uids.

    skip_device: not to the connections of that device id (sender sync; "" is a device id).
    feature: only to connections that listed it in AuthRequest.features (extension frames).
    offline: the message to announce (offline push webhook) for uids with no connection."""

    async def deliver(
        self, uids: list[str], frame: bytes, *, skip_device: str | None = None, feature: str = "",
        offline: pb.Message | None = None,
    ) -> None: ...


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
        recall_window_s: float = 120.0,
    ) -> None:
        self.stores = stores
        self.ids = ids
        self.pusher = pusher
        self.notify_threshold = notify_threshold
        self.max_content = max_content
        self.recall_window_s = recall_window_s
        self._handlers = {
            RequestType.SEND_REQ: self._send,
            RequestType.PUSH_ACK: self._push_ack,
            RequestType.PULL_OFFLINE_REQ: self._pull_offline,
            RequestType.PULL_HISTORY_REQ: self._pull_history,
            RequestType.READ_REPORT: self._read_report,
            RequestType.READ_STATUS_REQ: self._read_status,
            RequestType.UNREAD_REQ: self._unread,
            RequestType.ID_BATCH_REQ: self._id_batch,
            RequestType.MODIFY_REQ: self._modify,
        }

    async def handle(
        self, uid: str, request_type: int, message: ProtoMessage | None, *, device: str = ""
    ) -> Response | None:
        """The response to one request of uid's device, or None when the request has none
        (PUSH_ACK)."""
        handler = self._handlers.get(request_type)
        if handler is None:
            return error(ErrorCode.NOT_FOUND, f"unknown request type {request_type}")
        try:
            return await handler(uid, message, device)
        except Exception:
            log.exception("request failed", extra={"uid": uid, "request_type": request_type})
            return error(ErrorCode.UNAVAILABLE, "temporarily unavailable, retry")

    # ---- send ---------------------------------------------------------------------------

    async def _send(self, uid: str, req: pb.SendRequest, device: str) -> Response:
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
            pending, sync = await self._finish(message, body, recipients, ack, uid, device)
        except Exception:
            try:  # its lease ends now: the client's retry resumes the same seq at once
                await steps.abort(conversation_id, uid, message_id)
            except Exception:  # noqa: BLE001 - the lease runs out by itself
                log.warning("could not end the lease of a failed send", exc_info=True)
            raise
        await self._fan_out(message, body, recipients, pending, uid, device, sync)
        hot = metrics.HOT
        if kind == pb.GROUP:
            hot.messages_in_group += 1
        else:
            hot.messages_in_single += 1
        hot.observe_send(time.perf_counter() - started)
        return RequestType.SEND_ACK, ack

    async def _finish(
        self, message: pb.Message, body: bytes, recipients: list[str], ack: pb.SendAck, sender: str, device: str
    ) -> tuple[list[int], bool]:
        """The send's last store step (S10: every receiver's timeline holds the message before
        the ack) and, beside it in the same round trip, sender sync (S18): the sender's own
        timeline, held by the sending device. A chat with oneself is one timeline entry for
        every device (the sender is its own receiver). Returns the receivers' pending counts
        and whether the sender's other devices get a push."""
        steps = self.stores.steps
        if sender in recipients:
            return await steps.finish(message, body, recipients, ack), False
        pending, _ = await asyncio.gather(
            steps.finish(message, body, recipients, ack), self.stores.offline.add(sender, message, holder=device)
        )
        return pending, True

    async def _fan_out(
        self, message: pb.Message, body: bytes, recipients: list[str], pending: list[int], sender: str, device: str, sync: bool
    ) -> None:
        """One push, or a notify once a receiver has more than `notify_threshold` pending
        (S11); every receiver's timeline already holds the message (write diffusion, S10).
        With `sync`, the sender's other devices get the push too."""
        push_to: list[str] = []
        metrics.HOT.offline_writes += len(recipients)
        threshold = self.notify_threshold
        for uid, waiting in zip(recipients, pending):
            if waiting > threshold:
                notify = pb.PullNotify(conversation_id=message.conversation_id, latest_seq=message.seq, pending=waiting)
                await self.pusher.deliver([uid], encode_message(RequestType.PULL_NOTIFY, 0, notify), offline=message)
                metrics.HOT.pull_notifies += 1
            else:
                push_to.append(uid)
        frame = encode_frame(RequestType.PUSH, 0, body) if push_to or sync else b""
        if push_to:
            await self.pusher.deliver(push_to, frame, offline=message)
            metrics.HOT.messages_out += len(push_to)
        if sync:
            await self.pusher.deliver([sender], frame, skip_device=device)

    # ---- offline, history ---------------------------------------------------------------

    async def _push_ack(self, uid: str, req: pb.PushAck, device: str) -> None:
        metrics.HOT.acks += await self.stores.offline.ack(uid, req.message_ids, device=device)
        return None

    async def _pull_offline(self, uid: str, req: pb.PullOfflineRequest, device: str) -> Response:
        """Pages by the device's cursor (S18). The v1 `cursor` pages within one pull; the
        extension fields move the device's own cursor first (issue 11: a reconnecting device
        says what it has, so acks lost with a dead access node are not re-delivered)."""
        if req.limit < 0 or req.cursor < 0 or req.resume_cursor < 0:
            return error(ErrorCode.BAD_BODY, "cursor and limit must not be negative")
        if len(req.acked_ids) > MAX_PULL_ACKS:
            return error(ErrorCode.BAD_BODY, f"at most {MAX_PULL_ACKS} acked_ids")
        limit = min(req.limit or DEFAULT_PULL_LIMIT, MAX_PULL_LIMIT)
        offline = self.stores.offline
        page = await offline.pull(
            uid, req.cursor, limit, device=device, resume_cursor=req.resume_cursor, acked_ids=req.acked_ids
        )
        if req.acked_ids:
            metrics.HOT.acks += len(req.acked_ids)
        fitting, trimmed = fit(page.messages, keep_newest=False)
        if trimmed:  # re-read the shorter page so the store names its cursor
            page = await offline.pull(uid, req.cursor, len(fitting), device=device)
        messages = await tombstones(self.stores, uid, page.messages)
        return RequestType.PULL_OFFLINE_RESP, pb.PullOfflineResponse(
            messages=messages, has_more=page.has_more or trimmed, next_cursor=page.next_cursor,
            device_cursor=page.device_cursor,
        )

    async def _pull_history(self, uid: str, req: pb.PullHistoryRequest, device: str) -> Response:
        verdict = await membership(self.stores, uid, req.conversation_id)
        if verdict is not ErrorCode.OK:
            return error(verdict, refusal(verdict, req.conversation_id))
        if req.limit < 0:
            return error(ErrorCode.BAD_BODY, "limit must not be negative")
        messages, has_more = await history(
            self.stores, req.conversation_id, after_seq=req.after_seq, before_seq=req.before_seq, limit=req.limit,
            viewer=uid,
        )
        return RequestType.PULL_HISTORY_RESP, pb.PullHistoryResponse(messages=messages, has_more=has_more)

    # ---- read state ---------------------------------------------------------------------

    async def _read_report(self, uid: str, req: pb.ReadReport, device: str) -> Response:
        verdict = await membership(self.stores, uid, req.conversation_id)
        if verdict is not ErrorCode.OK:
            return error(verdict, refusal(verdict, req.conversation_id))
        latest = (await self.stores.sequences.latest_seqs([req.conversation_id]))[req.conversation_id]
        position = await self.stores.reads.advance(uid, req.conversation_id, min(req.seq, latest))
        # one position per user: the other devices' unread is cleared too; tell those online
        sync = pb.Sync(conversation_id=req.conversation_id, read_seq=position)
        await self.pusher.deliver(
            [uid], encode_message(RequestType.SYNC, 0, sync), skip_device=device, feature=FEATURE_SYNC
        )
        return RequestType.READ_REPORT_ACK, None

    async def _read_status(self, uid: str, req: pb.ReadStatusRequest, device: str) -> Response:
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
            if getattr(message, "from") != uid or message.event.kind:
                continue
            read_by = sorted(u for u, seq in positions.items() if seq >= message.seq and u != uid)
            states.append(
                pb.ReadState(message_id=message.message_id, seq=message.seq, read_count=len(read_by), read_by=read_by)
            )
            if len(states) >= MAX_READ_STATES:
                break
        return RequestType.READ_STATUS_RESP, pb.ReadStatusResponse(states=states)

    async def _unread(self, uid: str, _req: None, device: str) -> Response:
        positions = await self.stores.reads.conversations(uid)
        latest = await self.stores.sequences.latest_seqs(positions)
        counts = [
            pb.UnreadCount(conversation_id=conv, count=latest[conv] - read)
            for conv, read in sorted(positions.items())
            if latest.get(conv, 0) > read
        ]
        return RequestType.UNREAD_RESP, pb.UnreadResponse(total=sum(c.count for c in counts), conversations=counts)

    async def _id_batch(self, uid: str, req: pb.IdBatchRequest, device: str) -> Response:
        if req.count < 0:
            return error(ErrorCode.BAD_BODY, "count must not be negative")
        count = min(req.count or DEFAULT_ID_BATCH, MAX_ID_BATCH)
        return RequestType.ID_BATCH_RESP, pb.IdBatchResponse(ids=await self.ids.next_ids(count))

    # ---- recall, edit, delete for me ----------------------------------------------------

    async def _modify(self, uid: str, req: pb.ModifyRequest, device: str) -> Response:
        kind, conversation_id = req.kind, req.conversation_id
        if req.message_id <= 0:
            return _refuse(req.message_id, ErrorCode.BAD_BODY, "message_id must be a positive id from ID_BATCH_REQ")
        if kind not in (pb.RECALL, pb.EDIT, pb.DELETE_FOR_ME):
            return _refuse(req.message_id, ErrorCode.BAD_BODY, "kind must be RECALL, EDIT or DELETE_FOR_ME")
        if kind == pb.EDIT and len(req.content) > self.max_content:
            return _refuse(req.message_id, ErrorCode.FRAME_TOO_LARGE, f"content over {self.max_content} bytes")
        verdict = await membership(self.stores, uid, conversation_id)
        if verdict is not ErrorCode.OK:
            return _refuse(req.message_id, verdict, refusal(verdict, conversation_id))
        target = await self.stores.messages.get(conversation_id, req.target_seq) if req.target_seq > 0 else None
        if (
            target is None
            or target.event.kind
            or (req.target_message_id and target.message_id != req.target_message_id)
        ):
            return _refuse(req.message_id, ErrorCode.NOT_FOUND, "unknown message")
        if kind == pb.DELETE_FOR_ME:
            return await self._delete_for_me(uid, device, req, target)
        if getattr(target, "from") != uid:
            return _refuse(req.message_id, ErrorCode.FORBIDDEN, "not your message")
        if target.status == pb.RECALLED:
            return _refuse(req.message_id, ErrorCode.NOT_FOUND, "unknown message: it was recalled")
        if kind == pb.RECALL and time.time() * 1000 - target.server_time > self.recall_window_s * 1000:
            return _refuse(req.message_id, ErrorCode.GONE, f"the recall window ({self.recall_window_s:g} s) has passed")
        recipients = await self._recipients(uid, conversation_id)
        if recipients is None:
            return _refuse(req.message_id, ErrorCode.NOT_FOUND, "unknown conversation")

        stores = self.stores
        steps = stores.steps
        begun = await steps.begin(conversation_id, uid, req.message_id, recipients)  # an event is a send (S12)
        if begun.state is SendState.DONE:
            ack = pb.SendAck()
            ack.CopyFrom(begun.ack)
            ack.code, ack.message = ErrorCode.DUPLICATE, "duplicate: already accepted"
            return RequestType.SEND_ACK, ack
        if begun.state is SendState.PENDING:
            return _refuse(req.message_id, ErrorCode.UNAVAILABLE, "the same event is being sent; retry")
        try:
            event = pb.Message(**{"from": uid})
            event.message_id = req.message_id
            event.conversation_id = conversation_id
            event.seq = begun.seq
            event.type = target.type
            event.to = target.to
            event.server_time = begun.server_time
            event.event.kind = kind
            event.event.target_seq = target.seq
            event.event.target_message_id = target.message_id
            if kind == pb.EDIT:
                event.content_type, event.content = req.content_type, req.content
            body = event.SerializeToString()
            await stores.messages.save(event, body)
            revised = await stores.messages.revise(conversation_id, target.seq, _revision(event))
            if revised is not None:  # offline copies not yet read show the current content too
                await asyncio.gather(*(stores.offline.revise(u, revised) for u in [*recipients, uid]))
            ack = pb.SendAck(message_id=req.message_id, conversation_id=conversation_id, seq=begun.seq, server_time=event.server_time)
            pending, sync = await self._finish(event, body, recipients, ack, uid, device)
        except Exception:
            try:
                await steps.abort(conversation_id, uid, req.message_id)
            except Exception:  # noqa: BLE001 - the lease runs out by itself
                log.warning("could not end the lease of a failed event", exc_info=True)
            raise
        await self._fan_out(event, body, recipients, pending, uid, device, sync)
        return RequestType.SEND_ACK, ack

    async def _delete_for_me(self, uid: str, device: str, req: pb.ModifyRequest, target: pb.Message) -> Response:
        await self.stores.hidden.hide(uid, target.conversation_id, [target.seq])
        sync = pb.Sync(conversation_id=target.conversation_id, deleted_seqs=[target.seq])
        await self.pusher.deliver([uid], encode_message(RequestType.SYNC, 0, sync), skip_device=device, feature=FEATURE_SYNC)
        return RequestType.SEND_ACK, pb.SendAck(
            message_id=req.message_id, conversation_id=target.conversation_id, seq=0, server_time=int(time.time() * 1000)
        )

    async def _recipients(self, uid: str, conversation_id: str) -> list[str] | None:
        """Who receives an event of the conversation: the peer, or the group's other members."""
        parsed = parse_conversation(conversation_id)
        if parsed is None:
            return None
        kind, parts = parsed
        if kind == pb.SINGLE:
            return [p for p in dict.fromkeys(parts) if p != uid] or [uid]
        members = await self.stores.groups.members(parts[0])
        return None if members is None else [m for m in members if m != uid]


def _revision(event: pb.Message):  # type: ignore[no-untyped-def]
    """What a recall or edit event does to the stored original (MessageStore.revise): a recall
    is final and empties it; an edit applies unless recalled or overtaken by a later edit."""

    def change(stored: pb.Message) -> pb.Message | None:
        if stored.status == pb.RECALLED or stored.revision_seq > event.seq:
            return None
        revised = pb.Message()
        revised.CopyFrom(stored)
        revised.revision_seq = event.seq
        if event.event.kind == pb.RECALL:
            revised.status = pb.RECALLED
            revised.content = b""
            revised.content_type = 0
        else:
            revised.status = pb.EDITED
            revised.content = event.content
            revised.content_type = event.content_type
        return revised

    return change


def _refuse(message_id: int, code: ErrorCode, text: str) -> Response:
    return RequestType.SEND_ACK, pb.SendAck(code=int(code), message=text, message_id=message_id)
