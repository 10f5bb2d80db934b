"""MongoDB engine for what must survive Redis: messages (S11), groups, id segments (S17) and the
seq high-water marks that keep seqs from going backwards (S11, S12).

Design (docs/storage.md has the collections and indexes):
- messages: `{_id: f"{conversation}:{(2**63-1-seq):019d}", b}` (S11's key: conversation id +
  reversed order id, so one conversation is one contiguous `_id` range, newest first; seq is
  the conversation's order). `b` is the serialized Message. History and max_seq are `_id`
  range reads, so no secondary index is needed, and save is idempotent per (conversation,
  seq): a duplicate is a DuplicateKeyError we swallow. (Until 0.1 the key held the message id
  and a unique (c, s) index served the ranges; that index was half of FerretDB's cost per
  insert.)
- Multi-node counters (id segments, seq marks) are Chains of insert-only documents whose
  unique `_id` makes each step atomic on MongoDB and on FerretDB alike (see Chain).
- Groups: MongoDB holds the truth, one document per membership; Redis caches the member list
  (RedisGroupCache) and every write invalidates it.
Uses pymongo's own asyncio client (`AsyncMongoClient`), which FerretDB accepts.
"""
from __future__ import annotations

import asyncio
import time
from typing import Iterable

from bson import Binary
from prometheus_client import Counter, Histogram
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from im_runtime.metrics import REGISTRY
from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.types import gap_marker
from im_runtime.storage.redis_store import RedisGroupCache

_MAX_SEQ = 2**63 - 1

MESSAGES_SAVED = Counter("imstack_mongo_messages_saved_total", "Message saves that completed (duplicates included)", registry=REGISTRY)
INSERT_BATCHES = Counter("imstack_mongo_insert_batches_total", "insert_many batches written by InsertBatcher", registry=REGISTRY)
INSERT_DOCS = Counter("imstack_mongo_insert_documents_total", "Documents in those batches", registry=REGISTRY)
INSERT_SECONDS = Histogram(
    "imstack_mongo_insert_seconds", "Time of one insert_many batch (every send in it waits for it)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=REGISTRY,
)
MESSAGE_SAVE_ERRORS = Counter("imstack_mongo_message_save_errors_total", "Message saves that failed (not duplicates)", registry=REGISTRY)


def message_key(conversation_id: str, seq: int) -> str:
    """S11 key: conversation id + reversed seq, fixed width, so ascending `_id` = newest first.

    Conversation ids never contain a ':' after their kind prefix (uids and group ids exclude
    it), so no conversation's keys fall inside another conversation's range."""
    return f"{conversation_id}:{(_MAX_SEQ - seq):019d}"


def seq_of(key: str) -> int:
    return _MAX_SEQ - int(key.rsplit(":", 1)[1])


async def ensure_indexes(db: AsyncDatabase) -> None:
    """Idempotent; run once at start by cluster_stores."""
    await db.group_members.create_index([("g", ASCENDING)], name="group")


class InsertBatcher:
    """Coalesces concurrent inserts into one collection: callers queue a document and one
    flusher writes everything queued with one unordered insert_many (one round trip and, on
    FerretDB's SQLite, one transaction and one fsync per batch, where single inserts pay one
    each), so batches grow with the load while a lone insert still costs one round trip.
    Each caller gets its own outcome: None, or DuplicateKeyError / the write error."""

    def __init__(self, collection: AsyncCollection, *, max_batch: int = 500, max_in_flight: int = 1) -> None:
        self._c = collection
        self._queue: list[tuple[dict, asyncio.Future]] = []
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._flushers: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones
        self._loop: asyncio.AbstractEventLoop | None = None

    async def insert(self, doc: dict) -> None:
        loop = self._loop or asyncio.get_running_loop()  # once: it costs a getpid() on 3.11
        self._loop = loop
        future = loop.create_future()
        self._queue.append((doc, future))
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            task = loop.create_task(self._flush())
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                failed: dict[int, Exception] = {}
                INSERT_BATCHES.inc()
                INSERT_DOCS.inc(len(batch))
                started = time.perf_counter()
                try:
                    await self._c.insert_many([doc for doc, _ in batch], ordered=False)
                except BulkWriteError as exc:
                    for error in exc.details.get("writeErrors", []):
                        message, code = error.get("errmsg", "write error"), error.get("code")
                        failed[error["index"]] = (DuplicateKeyError if code == 11000 else OperationFailure)(message, code)
                except Exception as exc:  # the whole batch failed (connection, timeout)
                    failed = dict.fromkeys(range(len(batch)), exc)
                INSERT_SECONDS.observe(time.perf_counter() - started)
                for i, (_, future) in enumerate(batch):
                    if future.done():
                        continue
                    if i in failed:
                        future.set_exception(failed[i])
                    else:
                        future.set_result(None)
        finally:
            self._in_flight -= 1


