"""Segment ids (S17, the Leaf/Tinyid design): ranges leased from storage, double-buffered.

Each node leases [start, end) of `step` ids from the SegmentStore; when a tenth of the
current segment is used the next one is leased in the background, so callers almost never
wait on storage. Ranges never overlap across nodes because the store leases atomically.
"""
from __future__ import annotations

import asyncio

from im_runtime.storage.interfaces import SegmentStore


class SegmentGenerator:
    def __init__(self, store: SegmentStore, *, name: str = "message", step: int = 10_000) -> None:
        if step < 10:
            raise ValueError("step must be at least 10")
        self._store = store
        self._name = name
        self._step = step
        self._current: tuple[int, int] | None = None
        self._next_value = 0
        self._prefetch: asyncio.Task[tuple[int, int]] | None = None
        self._lock = asyncio.Lock()
        self.leases = 0

    async def _lease(self) -> tuple[int, int]:
        self.leases += 1
        return await self._store.lease(self._name, self._step)

    async def next_ids(self, count: int) -> list[int]:
        async with self._lock:
            ids: list[int] = []
            while len(ids) < count:
                if self._current is None or self._next_value >= self._current[1]:
                    if self._prefetch is not None:
                        self._current = await self._prefetch
                        self._prefetch = None
                    else:
                        self._current = await self._lease()
                    self._next_value = self._current[0]
                start, end = self._current
                take = min(count - len(ids), end - self._next_value)
                ids.extend(range(self._next_value, self._next_value + take))
                self._next_value += take
                used = self._next_value - start
                if self._prefetch is None and used * 10 >= end - start and self._next_value < end:
                    self._prefetch = asyncio.ensure_future(self._lease())
            return ids
