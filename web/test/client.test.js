import assert from "node:assert/strict";
import { test } from "node:test";
import { ImClient, ProtocolError, Status, backoffDelay, readPollDelay } from "../src/client.js";
import { RequestType as T } from "../src/proto.js";
import { FakeServer, until } from "./fake_server.js";

const FAST = {
  requestTimeoutMs: 60,
  retryBaseMs: 5,
  retryMaxMs: 20,
  reconnectBaseMs: 5,
  reconnectMaxMs: 20,
  pushAckDelayMs: 20,
  heartbeatMs: 1000,
};

async function online(server, opts = {}) {
  const client = new ImClient({ uid: "alice", token: "good", url: "ws://a:9001/ws", WebSocket: server.WebSocket, ...FAST, ...opts });
  const events = { message: [], status: [], ack: [], sendfailed: [], kick: [], readstatus: [] };
  for (const name of Object.keys(events)) client.addEventListener(name, (e) => events[name].push(e.detail));
  await client.start();
  return { client, events };
}

test("auth carries uid, token and device; status goes online", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  t.after(() => client.close());
  const auth = server.frames(T.AUTH_REQ)[0].body;
  assert.equal(auth.uid, "alice");
  assert.equal(auth.token, "good");
  assert.ok(auth.device_id.startsWith("web-"));
  assert.deepEqual(auth.features, ["sync"], "SYNC notices are asked for");
  assert.deepEqual(events.status.map((s) => s.status), ["connecting", "online"]);
  await until(() => server.frames(T.PULL_OFFLINE_REQ).length === 1, { what: "offline pull after auth" });
});

test("a refused token stops the client instead of reconnecting", async () => {
  const server = new FakeServer();
  const client = new ImClient({ uid: "alice", token: "bad", url: "ws://a/ws", WebSocket: server.WebSocket, ...FAST });
  await assert.rejects(client.start(), (e) => e instanceof ProtocolError && e.code === 401);
  assert.equal(client.status, Status.UNAUTHORIZED);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(server.sockets.length, 1);
  client.close();
});

test("send waits for the ack; ids come from one cached batch", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  t.after(() => client.close());
  const sends = [];
  for (const text of ["one", "two", "three"]) sends.push(await client.send({ to: "bob", text }));
  const acks = await Promise.all(sends.map((s) => s.done));
  assert.deepEqual(acks.map((a) => a.seq), [1, 2, 3]);
  assert.equal(server.frames(T.ID_BATCH_REQ).length, 1);
  const reqs = server.frames(T.SEND_REQ).map((f) => f.body);
  assert.equal(reqs[0].message_id, "7260000000000000001", "the id is kept exact");
  assert.ok(reqs[0].client_seq < reqs[1].client_seq && reqs[1].client_seq < reqs[2].client_seq);
  assert.equal(events.ack.length, 3);
  // Own messages enter the ordering too, once.
  assert.deepEqual(events.message.map((m) => m.message.seq), [1, 2, 3]);
});

test("a lost ack is retried with the same message_id; 409 DUPLICATE counts as success", async (t) => {
  const server = new FakeServer();
  let calls = 0;
  server.handlers[T.SEND_REQ] = (socket, frame, body) => {
    calls += 1;
    if (calls === 1) return undefined; // first ack never comes
    server.reply(socket, T.SEND_ACK, frame.sequence, { code: 409, message: "duplicate", message_id: body.message_id, conversation_id: "s:alice:bob", seq: 1 });
    return undefined;
  };
  const { client } = await online(server);
  t.after(() => client.close());
  const sent = await client.send({ to: "bob", text: "hello" });
  const ack = await sent.done;
  assert.equal(ack.code, 409);
  const ids = server.frames(T.SEND_REQ).map((f) => f.body.message_id);
  assert.equal(ids.length, 2);
  assert.equal(ids[0], ids[1]);
  assert.equal(ids[0], sent.message_id);
});

