from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConversationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONVERSATION_TYPE_UNSPECIFIED: _ClassVar[ConversationType]
    SINGLE: _ClassVar[ConversationType]
    GROUP: _ClassVar[ConversationType]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    RECALL: _ClassVar[EventKind]
    EDIT: _ClassVar[EventKind]
    DELETE_FOR_ME: _ClassVar[EventKind]

class MessageStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_STATUS_NORMAL: _ClassVar[MessageStatus]
    EDITED: _ClassVar[MessageStatus]
    RECALLED: _ClassVar[MessageStatus]
    DELETED: _ClassVar[MessageStatus]
CONVERSATION_TYPE_UNSPECIFIED: ConversationType
SINGLE: ConversationType
GROUP: ConversationType
EVENT_KIND_UNSPECIFIED: EventKind
RECALL: EventKind
EDIT: EventKind
DELETE_FOR_ME: EventKind
MESSAGE_STATUS_NORMAL: MessageStatus
EDITED: MessageStatus
RECALLED: MessageStatus
DELETED: MessageStatus

class AuthRequest(_message.Message):
    __slots__ = ("uid", "token", "timestamp", "device_id", "features")
    UID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    uid: str
    token: str
    timestamp: int
    device_id: str
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uid: _Optional[str] = ..., token: _Optional[str] = ..., timestamp: _Optional[int] = ..., device_id: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class AuthResponse(_message.Message):
    __slots__ = ("code", "message", "server_time")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    server_time: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., server_time: _Optional[int] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("message_id", "type", "to", "client_seq", "content_type", "content", "client_time")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_FIELD_NUMBER: _ClassVar[int]
    message_id: int
    type: ConversationType
    to: str
    client_seq: int
    content_type: int
    content: bytes
    client_time: int
    def __init__(self, message_id: _Optional[int] = ..., type: _Optional[_Union[ConversationType, str]] = ..., to: _Optional[str] = ..., client_seq: _Optional[int] = ..., content_type: _Optional[int] = ..., content: _Optional[bytes] = ..., client_time: _Optional[int] = ...) -> None: ...

class SendAck(_message.Message):
    __slots__ = ("code", "message", "message_id", "conversation_id", "seq", "server_time")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    message_id: int
    conversation_id: str
    seq: int
    server_time: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., message_id: _Optional[int] = ..., conversation_id: _Optional[str] = ..., seq: _Optional[int] = ..., server_time: _Optional[int] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("message_id", "conversation_id", "seq", "type", "to", "content_type", "content", "server_time", "event", "status", "revision_seq", "gap")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REVISION_SEQ_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    message_id: int
    conversation_id: str
    seq: int
    type: ConversationType
    to: str
    content_type: int
    content: bytes
    server_time: int
    event: MessageEvent
    status: MessageStatus
    revision_seq: int
    gap: bool
    def __init__(self, message_id: _Optional[int] = ..., conversation_id: _Optional[str] = ..., seq: _Optional[int] = ..., type: _Optional[_Union[ConversationType, str]] = ..., to: _Optional[str] = ..., content_type: _Optional[int] = ..., content: _Optional[bytes] = ..., server_time: _Optional[int] = ..., event: _Optional[_Union[MessageEvent, _Mapping]] = ..., status: _Optional[_Union[MessageStatus, str]] = ..., revision_seq: _Optional[int] = ..., gap: _Optional[bool] = ..., **kwargs) -> None: ...

class PushAck(_message.Message):
    __slots__ = ("message_ids",)
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, message_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class PullOfflineRequest(_message.Message):
    __slots__ = ("cursor", "limit", "resume_cursor", "acked_ids")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RESUME_CURSOR_FIELD_NUMBER: _ClassVar[int]
    ACKED_IDS_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    limit: int
    resume_cursor: int
    acked_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, cursor: _Optional[int] = ..., limit: _Optional[int] = ..., resume_cursor: _Optional[int] = ..., acked_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class PullOfflineResponse(_message.Message):
    __slots__ = ("messages", "has_more", "next_cursor", "device_cursor")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CURSOR_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    has_more: bool
    next_cursor: int
    device_cursor: int
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., has_more: _Optional[bool] = ..., next_cursor: _Optional[int] = ..., device_cursor: _Optional[int] = ...) -> None: ...

class PullNotify(_message.Message):
    __slots__ = ("conversation_id", "latest_seq", "pending")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    LATEST_SEQ_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    latest_seq: int
    pending: int
    def __init__(self, conversation_id: _Optional[str] = ..., latest_seq: _Optional[int] = ..., pending: _Optional[int] = ...) -> None: ...