class _HeadHints:
    """Background, batched `$max` upserts of Chain heads. A head is only a hint, so callers do
    not wait for it; pending hints for one name collapse to the highest."""

    def __init__(self, collection: AsyncCollection) -> None:
        self._c = collection
        self._pending: dict[str, int] = {}
        self._task: asyncio.Task | None = None

    def push(self, name: str, value: int) -> None:
        if value > self._pending.get(name, -1):
            self._pending[name] = value
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            ops = [UpdateOne({"_id": Chain.head(name)}, {"$max": {"v": v}}, upsert=True) for name, v in batch.items()]
            try:
                await self._c.bulk_write(ops, ordered=False)
            except (BulkWriteError, DuplicateKeyError):
                pass  # two nodes upserting one new head: the other one's value stands
            except Exception:  # noqa: BLE001 - a lost hint only lengthens the next walk
                pass


class Chain:
    """A counter that only moves forward, atomic across nodes on any MongoDB-compatible server.

    Why not one document and findOneAndUpdate($inc/$max)? MongoDB applies that atomically, but
    FerretDB v1 (our test server) runs findAndModify as read, compute, replace: two nodes
    could both read 10 and both be handed [10, 20). So every step is an *insert* whose `_id`
    names the value it starts from (f"{name}#{from:020d}"): the unique `_id` lets exactly one
    node move the counter on from a given value, the loser re-reads and retries. A head
    document {_id: f"{name}#head", v} is only a hint of where the chain ends (walked forward from it with
    `_id` lookups), so it may lag without harm. Links are never deleted: a node that read an
    old value must still collide with the link that already moved on from it.
    """

    def __init__(self, collection: AsyncCollection, *, initial: int) -> None:
        self._c = collection
        self.initial = initial
        self._links = InsertBatcher(collection)
        self._heads = _HeadHints(collection)

    # Ids end in a fixed-width suffix, so no name can spell another name's link or head.
    @staticmethod
    def _link(name: str, value: int) -> str:
        return f"{name}#{value:020d}"

    @staticmethod
    def head(name: str) -> str:
        return f"{name}#head"

    async def current(self, name: str) -> int:
        head = await self._c.find_one({"_id": self.head(name)}, {"v": 1})
        value = int(head["v"]) if head else self.initial
        for _ in range(10_000):  # bounded walk; the head lags by a few links at most
            link = await self._c.find_one({"_id": self._link(name, value)}, {"v": 1})
            if link is None:
                return value
            value = int(link["v"])
        raise RuntimeError(f"chain {name!r} did not end within 10000 links")

    async def advance(self, name: str, step, *, known: int | None = None) -> tuple[int, int]:
        """Moves the counter from its current value to step(current) (> current); returns
        (from, to). If step returns None (nothing to do), returns (current, current).
        `known`: a value the caller just read (saves the walk; if stale, the insert collides
        and the chain is followed from there)."""
        value = await self.current(name) if known is None else known
        for _attempt in range(1000):
            target = step(value)
            if target is None:
                return value, value
            if target <= value:
                raise ValueError("a chain only moves forward")
            try:
                await self._links.insert({"_id": self._link(name, value), "v": int(target)})
            except DuplicateKeyError:  # another node moved on from `value` first: find the end
                value = await self.current(name)
                continue
            self._heads.push(name, int(target))  # a lagging or lost head only lengthens the next walk
            return value, target
        raise RuntimeError(f"chain {name!r}: too much contention")


