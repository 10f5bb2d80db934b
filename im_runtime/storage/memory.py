"""The memory engine: every store in plain dicts, for the all-in-one mode and tests.

Single event loop, so each method is atomic (no await inside). Offline queues keep their
own insertion counter as the cursor, which makes the timeline order (S18) exact.
"""
from __future__ import annotations

import bisect
import itertools
import time
from collections import defaultdict
from typing import Iterable

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.types import gap_marker, is_gap
from im_runtime.storage.interfaces import Begun, SendState, Stores


class MemorySessionStore:
    def __init__(self) -> None:
        self._by_uid: dict[str, dict[tuple[str, int], str]] = {}

    async def bind(self, uid: str, node: str, conn_id: int, device_id: str) -> None:
        self._by_uid.setdefault(uid, {})[(node, conn_id)] = device_id

    async def unbind(self, uid: str, node: str, conn_id: int) -> bool:
        conns = self._by_uid.get(uid)
        if not conns or conns.pop((node, conn_id), None) is None:
            return False
        if not conns:
            del self._by_uid[uid]
        return True

    async def lookup(self, uids: Iterable[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for uid in uids:
            conns = self._by_uid.get(uid)
            if conns:
                found[uid] = sorted({node for node, _ in conns})
        return found

    async def nodes(self) -> set[str]:
        return {node for conns in self._by_uid.values() for node, _ in conns}

    async def epoch(self) -> str:
        return "memory"  # lives as long as the process, as its sessions do

    async def drop_node(self, node: str) -> int:
        removed = 0
        for uid in list(self._by_uid):
            conns = self._by_uid[uid]
            for key in [k for k in conns if k[0] == node]:
                del conns[key]
                removed += 1
            if not conns:
                del self._by_uid[uid]
        return removed


class MemoryOfflineStore:
    def __init__(self) -> None:
        # uid -> {cursor: message}; dicts keep insertion (= cursor) order.
        self._queues: dict[str, dict[int, pb.Message]] = {}
        self._index: dict[str, dict[int, int]] = {}  # uid -> message_id -> cursor
        self._pending: dict[str, dict[str, int]] = {}  # uid -> conversation -> count
        self._counter = itertools.count(1)

    async def add(self, uid: str, message: pb.Message) -> int:
        index = self._index.setdefault(uid, {})
        pending = self._pending.setdefault(uid, {})
        conv = message.conversation_id
        if message.message_id not in index:
            cursor = next(self._counter)
            index[message.message_id] = cursor
            self._queues.setdefault(uid, {})[cursor] = message
            pending[conv] = pending.get(conv, 0) + 1
        return pending.get(conv, 0)

    async def pull(self, uid: str, cursor: int, limit: int) -> tuple[list[pb.Message], bool, int]:
        queue = self._queues.get(uid)
        if not queue:
            return [], False, cursor
        keys = list(queue)  # ascending: cursors only grow
        start = bisect.bisect_right(keys, cursor)
        chosen = keys[start : start + limit]
        next_cursor = chosen[-1] if chosen else cursor
        return [queue[k] for k in chosen], start + limit < len(keys), next_cursor

    async def ack(self, uid: str, message_ids: Iterable[int]) -> int:
        index = self._index.get(uid)
        if not index:
            return 0
        queue = self._queues[uid]
        pending = self._pending[uid]
        removed = 0
        for message_id in message_ids:
            cursor = index.pop(message_id, None)
            if cursor is None:
                continue
            message = queue.pop(cursor)
            conv = message.conversation_id
            left = pending.get(conv, 1) - 1
            if left > 0:
                pending[conv] = left
            else:
                pending.pop(conv, None)
            removed += 1
        if not index:
            del self._index[uid], self._queues[uid], self._pending[uid]
        return removed

    async def backlog(self, uid: str) -> int:
        return len(self._index.get(uid, ()))

    def total_backlog(self) -> int:
        return sum(len(v) for v in self._index.values())


class MemorySequenceStore:
    def __init__(self) -> None:
        self._seqs: dict[str, int] = defaultdict(int)

    async def next_seq(self, conversation_id: str) -> int:
        self._seqs[conversation_id] += 1
        return self._seqs[conversation_id]

    async def latest_seqs(self, conversation_ids: Iterable[str]) -> dict[str, int]:
        return {c: self._seqs.get(c, 0) for c in conversation_ids}


class MemoryMessageStore:
    """History in memory, bounded: the newest `per_conversation` messages of each
    conversation (a laptop stack must not grow without bound). max_seq stays exact."""

    def __init__(self, *, per_conversation: int = 10_000) -> None:
        self._by_conv: dict[str, dict[int, pb.Message]] = {}
        self._seqs: dict[str, list[int]] = {}  # sorted seqs per conversation
        self._max: dict[str, int] = {}
        self._trimmed: dict[str, int] = {}  # highest seq trimmed per conversation
        self.per_conversation = per_conversation

    async def save(self, message: pb.Message, body: bytes | None = None) -> None:
        conv = self._by_conv.setdefault(message.conversation_id, {})
        old = conv.get(message.seq)
        if old is not None:
            if is_gap(old) and not is_gap(message):
                conv[message.seq] = message  # a send given up on came back after all
            return
        if message.seq <= self._trimmed.get(message.conversation_id, 0):
            return  # older than what is kept
        conv[message.seq] = message
        seqs = self._seqs.setdefault(message.conversation_id, [])
        if not seqs or message.seq > seqs[-1]:
            seqs.append(message.seq)
        else:
            bisect.insort(seqs, message.seq)
        self._max[message.conversation_id] = max(self._max.get(message.conversation_id, 0), message.seq)
        if len(seqs) > self.per_conversation + self.per_conversation // 10:  # trim in batches
            cut = seqs[: len(seqs) - self.per_conversation]
            for old in cut:
                del conv[old]
            del seqs[: len(seqs) - self.per_conversation]
            self._trimmed[message.conversation_id] = cut[-1]

    async def mark_gaps(self, conversation_id: str, seqs: Iterable[int]) -> list[int]:
        marked = []
        for seq in dict.fromkeys(seqs):
            if seq > self._trimmed.get(conversation_id, 0) and seq not in self._by_conv.get(conversation_id, {}):
                await self.save(gap_marker(conversation_id, seq))
                marked.append(seq)
        return marked

    def kept_above(self, conversation_id: str) -> int:
        """Seqs at or below this were trimmed away (they held messages once)."""
        return self._trimmed.get(conversation_id, 0)

    async def range(
        self, conversation_id: str, *, after_seq: int = 0, before_seq: int = 0, limit: int = 50, newest_first: bool = False
    ) -> tuple[list[pb.Message], bool]:
        seqs = self._seqs.get(conversation_id)
        if not seqs:
            return [], False
        lo = bisect.bisect_right(seqs, after_seq)
        hi = bisect.bisect_left(seqs, before_seq) if before_seq else len(seqs)
        window = seqs[lo:hi]
        if newest_first:
            chosen = window[::-1][:limit]
        else:
            chosen = window[:limit]
        conv = self._by_conv[conversation_id]
        return [conv[s] for s in chosen], len(window) > limit

    async def max_seq(self, conversation_id: str) -> int:
        return self._max.get(conversation_id, 0)


class MemorySendSteps:
    """interfaces.SendSteps over the memory stores. Claims live `ttl_s` and at most
    `max_entries` of them (the oldest go first: entries are kept in claim order, so the cap
    drops those nearest to expiring). A claim is (expires, seq, lease deadline, server time,
    ack): ack None while the send is in flight. The journal holds the seqs whose sends began
    and did not finish."""

    def __init__(
        self, sequences: MemorySequenceStore, offline: MemoryOfflineStore, reads: "MemoryReadStore",
        messages: MemoryMessageStore, *, ttl_s: float = 24 * 3600, lease_s: float = 10.0, max_entries: int = 1_000_000,
    ) -> None:
        self._sequences = sequences
        self._offline = offline
        self._reads = reads
        self._messages = messages
        self._claims: dict[tuple[str, str, int], list] = {}  # (conversation, sender, id) -> claim
        self._journal: dict[str, dict[int, tuple[str, str, int]]] = {}  # conversation -> seq -> claim key
        self._ttl = ttl_s
        self._lease = lease_s
        self._max_entries = max_entries
        self._next_sweep = time.monotonic() + 60

    async def begin(self, conversation_id: str, sender: str, message_id: int, recipients: list[str]) -> Begun:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
        key = (conversation_id, sender, message_id)
        claim = self._claims.get(key)
        if claim is not None and claim[0] > now:
            _, seq, lease_until, server_time, ack = claim
            if ack is not None:
                return Begun(SendState.DONE, ack.seq, ack.server_time, ack)
            if seq > 0 and now < lease_until:
                return Begun(SendState.PENDING, seq)
            if seq > 0:  # its attempt failed or died: resume it, same seq
                claim[2] = now + self._lease
                self._journal.setdefault(conversation_id, {})[seq] = key
                return Begun(SendState.RESUMED, seq, server_time)
        seq = await self._sequences.next_seq(conversation_id)
        server_time = int(time.time() * 1000)
        self._claims[key] = [now + self._ttl, seq, now + self._lease, server_time, None]
        while len(self._claims) > self._max_entries:
            del self._claims[next(iter(self._claims))]
        self._journal.setdefault(conversation_id, {})[seq] = key
        await self._reads.advance(sender, conversation_id, seq)
        for uid in recipients:
            await self._reads.join(uid, conversation_id)
        return Begun(SendState.NEW, seq, server_time)

    async def finish(self, message: pb.Message, body: bytes, recipients: list[str], ack: pb.SendAck) -> list[int]:
        conv = message.conversation_id
        pending = []
        for uid in recipients:
            await self._reads.join(uid, conv)
            pending.append(await self._offline.add(uid, message))
        key = (conv, getattr(message, "from"), message.message_id)
        self._claims[key] = [time.monotonic() + self._ttl, ack.seq, 0.0, ack.server_time, ack]
        journal = self._journal.get(conv)
        if journal is not None and journal.get(ack.seq) == key:
            del journal[ack.seq]
            if not journal:
                del self._journal[conv]
        return pending

    async def abort(self, conversation_id: str, sender: str, message_id: int) -> None:
        claim = self._claims.get((conversation_id, sender, message_id))
        if claim is not None and claim[4] is None:
            claim[2] = 0.0  # the lease ends now: the retry resumes the same seq

    async def settle(self, conversation_id: str, seqs: list[int]) -> list[int]:
        now = time.monotonic()
        latest = (await self._sequences.latest_seqs([conversation_id]))[conversation_id]
        floor = self._messages.kept_above(conversation_id)
        journal = self._journal.get(conversation_id, {})
        dead = []
        for seq in seqs:
            if not floor < seq <= latest:
                continue
            key = journal.get(seq)
            if key is not None:
                claim = self._claims.get(key)
                if claim is not None and claim[4] is None and now < claim[2]:
                    continue  # in flight
                del journal[seq]
                if claim is not None and claim[4] is None:
                    del self._claims[key]  # given up: a retry is a new send with a new seq
            dead.append(seq)
        if not journal:
            self._journal.pop(conversation_id, None)
        return await self._messages.mark_gaps(conversation_id, dead)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + 60
        for key in [k for k, c in self._claims.items() if c[0] <= now]:
            del self._claims[key]


class MemoryGroupStore:
    def __init__(self) -> None:
        self._groups: dict[str, set[str]] = {}

    async def create(self, group_id: str, members: Iterable[str]) -> bool:
        if group_id in self._groups:
            return False
        self._groups[group_id] = set(members)
        return True

    async def add_members(self, group_id: str, members: Iterable[str]) -> list[str] | None:
        group = self._groups.get(group_id)
        if group is None:
            return None
        added = [m for m in dict.fromkeys(members) if m not in group]
        group.update(added)
        return added

    async def remove_members(self, group_id: str, members: Iterable[str]) -> list[str] | None:
        group = self._groups.get(group_id)
        if group is None:
            return None
        removed = [m for m in dict.fromkeys(members) if m in group]
        group.difference_update(removed)
        return removed

    async def members(self, group_id: str) -> frozenset[str] | None:
        group = self._groups.get(group_id)
        return None if group is None else frozenset(group)


class MemoryReadStore:
    def __init__(self) -> None:
        self._by_user: dict[str, dict[str, int]] = {}
        self._by_conv: dict[str, dict[str, int]] = {}

    async def join(self, uid: str, conversation_id: str, read_seq: int = 0) -> None:
        convs = self._by_user.setdefault(uid, {})
        if conversation_id not in convs:
            convs[conversation_id] = read_seq
            self._by_conv.setdefault(conversation_id, {})[uid] = read_seq

    async def advance(self, uid: str, conversation_id: str, seq: int) -> int:
        convs = self._by_user.setdefault(uid, {})
        position = max(convs.get(conversation_id, 0), seq)
        convs[conversation_id] = position
        self._by_conv.setdefault(conversation_id, {})[uid] = position
        return position

    async def positions(self, conversation_id: str) -> dict[str, int]:
        return dict(self._by_conv.get(conversation_id, {}))

    async def conversations(self, uid: str) -> dict[str, int]:
        return dict(self._by_user.get(uid, {}))


class MemorySegmentStore:
    def __init__(self) -> None:
        self._next: dict[str, int] = defaultdict(lambda: 1)

    async def lease(self, name: str, step: int) -> tuple[int, int]:
        start = self._next[name]
        self._next[name] = start + step
        return start, start + step


def memory_stores(*, dedup_ttl_s: float = 24 * 3600, lease_s: float = 10.0) -> Stores:
    offline, sequences, messages, reads = MemoryOfflineStore(), MemorySequenceStore(), MemoryMessageStore(), MemoryReadStore()
    return Stores(
        sessions=MemorySessionStore(),
        offline=offline,
        sequences=sequences,
        messages=messages,
        groups=MemoryGroupStore(),
        reads=reads,
        segments=MemorySegmentStore(),
        steps=MemorySendSteps(sequences, offline, reads, messages, ttl_s=dedup_ttl_s, lease_s=lease_s),
    )
