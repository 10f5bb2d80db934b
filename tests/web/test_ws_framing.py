"""The sans-I/O WebSocket layer of the ws gateway, driven by websockets' own sans-I/O client:
bytes in, bytes out, no sockets (STYLE 1). PROTOCOL.md: one binary message = one frame, text
refused with a close code, oversized messages answered with ERROR FRAME_TOO_LARGE."""
from __future__ import annotations

import struct

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame as WsFrame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import encode_frame
from im_runtime.protocol.types import ErrorCode, RequestType
from im_runtime.access.ws import CLOSE_UNSUPPORTED_DATA, WsFraming


def _pump(client: ClientProtocol, server: WsFraming) -> list[bytes]:
    """Moves client bytes to the server and back; returns the server's whole messages."""
    messages: list[bytes] = []
    for chunk in client.data_to_send():
        if chunk:
            messages += server.receive_data(chunk)
        else:
            server.receive_eof()
    for chunk in server.data_to_send():
        if chunk:
            client.receive_data(chunk)
        else:
            client.receive_eof()
    return messages


def _connect(server: WsFraming, *, path: str = "/ws", origin: str | None = None, deflate: bool = False):
    client = ClientProtocol(
        parse_uri(f"ws://127.0.0.1:9001{path}"),
        origin=origin,
        extensions=[ClientPerMessageDeflateFactory()] if deflate else None,
    )
    client.send_request(client.connect())
    _pump(client, server)
    events = client.events_received()
    response = next(e for e in events if isinstance(e, Response))
    return client, response


def _server_frames(client: ClientProtocol) -> list[WsFrame]:
    return [e for e in client.events_received() if isinstance(e, WsFrame)]


def test_handshake_on_ws_path_opens():
    server = WsFraming()
    client, response = _connect(server)
    assert response.status_code == 101
    assert server.opened and client.state is State.OPEN


def test_other_paths_get_404_and_close():
    server = WsFraming()
    client, response = _connect(server, path="/chat")
    assert response.status_code == 404
    assert not server.opened
    assert server.closing
    assert server.refused == "handshake 404"


@pytest.mark.parametrize(
    ("origin", "status"),
    [("http://127.0.0.1:8080", 101), ("https://evil.example", 403), (None, 101)],
)
def test_origin_allow_list(origin, status):
    server = WsFraming(origins=["http://127.0.0.1:8080"])
    _, response = _connect(server, origin=origin)
    assert response.status_code == status


def test_per_message_deflate_is_not_negotiated_by_default():
    server = WsFraming()
    _, response = _connect(server, deflate=True)
    assert response.status_code == 101
    assert "Sec-WebSocket-Extensions" not in response.headers
    on = WsFraming(deflate=True)
    _, response = _connect(on, deflate=True)
    assert "permessage-deflate" in response.headers["Sec-WebSocket-Extensions"]


def test_binary_messages_come_out_whole_even_when_fragmented():
    server = WsFraming()
    client, _ = _connect(server)
    frame = encode_frame(RequestType.HEARTBEAT_REQ, 7)
    client.send_binary(frame)
    assert _pump(client, server) == [frame]
    big = encode_frame(RequestType.SEND_REQ, 8, b"x" * 300)
    client.send_binary(big[:100], fin=False)
    assert _pump(client, server) == []
    client.send_continuation(big[100:200], fin=False)
    client.send_continuation(big[200:], fin=True)
    assert _pump(client, server) == [big]


def test_server_messages_reach_the_client_as_binary():
    server = WsFraming()
    client, _ = _connect(server)
    assert server.send_message(b"\x00" * 20)
    _pump(client, server)
    frames = _server_frames(client)
    assert [(f.opcode, bytes(f.data)) for f in frames] == [(Opcode.BINARY, b"\x00" * 20)]


def test_text_message_is_refused_with_close_1003():
    server = WsFraming()
    client, _ = _connect(server)
    client.send_text(b"hello")
    assert _pump(client, server) == []
    assert server.closing
    closes = [f for f in _server_frames(client) if f.opcode is Opcode.CLOSE]
    assert len(closes) == 1
    assert struct.unpack("!H", closes[0].data[:2])[0] == CLOSE_UNSUPPORTED_DATA
    assert not server.send_message(b"late"), "nothing is sent after the close"
    assert server.refused == "text message"


def test_oversized_message_gets_frame_too_large_then_close_1009():
    server = WsFraming(max_body=1000)
    client, _ = _connect(server)
    client.send_binary(encode_frame(RequestType.SEND_REQ, 3, b"y" * 2000))
    chunks = client.data_to_send()
    # The server refuses from the WebSocket header: far less than the body is fed here.
    messages = server.receive_data(chunks[0][:40])
    assert messages == []
    for chunk in server.data_to_send():
        if chunk:
            client.receive_data(chunk)
    frames = _server_frames(client)
    assert [f.opcode for f in frames] == [Opcode.BINARY, Opcode.CLOSE]
    head = struct.unpack(">IIIII", bytes(frames[0].data[:20]))
    assert head[2] == RequestType.ERROR
    err = pb.Error.FromString(bytes(frames[0].data[20:]))
    assert err.code == ErrorCode.FRAME_TOO_LARGE
    assert struct.unpack("!H", frames[1].data[:2])[0] == 1009
    assert server.refused == "message too large"


_HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _feed(server: WsFraming, chunks) -> None:
    for chunk in chunks:
        messages = server.receive_data(chunk)
        assert all(isinstance(m, bytes) for m in messages)
        assert all(isinstance(d, bytes) for d in server.data_to_send())


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_fuzz_random_bytes_never_raise(data, after_handshake):
    """STYLE 3: whatever arrives, the WebSocket layer turns it into messages or a close."""
    whole = WsFraming(max_body=64)
    prefix = _HANDSHAKE if after_handshake else b""
    _feed(whole, [prefix + data])
    by_byte = WsFraming(max_body=64)
    _feed(by_byte, [prefix] + [data[i : i + 1] for i in range(len(data))])
    assert whole.closing == by_byte.closing or not data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([Opcode.BINARY, Opcode.TEXT, Opcode.CONT, Opcode.PING]), st.binary(max_size=120), st.booleans()), max_size=6))
def test_fuzz_masked_frame_sequences_never_raise(frames):
    server = WsFraming(max_body=64)
    _feed(server, [_HANDSHAKE])
    for opcode, payload, fin in frames:
        if opcode is Opcode.PING:
            fin = True  # a fragmented control frame cannot even be serialized
        _feed(server, [WsFrame(opcode, payload, fin=fin).serialize(mask=True, extensions=[])])
        assert server.closing or server.state is State.OPEN
