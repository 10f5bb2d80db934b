// Device ids and the per-device resume position, kept in the browser profile (S18).
//
// The server keeps one cursor per (user, device): a device id must therefore be stable for a
// browser profile, or every visit would register a new device and pull the user's whole
// timeline again. It lives in localStorage. Two tabs of one profile must not share an id
// (signing in with a device id that is already connected kicks the older connection, KICK
// 409), so ids come from a small pool of slots: a tab claims the first slot no live tab holds
// (a lease it refreshes) and keeps it across reloads through sessionStorage. Without
// localStorage (privacy modes, storage disabled) the id is random per page: it still works,
// the device is just new on every visit. No I/O beyond the Storage objects passed in, and
// the clock is injectable, so the tests need no browser.

const PREFIX = "imstack.device";
export const LEASE_MS = 15_000; // a tab that has not refreshed its lease for this long is gone
const SLOTS = 8;

/** A Storage-like object, or null when the browser refuses to give one. */
export function safeStorage(getter) {
  try {
    const storage = getter();
    const probe = `${PREFIX}.probe`;
    storage.setItem(probe, "1");
    storage.removeItem(probe);
    return storage;
  } catch {
    return null;
  }
}

const randomId = (random) => `web-${Math.floor(random() * 2 ** 48).toString(36).padStart(8, "0").slice(-8)}`;

export class DeviceSlot {
  /**
   * @param {object} opts
   * @param {Storage|null} opts.local   localStorage (shared by the tabs of the profile)
   * @param {Storage|null} opts.session sessionStorage (this tab; survives a reload)
   * @param {() => number} [opts.now]
   * @param {() => number} [opts.random]
   */
  constructor({ local, session, now = Date.now, random = Math.random }) {
    this.local = local;
    this.session = session;
    this.now = now;
    this.random = random;
    this.slot = null;
    this.tab = randomId(random); // who holds a lease
    this.deviceId = this._claim();
  }

  _claim() {
    if (!this.local) return randomId(this.random);
    const saved = this.session && this.session.getItem(`${PREFIX}.slot`);
    const mine = saved === null || saved === undefined || saved === false ? -1 : Number(saved);
    const order = [...Array(SLOTS).keys()];
    if (mine >= 0 && mine < SLOTS) order.unshift(mine); // a reload takes its own slot back
    for (const slot of order) {
      const lease = this._lease(slot);
      if (slot !== mine && lease && this.now() - lease.at < LEASE_MS) continue; // a live tab has it
      let id = this.local.getItem(`${PREFIX}.${slot}.id`);
      if (!id) {
        id = randomId(this.random);
        this.local.setItem(`${PREFIX}.${slot}.id`, id);
      }
      this.slot = slot;
      if (this.session) this.session.setItem(`${PREFIX}.slot`, String(slot));
      this.refresh();
      return id;
    }
    return randomId(this.random); // every slot busy: a throwaway device
  }

  _lease(slot) {
    try {
      return JSON.parse(this.local.getItem(`${PREFIX}.${slot}.lease`) || "null");
    } catch {
      return null;
    }
  }

  /** Keeps the slot ours; call it more often than LEASE_MS. */
  refresh() {
    if (this.slot === null) return;
    this.local.setItem(`${PREFIX}.${this.slot}.lease`, JSON.stringify({ tab: this.tab, at: this.now() }));
  }

  /** The tab goes away (pagehide): another tab may take the slot at once. */
  release() {
    if (this.slot === null) return;
    const lease = this._lease(this.slot);
    if (lease && lease.tab === this.tab) this.local.removeItem(`${PREFIX}.${this.slot}.lease`);
  }
}

/**
 * Where a (user, device) keeps its resume position (PullOfflineRequest.resume_cursor): an
 * opaque int64, kept as a decimal string. Falls back to memory without storage.
 */
export class ResumeStore {
  constructor(storage, uid, deviceId) {
    this.storage = storage;
    this.key = `imstack.resume.${uid}.${deviceId}`;
    this.memory = "0";
  }

  load() {
    try {
      return (this.storage && this.storage.getItem(this.key)) || this.memory;
    } catch {
      return this.memory;
    }
  }

  save(cursor) {
    this.memory = String(cursor);
    try {
      if (this.storage) this.storage.setItem(this.key, this.memory);
    } catch {
      /* full or refused: memory keeps it for this page */
    }
  }
}
