"""A client written from the PROTOCOL.md contract alone keeps working next to clients of the
v1 extensions (issue 12): its messages are compiled from the `.proto` block of the contract
as docs/protocol.md reproduces it (not the project's own imstack.proto), frames are packed by
hand, and it never receives a frame type the contract does not list."""
from __future__ import annotations

import asyncio
import re
import struct
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_tools import protoc

from im_runtime.client import ImClient

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
HEADER = struct.Struct(">IIIII")  # head_length, client_version, request_type, sequence, body_length


def _contract() -> str:
    text = (ROOT / "docs" / "protocol.md").read_text()
    return text[text.index("## The contract"):]


def _v1_types() -> dict[str, int]:
    """request_type numbers from the contract's table (plus READ_REPORT_ACK, named in it)."""
    table = {name: int(num) for num, name in re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", _contract(), re.M)}
    table["READ_REPORT_ACK"] = 31
    return table


def _v1_messages(tmp: Path) -> dict[str, type]:
    block = re.search(r"```proto\n(.*?)```", _contract(), re.S).group(1)
    (tmp / "v1.proto").write_text('syntax = "proto3";\npackage imstack.v1;\n' + block)
    include = Path(grpc_tools.__file__).parent / "_proto"
    assert protoc.main(["protoc", f"-I{tmp}", f"-I{include}", f"--descriptor_set_out={tmp / 'v1.pb'}", str(tmp / "v1.proto")]) == 0
    pool = descriptor_pool.DescriptorPool()  # its own pool: nothing of the project's proto
    for f in descriptor_pb2.FileDescriptorSet.FromString((tmp / "v1.pb").read_bytes()).file:
        pool.Add(f)
    names = re.findall(r"^message (\w+)", block, re.M)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"imstack.v1.{n}")) for n in names}


class V1Client:
    """Raw frames over TCP; answers matched by sequence; server frames collected."""

    def __init__(self, reader, writer, types: dict[str, int], msgs: dict[str, type]) -> None:
        self.reader, self.writer, self.t, self.m = reader, writer, types, msgs
        self.body_of = {
            types["AUTH_RESP"]: msgs["AuthResponse"], types["SEND_ACK"]: msgs["SendAck"], types["PUSH"]: msgs["Message"],
            types["PULL_OFFLINE_RESP"]: msgs["PullOfflineResponse"], types["PULL_NOTIFY"]: msgs["PullNotify"],
            types["PULL_HISTORY_RESP"]: msgs["PullHistoryResponse"], types["UNREAD_RESP"]: msgs["UnreadResponse"],
            types["ID_BATCH_RESP"]: msgs["IdBatchResponse"], types["KICK"]: msgs["Kick"], types["ERROR"]: msgs["Error"],
        }
        self.seq = 0
        self.buffer = b""
        self.seen_types: list[int] = []
        self.pushes: list = []

    @classmethod
    async def open(cls, port: int, types, msgs) -> "V1Client":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, types, msgs)

    def send(self, name: str, body=None) -> int:
        self.seq += 1
        data = body.SerializeToString() if body is not None else b""
        self.writer.write(HEADER.pack(20, 1, self.t[name], self.seq, len(data)) + data)
        return self.seq

    async def frame(self, timeout: float = 5.0):
        while len(self.buffer) < 20 or len(self.buffer) < 20 + HEADER.unpack(self.buffer[:20])[4]:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            assert data, "connection closed"
            self.buffer += data
        head, _, rtype, seq, length = HEADER.unpack(self.buffer[:20])
        assert head == 20
        body, self.buffer = self.buffer[20 : 20 + length], self.buffer[20 + length :]
        self.seen_types.append(rtype)
        cls = self.body_of.get(rtype)
        msg = cls.FromString(body) if cls is not None else None
        if rtype == self.t["PUSH"]:
            self.pushes.append(msg)
        return rtype, seq, msg

    async def request(self, name: str, body=None):
        seq = self.send(name, body)
        while True:
            rtype, got_seq, msg = await self.frame()
            if got_seq == seq and rtype not in (self.t["PUSH"], self.t["PULL_NOTIFY"]):
                return rtype, msg

    async def pushes_until(self, n: int, timeout: float = 5.0) -> list:
        while len(self.pushes) < n:
            await self.frame(timeout)
        return self.pushes

    def close(self) -> None:
        self.writer.close()