test("503 is retried; 403 fails at once; retries are bounded", async (t) => {
  const server = new FakeServer();
  let mode = "busy-once";
  let calls = 0;
  server.handlers[T.SEND_REQ] = (socket, frame, body) => {
    calls += 1;
    if (mode === "busy-once" && calls === 1) server.reply(socket, T.SEND_ACK, frame.sequence, { code: 503, message: "busy" });
    else if (mode === "forbidden") server.reply(socket, T.ERROR, frame.sequence, { code: 403, message: "not a member" });
    else if (mode === "always-busy") server.reply(socket, T.SEND_ACK, frame.sequence, { code: 503 });
    else return "default";
    return undefined;
  };
  const { client, events } = await online(server, { sendAttempts: 3 });
  t.after(() => client.close());

  assert.equal((await (await client.send({ to: "bob", text: "x" })).done).code, 0);
  assert.equal(calls, 2);

  mode = "forbidden";
  calls = 0;
  await assert.rejects((await client.send({ to: "g9", type: 2, text: "x" })).done, (e) => e.code === 403);
  assert.equal(calls, 1);

  mode = "always-busy";
  calls = 0;
  await assert.rejects((await client.send({ to: "bob", text: "x" })).done, (e) => e.code === 503);
  assert.equal(calls, 3);
  assert.equal(events.sendfailed.length, 2);
});

test("a send made while disconnected goes out after the reconnect", async (t) => {
  const server = new FakeServer();
  const { client } = await online(server, { requestTimeoutMs: 300 });
  t.after(() => client.close());
  await client.nextId(); // warm the id cache
  server.socket.close(1006, "network");
  await until(() => client.status === Status.RECONNECTING, { what: "reconnecting" });
  const sent = await client.send({ to: "bob", text: "while away" });
  const ack = await sent.done;
  assert.equal(ack.code, 0);
  assert.equal(server.sockets.length, 2);
  assert.equal(server.frames(T.AUTH_REQ).length, 2);
  assert.equal(server.frames(T.PULL_OFFLINE_REQ).length, 2, "offline pull on every connect");
});

test("pushes: batched PUSH_ACK, de-dup by id, reorder with a gap pulled from history", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  t.after(() => client.close());
  const m1 = server.store({ from: "bob", to: "alice", text: "1" });
  const m2 = server.store({ from: "bob", to: "alice", text: "2" });
  const m3 = server.store({ from: "bob", to: "alice", text: "3" });
  const m4 = server.store({ from: "bob", to: "alice", text: "4" });
  server.push(m1);
  await until(() => events.message.length === 1, { what: "first push" });
  server.push(m4); // 2 and 3 missing: pulled from history
  server.push(m1); // duplicate
  await until(() => events.message.length === 4, { what: "gap filled" });
  assert.deepEqual(events.message.map((e) => e.message.seq), [1, 2, 3, 4]);
  assert.deepEqual(events.message.map((e) => e.source), ["push", "gap", "gap", "push"]);
  const pull = server.frames(T.PULL_HISTORY_REQ)[0].body;
  assert.equal(pull.after_seq, 1);
  assert.equal(pull.before_seq, 4);
  await until(() => server.frames(T.PUSH_ACK).flatMap((f) => f.body.message_ids).length >= 5, { what: "acks" });
  const pushAcks = server.frames(T.PUSH_ACK);
  const acked = pushAcks.flatMap((f) => f.body.message_ids);
  assert.ok(acked.includes(m1.message_id) && acked.includes(m4.message_id));
  assert.equal(acked.filter((id) => id === m1.message_id).length, 2, "the duplicate is acked too");
  // The three pushes went out in one batched PUSH_ACK (the gap fill acks separately).
  assert.ok(pushAcks.some((f) => f.body.message_ids.length === 3));
  assert.equal(m2.seq + m3.seq, 5);
});

