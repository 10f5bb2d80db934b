"""Redis engine for the fast, shared state: sessions, offline queues, seq counters, de-dup
claims and read positions (plus the group cache used by the MongoDB group store).

Design (docs/storage.md has the full key table):
- Every key carries a Redis Cluster hash tag `{t}` where t is a short hash of the owner id, so
  keys spread over the cluster (S10) while all keys of one user (offline queue, its index and
  pending counts) or one conversation share a slot; each Lua script touches one slot only.
- One round trip per store call: a single command, a Lua script where a step must be atomic
  (offline add/ack, seq counter, de-dup claim, max-only read position), or a few commands sent
  together where keys live in different slots (sessions, read positions). Everything goes
  through the process's shared pools.AutoPipeline, which pipelines concurrent calls.
- Offline score (S10, S18) = max(server_time_ms * 1000, last score of that user + 1): close to
  the message time, strictly increasing per user so ties keep insertion order and never wrap,
  exact in a double until the year 2255. The score is the cursor handed to clients.
- Seq counters (S11, S12) never go backwards: Redis hands out seqs only below a high-water mark
  reserved in MongoDB (blocks, as OpenIM does); when the counter key is missing (Redis restart
  without persistence, FLUSHALL, failover to an empty replica) it restarts from
  max(reserved mark, highest stored seq), which is above every seq ever handed out.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import time
import uuid
from typing import Iterable, Protocol

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.storage.interfaces import Begun, OfflinePage, SendState
from im_runtime.storage.pools import AutoPipeline, await_all

PREFIX = "im"


@functools.lru_cache(maxsize=1 << 16)
def tag(owner: str) -> str:
    """Cluster hash tag of an id: 8 hex chars, so odd ids (with `{`/`}`) still hash well.
    Cached: every send names the same few ids several times."""
    return hashlib.blake2b(owner.encode(), digest_size=4).hexdigest()


# Every access node that has held a session (one small set; route reconciles it with ZooKeeper).
NODES_KEY = f"{PREFIX}:nodes"
# The session table's epoch (SessionStore.epoch). One key: on a Redis Cluster it sits on one
# master, so a loss of another master's data goes unnoticed here (docs/cluster.md).
EPOCH_KEY = f"{PREFIX}:epoch"


def _key(kind: str, owner: str) -> str:
    return f"{PREFIX}:{kind}:{{{tag(owner)}}}:{owner}"


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --------------------------------------------------------------------------- sessions (S5, S9)


class RedisSessionStore:
    """`im:sess:{t}:<uid>` hash "node|conn_id" -> device_id; `im:node:{t}:<node>` set of
    "conn_id|uid" so drop_node finds a dead node's sessions without scanning."""

    def __init__(self, pipe: AutoPipeline) -> None:
        self._p = pipe

    async def bind(self, uid: str, node: str, conn_id: int, device_id: str) -> None:
        await await_all(
            self._p.call("HSET", _key("sess", uid), f"{node}|{conn_id}", device_id),
            self._p.call("SADD", _key("node", node), f"{conn_id}|{uid}"),
            self._p.call("SADD", NODES_KEY, node),
        )

    async def unbind(self, uid: str, node: str, conn_id: int) -> bool:
        removed, _ = await await_all(
            self._p.call("HDEL", _key("sess", uid), f"{node}|{conn_id}"),
            self._p.call("SREM", _key("node", node), f"{conn_id}|{uid}"),
        )
        return bool(removed)

    async def lookup(self, uids: Iterable[str]) -> dict[str, list[str]]:
        uids = list(dict.fromkeys(uids))
        if not uids:
            return {}
        replies = await await_all(*(self._p.call("HKEYS", _key("sess", uid)) for uid in uids))
        found: dict[str, list[str]] = {}
        for uid, fields in zip(uids, replies):
            if fields:
                found[uid] = sorted({_s(f).rsplit("|", 1)[0] for f in fields})
        return found

    async def nodes(self) -> set[str]:
        return {_s(n) for n in await self._p.call("SMEMBERS", NODES_KEY)}

    async def epoch(self) -> str:
        value = await self._p.call("GET", EPOCH_KEY)
        if value is None:  # a new Redis, or one that lost its data: a new epoch, set once
            await self._p.call("SET", EPOCH_KEY, uuid.uuid4().hex, "NX")
            value = await self._p.call("GET", EPOCH_KEY)
        return _s(value)

    async def drop_node(self, node: str) -> int:
        await self._p.call("SREM", NODES_KEY, node)
        node_key = _key("node", node)
        entries = list(await self._p.call("SMEMBERS", node_key))
        if not entries:
            return 0
        pairs = [_s(e).split("|", 1) for e in entries]
        replies = await await_all(
            *(self._p.call("HDEL", _key("sess", uid), f"{node}|{conn_id}") for conn_id, uid in pairs),
            self._p.call("SREM", node_key, *entries),
        )
        return sum(replies[:-1])


# --------------------------------------------------------------------------- timeline (S10, S18)

