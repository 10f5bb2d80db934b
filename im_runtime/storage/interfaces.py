"""One store per domain (STYLE 6): services call these, never Redis keys or Mongo queries.

Every method is async so the memory engine (all-in-one mode) and the Redis/MongoDB engines
(cluster mode) are interchangeable. Messages travel as `imstack.v1.Message` protobufs; a
store may keep them serialized. The guarantees each method must keep are in its docstring;
the shared contract tests in tests/storage run every engine against them.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Protocol

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
    async def epoch(self) -> str:
        """Names this session table's lifetime: it changes when the table is lost (a Redis
        restart without persistence, FLUSHALL), so the access nodes know to bind again."""


class OfflinePage(NamedTuple):
    messages: list[pb.Message]  # oldest first
    has_more: bool
    next_cursor: int  # position of the last message returned (the start when none was)
    device_cursor: int  # the device's cursor after the call: where its next pull starts


class OfflineStore(Protocol):
    """S18: one timeline per user, read per device (docs/storage.md, "Timeline").

    Every message for a user is one entry (a second add of the same message id keeps one) at a
    position that only grows, across conversations. Each device of the user has a cursor:
    every entry at or below it is one the device has; entries above it that the device acked
    out of order are remembered until the cursor passes them. A device registers when it signs
    in (and on any pull, ack or send), starting before every entry still kept.

    An entry goes once every registered device is past it, or once it is older than the
    retention limit; a device unseen for longer than the retention limit leaves the registry
    (it catches up from history), and past `max_devices` the least recently seen one does.
    A user with no registered device keeps every entry (until the retention limit). Memory per
    entry does not depend on the number of devices: one entry, one cursor per device.
    Positions are opaque to clients; 0 means before the oldest. Device "" is a device too
    (every v1 connection that sends no device_id).
    """

    async def add(self, uid: str, message: pb.Message, *, holder: str | None = None) -> int:
        """Adds the message to uid's timeline. `holder`: a device of uid that has it already
        (the device that sent it: sender sync); it counts as acked by that device. Returns how
        many of uid's entries in message.conversation_id no device has acked (PULL_NOTIFY, S11)."""
    async def pull(
        self, uid: str, cursor: int, limit: int, *, device: str = "", resume_cursor: int = 0, acked_ids: Iterable[int] = ()
    ) -> OfflinePage:
        """First `acked_ids` are acked and the device's cursor moves up to `resume_cursor` (the
        device says it has every entry up to there; never past the last position, never back);
        then the entries after max(cursor, device cursor) that the device has not acked, at most
        `limit`. One atomic step."""
    async def ack(self, uid: str, message_ids: Iterable[int], *, device: str = "") -> int:
        """The device has these messages; returns how many entries it had not acked before."""
    async def revise(self, uid: str, message: pb.Message) -> bool:
        """Replaces uid's entry of message.message_id (same conversation and seq) with this
        version (a recall or edit), so a device that pulls it later gets the current content;
        False when there is no such entry."""
    async def backlog(self, uid: str, *, device: str | None = None) -> int:
        """Entries kept for uid; with a device, the entries that device has not acked."""
    async def register(self, uid: str, device: str) -> int:
        """The device signed in: registers it if new (before every entry kept) and marks it
        seen; returns its cursor."""
    async def devices(self, uid: str) -> dict[str, int]:
        """The registry: device -> cursor."""


class SequenceStore(Protocol):
    """Per-conversation server seq (S11, S12): strictly increasing from 1, never reused,
    never going backwards even if the fast store loses writes."""

    async def next_seq(self, conversation_id: str) -> int: ...
    async def latest_seqs(self, conversation_ids: Iterable[str]) -> dict[str, int]:
        """Highest seq handed out per conversation (0 if none)."""


