"""The memory engine: every store in plain dicts, for the all-in-one mode and tests.

Single event loop, so each method is atomic (no await inside). The offline timeline (S18)
follows the Redis engine's positions and clean-up rules exactly, so one contract suite holds
both.
"""
from __future__ import annotations

import bisect
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.types import gap_marker, is_gap
from im_runtime.storage.interfaces import Begun, OfflinePage, SendState, Stores

DEFAULT_RETENTION_S = 7 * 24 * 3600  # IMSTACK_TIMELINE_RETENTION (docs/storage.md)
DEFAULT_MAX_DEVICES = 16  # IMSTACK_MAX_DEVICES


def _now_ms() -> int:
    return int(time.time() * 1000)


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


@dataclass(slots=True)
class _Entry:
    message: pb.Message
    acked_by_any: bool  # some device has it: no longer counts as pending (PULL_NOTIFY)


@dataclass(slots=True)
class _Device:
    cursor: int = 0
    seen_ms: int = 0
    above: set[int] = field(default_factory=set)  # positions acked out of order, above cursor


@dataclass(slots=True)
class _Timeline:
    """Positions only grow and entries only ever leave from the oldest end (every device past
    them, or retention), so the timeline is an ascending list trimmed at its head."""

    positions: list[int] = field(default_factory=list)  # ascending; live from `head`
    head: int = 0
    entries: dict[int, _Entry] = field(default_factory=dict)  # position -> entry
    by_id: dict[int, int] = field(default_factory=dict)  # message id -> position
    pending: dict[str, int] = field(default_factory=dict)  # conversation -> entries no device acked
    devices: dict[str, _Device] = field(default_factory=dict)
    last: int = 0  # last position handed out (kept when the timeline empties)

    def after(self, position: int) -> int:
        """Index in `positions` of the first live entry above position."""
        return bisect.bisect_right(self.positions, position, lo=self.head)


