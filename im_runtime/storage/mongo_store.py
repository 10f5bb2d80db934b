"""MongoDB engine for what must survive Redis: messages (S11), groups, id segments (S17) and the
seq high-water marks that keep seqs from going backwards (S11, S12).

Design (docs/storage.md has the collections and indexes):
- messages: `_id` = f"{conversation}:{(2**63-1-message_id):019d}" (S11: conversation id +
  reversed message id, so an `_id` range scan reads the newest first), plus the fields `c`
  (conversation), `s` (seq), `m` (message id), `t` (server time) and `b` (the serialized
  protobuf). A unique index on (c, s) serves history ranges and max_seq, and makes save
  idempotent per (conversation, seq): a duplicate is a DuplicateKeyError we swallow.
- Every multi-node counter is one findOneAndUpdate on one document ($inc for id segments,
  $max for seq marks), which MongoDB applies atomically: two nodes never get the same range.
- Groups: MongoDB holds the truth with a version `v` bumped by every write; Redis caches the
  member list (RedisGroupCache) keyed by that version, so a stale reader never wins.
Uses pymongo's own asyncio client (`AsyncMongoClient`), which FerretDB accepts.
"""
from __future__ import annotations

import asyncio
from typing import Iterable

from bson import Binary
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.storage.redis_store import RedisGroupCache

_MAX_ID = 2**63 - 1


def message_key(conversation_id: str, message_id: int) -> str:
    """S11 key: conversation id + reversed message id, so ascending `_id` = newest first."""
    return f"{conversation_id}:{(_MAX_ID - message_id):019d}"


async def ensure_indexes(db: AsyncDatabase) -> None:
    """Idempotent; run once at start by cluster_stores."""
    await db.messages.create_index([("c", ASCENDING), ("s", ASCENDING)], name="conv_seq", unique=True)


async def _upsert_retry(op, attempts: int = 5):
    """Two nodes upserting the same missing document race on its _id; the loser retries and
    then updates the winner's document (MongoDB documents this retry)."""
    for attempt in range(attempts):
        try:
            return await op()
        except DuplicateKeyError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.005 * (attempt + 1))


class MongoMessageStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self._c = db.messages

    async def save(self, message: pb.Message) -> None:
        doc = {
            "_id": message_key(message.conversation_id, message.message_id),
            "c": message.conversation_id,
            "s": int(message.seq),
            "m": int(message.message_id),
            "t": int(message.server_time),
            "b": Binary(message.SerializeToString()),
        }
        try:
            await self._c.insert_one(doc)
        except DuplicateKeyError:
            pass  # idempotent per (conversation_id, seq) and per message id

    async def range(
        self, conversation_id: str, *, after_seq: int = 0, before_seq: int = 0, limit: int = 50, newest_first: bool = False
    ) -> tuple[list[pb.Message], bool]:
        bounds: dict = {"$gt": int(after_seq)}
        if before_seq:
            bounds["$lt"] = int(before_seq)
        limit = max(0, int(limit))
        cursor = (
            self._c.find({"c": conversation_id, "s": bounds}, {"b": 1, "_id": 0})
            .sort("s", DESCENDING if newest_first else ASCENDING)
            .limit(limit + 1)
        )
        docs = await cursor.to_list(limit + 1)
        return [pb.Message.FromString(bytes(d["b"])) for d in docs[:limit]], len(docs) > limit

    async def max_seq(self, conversation_id: str) -> int:
        doc = await self._c.find_one({"c": conversation_id}, {"s": 1, "_id": 0}, sort=[("s", DESCENDING)])
        return int(doc["s"]) if doc else 0

    async def max_seqs(self, conversation_ids: list[str]) -> dict[str, int]:
        found = await asyncio.gather(*(self.max_seq(c) for c in conversation_ids))
        return dict(zip(conversation_ids, found))


class MongoSeqFloor:
    """Durable floor of the Redis seq counters (redis_store.SeqFloor): `seq_marks` documents
    {_id: conversation, hi: highest seq Redis may hand out}, raised with $max."""

    def __init__(self, db: AsyncDatabase, messages: MongoMessageStore) -> None:
        self._c = db.seq_marks
        self._messages = messages

    async def reserve(self, conversation_id: str, at_least: int) -> int:
        async def op():
            return await self._c.find_one_and_update(
                {"_id": conversation_id}, {"$max": {"hi": int(at_least)}}, upsert=True, return_document=ReturnDocument.AFTER
            )

        return int((await _upsert_retry(op))["hi"])

    async def reserved(self, conversation_id: str) -> int:
        doc = await self._c.find_one({"_id": conversation_id})
        return int(doc["hi"]) if doc else 0

    async def stored_max(self, conversation_id: str) -> int:
        return await self._messages.max_seq(conversation_id)

    async def stored_maxes(self, conversation_ids: list[str]) -> dict[str, int]:
        return await self._messages.max_seqs(conversation_ids)


class MongoSegmentStore:
    """`segments` documents {_id: name, n: ids handed out}; ids start at 1 (S17 segment mode)."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._c = db.segments

    async def lease(self, name: str, step: int) -> tuple[int, int]:
        if step <= 0:
            raise ValueError("step must be positive")

        async def op():
            return await self._c.find_one_and_update(
                {"_id": name}, {"$inc": {"n": int(step)}}, upsert=True, return_document=ReturnDocument.AFTER
            )

        end = int((await _upsert_retry(op))["n"]) + 1
        return end - step, end


class MongoGroupStore:
    """`groups` documents {_id: group, members: [...], v: version}, cached in Redis."""

    def __init__(self, db: AsyncDatabase, cache: RedisGroupCache) -> None:
        self._c = db.groups
        self._cache = cache

    async def create(self, group_id: str, members: Iterable[str]) -> bool:
        members = list(dict.fromkeys(members))
        try:
            await self._c.insert_one({"_id": group_id, "members": members, "v": 1})
        except DuplicateKeyError:
            return False
        await self._cache.put(group_id, 1, members)
        return True

    async def add_members(self, group_id: str, members: Iterable[str]) -> list[str] | None:
        members = list(dict.fromkeys(members))
        before = await self._c.find_one_and_update(
            {"_id": group_id},
            {"$addToSet": {"members": {"$each": members}}, "$inc": {"v": 1}},
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            return None
        had = set(before["members"])
        added = [m for m in members if m not in had]
        await self._cache.put(group_id, int(before["v"]) + 1, had.union(added))
        return added

    async def remove_members(self, group_id: str, members: Iterable[str]) -> list[str] | None:
        members = list(dict.fromkeys(members))
        before = await self._c.find_one_and_update(
            {"_id": group_id},
            {"$pullAll": {"members": members}, "$inc": {"v": 1}},
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            return None
        had = set(before["members"])
        removed = [m for m in members if m in had]
        await self._cache.put(group_id, int(before["v"]) + 1, had.difference(removed))
        return removed

    async def members(self, group_id: str) -> frozenset[str] | None:
        cached = await self._cache.get(group_id)
        if cached is not None:
            return cached
        doc = await self._c.find_one({"_id": group_id})
        if doc is None:
            return None
        await self._cache.put(group_id, int(doc["v"]), doc["members"])
        return frozenset(doc["members"])

