"""Offline push for phones (issue 12): when a receiver has no connected device the stack calls
the configured webhook, a real HTTP server started by the test, standing in for the gateway
a team runs in front of APNs / FCM."""
from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from im_runtime.client import GROUP
from im_runtime.dispatch.offline_push import payload, preview_of, retry_delay
from im_runtime.proto import imstack_pb2 as pb
from tests.servers.webhook import Gateway, start_gateway

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def gateway_factory():
    started: list[Gateway] = []

    async def make(**kwargs) -> tuple[Gateway, str]:
        gateway = await start_gateway(**kwargs)
        started.append(gateway)
        return gateway, gateway.url

    yield make
    for gateway in started:
        await gateway.stop()


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_webhook_is_called_for_offline_receivers_only(stack_factory, gateway_factory):
    gateway, url = await gateway_factory()
    stack = await stack_factory(push_webhook_url=url, push_webhook_token="gw-secret")
    alice = await stack.client("alice", device_id="phone")
    bob = await stack.client("bob", device_id="phone")
    await alice.send("bob", "bob is online")
    assert (await bob.receive(5)).content == b"bob is online"
    await bob.close()  # bob's phone leaves: no device of his connected
    ack = await alice.send("bob", "are you there?  call me back")
    await asyncio.wait_for(gateway.got_one.wait(), 5)
    assert len(gateway.calls) == 1  # nothing for the message bob had online
    call = gateway.calls[0]
    assert call["uids"] == ["bob"] and call["conversation_id"] == "s:alice:bob" and call["from"] == "alice"
    assert call["seq"] == str(ack.seq) and call["message_id"] == str(ack.message_id)
    assert call["preview"] == "are you there? call me back" and call["event"] is None and call["type"] == "single"
    assert gateway.headers[0]["Authorization"] == "Bearer gw-secret"
    # a group: one call names every member with no device connected
    carol = await stack.client("carol")
    await stack.group("trio", ["alice", "bob", "carol", "dave"])
    await alice.send("trio", "to the group", type=GROUP)
    await _until(lambda: len(gateway.calls) == 2)
    assert sorted(gateway.calls[1]["uids"]) == ["bob", "dave"] and gateway.calls[1]["type"] == "group"
    assert (await carol.receive(5)).content == b"to the group"
    # a user with another device still connected is not offline
    laptop = await stack.client("bob", device_id="laptop")  # new: catches up on what waits
    assert {(await laptop.receive(5)).content for _ in range(2)} == {b"are you there?  call me back", b"to the group"}
    await alice.send("bob", "to the laptop")
    assert (await laptop.receive(5)).content == b"to the laptop"
    await asyncio.sleep(0.3)
    assert len(gateway.calls) == 2
    # the sender's own other devices never trigger it (sender sync)
    await laptop.close()
    await carol.close()
    await alice.send("carol", "carol went away")
    await _until(lambda: len(gateway.calls) == 3)
    assert gateway.calls[2]["uids"] == ["carol"]  # not alice, whose other devices are away


async def test_webhook_retries_5xx_with_backoff_and_preview_can_be_off(stack_factory, gateway_factory):
    gateway, url = await gateway_factory(fail_first=2)
    stack = await stack_factory(push_webhook_url=url, push_webhook_preview=False)
    stack.app.webhook.settings = dataclasses.replace(stack.app.webhook.settings, base_delay_s=0.05)  # short backoff
    alice = await stack.client("alice")
    await alice.send("bob", "secret words")
    await asyncio.wait_for(gateway.got_one.wait(), 10)
    assert gateway.answered == [503, 503, 200]  # retried on 5xx until it went through
    assert all(c == gateway.calls[0] for c in gateway.calls)  # the same call each time
    assert "preview" not in gateway.calls[0]  # preview off: no message text leaves the stack


async def test_a_hanging_webhook_never_blocks_delivery_and_its_queue_is_bounded(stack_factory, gateway_factory):
    gateway, url = await gateway_factory(hang_s=4)
    stack = await stack_factory(push_webhook_url=url, push_webhook_queue=5)
    alice = await stack.client("alice")
    bob = await stack.client("bob")
    started = time.monotonic()
    for i in range(30):
        await alice.send(f"away{i}", f"to nobody {i}")  # 30 offline receivers
        await alice.send("bob", f"to bob {i}")
    elapsed = time.monotonic() - started
    got = [(await bob.receive(5)).content for _ in range(30)]
    assert got == [f"to bob {i}".encode() for i in range(30)]
    assert elapsed < 2, f"sends waited for the webhook ({elapsed:.1f} s)"
    webhook = stack.app.webhook
    assert webhook.dropped >= 30 - 5 - webhook.settings.workers  # queue of 5, 4 workers hung, the rest dropped
    from im_runtime.metrics import exposition

    text = exposition().decode()
    assert 'imstack_push_webhook_calls_total{result="dropped"}' in text


def test_payload_and_backoff_are_plain_functions():
    m = pb.Message(message_id=7, conversation_id="g:team", seq=3, type=pb.GROUP, content=("x" * 200).encode(), server_time=5)
    setattr(m, "from", "alice")
    body = payload(["bob"], m, preview=True)
    assert body["preview"].endswith("\u2026") and len(body["preview"]) == 80
    assert preview_of(pb.Message(content=b"\xff\xfe binary")) is None
    recall = pb.Message(content=b"gone")
    recall.event.kind = pb.RECALL
    assert preview_of(recall) is None and payload(["x"], recall, preview=True)["event"] == "recall"
    import random

    rng = random.Random(1)
    delays = [retry_delay(a, base_s=0.5, max_s=30, rng=rng) for a in range(10)]
    assert all(0 <= d <= min(30, 0.5 * 2**a) for a, d in enumerate(delays))
