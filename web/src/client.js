// ImClient: the imstack protocol (PROTOCOL.md) over a browser WebSocket.
//
// One binary WebSocket message carries exactly one frame. The client does what the Python
// SDK does so that no message is lost or shown twice (S12, S13, S15, S17):
//  - auth on every connect, heartbeat every 10 s, reconnect with backoff and jitter (and to
//    the node a KICK names), then an offline pull on every (re)connect;
//  - send: ids come from cached ID_BATCH_REQ batches; a send waits for its SendAck and is
//    retried with backoff and jitter a bounded number of times with the SAME message_id
//    (the server de-duplicates; SendAck 409 DUPLICATE counts as success);
//  - receive: PUSH -> batched PUSH_ACK, de-dup by message_id, reorder by seq per
//    conversation, gaps pulled with PULL_HISTORY_REQ; PULL_NOTIFY -> paged offline pull,
//    acked page by page;
//  - read reports, read-status polling with backoff 2 s, 4 s, 8 s, ... (never a push
//    storm), unread counts.
// Several devices per user (S18, the v1 extensions of docs/protocol.md), like the Python SDK:
//  - every connection sends its device_id (stable per browser profile: device.js) and the
//    features it understands ("sync");
//  - the device's resume position: PUSH_ACKs get no answer, so the ids acked since the last
//    pull are kept (bounded) and ride the next PULL_OFFLINE_REQ (`acked_ids`) with the
//    position the last pull reached (`resume_cursor`, kept in a ResumeStore, localStorage in
//    the page): acks lost with a dead access node do not bring messages back;
//  - messages the user sent from another device arrive like any other, `own` in the event;
//  - recall / edit / delete for me (MODIFY_REQ, answered by SEND_ACK; 403 not yours, 404
//    unknown, 410 the recall window passed), events applied to the held state (state.js);
//  - SYNC notices from the user's other devices: read positions (the unread counts are asked
//    again) and deletions.
// Events (EventTarget, `event.detail`): status, message, change, sync, ack, sendfailed,
// readstatus, unread, kick, servererror. Timers and randomness are injectable for tests.
import { decodeFrame, encodeFrame, FrameError } from "./codec.js";
import {
  BODY_TYPES, ConversationType, ErrorCode, EventKind, FEATURE_SYNC, MessageStatus, RequestType, conversationId, decodeBody,
  encodeBody, pb,
} from "./proto.js";
import { ConversationOrder, SeenIds, isGap } from "./order.js";
import { MessageState, isEvent } from "./state.js";
import { ResumeStore } from "./device.js";

export const Status = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  ONLINE: "online",
  RECONNECTING: "reconnecting",
  UNAUTHORIZED: "unauthorized",
  REPLACED: "replaced", // the same device signed in on another connection (KICK 409)
  CLOSED: "closed",
});

/** A request answered by ERROR, or a SendAck with a failure code. */
export class ProtocolError extends Error {
  constructor(code, message) {
    super(`${code} ${message}`);
    this.name = "ProtocolError";
    this.code = code;
  }
}

export class Disconnected extends Error {
  constructor(message = "connection lost") {
    super(message);
    this.name = "Disconnected";
  }
}

export class RequestTimeout extends Error {
  constructor(type) {
    super(`no answer to request type ${type}`);
    this.name = "RequestTimeout";
  }
}

// Failures worth another attempt with the same message_id; anything else is final.
const RETRYABLE_CODES = new Set([ErrorCode.UNAVAILABLE, ErrorCode.RATE_LIMITED]);
const isRetryable = (err) =>
  err instanceof Disconnected || err instanceof RequestTimeout || (err instanceof ProtocolError && RETRYABLE_CODES.has(err.code));

const RESPONSE_OF = {
  [RequestType.AUTH_REQ]: RequestType.AUTH_RESP,
  [RequestType.HEARTBEAT_REQ]: RequestType.HEARTBEAT_RESP,
  [RequestType.SEND_REQ]: RequestType.SEND_ACK,
  [RequestType.MODIFY_REQ]: RequestType.SEND_ACK,
  [RequestType.PULL_OFFLINE_REQ]: RequestType.PULL_OFFLINE_RESP,
  [RequestType.PULL_HISTORY_REQ]: RequestType.PULL_HISTORY_RESP,
  [RequestType.READ_REPORT]: RequestType.READ_REPORT_ACK,
  [RequestType.READ_STATUS_REQ]: RequestType.READ_STATUS_RESP,
  [RequestType.UNREAD_REQ]: RequestType.UNREAD_RESP,
  [RequestType.ID_BATCH_REQ]: RequestType.ID_BATCH_RESP,
};

