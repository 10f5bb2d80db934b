import assert from "node:assert/strict";
import { test } from "node:test";
import { RequestType, conversationId, decodeBody, encodeBody, pb } from "../src/proto.js";

test("int64 message ids survive exactly (beyond 2^53)", () => {
  const id = "7260000000000000123";
  const body = encodeBody(pb.PushAck, { message_ids: [id, "1"] });
  assert.deepEqual(decodeBody(RequestType.PUSH_ACK, body).message_ids, [id, "1"]);
});

test("seq comes back as a number, content as bytes, snake_case names", () => {
  const body = encodeBody(pb.Message, {
    message_id: "5",
    conversation_id: "s:alice:bob",
    seq: 42,
    from: "bob",
    type: 1,
    to: "alice",
    content: new TextEncoder().encode("hé"),
  });
  const msg = decodeBody(RequestType.PUSH, body);
  assert.equal(msg.seq, 42);
  assert.equal(msg.conversation_id, "s:alice:bob");
  assert.equal(new TextDecoder().decode(msg.content), "hé");
});

test("empty-body types decode to an empty object; unknown types throw", () => {
  assert.deepEqual(decodeBody(RequestType.HEARTBEAT_RESP, new Uint8Array(0)), {});
  assert.throws(() => decodeBody(77, new Uint8Array(0)));
});

test("a garbage body throws instead of decoding", () => {
  assert.throws(() => decodeBody(RequestType.SEND_ACK, new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f])));
});

test("conversation ids follow PROTOCOL.md", () => {
  assert.equal(conversationId(1, "bob", "alice"), "s:alice:bob");
  assert.equal(conversationId(1, "alice", "bob"), "s:alice:bob");
  assert.equal(conversationId(2, "alice", "g1"), "g:g1");
});
