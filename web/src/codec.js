// The 20-byte-header frame codec (PROTOCOL.md "Framing"), without I/O.
//
// Five unsigned 32-bit big-endian fields: head_length (always 20), client_version,
// request_type, sequence, body_length, then body_length bytes of protobuf body. On
// WebSocket one binary message carries exactly one frame, so `decodeFrame` takes a whole
// message and refuses anything that is not exactly one frame; `FrameDecoder` is the
// streaming form (for byte streams and tests), checking body_length before buffering a body.
export const HEAD_LENGTH = 20;
export const PROTOCOL_VERSION = 1;
export const DEFAULT_MAX_BODY = 65536;
const U32 = 0xffffffff;

export class FrameError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "FrameError";
    this.code = code; // PROTOCOL.md code: 422 BAD_FRAME or 413 FRAME_TOO_LARGE
  }
}

function u32(name, v) {
  if (!Number.isInteger(v) || v < 0 || v > U32) throw new RangeError(`${name} must be a uint32, got ${v}`);
  return v;
}

/** Encodes one frame; `body` is a Uint8Array (empty allowed). */
export function encodeFrame(requestType, sequence, body = new Uint8Array(0), version = PROTOCOL_VERSION) {
  const out = new Uint8Array(HEAD_LENGTH + body.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, HEAD_LENGTH);
  view.setUint32(4, u32("version", version));
  view.setUint32(8, u32("requestType", requestType));
  view.setUint32(12, u32("sequence", sequence));
  view.setUint32(16, body.length);
  out.set(body, HEAD_LENGTH);
  return out;
}

function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError("frame data must be bytes");
}

function readHeader(bytes, offset, maxBody) {
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, HEAD_LENGTH);
  const headLength = view.getUint32(0);
  if (headLength !== HEAD_LENGTH) throw new FrameError(422, `head_length must be 20, got ${headLength}`);
  const bodyLength = view.getUint32(16);
  if (bodyLength > maxBody) throw new FrameError(413, `body_length ${bodyLength} exceeds limit ${maxBody}`);
  return { version: view.getUint32(4), requestType: view.getUint32(8), sequence: view.getUint32(12), bodyLength };
}

/** Decodes one whole WebSocket message holding exactly one frame; throws FrameError. */
export function decodeFrame(data, maxBody = DEFAULT_MAX_BODY) {
  const bytes = asBytes(data);
  if (bytes.length < HEAD_LENGTH) throw new FrameError(422, `message of ${bytes.length} bytes is shorter than a header`);
  const h = readHeader(bytes, 0, maxBody);
  if (bytes.length !== HEAD_LENGTH + h.bodyLength) {
    throw new FrameError(422, `message holds ${bytes.length - HEAD_LENGTH} body bytes, header says ${h.bodyLength}`);
  }
  return { version: h.version, requestType: h.requestType, sequence: h.sequence, body: bytes.subarray(HEAD_LENGTH) };
}

/** Streaming decoder: push(bytes) returns the whole frames seen so far; throws FrameError once, then stays closed. */
export class FrameDecoder {
  constructor(maxBody = DEFAULT_MAX_BODY) {
    this.maxBody = maxBody;
    this.buffer = new Uint8Array(0);
    this.closed = false;
  }

  push(data) {
    if (this.closed) return [];
    const chunk = asBytes(data);
    let buf = chunk;
    if (this.buffer.length) {
      buf = new Uint8Array(this.buffer.length + chunk.length);
      buf.set(this.buffer);
      buf.set(chunk, this.buffer.length);
    }
    const frames = [];
    let offset = 0;
    while (buf.length - offset >= HEAD_LENGTH) {
      let h;
      try {
        h = readHeader(buf, offset, this.maxBody);
      } catch (err) {
        this.closed = true;
        this.buffer = new Uint8Array(0);
        err.frames = frames; // the whole frames that came before the bad header
        throw err;
      }
      const end = offset + HEAD_LENGTH + h.bodyLength;
      if (end > buf.length) break;
      frames.push({ version: h.version, requestType: h.requestType, sequence: h.sequence, body: buf.slice(offset + HEAD_LENGTH, end) });
      offset = end;
    }
    this.buffer = buf.slice(offset);
    return frames;
  }
}