# Every timeline script: KEYS = the six keys of RedisOfflineStore._keys (one user, one slot);
# ARGV[1..3] = now ms, retention ms, max devices; the script's own arguments from ARGV[4].
# The steps are the memory engine's (memory.MemoryOfflineStore). They are written to keep the
# number of Redis calls per script low (each one costs a microsecond or more inside Redis, and
# every delivered message pays one ack): the registry is read in one HGETALL, an in-order ack
# moves the cursor without writing any mark, entries every device has leave with one HMGET, one
# HDEL and one ZREM, and an entry about to leave is never flagged first.
_TIMELINE_HEAD = r"""
local TL, TLM, TLP, TLL, TLD, TLA = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local NOW, RETENTION, MAXDEV = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function fmt(n) return string.format('%.0f', n) end
local function count(conv, delta)
  if redis.call('HINCRBY', TLP, conv, delta) <= 0 then redis.call('HDEL', TLP, conv) end
end
local function pending(conv) return tonumber(redis.call('HGET', TLP, conv) or '0') end
local function conv_of(v) return string.sub(v, 2, string.find(v, '\n', 2, true) - 1) end
-- Drops the given entries (every device has them).
local function drop_ids(ids)
  local values = redis.call('HMGET', TLM, unpack(ids))
  for i = 1, #ids do
    local v = values[i]
    if v and string.byte(v, 1) == 48 then count(conv_of(v), -1) end
  end
  redis.call('HDEL', TLM, unpack(ids))
  redis.call('ZREM', TL, unpack(ids))
end
-- A lone device (the only one registered, no marks anywhere) has acked none of the entries
-- still kept (the ones it acked went at once), so its acks need no cursor walk: the entries
-- simply go, as they did before there were devices. Its stored cursor may then lag behind
-- (it is a floor: everything at or below it is on the device); the general steps below start
-- from it correctly. Its last-seen time is refreshed once a minute at most.
local function lone(name)
  local me = redis.call('HGET', TLD, name)
  if not me or redis.call('HLEN', TLD) ~= 1 then return false end
  local sp = string.find(me, ' ', 1, true)
  if NOW - tonumber(string.sub(me, sp + 1)) > 60000 then
    redis.call('HSET', TLD, name, string.sub(me, 1, sp) .. fmt(NOW))
  end
  return true
end
local function forget_marks(name, upto)
  local prefix = name .. '\n'
  local n = #prefix
  for _, f in ipairs(redis.call('HKEYS', TLA)) do
    if string.sub(f, 1, n) == prefix and (not upto or tonumber(string.sub(f, n + 1)) <= upto) then
      redis.call('HDEL', TLA, f)
    end
  end
end
local function expire()
  local cutoff = (NOW - RETENTION) * 1000
  if cutoff <= 0 then return end
  local rows = redis.call('ZRANGEBYSCORE', TL, '-inf', '(' .. fmt(cutoff), 'WITHSCORES', 'LIMIT', 0, 100)
  if #rows == 0 then return end
  local devices = redis.call('HKEYS', TLD)
  for i = 1, #rows, 2 do
    local v = redis.call('HGET', TLM, rows[i])
    if v and string.byte(v, 1) == 48 then count(conv_of(v), -1) end
    redis.call('HDEL', TLM, rows[i])
    redis.call('ZREM', TL, rows[i])
    for _, d in ipairs(devices) do redis.call('HDEL', TLA, d .. '\n' .. fmt(tonumber(rows[i + 1]))) end
  end
end
"""

_TIMELINE_DEVICES = r"""
local function parse(v)
  local sp = string.find(v, ' ', 1, true)
  return tonumber(string.sub(v, 1, sp - 1)), tonumber(string.sub(v, sp + 1))
end
-- The registry in one read: this device's cursor (0 when new: saved by save()) and the lowest
-- cursor of the other devices (nil: none). A device unseen for longer than the retention
-- limit leaves; a new device past MAXDEV evicts the least recently seen.
local function registry(name)
  local all = redis.call('HGETALL', TLD)
  local stale = NOW - RETENTION
  local mine, others = nil, {}
  for i = 1, #all, 2 do
    local c, seen = parse(all[i + 1])
    if all[i] == name then
      mine = c
    elseif seen < stale then
      redis.call('HDEL', TLD, all[i])
      forget_marks(all[i], nil)
    else
      others[#others + 1] = {all[i], c, seen}
    end
  end
  if not mine then
    mine = 0
    while #others >= MAXDEV do
      local k = 1
      for j = 2, #others do if others[j][3] < others[k][3] then k = j end end
      redis.call('HDEL', TLD, others[k][1])
      forget_marks(others[k][1], nil)
      table.remove(others, k)
    end
  end
  local floor = nil
  for _, o in ipairs(others) do if not floor or o[2] < floor then floor = o[2] end end
  return mine, floor
end
local function save(name, cursor) redis.call('HSET', TLD, name, fmt(cursor) .. ' ' .. fmt(NOW)) end
local function lowest(cursor, others) if others and others < cursor then return others end return cursor end
-- Entries at or below floor: every device has them. At most 20 batches of 500 per call, so
-- one call never blocks Redis for long; what is left goes with the next call that moves a cursor.
local function drop_upto(floor)
  for _ = 1, 20 do
    local ids = redis.call('ZRANGEBYSCORE', TL, '-inf', fmt(floor), 'LIMIT', 0, 500)
    if #ids == 0 then return end
    drop_ids(ids)
    if #ids < 500 then return end
  end
end
-- The device acks ids: its cursor moves over the acked entries right above it and over its
-- earlier out-of-order marks; acked entries further up become marks. Returns the new cursor,
-- the {position, id} newly acked (flagged later if they stay).
local function ack_ids(name, cursor, ids)
  local byp, ps, top = {}, 0, nil
  for _, id in ipairs(ids) do
    local s = redis.call('ZSCORE', TL, id)
    if s then
      local p = tonumber(s)
      if p > cursor and not byp[p] then
        byp[p] = id
        ps = ps + 1
        if not top or p > top then top = p end
      end
    end
  end
  local marked = redis.call('HLEN', TLA) > 0
  local newly = {}
  if ps == 0 and not marked then return cursor, newly end
  if ps > 0 and not marked and redis.call('ZCOUNT', TL, '(' .. fmt(cursor), fmt(top)) == ps then
    for p, id in pairs(byp) do newly[#newly + 1] = {p, id} end
    return top, newly  -- in order: no mark written or read
  end
  local prefix = name .. '\n'
  local batch = ps + 8
  local walking = true
  while walking do
    local rows = redis.call('ZRANGEBYSCORE', TL, '(' .. fmt(cursor), '+inf', 'WITHSCORES', 'LIMIT', 0, batch)
    for i = 1, #rows, 2 do
      local p = tonumber(rows[i + 1])
      local id = byp[p]
      if id then
        byp[p] = nil
        if not marked or redis.call('HDEL', TLA, prefix .. fmt(p)) == 0 then newly[#newly + 1] = {p, id} end
        cursor = p
      elseif marked and redis.call('HDEL', TLA, prefix .. fmt(p)) == 1 then
        cursor = p
      else
        walking = false
        break
      end
    end
    if #rows < 2 * batch then break end
  end
  for p, id in pairs(byp) do
    if redis.call('HSETNX', TLA, prefix .. fmt(p), '1') == 1 then newly[#newly + 1] = {p, id} end
  end
  return cursor, newly
end
-- Entries newly acked that stay (above floor) no longer count as pending (PULL_NOTIFY).
local function flag(newly, floor)
  for _, e in ipairs(newly) do
    if e[1] > floor then
      local v = redis.call('HGET', TLM, e[2])
      if v and string.byte(v, 1) == 48 then
        redis.call('HSET', TLM, e[2], '1' .. string.sub(v, 2))
        count(conv_of(v), -1)
      end
    end
  end
end
"""

