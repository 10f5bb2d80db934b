"""Per-conversation ordering and de-duplication for clients (S12, S15), sans I/O.

The server assigns each conversation's seq, but pushes of one conversation may arrive out
of order (concurrent sends, failover). `Timeline.offer(message)` returns what can now be handed
to the application, in seq order:
- a message whose predecessors are missing waits; `gaps()` names the ranges to fetch from
  history, again and again with backoff, and `expire()` gives a gap up after a while and
  delivers what waited, in order (a fallback: the server marks every seq that will never
  carry a message, and history returns those gap markers, which `offer` skips at once);
- in a conversation seen for the first time, a first message with seq > 1 waits briefly
  (`settle()`), so that messages sent at the same moment are still put in order;
- ids seen are remembered (bounded), so a message that arrives twice (push + offline pull, a
  re-push after reconnect) is delivered once;
- the messages this client sends only fill their slots: their ids are known from the moment
  the send starts (`expect_own`), so neither the ack nor the message found through history
  reaches the application. The user's messages sent from another device (sender sync, S18)
  are delivered like any other, `from` being the user's own uid.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from im_runtime.proto import imstack_pb2 as pb

GAP_CONTENT_TYPE = -1  # protocol.types.GAP_CONTENT_TYPE (the SDK reads the protocol page only)

SEEN_IDS_LIMIT = 50_000
MAX_FILL_BACKOFF = 8  # history fills of one gap back off up to 2**8 x the first wait


@dataclass
class _Conversation:
    watermark: int | None = None  # every seq <= watermark was delivered, was ours, or was given up
    held: dict[int, pb.Message] = field(default_factory=dict)  # seq -> message waiting for a gap
    own: set[int] = field(default_factory=set)  # our own seqs above the watermark
    since: float | None = None  # when the oldest waiting message began to wait
    fills: int = 0  # history fills tried for the current gap
    next_fill: float = 0.0


class Timeline:
    def __init__(self, uid: str | None = None) -> None:
        self.uid = uid
        self._conversations: dict[str, _Conversation] = {}
        self._seen: OrderedDict[int, None] = OrderedDict()
        self.repeats = 0  # messages offered again (push + pull, a re-push): handed over once
        self.gaps_skipped = 0  # gap markers seen (history)
        self.gaps_given_up = 0  # gaps skipped by expire(): waited for and never filled

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

    def expect_own(self, message_id: int) -> None:
        """A send of this client starts: that message must never come back as incoming."""
        self._remember(message_id)

    def set_watermark(self, conversation_id: str, seq: int) -> None:
        """Everything up to seq is known (e.g. the app loaded history up to it)."""
        conv = self._conv(conversation_id)
        conv.watermark = max(conv.watermark or 0, seq)

    def own_sent(self, conversation_id: str, seq: int, message_id: int, now: float) -> list[pb.Message]:
        self._remember(message_id)
        return self._slot(self._conv(conversation_id), seq, now)

    def _slot(self, conv: _Conversation, seq: int, now: float) -> list[pb.Message]:
        """A seq that is accounted for without delivering anything."""
        if conv.watermark is None:
            if seq == 1:
                conv.watermark = 0
            else:
                conv.own.add(seq)
                return []
        if seq <= conv.watermark or seq in conv.held:
            return []
        conv.own.add(seq)
        return self._advance(conv, now)

    def offer(self, message: pb.Message, now: float) -> list[pb.Message]:
        conv = self._conv(message.conversation_id)
        if message.gap or (message.content_type == GAP_CONTENT_TYPE and message.message_id == 0):
            # a gap marker (history): the seq carries no message and never will; skip it now
            self.gaps_skipped += 1
            return self._slot(conv, message.seq, now)
        if message.message_id in self._seen:
            self.repeats += 1
            if conv.watermark is not None and message.seq > conv.watermark and message.seq not in conv.held:
                return self._slot(conv, message.seq, now)  # delivered before: only its slot matters
            return []
        self._remember(message.message_id)
        if conv.watermark is None:
            if message.seq > 1:  # first sight, mid-conversation: wait briefly for earlier arrivals
                conv.held[message.seq] = message
                if conv.since is None:
                    conv.since = now
                return []
            conv.watermark = 0
        if message.seq <= conv.watermark:
            return [message]  # late (its slot was given up): never drop it
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
        if conv.held:
            if out or conv.since is None:  # a new gap (or the old one moved): start its clock
                conv.since, conv.fills, conv.next_fill = now, 0, 0.0
        else:
            conv.since, conv.fills, conv.next_fill = None, 0, 0.0
        return out

    def settle(self, now: float, *, after: float) -> list[pb.Message]:
        """First-sight conversations that have waited `after` seconds start from what they hold."""
        out: list[pb.Message] = []
        for conv in self._conversations.values():
            if conv.watermark is None and conv.held and conv.since is not None and now - conv.since >= after:
                conv.watermark = min(conv.held) - 1
                conv.own = {s for s in conv.own if s > conv.watermark}
                conv.since = None
                out += self._advance(conv, now)
        return out

    def gaps(self, now: float, *, after: float) -> list[tuple[str, int, int]]:
        """(conversation_id, after_seq, before_seq) to fetch from history: gaps older than
        `after` seconds, each again after a doubling wait until it is filled or expired."""
        out = []
        for conversation_id, conv in self._conversations.items():
            if conv.watermark is None or not conv.held or conv.since is None:
                continue
            if now - conv.since >= after and now >= conv.next_fill:
                out.append((conversation_id, conv.watermark, min(conv.held)))
                conv.fills += 1
                conv.next_fill = now + after * (2 ** min(conv.fills, MAX_FILL_BACKOFF))
        return out

    def expire(self, now: float, *, after: float) -> list[pb.Message]:
        """Gaps open for `after` seconds are given up: what waited is delivered, in order."""
        out: list[pb.Message] = []
        for conversation_id, conv in self._conversations.items():
            if conv.watermark is not None and conv.held and conv.since is not None and now - conv.since >= after:
                self.gaps_given_up += 1
                out += self.skip_gap(conversation_id, now)
        return out

    def skip_gap(self, conversation_id: str, now: float) -> list[pb.Message]:
        conv = self._conv(conversation_id)
        if not conv.held:
            return []
        conv.watermark = min(conv.held) - 1
        conv.own = {s for s in conv.own if s > conv.watermark}
        conv.since = None
        return self._advance(conv, now)
