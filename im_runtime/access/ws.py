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

Close codes: 1003 for text, 1007 after ERROR BAD_FRAME (a message that is not one whole
frame), 1009 after ERROR FRAME_TOO_LARGE, 1000 otherwise (idle, KICK, normal end).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import ssl as ssl_module
from collections.abc import Sequence

from websockets.datastructures import Headers
from websockets.exceptions import PayloadTooBig
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame as WsFrame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from im_runtime import metrics
from im_runtime.access.gateway import Gateway
from im_runtime.access.node import AccessNode
from im_runtime.access.session import GatewayConnection
from im_runtime.access.state import ConnState
from im_runtime.protocol.frame import Frame, FrameError, error_frame
from im_runtime.protocol.types import DEFAULT_MAX_BODY, HEAD_LENGTH, ErrorCode

log = logging.getLogger(__name__)

WS_PATH = "/ws"

# WebSocket close codes (RFC 6455 section 7.4.1) used for the PROTOCOL.md rules.
CLOSE_NORMAL = 1000  # idle limit, KICK, end of a normal session
CLOSE_UNSUPPORTED_DATA = 1003  # text messages
CLOSE_INVALID_DATA = 1007  # after ERROR BAD_FRAME: a message that is not one whole frame
CLOSE_TOO_BIG = 1009  # after ERROR FRAME_TOO_LARGE

# How long a closing connection may take to answer our close frame before the socket is cut.
CLOSE_TIMEOUT = 3.0

# websockets logs every open/close at INFO; at 10,000 connections that is noise, and our
# own structured lines say what matters.
_WIRE_LOG = logging.getLogger("imstack.access.ws.wire")
_WIRE_LOG.setLevel(logging.WARNING)


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

    __slots__ = ("_ws", "_path", "_fragments", "_too_big", "opened", "origin", "refused")

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
        self.refused: str | None = None  # why the WebSocket layer itself ended the connection

    @property
    def state(self) -> State:
        return self._ws.state

    @property
    def closing(self) -> bool:
        """True once the connection is on its way out (close sent or received, or refused)."""
        ws = self._ws
        # eof_sent also covers a handshake refused, or failed by bad bytes pipelined behind it.
        return ws.eof_sent or ws.state is State.CLOSING or ws.state is State.CLOSED

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
                self.refused = "text message"
                self.close(CLOSE_UNSUPPORTED_DATA, "text messages are refused; send binary frames")
                break
            # PING (answered by websockets), PONG and CLOSE need nothing here.
        if self._too_big == 0 and isinstance(ws.parser_exc, PayloadTooBig):
            # websockets refused the frame from its header, before buffering its payload
            # (close 1009); the client still learns why in protocol terms.
            self._too_big = 1
            self.refused = "message too large"
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
        else:
            self.refused = f"handshake {response.status_code}"
        # websockets' parser generator keeps the handshake request alive for the life of the
        # connection; its headers are ~2 KiB per idle connection that nobody reads again.
        request.headers = Headers()

    def send_message(self, data: bytes) -> bool:
        """Queues one binary message; False once the connection is closing."""
        if self._ws.state is not State.OPEN:
            return False
        self._ws.send_binary(data)
        return True

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Starts the closing handshake after what is queued (a KICK, the last ERROR)."""
        ws = self._ws
        if ws.eof_sent:
            return  # already on its way out
        if ws.state is State.OPEN:
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


_CLOSE_FOR_ERROR = {ErrorCode.BAD_FRAME: CLOSE_INVALID_DATA, ErrorCode.FRAME_TOO_LARGE: CLOSE_TOO_BIG}


class WsConnection(GatewayConnection, asyncio.Protocol):
    """One WebSocket client: WsFraming for the WebSocket layer, the shared core behind it.

    No task and no timer while idle (the node's sweeper enforces the idle limit); a timer
    exists only while a close handshake is under way.
    """

    kind = "ws"
    __slots__ = ("transport", "framing", "_close_code", "_close_timer")

    def __init__(self, node: AccessNode, *, max_body: int, origins: Sequence[str] | None, deflate: bool) -> None:
        GatewayConnection.__init__(self, node, max_body=max_body)
        self.transport: asyncio.Transport | None = None
        self.framing = WsFraming(max_body=max_body, origins=origins, deflate=deflate)
        self._close_code = CLOSE_NORMAL
        self._close_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol (connection_made: GatewayConnection)
    def data_received(self, data: bytes) -> None:
        framing = self.framing
        messages = framing.receive_data(data)
        events: list[Frame | FrameError] = []
        receive_message = self.core.receive_message
        for message in messages:
            events += receive_message(message)
        for event in events:
            if isinstance(event, FrameError) and event.fatal:
                self._close_code = _CLOSE_FOR_ERROR.get(event.code, CLOSE_INVALID_DATA)
        self._flush()  # handshake answer, pongs, close frames
        if events:
            self.received(events)
        if framing.closing and self.core.state is not ConnState.CLOSED:
            if framing.refused is not None:
                if framing.refused == "message too large":
                    metrics.PROTOCOL_ERRORS.labels(str(int(ErrorCode.FRAME_TOO_LARGE))).inc()
                log.info("ws connection refused", extra={"conn_id": self.conn_id, "uid": self.uid, "reason": framing.refused})
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self.conn_id:
            self.lost()
        self.transport = None

    # GatewayConnection hooks
    def _write(self, data: bytes) -> None:
        if self.framing.send_message(data):
            self._flush()

    def _write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def _close_transport(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._write_buffer_size() > self.node.max_write_buffer:
            transport.abort()  # a slow reader gets no more bytes
            return
        self.framing.close(self._close_code)  # after what is queued (KICK, the last ERROR)
        self._flush()
        if self.transport is not None and self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)

    def _pause_reading(self, pause: bool) -> None:
        if self.transport is not None:
            (self.transport.pause_reading if pause else self.transport.resume_reading)()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.framing.data_to_send():
            if chunk:
                transport.write(chunk)
            else:  # websockets' end-of-stream marker: the server closes the TCP connection
                transport.close()
                return

    def _abort(self) -> None:
        self._close_timer = None
        if self.transport is not None:
            self.transport.abort()


class WsGateway(Gateway):
    """The WebSocket gateway of an access node: `ws://host:port/ws` (wss with `ssl`).

    Mirrors TcpGateway: start(), close(), stop_accepting(), port, connection_count.
    `origins` is the browser Origin allow-list (None: any); `deflate` turns on
    per-message deflate (off by default: memory per connection).
    """

    kind = "ws"

    def __init__(
        self,
        node: AccessNode,
        host: str,
        port: int,
        *,
        ssl: ssl_module.SSLContext | None = None,
        origins: Sequence[str] | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        deflate: bool = False,
        backlog: int = 4096,
    ) -> None:
        super().__init__(node, host, port, ssl_context=ssl, max_body=max_body, backlog=backlog)
        self.origins = tuple(origins) if origins else None
        self.deflate = deflate

    def _connection(self) -> WsConnection:
        return WsConnection(self.node, max_body=self.max_body, origins=self.origins, deflate=self.deflate)

    def _describe(self) -> dict[str, object]:
        return {"path": WS_PATH, "origins": list(self.origins or ()), "deflate": self.deflate}
