// Protocol tables and protobuf message types (PROTOCOL.md), shared by the client and tests.
//
// The message types come from a JSON descriptor generated at build time from the project's
// own imstack.proto (src/gen/descriptor.js), loaded with protobufjs/light: no .proto parsing
// and no network at run time. int64 fields are decoded exactly through long.js: message ids
// are snowflake-sized and do not fit a JS number, so the client keeps them as decimal strings.
import protobuf from "protobufjs/light.js";
import Long from "long";
import descriptor from "./gen/descriptor.js";

protobuf.util.Long = Long;
protobuf.configure();

const root = protobuf.Root.fromJSON(descriptor);
const t = (name) => root.lookupType(`imstack.v1.${name}`);

export const pb = {
  AuthRequest: t("AuthRequest"),
  AuthResponse: t("AuthResponse"),
  SendRequest: t("SendRequest"),
  SendAck: t("SendAck"),
  Message: t("Message"),
  PushAck: t("PushAck"),
  PullOfflineRequest: t("PullOfflineRequest"),
  PullOfflineResponse: t("PullOfflineResponse"),
  PullNotify: t("PullNotify"),
  PullHistoryRequest: t("PullHistoryRequest"),
  PullHistoryResponse: t("PullHistoryResponse"),
  ReadReport: t("ReadReport"),
  ReadStatusRequest: t("ReadStatusRequest"),
  ReadStatusResponse: t("ReadStatusResponse"),
  UnreadResponse: t("UnreadResponse"),
  IdBatchRequest: t("IdBatchRequest"),
  IdBatchResponse: t("IdBatchResponse"),
  Kick: t("Kick"),
  Error: t("Error"),
  ModifyRequest: t("ModifyRequest"),
  Sync: t("Sync"),
};

export const RequestType = Object.freeze({
  AUTH_REQ: 1, AUTH_RESP: 2, HEARTBEAT_REQ: 3, HEARTBEAT_RESP: 4,
  SEND_REQ: 10, SEND_ACK: 11, PUSH: 12, PUSH_ACK: 13,
  PULL_OFFLINE_REQ: 20, PULL_OFFLINE_RESP: 21, PULL_NOTIFY: 22,
  PULL_HISTORY_REQ: 23, PULL_HISTORY_RESP: 24,
  READ_REPORT: 30, READ_REPORT_ACK: 31, READ_STATUS_REQ: 32, READ_STATUS_RESP: 33,
  UNREAD_REQ: 34, UNREAD_RESP: 35, SYNC: 36, ID_BATCH_REQ: 40, ID_BATCH_RESP: 41,
  MODIFY_REQ: 50, KICK: 90, ERROR: 99,
});

export const ErrorCode = Object.freeze({
  OK: 0, BAD_BODY: 400, UNAUTHENTICATED: 401, FORBIDDEN: 403, NOT_FOUND: 404,
  DUPLICATE: 409, GONE: 410, FRAME_TOO_LARGE: 413, BAD_FRAME: 422, RATE_LIMITED: 429, UNAVAILABLE: 503,
});

export const ConversationType = Object.freeze({ SINGLE: 1, GROUP: 2 });

// v1 extensions (docs/protocol.md): what an event message does, and a message's current state.
export const EventKind = Object.freeze({ NONE: 0, RECALL: 1, EDIT: 2, DELETE_FOR_ME: 3 });
export const MessageStatus = Object.freeze({ NORMAL: 0, EDITED: 1, RECALLED: 2, DELETED: 3 });
// AuthRequest.features this client understands (im_runtime/protocol/types.py FEATURE_SYNC):
// the server sends SYNC notices only to connections that list it.
export const FEATURE_SYNC = "sync";

// The body message of each request type (null = empty body), as in PROTOCOL.md.
export const BODY_TYPES = Object.freeze({
  [RequestType.AUTH_REQ]: pb.AuthRequest,
  [RequestType.AUTH_RESP]: pb.AuthResponse,
  [RequestType.HEARTBEAT_REQ]: null,
  [RequestType.HEARTBEAT_RESP]: null,
  [RequestType.SEND_REQ]: pb.SendRequest,
  [RequestType.SEND_ACK]: pb.SendAck,
  [RequestType.PUSH]: pb.Message,
  [RequestType.PUSH_ACK]: pb.PushAck,
  [RequestType.PULL_OFFLINE_REQ]: pb.PullOfflineRequest,
  [RequestType.PULL_OFFLINE_RESP]: pb.PullOfflineResponse,
  [RequestType.PULL_NOTIFY]: pb.PullNotify,
  [RequestType.PULL_HISTORY_REQ]: pb.PullHistoryRequest,
  [RequestType.PULL_HISTORY_RESP]: pb.PullHistoryResponse,
  [RequestType.READ_REPORT]: pb.ReadReport,
  [RequestType.READ_REPORT_ACK]: null,
  [RequestType.READ_STATUS_REQ]: pb.ReadStatusRequest,
  [RequestType.READ_STATUS_RESP]: pb.ReadStatusResponse,
  [RequestType.UNREAD_REQ]: null,
  [RequestType.UNREAD_RESP]: pb.UnreadResponse,
  [RequestType.SYNC]: pb.Sync,
  [RequestType.ID_BATCH_REQ]: pb.IdBatchRequest,
  [RequestType.ID_BATCH_RESP]: pb.IdBatchResponse,
  [RequestType.MODIFY_REQ]: pb.ModifyRequest,
  [RequestType.KICK]: pb.Kick,
  [RequestType.ERROR]: pb.Error,
});

// Plain-object view of a decoded message: int64 as decimal strings (ids, times), uint64 seq
// and counts as numbers (a conversation's seq stays far below 2^53), bytes as Uint8Array.
const TO_OBJECT = { longs: String, enums: Number, bytes: Uint8Array, defaults: true, arrays: true };
const NUMBER_FIELDS = new Set([
  "seq", "latest_seq", "before_seq", "after_seq", "client_seq", "count", "total", "read_count",
  "target_seq", "revision_seq", "read_seq", "deleted_seqs",
]);

export function toPlain(type, message) {
  const obj = type.toObject(message, TO_OBJECT);
  return normalize(obj);
}

function normalize(value) {
  if (Array.isArray(value)) return value.map(normalize);
  if (value && typeof value === "object" && !(value instanceof Uint8Array)) {
    for (const key of Object.keys(value)) {
      const v = value[key];
      if (NUMBER_FIELDS.has(key) && typeof v === "string") value[key] = Number(v);
      else if (NUMBER_FIELDS.has(key) && Array.isArray(v)) value[key] = v.map(Number);
      else value[key] = normalize(v);
    }
  }
  return value;
}

export function encodeBody(type, fields) {
  if (!type) return new Uint8Array(0);
  return type.encode(type.fromObject(fields || {})).finish();
}

// Decodes a body into a plain object; throws on a body that does not decode.
export function decodeBody(requestType, body) {
  const type = BODY_TYPES[requestType];
  if (type === undefined) throw new Error(`unknown request type ${requestType}`);
  if (type === null) return {};
  return toPlain(type, type.decode(body));
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();
export const utf8 = { encode: (s) => encoder.encode(s), decode: (b) => decoder.decode(b) };

export function conversationId(type, me, to) {
  if (type === ConversationType.GROUP) return `g:${to}`;
  return me < to ? `s:${me}:${to}` : `s:${to}:${me}`;
}