test("PULL_NOTIFY pulls the offline store page by page; each page's acks ride the next pull", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server, { offlinePageSize: 2 });
  t.after(() => client.close());
  await until(() => server.frames(T.PULL_OFFLINE_REQ).length === 1, { what: "initial pull" });
  for (let i = 0; i < 5; i++) server.offline.push(server.store({ from: "carol", to: "grp", type: 2, text: `g${i}` }));
  server.reply(server.socket, T.PULL_NOTIFY, 0, { conversation_id: "g:grp", latest_seq: 5, pending: 5 });
  await until(() => events.message.length === 5, { what: "offline messages" });
  assert.deepEqual(events.message.map((e) => e.message.seq), [1, 2, 3, 4, 5]);
  const pulls = server.frames(T.PULL_OFFLINE_REQ).slice(1).map((f) => f.body);
  assert.deepEqual(pulls.map((b) => Number(b.cursor)), [0, 2, 4]);
  const ids = server.offline.map((m) => m.message_id);
  assert.deepEqual(pulls.map((b) => b.acked_ids), [[], ids.slice(0, 2), ids.slice(2, 4)]);
  await until(() => server.frames(T.PUSH_ACK).length === 1, { what: "the last page's PUSH_ACK" });
  assert.deepEqual(server.frames(T.PUSH_ACK)[0].body.message_ids, ids.slice(4));
});

test("history gives the newest page oldest first and sets the ordering baseline", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  t.after(() => client.close());
  for (let i = 0; i < 5; i++) server.store({ from: "bob", to: "alice", text: `h${i}` });
  const page = await client.history("s:alice:bob", { limit: 3 });
  assert.deepEqual(page.messages.map((m) => m.seq), [3, 4, 5]);
  assert.equal(page.has_more, true);
  const older = await client.history("s:alice:bob", { beforeSeq: 3, limit: 3 });
  assert.deepEqual(older.messages.map((m) => m.seq), [1, 2]);
  server.push(server.store({ from: "bob", to: "alice", text: "live" }));
  await until(() => events.message.length === 1, { what: "live push" });
  assert.equal(events.message[0].message.seq, 6);
  assert.equal(server.frames(T.PULL_HISTORY_REQ).length, 2, "no gap pull after a baseline");
});

test("KICK with a reconnect address moves the client there", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  t.after(() => client.close());
  server.reply(server.socket, T.KICK, 0, { code: 503, message: "draining", reconnect_host: "127.0.0.2", reconnect_port: 9101 });
  await until(() => server.sockets.length === 2 && client.status === Status.ONLINE, { what: "reconnect after kick" });
  assert.equal(server.socket.url, "ws://127.0.0.2:9101/ws");
  assert.equal(events.kick[0].reconnect_port, 9101);
  // The next plain reconnect goes back to the normal address.
  server.socket.close(1006);
  await until(() => server.sockets.length === 3, { what: "second reconnect" });
  assert.equal(server.socket.url, "ws://a:9001/ws");
});

test("reconnect backs off while the node refuses, then resolves the url again", async (t) => {
  const server = new FakeServer();
  let resolved = 0;
  const { client, events } = await online(server, {
    url: undefined,
    resolveUrl: async () => `ws://node${++resolved}:9001/ws`,
  });
  t.after(() => client.close());
  server.refuse = true;
  server.socket.close(1006);
  await until(() => server.sockets.length >= 4, { what: "several attempts" });
  server.refuse = false;
  await until(() => client.status === Status.ONLINE, { what: "back online" });
  assert.ok(resolved >= 4, "every attempt asks ipList again");
  const statuses = events.status.map((s) => s.status);
  assert.deepEqual(statuses.slice(0, 3), ["connecting", "online", "reconnecting"]);
  assert.equal(statuses.at(-1), "online");
});

test("read report, unread and read-status polling", async (t) => {
  const server = new FakeServer();
  let polls = [];
  server.handlers[T.READ_STATUS_REQ] = (socket, frame, body) => {
    polls.push({ at: Date.now(), after: body.after_seq });
    server.reply(socket, T.READ_STATUS_RESP, frame.sequence, { states: [{ message_id: "9", seq: 3, read_count: 1, read_by: ["bob"] }] });
  };
  server.handlers[T.UNREAD_REQ] = (socket, frame) => {
    server.reply(socket, T.UNREAD_RESP, frame.sequence, { total: 4, conversations: [{ conversation_id: "g:g1", count: 4 }] });
  };
  const { client, events } = await online(server, { readPollFirstMs: 40, readPollMaxMs: 320 });
  t.after(() => client.close());
  assert.equal(await client.readReport("s:alice:bob", 3), true);
  assert.equal(await client.readReport("s:alice:bob", 2), false, "never backwards");
  assert.deepEqual(server.frames(T.READ_REPORT).map((f) => f.body.seq), [3]);
  assert.deepEqual(await client.unread(), { total: 4, conversations: { "g:g1": 4 } });

  client.watchReadStatus("s:alice:bob", () => 2);
  await until(() => polls.length >= 4, { timeoutMs: 3000, what: "four polls" });
  const gaps = polls.slice(1).map((p, i) => p.at - polls[i].at);
  // 40 ms, then 80, 160, 320: each wait at least the schedule, and growing.
  assert.ok(gaps[0] >= 75 && gaps[1] >= 155 && gaps[2] >= 315, `backoff 80/160/320 ms: ${gaps}`);
  assert.ok(gaps[1] > gaps[0] && gaps[2] > gaps[1], `backoff grows: ${gaps}`);
  assert.equal(polls[0].after, 2);
  assert.deepEqual(events.readstatus[0].states[0].read_by, ["bob"]);
  client.unwatchReadStatus("s:alice:bob");
});

