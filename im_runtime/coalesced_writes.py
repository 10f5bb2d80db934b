"""Writes coalesced per event-loop turn, for the client gateway and the access <-> dispatch links.

Frames written during one loop turn leave in one transport.write: a fan-out or a pipelined
burst costs one send() per connection per turn, not one per frame (on both kinds of
connection, most of their CPU cost at thousands of messages per second)."""
from __future__ import annotations

import asyncio


class CoalescedWrites:
    """Mixin. The class using it holds `transport`, `_out` (the queued frames, None when none
    wait) and `_out_bytes`, and calls `_queue_write` with its loop."""

    __slots__ = ()
    transport: asyncio.Transport | None
    _out: list[bytes] | None
    _out_bytes: int

    def _queue_write(self, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        if self._out is None:
            self._out = [data]
            loop.call_soon(self._flush)
        else:
            self._out.append(data)
        self._out_bytes += len(data)

    def _flush(self) -> None:
        out, self._out, self._out_bytes = self._out, None, 0
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _drop_queued(self) -> None:
        self._out, self._out_bytes = None, 0

    def _pending_bytes(self) -> int:
        """Queued here plus buffered in the transport: what the peer has not taken yet."""
        return self.transport.get_write_buffer_size() + self._out_bytes if self.transport is not None else 0