# ARGV[4..]: message id, message bytes, conversation, server time ms. A receiver's entry.
_TIMELINE_ADD_BODY = r"""
expire()
local id, conv = ARGV[4], ARGV[6]
if redis.call('ZSCORE', TL, id) then return pending(conv) end
local pos = tonumber(ARGV[7]) * 1000
local last = tonumber(redis.call('GET', TLL) or '0')
if pos <= last then pos = last + 1 end
local s = fmt(pos)
redis.call('SET', TLL, s)
redis.call('ZADD', TL, s, id)
redis.call('HSET', TLM, id, '0' .. conv .. '\n' .. ARGV[5])
return redis.call('HINCRBY', TLP, conv, 1)
"""
_TIMELINE_ADD = _TIMELINE_HEAD + _TIMELINE_ADD_BODY

# ARGV[4..]: message id, message bytes, conversation, server time ms, holder device.
# Sender sync: an entry the holder has already. When the holder is the user's only device no
# other device needs it: no entry at all (the usual case, one Redis call or two).
_TIMELINE_HOLD = _TIMELINE_HEAD + r"""
local id, conv, name = ARGV[4], ARGV[6], ARGV[8]
if lone(name) then return 0 end
""" + _TIMELINE_DEVICES + r"""
expire()
if redis.call('ZSCORE', TL, id) then return pending(conv) end
local pos = tonumber(ARGV[7]) * 1000
local last = tonumber(redis.call('GET', TLL) or '0')
if pos <= last then pos = last + 1 end
redis.call('SET', TLL, fmt(pos))
local cursor, others = registry(name)
if not others then
  save(name, cursor)  -- the only device (new): nobody else needs the entry
  return pending(conv)
end
local before = lowest(cursor, others)
redis.call('ZADD', TL, fmt(pos), id)
redis.call('HSET', TLM, id, '1' .. conv .. '\n' .. ARGV[5])
redis.call('HSET', TLA, name .. '\n' .. fmt(pos), '1')
cursor = ack_ids(name, cursor, {})
save(name, cursor)
local floor = lowest(cursor, others)
if floor > before then drop_upto(floor) end
return pending(conv)
"""

# ARGV[4..]: device, cursor, limit, resume cursor, acked ids...
# Returns {next_cursor, device cursor, has_more, entry values...}.
_TIMELINE_PULL = _TIMELINE_HEAD + _TIMELINE_DEVICES + r"""
local name = ARGV[4]
local cursor, others = registry(name)
local before = lowest(cursor, others)
local acked = {}
for i = 8, #ARGV do acked[#acked + 1] = ARGV[i] end
local newly
cursor, newly = ack_ids(name, cursor, acked)
local resume = tonumber(ARGV[7])
if resume > cursor then
  local last = tonumber(redis.call('GET', TLL) or '0')
  if resume > last then resume = last end
  if resume > cursor then
    cursor = resume
    forget_marks(name, cursor)
    cursor = ack_ids(name, cursor, {})
  end
end
save(name, cursor)
local floor = lowest(cursor, others)
if floor > before then drop_upto(floor) end
flag(newly, floor)
local start = tonumber(ARGV[5])
if cursor > start then start = cursor end
local limit = tonumber(ARGV[6])
local marked = redis.call('HLEN', TLA) > 0
local prefix = name .. '\n'
local ids, next_cursor, more, from = {}, start, 0, start
while true do
  local rows = redis.call('ZRANGEBYSCORE', TL, '(' .. fmt(from), '+inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
  for i = 1, #rows, 2 do
    local pos = tonumber(rows[i + 1])
    from = pos
    if not marked or redis.call('HEXISTS', TLA, prefix .. fmt(pos)) == 0 then
      if #ids >= limit then more = 1 break end
      ids[#ids + 1] = rows[i]
      next_cursor = pos
    end
  end
  if more == 1 or #rows < 2 * (limit + 1) then break end
end
local reply = {next_cursor, cursor, more}
if #ids > 0 then
  local values = redis.call('HMGET', TLM, unpack(ids))
  for i = 1, #ids do reply[#reply + 1] = values[i] end
end
return reply
"""

# ARGV[4..]: device, message ids... Returns how many the device had not acked.
_TIMELINE_ACK = _TIMELINE_HEAD + r"""
local name = ARGV[4]
if lone(name) and redis.call('HLEN', TLA) == 0 then
  local ids = {}
  for i = 5, #ARGV do
    if redis.call('ZSCORE', TL, ARGV[i]) then ids[#ids + 1] = ARGV[i] end
  end
  if #ids > 0 then drop_ids(ids) end
  return #ids
end
""" + _TIMELINE_DEVICES + r"""
local cursor, others = registry(name)
local before = lowest(cursor, others)
local acked = {}
for i = 5, #ARGV do acked[#acked + 1] = ARGV[i] end
local newly
cursor, newly = ack_ids(name, cursor, acked)
save(name, cursor)
local floor = lowest(cursor, others)
if floor > before then drop_upto(floor) end
flag(newly, floor)
return #newly
"""

# ARGV[4]: device. Registers it (or marks it seen); returns its cursor.
_TIMELINE_REGISTER = _TIMELINE_HEAD + _TIMELINE_DEVICES + r"""
local cursor = registry(ARGV[4])
save(ARGV[4], cursor)
return cursor
"""

# KEYS: the timeline's entries hash; ARGV: message id, "<conversation>\n" prefix, new bytes.
# Replaces the entry's message, keeping its flag, if it is there and of that conversation.
_TIMELINE_REVISE = r"""
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v or string.sub(v, 2, 1 + #ARGV[2]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], string.sub(v, 1, 1) .. ARGV[2] .. ARGV[3])
return 1
"""

