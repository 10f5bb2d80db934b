"""The chat page in Debian's chromium (Playwright), against a real all-in-one stack with its
WebSocket gateway: what a person sees. Screenshots go to docs/screenshots/ for the README."""
from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import expect

from im_runtime.client import GROUP, SINGLE
from tests.web.browser import WAIT_MS
from tests.certs import make_cert

pytestmark = pytest.mark.timeout(180)


async def test_two_pages_chat_one_to_one_with_delivered_and_read(pages):
    alice = await pages("alice")
    bob = await pages("bob")

    await alice.open_conversation("bob")
    await alice.send("Hi Bob! Are you around?")
    await alice.send("I pushed the release notes.")
    await alice.expect_state("I pushed the release notes.", "delivered")

    # Bob has not opened the conversation: it shows up with an unread count.
    await expect(bob.unread_badge("s:alice:bob")).to_have_text("2", timeout=WAIT_MS)
    await bob.screenshot("chat-unread.png")

    await bob.click_conversation("s:alice:bob")
    await bob.expect_message("Hi Bob! Are you around?")
    await bob.expect_message("I pushed the release notes.")
    await expect(bob.unread_badge("s:alice:bob")).to_have_count(0)
    await bob.send("Yes, reading them now.")

    # Bob's page reported the messages read; Alice's read-status poll shows it.
    await alice.expect_state("I pushed the release notes.", "read")
    await alice.expect_state("Hi Bob! Are you around?", "read")
    await alice.expect_message("Yes, reading them now.")
    assert await alice.bubbles() == ["Hi Bob! Are you around?", "I pushed the release notes.", "Yes, reading them now."]
    await alice.screenshot("chat-1to1.png")


async def test_group_chat_between_three_pages(pages, web_stack):
    await web_stack.group("design", ["alice", "bob", "carol"])
    alice = await pages("alice")
    bob = await pages("bob")
    carol = await pages("carol")

    await alice.open_conversation("design", group=True)
    await alice.send("Mockups are in the shared folder.")
    for page in (bob, carol):
        await expect(page.unread_badge("g:design")).to_have_text("1", timeout=WAIT_MS)
        await page.click_conversation("g:design")
        await page.expect_message("Mockups are in the shared folder.")
    await bob.send("Looks great.")
    await carol.send("One comment on the header.")
    for page in (alice, bob, carol):
        await page.expect_message("Looks great.")
        await page.expect_message("One comment on the header.")
    # Group read receipts name the readers.
    await alice.expect_state("Mockups are in the shared folder.", "read")
    readers = alice.own("Mockups are in the shared folder.").locator(".state")
    await expect(readers).to_contain_text("bob", timeout=WAIT_MS)
    await expect(readers).to_contain_text("carol", timeout=WAIT_MS)
    # Everyone sees the same order (the server's seq).
    order = ["Mockups are in the shared folder.", "Looks great.", "One comment on the header."]
    for page in (alice, bob, carol):
        assert await page.bubbles() == order
    await carol.screenshot("chat-group.png")


async def test_page_that_reloads_gets_what_it_missed(pages, web_stack):
    alice = await pages("alice")
    bob = await pages("bob")
    await bob.open_conversation("alice")
    await alice.open_conversation("bob")
    await alice.send("before the reload")
    await bob.expect_message("before the reload")

    # Bob's tab goes away (navigates off); Alice keeps writing.
    await bob.page.goto("about:blank")
    sender = await web_stack.tcp_client("alice")
    await _wait_disconnected(web_stack, "bob")
    for i in range(3):
        ack = await sender.send("bob", f"missed {i}")
        assert ack.code == 0
    await alice.page.reload()  # alice's own page also reloads and keeps its session
    await alice.expect_status("online")

    await bob.page.goto(bob.base_url)
    await bob.expect_status("online")
    for i in range(3):
        await bob.expect_message(f"missed {i}")
    assert (await bob.bubbles())[-3:] == ["missed 0", "missed 1", "missed 2"]
    await alice.expect_message("missed 2")