const DEFAULTS = {
  heartbeatMs: 10_000,
  requestTimeoutMs: 8_000,
  sendAttempts: 5,
  retryBaseMs: 500,
  retryMaxMs: 8_000,
  reconnectBaseMs: 500,
  reconnectMaxMs: 15_000,
  pushAckDelayMs: 100,
  pushAckMax: 50,
  idBatchSize: 50,
  idLowWater: 10,
  offlinePageSize: 100,
  offlineMaxPages: 1_000,
  historyPageSize: 50,
  readPollFirstMs: 2_000,
  readPollMaxMs: 64_000,
  maxBody: 65_536,
  unconfirmedMax: 2_000, // acked ids kept for the next pull (they fit its 64 KiB body)
};

/** The larger of two int64 positions given as decimal strings (or numbers). */
function maxCursor(a, b) {
  return BigInt(a || 0) >= BigInt(b || 0) ? String(a || 0) : String(b || 0);
}

/** Exponential backoff with jitter: attempt 0 -> [base/2, base], doubling, capped at max. */
export function backoffDelay(attempt, baseMs, maxMs, random = Math.random) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** attempt);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** The S13 read-status polling delays: 2 s, 4 s, 8 s, ... capped. */
export function readPollDelay(round, firstMs = 2_000, maxMs = 64_000) {
  return Math.min(maxMs, firstMs * 2 ** round);
}

export class ImClient extends EventTarget {
  /**
   * @param {object} opts
   * @param {string} opts.uid
   * @param {string} opts.token
   * @param {string} [opts.url] ws:// address of an access node
   * @param {() => Promise<string>} [opts.resolveUrl] picks an access node for each connect (ipList)
   * @param {string} [opts.deviceId] stable per device (the page's comes from DeviceSlot)
   * @param {{load(): string, save(cursor: string): void}} [opts.resumeStore] where the
   *   device's resume position is kept (memory by default)
   * @param {Function} [opts.WebSocket] WebSocket constructor (the browser's by default)
   */
  constructor(opts) {
    super();
    this.opts = { ...DEFAULTS, ...opts };
    this.uid = opts.uid;
    this.token = opts.token;
    this.deviceId = opts.deviceId || `web-${Math.random().toString(36).slice(2, 10)}`;
    this.WebSocket = opts.WebSocket || globalThis.WebSocket;
    this.random = opts.random || Math.random;
    this.status = Status.IDLE;
    this.serverTimeOffsetMs = 0;

    this._ws = null;
    this._seq = 0; // frame sequence numbers of our requests
    this._inflight = new Map(); // sequence -> {expect, resolve, reject, timer}
    this._heartbeatTimer = null;
    this._reconnectTimer = null;
    this._reconnectAttempt = 0;
    this._kickUrl = null; // reconnect target named by a KICK
    this._lastHeard = 0;
    this._onlineWaiters = new Set();

    this._ids = []; // cached message ids (decimal strings)
    this._idFetch = null;
    this._clientSeq = Date.now() * 1000; // increasing across page reloads too (S12)

    this._seen = new SeenIds();
    this._orders = new Map(); // conversation_id -> ConversationOrder
    this._gapPulls = new Map(); // conversation_id -> promise of the running gap pull
    this._sources = new Map(); // message_id -> how it came (push, offline, gap, own) until delivered
    this._pendingAcks = [];
    this._ackTimer = null;
    this._pulling = null;
    this._pullAgain = false;
    this._readReported = new Map(); // conversation_id -> highest seq reported
    this._readPolls = new Map(); // conversation_id -> poller state

    this.state = new MessageState(); // current content of held messages (recall, edit, delete)
    this._resume = opts.resumeStore || new ResumeStore(null, this.uid, this.deviceId);
    this.resumeCursor = this._resume.load() || "0";
    this._unconfirmed = new Set(); // ids acked since the last pull (decimal strings)
  }

  /** The highest seq of `conv` delivered in order (events included), or 0. */
  latestSeq(conv) {
    const order = this._orders.get(conv);
    return (order && order.last) || 0;
  }

  // ---------------------------------------------------------------- connection

  /** Connects and keeps the connection up until close(). Resolves when first online. */
  start() {
    if (this.status === Status.IDLE || this._stopped()) {
      this._setStatus(Status.CONNECTING);
      this._connect();
    }
    return this.whenOnline(this.opts.requestTimeoutMs * 4);
  }

