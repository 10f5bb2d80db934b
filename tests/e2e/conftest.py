"""An all-in-one stack on free loopback ports, in the test's event loop, over real sockets."""
from __future__ import annotations

import asyncio
import inspect
import itertools
from dataclasses import dataclass, field

import aiohttp
import pytest

from im_runtime.allinone import AllInOne
from im_runtime.client import ImClient, RetryPolicy
from im_runtime.config import Settings
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import FrameDecoder, FrameError, decode_body, encode_frame, encode_message
from im_runtime.protocol.types import RequestType


@dataclass
class RawClient:
    """Frames in and out with no SDK logic, for protocol-level assertions."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(max_body=1 << 24))
    frames: list = field(default_factory=list)
    seq: itertools.count = field(default_factory=lambda: itertools.count(1))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, request_type: int, message=None, sequence: int | None = None) -> int:
        seq = next(self.seq) if sequence is None else sequence
        self.writer.write(encode_message(request_type, seq, message))
        return seq

    async def next_frame(self, timeout: float = 5.0):
        """(request_type, sequence, decoded body) of the next frame; None at EOF."""
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return None
            for event in self.decoder.receive_data(data):
                assert not isinstance(event, FrameError), event
                self.frames.append(event)
        frame = self.frames.pop(0)
        return frame.request_type, frame.sequence, decode_body(frame.request_type, frame.body)

    async def expect(self, request_type: int, timeout: float = 5.0):
        """The next frame of request_type, skipping heartbeats/pushes of other types."""
        while True:
            got = await self.next_frame(timeout)
            assert got is not None, f"connection closed while waiting for {RequestType(request_type).name}"
            if got[0] == request_type:
                return got

    async def request(self, request_type: int, message=None):
        seq = self.send(request_type, message)
        while True:
            got = await self.next_frame()
            assert got is not None, "connection closed"
            if got[1] == seq and got[0] not in (RequestType.PUSH, RequestType.PULL_NOTIFY):
                return got

    async def closed(self, timeout: float = 5.0) -> bool:
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return True
                self.decoder.receive_data(data)
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self) -> None:
        self.writer.close()


class Stack:
    with_ws = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = AllInOne(settings, with_ws=self.with_ws)
        self._clients: list = []

    async def start(self) -> "Stack":
        await self.app.start()
        self.http = aiohttp.ClientSession(f"http://127.0.0.1:{self.app.http_port}")
        return self

    @property
    def tcp_port(self) -> int:
        return self.app.tcp.port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.app.http_port}"

    async def admin(self, method: str, path: str, body=None, key: str | None = None):
        headers = {"Authorization": f"Bearer {key if key is not None else self.settings.admin_key}"}
        async with self.http.request(method, path, json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def token(self, uid: str) -> str:
        status, body = await self.admin("POST", "/v1/tokens", {"uid": uid})
        assert status == 200, body
        return body["token"]

    async def group(self, group_id: str, members: list[str]) -> None:
        status, body = await self.admin("POST", "/v1/groups", {"group_id": group_id, "members": members})
        assert status == 201, body

    async def client(self, uid: str, **kwargs) -> ImClient:
        kwargs.setdefault("retry", RetryPolicy(attempts=4, base_delay=0.05, ack_timeout=3))
        c = ImClient(uid, await self.token(uid), port=self.tcp_port, http_url=self.http_url, **kwargs)
        await c.connect()
        self._clients.append(c)
        return c

    async def raw(self, uid: str | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.tcp_port)
        raw = RawClient(reader, writer)
        self._clients.append(raw)
        if uid is not None:
            _, _, resp = await raw.request(RequestType.AUTH_REQ, pb.AuthRequest(uid=uid, token=await self.token(uid)))
            assert resp.code == 0, resp
        return raw

    async def close(self) -> None:
        for c in reversed(self._clients):
            try:
                result = c.close()  # SDK and websockets clients close asynchronously
                if inspect.isawaitable(result):
                    await result
            except Exception:
                pass  # already closed by the test
        await self.http.close()
        await self.app.close()


def make_settings(**overrides) -> Settings:
    s = Settings()
    s.host = "127.0.0.1"
    s.http_port = s.tcp_port = s.ws_port = 0
    s.admin_key = "test-admin-key"
    s.token_key = "test-token-key-0123456789"
    s.dev_login = True
    for key, value in overrides.items():
        setattr(s, key, value)
    return s


@pytest.fixture
async def stack():
    s = await Stack(make_settings()).start()
    yield s
    await s.close()


@pytest.fixture
async def stack_factory():
    made: list[Stack] = []

    async def make(**overrides) -> Stack:
        s = await Stack(make_settings(**overrides)).start()
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


__all__ = ["RawClient", "Stack", "encode_frame", "make_settings"]
