"""End-to-end chat check against a running imstack: a 1:1 and a group chat, from outside.

Used by the image test (tests/deploy/test_images_chat.py, stack started from the images) and by
the users' kind CI (.github/workflows/kind-e2e.yml, stack run by the operator):

    python -m tests.deploy.chat_check --route-url http://127.0.0.1:8080 \
        --access 127.0.0.1:9000 [--ws ws://127.0.0.1:9001/ws] --admin-key KEY

TCP users go through the client SDK (im_runtime.client.ImClient: acks, retries, reordering);
with --ws the third user speaks PROTOCOL.md over WebSocket through the sans-I/O codec, as a web
page would. Users and the group get fresh random names, so the check can run again against the
same stack. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from im_runtime.client import client as sdk
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import Frame, FrameDecoder, decode_body, encode_message
from im_runtime.protocol.types import RequestType as T

STEP_TIMEOUT = 15.0
SINGLE, GROUP = 1, 2


def http(method: str, url: str, *, bearer: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", f"Bearer {bearer}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=STEP_TIMEOUT) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as err:
        return err.code, {"error": err.read().decode(errors="replace")}


class SdkUser:
    """A TCP user through the client SDK."""

    def __init__(self, uid: str, token: str, host: str, port: int) -> None:
        self.uid = uid
        self.client = sdk.ImClient(uid, token, host=host, port=port, device_id="chat-check")

    async def start(self) -> None:
        await asyncio.wait_for(self.client.connect(), STEP_TIMEOUT)

    async def send(self, *, to: str, kind: int, text: str) -> pb.SendAck:
        return await asyncio.wait_for(self.client.send(to, text, type=kind), STEP_TIMEOUT * 2)

    async def expect_push(self, text: str) -> pb.Message:
        """The next delivered message carrying `text` (others, e.g. own echoes, are skipped)."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"{self.uid}: no message {text!r} within {STEP_TIMEOUT}s"
            msg = await self.client.receive(timeout=left)
            if msg.content == text.encode() and getattr(msg, "from") != self.uid:
                return msg

    async def close(self) -> None:
        await self.client.close()