async def test_reconnect_shows_status_and_sends_what_was_written_offline(pages, web_stack):
    alice = await pages("alice")
    bob = await pages("bob")
    await alice.open_conversation("bob")
    await bob.open_conversation("alice")
    # The network goes away for alice's page: the page says so and keeps the message.
    await alice.page.context.set_offline(True)
    await alice.page.evaluate("window.imstack.client.dropConnection()")
    await alice.expect_status("reconnecting")
    await expect(alice.page.locator("#status-text")).to_contain_text("Reconnecting")
    await alice.page.fill("#composer-input", "written while offline")
    await alice.page.press("#composer-input", "Enter")
    await alice.expect_state("written while offline", "sending")
    await alice.screenshot("chat-reconnecting.png")
    await alice.page.context.set_offline(False)
    await alice.expect_status("online")
    await alice.expect_state("written while offline", "delivered")
    await bob.expect_message("written while offline")


async def test_kick_moves_the_page_to_the_gateway_it_names(pages, web_stack):
    from im_runtime.access.ws import WsGateway

    second = WsGateway(web_stack.app.node, "127.0.0.1", 0)
    await second.start()
    try:
        alice = await pages("alice")
        bob = await pages("bob")
        (conn,) = web_stack.app.node.by_uid["alice"]
        conn.kick(503, "node draining", "127.0.0.1", second.port)
        await alice.page.wait_for_function(
            f"window.imstack.client.status === 'online' && window.imstack.client.url === 'ws://127.0.0.1:{second.port}/ws'",
            timeout=WAIT_MS,
        )
        assert second.connection_count == 2  # the node counts ws connections of both gateways
        await alice.open_conversation("bob")
        await alice.send("after the move")
        await alice.expect_state("after the move", "delivered")
        await expect(bob.unread_badge("s:alice:bob")).to_have_text("1", timeout=WAIT_MS)
        await bob.click_conversation("s:alice:bob")
        await bob.expect_message("after the move")
    finally:
        await second.close()


async def test_same_device_elsewhere_stops_the_page_until_asked(pages, web_stack):
    from im_runtime.proto import imstack_pb2 as pb
    from im_runtime.protocol.types import RequestType

    alice = await pages("alice")
    device = await alice.page.evaluate("window.imstack.client.deviceId")
    other = await web_stack.ws_raw()
    _, _, resp = await other.request(
        RequestType.AUTH_REQ, pb.AuthRequest(uid="alice", token=await web_stack.token("alice"), device_id=device)
    )
    assert resp.code == 0
    await alice.expect_status("replaced")  # no reconnect loop that would kick the other back
    await expect(alice.page.locator("#status-text")).to_contain_text("Signed in elsewhere")
    await alice.page.click("#status")
    await alice.expect_status("online")
    kind, _, kick = await other.expect(RequestType.KICK)
    assert kick.code == 409


async def test_tcp_client_and_browser_talk(pages, web_stack):
    await web_stack.group("ops", ["alice", "dave"])
    alice = await pages("alice")
    dave = await web_stack.tcp_client("dave")  # the Python SDK over TCP

    ack = await dave.send("alice", "hello from the TCP side", type=SINGLE)
    assert ack.code == 0
    await expect(alice.unread_badge("s:alice:dave")).to_have_text("1", timeout=WAIT_MS)
    await alice.click_conversation("s:alice:dave")
    await alice.expect_message("hello from the TCP side")
    await alice.send("hello from the browser")
    got = await dave.receive(timeout=10)
    assert got.content == b"hello from the browser" and getattr(got, "from") == "alice"
    assert got.conversation_id == "s:alice:dave"

    await alice.open_conversation("ops", group=True)
    await alice.send("group hello from the browser")
    got = await dave.receive(timeout=10)
    assert got.content == b"group hello from the browser" and got.conversation_id == "g:ops"
    ack = await dave.send("ops", "group reply over TCP", type=GROUP)
    assert ack.code == 0
    await alice.expect_message("group reply over TCP")
    # Dave reads the browser's message: the page's read-status poll turns it to read.
    await dave.read_report("g:ops", got.seq)
    await alice.expect_state("group hello from the browser", "read")


