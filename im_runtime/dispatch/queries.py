"""Read-side questions asked by both the protocol (dispatch) and the HTTP API (route)."""
from __future__ import annotations

from im_runtime.proto import imstack_pb2 as pb
from im_runtime.protocol.types import ErrorCode, group_conversation, parse_conversation
from im_runtime.storage.interfaces import Stores

MAX_PAGE = 500
# Every response the server sends fits in the default 65,536-byte body limit, so a client
# that enforces the same limit on what it receives can read every page.
MAX_PAGE_BYTES = 64 * 1024 - 1024


def fit(messages: list[pb.Message], *, keep_newest: bool) -> tuple[list[pb.Message], bool]:
    """The longest run of messages (from the oldest, or from the newest) within MAX_PAGE_BYTES;
    always at least one. True when some were left out."""
    order = reversed(messages) if keep_newest else iter(messages)
    kept, used = [], 0
    for message in order:
        size = message.ByteSize() + 8
        if kept and used + size > MAX_PAGE_BYTES:
            break
        kept.append(message)
        used += size
    if len(kept) == len(messages):
        return messages, False
    return (kept[::-1] if keep_newest else kept), True


async def membership(stores: Stores, uid: str, conversation_id: str) -> ErrorCode:
    """OK, or why uid may not read the conversation (BAD_BODY, NOT_FOUND, FORBIDDEN)."""
    parsed = parse_conversation(conversation_id)
    if parsed is None:
        return ErrorCode.BAD_BODY
    kind, parts = parsed
    if kind == pb.SINGLE:
        return ErrorCode.OK if uid in parts else ErrorCode.FORBIDDEN
    members = await stores.groups.members(parts[0])
    if members is None:
        return ErrorCode.NOT_FOUND
    return ErrorCode.OK if uid in members else ErrorCode.FORBIDDEN


def refusal(code: ErrorCode, conversation_id: str) -> str:
    return {
        ErrorCode.BAD_BODY: f"malformed conversation id {conversation_id!r}",
        ErrorCode.NOT_FOUND: f"unknown conversation {conversation_id}",
        ErrorCode.FORBIDDEN: "not a member of the conversation",
    }.get(code, code.name)


async def tombstones(stores: Stores, viewer: str, messages: list[pb.Message]) -> list[pb.Message]:
    """The messages as `viewer` may see them: those it deleted for itself become tombstones
    (status DELETED, no content; seq and ids stay, so clients keep their order)."""
    if not messages:
        return messages
    by_conv: dict[str, list[int]] = {}
    for m in messages:
        if not m.event.kind:
            by_conv.setdefault(m.conversation_id, []).append(m.seq)
    hidden: set[tuple[str, int]] = set()
    for conv, seqs in by_conv.items():
        hidden |= {(conv, s) for s in await stores.hidden.hidden(viewer, conv, seqs)}
    if not hidden:
        return messages
    return [tombstone(m) if (m.conversation_id, m.seq) in hidden else m for m in messages]


def tombstone(message: pb.Message) -> pb.Message:
    out = pb.Message()
    out.CopyFrom(message)
    out.content = b""
    out.content_type = 0
    out.status = pb.DELETED
    return out


async def history(
    stores: Stores, conversation_id: str, *, after_seq: int, before_seq: int, limit: int, viewer: str | None = None
) -> tuple[list[pb.Message], bool]:
    """A page of history in ascending seq order, as `viewer` may see it (tombstones for what
    it deleted for itself; recalled and edited messages are stored revised already).

    after_seq only: the oldest `limit` after it (catching up). before_seq (or nothing): the
    newest `limit` below it (scrolling back), still returned ascending.

    Seqs the page should hold but does not are settled first (SendSteps.settle): those that
    will never carry a message come back as gap markers, so a client skips them at once
    instead of waiting for them (docs/protocol.md, "Gap markers"); a seq whose send is still
    in flight stays out (the client asks again).
    """
    limit = min(limit or 50, MAX_PAGE)
    newest_first = before_seq > 0 or after_seq == 0
    messages, has_more = await stores.messages.range(
        conversation_id, after_seq=after_seq, before_seq=before_seq, limit=limit, newest_first=newest_first
    )
    missing = _missing(messages, after_seq=after_seq, before_seq=before_seq, newest_first=newest_first, has_more=has_more)
    if missing and await stores.steps.settle(conversation_id, missing):
        messages, has_more = await stores.messages.range(
            conversation_id, after_seq=after_seq, before_seq=before_seq, limit=limit, newest_first=newest_first
        )
    messages = messages[::-1] if newest_first else messages
    messages, trimmed = fit(messages, keep_newest=newest_first)
    if viewer is not None:
        messages = await tombstones(stores, viewer, messages)
    return messages, has_more or trimmed


MAX_SETTLE = MAX_PAGE  # seqs settled per history read at most (a page cannot show more)


def _missing(
    messages: list[pb.Message], *, after_seq: int, before_seq: int, newest_first: bool, has_more: bool
) -> list[int]:
    """Seqs inside the span this page covers that it lacks. The span: from the lowest seq the
    page reaches (after_seq + 1 when nothing more matched below) to the highest (before_seq - 1
    when scrolling back). With no upper bound and nothing stored, nothing is known missing;
    settle also ignores seqs above the conversation's latest."""
    seqs = [m.seq for m in messages]
    if newest_first:  # the newest `limit` below before_seq: seqs descending
        low = after_seq + 1 if not has_more else (seqs[-1] if seqs else before_seq)
        high = before_seq - 1 if before_seq > 0 else (seqs[0] if seqs else 0)
    else:  # the oldest `limit` after after_seq: seqs ascending
        low = after_seq + 1
        high = seqs[-1] if seqs else 0
    if high < low:
        return []
    have = set(seqs)
    out = []
    for seq in range(low, high + 1):
        if seq not in have:
            out.append(seq)
            if len(out) >= MAX_SETTLE:
                break
    return out


async def members_joined(stores: Stores, group_id: str, members: list[str]) -> None:
    """New members start with nothing unread: their read position is the current seq."""
    conversation_id = group_conversation(group_id)
    latest = (await stores.sequences.latest_seqs([conversation_id]))[conversation_id]
    for uid in members:
        await stores.reads.join(uid, conversation_id, latest)
