"""One store per domain (STYLE 6): services call these, never Redis keys or Mongo queries.

Every method is async so the memory engine (all-in-one mode) and the Redis/MongoDB engines
(cluster mode) are interchangeable. Messages travel as `imstack.v1.Message` protobufs; a
store may keep them serialized. The guarantees each method must keep are in its docstring;
the shared contract tests in tests/storage run every engine against them.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Protocol

from im_runtime.proto import imstack_pb2 as pb


class SessionStore(Protocol):
    """uid -> the access nodes holding its connections (S5). A user may have several."""

    async def bind(self, uid: str, node: str, conn_id: int, device_id: str) -> None: ...
    async def unbind(self, uid: str, node: str, conn_id: int) -> bool:
        """Removes one connection; True if it was bound."""
    async def lookup(self, uids: Iterable[str]) -> dict[str, list[str]]:
        """Access nodes per uid; uids with no session are absent from the result."""
    async def drop_node(self, node: str) -> int:
        """Removes every session on a dead access node (S9); returns how many."""
    async def nodes(self) -> set[str]:
        """Access nodes that hold sessions (route drops those of nodes that died unseen)."""


class OfflineStore(Protocol):
    """Write-diffusion offline queue per receiver (S10, S18): one ordered timeline per user.

    A message stays until the receiver acks it (PUSH_ACK). Adding the same message id twice
    for one user keeps one copy. The cursor is opaque to clients; 0 means from the oldest.
    """

    async def add(self, uid: str, message: pb.Message) -> int:
        """Stores the message for uid; returns how many of uid's pending messages belong to
        message.conversation_id after the add (drives PULL_NOTIFY, S11)."""
    async def pull(self, uid: str, cursor: int, limit: int) -> tuple[list[pb.Message], bool, int]:
        """(messages after cursor oldest first, has_more, next_cursor)."""
    async def ack(self, uid: str, message_ids: Iterable[int]) -> int:
        """Removes acked messages; returns how many were removed."""
    async def backlog(self, uid: str) -> int:
        """Number of messages waiting for uid."""


class SequenceStore(Protocol):
    """Per-conversation server seq (S11, S12): strictly increasing from 1, never reused,
    never going backwards even if the fast store loses writes."""

    async def next_seq(self, conversation_id: str) -> int: ...
    async def latest_seqs(self, conversation_ids: Iterable[str]) -> dict[str, int]:
        """Highest seq handed out per conversation (0 if none)."""


class MessageStore(Protocol):
    """Persisted messages (S11): history by seq range, newest first available cheaply."""

    async def save(self, message: pb.Message) -> None:
        """Idempotent per (conversation_id, seq)."""
    async def range(
        self, conversation_id: str, *, after_seq: int = 0, before_seq: int = 0, limit: int = 50, newest_first: bool = False
    ) -> tuple[list[pb.Message], bool]:
        """Messages with after_seq < seq < before_seq (before_seq 0 = no bound), at most limit,
        ascending (or newest first); has_more says more matched."""
    async def max_seq(self, conversation_id: str) -> int:
        """Highest stored seq (0 if none): the floor a seq counter recovers to."""


class ClaimState(enum.Enum):
    NEW = "new"  # the caller owns the send now
    PENDING = "pending"  # another request with this id is in flight: answer UNAVAILABLE (retry)
    DONE = "done"  # already sent: answer DUPLICATE with the stored ack


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    ack: pb.SendAck | None = None


class DedupStore(Protocol):
    """Idempotent send by (sender, message_id) (S12, S15), entries expire after a TTL."""

    async def claim(self, sender: str, message_id: int) -> Claim: ...
    async def complete(self, sender: str, message_id: int, ack: pb.SendAck) -> None: ...
    async def release(self, sender: str, message_id: int) -> None:
        """Drops a claim whose send failed, so a retry can go through."""


class GroupStore(Protocol):
    async def create(self, group_id: str, members: Iterable[str]) -> bool:
        """False if the group exists already."""
    async def add_members(self, group_id: str, members: Iterable[str]) -> list[str] | None:
        """Members actually added; None if the group does not exist."""
    async def remove_members(self, group_id: str, members: Iterable[str]) -> list[str] | None: ...
    async def members(self, group_id: str) -> frozenset[str] | None:
        """None if the group does not exist."""


class ReadStore(Protocol):
    """Read positions per (user, conversation) (S13, S14) and each user's conversations.

    Unread counts are derived: latest seq - read seq, exact because the read position only
    moves forward (max) and a sender's own send advances its read position.
    """

    async def join(self, uid: str, conversation_id: str, read_seq: int = 0) -> None:
        """Adds the conversation to uid's list (keeping any existing read position)."""
    async def advance(self, uid: str, conversation_id: str, seq: int) -> int:
        """read_seq = max(read_seq, seq); returns the new position."""
    async def positions(self, conversation_id: str) -> dict[str, int]:
        """uid -> read seq for everyone with a position in the conversation."""
    async def conversations(self, uid: str) -> dict[str, int]:
        """conversation_id -> read seq for uid's conversations."""