test("backoff and read-poll schedules", () => {
  assert.deepEqual([0, 1, 2, 3, 10].map((r) => readPollDelay(r)), [2000, 4000, 8000, 16000, 64000]);
  for (let a = 0; a < 8; a++) {
    const d = backoffDelay(a, 500, 8000, () => 1);
    assert.equal(d, Math.min(8000, 500 * 2 ** a));
    assert.equal(backoffDelay(a, 500, 8000, () => 0), Math.round(d / 2));
  }
});

test("a gap the history cannot fill is skipped, not waited on forever", async (t) => {
  const server = new FakeServer();
  server.handlers[T.PULL_HISTORY_REQ] = (socket, frame) => {
    server.reply(socket, T.PULL_HISTORY_RESP, frame.sequence, { messages: [], has_more: false });
  };
  const { client, events } = await online(server);
  t.after(() => client.close());
  const m1 = server.store({ from: "bob", to: "alice", text: "1" });
  server.store({ from: "bob", to: "alice", text: "2 (lost for good)" });
  const m3 = server.store({ from: "bob", to: "alice", text: "3" });
  server.push(m1);
  server.push(m3);
  await until(() => events.message.length === 2, { what: "skip past the hole" });
  assert.deepEqual(events.message.map((e) => e.message.seq), [1, 3]);
  assert.equal(server.frames(T.PULL_HISTORY_REQ).length, 1);
});

test("gap markers from history fill their seqs at once and never reach the app", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  t.after(() => client.close());
  const m1 = server.store({ from: "bob", to: "alice", text: "1" });
  const lost = server.store({ from: "bob", to: "alice", text: "2 (never carried: marked)" });
  const m3 = server.store({ from: "bob", to: "alice", text: "3" });
  const list = server.stored.get(m1.conversation_id); // the server stores a marker at seq 2
  list[1] = { message_id: "0", conversation_id: m1.conversation_id, seq: lost.seq, content_type: -1, gap: true };
  server.push(m1);
  server.push(m3);
  await until(() => events.message.length === 2, { what: "3 after the marker of 2" });
  assert.deepEqual(events.message.map((e) => [e.message.seq, e.source]), [[1, "push"], [3, "push"]]);
  assert.equal(server.frames(T.PULL_HISTORY_REQ).length, 1, "one history read, no second round");
  const acked = server.frames(T.PUSH_ACK).flatMap((f) => f.body.message_ids);
  assert.ok(!acked.includes("0"), "a marker is not acked");
  const page = await client.history(m1.conversation_id, { limit: 10 });
  assert.deepEqual(page.messages.map((m) => m.seq), [1, 3], "history pages leave markers out");
});

test("a KICK without an address reconnects through the normal path with backoff", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  t.after(() => client.close());
  server.reply(server.socket, T.KICK, 0, { code: 503, message: "node draining" });
  await until(() => server.sockets.length === 2 && client.status === Status.ONLINE, { what: "reconnect" });
  assert.equal(server.socket.url, "ws://a:9001/ws");
  assert.equal(events.kick[0].code, 503);
  assert.ok(events.status.some((s) => s.status === "reconnecting"));
});