  close() {
    this._setStatus(Status.CLOSED);
    clearTimeout(this._reconnectTimer);
    this._stopTimers();
    for (const poll of this._readPolls.values()) clearTimeout(poll.timer);
    this._readPolls.clear();
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      try {
        ws.close(1000, "bye");
      } catch {
        /* already closed */
      }
    }
    this._failInflight(new Disconnected("client closed"));
  }

  /** Resolves once online; rejects after `timeoutMs` or when the client gives up. */
  whenOnline(timeoutMs = this.opts.requestTimeoutMs) {
    if (this.status === Status.ONLINE) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: () => {
          clearTimeout(waiter.timer);
          this._onlineWaiters.delete(waiter);
          resolve();
        },
        reject: (err) => {
          clearTimeout(waiter.timer);
          this._onlineWaiters.delete(waiter);
          reject(err);
        },
      };
      waiter.timer = setTimeout(() => waiter.reject(new Disconnected("not online")), timeoutMs);
      this._onlineWaiters.add(waiter);
    });
  }

  async _connect() {
    if (this._stopped()) return;
    let url = this._kickUrl;
    this._kickUrl = null;
    try {
      if (!url) url = this.opts.resolveUrl ? await this.opts.resolveUrl() : this.opts.url;
    } catch (err) {
      this._log("resolve_failed", String(err));
      url = this.opts.url;
    }
    if (!url) {
      this._scheduleReconnect();
      return;
    }
    if (this.status === Status.CLOSED) return;
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (err) {
      this._log("connect_failed", String(err));
      this._scheduleReconnect();
      return;
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    this.url = url;
    ws.onopen = () => this._authenticate(ws);
    ws.onmessage = (ev) => this._onMessage(ws, ev.data);
    ws.onerror = () => {}; // a close event always follows
    ws.onclose = (ev) => this._onClose(ws, ev);
  }

  async _authenticate(ws) {
    if (ws !== this._ws) return;
    this._lastHeard = Date.now();
    this._startHeartbeat(ws);
    let resp;
    try {
      resp = await this._request(RequestType.AUTH_REQ, {
        uid: this.uid,
        token: this.token,
        timestamp: Date.now(),
        device_id: this.deviceId,
        features: [FEATURE_SYNC],
      });
    } catch (err) {
      if (err instanceof ProtocolError && err.code === ErrorCode.UNAUTHENTICATED) return this._unauthorized(err.message);
      this._log("auth_failed", String(err));
      try {
        ws.close(4000, "auth failed");
      } catch {
        /* closing anyway */
      }
      return;
    }
    if (ws !== this._ws) return;
    if (resp.code !== ErrorCode.OK) {
      if (resp.code === ErrorCode.UNAUTHENTICATED) return this._unauthorized(resp.message);
      ws.close(4000, "auth refused");
      return;
    }
    if (resp.server_time) this.serverTimeOffsetMs = Number(resp.server_time) - Date.now();
    this._reconnectAttempt = 0;
    this._setStatus(Status.ONLINE);
    for (const w of [...this._onlineWaiters]) w.resolve();
    this._flushPushAcks();
    // S15: whatever was pushed while we were away waits in the offline store.
    this.pullOffline().catch((err) => this._log("offline_pull_failed", String(err)));
    this.unread().catch(() => {});
    for (const [conv, poll] of this._readPolls) if (!poll.timer) this._scheduleReadPoll(conv, 0);
  }

  _unauthorized(message) {
    this._stopReconnecting(Status.UNAUTHORIZED, message);
  }

  /** Ends the connection for good (until start() again): token refused, or replaced. */
  _stopReconnecting(status, message) {
    this._setStatus(status, message);
    clearTimeout(this._reconnectTimer);
    const code = status === Status.UNAUTHORIZED ? ErrorCode.UNAUTHENTICATED : ErrorCode.DUPLICATE;
    for (const w of [...this._onlineWaiters]) w.reject(new ProtocolError(code, message || status));
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      try {
        ws.close(1000, status);
      } catch {
        /* already closed */
      }
    }
    this._stopTimers();
    this._failInflight(new Disconnected(status));
  }

  _onClose(ws, ev) {
    if (ws !== this._ws) return;
    this._ws = null;
    this._stopTimers();
    this._failInflight(new Disconnected(`closed ${ev && ev.code}`));
    if (this._stopped()) return;
    this._setStatus(Status.RECONNECTING, ev && ev.reason);
    this._scheduleReconnect();
  }

  _stopped() {
    return this.status === Status.CLOSED || this.status === Status.UNAUTHORIZED || this.status === Status.REPLACED;
  }

  _scheduleReconnect() {
    if (this._stopped()) return;
    clearTimeout(this._reconnectTimer);
    const delay = this._kickUrl
      ? Math.round(this.random() * this.opts.reconnectBaseMs) // the kicker named a node: go now, spread out
      : backoffDelay(this._reconnectAttempt, this.opts.reconnectBaseMs, this.opts.reconnectMaxMs, this.random);
    this._reconnectAttempt += 1;
    this.nextReconnectMs = delay;
    this.nextReconnectAt = Date.now() + delay;
    this._emit("reconnecting", { inMs: delay, attempt: this._reconnectAttempt });
    this._reconnectTimer = setTimeout(() => this._connect(), delay);
  }

  /** Drops the connection as if the network failed (the client reconnects by itself). */
  dropConnection() {
    if (this._ws) this._ws.close(4001, "dropped by client");
  }

  _startHeartbeat(ws) {
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = setInterval(() => {
      if (ws !== this._ws) return;
      // Nothing heard for three periods: the link is dead even if TCP has not noticed.
      if (Date.now() - this._lastHeard > this.opts.heartbeatMs * 3) {
        ws.close(4002, "heartbeat timeout");
        return;
      }
      this._sendFrame(RequestType.HEARTBEAT_REQ, this._nextSeq(), new Uint8Array(0));
    }, this.opts.heartbeatMs);
  }

  _stopTimers() {
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
  }

  _setStatus(status, detail) {
    if (this.status === status) return;
    this.status = status;
    this._emit("status", { status, detail: detail || "" });
  }

  // ---------------------------------------------------------------- frames

  _nextSeq() {
    this._seq = (this._seq % 0xfffffffe) + 1;
    return this._seq;
  }

  _sendFrame(type, sequence, body) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(encodeFrame(type, sequence, body));
    return true;
  }

  /** Sends one request and resolves with the decoded answer (an ERROR answer rejects). */
  _request(type, fields) {
    const sequence = this._nextSeq();
    const body = encodeBody(BODY_TYPES[type], fields);
    return new Promise((resolve, reject) => {
      if (!this._sendFrame(type, sequence, body)) {
        reject(new Disconnected());
        return;
      }
      const timer = setTimeout(() => {
        this._inflight.delete(sequence);
        reject(new RequestTimeout(type));
      }, this.opts.requestTimeoutMs);
      this._inflight.set(sequence, { expect: RESPONSE_OF[type], resolve, reject, timer });
    });
  }

  _failInflight(err) {
    const waiting = [...this._inflight.values()];
    this._inflight.clear();
    for (const r of waiting) {
      clearTimeout(r.timer);
      r.reject(err);
    }
  }

  _onMessage(ws, data) {
    if (ws !== this._ws) return;
    this._lastHeard = Date.now();
    if (typeof data === "string") {
      this._log("text_message_ignored", data.slice(0, 80));
      return;
    }
    let frame;
    try {
      frame = decodeFrame(data, this.opts.maxBody);
    } catch (err) {
      if (err instanceof FrameError) {
        this._log("bad_frame", err.message);
        ws.close(4003, "bad frame from server");
        return;
      }
      throw err;
    }
    let body;
    try {
      body = decodeBody(frame.requestType, frame.body);
    } catch (err) {
      this._log("bad_body", `${frame.requestType}: ${err.message}`);
      const waiting = this._inflight.get(frame.sequence);
      if (waiting) {
        this._inflight.delete(frame.sequence);
        clearTimeout(waiting.timer);
        waiting.reject(new ProtocolError(ErrorCode.BAD_BODY, "undecodable answer"));
      }
      return;
    }
    this._dispatch(frame, body);
  }

  _dispatch(frame, body) {
    const type = frame.requestType;
    switch (type) {
      case RequestType.PUSH:
        this._onPush(body);
        return;
      case RequestType.PULL_NOTIFY:
        this.pullOffline().catch((err) => this._log("offline_pull_failed", String(err)));
        return;
      case RequestType.KICK:
        this._onKick(body);
        return;
      case RequestType.SYNC:
        this._onSync(body);
        return;
      default:
        break;
    }
    const waiting = this._inflight.get(frame.sequence);
    if (waiting && (type === waiting.expect || type === RequestType.ERROR)) {
      this._inflight.delete(frame.sequence);
      clearTimeout(waiting.timer);
      if (type === RequestType.ERROR) waiting.reject(new ProtocolError(body.code, body.message));
      else waiting.resolve(body);
      return;
    }
    if (type === RequestType.ERROR) this._emit("servererror", body);
    // Late answers to timed-out requests and heartbeat answers need nothing more.
  }

  _onKick(kick) {
    this._emit("kick", kick);
    if (kick.code === ErrorCode.DUPLICATE && !kick.reconnect_host) {
      // Replaced by a newer connection of the same device: reconnecting would only kick
      // that one in turn, back and forth.
      this._stopReconnecting(Status.REPLACED, kick.message);
      return;
    }
    if (kick.reconnect_host && kick.reconnect_port) {
      const scheme = this.url && this.url.startsWith("wss:") ? "wss" : "ws";
      this._kickUrl = `${scheme}://${kick.reconnect_host}:${kick.reconnect_port}/ws`;
    }
    // The server closes after a KICK; closing here too makes the reconnect prompt.
    if (this._ws) this._ws.close(4004, "kicked");
  }

  // ---------------------------------------------------------------- ids and sending

  /** One message id from the cached batch, fetching a new batch when low (S17). */
  async nextId() {
    if (this._ids.length <= this.opts.idLowWater && !this._idFetch && this.status === Status.ONLINE) {
      this._idFetch = this._fetchIds().finally(() => {
        this._idFetch = null;
      });
      this._idFetch.catch(() => {});
    }
    while (!this._ids.length) {
      if (!this._idFetch) {
        await this.whenOnline(this.opts.requestTimeoutMs);
        this._idFetch = this._fetchIds().finally(() => {
          this._idFetch = null;
        });
      }
      await this._idFetch;
    }
    return this._ids.shift();
  }

  async _fetchIds() {
    const resp = await this._request(RequestType.ID_BATCH_REQ, { count: this.opts.idBatchSize });
    this._ids.push(...resp.ids.map(String));
  }

  /**
   * Sends a message. Returns {message_id, conversation_id, client_seq, done}; `done` resolves
   * with the SendAck (delivered to the server) or rejects after the bounded retries.
   */
  async send({ to, type = ConversationType.SINGLE, text, content, contentType = 1, messageId }) {
    // A retry by the user of a failed send passes the old id: the server de-duplicates it.
    const message_id = messageId || (await this._withRetry(() => this.nextId()));
    this._clientSeq += 1;
    const request = {
      message_id,
      type,
      to,
      client_seq: this._clientSeq,
      content_type: contentType,
      content: content || new TextEncoder().encode(text ?? ""),
      client_time: Date.now(),
    };
    const conversation_id = conversationId(type, this.uid, to);
    const done = this._withRetry(() => this._sendOnce(request)).then(
      (ack) => {
        const own = {
          message_id,
          conversation_id: ack.conversation_id || conversation_id,
          seq: ack.seq,
          from: this.uid,
          type,
          to,
          content_type: contentType,
          content: request.content,
          server_time: ack.server_time,
        };
        this._emit("ack", { ...ack, message_id });
        if (own.seq) this._accept(own, "own");
        this.pokeReadStatus(own.conversation_id);
        return ack;
      },
      (err) => {
        this._emit("sendfailed", { message_id, conversation_id, error: err });
        throw err;
      },
    );
    done.catch(() => {}); // the caller may not await it; the event reports the failure
    return { message_id, conversation_id, client_seq: request.client_seq, done };
  }

  async _sendOnce(request, type = RequestType.SEND_REQ) {
    const ack = await this._request(type, request);
    // S15: a re-send of an id the server already has is answered with the original ack.
    if (ack.code === ErrorCode.OK || ack.code === ErrorCode.DUPLICATE) return ack;
    throw new ProtocolError(ack.code, ack.message || "send refused");
  }

  /** Runs `attempt` up to sendAttempts times, waiting with backoff + jitter between tries. */
  async _withRetry(attempt) {
    let lastError;
    for (let i = 0; i < this.opts.sendAttempts; i++) {
      if (this._stopped()) break;
      try {
        if (this.status !== Status.ONLINE) await this.whenOnline(this.opts.requestTimeoutMs);
        return await attempt();
      } catch (err) {
        if (err instanceof ProtocolError && err.code === ErrorCode.DUPLICATE) return { code: ErrorCode.DUPLICATE };
        if (!isRetryable(err)) throw err;
        lastError = err;
      }
      if (i + 1 < this.opts.sendAttempts) await sleep(backoffDelay(i, this.opts.retryBaseMs, this.opts.retryMaxMs, this.random));
    }
    throw lastError || new Disconnected("client closed");
  }

  // ---------------------------------------------------------------- receiving

  _onPush(msg) {
    this._queuePushAck(msg.message_id); // ack even a duplicate: the server must drop it
    this._accept(msg, "push");
  }

  _queuePushAck(id) {
    this._pendingAcks.push(String(id));
    if (this._pendingAcks.length >= this.opts.pushAckMax) this._flushPushAcks();
    else if (!this._ackTimer) this._ackTimer = setTimeout(() => this._flushPushAcks(), this.opts.pushAckDelayMs);
  }

  _flushPushAcks() {
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    if (!this._pendingAcks.length) return;
    const ids = this._pendingAcks;
    // Not online: keep them; the offline pull after reconnect re-delivers and acks anyway.
    if (this.status !== Status.ONLINE) return;
    if (this._sendFrame(RequestType.PUSH_ACK, this._nextSeq(), encodeBody(pb.PushAck, { message_ids: ids }))) {
      this._pendingAcks = [];
      this._unconfirm(ids); // no answer comes: confirmed only by the next pull
    }
  }

  _order(conv) {
    let order = this._orders.get(conv);
    if (!order) {
      order = new ConversationOrder();
      this._orders.set(conv, order);
    }
    return order;
  }

  /** De-dup by id, reorder by seq, emit in order; pulls the history of a gap. */
  _accept(msg, source) {
    if (isGap(msg)) {
      // history's marker for a seq that will never carry a message: skip it at once
      this._deliver(this._order(msg.conversation_id).addGap(msg.seq));
      return;
    }
    if (!this._seen.add(msg.message_id)) return;
    const order = this._order(msg.conversation_id);
    this._sources.set(String(msg.message_id), source);
    if (this._sources.size > 5000) this._sources.delete(this._sources.keys().next().value);
    const { deliver, gap } = order.add(msg);
    this._deliver(deliver);
    if (gap || order.gap) this._fillGap(msg.conversation_id);
  }

  _deliver(messages) {
    for (const m of messages) {
      const key = String(m.message_id);
      const source = this._sources.get(key) || "history";
      this._sources.delete(key);
      const own = m.from === this.uid; // sender sync: sent from another device of ours
      if (isEvent(m)) {
        const change = this.state.applyEvent(m);
        const cause = m.event.kind === EventKind.RECALL ? "recall" : "edit";
        if (change) this._emit("change", { change, cause, event: m, source, own });
        continue;
      }
      const current = this.state.put(m, own);
      this._emit("message", { message: m, view: current, source, own });
    }
  }

  _onSync(sync) {
    const conv = sync.conversation_id;
    if (sync.read_seq && (this._readReported.get(conv) || 0) < sync.read_seq) this._readReported.set(conv, sync.read_seq);
    for (const change of this.state.hide(conv, sync.deleted_seqs || [])) {
      this._emit("change", { change, cause: "delete", source: "sync", own: true });
    }
    this._emit("sync", sync);
    // A notice only: the server holds the counts (another device read: ours are lower now).
    if (sync.read_seq) this.unread().catch(() => {});
  }

  _unconfirm(ids) {
    for (const id of ids) {
      const key = String(id);
      this._unconfirmed.delete(key);
      this._unconfirmed.add(key);
    }
    while (this._unconfirmed.size > this.opts.unconfirmedMax) this._unconfirmed.delete(this._unconfirmed.values().next().value);
  }

  _fillGap(conv) {
    if (this._gapPulls.has(conv)) return;
    const run = (async () => {
      const order = this._order(conv);
      for (let round = 0; round < 3 && order.gap; round++) {
        const gap = order.gap;
        try {
          const resp = await this._request(RequestType.PULL_HISTORY_REQ, {
            conversation_id: conv,
            after_seq: gap.after_seq,
            before_seq: gap.before_seq,
            limit: Math.min(this.opts.historyPageSize * 2, gap.before_seq - gap.after_seq - 1),
          });
          const msgs = resp.messages.slice().sort((a, b) => a.seq - b.seq);
          for (const m of msgs) this._accept(m, "gap");
          const ids = msgs.filter((m) => !isGap(m)).map((m) => m.message_id);
          if (ids.length) this._sendPushAck(ids);
          if (!msgs.length) break;
        } catch (err) {
          this._log("gap_pull_failed", String(err));
          break;
        }
      }
      // Whatever could not be filled must not block the conversation.
      if (order.gap) this._deliver(order.skipGap());
    })().finally(() => this._gapPulls.delete(conv));
    this._gapPulls.set(conv, run);
  }

  _sendPushAck(ids) {
    if (!ids.length) return;
    if (this._sendFrame(RequestType.PUSH_ACK, this._nextSeq(), encodeBody(pb.PushAck, { message_ids: ids.map(String) }))) this._unconfirm(ids);
    else this._pendingAcks.push(...ids.map(String)); // they ride the next pull
  }

  /**
   * Pulls the offline store page by page (S10, S15). The first page carries this device's
   * resume position and the acks not yet confirmed, so the server moves the device's cursor
   * before it reads; each page's acks ride the next page, the last page's go as a PUSH_ACK.
   */
  pullOffline() {
    if (this._pulling) {
      this._pullAgain = true;
      return this._pulling;
    }
    this._pulling = (async () => {
      let total = 0;
      do {
        this._pullAgain = false;
        total += await this._pullPages();
      } while (this._pullAgain);
      if (total) this.unread().catch(() => {});
      return total;
    })().finally(() => {
      this._pulling = null;
    });
    return this._pulling;
  }

  async _pullPages() {
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    let acked = [...new Set([...this._unconfirmed, ...this._pendingAcks])];
    this._pendingAcks = [];
    let req = { cursor: "0", limit: this.opts.offlinePageSize, resume_cursor: this.resumeCursor, acked_ids: acked };
    let cursor = "0";
    let total = 0;
    for (let page = 0; page < this.opts.offlineMaxPages; page++) {
      let resp;
      try {
        resp = await this._request(RequestType.PULL_OFFLINE_REQ, req);
      } catch (err) {
        this._unconfirm(acked); // not confirmed: they go with the next pull
        throw err;
      }
      for (const id of acked) this._unconfirmed.delete(id);
      acked = [];
      const msgs = resp.messages.slice().sort((a, b) =>
        a.conversation_id === b.conversation_id ? a.seq - b.seq : a.conversation_id < b.conversation_id ? -1 : 1,
      );
      for (const m of msgs) this._accept(m, "offline");
      const ids = msgs.map((m) => String(m.message_id));
      // Everything up to next_cursor is on this device now (what the page left out, the
      // device had acked already).
      this.resumeCursor = maxCursor(this.resumeCursor, maxCursor(resp.next_cursor, resp.device_cursor));
      this._resume.save(this.resumeCursor);
      total += ids.length;
      const next = String(resp.next_cursor || 0);
      if (!resp.has_more || !msgs.length || next === cursor) {
        this._sendPushAck(ids);
        return total;
      }
      cursor = next;
      acked = ids;
      req = { cursor, limit: this.opts.offlinePageSize, acked_ids: ids }; // this page's acks ride the next
    }
    return total;
  }

  /**
   * One page of history, oldest first. Without beforeSeq it is the newest page, which also
   * sets the conversation's ordering baseline (what came before is known).
   */
  async history(conv, { beforeSeq = 0, afterSeq = 0, limit = this.opts.historyPageSize } = {}) {
    // Gap markers (seqs that carry no message) are left out of the page; a page of markers
    // only (after a server lost its seq counters) is followed further back, so a page shows
    // messages whenever there are older ones.
    let before = beforeSeq;
    let messages = [];
    let resp;
    for (let round = 0; round < 20; round++) {
      resp = await this._request(RequestType.PULL_HISTORY_REQ, {
        conversation_id: conv,
        before_seq: before,
        after_seq: afterSeq,
        limit,
      });
      const entries = resp.messages.slice().sort((a, b) => a.seq - b.seq);
      if (!beforeSeq && round === 0 && entries.length) {
        this._deliver(this._order(conv).setBaseline(entries[entries.length - 1].seq));
      }
      for (const m of entries) if (!isGap(m)) this._seen.add(m.message_id);
      // Events are left out too (the page's originals come revised already), and so are
      // what this user deleted for itself; what is shown is the held state.
      messages = entries
        .filter((m) => !isGap(m) && !isEvent(m))
        .map((m) => this.state.put(m, m.from === this.uid))
        .filter((v) => v.status !== MessageStatus.DELETED);
      if (messages.length || !resp.has_more || !entries.length || afterSeq) break;
      before = entries[0].seq;
    }
    return { messages, has_more: resp.has_more };
  }

  // ---------------------------------------------------------------- recall, edit, delete for me

  /** Recalls one of our messages (within the server's window: ProtocolError 410 after it). */
  recall(conversation, seq, messageId) {
    return this._modify(EventKind.RECALL, conversation, seq, messageId);
  }

  /** Replaces the content of one of our messages (no window). */
  edit(conversation, seq, messageId, content, contentType = 1) {
    const bytes = typeof content === "string" ? new TextEncoder().encode(content) : content;
    return this._modify(EventKind.EDIT, conversation, seq, messageId, bytes, contentType);
  }

  /** Hides a message (anyone's) on every device of this user, and from its history. */
  deleteForMe(conversation, seq, messageId) {
    return this._modify(EventKind.DELETE_FOR_ME, conversation, seq, messageId);
  }

  /**
   * MODIFY_REQ with an id of its own (re-sent with the same id on retry: the server
   * de-duplicates), answered by SEND_ACK. Resolves with the ack once the change is applied
   * here too; rejects with ProtocolError 403 (not yours), 404 (unknown), 410 (too late).
   */
  async _modify(kind, conversation_id, seq, messageId, content = new Uint8Array(0), contentType = 0) {
    const message_id = await this._withRetry(() => this.nextId());
    const request = {
      message_id,
      kind,
      conversation_id,
      target_seq: seq,
      target_message_id: messageId ? String(messageId) : "0",
      content_type: contentType,
      content,
    };
    const ack = await this._withRetry(() => this._sendOnce(request, RequestType.MODIFY_REQ));
    if (kind === EventKind.DELETE_FOR_ME) {
      // No seq of the conversation (the peer must not see it): applied here at once.
      for (const change of this.state.hide(conversation_id, [seq])) this._emit("change", { change, cause: "delete", source: "own", own: true });
      return ack;
    }
    const event = {
      message_id,
      conversation_id,
      seq: ack.seq || 0,
      from: this.uid,
      content_type: contentType,
      content,
      server_time: ack.server_time,
      event: { kind, target_seq: seq, target_message_id: request.target_message_id },
    };
    if (event.seq) this._accept(event, "own"); // fills the event's seq in the ordering too
    else this._deliver([event]); // a DUPLICATE without its seq: apply it all the same
    return ack;
  }

  // ---------------------------------------------------------------- read state, unread

  /** Reports `conv` read up to and including `seq` (only ever forward). */
  async readReport(conv, seq) {
    if (!seq || (this._readReported.get(conv) || 0) >= seq) return false;
    this._readReported.set(conv, seq);
    try {
      await this._request(RequestType.READ_REPORT, { conversation_id: conv, seq });
    } catch (err) {
      this._readReported.delete(conv);
      throw err;
    }
    this.unread().catch(() => {});
    return true;
  }

  async unread() {
    const resp = await this._request(RequestType.UNREAD_REQ, {});
    const counts = { total: resp.total, conversations: Object.fromEntries(resp.conversations.map((c) => [c.conversation_id, c.count])) };
    this._emit("unread", counts);
    return counts;
  }

  async readStatus(conv, afterSeq = 0) {
    const resp = await this._request(RequestType.READ_STATUS_REQ, { conversation_id: conv, after_seq: afterSeq });
    return resp.states;
  }

  /**
   * Polls the read state of `conv` (S13): after 2 s, 4 s, 8 s, ... (capped), starting over at
   * 2 s whenever pokeReadStatus() says something changed (we sent a message). `afterSeq()`
   * gives the seq to ask after (e.g. before the oldest own message not yet read by all).
   */
  watchReadStatus(conv, afterSeq = () => 0) {
    const existing = this._readPolls.get(conv);
    if (existing) {
      existing.afterSeq = afterSeq;
      return;
    }
    this._readPolls.set(conv, { afterSeq, round: 0, timer: null });
    this._scheduleReadPoll(conv, 0);
  }

  unwatchReadStatus(conv) {
    const poll = this._readPolls.get(conv);
    if (poll) clearTimeout(poll.timer);
    this._readPolls.delete(conv);
  }

  pokeReadStatus(conv) {
    if (this._readPolls.has(conv)) this._scheduleReadPoll(conv, 0);
  }

  _scheduleReadPoll(conv, round) {
    const poll = this._readPolls.get(conv);
    if (!poll) return;
    clearTimeout(poll.timer);
    poll.round = round;
    const delay = readPollDelay(round, this.opts.readPollFirstMs, this.opts.readPollMaxMs);
    poll.nextDelayMs = delay;
    poll.timer = setTimeout(async () => {
      poll.timer = null;
      if (this._readPolls.get(conv) !== poll) return;
      if (this.status !== Status.ONLINE) return; // resumed by the next auth
      try {
        const after = poll.afterSeq();
        if (after !== null && after !== undefined) {
          const states = await this.readStatus(conv, after);
          this._emit("readstatus", { conversation_id: conv, states });
        }
      } catch (err) {
        this._log("read_status_failed", String(err));
      }
      if (this._readPolls.get(conv) === poll && !poll.timer) this._scheduleReadPoll(conv, poll.round + 1);
    }, delay);
  }

  // ---------------------------------------------------------------- misc

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _log(event, detail) {
    if (this.opts.log) this.opts.log(event, detail);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
