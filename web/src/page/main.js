// The imstack chat page: sign-in, conversation list with unread counts, a message pane with
// sent / delivered / read state, groups, history scrolling, and a visible connection status.
//
// All protocol work is ImClient's; this file keeps a small model (conversations and their
// messages, keyed by message_id so pushes, history pages and own acks merge into one entry)
// and re-renders from it. Sign-in lives in sessionStorage so a reload stays signed in (and
// each tab can be a different user); the conversation list is remembered per user in
// localStorage, and the server's unread counts and offline pull fill in the rest.
//
// Several devices (S18): the device id is stable per browser profile (device.js: a slot per
// live tab), and so is its resume position. Messages sent from another device of the user
// show as own; edits show "(edited)", recalls "message recalled"; delete-for-me removes the
// message here and, through the server's SYNC, on every other device of the user; a read on
// another device clears the unread badges here (SYNC, then the server's counts).
import { ImClient, ProtocolError, Status } from "../client.js";
import { DeviceSlot, ResumeStore, safeStorage } from "../device.js";
import { ConversationType, ErrorCode, MessageStatus, conversationId, utf8 } from "../proto.js";

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "imstack.session";
const WS_PORT = 9001;

const model = {
  me: null,
  client: null,
  convs: new Map(), // conversation_id -> Conversation
  active: null,
  unreadTotal: 0,
};
let localCounter = 0;

// ------------------------------------------------------------------ conversations

function describe(convId, me) {
  if (convId.startsWith("g:")) return { type: ConversationType.GROUP, to: convId.slice(2), title: convId.slice(2) };
  const [, a, b] = convId.split(":");
  const peer = a === me ? b : a;
  return { type: ConversationType.SINGLE, to: peer, title: peer };
}

function conversation(convId) {
  let conv = model.convs.get(convId);
  if (!conv) {
    conv = {
      id: convId,
      ...describe(convId, model.me),
      messages: new Map(), // key (message_id or local id) -> record
      hidden: new Set(), // seqs deleted for me: never shown again
      unread: 0,
      lastTime: 0,
      historyLoaded: false,
      hasMore: true,
      loadingOlder: false,
    };
    model.convs.set(convId, conv);
    rememberConversations();
  }
  return conv;
}

function rememberConversations() {
  if (!model.me) return;
  localStorage.setItem(`imstack.convs.${model.me}`, JSON.stringify([...model.convs.keys()]));
}

function recallConversations() {
  try {
    for (const id of JSON.parse(localStorage.getItem(`imstack.convs.${model.me}`) || "[]")) conversation(id);
  } catch {
    /* a bad entry is just forgotten */
  }
}

function textOf(m) {
  return m.content_type === 1 || !m.content_type ? utf8.decode(m.content) : "[unsupported content]";
}

function recordFromMessage(m) {
  const own = m.from === model.me; // also a message sent from another device of ours
  return {
    key: String(m.message_id),
    message_id: String(m.message_id),
    seq: m.seq,
    from: m.from,
    own,
    text: textOf(m),
    status: m.status || MessageStatus.NORMAL,
    time: toMillis(m.server_time),
    state: own ? "delivered" : null,
    readBy: [],
    local: ++localCounter,
  };
}

/** Takes the current state (edited / recalled) of a message into its record. */
function applyStatus(rec, m) {
  const status = m.status || MessageStatus.NORMAL;
  if (rec.status === MessageStatus.RECALLED || (status === MessageStatus.NORMAL && !m.revision_seq)) return false;
  if (status === rec.status && (status !== MessageStatus.EDITED || rec.text === textOf(m))) return false;
  rec.status = status;
  rec.text = status === MessageStatus.RECALLED ? "" : textOf(m);
  return true;
}

/** server_time as epoch milliseconds, whether the server counts seconds or milliseconds. */
function toMillis(value) {
  const n = Number(value);
  if (!n) return Date.now();
  return n < 1e12 ? n * 1000 : n;
}