async def test_history_scrolls_back_page_by_page(pages, web_stack):
    sender = await web_stack.tcp_client("erin")
    phone = await web_stack.tcp_client("alice")  # alice's other device receives and acks them
    for i in range(75):
        assert (await sender.send("alice", f"history {i:02d}")).code == 0
    for i in range(75):
        assert (await phone.receive(timeout=10)).content == f"history {i:02d}".encode()
    await _wait_offline_empty(web_stack, "alice")
    alice = await pages("alice")
    await alice.open_conversation("erin")
    await alice.expect_message("history 74")
    shown = await alice.page.locator(".message").count()
    assert shown < 75, "the first page is not the whole history"
    # Scroll to the top until the beginning is reached.
    for _ in range(6):
        if await alice.page.locator("#history-end").is_visible():
            break
        await alice.page.locator("#messages").evaluate("el => el.scrollTop = 0")
        await expect(alice.page.locator(".message")).not_to_have_count(shown, timeout=WAIT_MS)
        shown = await alice.page.locator(".message").count()
    await expect(alice.page.locator("#history-end")).to_be_visible()
    assert await alice.bubbles() == [f"history {i:02d}" for i in range(75)]


async def test_sign_in_with_an_admin_token_and_a_refused_one(browser, web_stack):
    from tests.web.browser import ChatPage

    page = await ChatPage.open(browser, web_stack.http_url)
    try:
        await page.page.goto(web_stack.http_url)
        await page.screenshot("signin.png")
        await page.sign_in("frank", await web_stack.token("frank"))
        await page.page.click("#signout")
        await page.page.fill("#signin-uid", "frank")
        await page.page.fill("#signin-token", "not-a-token")
        await page.page.click("#signin-button")
        await expect(page.page.locator("#signin-error")).to_contain_text("refused", timeout=WAIT_MS)
        await expect(page.page.locator("#signin-view")).to_be_visible()
    finally:
        await page.close()
    assert not page.errors


async def _wait_disconnected(web_stack, uid: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while web_stack.app.node.by_uid.get(uid):
        assert loop.time() < deadline, f"{uid} still connected"
        await asyncio.sleep(0.05)


async def _wait_offline_empty(web_stack, uid: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await web_stack.app.stores.offline.pull(uid, 0, 1))[0]:
        assert loop.time() < deadline, f"{uid}'s offline queue did not empty"
        await asyncio.sleep(0.05)


async def test_page_over_https_uses_wss(browser, web_stack_factory, tmp_path):
    """With a certificate configured the page is served over HTTPS and connects with wss
    (S8): the address it picks from ipList follows the page's scheme."""

    from tests.web.browser import VIEWPORT, ChatPage

    cert, key = make_cert(tmp_path)
    stack = await web_stack_factory(tls_cert=cert, tls_key=key)
    base = f"https://127.0.0.1:{stack.app.http_port}/"
    pages = []
    for uid in ("alice", "bob"):
        # The test's own certificate is not in chromium's trust store.
        context = await browser.new_context(viewport=VIEWPORT, ignore_https_errors=True)
        page = ChatPage(await context.new_page(), base)
        pages.append(page)
        await page.sign_in(uid)
    alice, bob = pages
    try:
        url = await alice.page.evaluate("window.imstack.client.url")
        assert url == f"wss://127.0.0.1:{stack.app.ws.port}/ws"
        await alice.open_conversation("bob")
        await alice.send("over TLS")
        await alice.expect_state("over TLS", "delivered")
        await expect(bob.unread_badge("s:alice:bob")).to_have_text("1", timeout=WAIT_MS)
    finally:
        for page in pages:
            await page.close()
    assert not alice.errors and not bob.errors
