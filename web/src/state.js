// The current state of the messages a client holds: what recall / edit events and
// delete-for-me did to them (v1 extensions, docs/protocol.md). No I/O.
//
// An event is a message of its own (with a seq of the conversation) naming its target by
// target_seq / target_message_id; it arrives like any message, in seq order, by push, offline
// pull or history. History and offline pulls return the targets already revised (status
// EDITED / RECALLED with revision_seq = the seq of the event that changed them), and
// tombstones (status DELETED) for what this user deleted for itself. So the same change can
// reach a client twice, in either order: the rules make applying it idempotent and
// order-free: a recall is final; an edit applies only when it is newer (event seq above the
// target's revision_seq); a delete-for-me hides for good. Changes to a message not held yet
// are remembered (bounded) and applied when it arrives.
import { EventKind, MessageStatus } from "./proto.js";

/** True for an event message (recall / edit), which changes another message. */
export function isEvent(msg) {
  return Boolean(msg.event && msg.event.kind);
}

const view = (msg, own) => ({
  message_id: String(msg.message_id),
  conversation_id: msg.conversation_id,
  seq: msg.seq,
  from: msg.from,
  own,
  type: msg.type,
  to: msg.to,
  content_type: msg.content_type,
  content: msg.content,
  server_time: msg.server_time,
  status: msg.status || MessageStatus.NORMAL,
  revision_seq: msg.revision_seq || 0,
});

/** Copies a (revised) version's content into a held view when it is newer; true if it changed. */
function merge(into, msg) {
  const status = msg.status || MessageStatus.NORMAL;
  if (into.status === MessageStatus.DELETED || into.status === MessageStatus.RECALLED) return false;
  if (status === MessageStatus.DELETED || status === MessageStatus.RECALLED) {
    Object.assign(into, { status, content: new Uint8Array(0), content_type: 0, revision_seq: Math.max(into.revision_seq, msg.revision_seq || 0) });
    return true;
  }
  if ((msg.revision_seq || 0) > into.revision_seq) {
    Object.assign(into, { status, content: msg.content, content_type: msg.content_type, revision_seq: msg.revision_seq });
    return true;
  }
  return false;
}

export class MessageState {
  constructor({ keepPerConversation = 2000, keepPending = 500 } = {}) {
    this.keep = keepPerConversation;
    this.keepPending = keepPending;
    this.convs = new Map(); // conversation_id -> Map(seq -> view)
    this.pending = new Map(); // conversation_id -> Map(target seq -> change as a Message-like)
  }

  get(conv, seq) {
    const held = this.convs.get(conv);
    return (held && held.get(seq)) || null;
  }

  /** Takes a message (not an event) as it arrived; returns its current view. */
  put(msg, own) {
    let held = this.convs.get(msg.conversation_id);
    if (!held) {
      held = new Map();
      this.convs.set(msg.conversation_id, held);
    }
    let current = held.get(msg.seq);
    if (current) merge(current, msg);
    else {
      current = view(msg, own);
      held.set(msg.seq, current);
      if (held.size > this.keep) held.delete(Math.min(...held.keys()));
    }
    const waiting = this.pending.get(msg.conversation_id);
    if (waiting && waiting.has(msg.seq)) {
      merge(current, waiting.get(msg.seq));
      waiting.delete(msg.seq);
    }
    return current;
  }

  /**
   * Applies a recall or edit event. Returns the change {conversation_id, seq, message_id,
   * status, content, content_type, revision_seq, known} (known: the target is held), or null
   * when it changes nothing (a recall came first, or a newer edit did).
   */
  applyEvent(evt) {
    const { kind, target_seq: seq, target_message_id } = evt.event;
    const change = {
      seq,
      status: kind === EventKind.RECALL ? MessageStatus.RECALLED : MessageStatus.EDITED,
      content: kind === EventKind.RECALL ? new Uint8Array(0) : evt.content,
      content_type: kind === EventKind.RECALL ? 0 : evt.content_type,
      revision_seq: evt.seq || 0,
    };
    return this._change(evt.conversation_id, seq, String(target_message_id || "0"), change);
  }

  /** Delete for me (this device or a SYNC from another): returns one change per seq. */
  hide(conv, seqs) {
    return seqs
      .map((seq) => this._change(conv, seq, "0", { seq, status: MessageStatus.DELETED, content: new Uint8Array(0), content_type: 0, revision_seq: 0 }))
      .filter(Boolean);
  }

  _change(conv, seq, messageId, change) {
    const target = this.get(conv, seq);
    if (target) {
      if (!merge(target, change)) return null;
      return { ...target, known: true };
    }
    let waiting = this.pending.get(conv);
    if (!waiting) {
      waiting = new Map();
      this.pending.set(conv, waiting);
    }
    const before = waiting.get(seq);
    if (before) {
      const kept = { ...before };
      if (!merge(kept, change)) return null;
      waiting.set(seq, kept);
    } else {
      waiting.set(seq, { ...change, status: change.status });
      if (waiting.size > this.keepPending) waiting.delete(waiting.keys().next().value);
    }
    return { conversation_id: conv, message_id: messageId, ...waiting.get(seq), known: false };
  }
}