# ARGV[4]: device. Entries it has not acked (all entries for an unknown device); no changes.
_TIMELINE_BACKLOG = _TIMELINE_HEAD + _TIMELINE_DEVICES + r"""
local v = redis.call('HGET', TLD, ARGV[4])
if not v then return redis.call('ZCARD', TL) end
local cursor = parse(v)
local prefix = ARGV[4] .. '\n'
local marks = 0
for _, f in ipairs(redis.call('HKEYS', TLA)) do
  if string.sub(f, 1, #prefix) == prefix then marks = marks + 1 end
end
return redis.call('ZCOUNT', TL, '(' .. fmt(cursor), '+inf') - marks
"""


def _entry_message(value: bytes) -> pb.Message:
    """An entry value is b"<flag><conversation>\n<message bytes>"."""
    return pb.Message.FromString(value[value.index(b"\n") + 1 :])


class RedisOfflineStore:
    """interfaces.OfflineStore, per user all in slot {t(uid)} (docs/storage.md, "Timeline"):
    `im:tl` zset message id -> position (the timeline), `im:tlm` hash message id -> flag +
    conversation + message bytes, `im:tlp` hash conversation -> entries no device acked
    (PULL_NOTIFY), `im:tll` last position handed out (kept when the timeline empties, so
    positions keep growing), `im:tld` hash device -> "cursor last-seen-ms" (the registry),
    `im:tla` hash "device\\nposition" -> 1 (acks above a cursor, until it passes them).
    Every call is one Lua script. Nothing is stored per (message, device): memory per message
    does not grow with devices."""

    def __init__(self, pipe: AutoPipeline, *, retention_s: float = 7 * 24 * 3600, max_devices: int = 16) -> None:
        self._p = pipe
        self._retention_ms = int(retention_s * 1000)
        self._max_devices = int(max_devices)
        self._add = pipe.client.register_script(_TIMELINE_ADD)
        self._hold = pipe.client.register_script(_TIMELINE_HOLD)
        self._pull = pipe.client.register_script(_TIMELINE_PULL)
        self._ack = pipe.client.register_script(_TIMELINE_ACK)
        self._backlog = pipe.client.register_script(_TIMELINE_BACKLOG)
        self._revise = pipe.client.register_script(_TIMELINE_REVISE)
        self._register = pipe.client.register_script(_TIMELINE_REGISTER)

    @staticmethod
    @functools.lru_cache(maxsize=1 << 14)
    def _keys(uid: str) -> tuple[str, str, str, str, str, str]:
        return tuple(_key(kind, uid) for kind in ("tl", "tlm", "tlp", "tll", "tld", "tla"))  # type: ignore[return-value]

    def common_args(self) -> list:
        """ARGV[1..3] of every timeline script: now ms, retention ms, max devices."""
        return [int(time.time() * 1000), self._retention_ms, self._max_devices]

    def add_args(self, message: pb.Message) -> list:
        """ARGV of the add script (the send path's enqueue script shares it)."""
        return [
            *self.common_args(), message.message_id, message.SerializeToString(), message.conversation_id,
            max(0, message.server_time),  # no time given: the per-user +1 keeps the order
        ]

    async def add(self, uid: str, message: pb.Message, *, holder: str | None = None) -> int:
        if holder is None:
            return int(await self._p.script(self._add, self._keys(uid), self.add_args(message)))
        return int(await self._p.script(self._hold, self._keys(uid), [*self.add_args(message), holder]))

    async def pull(
        self, uid: str, cursor: int, limit: int, *, device: str = "", resume_cursor: int = 0, acked_ids: Iterable[int] = ()
    ) -> OfflinePage:
        ids = [int(m) for m in dict.fromkeys(acked_ids)]
        reply = await self._p.script(
            self._pull, self._keys(uid),
            [*self.common_args(), device, max(0, int(cursor)), max(0, int(limit)), max(0, int(resume_cursor)), *ids],
        )
        next_cursor, device_cursor, more = (int(v) for v in reply[:3])
        return OfflinePage([_entry_message(v) for v in reply[3:]], bool(more), next_cursor, device_cursor)

    async def ack(self, uid: str, message_ids: Iterable[int], *, device: str = "") -> int:
        ids = [int(m) for m in dict.fromkeys(message_ids)]
        if not ids:
            return 0
        return int(await self._p.batch(self._ack, self._keys(uid), [*self.common_args(), device, *ids]))

    async def revise(self, uid: str, message: pb.Message) -> bool:
        """Same message id and conversation; the seq is checked after (an id is unique per
        sender, so a clash within one conversation would need a client reusing its ids)."""
        current = await self._p.call("HGET", _key("tlm", uid), message.message_id)
        if current is None or _entry_message(current).seq != message.seq:
            return False
        return bool(await self._p.script(
            self._revise, [_key("tlm", uid)],
            [message.message_id, message.conversation_id + "\n", message.SerializeToString()],
        ))

    async def backlog(self, uid: str, *, device: str | None = None) -> int:
        if device is None:
            return int(await self._p.call("ZCARD", _key("tl", uid)))
        return int(await self._p.script(self._backlog, self._keys(uid), [*self.common_args(), device]))

    async def register(self, uid: str, device: str) -> int:
        return int(await self._p.script(self._register, self._keys(uid), [*self.common_args(), device]))

    async def devices(self, uid: str) -> dict[str, int]:
        raw = await self._p.call("HGETALL", _key("tld", uid))
        pairs = raw.items() if isinstance(raw, dict) else zip(raw[0::2], raw[1::2])
        return {_s(d): int(_s(v).split(" ", 1)[0]) for d, v in pairs}


# --------------------------------------------------------------------------- sequences (S11, S12)


