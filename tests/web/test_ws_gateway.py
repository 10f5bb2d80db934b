"""The WebSocket gateway over real sockets (websockets' asyncio client against an all-in-one
stack): the PROTOCOL.md rules for bad input, and that nothing else is disturbed by it."""
from __future__ import annotations

import asyncio
import os
import ssl
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import encode_frame, encode_message
from im_runtime.protocol.types import ErrorCode, RequestType
from tests.certs import make_cert

pytestmark = pytest.mark.timeout(60)


async def _closed_with(raw, code: int, timeout: float = 5.0) -> None:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(raw.ws.recv(), timeout)
    assert info.value.rcvd is not None, "the server closed without a close frame"
    assert info.value.rcvd.code == code


async def _chat_still_works(web_stack, sender, receiver_uid: str, receiver) -> None:
    """The bystanders: a message from sender reaches receiver (both authenticated raws)."""
    ids = (await sender.request(RequestType.ID_BATCH_REQ, pb.IdBatchRequest(count=1)))[2].ids
    _, _, ack = await sender.request(
        RequestType.SEND_REQ, pb.SendRequest(message_id=ids[0], type=pb.SINGLE, to=receiver_uid, content=b"still here")
    )
    assert ack.code == 0
    _, _, pushed = await receiver.expect(RequestType.PUSH)
    assert pushed.content == b"still here" and pushed.message_id == ids[0]


async def test_auth_send_and_push_over_websocket(web_stack):
    alice = await web_stack.ws_raw("alice")
    bob = await web_stack.ws_raw("bob")
    await _chat_still_works(web_stack, alice, "bob", bob)
    kind, _, _ = await bob.request(RequestType.HEARTBEAT_REQ)
    assert kind == RequestType.HEARTBEAT_RESP
    assert web_stack.app.ws.connection_count == 2
    assert web_stack.app.node.count("tcp") == 0


async def test_iplist_names_the_ws_gateway(web_stack):
    await web_stack.ws_raw("alice")
    async with web_stack.http.get("/v1/iplist") as resp:
        body = await resp.json()
    entry = body["ws"][0]
    assert (entry["host"], entry["port"], entry["connections"]) == ("127.0.0.1", web_stack.app.ws.port, 1)
    assert body["tcp"][0]["port"] == web_stack.tcp_port


async def test_text_message_is_refused_with_1003_and_bystanders_keep_chatting(web_stack):
    alice = await web_stack.ws_raw("alice")
    bob = await web_stack.ws_raw("bob")
    bad = await web_stack.ws_raw("mallory")
    await bad.send_bytes("hello, I am text")
    await _closed_with(bad, 1003)
    await _chat_still_works(web_stack, alice, "bob", bob)
    await _wait_count(web_stack, 2)


async def test_oversized_message_gets_frame_too_large_and_1009(web_stack):
    bad = await web_stack.ws_raw("mallory")
    alice = await web_stack.ws_raw("alice")
    bob = await web_stack.ws_raw("bob")
    limit = web_stack.settings.max_body
    await bad.send_bytes(encode_frame(RequestType.SEND_REQ, 5, b"x" * (limit + 1)))
    kind, _, err = await bad.next_frame()
    assert kind == RequestType.ERROR and err.code == ErrorCode.FRAME_TOO_LARGE
    await _closed_with(bad, 1009)
    await _chat_still_works(web_stack, alice, "bob", bob)


async def test_declared_body_length_over_limit_is_frame_too_large(web_stack):
    bad = await web_stack.ws_raw("mallory")
    header = struct.pack(">IIIII", 20, 1, RequestType.SEND_REQ, 9, web_stack.settings.max_body + 1)
    await bad.send_bytes(header)
    kind, _, err = await bad.next_frame()
    assert kind == RequestType.ERROR and err.code == ErrorCode.FRAME_TOO_LARGE
    await _closed_with(bad, 1009)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"\x00\x00\x00\x14" + b"\x00" * 10, id="shorter-than-header"),
        pytest.param(struct.pack(">IIIII", 21, 1, 3, 1, 0), id="head-length-21"),
        pytest.param(encode_frame(RequestType.HEARTBEAT_REQ, 1) + b"\x00", id="trailing-byte"),
        pytest.param(encode_frame(RequestType.HEARTBEAT_REQ, 1) * 2, id="two-frames-in-one-message"),
        pytest.param(struct.pack(">IIIII", 20, 1, 10, 1, 50) + b"x" * 10, id="body-shorter-than-declared"),
    ],
)
async def test_message_that_is_not_one_frame_is_bad_frame(web_stack, message):
    bad = await web_stack.ws_raw("mallory")
    bob = await web_stack.ws_raw("bob")
    alice = await web_stack.ws_raw("alice")
    await bad.send_bytes(message)
    kind, _, err = await bad.next_frame()
    assert kind == RequestType.ERROR and err.code == ErrorCode.BAD_FRAME
    await _closed_with(bad, 1007)
    await _chat_still_works(web_stack, alice, "bob", bob)