class MongoMessageStore:
    """Saves are coalesced (InsertBatcher): each caller returns only after its own document is
    stored (S11: the sender is acked after persistence); a duplicate counts as stored."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._c = db.messages
        self._revs = db.message_revisions
        self._inserts = InsertBatcher(db.messages)

    async def save(self, message: pb.Message, body: bytes | None = None) -> None:
        key = message_key(message.conversation_id, message.seq)
        doc = {"_id": key, "b": Binary(body if body is not None else message.SerializeToString())}
        try:
            await self._inserts.insert(doc)
        except DuplicateKeyError:
            # idempotent per (conversation_id, seq) and per message id; but a gap marker there
            # gives way: the send it stood for came back after all (rare, one more round trip)
            if not message.gap:
                await self._c.replace_one({"_id": key, "g": 1}, doc)
        except Exception:
            MESSAGE_SAVE_ERRORS.inc()
            raise
        MESSAGES_SAVED.inc()

    async def mark_gaps(self, conversation_id: str, seqs: Iterable[int]) -> list[int]:
        """Marker documents `{_id, b: <gap Message>, g: 1}`: ranges read them like messages;
        an insert that meets a stored message or marker (duplicate key) leaves it."""
        wanted = list(dict.fromkeys(int(s) for s in seqs))
        docs = [
            {"_id": message_key(conversation_id, seq), "b": Binary(gap_marker(conversation_id, seq).SerializeToString()), "g": 1}
            for seq in wanted
        ]
        if not docs:
            return []
        try:
            await self._c.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            taken = {e["index"] for e in errors}
            return [seq for i, seq in enumerate(wanted) if i not in taken]
        return wanted

    async def range(
        self, conversation_id: str, *, after_seq: int = 0, before_seq: int = 0, limit: int = 50, newest_first: bool = False
    ) -> tuple[list[pb.Message], bool]:
        # seq > after_seq <=> key < key(after_seq); seq < before_seq <=> key > key(before_seq)
        after_seq = min(max(0, int(after_seq)), _MAX_SEQ)
        low = message_key(conversation_id, int(before_seq)) if 0 < before_seq <= _MAX_SEQ else f"{conversation_id}:"
        limit = max(0, int(limit))
        cursor = (
            self._c.find({"_id": {"$gt": low, "$lt": message_key(conversation_id, after_seq)}}, {"b": 1, "_id": 0})
            .sort("_id", ASCENDING if newest_first else DESCENDING)
            .limit(limit + 1)
        )
        docs = await cursor.to_list(limit + 1)
        return [pb.Message.FromString(bytes(d["b"])) for d in docs[:limit]], len(docs) > limit

    async def max_seq(self, conversation_id: str) -> int:
        doc = await self._c.find_one(
            {"_id": {"$gte": message_key(conversation_id, _MAX_SEQ), "$lt": message_key(conversation_id, 0)}},
            {"_id": 1},
            sort=[("_id", ASCENDING)],
        )
        return seq_of(doc["_id"]) if doc else 0

    async def max_seqs(self, conversation_ids: list[str]) -> dict[str, int]:
        found = await asyncio.gather(*(self.max_seq(c) for c in conversation_ids))
        return dict(zip(conversation_ids, found))

    async def get(self, conversation_id: str, seq: int) -> pb.Message | None:
        doc = await self._c.find_one({"_id": message_key(conversation_id, int(seq))}, {"b": 1})
        return None if doc is None else pb.Message.FromString(bytes(doc["b"]))

    async def revise(self, conversation_id: str, seq: int, change) -> pb.Message | None:
        """Revisions of one message are serialized by inserts, as Chain steps are: revision
        k+1 is a document `{_id: f"{key}#{k+1:06d}", b}` in `message_revisions` holding the
        new bytes, and only one node can insert it; the winner then writes the message
        document (`{b, r: k+1}`, guarded by r == k). A reviser that finds a revision beyond
        the document's `r` (its writer is slow or died) writes it forward first. Why not one
        guarded update_one as the compare-and-set: FerretDB v1 runs updates as read, then
        replace, and the contract test saw two concurrent revisions both match and one lost.
        History reads the message document, so it shows the newest revision once written."""
        key = message_key(conversation_id, int(seq))
        for _attempt in range(100):
            doc = await self._c.find_one({"_id": key})
            if doc is None:
                return None
            r = int(doc.get("r", 0))
            ahead = await self._revs.find_one({"_id": f"{key}#{r + 1:06d}"})
            if ahead is not None:  # roll a claimed revision forward, then look again
                await self._c.update_one({"_id": key, "r": r} if r else {"_id": key, "r": {"$exists": False}},
                                         {"$set": {"b": ahead["b"], "r": r + 1}})
                continue
            revised = change(pb.Message.FromString(bytes(doc["b"])))
            if revised is None:
                return None
            body = Binary(revised.SerializeToString())
            try:
                await self._revs.insert_one({"_id": f"{key}#{r + 1:06d}", "b": body})
            except DuplicateKeyError:
                continue  # another node revised it first: start from its revision
            await self._c.update_one({"_id": key, "r": r} if r else {"_id": key, "r": {"$exists": False}},
                                     {"$set": {"b": body, "r": r + 1}})
            return revised
        raise RuntimeError(f"message {key}: too many concurrent revisions")


class MongoHiddenStore:
    """`hidden` {_id: f"{len(uid)}:{uid}|{conversation}|{seq:020d}"}: one document per message
    a user deleted for themselves. Inserts only (a repeat is a duplicate key, swallowed); the
    lookup for a page is one `_id` $in query."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._c = db.hidden

    @staticmethod
    def _id(uid: str, conversation_id: str, seq: int) -> str:
        return f"{len(uid)}:{uid}|{conversation_id}|{int(seq):020d}"

    async def hide(self, uid: str, conversation_id: str, seqs: Iterable[int]) -> None:
        docs = [{"_id": self._id(uid, conversation_id, s)} for s in dict.fromkeys(int(s) for s in seqs)]
        if not docs:
            return
        try:
            await self._c.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise

    async def hidden(self, uid: str, conversation_id: str, seqs: Iterable[int]) -> set[int]:
        wanted = {self._id(uid, conversation_id, s): int(s) for s in seqs}
        if not wanted:
            return set()
        docs = await self._c.find({"_id": {"$in": list(wanted)}}, {"_id": 1}).to_list(None)
        return {wanted[d["_id"]] for d in docs if d["_id"] in wanted}