class MemoryOfflineStore:
    """interfaces.OfflineStore in dicts, the reference behaviour of the Redis engine: the same
    positions (max(server_time_ms * 1000, last + 1)), cursors, retention and clean-up."""

    def __init__(self, *, retention_s: float = DEFAULT_RETENTION_S, max_devices: int = DEFAULT_MAX_DEVICES) -> None:
        self._users: dict[str, _Timeline] = {}
        self.retention_ms = int(retention_s * 1000)
        self.max_devices = max_devices

    def _timeline(self, uid: str) -> _Timeline:
        tl = self._users.get(uid)
        if tl is None:
            tl = self._users[uid] = _Timeline()
        return tl

    # ---- the steps every call is made of (the Lua helpers of the Redis engine) ----------

    def _drop_oldest(self, tl: _Timeline) -> None:
        position = tl.positions[tl.head]
        tl.head += 1
        entry = tl.entries.pop(position)
        del tl.by_id[entry.message.message_id]
        if not entry.acked_by_any:
            self._count(tl, entry.message.conversation_id, -1)
        for dev in tl.devices.values():
            dev.above.discard(position)
        if tl.head > 64 and tl.head * 2 > len(tl.positions):
            del tl.positions[: tl.head]
            tl.head = 0

    @staticmethod
    def _count(tl: _Timeline, conv: str, delta: int) -> None:
        left = tl.pending.get(conv, 0) + delta
        if left > 0:
            tl.pending[conv] = left
        else:
            tl.pending.pop(conv, None)

    def _expire(self, tl: _Timeline, now_ms: int) -> None:
        cutoff = (now_ms - self.retention_ms) * 1000
        while tl.head < len(tl.positions) and tl.positions[tl.head] < cutoff:
            self._drop_oldest(tl)

    def _device(self, tl: _Timeline, device: str, now_ms: int) -> _Device:
        dev = tl.devices.get(device)
        if dev is None:
            while len(tl.devices) >= self.max_devices:
                del tl.devices[min(tl.devices, key=lambda d: tl.devices[d].seen_ms)]
            dev = tl.devices[device] = _Device()
        dev.seen_ms = now_ms
        return dev

    def _mark(self, tl: _Timeline, dev: _Device, position: int) -> bool:
        if position <= dev.cursor or position in dev.above:
            return False
        dev.above.add(position)
        entry = tl.entries[position]
        if not entry.acked_by_any:
            entry.acked_by_any = True
            self._count(tl, entry.message.conversation_id, -1)
        return True

    @staticmethod
    def _advance(tl: _Timeline, dev: _Device) -> None:
        """Moves the cursor over the acked entries right above it."""
        if not dev.above:
            return
        positions = tl.positions
        for i in range(tl.after(dev.cursor), len(positions)):
            position = positions[i]
            if position not in dev.above:
                break
            dev.above.discard(position)
            dev.cursor = position

    def _clean(self, tl: _Timeline, now_ms: int) -> None:
        stale = now_ms - self.retention_ms
        for name in [d for d, dev in tl.devices.items() if dev.seen_ms < stale]:
            del tl.devices[name]
        if not tl.devices:
            return  # nobody has anything: keep it all (until the retention limit)
        floor = min(dev.cursor for dev in tl.devices.values())
        while tl.head < len(tl.positions) and tl.positions[tl.head] <= floor:
            self._drop_oldest(tl)

    # ---- the interface ----------------------------------------------------------------

    async def add(self, uid: str, message: pb.Message, *, holder: str | None = None) -> int:
        tl = self._timeline(uid)
        now_ms = _now_ms()
        self._expire(tl, now_ms)
        conv = message.conversation_id
        if message.message_id in tl.by_id:
            return tl.pending.get(conv, 0)
        position = max(max(0, message.server_time) * 1000, tl.last + 1)
        previous, tl.last = tl.last, position
        dev = None
        if holder is not None:
            dev = self._device(tl, holder, now_ms)
            if len(tl.devices) == 1 and dev.cursor >= previous:
                dev.cursor = position  # the only device, and it has everything: no entry needed
                return tl.pending.get(conv, 0)
        tl.positions.append(position)
        tl.entries[position] = _Entry(message, dev is not None)
        tl.by_id[message.message_id] = position
        if dev is None:
            self._count(tl, conv, 1)
        else:
            dev.above.add(position)
            self._advance(tl, dev)
            self._clean(tl, now_ms)
        return tl.pending.get(conv, 0)

    async def pull(
        self, uid: str, cursor: int, limit: int, *, device: str = "", resume_cursor: int = 0, acked_ids: Iterable[int] = ()
    ) -> OfflinePage:
        tl = self._timeline(uid)
        now_ms = _now_ms()
        dev = self._device(tl, device, now_ms)
        self._ack(tl, dev, acked_ids)
        if resume_cursor > dev.cursor:
            dev.cursor = min(int(resume_cursor), tl.last)
            dev.above = {p for p in dev.above if p > dev.cursor}
        self._advance(tl, dev)
        self._clean(tl, now_ms)
        start = max(int(cursor), dev.cursor)
        chosen: list[int] = []
        has_more = False
        positions = tl.positions
        for i in range(tl.after(start), len(positions)):
            position = positions[i]
            if position in dev.above:
                continue
            if len(chosen) >= limit:
                has_more = True
                break
            chosen.append(position)
        next_cursor = chosen[-1] if chosen else start
        return OfflinePage([tl.entries[p].message for p in chosen], has_more, next_cursor, dev.cursor)

    def _ack(self, tl: _Timeline, dev: _Device, message_ids: Iterable[int]) -> int:
        newly = 0
        for message_id in message_ids:
            position = tl.by_id.get(message_id)
            if position is not None and self._mark(tl, dev, position):
                newly += 1
        return newly

    async def ack(self, uid: str, message_ids: Iterable[int], *, device: str = "") -> int:
        tl = self._timeline(uid)
        now_ms = _now_ms()
        dev = self._device(tl, device, now_ms)
        newly = self._ack(tl, dev, message_ids)
        self._advance(tl, dev)
        self._clean(tl, now_ms)
        return newly

    async def revise(self, uid: str, message: pb.Message) -> bool:
        tl = self._users.get(uid)
        position = tl.by_id.get(message.message_id) if tl is not None else None
        if position is None:
            return False
        entry = tl.entries[position]
        if (entry.message.conversation_id, entry.message.seq) != (message.conversation_id, message.seq):
            return False
        entry.message = message
        return True

    async def backlog(self, uid: str, *, device: str | None = None) -> int:
        tl = self._users.get(uid)
        if tl is None:
            return 0
        dev = tl.devices.get(device) if device is not None else None
        if dev is None:
            return len(tl.entries)
        return sum(1 for p in tl.entries if p > dev.cursor and p not in dev.above)

    async def register(self, uid: str, device: str) -> int:
        return self._device(self._timeline(uid), device, _now_ms()).cursor

    async def devices(self, uid: str) -> dict[str, int]:
        tl = self._users.get(uid)
        return {} if tl is None else {d: dev.cursor for d, dev in tl.devices.items()}

    def total_backlog(self) -> int:
        return sum(len(tl.entries) for tl in self._users.values())


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

    async def get(self, conversation_id: str, seq: int) -> pb.Message | None:
        return self._by_conv.get(conversation_id, {}).get(seq)

    async def revise(
        self, conversation_id: str, seq: int, change: Callable[[pb.Message], pb.Message | None]
    ) -> pb.Message | None:
        conv = self._by_conv.get(conversation_id, {})
        stored = conv.get(seq)
        if stored is None:
            return None
        revised = change(stored)
        if revised is not None:
            conv[seq] = revised
        return revised


class MemoryHiddenStore:
    def __init__(self) -> None:
        self._hidden: dict[tuple[str, str], set[int]] = {}

    async def hide(self, uid: str, conversation_id: str, seqs: Iterable[int]) -> None:
        self._hidden.setdefault((uid, conversation_id), set()).update(int(s) for s in seqs)

    async def hidden(self, uid: str, conversation_id: str, seqs: Iterable[int]) -> set[int]:
        mine = self._hidden.get((uid, conversation_id))
        return {int(s) for s in seqs if int(s) in mine} if mine else set()


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


def memory_stores(
    *, dedup_ttl_s: float = 24 * 3600, lease_s: float = 10.0,
    retention_s: float = DEFAULT_RETENTION_S, max_devices: int = DEFAULT_MAX_DEVICES,
) -> Stores:
    offline, sequences, messages, reads = (
        MemoryOfflineStore(retention_s=retention_s, max_devices=max_devices), MemorySequenceStore(), MemoryMessageStore(), MemoryReadStore(),
    )
    return Stores(
        sessions=MemorySessionStore(),
        offline=offline,
        sequences=sequences,
        messages=messages,
        groups=MemoryGroupStore(),
        reads=reads,
        segments=MemorySegmentStore(),
        hidden=MemoryHiddenStore(),
        steps=MemorySendSteps(sequences, offline, reads, messages, ttl_s=dedup_ttl_s, lease_s=lease_s),
    )