class SegmentStore(Protocol):
    """Id segments leased from storage (S17, segment mode)."""

    async def lease(self, name: str, step: int) -> tuple[int, int]:
        """Reserves [start, end) atomically; ranges never overlap across nodes."""


class SendSteps(Protocol):
    """The store work of one send, in the three steps the dispatch service takes (S10-S14).

    Each step spans several stores; an engine may do a step in one round trip where its keys
    allow (Redis: one Lua script per step, each within one cluster slot), which matters at
    thousands of sends per second. `ComposedSendSteps` does them store by store.
    Once all three have run, the stores hold what the single calls would leave: the sender's
    read position at the seq (reads.advance), every recipient in the conversation (reads.join)
    with the message in its offline queue, and the completed de-dup claim."""

    async def sequence(self, conversation_id: str, sender: str, recipients: list[str]) -> int:
        """The next seq of the conversation (sequences.next_seq)."""
    async def enqueue(self, uids: list[str], message: pb.Message) -> list[int]:
        """offline.add(uid, message) for every uid; returns, per uid, its pending count in
        the message's conversation."""
    async def complete(self, sender: str, message_id: int, ack: pb.SendAck) -> None:
        """dedup.complete(sender, message_id, ack)."""


class ComposedSendSteps:
    """SendSteps from the single stores (the memory engine's, and any engine's fallback)."""

    def __init__(self, stores: "Stores") -> None:
        self.stores = stores

    async def sequence(self, conversation_id: str, sender: str, recipients: list[str]) -> int:
        seq = await self.stores.sequences.next_seq(conversation_id)
        await self.stores.reads.advance(sender, conversation_id, seq)
        return seq

    async def enqueue(self, uids: list[str], message: pb.Message) -> list[int]:
        pending = []
        for uid in uids:
            pending.append(await self.stores.offline.add(uid, message))
            await self.stores.reads.join(uid, message.conversation_id)
        return pending

    async def complete(self, sender: str, message_id: int, ack: pb.SendAck) -> None:
        await self.stores.dedup.complete(sender, message_id, ack)


@dataclass(slots=True)
class Stores:
    """The set of stores one process runs with."""

    sessions: SessionStore
    offline: OfflineStore
    sequences: SequenceStore
    messages: MessageStore
    dedup: DedupStore
    groups: GroupStore
    reads: ReadStore
    segments: SegmentStore
    steps: SendSteps | None = None  # None: ComposedSendSteps over the stores above

    def __post_init__(self) -> None:
        if self.steps is None:
            self.steps = ComposedSendSteps(self)

    async def close(self) -> None:
        for store in (self.sessions, self.offline, self.sequences, self.messages, self.dedup, self.groups, self.reads, self.segments):
            close = getattr(store, "close", None)
            if close is not None:
                await close()