class MongoSeqFloor:
    """Durable floor of the Redis seq counters (redis_store.SeqFloor): a Chain per
    conversation in `seq_marks` holding the highest seq Redis may hand out."""

    def __init__(self, db: AsyncDatabase, messages: MongoMessageStore) -> None:
        self._chain = Chain(db.seq_marks, initial=0)
        self._messages = messages

    async def reserve(self, conversation_id: str, at_least: int, *, known: int | None = None) -> int:
        _, mark = await self._chain.advance(
            conversation_id, lambda cur: None if cur >= at_least else int(at_least), known=known
        )
        return mark

    async def restart(self, conversation_id: str, block: int) -> tuple[int, int]:
        """For a missing counter: reserves the next block after the durable mark, trying the
        empty chain first (a new conversation then costs one insert and no reads). Returns
        (mark before, mark after): every seq ever handed out is <= the mark before."""
        return await self._chain.advance(conversation_id, lambda cur: cur + block, known=self._chain.initial)

    async def reserved(self, conversation_id: str) -> int:
        return await self._chain.current(conversation_id)

    async def stored_max(self, conversation_id: str) -> int:
        return await self._messages.max_seq(conversation_id)

    async def stored_maxes(self, conversation_ids: list[str]) -> dict[str, int]:
        return await self._messages.max_seqs(conversation_ids)

    async def mark_gaps(self, conversation_id: str, seqs: Iterable[int]) -> list[int]:
        return await self._messages.mark_gaps(conversation_id, seqs)