class PullHistoryRequest(_message.Message):
    __slots__ = ("conversation_id", "before_seq", "after_seq", "limit")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    BEFORE_SEQ_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    before_seq: int
    after_seq: int
    limit: int
    def __init__(self, conversation_id: _Optional[str] = ..., before_seq: _Optional[int] = ..., after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class PullHistoryResponse(_message.Message):
    __slots__ = ("messages", "has_more")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    has_more: bool
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class ReadReport(_message.Message):
    __slots__ = ("conversation_id", "seq")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    seq: int
    def __init__(self, conversation_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class ReadStatusRequest(_message.Message):
    __slots__ = ("conversation_id", "after_seq")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    after_seq: int
    def __init__(self, conversation_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class ReadState(_message.Message):
    __slots__ = ("message_id", "seq", "read_count", "read_by")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    READ_COUNT_FIELD_NUMBER: _ClassVar[int]
    READ_BY_FIELD_NUMBER: _ClassVar[int]
    message_id: int
    seq: int
    read_count: int
    read_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message_id: _Optional[int] = ..., seq: _Optional[int] = ..., read_count: _Optional[int] = ..., read_by: _Optional[_Iterable[str]] = ...) -> None: ...

class ReadStatusResponse(_message.Message):
    __slots__ = ("states",)
    STATES_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedCompositeFieldContainer[ReadState]
    def __init__(self, states: _Optional[_Iterable[_Union[ReadState, _Mapping]]] = ...) -> None: ...

class UnreadCount(_message.Message):
    __slots__ = ("conversation_id", "count")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    count: int
    def __init__(self, conversation_id: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class UnreadResponse(_message.Message):
    __slots__ = ("total", "conversations")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    total: int
    conversations: _containers.RepeatedCompositeFieldContainer[UnreadCount]
    def __init__(self, total: _Optional[int] = ..., conversations: _Optional[_Iterable[_Union[UnreadCount, _Mapping]]] = ...) -> None: ...

class IdBatchRequest(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class IdBatchResponse(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Kick(_message.Message):
    __slots__ = ("code", "message", "reconnect_host", "reconnect_port")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_HOST_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_PORT_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reconnect_host: str
    reconnect_port: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reconnect_host: _Optional[str] = ..., reconnect_port: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class MessageEvent(_message.Message):
    __slots__ = ("kind", "target_seq", "target_message_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_SEQ_FIELD_NUMBER: _ClassVar[int]
    TARGET_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    kind: EventKind
    target_seq: int
    target_message_id: int
    def __init__(self, kind: _Optional[_Union[EventKind, str]] = ..., target_seq: _Optional[int] = ..., target_message_id: _Optional[int] = ...) -> None: ...

class ModifyRequest(_message.Message):
    __slots__ = ("message_id", "kind", "conversation_id", "target_seq", "target_message_id", "content_type", "content")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_SEQ_FIELD_NUMBER: _ClassVar[int]
    TARGET_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    message_id: int
    kind: EventKind
    conversation_id: str
    target_seq: int
    target_message_id: int
    content_type: int
    content: bytes
    def __init__(self, message_id: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., conversation_id: _Optional[str] = ..., target_seq: _Optional[int] = ..., target_message_id: _Optional[int] = ..., content_type: _Optional[int] = ..., content: _Optional[bytes] = ...) -> None: ...

class Sync(_message.Message):
    __slots__ = ("conversation_id", "read_seq", "deleted_seqs")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    DELETED_SEQS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    read_seq: int
    deleted_seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, conversation_id: _Optional[str] = ..., read_seq: _Optional[int] = ..., deleted_seqs: _Optional[_Iterable[int]] = ...) -> None: ...

class LinkRegister(_message.Message):
    __slots__ = ("node_id", "host", "port", "kind")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    host: str
    port: int
    kind: str
    def __init__(self, node_id: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...

class Forward(_message.Message):
    __slots__ = ("uid", "device_id", "conn_id", "request_type", "sequence", "body")
    UID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CONN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    uid: str
    device_id: str
    conn_id: int
    request_type: int
    sequence: int
    body: bytes
    def __init__(self, uid: _Optional[str] = ..., device_id: _Optional[str] = ..., conn_id: _Optional[int] = ..., request_type: _Optional[int] = ..., sequence: _Optional[int] = ..., body: _Optional[bytes] = ...) -> None: ...

class ForwardResponse(_message.Message):
    __slots__ = ("conn_id", "request_type", "sequence", "body")
    CONN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    conn_id: int
    request_type: int
    sequence: int
    body: bytes
    def __init__(self, conn_id: _Optional[int] = ..., request_type: _Optional[int] = ..., sequence: _Optional[int] = ..., body: _Optional[bytes] = ...) -> None: ...

class Deliver(_message.Message):
    __slots__ = ("uids", "request_type", "body", "skip_device", "feature")
    UIDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SKIP_DEVICE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    uids: _containers.RepeatedScalarFieldContainer[str]
    request_type: int
    body: bytes
    skip_device: str
    feature: str
    def __init__(self, uids: _Optional[_Iterable[str]] = ..., request_type: _Optional[int] = ..., body: _Optional[bytes] = ..., skip_device: _Optional[str] = ..., feature: _Optional[str] = ...) -> None: ...

class SessionChanged(_message.Message):
    __slots__ = ("uids", "all")
    UIDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    uids: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    def __init__(self, uids: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ...) -> None: ...

class Rebind(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: str
    def __init__(self, epoch: _Optional[str] = ...) -> None: ...

class AuthenticateRequest(_message.Message):
    __slots__ = ("uid", "token", "timestamp", "device_id", "access_node", "conn_id")
    UID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_NODE_FIELD_NUMBER: _ClassVar[int]
    CONN_ID_FIELD_NUMBER: _ClassVar[int]
    uid: str
    token: str
    timestamp: int
    device_id: str
    access_node: str
    conn_id: int
    def __init__(self, uid: _Optional[str] = ..., token: _Optional[str] = ..., timestamp: _Optional[int] = ..., device_id: _Optional[str] = ..., access_node: _Optional[str] = ..., conn_id: _Optional[int] = ...) -> None: ...

class AuthenticateResponse(_message.Message):
    __slots__ = ("code", "message", "server_time")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    server_time: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., server_time: _Optional[int] = ...) -> None: ...

class UnbindRequest(_message.Message):
    __slots__ = ("uid", "access_node", "conn_id")
    UID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_NODE_FIELD_NUMBER: _ClassVar[int]
    CONN_ID_FIELD_NUMBER: _ClassVar[int]
    uid: str
    access_node: str
    conn_id: int
    def __init__(self, uid: _Optional[str] = ..., access_node: _Optional[str] = ..., conn_id: _Optional[int] = ...) -> None: ...

class UnbindResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("uids",)
    UIDS_FIELD_NUMBER: _ClassVar[int]
    uids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uids: _Optional[_Iterable[str]] = ...) -> None: ...

class UserNodes(_message.Message):
    __slots__ = ("uid", "access_nodes")
    UID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_NODES_FIELD_NUMBER: _ClassVar[int]
    uid: str
    access_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uid: _Optional[str] = ..., access_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[UserNodes]
    def __init__(self, users: _Optional[_Iterable[_Union[UserNodes, _Mapping]]] = ...) -> None: ...

class DropNodeRequest(_message.Message):
    __slots__ = ("access_node",)
    ACCESS_NODE_FIELD_NUMBER: _ClassVar[int]
    access_node: str
    def __init__(self, access_node: _Optional[str] = ...) -> None: ...

class BoundConnection(_message.Message):
    __slots__ = ("uid", "conn_id", "device_id")
    UID_FIELD_NUMBER: _ClassVar[int]
    CONN_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    uid: str
    conn_id: int
    device_id: str
    def __init__(self, uid: _Optional[str] = ..., conn_id: _Optional[int] = ..., device_id: _Optional[str] = ...) -> None: ...

class RebindRequest(_message.Message):
    __slots__ = ("access_node", "connections")
    ACCESS_NODE_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    access_node: str
    connections: _containers.RepeatedCompositeFieldContainer[BoundConnection]
    def __init__(self, access_node: _Optional[str] = ..., connections: _Optional[_Iterable[_Union[BoundConnection, _Mapping]]] = ...) -> None: ...

class RebindResponse(_message.Message):
    __slots__ = ("bound",)
    BOUND_FIELD_NUMBER: _ClassVar[int]
    bound: int
    def __init__(self, bound: _Optional[int] = ...) -> None: ...

class DropNodeResponse(_message.Message):
    __slots__ = ("sessions_removed",)
    SESSIONS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    sessions_removed: int
    def __init__(self, sessions_removed: _Optional[int] = ...) -> None: ...