class SeqFloor(Protocol):
    """What the Redis counter needs from durable storage (MongoDB in cluster mode)."""

    async def reserve(self, conversation_id: str, at_least: int, *, known: int | None = None) -> int:
        """Raises the durable high-water mark to >= at_least; returns the mark. `known`: the
        mark as the caller last saw it (a hint that saves reading it; may be stale)."""
    async def restart(self, conversation_id: str, block: int) -> tuple[int, int]:
        """Reserves `block` more after the durable mark: (mark before, mark after)."""
    async def reserved(self, conversation_id: str) -> int:
        """The durable high-water mark (0 if none)."""
    async def stored_max(self, conversation_id: str) -> int:
        """Highest seq persisted with a message (0 if none)."""
    async def stored_maxes(self, conversation_ids: list[str]) -> dict[str, int]: ...
    async def mark_gaps(self, conversation_id: str, seqs: Iterable[int]) -> list[int]:
        """Gap markers for seqs that will never be handed out again (MessageStore.mark_gaps)."""


# KEYS: counter hash {c = last seq handed out, m = reserved mark}, restart lock
# ARGV: 1 = may take the restart lock, lock ttl ms
# returns {1, seq} | {0, c} (mark reached: reserve more) | {-1, 0} (counter missing: the caller
# now holds the restart lock and restarts it) | {-2, 0} (counter missing, another caller restarts)
_SEQ_NEXT = """
local v = redis.call('HMGET', KEYS[1], 'c', 'm')
if not v[1] or not v[2] then
  if ARGV[1] == '1' and redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then return {-1, 0} end
  return {-2, 0}
end
local c = tonumber(v[1])
if c < tonumber(v[2]) then return {1, redis.call('HINCRBY', KEYS[1], 'c', 1)} end
return {0, c}
"""

# KEYS: counter hash, restart lock; ARGV: floor, mark, recovering (1 = the caller holds the
# restart lock and computed the floor from MongoDB).
# Raises m to the mark (max-only); recreates a missing counter at the floor only when
# recovering: a floor read from Redis before a loss may be below seqs handed out since.
# Then hands out one seq if it can.
_SEQ_INSTALL = """
local v = redis.call('HMGET', KEYS[1], 'c', 'm')
local c = tonumber(v[1] or '0')
local m = tonumber(v[2] or '0')
local floor = tonumber(ARGV[1])
local mark = tonumber(ARGV[2])
if ARGV[3] == '1' then redis.call('DEL', KEYS[2]) end
if not v[1] or not v[2] then
  if ARGV[3] ~= '1' then return {-2, 0} end
  if c < floor then c = floor end
end
if mark > m then m = mark end
redis.call('HSET', KEYS[1], 'c', c, 'm', m)
if c < m then return {1, redis.call('HINCRBY', KEYS[1], 'c', 1)} end
return {0, c}
"""


MAX_MARKED_JUMP = 10_000