/** Adds or merges one server message (in its current state); returns true when it was new. */
function upsertMessage(m) {
  const conv = conversation(m.conversation_id);
  const key = String(m.message_id);
  if (m.status === MessageStatus.DELETED || conv.hidden.has(m.seq)) return false;
  const existing = conv.messages.get(key);
  if (existing) {
    existing.seq = existing.seq || m.seq;
    applyStatus(existing, m);
    if (existing.own && (existing.state === "sending" || existing.state === "sent" || existing.state === "failed")) existing.state = "delivered";
    return false;
  }
  const rec = recordFromMessage(m);
  conv.messages.set(key, rec);
  conv.lastTime = Math.max(conv.lastTime, rec.time);
  return true;
}

function sortedMessages(conv) {
  return [...conv.messages.values()].sort((a, b) => (a.seq || Infinity) - (b.seq || Infinity) || a.local - b.local);
}

function maxSeq(conv) {
  let max = 0;
  for (const r of conv.messages.values()) if (r.seq > max) max = r.seq;
  return max;
}

function minSeq(conv) {
  let min = 0;
  for (const r of conv.messages.values()) if (r.seq && (!min || r.seq < min)) min = r.seq;
  return min;
}

// ------------------------------------------------------------------ rendering

const STATUS_TEXT = {
  [Status.IDLE]: "Not connected",
  [Status.CONNECTING]: "Connecting…",
  [Status.ONLINE]: "Online",
  [Status.RECONNECTING]: "Reconnecting…",
  [Status.UNAUTHORIZED]: "Token refused",
  [Status.REPLACED]: "Signed in elsewhere · click to reconnect",
  [Status.CLOSED]: "Offline",
};

let countdown = null;

function renderStatus(status) {
  const el = $("status");
  el.className = `status status-${status}`;
  el.dataset.status = status;
  clearInterval(countdown);
  countdown = null;
  const text = () => {
    const at = model.client && model.client.nextReconnectAt;
    if (status !== Status.RECONNECTING || !at) return STATUS_TEXT[status] || status;
    const left = Math.ceil((at - Date.now()) / 1000);
    return left > 0 ? `Reconnecting in ${left} s…` : "Reconnecting…";
  };
  $("status-text").textContent = text();
  if (status === Status.RECONNECTING) countdown = setInterval(() => ($("status-text").textContent = text()), 500);
}

function initials(name) {
  return (name || "?").slice(0, 1).toUpperCase();
}

function avatarColor(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return `hsl(${h}, 45%, 52%)`;
}

function renderConversations() {
  const list = $("conversation-list");
  list.replaceChildren();
  const convs = [...model.convs.values()].sort((a, b) => b.lastTime - a.lastTime || a.title.localeCompare(b.title));
  $("no-conversations").hidden = convs.length > 0;
  for (const conv of convs) {
    const li = document.createElement("li");
    li.className = `conversation${conv.id === model.active ? " active" : ""}`;
    li.dataset.conversation = conv.id;
    const avatar = document.createElement("div");
    avatar.className = `avatar${conv.type === ConversationType.GROUP ? " group" : ""}`;
    avatar.style.background = avatarColor(conv.title);
    avatar.textContent = conv.type === ConversationType.GROUP ? "#" : initials(conv.title);
    const main = document.createElement("div");
    main.className = "conversation-main";
    const name = document.createElement("div");
    name.className = "conversation-name";
    name.textContent = conv.type === ConversationType.GROUP ? `# ${conv.title}` : conv.title;
    const preview = document.createElement("div");
    preview.className = "conversation-preview";
    const last = sortedMessages(conv).at(-1);
    const lastText = last && last.status === MessageStatus.RECALLED ? "message recalled" : last && last.text;
    preview.textContent = last ? `${last.own ? "You: " : conv.type === ConversationType.GROUP ? `${last.from}: ` : ""}${lastText}` : conv.type === ConversationType.GROUP ? "Group" : "Direct message";
    main.append(name, preview);
    li.append(avatar, main);
    if (conv.unread > 0 && conv.id !== model.active) {
      const badge = document.createElement("span");
      badge.className = "badge unread";
      badge.textContent = String(conv.unread);
      li.append(badge);
    }
    li.addEventListener("click", () => openConversation(conv.id));
    list.append(li);
  }
  const total = [...model.convs.values()].reduce((n, c) => n + (c.id === model.active ? 0 : c.unread), 0);
  $("unread-total").hidden = total === 0;
  $("unread-total").textContent = String(total);
  document.title = total ? `(${total}) imstack chat` : "imstack chat";
}