class MongoSegmentStore:
    """Id segments (S17 segment mode) as a Chain per name in `segments`; ids start at 1."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._chain = Chain(db.segments, initial=1)

    async def lease(self, name: str, step: int) -> tuple[int, int]:
        if step <= 0:
            raise ValueError("step must be positive")
        return await self._chain.advance(name, lambda cur: cur + int(step))


class MongoGroupStore:
    """`groups` {_id: group} says a group exists; `group_members` holds one document per
    membership, {_id: f"{len(group)}:{group}|{uid}", g, u}. Adding is an insert and removing a delete of
    that document, each atomic on its own, so concurrent changes from several nodes are exact
    and report exactly what they changed (no read-modify-write of a member array). Reads go
    through the Redis cache (RedisGroupCache), which every write invalidates."""

    def __init__(self, db: AsyncDatabase, cache: RedisGroupCache) -> None:
        self._groups = db.groups
        self._members = db.group_members
        self._cache = cache

    @staticmethod
    def _id(group_id: str, uid: str) -> str:
        # length-prefixed: no group/uid pair can spell another pair's id, whatever they contain
        return f"{len(group_id)}:{group_id}|{uid}"

    def _doc(self, group_id: str, uid: str) -> dict:
        return {"_id": self._id(group_id, uid), "g": group_id, "u": uid}

    async def _insert(self, group_id: str, members: list[str]) -> list[str]:
        if not members:
            return []
        try:
            await self._members.insert_many([self._doc(group_id, m) for m in members], ordered=False)
            return members
        except BulkWriteError as exc:
            failed = {members[e["index"]] for e in exc.details.get("writeErrors", []) if e.get("code") == 11000}
            others = [e for e in exc.details.get("writeErrors", []) if e.get("code") != 11000]
            if others:
                raise
            return [m for m in members if m not in failed]

    async def create(self, group_id: str, members: Iterable[str]) -> bool:
        members = list(dict.fromkeys(members))
        try:
            await self._groups.insert_one({"_id": group_id})
        except DuplicateKeyError:
            return False
        await self._insert(group_id, members)
        await self._cache.invalidate(group_id)
        return True

    async def add_members(self, group_id: str, members: Iterable[str]) -> list[str] | None:
        if await self._groups.find_one({"_id": group_id}, {"_id": 1}) is None:
            return None
        added = await self._insert(group_id, list(dict.fromkeys(members)))
        if added:
            await self._cache.invalidate(group_id)
        return added

    async def remove_members(self, group_id: str, members: Iterable[str]) -> list[str] | None:
        if await self._groups.find_one({"_id": group_id}, {"_id": 1}) is None:
            return None
        members = list(dict.fromkeys(members))
        results = await asyncio.gather(*(self._members.delete_one({"_id": self._id(group_id, m)}) for m in members))
        removed = [m for m, r in zip(members, results) if r.deleted_count]
        if removed:
            await self._cache.invalidate(group_id)
        return removed

    async def members(self, group_id: str) -> frozenset[str] | None:
        cached, version = await self._cache.get(group_id)
        if cached is not None:
            return cached
        if await self._groups.find_one({"_id": group_id}, {"_id": 1}) is None:
            return None
        docs = await self._members.find({"g": group_id}, {"u": 1, "_id": 0}).to_list(None)
        members = frozenset(d["u"] for d in docs)
        await self._cache.put(group_id, version, members)
        return members
