"""Where each user's connections are, as a dispatch node last read it: uid -> access nodes.

Why a cache: a push needs the receivers' access nodes. Asking route over gRPC for every push
batch (route then asking Redis) cost a gRPC round trip per batch and most of route's CPU, and
made every push wait. The session table changes only when a user connects or disconnects, and
the access node where that happens knows it: it sends SESSION_CHANGED over its link to every
dispatch node, which drops those users from this cache. So a push reads the cache, and only
a miss reads the session store (Redis), directly.

Correctness of the invalidation (no stale entry outlives a change):
- a lookup records the generation when it started; an invalidation bumps the generation and
  notes it per uid; a lookup's answer is not stored for a uid invalidated meanwhile (or after
  a clear) -- it may predate the change;
- an access node whose link (re)registers may have changed sessions while it was not linked:
  the dispatch node clears the whole cache then;
- entries also expire (`positive_ttl`, `negative_ttl` for "no session"), a bound on the damage
  of anything missed. A stale entry costs a push that goes nowhere, never a message: every
  message is in the receivers' offline queues before it is pushed (S10).
Sans I/O: the lookups themselves are the caller's (cluster/dispatch.py).
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

Nodes = tuple[str, ...]


class SessionCache:
    def __init__(
        self, *, positive_ttl: float = 60.0, negative_ttl: float = 2.0, max_entries: int = 500_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, Nodes]] = {}  # uid -> (expires, nodes)
        self._generation = 0
        self._changed: dict[str, int] = {}  # uid -> generation of its last invalidation
        self._cleared = 0  # generation of the last clear
        self._lookups = 0  # lookups in flight (while none, _changed need not be kept)
        self.hits = 0
        self.misses = 0

    def get(self, uid: str) -> Nodes | None:
        """The access nodes of uid (maybe none), or None when unknown (look it up)."""
        entry = self._entries.get(uid)
        if entry is None:
            self.misses += 1
            return None
        if entry[0] < self._clock():
            del self._entries[uid]
            self.misses += 1
            return None
        self.hits += 1
        return entry[1]

    def lookup_started(self) -> int:
        """Call before reading the session store; hand the result to lookup_done."""
        self._lookups += 1
        return self._generation

    def lookup_done(self, started: int, asked: Iterable[str], found: dict[str, list[str]]) -> None:
        """Stores what a lookup found (uids without sessions as empty), except for uids that
        changed while it ran. Pass an empty `found` for a failed lookup (nothing is stored)."""
        self._lookups -= 1
        if started >= self._cleared:
            now = self._clock()
            changed = self._changed
            for uid in asked:
                if changed.get(uid, -1) > started:
                    continue
                nodes = tuple(found.get(uid, ()))
                self._entries[uid] = (now + (self.positive_ttl if nodes else self.negative_ttl), nodes)
            if len(self._entries) > self.max_entries:  # the oldest stored go first
                for uid in list(self._entries)[: len(self._entries) - self.max_entries]:
                    del self._entries[uid]
        if self._lookups == 0:
            self._changed.clear()

    def invalidate(self, uids: Iterable[str]) -> None:
        self._generation += 1
        generation = self._generation
        for uid in uids:
            self._entries.pop(uid, None)
            if self._lookups:
                self._changed[uid] = generation

    def clear(self) -> None:
        self._generation += 1
        self._cleared = self._generation
        self._entries.clear()
        self._changed.clear()

    def __len__(self) -> int:
        return len(self._entries)
