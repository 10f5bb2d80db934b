"""Several devices of one user in the chat page (issue 12, S18), in Debian's chromium against a
real all-in-one stack: two browser profiles signed in as alice (two devices) and one as bob.
What one of alice's pages does shows on the other: messages she sent, what she read, her
edits, recalls and deletions; bob sees the edits and recalls but not her deletions. A page
closed while messages came gets each of them once, in order, when it comes back."""
from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import expect

from tests.web.browser import WAIT_MS

pytestmark = pytest.mark.timeout(180)

CONV = "s:alice:bob"


async def test_two_pages_of_one_user_stay_in_step(pages, web_stack):
    laptop = await pages("alice")
    phone = await pages("alice")
    bob = await pages("bob")
    assert await laptop.device_id() != await phone.device_id()  # two devices, not one kicking the other

    await bob.open_conversation("alice")
    await bob.send("Hi Alice, it's Bob")
    for page in (laptop, phone):
        await expect(page.unread_badge(CONV)).to_have_text("1", timeout=WAIT_MS)

    # Reading on the laptop clears the phone's unread badge (SYNC, then the server's counts).
    await laptop.click_conversation(CONV)
    await laptop.expect_message("Hi Alice, it's Bob")
    await expect(phone.unread_badge(CONV)).to_have_count(0, timeout=WAIT_MS)
    await expect(phone.page.locator("#unread-total")).to_be_hidden()

    # Sent from the laptop: the phone shows it as alice's own (sender sync), bob as hers.
    await phone.click_conversation(CONV)
    await laptop.send("Sent from the laptop")
    await expect(phone.own("Sent from the laptop")).to_have_count(1, timeout=WAIT_MS)
    await expect(phone.own("Sent from the laptop")).to_have_attribute("data-state", "delivered")
    await bob.expect_message("Sent from the laptop")
    await expect(bob.own("Sent from the laptop")).to_have_count(0)

    # An edit from the laptop, on every page.
    mine = await laptop.message_id("Sent from the laptop")
    await laptop.edit(mine, "Edited on the laptop")
    for page in (laptop, phone, bob):
        await expect(page.by_id(mine).locator(".bubble")).to_have_text("Edited on the laptop", timeout=WAIT_MS)
        await expect(page.by_id(mine).locator(".edited-mark")).to_have_text("(edited)")
    await expect(bob.by_id(mine).locator(".action-edit")).to_have_count(0)  # not bob's to change
    await laptop.screenshot("chat-devices-edited.png")

    # A recall from the laptop, on every page.
    await laptop.by_id(mine).locator(".action-recall").click()
    for page in (laptop, phone, bob):
        await expect(page.by_id(mine).locator(".bubble")).to_have_text("message recalled", timeout=WAIT_MS)
        await expect(page.by_id(mine)).to_have_class("message own recalled" if page is not bob else "message recalled")

    # Delete for me, on the laptop: gone from both of alice's pages, still there for bob.
    theirs = await laptop.message_id("Hi Alice, it's Bob")
    await laptop.by_id(theirs).locator(".action-delete").click()
    for page in (laptop, phone):
        await expect(page.by_id(theirs)).to_have_count(0, timeout=WAIT_MS)
    await expect(bob.by_id(theirs)).to_have_count(1)
    await bob.send("Still here?")
    await phone.expect_message("Still here?")
    assert await phone.bubbles() == ["message recalled", "Still here?"]

    # The phone reloads: history gives the same current state (edited, recalled, deleted).
    await phone.page.reload()
    await phone.expect_status("online")
    await phone.expect_message("Still here?")
    await expect(phone.by_id(mine).locator(".bubble")).to_have_text("message recalled")
    assert await phone.bubbles() == ["message recalled", "Still here?"]
    assert await bob.bubbles() == ["Hi Alice, it's Bob", "message recalled", "Still here?"]
    await phone.screenshot("chat-devices.png")


async def test_a_page_closed_while_messages_came_gets_each_once_in_order(pages, web_stack):
    laptop = await pages("alice")
    phone = await pages("alice")
    bob = await web_stack.tcp_client("bob")
    assert (await bob.send("alice", "before the phone closed")).code == 0
    await expect(phone.unread_badge(CONV)).to_have_text("1", timeout=WAIT_MS)
    await phone.click_conversation(CONV)
    await phone.expect_message("before the phone closed")
    await laptop.click_conversation(CONV)
    device = await phone.device_id()

    # The phone's tab closes; bob writes, and alice answers from the laptop meanwhile.
    await phone.page.goto("about:blank")
    await phone.page.close()
    await _wait_devices(web_stack, "alice", 1)
    assert (await bob.send("alice", "missed 0")).code == 0
    await laptop.expect_message("missed 0")
    await laptop.send("answered from the laptop")
    for i in (1, 2):
        assert (await bob.send("alice", f"missed {i}")).code == 0
    await laptop.expect_message("missed 2")

    # Reopened in the same browser profile: the same device, which pulls from its position.
    phone = await phone.reopen("alice")
    assert await phone.device_id() == device
    expected = ["missed 0", "answered from the laptop", "missed 1", "missed 2"]
    await phone.page.wait_for_function(
        f"window.imstack.deliveries.filter((d) => d.source === 'offline').length >= {len(expected) - 1}", timeout=WAIT_MS
    )
    await asyncio.sleep(0.5)  # nothing more may follow
    delivered = await phone.page.evaluate("window.imstack.deliveries")
    # Each once, in order, from the device's position (nothing from before it closed). The
    # conversation list's preview (history, newest message) may show the last one first;
    # then the client takes the offline copy as the duplicate it is (and acks it).
    texts = [d["text"] for d in delivered]
    assert texts in (expected, expected[:-1]), texts
    assert {d["source"] for d in delivered} == {"offline"}
    assert [d["seq"] for d in delivered] == sorted(d["seq"] for d in delivered)
    assert [d["own"] for d in delivered] == [False, True, False, False][: len(delivered)]
    await phone.click_conversation(CONV)
    await phone.expect_message("missed 2")
    assert await phone.bubbles() == ["before the phone closed", *expected]
    await expect(phone.own("answered from the laptop")).to_have_count(1)
    # Its acks reached the server: nothing waits for this device any more.
    await _wait_backlog_empty(web_stack, "alice", device)


async def _wait_devices(web_stack, uid: str, count: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(web_stack.app.node.by_uid.get(uid, ())) != count:
        assert loop.time() < deadline, f"{uid} has {len(web_stack.app.node.by_uid.get(uid, ()))} connections"
        await asyncio.sleep(0.05)


async def _wait_backlog_empty(web_stack, uid: str, device: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while backlog := await web_stack.app.stores.offline.backlog(uid, device=device):
        assert loop.time() < deadline, f"{uid}/{device} still has {backlog} unacked"
        await asyncio.sleep(0.05)