@dataclass
class WsUser:
    """A WebSocket user speaking the protocol through the codec (responses matched by sequence)."""

    uid: str
    token: str
    send_bytes: object  # async callable(bytes)
    close_ws: object  # async callable()
    pushes: asyncio.Queue = field(default_factory=asyncio.Queue)
    waiting: dict[int, asyncio.Future] = field(default_factory=dict)
    seq: int = 0
    ids: list[int] = field(default_factory=list)

    def on_frame(self, frame: Frame) -> None:
        msg = decode_body(frame.request_type, frame.body)
        if frame.request_type == T.PUSH:
            self.pushes.put_nowait(msg)
        elif frame.sequence in self.waiting and not self.waiting[frame.sequence].done():
            self.waiting[frame.sequence].set_result((frame.request_type, msg))

    async def call(self, req_type: T, message, expect: T):
        self.seq += 1
        fut = asyncio.get_running_loop().create_future()
        self.waiting[self.seq] = fut
        await self.send_bytes(encode_message(req_type, self.seq, message))
        rtype, msg = await asyncio.wait_for(fut, STEP_TIMEOUT)
        assert rtype == expect, f"{self.uid}: {T(req_type).name} answered by {rtype} {msg}"
        return msg

    async def start(self) -> None:
        await self.auth(self.token)

    async def auth(self, token: str) -> None:
        resp = await self.call(T.AUTH_REQ, pb.AuthRequest(uid=self.uid, token=token, timestamp=int(time.time()),
                                                         device_id="chat-check"), T.AUTH_RESP)
        assert resp.code == 0, f"{self.uid}: auth refused: {resp.code} {resp.message}"

    async def send(self, *, to: str, kind: int, text: str) -> pb.SendAck:
        if not self.ids:
            batch = await self.call(T.ID_BATCH_REQ, pb.IdBatchRequest(count=16), T.ID_BATCH_RESP)
            self.ids = list(batch.ids)
            assert self.ids, "empty id batch"
        ack = await self.call(T.SEND_REQ, pb.SendRequest(message_id=self.ids.pop(0), type=kind, to=to, client_seq=self.seq,
                                                         content_type=1, content=text.encode(),
                                                         client_time=int(time.time() * 1000)), T.SEND_ACK)
        assert ack.code == 0, f"{self.uid} -> {to}: send refused: {ack.code} {ack.message}"
        return ack

    async def expect_push(self, text: str) -> pb.Message:
        """The next PUSH carrying `text` (earlier unrelated pushes are acknowledged and skipped)."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"{self.uid}: no push of {text!r} within {STEP_TIMEOUT}s"
            msg = await asyncio.wait_for(self.pushes.get(), left)
            self.seq += 1
            await self.send_bytes(encode_message(T.PUSH_ACK, self.seq, pb.PushAck(message_ids=[msg.message_id])))
            if msg.content == text.encode():
                return msg

    async def close(self) -> None:
        await self.close_ws()
        self.task.cancel()


async def connect_ws(uid: str, token: str, url: str) -> WsUser:
    import websockets

    ws = await asyncio.wait_for(websockets.connect(url, max_size=1 << 20), STEP_TIMEOUT)
    client = WsUser(uid, token, ws.send, ws.close)
    decoder = FrameDecoder()

    async def pump() -> None:
        async for data in ws:
            for ev in decoder.receive_data(data):
                if isinstance(ev, Frame):
                    client.on_frame(ev)

    client.task = asyncio.create_task(pump())
    return client


async def run(*, route_url: str, access: str, admin_key: str, ws_url: str | None = None) -> dict:
    """Runs the scenario; raises AssertionError on the first thing that is wrong."""
    tag = secrets.token_hex(4)
    alice, bob, carol = (f"{n}-{tag}" for n in ("alice", "bob", "carol"))
    group = f"team-{tag}"
    tokens = {}
    for uid in (alice, bob, carol):
        status, body = http("POST", f"{route_url}/v1/tokens", bearer=admin_key, body={"uid": uid})
        assert status == 200 and body.get("token"), f"token for {uid}: {status} {body}"
        tokens[uid] = body["token"]
    status, body = http("POST", f"{route_url}/v1/groups", bearer=admin_key,
                        body={"group_id": group, "members": [alice, bob, carol]})
    assert status in (200, 201), f"create group: {status} {body}"

    host, port = access.rsplit(":", 1)
    clients = {uid: SdkUser(uid, tokens[uid], host, int(port)) for uid in (alice, bob)}
    clients[carol] = (await connect_ws(carol, tokens[carol], ws_url)) if ws_url else SdkUser(carol, tokens[carol], host, int(port))
    try:
        for c in clients.values():
            await c.start()
        a, b, c = clients[alice], clients[bob], clients[carol]

        # 1:1 — alice and bob, both ways, in order, on one conversation.
        ack1 = await a.send(to=bob, kind=SINGLE, text="hello bob")
        got = await b.expect_push("hello bob")
        assert got.conversation_id == ack1.conversation_id == f"s:{min(alice, bob)}:{max(alice, bob)}"
        assert getattr(got, "from") == alice and got.seq == ack1.seq
        ack2 = await b.send(to=alice, kind=SINGLE, text="hi alice")
        got = await a.expect_push("hi alice")
        assert getattr(got, "from") == bob and ack2.seq > ack1.seq

        # Group — one message from alice reaches bob (TCP) and carol (WebSocket when asked).
        ack3 = await a.send(to=group, kind=GROUP, text="hello team")
        for member in (b, c):
            got = await member.expect_push("hello team")
            assert got.conversation_id == f"g:{group}" and getattr(got, "from") == alice and got.seq == ack3.seq
        ack4 = await c.send(to=group, kind=GROUP, text="carol here")
        for member in (a, b):
            await member.expect_push("carol here")
        assert ack4.seq > ack3.seq

        # History through the route HTTP API: the 1:1 conversation holds both messages.
        status, body = http("GET", f"{route_url}/v1/conversations/{ack1.conversation_id}/messages?limit=10",
                            bearer=tokens[bob])
        assert status == 200, f"history: {status} {body}"
        assert len(body["messages"]) == 2, body
        return {"users": [alice, bob, carol], "group": group, "single_seq": [ack1.seq, ack2.seq],
                "group_seq": [ack3.seq, ack4.seq]}
    finally:
        for cl in clients.values():
            await cl.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--route-url", required=True, help="route HTTP API, e.g. http://127.0.0.1:8080")
    ap.add_argument("--access", required=True, help="TCP access host:port")
    ap.add_argument("--ws", default=None, help="WebSocket access URL (ws://host:port/ws); optional")
    ap.add_argument("--admin-key", required=True)
    args = ap.parse_args(argv)
    result = asyncio.run(run(route_url=args.route_url.rstrip("/"), access=args.access,
                             admin_key=args.admin_key, ws_url=args.ws))
    print(json.dumps({"ok": True, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