class RedisSequenceStore:
    """`im:seq:{t}:<conversation>` hash {c, m}. INCR-speed in the common case (one Lua call);
    every `block` seqs one MongoDB chain step (mongo_store.Chain) raises the reserved mark.

    A missing counter (new conversation, or lost with Redis) is restarted by one caller in the
    whole cluster at a time: `im:seqr:{t}:<conversation>` (SET NX PX, same slot) is the restart
    lock; other callers poll until the counter is back (or the lock expires, when its holder
    died). Without it, a node restarting a brand-new conversation could collide with another
    node's fresh block, take it for a lost counter and start above it (a gap at the start).
    Within one process the slow path is single-flight per conversation (asyncio lock)."""

    def __init__(self, pipe: AutoPipeline, floor: SeqFloor, *, block: int = 100, restart_ttl_s: float = 10) -> None:
        self._p = pipe
        self._floor = floor
        self._block = block
        self._restart_ttl_ms = int(restart_ttl_s * 1000)
        self._next = pipe.client.register_script(_SEQ_NEXT)
        self._install = pipe.client.register_script(_SEQ_INSTALL)
        # single flight per conversation for the slow path: lock and how many callers use it
        self._slow: dict[str, tuple[asyncio.Lock, int]] = {}

    async def next_seq(self, conversation_id: str) -> int:
        keys = [_key("seq", conversation_id), _key("seqr", conversation_id)]
        status, value = await self._p.script(self._next, keys, [0, self._restart_ttl_ms])
        if status == 1:
            return int(value)
        lock, users = self._slow.get(conversation_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._slow[conversation_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._refill(conversation_id, keys)
        finally:
            lock, users = self._slow[conversation_id]
            if users == 1:
                del self._slow[conversation_id]
            else:
                self._slow[conversation_id] = (lock, users - 1)

    async def _refill(self, conversation_id: str, keys: list[str]) -> int:
        deadline = time.monotonic() + 3 * self._restart_ttl_ms / 1000
        pause = 0.002
        while time.monotonic() < deadline:
            status, value = await self._p.script(self._next, keys, [1, self._restart_ttl_ms])
            if status == 1:  # another caller refilled meanwhile
                return int(value)
            if status == -2:  # another node restarts the counter: wait for it
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            recovering = status == -1
            try:
                if recovering:  # we hold the restart lock: a new conversation, or lost with Redis
                    floor, mark = await self._floor.restart(conversation_id, self._block)
                    if floor > 0:  # a real loss (rare): the stored messages are a second floor
                        stored = await self._floor.stored_max(conversation_id)
                        if floor > stored:
                            # The counter restarts above seqs that were never stored: the block
                            # jump. They get gap markers (at most MAX_MARKED_JUMP; settle marks
                            # any other one when a history read finds it), so clients skip
                            # them at once; a send still in flight from before the loss that
                            # stores one of them later replaces its marker.
                            top = min(floor, stored + MAX_MARKED_JUMP)
                            await self._floor.mark_gaps(conversation_id, range(stored + 1, top + 1))
                        floor = max(floor, stored)
                else:
                    floor = int(value)
                    # status 0 means c >= m, and c never passes m: floor is the mark itself, a
                    # value the chain passed through, so it is a safe hint (Chain.advance)
                    mark = await self._floor.reserve(conversation_id, floor + self._block, known=floor)
            except BaseException:
                if recovering:  # let another caller take over at once
                    await self._p.call("DEL", keys[1])
                raise
            status, value = await self._p.script(self._install, keys, [floor, mark, 1 if recovering else 0])
            if status == 1:
                return int(value)
        raise RuntimeError(f"seq counter for {conversation_id!r} could not be refilled in time")

    async def latest_seqs(self, conversation_ids: Iterable[str]) -> dict[str, int]:
        convs = list(dict.fromkeys(conversation_ids))
        if not convs:
            return {}
        replies = await await_all(*(self._p.call("HGET", _key("seq", conv), "c") for conv in convs))
        result = {c: int(v) for c, v in zip(convs, replies) if v is not None}
        missing = [c for c in convs if c not in result]
        if missing:  # no counter: never used (no mark either), or lost with Redis
            marks = await asyncio.gather(*(self._floor.reserved(c) for c in missing))
            lost = [c for c, mark in zip(missing, marks) if mark > 0]
            if lost:  # the stored messages know the latest seq
                result.update(await self._floor.stored_maxes(lost))
        return {c: result.get(c, 0) for c in convs}


# --------------------------------------------------------------------------- read positions (S13, S14)

_MAX_FIELD_FN = """
local function max_field(key, field, value)
  local cur = tonumber(redis.call('HGET', key, field) or '-1')
  local seq = tonumber(value)
  if seq > cur then
    redis.call('HSET', key, field, value)
    return seq
  end
  return cur
end
"""

# KEYS: hash; ARGV: field, seq. read = max(read, seq), atomic (S14).
_MAX_FIELD = _MAX_FIELD_FN + "return max_field(KEYS[1], ARGV[1], ARGV[2])"


class RedisReadStore:
    """`im:rdu:{t(uid)}:<uid>` hash conversation -> read seq, and the mirror
    `im:rdc:{t(conv)}:<conv>` hash uid -> read seq. Both only grow (Lua max), so the two
    copies agree whatever order concurrent advances land in."""

    def __init__(self, pipe: AutoPipeline) -> None:
        self._p = pipe
        self._max = pipe.client.register_script(_MAX_FIELD)

    async def join(self, uid: str, conversation_id: str, read_seq: int = 0) -> None:
        await await_all(
            self._p.call("HSETNX", _key("rdu", uid), conversation_id, int(read_seq)),
            self._p.call("HSETNX", _key("rdc", conversation_id), uid, int(read_seq)),
        )

    async def advance(self, uid: str, conversation_id: str, seq: int) -> int:
        mine, _ = await await_all(
            self._p.script(self._max, [_key("rdu", uid)], [conversation_id, int(seq)]),
            self._p.script(self._max, [_key("rdc", conversation_id)], [uid, int(seq)]),
        )
        return int(mine)

    async def positions(self, conversation_id: str) -> dict[str, int]:
        return _int_hash(await self._p.call("HGETALL", _key("rdc", conversation_id)))

    async def conversations(self, uid: str) -> dict[str, int]:
        return _int_hash(await self._p.call("HGETALL", _key("rdu", uid)))


def _int_hash(raw) -> dict[str, int]:
    if isinstance(raw, dict):
        return {_s(k): int(v) for k, v in raw.items()}
    return {_s(k): int(v) for k, v in zip(raw[0::2], raw[1::2])}


# --------------------------------------------------------------------------- group cache

# KEYS: cache hash; ARGV: version read before loading ('' = none), members json, ttl ms.
# Stores the list only if no write invalidated the group since the version was read.
_GROUP_PUT = """
local v = redis.call('HGET', KEYS[1], 'v') or ''
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'm', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: cache hash. Drops the list and bumps the version, in one step.
_GROUP_INVALIDATE = """
redis.call('HDEL', KEYS[1], 'm')
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


class RedisGroupCache:
    """`im:grp:{t}:<group>` hash {m: members json, v: invalidation counter}: a read cache in
    front of the MongoDB group documents. A reader notes `v` with its miss and stores what it
    loaded only if `v` is unchanged; every write bumps `v` after changing MongoDB. So a reader
    that loaded before a write either stores before the bump (which then drops it) or is
    refused: a stale member list never outlives a write."""

    def __init__(self, pipe: AutoPipeline, *, ttl_s: float = 3600) -> None:
        self._p = pipe
        self._ttl_ms = int(ttl_s * 1000)
        self._put = pipe.client.register_script(_GROUP_PUT)
        self._invalidate = pipe.client.register_script(_GROUP_INVALIDATE)

    async def get(self, group_id: str) -> tuple[frozenset[str] | None, str]:
        """(members or None on a miss, the version to hand back to put)."""
        raw, version = await self._p.call("HMGET", _key("grp", group_id), "m", "v")
        return (None if raw is None else frozenset(json.loads(raw))), ("" if version is None else _s(version))

    async def put(self, group_id: str, version: str, members: Iterable[str]) -> None:
        await self._p.script(self._put, [_key("grp", group_id)], [version, json.dumps(sorted(members)), self._ttl_ms])

    async def invalidate(self, group_id: str) -> None:
        await self._p.script(self._invalidate, [_key("grp", group_id)], [self._ttl_ms])


# --------------------------------------------------------------------------- the send path (S10-S15)

_DONE = b"d"  # value prefix of a completed claim

# Claim values (key `im:dd:{t(conversation)}:<sender>:<message_id>`, in the conversation's slot):
#   "p <seq> <lease deadline ms> <server time ms>"  in flight (seq 0: the slow path is getting one)
#   "d" + serialized SendAck                        done
#   "x"                                             given up (settle marked its seq as a gap)
# The journal `im:infl:{t(conversation)}:<conversation>` maps the seq of every begun, unfinished
# send to its claim key.

# KEYS: claim, seq counter hash, read mirror of the conversation (`rdc`), journal, and on a
# single Redis the sender's read list (`rdu`).
# ARGV: now ms, lease ms, claim ttl ms, conversation, sender, recipients...
# Returns {4, seq, time} new | {1, seq, time} resumed | {3, seq} pending | {2, 0, 0, value} done |
# {0, 0, time} claimed, but the counter needs the slow path (then _SEND_ATTACH).
# The sender's read positions are set, not maxed: in the step that hands the seq out, it is the
# conversation's latest, and no read position is ever above the latest seq.
_SEND_BEGIN = """
local now = tonumber(ARGV[1])
local until_ = string.format('%.0f', now + tonumber(ARGV[2]))
local v = redis.call('GET', KEYS[1])
if v then
  local kind = string.sub(v, 1, 1)
  if kind == 'd' then return {2, 0, 0, v} end
  if kind == 'p' then
    local a = string.find(v, ' ', 3, true)
    local b = string.find(v, ' ', a + 1, true)
    local seq = string.sub(v, 3, a - 1)
    if now < tonumber(string.sub(v, a + 1, b - 1)) then return {3, tonumber(seq)} end
    if seq ~= '0' then
      local t = string.sub(v, b + 1)
      redis.call('SET', KEYS[1], 'p ' .. seq .. ' ' .. until_ .. ' ' .. t, 'PX', ARGV[3])
      redis.call('HSET', KEYS[4], seq, KEYS[1])
      return {1, tonumber(seq), tonumber(t)}
    end
  end
end
local c = redis.call('HMGET', KEYS[2], 'c', 'm')
if not c[1] or not c[2] or tonumber(c[1]) >= tonumber(c[2]) then
  redis.call('SET', KEYS[1], 'p 0 ' .. until_ .. ' ' .. ARGV[1], 'PX', ARGV[3])
  return {0, 0, now}
end
local seq = redis.call('HINCRBY', KEYS[2], 'c', 1)
redis.call('SET', KEYS[1], 'p ' .. seq .. ' ' .. until_ .. ' ' .. ARGV[1], 'PX', ARGV[3])
redis.call('HSET', KEYS[4], seq, KEYS[1])
redis.call('HSET', KEYS[3], ARGV[5], seq)
if KEYS[5] then redis.call('HSET', KEYS[5], ARGV[4], seq) end
for i = 6, #ARGV do redis.call('HSETNX', KEYS[3], ARGV[i], 0) end
return {4, seq, now}
"""

# KEYS: claim, read mirror, journal (, the sender's read list on a single Redis);
# ARGV: seq, now ms, lease ms, claim ttl ms, conversation, sender, recipients...
# The slow path's seq joins the claim it made ("p 0 ..."); 0 if the claim moved on meanwhile.
# The seq was handed out outside this step, so the read positions are maxed here.
_SEND_ATTACH = _MAX_FIELD_FN + """
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 4) ~= 'p 0 ' then return 0 end
local t = string.sub(v, string.find(v, ' ', 5, true) + 1)
local until_ = string.format('%.0f', tonumber(ARGV[2]) + tonumber(ARGV[3]))
redis.call('SET', KEYS[1], 'p ' .. ARGV[1] .. ' ' .. until_ .. ' ' .. t, 'PX', ARGV[4])
redis.call('HSET', KEYS[3], ARGV[1], KEYS[1])
max_field(KEYS[2], ARGV[6], ARGV[1])
if KEYS[4] then max_field(KEYS[4], ARGV[5], ARGV[1]) end
for i = 7, #ARGV do redis.call('HSETNX', KEYS[2], ARGV[i], 0) end
return 1
"""

# KEYS: claim, journal; ARGV: done value, ttl ms, seq. Completes the claim, clears the journal
# (a seq is journaled for one claim only, so the entry is this send's).
_COMPLETE_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[3])
"""

# One Redis (not a Cluster): the whole finish in one script (begin already set the sender's
# read list). KEYS: claim, journal, then per recipient its six timeline keys and its read list.
# ARGV: the timeline's three (now, retention, max devices), message id, message bytes,
# conversation, time ms (the timeline add's), then done value, ttl ms, seq.
# Queues first and completes last: Redis does not roll a failed script back, so a write refused
# half-way (noeviction at maxmemory) must not leave a completed claim without the queue entries.
# The timeline steps read their keys from TL..TLA, which each recipient's turn points at its own.
_SEND_FINISH = _TIMELINE_HEAD + "local function timeline_add()\n" + _TIMELINE_ADD_BODY + """end
local out = {}
for i = 0, (#KEYS - 2) / 7 - 1 do
  local k = 2 + i * 7
  TL, TLM, TLP, TLL, TLD, TLA = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]
  redis.call('HSETNX', KEYS[k + 7], ARGV[6], 0)
  out[i + 1] = timeline_add()
end
redis.call('SET', KEYS[1], ARGV[8], 'PX', ARGV[9])
redis.call('HDEL', KEYS[2], ARGV[10])
return out
"""

# Redis Cluster, per recipient (its slot): joins it to the conversation and adds the message
# to its timeline. KEYS: the six timeline keys, the recipient's read list; ARGV: as the add.
_SEND_ENQUEUE = _TIMELINE_HEAD + """
redis.call('HSETNX', KEYS[7], ARGV[6], 0)
""" + _TIMELINE_ADD_BODY

# Redis Cluster, the conversation's slot, after the queues: KEYS claim, journal.
_SEND_COMPLETE = _COMPLETE_LUA + "return 1"

# KEYS: claim. The attempt failed: its lease ends now (a claim without a seq is dropped).
_SEND_ABORT = """
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 1) ~= 'p' then return 0 end
local a = string.find(v, ' ', 3, true)
local b = string.find(v, ' ', a + 1, true)
local seq = string.sub(v, 3, a - 1)
if seq == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], 'p ' .. seq .. ' 0 ' .. string.sub(v, b + 1), 'KEEPTTL')
end
return 1
"""

# KEYS: journal, then the claim key the journal names for each seq; ARGV: now ms, then the seqs.
# A seq is dead when its claim is no longer in flight with that seq under a live lease; a claim
# still holding it is given up ("x": a retry later is a new send with a new seq). Returns them.
_SEND_SETTLE = """
local now = tonumber(ARGV[1])
local out = {}
for i = 2, #KEYS do
  local seq = ARGV[i]
  if redis.call('HGET', KEYS[1], seq) == KEYS[i] then
    local v = redis.call('GET', KEYS[i])
    local holds, alive = false, false
    if v and string.sub(v, 1, 1) == 'p' then
      local a = string.find(v, ' ', 3, true)
      local b = string.find(v, ' ', a + 1, true)
      holds = string.sub(v, 3, a - 1) == seq
      alive = holds and now < tonumber(string.sub(v, a + 1, b - 1))
    end
    if not alive then
      if holds then redis.call('SET', KEYS[i], 'x', 'KEEPTTL') end
      redis.call('HDEL', KEYS[1], seq)
      out[#out + 1] = tonumber(seq)
    end
  end
end
return out
"""


def claim_key(conversation_id: str, sender: str, message_id: int) -> str:
    """In the conversation's slot, so one script claims and sequences (uids exclude ':')."""
    return f"{PREFIX}:dd:{{{tag(conversation_id)}}}:{sender}:{int(message_id)}"


class RedisSendSteps:
    """interfaces.SendSteps in Lua scripts, each within one cluster slot.

    `begin` is one script in the conversation's slot: the de-dup claim (keyed there for this
    reason), the next seq (fast path of the counter), the journal entry, the sender's read
    position in the conversation's read mirror (max) and every recipient joined to it. On a
    single Redis `finish` is one more script over every key of the send (each recipient's
    offline queue and read list, the claim, the journal, the sender's read list): two Redis
    calls per send (there were four, five with the claim). On a Redis Cluster, whose scripts
    may touch one slot only, finish is one script per recipient, then the claim's and the
    sender's read list's. The counter's slow path (a new conversation, the end of a leased
    block, a counter lost with Redis) goes through RedisSequenceStore.next_seq and attaches
    the seq to the claim with one more script."""

    def __init__(self, pipe: AutoPipeline, sequences: RedisSequenceStore, messages, offline: RedisOfflineStore, *,
                 single_node: bool, ttl_s: float = 24 * 3600, lease_s: float = 10.0) -> None:
        self._p = pipe
        self._sequences = sequences
        self._offline = offline  # its retention and device limit go with every timeline add
        self._messages = messages  # MessageStore: settle stores the gap markers there
        self._single = single_node
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._lease_ms = max(1, int(lease_s * 1000))
        register = pipe.client.register_script
        self._begin = register(_SEND_BEGIN)
        self._attach = register(_SEND_ATTACH)
        self._finish = register(_SEND_FINISH)
        self._enqueue = register(_SEND_ENQUEUE)
        self._complete = register(_SEND_COMPLETE)
        self._abort = register(_SEND_ABORT)
        self._settle = register(_SEND_SETTLE)
        self._max = register(_MAX_FIELD)

    async def begin(self, conversation_id: str, sender: str, message_id: int, recipients: list[str]) -> Begun:
        now = int(time.time() * 1000)
        claim = claim_key(conversation_id, sender, message_id)
        keys = [claim, _key("seq", conversation_id), _key("rdc", conversation_id), _key("infl", conversation_id)]
        if self._single:
            keys.append(_key("rdu", sender))
        reply = await self._p.batch(
            self._begin, keys, [now, self._lease_ms, self._ttl_ms, conversation_id, sender, *recipients]
        )
        status = reply[0]
        if status == 4:
            return Begun(SendState.NEW, int(reply[1]), int(reply[2]))
        if status == 1:
            return Begun(SendState.RESUMED, int(reply[1]), int(reply[2]))
        if status == 3:
            return Begun(SendState.PENDING, int(reply[1]))
        if status == 2:
            ack = pb.SendAck.FromString(reply[3][1:])
            return Begun(SendState.DONE, ack.seq, ack.server_time, ack)
        # claimed; the counter needs its slow path (one send in `block`)
        try:
            seq = await self._sequences.next_seq(conversation_id)
        except BaseException:
            await self._p.call("DEL", claim)
            raise
        attached = await self._p.script(
            self._attach, [claim, keys[2], keys[3], *keys[4:]],
            [seq, int(time.time() * 1000), self._lease_ms, self._ttl_ms, conversation_id, sender, *recipients],
        )
        if attached != 1:  # our lease ran out meanwhile and a retry took the claim over
            await self._messages.mark_gaps(conversation_id, [seq])
            return Begun(SendState.PENDING, 0)
        return Begun(SendState.NEW, seq, int(reply[2]))

    async def finish(self, message: pb.Message, body: bytes, recipients: list[str], ack: pb.SendAck) -> list[int]:
        conv = message.conversation_id
        sender = getattr(message, "from")
        claim = claim_key(conv, sender, message.message_id)
        done = _DONE + ack.SerializeToString()
        server_ms = max(0, message.server_time)
        if self._single:
            keys = [claim, _key("infl", conv)]
            for uid in recipients:
                keys += RedisOfflineStore._keys(uid)
                keys.append(_key("rdu", uid))
            args = [*self._offline.common_args(), message.message_id, body, conv, server_ms, done, self._ttl_ms, message.seq]
            return [int(r) for r in await self._p.batch(self._finish, keys, args)]
        args = [*self._offline.common_args(), message.message_id, body, conv, server_ms]
        replies = await await_all(
            *(self._p.script(self._enqueue, [*RedisOfflineStore._keys(uid), _key("rdu", uid)], args) for uid in recipients)
        )
        await await_all(
            self._p.script(self._complete, [claim, _key("infl", conv)], [done, self._ttl_ms, message.seq]),
            self._p.script(self._max, [_key("rdu", sender)], [conv, int(message.seq)]),
        )
        return [int(r) for r in replies]

    async def abort(self, conversation_id: str, sender: str, message_id: int) -> None:
        await self._p.script(self._abort, [claim_key(conversation_id, sender, message_id)], [])

    async def settle(self, conversation_id: str, seqs: list[int]) -> list[int]:
        latest = (await self._sequences.latest_seqs([conversation_id]))[conversation_id]
        seqs = sorted({int(s) for s in seqs if 0 < int(s) <= latest})
        if not seqs:
            return []
        journal = _key("infl", conversation_id)
        held = await self._p.call("HMGET", journal, *seqs)
        dead = [seq for seq, claim in zip(seqs, held) if claim is None]  # no send holds it
        named = [(seq, _s(claim)) for seq, claim in zip(seqs, held) if claim is not None]
        if named:
            given_up = await self._p.script(
                self._settle, [journal, *(c for _, c in named)], [int(time.time() * 1000), *(s for s, _ in named)]
            )
            dead += [int(s) for s in given_up]
        return await self._messages.mark_gaps(conversation_id, sorted(dead))
