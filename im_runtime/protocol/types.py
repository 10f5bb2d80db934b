"""Request types, error codes and the body message of each type (PROTOCOL.md, S7).

Kept as data so the codec, the gateways and the SDK read one table instead of repeating
if-chains. Types 100..119 are internal to the access <-> dispatch link (docs/protocol.md).
"""
from __future__ import annotations

import enum
import re
from typing import NewType

from google.protobuf.message import Message as ProtoMessage

from im_runtime.proto import imstack_pb2 as pb

UserId = NewType("UserId", str)
ConversationId = NewType("ConversationId", str)
GroupId = NewType("GroupId", str)
Seq = NewType("Seq", int)
MessageId = NewType("MessageId", int)

HEAD_LENGTH = 20
# content_type of a gap marker (docs/protocol.md): a seq handed out that carries no message.
GAP_CONTENT_TYPE = -1
DEFAULT_MAX_BODY = 65_536
PROTOCOL_VERSION = 1


class RequestType(enum.IntEnum):
    AUTH_REQ = 1
    AUTH_RESP = 2
    HEARTBEAT_REQ = 3
    HEARTBEAT_RESP = 4
    SEND_REQ = 10
    SEND_ACK = 11
    PUSH = 12
    PUSH_ACK = 13
    PULL_OFFLINE_REQ = 20
    PULL_OFFLINE_RESP = 21
    PULL_NOTIFY = 22
    PULL_HISTORY_REQ = 23
    PULL_HISTORY_RESP = 24
    READ_REPORT = 30
    READ_REPORT_ACK = 31
    READ_STATUS_REQ = 32
    READ_STATUS_RESP = 33
    UNREAD_REQ = 34
    UNREAD_RESP = 35
    ID_BATCH_REQ = 40
    ID_BATCH_RESP = 41
    # v1 extensions (docs/protocol.md)
    SYNC = 36
    MODIFY_REQ = 50
    KICK = 90
    ERROR = 99
    # internal link types (never accepted from clients)
    LINK_REGISTER = 100
    LINK_REGISTER_ACK = 101
    LINK_HEARTBEAT = 102
    LINK_HEARTBEAT_RESP = 103
    FORWARD = 110
    FORWARD_RESP = 111
    DELIVER = 112
    SESSION_CHANGED = 113
    REBIND = 114


class ErrorCode(enum.IntEnum):
    OK = 0
    BAD_BODY = 400
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404  # UNKNOWN_TYPE and unknown group share 404
    DUPLICATE = 409
    FRAME_TOO_LARGE = 413
    BAD_FRAME = 422
    GONE = 410  # v1 extension: the recall window has passed
    RATE_LIMITED = 429
    UNAVAILABLE = 503


# Body message of each request type; None means the body is empty.
BODY_TYPES: dict[int, type[ProtoMessage] | None] = {
    RequestType.AUTH_REQ: pb.AuthRequest,
    RequestType.AUTH_RESP: pb.AuthResponse,
    RequestType.HEARTBEAT_REQ: None,
    RequestType.HEARTBEAT_RESP: None,
    RequestType.SEND_REQ: pb.SendRequest,
    RequestType.SEND_ACK: pb.SendAck,
    RequestType.PUSH: pb.Message,
    RequestType.PUSH_ACK: pb.PushAck,
    RequestType.PULL_OFFLINE_REQ: pb.PullOfflineRequest,
    RequestType.PULL_OFFLINE_RESP: pb.PullOfflineResponse,
    RequestType.PULL_NOTIFY: pb.PullNotify,
    RequestType.PULL_HISTORY_REQ: pb.PullHistoryRequest,
    RequestType.PULL_HISTORY_RESP: pb.PullHistoryResponse,
    RequestType.READ_REPORT: pb.ReadReport,
    RequestType.READ_REPORT_ACK: None,
    RequestType.READ_STATUS_REQ: pb.ReadStatusRequest,
    RequestType.READ_STATUS_RESP: pb.ReadStatusResponse,
    RequestType.UNREAD_REQ: None,
    RequestType.UNREAD_RESP: pb.UnreadResponse,
    RequestType.ID_BATCH_REQ: pb.IdBatchRequest,
    RequestType.ID_BATCH_RESP: pb.IdBatchResponse,
    RequestType.KICK: pb.Kick,
    RequestType.ERROR: pb.Error,
    RequestType.SYNC: pb.Sync,
    RequestType.MODIFY_REQ: pb.ModifyRequest,
    RequestType.LINK_REGISTER: pb.LinkRegister,
    RequestType.LINK_REGISTER_ACK: None,
    RequestType.LINK_HEARTBEAT: None,
    RequestType.LINK_HEARTBEAT_RESP: None,
    RequestType.FORWARD: pb.Forward,
    RequestType.FORWARD_RESP: pb.ForwardResponse,
    RequestType.DELIVER: pb.Deliver,
    RequestType.SESSION_CHANGED: pb.SessionChanged,
    RequestType.REBIND: pb.Rebind,
}

