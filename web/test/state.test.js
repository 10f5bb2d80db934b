import assert from "node:assert/strict";
import { test } from "node:test";
import { MessageStatus as S } from "../src/proto.js";
import { MessageState, isEvent } from "../src/state.js";

const enc = (t) => new TextEncoder().encode(t);
const dec = (b) => new TextDecoder().decode(b);
const msg = (seq, text, extra = {}) => ({ message_id: String(100 + seq), conversation_id: "c", seq, from: "bob", content_type: 1, content: enc(text), ...extra });
const edit = (seq, target, text) => ({ message_id: String(200 + seq), conversation_id: "c", seq, from: "bob", content_type: 1, content: enc(text), event: { kind: 2, target_seq: target } });
const recall = (seq, target) => ({ message_id: String(200 + seq), conversation_id: "c", seq, from: "bob", content: new Uint8Array(0), event: { kind: 1, target_seq: target } });

test("an edit replaces the content; a recall is final; an older edit loses to a newer one", () => {
  const state = new MessageState();
  state.put(msg(1, "helo"), false);
  assert.ok(isEvent(edit(3, 1, "x")) && !isEvent(msg(1, "x")));
  assert.equal(dec(state.applyEvent(edit(3, 1, "hello")).content), "hello");
  assert.equal(state.applyEvent(edit(2, 1, "older")), null, "an edit older than the revision changes nothing");
  assert.equal(state.get("c", 1).status, S.EDITED);
  assert.equal(state.applyEvent(recall(4, 1)).status, S.RECALLED);
  assert.equal(state.applyEvent(edit(5, 1, "after")), null);
  assert.equal(state.get("c", 1).content.length, 0);
});

test("a change that comes before its target is applied when the target arrives", () => {
  const state = new MessageState();
  const early = state.applyEvent(edit(3, 1, "fixed"));
  assert.equal(early.known, false);
  assert.equal(dec(state.put(msg(1, "typo"), false).content), "fixed");
  state.hide("c", [2]);
  assert.equal(state.put(msg(2, "hidden"), false).status, S.DELETED);
});

test("a revised copy (history, offline) and the event give the same state in either order", () => {
  const a = new MessageState();
  a.put(msg(1, "v1"), false);
  a.applyEvent(edit(2, 1, "v2"));
  a.put(msg(1, "v2", { status: S.EDITED, revision_seq: 2 }), false);
  const b = new MessageState();
  b.put(msg(1, "v2", { status: S.EDITED, revision_seq: 2 }), false);
  assert.equal(b.applyEvent(edit(2, 1, "v2")), null, "already applied");
  for (const s of [a, b]) assert.deepEqual([s.get("c", 1).status, dec(s.get("c", 1).content), s.get("c", 1).revision_seq], [S.EDITED, "v2", 2]);
  // an older copy does not undo a newer state
  a.put(msg(1, "v1"), false);
  assert.equal(dec(a.get("c", 1).content), "v2");
});

test("delete for me hides for good, whatever comes after", () => {
  const state = new MessageState();
  state.put(msg(1, "x"), false);
  const [change] = state.hide("c", [1]);
  assert.deepEqual([change.status, change.known, change.message_id], [S.DELETED, true, "101"]);
  assert.deepEqual(state.hide("c", [1]), [], "twice changes nothing");
  assert.equal(state.applyEvent(edit(2, 1, "y")), null);
  assert.equal(state.put(msg(1, "x"), false).status, S.DELETED);
});
