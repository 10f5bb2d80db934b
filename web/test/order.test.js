import assert from "node:assert/strict";
import { test } from "node:test";
import { ConversationOrder, SeenIds } from "../src/order.js";

const m = (seq) => ({ message_id: String(1000 + seq), seq });
const seqs = (list) => list.map((x) => x.seq);

test("in-order messages are delivered at once", () => {
  const o = new ConversationOrder();
  o.setBaseline(0);
  assert.deepEqual(seqs(o.add(m(1)).deliver), [1]);
  assert.deepEqual(seqs(o.add(m(2)).deliver), [2]);
  assert.equal(o.last, 2);
});

test("out-of-order messages are held and released in seq order", () => {
  const o = new ConversationOrder();
  o.setBaseline(0);
  const r3 = o.add(m(3));
  assert.deepEqual(r3.deliver, []);
  assert.deepEqual(r3.gap, { after_seq: 0, before_seq: 3 });
  const r2 = o.add(m(2));
  assert.deepEqual(r2.deliver, []);
  assert.equal(r2.gap, null, "a gap is reported once");
  assert.deepEqual(o.gap, { after_seq: 0, before_seq: 2 });
  assert.deepEqual(seqs(o.add(m(1)).deliver), [1, 2, 3]);
  assert.equal(o.gap, null);
});

test("a repeated seq is dropped, held or delivered", () => {
  const o = new ConversationOrder();
  o.setBaseline(0);
  o.add(m(1));
  o.add(m(3));
  assert.deepEqual(o.add(m(1)).deliver, []);
  assert.deepEqual(o.add(m(3)).deliver, []);
  assert.equal(o.held.size, 1);
});

test("the first message sets the baseline when nothing is known", () => {
  const o = new ConversationOrder();
  assert.deepEqual(seqs(o.add(m(57)).deliver), [57]);
  assert.deepEqual(seqs(o.add(m(58)).deliver), [58]);
});

test("an older, never-seen message is delivered late rather than lost", () => {
  const o = new ConversationOrder();
  o.add(m(10));
  assert.deepEqual(seqs(o.add(m(8)).deliver), [8]);
  assert.deepEqual(o.add(m(8)).deliver, []);
});

test("skipGap releases what is held up to the next hole", () => {
  const o = new ConversationOrder();
  o.setBaseline(1);
  o.add(m(4));
  o.add(m(5));
  o.add(m(7));
  assert.deepEqual(seqs(o.skipGap()), [4, 5]);
  assert.deepEqual(o.gap, { after_seq: 5, before_seq: 7 });
  assert.deepEqual(seqs(o.add(m(6)).deliver), [6, 7]);
});

test("a baseline from history drops held messages it covers", () => {
  const o = new ConversationOrder();
  o.setBaseline(2);
  o.add(m(5));
  o.add(m(7));
  assert.deepEqual(seqs(o.setBaseline(6)), [7]);
  assert.equal(o.last, 7);
  assert.equal(o.held.size, 0);
});

test("too many held messages force the gap to be skipped", () => {
  const o = new ConversationOrder({ maxHeld: 3 });
  o.setBaseline(0);
  o.add(m(2));
  o.add(m(3));
  o.add(m(4));
  assert.deepEqual(seqs(o.add(m(5)).deliver), [2, 3, 4, 5]);
});

test("SeenIds de-duplicates and forgets the oldest past its limit", () => {
  const seen = new SeenIds(2);
  assert.equal(seen.add("1"), true);
  assert.equal(seen.add(1), false);
  seen.add("2");
  seen.add("3");
  assert.equal(seen.has("1"), false);
  assert.equal(seen.has("3"), true);
});

test("a gap marker fills its slot at once and is never delivered", async () => {
  const { isGap } = await import("../src/order.js");
  const o = new ConversationOrder();
  o.setBaseline(0);
  o.add(m(1));
  assert.deepEqual(o.add(m(3)).deliver, []);
  assert.deepEqual(o.add(m(5)).deliver, []);
  assert.deepEqual(o.gap, { after_seq: 1, before_seq: 3 });
  assert.deepEqual(seqs(o.addGap(2)), [3]); // the marker of seq 2 lets 3 through
  assert.deepEqual(seqs(o.addGap(4)), [5]);
  assert.equal(o.gap, null);
  assert.equal(o.last, 5);
  assert.deepEqual(o.addGap(7), []); // ahead of a hole: held as filled
  assert.deepEqual(o.addGap(7), []);
  assert.deepEqual(seqs(o.add(m(6)).deliver), [6]);
  assert.equal(o.last, 7);
  assert.deepEqual(seqs(o.add(m(8)).deliver), [8]);
  assert.ok(isGap({ gap: true, seq: 2, message_id: "0" }));
  assert.ok(isGap({ content_type: -1, seq: 2, message_id: "0" })); // without the gap field
  assert.ok(!isGap({ content_type: -1, seq: 2, message_id: "12" }));
});
