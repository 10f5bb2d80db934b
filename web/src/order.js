// De-duplication and per-conversation reordering (S12, S15), without I/O or timers.
//
// The server gives every message a seq, strictly increasing within its conversation from 1.
// Pushes, offline pulls and history answers can arrive in any order and more than once, so
// the client delivers each message once and, within a conversation, in seq order. A message
// that jumps ahead of the next expected seq is held and the missing range is reported as a
// gap for the client to pull with PULL_HISTORY_REQ; when the pull cannot fill it the client
// calls `skipGap()` so a lost message never blocks the conversation for good. History answers
// a seq that will never carry a message with a gap marker (docs/protocol.md): `addGap` fills
// its slot at once, delivering nothing.

/** A gap marker: a history entry for a seq handed out that carries no message. */
export function isGap(msg) {
  return Boolean(msg.gap) || (msg.content_type === -1 && String(msg.message_id) === "0");
}

const GAP = Symbol("gap"); // a held slot that is a marker: filled, nothing to deliver

/** A bounded set of recently seen ids (oldest forgotten first). */
export class SeenIds {
  constructor(limit = 10000) {
    this.limit = limit;
    this.ids = new Set();
  }

  has(id) {
    return this.ids.has(String(id));
  }

  /** Adds the id; returns false when it was already there. */
  add(id) {
    const key = String(id);
    if (this.ids.has(key)) return false;
    this.ids.add(key);
    if (this.ids.size > this.limit) this.ids.delete(this.ids.values().next().value);
    return true;
  }
}

/**
 * Ordering state of one conversation.
 *
 * `last` is the highest seq up to which everything has been delivered (null until the
 * first message or history page sets a baseline: a page that has just signed in does not
 * know where a conversation stands, and the history pane fills in what came before).
 */
export class ConversationOrder {
  constructor({ maxHeld = 500, keepSeqs = 2000 } = {}) {
    this.maxHeld = maxHeld;
    this.keepSeqs = keepSeqs;
    this.last = null;
    this.held = new Map(); // seq -> message, all > last + 1
    this.delivered = new Set(); // seqs delivered (bounded), to drop repeats by seq
  }

  /**
   * Everything up to `seq` is known (e.g. the newest history page was shown; the client
   * marks those message ids seen). Returns held messages that are now in order.
   */
  setBaseline(seq) {
    if (this.last === null || seq > this.last) {
      for (const s of [...this.held.keys()]) if (s <= seq) this.held.delete(s);
      this.last = seq;
    }
    return this._drain([]);
  }

  /** The missing range before the first held message, or null: pull (after_seq, before_seq). */
  get gap() {
    if (!this.held.size || this.last === null) return null;
    const first = Math.min(...this.held.keys());
    if (first === this.last + 1) return null; // (only transiently: _drain takes it)
    return { after_seq: this.last, before_seq: first };
  }

  /**
   * Takes one message (already de-duplicated by id). Returns the messages to deliver now,
   * in order, and the gap to pull when this message opened one.
   */
  add(msg) {
    const seq = msg.seq;
    if (this.delivered.has(seq) || this.held.has(seq)) return { deliver: [], gap: null };
    if (this.last === null) this.last = seq - 1; // first sight sets the baseline
    if (seq <= this.last) {
      // Older than the contiguous point but never delivered (e.g. an offline page that
      // arrives after a live push set the baseline): late, but not lost.
      this._markDelivered(seq);
      return { deliver: [msg], gap: null };
    }
    if (seq === this.last + 1) {
      const deliver = [msg];
      this._markDelivered(seq);
      this.last = seq;
      return { deliver: this._drain(deliver), gap: null };
    }
    const hadGap = this.held.size > 0;
    this.held.set(seq, msg);
    if (this.held.size > this.maxHeld) return { deliver: this.skipGap(), gap: null };
    return { deliver: [], gap: hadGap ? null : this.gap };
  }

  /** A gap marker for `seq`: its slot is filled without a message. Returns what is now in order. */
  addGap(seq) {
    if (this.delivered.has(seq) || this.held.has(seq)) return [];
    if (this.last === null) this.last = seq - 1;
    if (seq <= this.last) return [];
    this.held.set(seq, GAP);
    return this._drain([]);
  }

  /** Gives up on the current gap: delivers held messages up to the next hole. */
  skipGap() {
    if (!this.held.size) return [];
    const first = Math.min(...this.held.keys());
    this.last = first - 1;
    return this._drain([]);
  }

  _drain(deliver) {
    while (this.held.has(this.last + 1)) {
      const next = this.held.get(this.last + 1);
      this.held.delete(this.last + 1);
      this.last += 1;
      this._markDelivered(this.last);
      if (next !== GAP) deliver.push(next);
    }
    return deliver;
  }

  _markDelivered(seq) {
    this.delivered.add(seq);
    if (this.delivered.size > this.keepSeqs) this.delivered.delete(this.delivered.values().next().value);
  }
}