async def test_garbage_body_is_bad_body_and_the_connection_stays(web_stack):
    raw = await web_stack.ws_raw("mallory")
    bob = await web_stack.ws_raw("bob")
    for i, garbage in enumerate([b"\xff" * 7, os.urandom(64), b"\x0a\xff\xff\xff\xff\x0f"]):
        await raw.send_bytes(encode_frame(RequestType.SEND_REQ, 100 + i, garbage))
        kind, seq, err = await raw.next_frame()
        assert (kind, seq, err.code) == (RequestType.ERROR, 100 + i, ErrorCode.BAD_BODY)
    _, _, _ = await raw.request(RequestType.HEARTBEAT_REQ)
    await _chat_still_works(web_stack, raw, "bob", bob)


async def test_unknown_type_and_requests_before_auth(web_stack):
    raw = await web_stack.ws_raw()
    await raw.send_bytes(encode_frame(77, 3))
    kind, seq, err = await raw.next_frame()
    assert (kind, seq, err.code) == (RequestType.ERROR, 3, ErrorCode.NOT_FOUND)
    kind, seq, err = await raw.request(RequestType.UNREAD_REQ)
    assert kind == RequestType.ERROR and err.code == ErrorCode.UNAUTHENTICATED
    kind, _, _ = await raw.request(RequestType.HEARTBEAT_REQ)
    assert kind == RequestType.HEARTBEAT_RESP
    kind, _, resp = await raw.request(RequestType.AUTH_REQ, pb.AuthRequest(uid="alice", token="forged"))
    assert kind == RequestType.AUTH_RESP and resp.code == ErrorCode.UNAUTHENTICATED


async def test_wrong_path_is_404_and_foreign_origin_is_403(web_stack_factory):
    stack = await web_stack_factory(ws_origins="http://allowed.example")
    with pytest.raises(InvalidStatus) as info:
        await connect(f"ws://127.0.0.1:{stack.app.ws.port}/chat")
    assert info.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as info:
        await connect(stack.ws_url, origin="http://evil.example")
    assert info.value.response.status_code == 403
    ok = await stack.ws_raw("alice", origin="http://allowed.example")
    assert (await ok.request(RequestType.HEARTBEAT_REQ))[0] == RequestType.HEARTBEAT_RESP
    no_origin = await stack.ws_raw("bob")
    assert (await no_origin.request(RequestType.HEARTBEAT_REQ))[0] == RequestType.HEARTBEAT_RESP


async def test_per_message_deflate_is_off(web_stack):
    async with connect(web_stack.ws_url) as ws:  # offers permessage-deflate by default
        assert ws.protocol.extensions == []
        assert "Sec-WebSocket-Extensions" not in ws.response.headers


async def test_idle_connection_is_closed_and_heartbeats_keep_one_open(web_stack_factory):
    stack = await web_stack_factory(idle_timeout=1.0)
    idle = await stack.ws_raw("alice")
    busy = await stack.ws_raw("bob")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 6
    closed = False
    while loop.time() < deadline and not closed:
        assert (await busy.request(RequestType.HEARTBEAT_REQ))[0] == RequestType.HEARTBEAT_RESP
        await asyncio.sleep(0.3)
        closed = idle.ws.state.name == "CLOSED"
    assert closed, "the idle connection was not closed"
    assert busy.ws.state.name == "OPEN"
    await _wait_count(stack, 1)


async def test_wss_when_a_certificate_is_configured(web_stack_factory, tmp_path):
    cert, key = make_cert(tmp_path)
    stack = await web_stack_factory(tls_cert=cert, tls_key=key)
    client_ctx = ssl.create_default_context(cafile=cert)
    url = f"wss://127.0.0.1:{stack.app.ws.port}/ws"
    async with connect(url, ssl=client_ctx) as ws:
        await ws.send(encode_message(RequestType.HEARTBEAT_REQ, 1))
        reply = await asyncio.wait_for(ws.recv(), 5)
        assert int.from_bytes(reply[8:12], "big") == RequestType.HEARTBEAT_RESP
    with pytest.raises(Exception):
        await connect(f"ws://127.0.0.1:{stack.app.ws.port}/ws", open_timeout=3)


async def _wait_count(stack, expected: int, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while stack.app.ws.connection_count != expected:
        assert loop.time() < deadline, f"ws connections {stack.app.ws.connection_count}, expected {expected}"
        await asyncio.sleep(0.05)