class MessageStore(Protocol):
    """Persisted messages (S11): history by seq range, newest first available cheaply, and
    the gap markers of seqs that will never carry a message (docs/protocol.md)."""

    async def save(self, message: pb.Message, body: bytes | None = None) -> None:
        """Idempotent per (conversation_id, seq); replaces a gap marker at that seq (a send
        that was given up on came back after all). `body`: the message already serialized."""
    async def mark_gaps(self, conversation_id: str, seqs: Iterable[int]) -> list[int]:
        """Stores a gap marker at each seq that holds nothing yet (a message or marker already
        there stays); returns the seqs marked now. Ranges return markers like messages (`gap`)."""
    async def range(
        self, conversation_id: str, *, after_seq: int = 0, before_seq: int = 0, limit: int = 50, newest_first: bool = False
    ) -> tuple[list[pb.Message], bool]:
        """Messages (and gap markers) with after_seq < seq < before_seq (before_seq 0 = no
        bound), at most limit, ascending (or newest first); has_more says more matched."""
    async def max_seq(self, conversation_id: str) -> int:
        """Highest stored seq, markers included (0 if none): the floor a seq counter recovers to."""
    async def get(self, conversation_id: str, seq: int) -> pb.Message | None: ...
    async def revise(
        self, conversation_id: str, seq: int, change: Callable[[pb.Message], pb.Message | None]
    ) -> pb.Message | None:
        """Replaces the stored message at seq with change(stored), atomically against other
        revisions (compare-and-set, retried): recall and edit keep history current. change
        returns None to leave it; the result is the stored message after, or None if
        there is none or change refused."""


class HiddenStore(Protocol):
    """Messages a user deleted for themselves ("delete for me"): history and offline pulls
    show that user a tombstone instead. Durable (MongoDB in cluster mode): a deletion must not
    come back when Redis loses state."""

    async def hide(self, uid: str, conversation_id: str, seqs: Iterable[int]) -> None: ...
    async def hidden(self, uid: str, conversation_id: str, seqs: Iterable[int]) -> set[int]:
        """The ones of seqs that uid deleted."""


class SendState(enum.Enum):
    NEW = "new"  # the caller owns the send, with a seq of its own
    RESUMED = "resumed"  # a retry of a send whose owner died or failed: the caller owns it now, same seq
    PENDING = "pending"  # another request with this id holds the send right now: answer UNAVAILABLE
    DONE = "done"  # already sent: answer DUPLICATE with the stored ack


@dataclass(frozen=True, slots=True)
class Begun:
    state: SendState
    seq: int = 0
    server_time: int = 0  # ms; for RESUMED the first attempt's, so every copy agrees
    ack: pb.SendAck | None = None


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
    """The store work of one send in the steps the dispatch service takes (S10-S15), with
    the de-dup claim (S12) and the seq (S11) bound together, so that a seq is never lost:

    - `begin` claims (sender, message_id) and gives the send its seq, in one step. A retry of
      a send that is still in flight is PENDING; once the in-flight attempt's lease
      (`lease_s`) has run out (its node died) or it was aborted, the retry RESUMES it with the
      *same* seq, so the dead attempt leaves no hole; a finished send is DONE.
    - the caller persists the message (MessageStore.save), then `finish` queues it for every
      recipient (offline, S10), completes the claim and moves the read positions, in one step
      where the engine allows (Redis: one Lua script on a single Redis; per slot on a Redis
      Cluster). Once finish returns, the stores hold what the single calls would leave: the
      sender's read position at the seq, every recipient in the conversation with the message
      in its offline queue, and the completed claim.
    - `abort`: the send failed after begin; its lease ends now, so the client's retry resumes
      the same seq at once.
    - `settle`: of some seqs a history page lacks, which will never carry a message: a send
      that began and was never finished nor retried within its lease (it is then given up:
      a later retry gets a new seq), or a seq no send holds. Those get gap markers.
    Every engine keeps a journal of the seqs whose sends began and have not finished, which
    is what `settle` reads; `finish` clears the entry.
    """

    async def begin(self, conversation_id: str, sender: str, message_id: int, recipients: list[str]) -> Begun: ...
    async def finish(self, message: pb.Message, body: bytes, recipients: list[str], ack: pb.SendAck) -> list[int]:
        """Returns, per recipient, its pending count in the message's conversation (PULL_NOTIFY)."""
    async def abort(self, conversation_id: str, sender: str, message_id: int) -> None: ...
    async def settle(self, conversation_id: str, seqs: list[int]) -> list[int]:
        """Of the seqs given (those above the conversation's latest are ignored), marks those
        that will never carry a message as gaps; returns the seqs marked now (a seq that
        already holds a message or a marker is not among them)."""


@dataclass(slots=True)
class Stores:
    """The set of stores one process runs with."""

    sessions: SessionStore
    offline: OfflineStore
    sequences: SequenceStore
    messages: MessageStore
    groups: GroupStore
    reads: ReadStore
    segments: SegmentStore
    hidden: HiddenStore
    steps: SendSteps

    async def close(self) -> None:
        for store in (self.steps, self.sessions, self.offline, self.sequences, self.messages, self.groups, self.reads, self.hidden, self.segments):
            close = getattr(store, "close", None)
            if close is not None:
                await close()
