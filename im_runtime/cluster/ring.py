"""Consistent hash ring over the live dispatch nodes (group ownership, S11).

Each node owns `vnodes` points on a 64-bit circle (blake2b of "<node>#<i>"); a key belongs to
the first point clockwise from its hash. Adding or removing a node therefore moves only the
keys of the arcs that node gains or loses: when a dispatch node leaves, only its groups move.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
from typing import Iterable

VNODES = 160


@functools.lru_cache(maxsize=1 << 16)
def _hash(text: str) -> int:
    """Cached: an access node hashes the routing key of every request it forwards, and keys
    (conversations, groups, users) repeat."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, nodes: Iterable[str] = (), *, vnodes: int = VNODES) -> None:
        self.vnodes = vnodes
        self._nodes: set[str] = set()
        self._points: list[int] = []
        self._owners: list[str] = []
        for node in nodes:
            self._nodes.add(node)
        self._rebuild()

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def add(self, node: str) -> bool:
        if node in self._nodes:
            return False
        self._nodes.add(node)
        self._rebuild()
        return True

    def remove(self, node: str) -> bool:
        if node not in self._nodes:
            return False
        self._nodes.discard(node)
        self._rebuild()
        return True

    def _rebuild(self) -> None:
        points = sorted((_hash(f"{node}#{i}"), node) for node in self._nodes for i in range(self.vnodes))
        self._points = [p for p, _ in points]
        self._owners = [n for _, n in points]

    def owner(self, key: str) -> str | None:
        """The node that owns key, or None when the ring is empty."""
        if not self._points:
            return None
        i = bisect.bisect_right(self._points, _hash(key))
        return self._owners[i % len(self._owners)]
