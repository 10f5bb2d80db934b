"""The 20-byte-header frame codec, sans I/O (S7, PROTOCOL.md "Framing").

`FrameDecoder` is fed bytes and returns events; it never raises into the I/O layer and
never buffers more than one header plus one body of at most `max_body` bytes: the
body_length is checked before the body is read (STYLE 2, 3). After a fatal error it
swallows all further input. Bodies are handed out as raw bytes; `decode_body` turns them
into messages so that a bad body costs one ERROR, not the connection.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message as ProtoMessage

from im_runtime.protocol.types import (
    BODY_TYPES,
    DEFAULT_MAX_BODY,
    HEAD_LENGTH,
    PROTOCOL_VERSION,
    ErrorCode,
)

HEADER = struct.Struct(">IIIII")
_U32 = 0xFFFFFFFF


class CodecError(Exception):
    """The only exception the codec raises: misuse by the caller (e.g. an oversized encode)."""


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x, per frame
class Frame:
    client_version: int
    request_type: int
    sequence: int
    body: bytes


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x, per frame
class FrameError:
    """Bad input seen by the decoder. `fatal` means the connection must be closed."""

    code: ErrorCode
    message: str
    fatal: bool


def encode_frame(request_type: int, sequence: int, body: bytes = b"", *, version: int = PROTOCOL_VERSION) -> bytes:
    if not (0 <= request_type <= _U32 and 0 <= sequence <= _U32 and 0 <= version <= _U32):
        raise CodecError("header field out of uint32 range")
    if len(body) > _U32:
        raise CodecError("body too large for a uint32 length")
    return HEADER.pack(HEAD_LENGTH, version, request_type, sequence, len(body)) + body


def encode_message(request_type: int, sequence: int, message: ProtoMessage | None = None, *, version: int = PROTOCOL_VERSION) -> bytes:
    body = message.SerializeToString() if message is not None else b""
    return encode_frame(request_type, sequence, body, version=version)


def decode_body(request_type: int, body: bytes) -> ProtoMessage | None:
    """Parses a body into the message its type names. Raises DecodeError on bad bodies,
    KeyError on unknown types; callers map those to BAD_BODY / UNKNOWN_TYPE."""
    cls = BODY_TYPES[request_type]
    if cls is None:
        return None
    msg = cls()
    msg.ParseFromString(body)
    return msg


def try_decode_body(request_type: int, body: bytes) -> tuple[ProtoMessage | None, FrameError | None]:
    """decode_body that turns failure into a (non-fatal) FrameError."""
    if request_type not in BODY_TYPES:
        return None, FrameError(ErrorCode.NOT_FOUND, f"unknown request type {request_type}", False)
    try:
        return decode_body(request_type, body), None
    except (DecodeError, ValueError, RuntimeError) as exc:
        return None, FrameError(ErrorCode.BAD_BODY, f"body does not decode: {type(exc).__name__}", False)


class FrameDecoder:
    """Incremental decoder: `receive_data(bytes) -> list[Frame | FrameError]`."""

    __slots__ = ("max_body", "_buffer", "_closed")

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.max_body = max_body
        self._buffer = b""
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after a fatal error: nothing more will be decoded."""
        return self._closed

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def receive_data(self, data: bytes) -> list[Frame | FrameError]:
        if self._closed:
            return []
        buf = self._buffer + data if self._buffer else bytes(data)
        events: list[Frame | FrameError] = []
        offset = 0
        end = len(buf)
        unpack = HEADER.unpack_from
        while end - offset >= HEAD_LENGTH:
            head_length, version, request_type, sequence, body_length = unpack(buf, offset)
            if head_length != HEAD_LENGTH:
                return self._fail(events, ErrorCode.BAD_FRAME, f"head_length must be 20, got {head_length}")
            if body_length > self.max_body:
                return self._fail(
                    events, ErrorCode.FRAME_TOO_LARGE, f"body_length {body_length} exceeds limit {self.max_body}"
                )
            frame_end = offset + HEAD_LENGTH + body_length
            if frame_end > end:
                break
            events.append(Frame(version, request_type, sequence, buf[offset + HEAD_LENGTH : frame_end]))
            offset = frame_end
        self._buffer = buf[offset:] if offset < end else b""
        return events

    def stop(self) -> None:
        """Refuses all further input (the I/O layer saw a fatal error of its own)."""
        self._closed = True
        self._buffer = b""

    def _fail(self, events: list[Frame | FrameError], code: ErrorCode, message: str) -> list[Frame | FrameError]:
        self._closed = True
        self._buffer = b""
        events.append(FrameError(code, message, True))
        return events


def error_frame(sequence: int, code: int, message: str) -> bytes:
    from im_runtime.proto import imstack_pb2 as pb
    from im_runtime.protocol.types import RequestType

    return encode_message(RequestType.ERROR, sequence, pb.Error(code=int(code), message=message))
