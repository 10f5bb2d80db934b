"""Playwright (async API) helpers for the chat page: Debian's chromium, never a downloaded
browser. Async so that the browser, the Python SDK client and the test share one event loop.

Each helper acts the way a person would (type, click, read the page) and waits with
Playwright's bounded `expect` polling, never with sleeps.
"""
from __future__ import annotations

import os
from pathlib import Path

from playwright.async_api import Browser, Page, expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
# Every run writes its screenshots to artifacts/screenshots (git-ignored); the committed
# copies under docs/screenshots (for the README) are refreshed when missing or when
# IMSTACK_UPDATE_SCREENSHOTS=1, so a test run does not dirty the tree with new timestamps.
ARTIFACTS = ROOT / "artifacts" / "screenshots"
SCREENSHOTS = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1100, "height": 680}
WAIT_MS = 15_000


async def launch(playwright) -> Browser:
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} is missing: run scripts/setup.d/25-web.sh (make setup-test-deps)")
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class ChatPage:
    """One browser tab signed in as one user."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    @classmethod
    async def open(cls, browser: Browser, base_url: str) -> "ChatPage":
        # A context per user: separate storage, like two people on two machines.
        context = await browser.new_context(viewport=VIEWPORT)
        return cls(await context.new_page(), base_url)

    async def sign_in(self, uid: str, token: str | None = None) -> "ChatPage":
        page = self.page
        await page.goto(self.base_url)
        await page.fill("#signin-uid", uid)
        if token is None:
            await page.click("#devlogin-button")
        else:
            await page.fill("#signin-token", token)
            await page.click("#signin-button")
        await self.expect_status("online")
        await expect(page.locator("#whoami-uid")).to_have_text(uid)
        return self

    async def expect_status(self, status: str) -> None:
        await expect(self.page.locator("#status")).to_have_attribute("data-status", status, timeout=WAIT_MS)

    async def open_conversation(self, target: str, *, group: bool = False) -> None:
        page = self.page
        await page.check("input[name=kind][value=%s]" % ("group" if group else "single"))
        await page.fill("#open-target", target)
        await page.click("#open-button")
        await expect(page.locator("#pane-chat")).to_be_visible()

    async def click_conversation(self, conversation_id: str) -> None:
        await self.page.click(f".conversation[data-conversation='{conversation_id}']")
        await expect(self.page.locator(".conversation.active")).to_have_attribute("data-conversation", conversation_id)

    async def send(self, text: str) -> None:
        await self.page.fill("#composer-input", text)
        await self.page.press("#composer-input", "Enter")
        await expect(self.own(text)).to_be_visible()

    def message(self, text: str):
        return self.page.locator(".message", has=self.page.locator(".bubble", has_text=text))

    def own(self, text: str):
        return self.page.locator(".message.own", has=self.page.locator(".bubble", has_text=text))

    def by_id(self, message_id: str):
        """A message by its id: its text changes with an edit or a recall."""
        return self.page.locator(f".message[data-message-id='{message_id}']")

    async def message_id(self, text: str) -> str:
        await expect(self.message(text)).to_have_count(1, timeout=WAIT_MS)
        return await self.message(text).get_attribute("data-message-id")

    async def edit(self, message_id: str, text: str) -> None:
        """Edit on the message, the new text in the composer, Enter."""
        await self.by_id(message_id).locator(".action-edit").click()
        await expect(self.page.locator("#edit-bar")).to_be_visible()
        await self.page.fill("#composer-input", text)
        await self.page.press("#composer-input", "Enter")
        await expect(self.page.locator("#edit-bar")).to_be_hidden()

    async def device_id(self) -> str:
        return await self.page.evaluate("window.imstack.client.deviceId")

    async def reopen(self, uid: str) -> "ChatPage":
        """A new tab in the same browser profile (its localStorage: the same device), signed in."""
        again = ChatPage(await self.page.context.new_page(), self.base_url)
        await again.sign_in(uid)
        return again

    async def expect_message(self, text: str) -> None:
        await expect(self.message(text)).to_have_count(1, timeout=WAIT_MS)

    async def expect_state(self, text: str, state: str) -> None:
        await expect(self.own(text)).to_have_attribute("data-state", state, timeout=WAIT_MS)

    def unread_badge(self, conversation_id: str):
        return self.page.locator(f".conversation[data-conversation='{conversation_id}'] .badge")

    async def bubbles(self) -> list[str]:
        return await self.page.locator(".message .bubble").all_inner_texts()

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        await self.page.screenshot(path=str(path))
        docs = SCREENSHOTS / name
        if os.environ.get("IMSTACK_UPDATE_SCREENSHOTS") == "1" or not docs.exists():
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            docs.write_bytes(path.read_bytes())
        return path

    async def close(self) -> None:
        await self.page.context.close()