test("a KICK 409 (same device signed in elsewhere) stops instead of kicking back", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  t.after(() => client.close());
  server.reply(server.socket, T.KICK, 0, { code: 409, message: "signed in on the same device elsewhere" });
  await until(() => client.status === Status.REPLACED, { what: "replaced" });
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(server.sockets.length, 1, "no reconnect");
  assert.equal(events.status.at(-1).status, "replaced");
  await client.start(); // the user may take the session back explicitly
  assert.equal(client.status, Status.ONLINE);
  assert.equal(server.sockets.length, 2);
});

function memoryResume(initial = "0") {
  const saved = [];
  return { saved, load: () => initial, save: (c) => saved.push(c) };
}

test("the resume position is sent on the first pull and kept from what the pulls reached", async (t) => {
  const server = new FakeServer();
  for (let i = 0; i < 3; i++) server.offline.push(server.store({ from: "bob", to: "alice", text: `o${i}` }));
  const resume = memoryResume("1");
  const { client, events } = await online(server, { offlinePageSize: 2, resumeStore: resume });
  t.after(() => client.close());
  await until(() => events.message.length === 3, { what: "offline messages" });
  const [first, second] = server.frames(T.PULL_OFFLINE_REQ).map((f) => f.body);
  assert.equal(first.resume_cursor, "1");
  assert.equal(second.resume_cursor, "0", "only the first page moves the device's cursor");
  assert.deepEqual(resume.saved, ["2", "3"]);
  assert.equal(client.resumeCursor, "3");
});

test("acks lost with the connection ride the next pull until a pull confirms them", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  t.after(() => client.close());
  await until(() => server.frames(T.PULL_OFFLINE_REQ).length === 1, { what: "initial pull" });
  const msg = server.store({ from: "bob", to: "alice", text: "pushed" });
  server.push(msg);
  await until(() => server.frames(T.PUSH_ACK).length === 1, { what: "push ack" });
  server.socket.close(1006, "node died"); // the ack may be lost with it
  await until(() => server.frames(T.PULL_OFFLINE_REQ).length === 2, { what: "pull after the reconnect" });
  assert.deepEqual(server.frames(T.PULL_OFFLINE_REQ)[1].body.acked_ids, [msg.message_id]);
  server.reply(server.socket, T.PULL_NOTIFY, 0, {});
  await until(() => server.frames(T.PULL_OFFLINE_REQ).length === 3, { what: "pull on notify" });
  assert.deepEqual(server.frames(T.PULL_OFFLINE_REQ)[2].body.acked_ids, [], "confirmed by the pull before");
  assert.equal(events.message.length, 1);
});

test("a message sent from another device of ours arrives marked own", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  t.after(() => client.close());
  server.push(server.store({ from: "alice", to: "bob", text: "from my phone" }));
  server.push(server.store({ from: "bob", to: "alice", text: "reply" }));
  await until(() => events.message.length === 2, { what: "two messages" });
  assert.deepEqual(events.message.map((e) => e.own), [true, false]);
});

