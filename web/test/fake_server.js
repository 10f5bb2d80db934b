// An in-memory stand-in for an access node, for unit tests of ImClient without a browser or
// a network: a WebSocket-shaped class whose frames go to a scriptable server object that
// answers from PROTOCOL.md. The real gateway is exercised by the Python browser tests.
import { decodeFrame, encodeFrame } from "../src/codec.js";
import { BODY_TYPES, RequestType, conversationId, decodeBody, encodeBody } from "../src/proto.js";

const T = RequestType;

export class FakeServer {
  constructor() {
    this.sockets = [];
    this.received = []; // {socket, type, sequence, body}
    this.handlers = {}; // request type -> (socket, frame, body) => void | "default"
    this.nextId = 7260000000000000001n; // beyond 2^53: ids must survive as exact int64
    this.seqs = new Map();
    this.stored = new Map(); // conversation_id -> [Message]
    this.offline = []; // Messages waiting for this user
    this.token = "good";
    this.recallTooLate = false; // MODIFY_REQ RECALL answered 410 GONE
    const server = this;
    this.WebSocket = class FakeSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        server.sockets.push(this);
        setTimeout(() => {
          if (server.refuse) {
            this.readyState = 3;
            this.onclose && this.onclose({ code: 1006, reason: "refused" });
            return;
          }
          this.readyState = 1;
          this.onopen && this.onopen();
        }, 0);
      }
      send(bytes) {
        if (this.readyState !== 1) throw new Error("send on a closed socket");
        const frame = decodeFrame(bytes);
        const body = decodeBody(frame.requestType, frame.body);
        server.received.push({ socket: this, type: frame.requestType, sequence: frame.sequence, body });
        server._handle(this, frame, body);
      }
      close(code = 1000, reason = "") {
        if (this.readyState === 3) return;
        this.readyState = 3;
        setTimeout(() => this.onclose && this.onclose({ code, reason }), 0);
      }
    };
  }

  get socket() {
    return this.sockets[this.sockets.length - 1];
  }

  frames(type) {
    return this.received.filter((r) => r.type === type);
  }

  reply(socket, type, sequence, fields) {
    if (socket.readyState !== 1) return;
    const bytes = encodeFrame(type, sequence, encodeBody(BODY_TYPES[type], fields));
    // Like a browser: an ArrayBuffer holding exactly the message.
    const data = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    setTimeout(() => socket.onmessage && socket.onmessage({ data }), 0);
  }

  push(message, socket = this.socket) {
    this.reply(socket, T.PUSH, 0, message);
  }

  /** A stored message as the server would make it (seq assigned per conversation). */
  store({ from, to, type = 1, text = "hi", conv: given, event = null, content = null }) {
    const conv = given || conversationId(type, from, to);
    const seq = (this.seqs.get(conv) || 0) + 1;
    this.seqs.set(conv, seq);
    const msg = {
      message_id: String(this.nextId++),
      conversation_id: conv,
      seq,
      from,
      type,
      to,
      content_type: 1,
      content: content || new TextEncoder().encode(text),
      server_time: Date.now(),
    };
    if (event) msg.event = event;
    if (!this.stored.has(conv)) this.stored.set(conv, []);
    this.stored.get(conv).push(msg);
    return msg;
  }

  _handle(socket, frame, body) {
    const custom = this.handlers[frame.requestType];
    if (custom && custom(socket, frame, body) !== "default") return;
    const s = frame.sequence;
    switch (frame.requestType) {
      case T.AUTH_REQ:
        this.reply(socket, T.AUTH_RESP, s, body.token === this.token ? { code: 0, server_time: Date.now() } : { code: 401, message: "bad token" });
        break;
      case T.HEARTBEAT_REQ:
        this.reply(socket, T.HEARTBEAT_RESP, s, {});
        break;
      case T.ID_BATCH_REQ: {
        const ids = [];
        for (let i = 0; i < body.count; i++) ids.push(String(this.nextId++));
        this.reply(socket, T.ID_BATCH_RESP, s, { ids });
        break;
      }
      case T.SEND_REQ: {
        const msg = this.store({ from: "alice", to: body.to, type: body.type });
        this.reply(socket, T.SEND_ACK, s, { code: 0, message_id: body.message_id, conversation_id: msg.conversation_id, seq: msg.seq, server_time: Date.now() });
        break;
      }
      case T.PULL_OFFLINE_REQ: {
        const start = Number(body.cursor);
        const page = this.offline.slice(start, start + body.limit);
        const next = start + page.length;
        // Positions here are list indexes; the device's cursor is what resume_cursor said.
        this.reply(socket, T.PULL_OFFLINE_RESP, s, {
          messages: page, has_more: next < this.offline.length, next_cursor: next, device_cursor: body.resume_cursor || 0,
        });
        break;
      }
      case T.PULL_HISTORY_REQ: {
        let msgs = this.stored.get(body.conversation_id) || [];
        msgs = msgs.filter((m) => (!body.after_seq || m.seq > body.after_seq) && (!body.before_seq || m.seq < body.before_seq));
        const page = msgs.slice(-body.limit).reverse(); // newest first, as a store keyed by reversed id reads
        this.reply(socket, T.PULL_HISTORY_RESP, s, { messages: page, has_more: msgs.length > page.length });
        break;
      }
      case T.MODIFY_REQ: {
        const target = (this.stored.get(body.conversation_id) || []).find((m) => m.seq === body.target_seq && !(m.event && m.event.kind));
        const refuse = (code, message) => this.reply(socket, T.SEND_ACK, s, { code, message, message_id: body.message_id });
        if (!target) refuse(404, "unknown message");
        else if (body.kind === 3) this.reply(socket, T.SEND_ACK, s, { code: 0, message_id: body.message_id, conversation_id: body.conversation_id, seq: 0 });
        else if (target.from !== "alice") refuse(403, "not your message");
        else if (body.kind === 1 && this.recallTooLate) refuse(410, "the recall window has passed");
        else {
          const [, a, b] = body.conversation_id.split(":");
          const event = this.store({ from: "alice", to: a === "alice" ? b : a, conv: body.conversation_id, content: body.content, event: { kind: body.kind, target_seq: target.seq, target_message_id: target.message_id } });
          this.reply(socket, T.SEND_ACK, s, { code: 0, message_id: body.message_id, conversation_id: body.conversation_id, seq: event.seq, server_time: Date.now() });
        }
        break;
      }
      case T.READ_REPORT:
        this.reply(socket, T.READ_REPORT_ACK, s, {});
        break;
      case T.READ_STATUS_REQ:
        this.reply(socket, T.READ_STATUS_RESP, s, { states: [] });
        break;
      case T.UNREAD_REQ:
        this.reply(socket, T.UNREAD_RESP, s, { total: 0, conversations: [] });
        break;
      default:
        break;
    }
  }
}

/** Polls `check` until it returns truthy or the deadline passes (then throws). */
export async function until(check, { timeoutMs = 2000, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
