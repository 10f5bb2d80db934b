"""WebSocket access gateway (S6, issue 4): web pages reach imstack on `ws://host:9001/ws`.

Two layers, like the TCP gateway:
- `WsFraming` is sans-I/O: it wraps websockets' `ServerProtocol` (handshake, masking,
  ping/pong, close) and turns WebSocket traffic into whole binary messages. It owns the
  WebSocket-only rules of PROTOCOL.md: a text message is refused with close code 1003, and a
  message larger than 20 + max body never gets buffered (websockets stops at the header of an
  oversized WebSocket frame; we answer ERROR FRAME_TOO_LARGE before its close frame).
- `WsGateway` runs one `asyncio.Protocol` per connection around it (no high-level
  `serve()`, no task per connection: memory per idle connection matters, S4/issue 4) and
  hands each message, which must be exactly one protocol frame, to the shared access core.

Per-message deflate is off unless asked for: its zlib contexts cost far more memory per
connection than the rest of the connection together.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from websockets.datastructures import Headers
from websockets.exceptions import PayloadTooBig
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame as WsFrame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from im_runtime.protocol.frame import HEADER, Frame, FrameError, error_frame
from im_runtime.protocol.types import DEFAULT_MAX_BODY, HEAD_LENGTH, ErrorCode

WS_PATH = "/ws"

# WebSocket close codes (RFC 6455 section 7.4.1) used for the PROTOCOL.md rules.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003  # text messages
CLOSE_INVALID_DATA = 1007  # a binary message that is not one whole protocol frame
CLOSE_POLICY = 1008  # unauthenticated, idle, kicked
CLOSE_TOO_BIG = 1009

# websockets logs every open/close at INFO; at 10,000 connections that is noise, and our
# own structured lines say what matters.
_WIRE_LOG = logging.getLogger("imstack.access.ws.wire")
_WIRE_LOG.setLevel(logging.WARNING)


def frame_from_message(message: bytes, max_body: int) -> Frame | FrameError:
    """One WebSocket message must hold exactly one protocol frame (PROTOCOL.md "Framing")."""
    if len(message) < HEAD_LENGTH:
        return FrameError(ErrorCode.BAD_FRAME, f"message of {len(message)} bytes is shorter than a header", True)
    head_length, version, request_type, sequence, body_length = HEADER.unpack_from(message, 0)
    if head_length != HEAD_LENGTH:
        return FrameError(ErrorCode.BAD_FRAME, f"head_length must be 20, got {head_length}", True)
    if body_length > max_body:
        return FrameError(ErrorCode.FRAME_TOO_LARGE, f"body_length {body_length} exceeds limit {max_body}", True)
    if len(message) != HEAD_LENGTH + body_length:
        return FrameError(
            ErrorCode.BAD_FRAME,
            f"message holds {len(message) - HEAD_LENGTH} body bytes, header says {body_length}",
            True,
        )
    return Frame(version, request_type, sequence, message[HEAD_LENGTH:])


@functools.lru_cache(maxsize=8)
def _origin_list(origins: tuple[str, ...] | None) -> list[str | None] | None:
    # An allow-list guards browsers against cross-site WebSocket hijacking; clients that are
    # not browsers send no Origin header and are not at that risk, so they stay allowed.
    # One list shared by every connection of a gateway.
    if origins is None:
        return None
    return [*origins, None]


class WsFraming:
    """Sans-I/O WebSocket server side: bytes in, whole binary messages out.

    `receive_data()` returns the complete binary messages of the data; after each call the
    adapter writes `data_to_send()` (an empty bytes item means: close the transport) and
    checks `closing`.
    """

    __slots__ = ("_ws", "_path", "_fragments", "_too_big", "opened", "origin")

    def __init__(
        self,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        origins: Sequence[str] | None = None,
        deflate: bool = False,
        path: str = WS_PATH,
    ) -> None:
        self._ws = ServerProtocol(
            origins=_origin_list(tuple(origins) if origins is not None else None),
            extensions=[ServerPerMessageDeflateFactory()] if deflate else None,
            max_size=HEAD_LENGTH + max_body,
            logger=_WIRE_LOG,
        )
        self._path = path
        self._fragments: bytearray | None = None
        self._too_big = 0  # 1: an oversized message was refused and its ERROR is due; 2: written
        self.opened = False
        self.origin: str | None = None

    @property
    def state(self) -> State:
        return self._ws.state

    @property
    def closing(self) -> bool:
        """True once the connection is on its way out (close sent or received, or refused)."""
        return self._ws.state is not State.OPEN and (self.opened or self._ws.close_expected())

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    def receive_data(self, data: bytes) -> list[bytes]:
        ws = self._ws
        ws.receive_data(data)
        messages: list[bytes] = []
        for event in ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
                continue
            opcode = event.opcode
            if opcode is Opcode.BINARY:
                if event.fin:
                    messages.append(bytes(event.data))
                else:
                    self._fragments = bytearray(event.data)
            elif opcode is Opcode.CONT and self._fragments is not None:
                self._fragments += event.data
                if event.fin:
                    messages.append(bytes(self._fragments))
                    self._fragments = None
            elif opcode is Opcode.TEXT or opcode is Opcode.CONT:
                # PROTOCOL.md: on WebSocket, text messages are refused.
                self._fragments = None
                self.close(CLOSE_UNSUPPORTED_DATA, "text messages are refused; send binary frames")
                break
            # PING (answered by websockets), PONG and CLOSE need nothing here.
        if self._too_big == 0 and isinstance(ws.parser_exc, PayloadTooBig):
            # websockets refused the frame from its header, before buffering its payload
            # (close 1009); the client still learns why in protocol terms.
            self._too_big = 1
        return messages

    def receive_eof(self) -> None:
        self._ws.receive_eof()

    def _handshake(self, request: Request) -> None:
        ws = self._ws
        if request.path.split("?", 1)[0] != self._path:
            response = ws.reject(404, "Not Found: the WebSocket endpoint is /ws\n")
        else:
            response = ws.accept(request)
        ws.send_response(response)
        if response.status_code == 101:
            self.opened = True
            self.origin = ws.origin
        # websockets' parser generator keeps the handshake request alive for the life of the
        # connection; its headers are ~2 KiB per idle connection that nobody reads again.
        request.headers = Headers()

    def send_message(self, data: bytes) -> bool:
        """Queues one binary message; False once the connection is closing."""
        if self._ws.state is not State.OPEN:
            return False
        self._ws.send_binary(data)
        return True

    def close(self, code: int = CLOSE_NORMAL, reason: str = "", *, last_message: bytes | None = None) -> None:
        """Starts the closing handshake, after `last_message` (an ERROR or KICK frame) if given."""
        ws = self._ws
        if ws.state is State.OPEN:
            if last_message is not None:
                ws.send_binary(last_message)
            ws.send_close(code, reason)
        elif ws.state is State.CONNECTING:
            ws.send_eof()

    def data_to_send(self) -> list[bytes]:
        writes = self._ws.data_to_send()
        if self._too_big == 1 and writes:
            # ERROR FRAME_TOO_LARGE goes right before the close frame websockets queued
            # (the last item, or the one before the empty end-of-stream marker).
            self._too_big = 2
            limit = (self._ws.max_message_size or HEAD_LENGTH + DEFAULT_MAX_BODY) - HEAD_LENGTH
            err = error_frame(0, ErrorCode.FRAME_TOO_LARGE, f"message exceeds the 20 + {limit} byte limit")
            at = len(writes) - (2 if writes[-1] == b"" else 1)
            writes.insert(max(at, 0), WsFrame(Opcode.BINARY, err).serialize(mask=False, extensions=[]))
        return writes