test("recall, edit and delete for me: the ack's seq fills the order and the change is applied", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  const changes = [];
  client.addEventListener("change", (e) => changes.push(e.detail));
  t.after(() => client.close());
  const sent = await client.send({ to: "bob", text: "helo" });
  const ack = await sent.done;
  const edited = await client.edit("s:alice:bob", ack.seq, sent.message_id, "hello");
  assert.equal(edited.seq, 2);
  const req = server.frames(T.MODIFY_REQ)[0].body;
  assert.deepEqual([req.kind, req.target_seq, req.target_message_id], [2, 1, sent.message_id]);
  assert.notEqual(req.message_id, sent.message_id, "an event has an id of its own");
  assert.equal(changes[0].cause, "edit");
  assert.equal(new TextDecoder().decode(changes[0].change.content), "hello");
  assert.equal(changes[0].change.status, 1);
  await client.recall("s:alice:bob", ack.seq, sent.message_id);
  assert.deepEqual([changes[1].cause, changes[1].change.status, changes[1].change.content.length], ["recall", 2, 0]);
  assert.equal(client.latestSeq("s:alice:bob"), 3, "event seqs are delivered in order too");
  assert.equal(client.state.get("s:alice:bob", 1).status, 2);
  // an edit after the recall changes nothing
  server.push(server.store({ from: "alice", to: "bob", conv: "s:alice:bob", content: new Uint8Array([120]), event: { kind: 2, target_seq: 1 } }));
  await until(() => client.latestSeq("s:alice:bob") === 4, { what: "the late edit" });
  assert.equal(changes.length, 2);
  assert.equal(server.frames(T.PULL_HISTORY_REQ).length, 0, "no gap was opened by our own events");
  assert.equal(events.message.length, 1, "events are not messages");

  const theirs = server.store({ from: "bob", to: "alice", text: "theirs" });
  server.push(theirs);
  await until(() => events.message.length === 2, { what: "bob's message" });
  await assert.rejects(client.recall("s:alice:bob", theirs.seq, theirs.message_id), (e) => e instanceof ProtocolError && e.code === 403);
  await assert.rejects(client.edit("s:alice:bob", 77, "0", "x"), (e) => e instanceof ProtocolError && e.code === 404);
  await client.deleteForMe("s:alice:bob", theirs.seq, theirs.message_id);
  assert.deepEqual([changes.at(-1).cause, changes.at(-1).change.status, changes.at(-1).change.seq], ["delete", 3, theirs.seq]);
  server.recallTooLate = true;
  const again = await (await client.send({ to: "bob", text: "late" })).done;
  await assert.rejects(client.recall("s:alice:bob", again.seq), (e) => e instanceof ProtocolError && e.code === 410);
  assert.equal(server.frames(T.MODIFY_REQ).filter((f) => f.body.kind === 1).length, 3, "403/404/410 are final: not retried");
});

test("events from the peer change the held message; history leaves events and deletions out", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  const changes = [];
  client.addEventListener("change", (e) => changes.push(e.detail));
  t.after(() => client.close());
  const conv = "s:alice:bob";
  const original = server.store({ from: "bob", to: "alice", text: "typo" });
  server.push(original);
  server.push(server.store({ from: "bob", to: "alice", conv, content: new TextEncoder().encode("fixed"), event: { kind: 2, target_seq: 1, target_message_id: original.message_id } }));
  await until(() => changes.length === 1, { what: "the edit" });
  assert.deepEqual([changes[0].cause, changes[0].own, changes[0].change.message_id], ["edit", false, original.message_id]);
  assert.equal(new TextDecoder().decode(client.state.get(conv, 1).content), "fixed");
  assert.equal(events.message.length, 1);
  // history: the stored original revised, the event, and a tombstone of a deleted one
  server.stored.get(conv)[0] = { ...original, content: new TextEncoder().encode("fixed"), status: 1, revision_seq: 2 };
  const gone = server.store({ from: "bob", to: "alice", text: "gone" });
  gone.status = 3;
  gone.content = new Uint8Array(0);
  const page = await client.history(conv);
  assert.deepEqual(page.messages.map((m) => [m.seq, m.status, new TextDecoder().decode(m.content)]), [[1, 1, "fixed"]]);
});

test("SYNC from another device: a read asks for the unread counts again, deletions hide", async (t) => {
  const server = new FakeServer();
  const { client, events } = await online(server);
  const changes = [];
  const syncs = [];
  client.addEventListener("change", (e) => changes.push(e.detail));
  client.addEventListener("sync", (e) => syncs.push(e.detail));
  t.after(() => client.close());
  const m = server.store({ from: "bob", to: "alice", text: "x" });
  server.push(m);
  await until(() => events.message.length === 1, { what: "message" });
  await until(() => server.frames(T.UNREAD_REQ).length >= 1, { what: "unread after auth" });
  const before = server.frames(T.UNREAD_REQ).length;
  server.reply(server.socket, T.SYNC, 0, { conversation_id: m.conversation_id, read_seq: 1 });
  await until(() => server.frames(T.UNREAD_REQ).length === before + 1, { what: "unread asked again" });
  assert.equal(syncs[0].read_seq, 1);
  assert.equal(await client.readReport(m.conversation_id, 1), false, "already read on the other device");
  server.reply(server.socket, T.SYNC, 0, { conversation_id: m.conversation_id, deleted_seqs: [1] });
  await until(() => changes.length === 1, { what: "deletion" });
  assert.deepEqual([changes[0].cause, changes[0].change.seq, changes[0].change.status, changes[0].change.known], ["delete", 1, 3, true]);
});