# What a client may send; the answer type of each request.
CLIENT_REQUESTS: dict[int, int | None] = {
    RequestType.AUTH_REQ: RequestType.AUTH_RESP,
    RequestType.HEARTBEAT_REQ: RequestType.HEARTBEAT_RESP,
    RequestType.SEND_REQ: RequestType.SEND_ACK,
    RequestType.PUSH_ACK: None,
    RequestType.PULL_OFFLINE_REQ: RequestType.PULL_OFFLINE_RESP,
    RequestType.PULL_HISTORY_REQ: RequestType.PULL_HISTORY_RESP,
    RequestType.READ_REPORT: RequestType.READ_REPORT_ACK,
    RequestType.READ_STATUS_REQ: RequestType.READ_STATUS_RESP,
    RequestType.UNREAD_REQ: RequestType.UNREAD_RESP,
    RequestType.ID_BATCH_REQ: RequestType.ID_BATCH_RESP,
    RequestType.MODIFY_REQ: RequestType.SEND_ACK,
}

# Server-initiated types of the v1 extensions: sent only to connections that asked for them
# in AuthRequest.features, so a client written from PROTOCOL.md alone never sees one.
FEATURE_SYNC = "sync"



UID_PATTERN = re.compile(r"[A-Za-z0-9_.@\-]{1,128}")
_VALID_UIDS: dict[str, None] = {}  # uids already checked (bounded): a send checks its peer
_VALID_UIDS_LIMIT = 100_000


def valid_uid(uid: str) -> bool:
    """Uids (and group ids) are 1..128 of [A-Za-z0-9_.@-]: no ':' (it separates the parts of
    a conversation id). Here, not in route, because dispatch checks every send's peer and
    must not import a layer above it."""
    if uid in _VALID_UIDS:
        return True
    if UID_PATTERN.fullmatch(uid) is None:
        return False
    if len(_VALID_UIDS) >= _VALID_UIDS_LIMIT:
        _VALID_UIDS.clear()
    _VALID_UIDS[uid] = None
    return True


def gap_marker(conversation_id: str, seq: int) -> pb.Message:
    """The history entry for a seq that was handed out and will never carry a message
    (its send failed and was not retried, or a Redis loss skipped it): clients skip it at
    once instead of waiting for it (docs/protocol.md, "Gap markers")."""
    marker = pb.Message(conversation_id=conversation_id, seq=seq, content_type=GAP_CONTENT_TYPE)
    marker.gap = True
    return marker


def is_gap(message: pb.Message) -> bool:
    return message.gap or (message.content_type == GAP_CONTENT_TYPE and message.message_id == 0)


def single_conversation(a: str, b: str) -> ConversationId:
    """`s:<smaller uid>:<larger uid>` (PROTOCOL.md)."""
    lo, hi = (a, b) if a <= b else (b, a)
    return ConversationId(f"s:{lo}:{hi}")


def group_conversation(group_id: str) -> ConversationId:
    return ConversationId(f"g:{group_id}")


def parse_conversation(conversation_id: str) -> tuple[int, tuple[str, ...]] | None:
    """(ConversationType, parts) or None when the id is malformed.

    Uids may not contain ':' (the single-chat id would be ambiguous), so a single id has
    exactly three parts; a group id is everything after 'g:'.
    """
    if conversation_id.startswith("g:") and len(conversation_id) > 2:
        return pb.GROUP, (conversation_id[2:],)
    parts = conversation_id.split(":")
    if len(parts) == 3 and parts[0] == "s" and parts[1] and parts[2]:
        return pb.SINGLE, (parts[1], parts[2])
    return None
