import assert from "node:assert/strict";
import { test } from "node:test";
import { DeviceSlot, LEASE_MS, ResumeStore, safeStorage } from "../src/device.js";

class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

test("the device id is stable per profile and kept by a reloading tab", () => {
  const local = new MemoryStorage();
  let now = 1_000_000;
  const tab = new MemoryStorage();
  const first = new DeviceSlot({ local, session: tab, now: () => now });
  // the same tab reloads while its lease is still fresh: the same device
  assert.equal(new DeviceSlot({ local, session: tab, now: () => now }).deviceId, first.deviceId);
  // a later visit in a new tab, after the lease ran out: the same device again
  now += LEASE_MS + 1;
  assert.equal(new DeviceSlot({ local, session: new MemoryStorage(), now: () => now }).deviceId, first.deviceId);
});

test("a second live tab of the profile is another device; a released slot is taken at once", () => {
  const local = new MemoryStorage();
  const now = () => 5_000_000;
  const one = new DeviceSlot({ local, session: new MemoryStorage(), now });
  const two = new DeviceSlot({ local, session: new MemoryStorage(), now });
  assert.notEqual(one.deviceId, two.deviceId, "two tabs at once would kick each other (KICK 409)");
  one.release();
  assert.equal(new DeviceSlot({ local, session: new MemoryStorage(), now }).deviceId, one.deviceId);
});

test("without storage the id is random per page and the resume position lives in memory", () => {
  const refusing = () => {
    throw new Error("SecurityError");
  };
  assert.equal(safeStorage(refusing), null);
  const slot = new DeviceSlot({ local: null, session: null });
  assert.match(slot.deviceId, /^web-[0-9a-z]{8}$/);
  slot.refresh();
  slot.release();
  const resume = new ResumeStore(null, "alice", slot.deviceId);
  assert.equal(resume.load(), "0");
  resume.save("1733350000000000");
  assert.equal(resume.load(), "1733350000000000");
});

test("the resume position is kept per user and device", () => {
  const local = new MemoryStorage();
  new ResumeStore(local, "alice", "web-a").save("42");
  assert.equal(new ResumeStore(local, "alice", "web-a").load(), "42");
  assert.equal(new ResumeStore(local, "bob", "web-a").load(), "0");
});
