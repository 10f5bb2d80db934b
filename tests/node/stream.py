"""A counted message stream through the stack, for tests that disturb it (scaling, drains,
rolling upgrades, pod deletion): pairs of SDK clients, found through ipList, send 1:1 messages
to each other at a steady rate; every acked message must reach its receiver exactly once.

The SDK de-duplicates by message id, so a duplicate that reaches the app is a real failure;
the stream also counts every push the connection layer saw (`raw`), to report re-deliveries.
Clients follow KICKs and reconnect through ipList, as any app would. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from dataclasses import dataclass, field

from im_runtime.client import ImClient
from im_runtime.client.client import RetryPolicy, SendFailed


@dataclass
class Counts:
    acked: int = 0
    failed: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    reconnects: int = 0
    clients: int = 0
    lost_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "lost_ids"}


class Stream:
    def __init__(self, stack, *, pairs: int = 5, interval_s: float = 0.2, tag: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.stack = stack
        self.pairs = pairs
        self.interval_s = interval_s
        self.tag = tag or secrets.token_hex(3)
        self.clients: dict[str, ImClient] = {}
        self.acked: dict[str, set[int]] = collections.defaultdict(set)  # receiver -> acked ids sent to it
        self.seen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.failed = 0
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()

    async def start(self) -> "Stream":
        uids = [f"st{i}-{self.tag}" for i in range(self.pairs * 2)]
        for uid in uids:
            token = await asyncio.to_thread(self.stack.token, uid)
            client = ImClient(uid, token, http_url=self.stack.route_url, device_id="stream",
                              retry=RetryPolicy(attempts=12, ack_timeout=5), gap_give_up_s=20)
            await asyncio.wait_for(client.connect(), 30)
            self.clients[uid] = client
        for i, uid in enumerate(uids):
            peer = uids[i ^ 1]
            self._tasks.append(asyncio.ensure_future(self._send(uid, peer)))
            self._tasks.append(asyncio.ensure_future(self._receive(uid)))
        return self

    async def _send(self, uid: str, peer: str) -> None:
        client = self.clients[uid]
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                ack = await client.send(peer, f"{uid}:{n}")
                self.acked[peer].add(ack.message_id)
            except SendFailed:
                self.failed += 1
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass

    async def _receive(self, uid: str) -> None:
        client = self.clients[uid]
        while True:
            message = await client.inbox.get()
            if getattr(message, "from") != uid:
                self.seen[uid][message.message_id] += 1

    def counts(self) -> Counts:
        c = Counts(clients=len(self.clients), failed=self.failed)
        for receiver, ids in self.acked.items():
            seen = self.seen[receiver]
            c.acked += len(ids)
            missing = [i for i in ids if seen[i] == 0]
            c.lost += len(missing)
            c.lost_ids += missing[:5]
        for seen in self.seen.values():
            c.received += sum(1 for n in seen.values() if n)
            c.duplicated += sum(n - 1 for n in seen.values() if n > 1)
        c.reconnects = sum(cl.reconnects for cl in self.clients.values())
        return c

    async def stop(self, *, settle_s: float = 30.0) -> Counts:
        """Stops sending, waits (bounded) until every acked message arrived, closes the clients."""
        self._stop.set()
        senders = self._tasks[0::2]
        await asyncio.wait(senders, timeout=60)
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline and self.counts().lost:
            await asyncio.sleep(0.5)
        counts = self.counts()
        for t in self._tasks:
            t.cancel()
        for client in self.clients.values():
            await client.close()
        return counts
