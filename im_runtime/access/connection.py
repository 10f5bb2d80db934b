"""The sans-I/O core of one client connection: framing, state, admission of each frame.

Both gateways (TCP byte stream, WebSocket messages) and nothing else feed it; it answers
what the PROTOCOL.md bad-input rules demand and hands everything else on as `Admitted`
requests for the I/O layer to run. It never raises on client input.
"""
from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message as ProtoMessage

from im_runtime.access.state import ALLOWED, ConnState, transition
from im_runtime.protocol.frame import Frame, FrameDecoder, FrameError, encode_frame, error_frame, try_decode_body
from im_runtime.protocol.types import CLIENT_REQUESTS, DEFAULT_MAX_BODY, ErrorCode, RequestType

MAX_FAILED_AUTHS = 5


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x, per frame
class Reply:
    """Bytes to write at once; `close` means close the connection after writing."""

    data: bytes
    close: bool = False


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x, per frame
class Admitted:
    request_type: int
    sequence: int
    message: ProtoMessage | None
    body: bytes


class ConnectionCore:
    __slots__ = ("decoder", "state", "uid", "device_id", "features", "failed_auths")

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.decoder = FrameDecoder(max_body=max_body)
        self.state = ConnState.CONNECTED
        self.uid: str | None = None
        self.device_id = ""
        self.features: frozenset[str] = frozenset()  # v1 extensions the client asked for (AUTH)
        self.failed_auths = 0

    # ---- input ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Frame | FrameError]:
        """Stream input (TCP): any split of the bytes gives the same frames."""
        return self.decoder.receive_data(data)

    def receive_message(self, data: bytes) -> list[Frame | FrameError]:
        """Message input (WebSocket): one message must hold exactly one whole frame."""
        if self.decoder.closed:
            return []
        events = self.decoder.receive_data(data)
        if self.decoder.closed:
            return events
        if len(events) != 1 or self.decoder.buffered:
            self.decoder.stop()
            return [FrameError(ErrorCode.BAD_FRAME, "a WebSocket message must hold exactly one frame", True)]
        return events

    def admit(self, event: Frame | FrameError) -> Reply | Admitted | None:
        """What to do with one decoded event, given the connection's state."""
        if isinstance(event, FrameError):
            return Reply(error_frame(0, event.code, event.message), close=event.fatal)
        request_type, sequence = event.request_type, event.sequence
        if request_type not in CLIENT_REQUESTS:
            return Reply(error_frame(sequence, ErrorCode.NOT_FOUND, f"unknown request type {request_type}"))
        if request_type not in ALLOWED[self.state]:
            if self.state is ConnState.CONNECTED:
                return Reply(error_frame(sequence, ErrorCode.UNAUTHENTICATED, "authenticate first (AUTH_REQ)"))
            return None  # draining or closed: the connection is going away
        message, problem = try_decode_body(request_type, event.body)
        if problem is not None:
            return Reply(error_frame(sequence, problem.code, problem.message))
        if request_type == RequestType.HEARTBEAT_REQ:
            return Reply(_heartbeat_resp(sequence))
        return Admitted(request_type, sequence, message, event.body)

    # ---- auth ---------------------------------------------------------------------------

    def authenticated(self, uid: str, device_id: str, features: frozenset[str] = frozenset()) -> None:
        self.state = transition(self.state, ConnState.AUTHENTICATED)
        self.uid = uid
        self.device_id = device_id
        self.features = features

    def auth_failed(self) -> bool:
        """Counts a failed AUTH_REQ; True when the connection should now be closed."""
        self.failed_auths += 1
        return self.failed_auths >= MAX_FAILED_AUTHS

    def drain(self) -> None:
        if self.state in (ConnState.CONNECTED, ConnState.AUTHENTICATED):
            self.state = transition(self.state, ConnState.DRAINING)

    def close(self) -> None:
        if self.state is not ConnState.CLOSED:
            self.state = transition(self.state, ConnState.CLOSED)


def _heartbeat_resp(sequence: int) -> bytes:
    return encode_frame(RequestType.HEARTBEAT_RESP, sequence)
