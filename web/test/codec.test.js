import assert from "node:assert/strict";
import { test } from "node:test";
import { DEFAULT_MAX_BODY, FrameDecoder, FrameError, HEAD_LENGTH, decodeFrame, encodeFrame } from "../src/codec.js";

test("header is five big-endian uint32 fields", () => {
  const bytes = encodeFrame(10, 0x01020304, new Uint8Array([0xaa, 0xbb]), 7);
  assert.deepEqual(
    [...bytes],
    [0, 0, 0, 20, 0, 0, 0, 7, 0, 0, 0, 10, 1, 2, 3, 4, 0, 0, 0, 2, 0xaa, 0xbb],
  );
});

test("encode then decode gives the frame back", () => {
  const body = new TextEncoder().encode("hello");
  const frame = decodeFrame(encodeFrame(12, 0xffffffff, body));
  assert.equal(frame.requestType, 12);
  assert.equal(frame.sequence, 0xffffffff);
  assert.equal(frame.version, 1);
  assert.deepEqual([...frame.body], [...body]);
});

test("an empty body is allowed", () => {
  const frame = decodeFrame(encodeFrame(3, 1));
  assert.equal(frame.body.length, 0);
});

test("encode refuses fields outside uint32", () => {
  assert.throws(() => encodeFrame(-1, 1), RangeError);
  assert.throws(() => encodeFrame(1, 2 ** 32), RangeError);
});

test("a message that is not exactly one frame is BAD_FRAME", () => {
  const frame = encodeFrame(3, 1, new Uint8Array(4));
  const cases = [frame.subarray(0, 10), frame.subarray(0, 22), new Uint8Array([...frame, 0])];
  for (const c of cases) {
    assert.throws(() => decodeFrame(c), (e) => e instanceof FrameError && e.code === 422);
  }
});

test("head_length other than 20 is BAD_FRAME", () => {
  const frame = encodeFrame(3, 1);
  new DataView(frame.buffer).setUint32(0, 21);
  assert.throws(() => decodeFrame(frame), (e) => e instanceof FrameError && e.code === 422);
});

test("body_length over the limit is FRAME_TOO_LARGE, checked before the body", () => {
  const header = encodeFrame(10, 1);
  new DataView(header.buffer).setUint32(16, DEFAULT_MAX_BODY + 1);
  assert.throws(() => decodeFrame(header), (e) => e instanceof FrameError && e.code === 413);
  const decoder = new FrameDecoder();
  assert.throws(() => decoder.push(header), (e) => e.code === 413);
  assert.equal(decoder.closed, true);
  assert.deepEqual(decoder.push(encodeFrame(3, 1)), []);
});

test("the stream decoder takes input byte by byte", () => {
  const stream = new Uint8Array([...encodeFrame(1, 5, new Uint8Array([1, 2, 3])), ...encodeFrame(3, 6)]);
  const decoder = new FrameDecoder();
  const frames = [];
  for (const b of stream) frames.push(...decoder.push(new Uint8Array([b])));
  assert.deepEqual(frames.map((f) => [f.requestType, f.sequence, f.body.length]), [[1, 5, 3], [3, 6, 0]]);
  assert.equal(decoder.buffer.length, 0);
});

test("the stream decoder keeps the frames before a bad header", () => {
  const bad = encodeFrame(3, 2);
  new DataView(bad.buffer).setUint32(0, 99);
  const decoder = new FrameDecoder();
  try {
    decoder.push(new Uint8Array([...encodeFrame(3, 1), ...bad]));
    assert.fail("expected a FrameError");
  } catch (err) {
    assert.ok(err instanceof FrameError);
    assert.equal(err.frames.length, 1);
  }
});

test("fuzz: random input only ever raises FrameError", () => {
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let i = 0; i < 2000; i++) {
    const n = Math.floor(rand() * 64);
    const bytes = new Uint8Array(n);
    for (let j = 0; j < n; j++) bytes[j] = Math.floor(rand() * 256);
    if (n >= 4 && rand() < 0.5) new DataView(bytes.buffer).setUint32(0, HEAD_LENGTH);
    if (n >= 20 && rand() < 0.5) new DataView(bytes.buffer).setUint32(16, n - 20);
    try {
      decodeFrame(bytes);
    } catch (err) {
      assert.ok(err instanceof FrameError, String(err));
    }
    const decoder = new FrameDecoder(32);
    for (const b of bytes) {
      try {
        decoder.push(new Uint8Array([b]));
      } catch (err) {
        assert.ok(err instanceof FrameError, String(err));
      }
    }
  }
});
