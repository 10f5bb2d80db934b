"""Fixtures for the web tests: an all-in-one stack with its WebSocket gateway on free loopback
ports, in the test's event loop (so Playwright's async API, the Python SDK and the servers
share one loop), and Debian's chromium."""
from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import pytest
from playwright.async_api import async_playwright
from websockets.asyncio.client import ClientConnection, connect

from im_runtime.client import ImClient
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.frame import decode_body, encode_message
from im_runtime.protocol.types import RequestType
from tests.e2e.conftest import Stack, make_settings
from tests.web.browser import ChatPage, launch


@dataclass
class WsRaw:
    """Frames over a WebSocket with no SDK logic, for protocol-level assertions."""

    ws: ClientConnection
    seq: itertools.count = field(default_factory=lambda: itertools.count(1))

    def send(self, request_type: int, message=None) -> int:
        seq = next(self.seq)
        asyncio.get_running_loop().create_task(self.ws.send(encode_message(request_type, seq, message)))
        return seq

    async def send_bytes(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def next_frame(self, timeout: float = 5.0):
        """(request_type, sequence, decoded body) of the next message; raises when closed."""
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(data, bytes), f"server sent a text message: {data!r}"
        assert len(data) >= 20
        head = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        assert int.from_bytes(data[0:4], "big") == 20 and int.from_bytes(data[16:20], "big") == len(data) - 20
        return head[0], head[1], decode_body(head[0], data[20:])

    async def request(self, request_type: int, message=None, timeout: float = 5.0):
        seq = self.send(request_type, message)
        while True:
            got = await self.next_frame(timeout)
            if got[1] == seq and got[0] not in (RequestType.PUSH, RequestType.PULL_NOTIFY):
                return got

    async def expect(self, request_type: int, timeout: float = 5.0):
        while True:
            got = await self.next_frame(timeout)
            if got[0] == request_type:
                return got


class WebStack(Stack):
    """The e2e stack with its WebSocket gateway, plus raw WebSocket clients."""

    with_ws = True

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.app.ws.port}/ws"

    async def tcp_client(self, uid: str) -> ImClient:
        return await self.client(uid)

    async def ws_raw(self, uid: str | None = None, **connect_kwargs) -> WsRaw:
        ws = await connect(self.ws_url, compression=None, max_size=None, **connect_kwargs)
        raw = WsRaw(ws)
        self._clients.append(ws)
        if uid is not None:
            _, _, resp = await raw.request(RequestType.AUTH_REQ, pb.AuthRequest(uid=uid, token=await self.token(uid)))
            assert resp.code == 0, resp
        return raw


@pytest.fixture
async def web_stack():
    s = await WebStack(make_settings()).start()
    yield s
    await s.close()


@pytest.fixture
async def web_stack_factory():
    made: list[WebStack] = []

    async def make(**overrides) -> WebStack:
        s = await WebStack(make_settings(**overrides)).start()
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


@pytest.fixture
async def browser():
    async with async_playwright() as pw:
        b = await launch(pw)
        yield b
        await b.close()


@pytest.fixture
async def pages(browser, web_stack):
    """`await pages("alice")`: a new tab signed in as alice through dev login."""
    opened: list[ChatPage] = []

    async def open_page(uid: str, *, token: str | None = None) -> ChatPage:
        page = await ChatPage.open(browser, web_stack.http_url)
        opened.append(page)
        await page.sign_in(uid, token)
        return page

    yield open_page
    for page in opened:
        assert not page.errors, f"uncaught errors in the page: {page.errors}"
        await page.close()
