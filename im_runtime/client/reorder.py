"""Per-conversation ordering and de-duplication for clients (S12, S15), sans I/O.

`Timeline.offer(message)` returns the messages that can now be handed to the application,
in seq order. A message whose predecessors are missing waits; `gaps()` names the ranges to
pull (history) once they have waited long enough. Ids seen are remembered (bounded), so a
message that arrives twice (push + offline pull, a re-push after reconnect) is delivered
once. The client's own sends count as seen seqs, so they never open a gap.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from im_runtime.proto import imstack_pb2 as pb

SEEN_IDS_LIMIT = 50_000


@dataclass
class _Conversation:
    watermark: int | None = None  # every seq <= watermark has been delivered or was ours
    held: dict[int, pb.Message] = field(default_factory=dict)  # seq -> message above a gap
    own: set[int] = field(default_factory=set)  # our own seqs above the watermark
    gap_since: float | None = None


class Timeline:
    def __init__(self) -> None:
        self._conversations: dict[str, _Conversation] = {}
        self._seen: OrderedDict[int, None] = OrderedDict()

    def _conv(self, conversation_id: str) -> _Conversation:
        conv = self._conversations.get(conversation_id)
        if conv is None:
            conv = self._conversations[conversation_id] = _Conversation()
        return conv

    def seen(self, message_id: int) -> bool:
        return message_id in self._seen

    def _remember(self, message_id: int) -> None:
        self._seen[message_id] = None
        if len(self._seen) > SEEN_IDS_LIMIT:
            self._seen.popitem(last=False)

    def set_watermark(self, conversation_id: str, seq: int) -> None:
        """Everything up to seq is known (e.g. the app loaded history up to it)."""
        conv = self._conv(conversation_id)
        conv.watermark = max(conv.watermark or 0, seq)

    def own_sent(self, conversation_id: str, seq: int, message_id: int, now: float) -> list[pb.Message]:
        self._remember(message_id)
        conv = self._conv(conversation_id)
        if conv.watermark is None or seq <= conv.watermark:
            return []
        conv.own.add(seq)
        return self._advance(conv, now)

    def offer(self, message: pb.Message, now: float) -> list[pb.Message]:
        conv = self._conv(message.conversation_id)
        if message.message_id in self._seen:
            if conv.watermark is not None and message.seq > conv.watermark and message.seq not in conv.held:
                conv.own.add(message.seq)  # delivered before: only its slot matters now
                return self._advance(conv, now)
            return []
        self._remember(message.message_id)
        if conv.watermark is None:
            conv.watermark = message.seq - 1
        if message.seq <= conv.watermark:
            return [message]  # late (its slot was skipped after a failed gap fill): never drop it
        conv.held[message.seq] = message
        return self._advance(conv, now)

    def _advance(self, conv: _Conversation, now: float) -> list[pb.Message]:
        out: list[pb.Message] = []
        assert conv.watermark is not None
        while True:
            nxt = conv.watermark + 1
            if nxt in conv.held:
                out.append(conv.held.pop(nxt))
            elif nxt in conv.own:
                conv.own.discard(nxt)
            else:
                break
            conv.watermark = nxt
        conv.gap_since = (conv.gap_since or now) if conv.held else None
        return out

    def gaps(self, now: float, *, after: float) -> list[tuple[str, int, int]]:
        """(conversation_id, after_seq, before_seq) for gaps older than `after` seconds."""
        out = []
        for conversation_id, conv in self._conversations.items():
            if conv.held and conv.gap_since is not None and now - conv.gap_since >= after:
                out.append((conversation_id, conv.watermark or 0, min(conv.held)))
        return out

    def skip_gap(self, conversation_id: str, now: float) -> list[pb.Message]:
        """A gap that history could not fill: deliver what is held, in order, and move on."""
        conv = self._conv(conversation_id)
        if not conv.held:
            return []
        conv.watermark = min(conv.held) - 1
        return self._advance(conv, now)

    def delivered_seq(self, conversation_id: str) -> int:
        conv = self._conversations.get(conversation_id)
        return conv.watermark or 0 if conv else 0
