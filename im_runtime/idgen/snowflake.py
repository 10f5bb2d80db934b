"""Snowflake ids: 41 bits of milliseconds since 2024-01-01, 10 bits of worker id, 12 of sequence.

The clock going backwards never yields a duplicate: the generator keeps the last millisecond
it used and carries on from it (a logical clock) until the wall clock catches up, counting
each such event in `clock_regressions` so it shows in metrics and logs.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
WORKER_BITS = 10
SEQUENCE_BITS = 12
MAX_WORKER = (1 << WORKER_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1

log = logging.getLogger(__name__)


class SnowflakeGenerator:
    def __init__(self, worker_id: int, *, clock_ms: Callable[[], int] | None = None) -> None:
        if not 0 <= worker_id <= MAX_WORKER:
            raise ValueError(f"worker id must be in 0..{MAX_WORKER}, got {worker_id}")
        self.worker_id = worker_id
        self._clock = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._last_ms = -1
        self._sequence = 0
        self.clock_regressions = 0

    def next_id(self) -> int:
        now = self._clock() - EPOCH_MS
        if now < self._last_ms:
            self.clock_regressions += 1
            if self.clock_regressions == 1 or self.clock_regressions % 10_000 == 0:
                log.warning("clock went backwards", extra={"by_ms": self._last_ms - now})
            now = self._last_ms
        if now == self._last_ms:
            self._sequence = (self._sequence + 1) & MAX_SEQUENCE
            if self._sequence == 0:
                now = self._last_ms + 1  # sequence exhausted: borrow the next millisecond
        else:
            self._sequence = 0
        self._last_ms = now
        return (now << (WORKER_BITS + SEQUENCE_BITS)) | (self.worker_id << SEQUENCE_BITS) | self._sequence

    async def next_ids(self, count: int) -> list[int]:
        return [self.next_id() for _ in range(count)]