function stateLabel(rec, conv) {
  switch (rec.state) {
    case "sending":
      return "Sending…";
    case "sent":
      return "Sent";
    case "delivered":
      return "Delivered";
    case "read":
      return conv.type === ConversationType.GROUP ? `Read by ${rec.readBy.join(", ")}` : "Read";
    case "failed":
      return "Not delivered";
    default:
      return "";
  }
}

function timeText(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function renderMessages({ keepBottom = false, anchor = null } = {}) {
  const conv = model.convs.get(model.active);
  if (!conv) return;
  const pane = $("messages");
  const nearBottom = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 80;
  const oldHeight = pane.scrollHeight;
  const oldTop = pane.scrollTop;
  const list = $("message-list");
  list.replaceChildren();
  let prevFrom = null;
  for (const rec of sortedMessages(conv)) {
    const li = document.createElement("li");
    li.className = `message${rec.own ? " own" : ""}`;
    li.dataset.messageId = rec.message_id || "";
    li.dataset.seq = rec.seq || "";
    if (rec.own) li.dataset.state = rec.state;
    if (conv.type === ConversationType.GROUP && !rec.own && rec.from !== prevFrom) {
      const from = document.createElement("div");
      from.className = "message-from";
      from.textContent = rec.from;
      li.append(from);
    }
    prevFrom = rec.from;
    const recalled = rec.status === MessageStatus.RECALLED;
    if (recalled) li.classList.add("recalled");
    if (rec.status === MessageStatus.EDITED) li.classList.add("edited");
    if (model.editing && model.editing.key === rec.key) li.classList.add("editing");
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = recalled ? "message recalled" : rec.text;
    const meta = document.createElement("div");
    meta.className = "meta";
    const time = document.createElement("span");
    time.textContent = timeText(rec.time);
    meta.append(time);
    if (rec.status === MessageStatus.EDITED) {
      const edited = document.createElement("span");
      edited.className = "edited-mark";
      edited.textContent = "(edited)";
      meta.append(edited);
    }
    if (rec.own) {
      const state = document.createElement("span");
      state.className = `state state-${rec.state}`;
      state.textContent = stateLabel(rec, conv);
      meta.append(state);
      if (rec.state === "failed") {
        const retry = document.createElement("button");
        retry.className = "link-button";
        retry.type = "button";
        retry.textContent = "Retry";
        retry.addEventListener("click", () => sendRecord(conv, rec));
        state.append(" · ", retry);
      }
    }
    if (rec.seq && rec.message_id) meta.append(messageActions(conv, rec));
    li.append(bubble, meta);
    list.append(li);
  }
  $("load-older").hidden = !conv.hasMore || !conv.historyLoaded;
  $("history-end").hidden = conv.hasMore || !conv.historyLoaded;
  if (anchor === "older") pane.scrollTop = oldTop + (pane.scrollHeight - oldHeight);
  else if (keepBottom || nearBottom) pane.scrollTop = pane.scrollHeight;
}

/** Edit and recall on own messages, delete (for me) on any. */
function messageActions(conv, rec) {
  const actions = document.createElement("span");
  actions.className = "actions";
  const add = (name, label, run) => {
    const button = document.createElement("button");
    button.className = `link-button action action-${name}`;
    button.type = "button";
    button.textContent = label;
    button.addEventListener("click", run);
    actions.append(button);
  };
  if (rec.own && rec.status !== MessageStatus.RECALLED) {
    add("edit", "Edit", () => startEdit(conv, rec));
    add("recall", "Recall", () => modify(conv, rec, () => model.client.recall(conv.id, rec.seq, rec.message_id)));
  }
  add("delete", "Delete", () => modify(conv, rec, () => model.client.deleteForMe(conv.id, rec.seq, rec.message_id)));
  return actions;
}

const MODIFY_REFUSED = {
  [ErrorCode.FORBIDDEN]: "Only your own messages can be changed.",
  [ErrorCode.NOT_FOUND]: "That message is no longer there.",
  [ErrorCode.GONE]: "Too late to recall that message; you can still edit or delete it.",
};

/** Runs a recall / edit / delete; the client applies the change (onChange) when acked. */
async function modify(conv, rec, run) {
  showNotice("");
  try {
    await run();
  } catch (err) {
    const known = err instanceof ProtocolError && MODIFY_REFUSED[err.code];
    showNotice(known || `Could not change the message (${err.message}).`);
  }
}

function showNotice(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text;
}

function startEdit(conv, rec) {
  model.editing = { conv: conv.id, key: rec.key };
  $("edit-bar").hidden = false;
  const input = $("composer-input");
  input.value = rec.text;
  autoGrow();
  input.focus();
  renderMessages();
}

function stopEdit() {
  if (!model.editing) return;
  model.editing = null;
  $("edit-bar").hidden = true;
  $("composer-input").value = "";
  autoGrow();
  renderMessages();
}

function render() {
  renderConversations();
  const conv = model.convs.get(model.active);
  $("pane-empty").hidden = Boolean(conv);
  $("pane-chat").hidden = !conv;
  if (conv) {
    $("pane-title").textContent = conv.type === ConversationType.GROUP ? `# ${conv.title}` : conv.title;
    $("pane-subtitle").textContent = conv.type === ConversationType.GROUP ? `Group · ${conv.id}` : "Direct message";
    renderMessages();
  }
}

// ------------------------------------------------------------------ actions

/** After each (re)connect: fill in previews of remembered conversations (newest message). */
let previewsLoaded = false;
function onOnline() {
  const active = model.convs.get(model.active);
  if (active && !active.historyLoaded && !active.loadingNewest) loadNewest(active);
  if (previewsLoaded) return;
  previewsLoaded = true;
  for (const conv of [...model.convs.values()].slice(0, 30)) {
    if (conv.messages.size || conv.id === model.active) continue;
    model.client
      .history(conv.id, { limit: 1 })
      .then((page) => {
        for (const m of page.messages) upsertMessage(m);
        renderConversations();
      })
      .catch(() => {});
  }
}

async function openConversation(convId) {
  const conv = conversation(convId);
  if (model.active && model.active !== convId) model.client.unwatchReadStatus(model.active);
  model.active = convId;
  sessionStorage.setItem(`imstack.active.${model.me}`, convId);
  render();
  renderMessages({ keepBottom: true });
  $("composer-input").focus();
  watchReads(conv);
  if (!conv.historyLoaded && !conv.loadingNewest) await loadNewest(conv);
  markRead(conv);
}

async function loadNewest(conv) {
  conv.loadingNewest = true;
  try {
    await model.client.whenOnline(15_000);
    const page = await model.client.history(conv.id, { limit: 30 });
    for (const m of page.messages) upsertMessage(m);
    conv.historyLoaded = true;
    conv.hasMore = page.has_more;
    if (model.active === conv.id) renderMessages({ keepBottom: true });
    renderConversations();
    markRead(conv);
  } catch (err) {
    console.warn("history failed", err); // tried again on the next (re)connect
  } finally {
    conv.loadingNewest = false;
  }
}

async function loadOlder() {
  const conv = model.convs.get(model.active);
  if (!conv || conv.loadingOlder || !conv.hasMore || !conv.historyLoaded) return;
  const before = minSeq(conv);
  if (before <= 1) {
    conv.hasMore = false;
    renderMessages();
    return;
  }
  conv.loadingOlder = true;
  try {
    const page = await model.client.history(conv.id, { beforeSeq: before, limit: 30 });
    for (const m of page.messages) upsertMessage(m);
    conv.hasMore = page.has_more && page.messages.length > 0;
    if (model.active === conv.id) renderMessages({ anchor: "older" });
  } catch (err) {
    console.warn("older history failed", err);
  } finally {
    conv.loadingOlder = false;
  }
}

function markRead(conv) {
  if (model.active !== conv.id || document.visibilityState === "hidden") return;
  const seq = Math.max(maxSeq(conv), model.client.latestSeq(conv.id)); // event seqs count as read too
  if (conv.unread) {
    conv.unread = 0;
    renderConversations();
  }
  if (seq) model.client.readReport(conv.id, seq).catch(() => {});
}

/** S13: poll the read state after the oldest own message not yet read, with backoff. */
function watchReads(conv) {
  model.client.watchReadStatus(conv.id, () => {
    const own = sortedMessages(conv).filter((r) => r.own && r.seq);
    const pending = conv.type === ConversationType.GROUP ? own.slice(-20) : own.filter((r) => r.state !== "read");
    return pending.length ? pending[0].seq - 1 : null;
  });
}

function applyReadStates(convId, states) {
  const conv = model.convs.get(convId);
  if (!conv) return;
  const bySeq = new Map([...conv.messages.values()].filter((r) => r.seq).map((r) => [r.seq, r]));
  let changed = false;
  for (const s of states) {
    const rec = conv.messages.get(String(s.message_id)) || bySeq.get(s.seq);
    if (!rec || !rec.own) continue;
    const readers = s.read_by.filter((u) => u !== model.me);
    if ((s.read_count > 0 || readers.length) && (rec.state !== "read" || readers.length !== rec.readBy.length)) {
      rec.state = "read";
      rec.readBy = readers;
      changed = true;
    }
  }
  // A 1:1 message read implies every earlier one was read too.
  if (conv.type === ConversationType.SINGLE) {
    const lastRead = Math.max(0, ...[...conv.messages.values()].filter((r) => r.own && r.state === "read").map((r) => r.seq));
    for (const r of conv.messages.values()) {
      if (r.own && r.seq && r.seq < lastRead && r.state === "delivered") {
        r.state = "read";
        changed = true;
      }
    }
  }
  if (changed && model.active === convId) renderMessages();
}

async function sendRecord(conv, rec) {
  rec.state = "sending";
  renderMessages({ keepBottom: true });
  try {
    const sent = await model.client.send({ to: conv.to, type: conv.type, text: rec.text, messageId: rec.message_id || undefined });
    if (!rec.message_id) {
      conv.messages.delete(rec.key);
      rec.key = rec.message_id = String(sent.message_id);
      const merged = conv.messages.get(rec.key); // the ack may already have added it
      if (merged) {
        merged.local = rec.local;
        rec.state = merged.state;
        rec.seq = merged.seq;
      }
      conv.messages.set(rec.key, rec);
    }
    if (rec.state === "sending") rec.state = "sent";
    renderMessages({ keepBottom: true });
    const ack = await sent.done;
    rec.seq = rec.seq || ack.seq;
    if (rec.state !== "read") rec.state = "delivered";
  } catch (err) {
    console.warn("send failed", err);
    rec.state = "failed";
  }
  if (model.active === conv.id) renderMessages();
  renderConversations();
}

function submitMessage(ev) {
  ev.preventDefault();
  const input = $("composer-input");
  const text = input.value.trim();
  const conv = model.convs.get(model.active);
  if (!text || !conv) return;
  if (model.editing) {
    const rec = model.editing.conv === conv.id && conv.messages.get(model.editing.key);
    stopEdit();
    if (rec && text !== rec.text) modify(conv, rec, () => model.client.edit(conv.id, rec.seq, rec.message_id, text));
    return;
  }
  input.value = "";
  autoGrow();
  const rec = {
    key: `local-${++localCounter}`,
    message_id: null,
    seq: 0,
    from: model.me,
    own: true,
    text,
    time: Date.now(),
    state: "sending",
    readBy: [],
    local: localCounter,
  };
  conv.messages.set(rec.key, rec);
  conv.lastTime = rec.time;
  renderConversations();
  sendRecord(conv, rec);
}

function autoGrow() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(140, input.scrollHeight + 2)}px`;
}

function onIncoming(ev) {
  const { view: message, own } = ev.detail;
  const isNew = upsertMessage(message);
  const conv = conversation(message.conversation_id);
  if (isNew && !own) {
    if (model.active === conv.id && document.visibilityState !== "hidden") markRead(conv);
    else conv.unread += 1;
  }
  if (model.active === conv.id) renderMessages();
  renderConversations();
}

/** A recall, an edit or a delete-for-me (from this device, another of ours, or the sender). */
function onChange(ev) {
  const { change, cause, own } = ev.detail;
  const conv = model.convs.get(change.conversation_id);
  if (!conv) return;
  let rec = conv.messages.get(String(change.message_id));
  if (!rec) rec = [...conv.messages.values()].find((r) => r.seq === change.seq);
  if (cause === "delete") {
    conv.hidden.add(change.seq);
    if (rec) conv.messages.delete(rec.key);
    if (model.editing && rec && model.editing.key === rec.key) stopEdit();
  } else if (rec) {
    applyStatus(rec, change);
    if (cause === "recall" && model.editing && model.editing.key === rec.key) stopEdit();
  }
  if (!own && model.active === conv.id) markRead(conv); // the event's seq is read too
  if (model.active === conv.id) renderMessages();
  renderConversations();
}

function onUnread(ev) {
  const counts = ev.detail.conversations;
  for (const [convId, count] of Object.entries(counts)) {
    const conv = conversation(convId);
    conv.unread = convId === model.active ? 0 : count;
  }
  for (const conv of model.convs.values()) if (!(conv.id in counts)) conv.unread = 0;
  renderConversations();
}

// ------------------------------------------------------------------ sign-in and connection

async function resolveWsUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  try {
    const resp = await fetch("/v1/iplist", { cache: "no-store" });
    if (resp.ok) {
      const body = await resp.json();
      const node = (body.ws || [])[0];
      if (node) return `${scheme}://${node.host}:${node.port}/ws`;
    }
  } catch {
    /* fall back below */
  }
  return `${scheme}://${location.hostname || "127.0.0.1"}:${WS_PORT}/ws`;
}

