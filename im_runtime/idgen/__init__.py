"""Message id service (S17): snowflake and segment modes behind one `IdGenerator` shape."""
from __future__ import annotations

from typing import Protocol


class IdGenerator(Protocol):
    async def next_ids(self, count: int) -> list[int]: ...