async def test_a_v1_only_client_keeps_working_beside_the_extensions(stack, tmp_path):
    types, msgs = _v1_types(), _v1_messages(tmp_path)
    assert "MODIFY_REQ" not in types and "SYNC" not in types  # the contract as published

    async def v1(uid: str, device_id: str | None) -> V1Client:
        c = await V1Client.open(stack.tcp_port, types, msgs)
        auth = msgs["AuthRequest"](uid=uid, token=await stack.token(uid), timestamp=1)
        if device_id is not None:
            auth.device_id = device_id
        rtype, resp = await c.request("AUTH_REQ", auth)
        assert rtype == types["AUTH_RESP"] and resp.code == 0
        stack._clients.append(c)
        return c

    b_phone, b_laptop = await v1("bob", "p"), await v1("bob", "l")
    a_phone = await stack.client("alice", device_id="phone")
    a_laptop = await stack.client("alice", device_id="laptop")
    acks = [await a_phone.send("bob", f"m{i}") for i in range(3)]
    assert [m.content for m in await b_phone.pushes_until(3)] == [b"m0", b"m1", b"m2"]
    await b_laptop.pushes_until(3)
    b_phone.send("PUSH_ACK", msgs["PushAck"](message_ids=[a.message_id for a in acks]))  # only the phone acks
    assert (await b_phone.request("HEARTBEAT_REQ"))[0] == types["HEARTBEAT_RESP"]

    # the laptop comes back: v1 pull from cursor 0 still has what only the phone acked
    b_laptop.close()
    b_laptop = await v1("bob", "l")
    rtype, page = await b_laptop.request("PULL_OFFLINE_REQ", msgs["PullOfflineRequest"](cursor=0, limit=10))
    assert rtype == types["PULL_OFFLINE_RESP"] and [m.content for m in page.messages] == [b"m0", b"m1", b"m2"]
    b_laptop.send("PUSH_ACK", msgs["PushAck"](message_ids=[m.message_id for m in page.messages]))

    # v1 sends; both of alice's devices get it; bob's other v1 device gets its own copy (sender sync)
    _, ids = await b_phone.request("ID_BATCH_REQ", msgs["IdBatchRequest"](count=2))
    _, ack = await b_phone.request("SEND_REQ", msgs["SendRequest"](message_id=ids.ids[0], type=1, to="alice", content=b"from v1"))
    assert ack.code == 0 and ack.seq == 4
    assert (await a_phone.receive(5)).content == b"from v1"
    assert [(await a_laptop.receive(5)).content for _ in range(4)] == [b"m0", b"m1", b"m2", b"from v1"]  # sync, then bob's
    mine = (await b_laptop.pushes_until(1))[-1]
    assert (getattr(mine, "from"), mine.seq, mine.content) == ("bob", 4, b"from v1")

    # alice edits and recalls: the v1 devices get Messages with the next seqs, and read on
    await a_phone.edit("s:alice:bob", acks[0].seq, "m0 (edited)")
    await a_phone.recall("s:alice:bob", acks[1].seq)
    events = (await b_phone.pushes_until(5))[3:]
    assert [m.seq for m in events] == [5, 6] and events[0].content == b"m0 (edited)"
    _, read_ack = await b_phone.request("READ_REPORT", msgs["ReadReport"](conversation_id="s:alice:bob", seq=6))
    rtype, unread = await b_laptop.request("UNREAD_REQ")
    assert rtype == types["UNREAD_RESP"] and unread.total == 0  # read on the phone: clear on the laptop too
    rtype, hist = await b_laptop.request("PULL_HISTORY_REQ", msgs["PullHistoryRequest"](conversation_id="s:alice:bob"))
    assert [m.content for m in hist.messages][:3] == [b"m0 (edited)", b"", b"m2"]

    # a v1 client without a device_id is a device of its own
    bare = await v1("bob", None)
    rtype, page = await bare.request("PULL_OFFLINE_REQ", msgs["PullOfflineRequest"]())
    assert rtype == types["PULL_OFFLINE_RESP"]
    await asyncio.sleep(0.2)
    for c in (b_phone, b_laptop, bare):
        while True:  # drain what arrived
            try:
                await c.frame(0.1)
            except asyncio.TimeoutError:
                break
        assert set(c.seen_types) <= set(types.values()), f"a frame type outside PROTOCOL.md: {set(c.seen_types) - set(types.values())}"
        assert types["ERROR"] not in c.seen_types
        last: dict[str, int] = {}
        for m in c.pushes:  # seqs from 1, increasing per conversation (PROTOCOL.md)
            assert m.seq > last.get(m.conversation_id, 0)
            last[m.conversation_id] = m.seq