const local = safeStorage(() => localStorage);
let device = null;

/** This tab's device (stable per browser profile; device.js), its lease kept fresh. */
function deviceSlot() {
  if (!device) {
    device = new DeviceSlot({ local, session: safeStorage(() => sessionStorage) });
    setInterval(() => device.refresh(), 5_000);
    addEventListener("pagehide", () => device.release());
    addEventListener("pageshow", () => device.refresh()); // back from the page cache
  }
  return device;
}

function startSession(uid, token) {
  model.me = uid;
  model.convs.clear();
  model.active = null;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ uid, token }));
  recallConversations();
  const deviceId = deviceSlot().deviceId;
  const resumeStore = new ResumeStore(local, uid, deviceId);
  const client = new ImClient({ uid, token, deviceId, resumeStore, resolveUrl: resolveWsUrl });
  const deliveries = []; // what the client delivered (bounded), for tests and the curious
  model.client = client;
  window.imstack = { client, model, deliveries };
  client.addEventListener("message", (ev) => {
    const { view: m, source, own } = ev.detail;
    deliveries.push({ conversation_id: m.conversation_id, seq: m.seq, source, own, text: m.status ? "" : textOf(m) });
    if (deliveries.length > 500) deliveries.shift();
  });
  client.addEventListener("status", (ev) => {
    renderStatus(ev.detail.status);
    if (ev.detail.status === Status.UNAUTHORIZED) signOut(`The token for ${uid} was refused; sign in again.`);
  });
  client.addEventListener("reconnecting", () => renderStatus(client.status));
  client.addEventListener("status", (ev) => {
    if (ev.detail.status === Status.ONLINE) onOnline();
  });
  client.addEventListener("message", onIncoming);
  client.addEventListener("unread", onUnread);
  client.addEventListener("change", onChange);
  client.addEventListener("readstatus", (ev) => applyReadStates(ev.detail.conversation_id, ev.detail.states));
  $("signin-view").hidden = true;
  $("chat-view").hidden = false;
  $("whoami").hidden = false;
  $("whoami-uid").textContent = uid;
  previewsLoaded = false;
  render();
  client.start().catch(() => {});
  const active = sessionStorage.getItem(`imstack.active.${uid}`);
  if (active && model.convs.has(active)) openConversation(active);
}

function signOut(reason) {
  if (model.client) model.client.close();
  model.client = null;
  sessionStorage.removeItem(SESSION_KEY);
  $("chat-view").hidden = true;
  $("signin-view").hidden = false;
  $("whoami").hidden = true;
  renderStatus(Status.IDLE);
  showSigninError(reason || "");
}

function showSigninError(text) {
  $("signin-error").hidden = !text;
  $("signin-error").textContent = text;
}

async function devLogin() {
  const uid = $("signin-uid").value.trim();
  if (!uid) {
    showSigninError("Enter a user id first.");
    return;
  }
  try {
    const resp = await fetch("/v1/dev/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ uid }),
    });
    if (resp.status === 404) throw new Error("dev login is only available in the all-in-one mode");
    if (!resp.ok) throw new Error(`dev login failed (${resp.status})`);
    const { token } = await resp.json();
    startSession(uid, token);
  } catch (err) {
    showSigninError(err.message);
  }
}

function init() {
  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const uid = $("signin-uid").value.trim();
    const token = $("signin-token").value.trim();
    if (!uid || !token) {
      showSigninError("Enter a user id and a token, or use dev login.");
      return;
    }
    startSession(uid, token);
  });
  $("devlogin-button").addEventListener("click", devLogin);
  $("signout").addEventListener("click", () => signOut());
  $("status").addEventListener("click", () => {
    if (model.client && model.client.status === Status.REPLACED) model.client.start().catch(() => {});
  });
  $("open-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const target = $("open-target").value.trim();
    if (!target || !model.me) return;
    const kind = document.querySelector('input[name="kind"]:checked').value;
    const type = kind === "group" ? ConversationType.GROUP : ConversationType.SINGLE;
    if (type === ConversationType.SINGLE && target === model.me) return;
    $("open-target").value = "";
    openConversation(conversationId(type, model.me, target));
  });
  for (const radio of document.querySelectorAll('input[name="kind"]')) {
    radio.addEventListener("change", () => {
      $("open-target").placeholder = radio.value === "group" ? "group id" : "user id";
    });
  }
  $("composer").addEventListener("submit", submitMessage);
  $("edit-cancel").addEventListener("click", stopEdit);
  $("composer-input").addEventListener("input", autoGrow);
  $("composer-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) submitMessage(ev);
    if (ev.key === "Escape") stopEdit();
  });
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop < 40) loadOlder();
  });
  $("load-older").addEventListener("click", loadOlder);
  document.addEventListener("visibilitychange", () => {
    const conv = model.convs.get(model.active);
    if (conv) markRead(conv);
  });
  const saved = sessionStorage.getItem(SESSION_KEY);
  if (saved) {
    try {
      const { uid, token } = JSON.parse(saved);
      if (uid && token) startSession(uid, token);
    } catch {
      sessionStorage.removeItem(SESSION_KEY);
    }
  }
}

init();
