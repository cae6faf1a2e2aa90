/**
 * The in-memory storage (`memory:`): the fast fixture for tests, and the reference for what
 * every other storage must do (it runs the same contract suite). Validation, conflict
 * checks, finish rounds and undo are BaseStorage's; this file only keeps revisions.
 *
 * Invariants:
 * - `#revisions.get(oid)` holds every revision of the object in increasing serial order; the
 *   last one is current. Nothing is ever removed (no pack), so every snapshot stays readable.
 * - `#transactions` is in increasing tid order and its last tid equals `#lastTid`.
 * - Stored bytes are copies, and so are returned ones (except lent ones, see loadOneSync): a
 *   caller that reuses its buffers cannot change committed history, as with a real storage.
 *   A stored revision is never changed, so a lent one stays valid for good.
 * - A commit runs start to end without awaiting, so in one process it is atomic with
 *   respect to every other call: the re-check and the writes see the same state.
 */
import { randomUUID } from "node:crypto";
import { BaseStorage, copy, type CurrentRevision, type Outcome, type Write } from "./base-storage.ts";
import type { Changes, Oid, StorageCapabilities, StoredRecord, Tid, TransactionInfo } from "./storage.ts";

interface Revision {
  serial: Tid;
  data: Uint8Array;
}

export class MemoryStorage extends BaseStorage {
  /** A fresh identity per instance: a memory storage is gone when its process ends. */
  readonly id = randomUUID();
  readonly capabilities: StorageCapabilities = { synchronous: true, history: true };

  #revisions = new Map<Oid, Revision[]>();
  #transactions: TransactionInfo[] = [];
  #lastTid: Tid = 0;
  /** Oid 0 is the root, created by the first connection: never handed out. */
  #nextOid: Oid = 1;

  /** `url` only labels the storage in messages (`memory:` followed by anything). */
  constructor(url = "memory:") {
    super(url);
  }

  protected override _readNewest(): Tid {
    return this.#lastTid;
  }

  protected override _loadAt(oid: Oid, at: Tid): StoredRecord | null {
    const r = this.#revisionAt(oid, at);
    return r === null ? null : { oid, serial: r.serial, data: copy(r.data) };
  }

  protected override _lendAt(oid: Oid, at: Tid): StoredRecord | null {
    const r = this.#revisionAt(oid, at);
    return r === null ? null : { oid, serial: r.serial, data: r.data }; // lent, not copied
  }

  protected override _current(oid: Oid): CurrentRevision | null {
    const revisions = this.#revisions.get(oid);
    return revisions?.[revisions.length - 1] ?? null;
  }

  protected override _history(oid: Oid, max: number): StoredRecord[] {
    const revisions = this.#revisions.get(oid) ?? [];
    const out: StoredRecord[] = [];
    for (let i = revisions.length - 1; i >= 0 && out.length < max; i--) {
      const r = revisions[i]!;
      out.push({ oid, serial: r.serial, data: copy(r.data) });
    }
    return out;
  }

  protected override _newOids(count: number): Oid[] {
    const first = this.#nextOid;
    this.#nextOid += count;
    return Array.from({ length: count }, (_, i) => first + i);
  }

  protected override _changesSince(since: Tid): Changes {
    const oids = new Set<Oid>();
    for (let i = this.#firstAfter(since); i < this.#transactions.length; i++) {
      for (const oid of this.#transactions[i]!.oids) oids.add(oid);
    }
    return { tid: this.#lastTid, oids: [...oids] };
  }

  protected override _transactions(since: Tid, max: number): TransactionInfo[] {
    const first = this.#firstAfter(since);
    const out: TransactionInfo[] = [];
    for (let i = this.#transactions.length - 1; i >= first && out.length < max; i--) {
      const t = this.#transactions[i]!;
      out.push({ tid: t.tid, oids: [...t.oids], meta: { ...t.meta } });
    }
    return out;
  }

  protected override _transactionOids(tid: Tid): readonly Oid[] | null {
    const info = this.#transactions[this.#firstAfter(tid - 1)];
    return info !== undefined && info.tid === tid ? info.oids : null;
  }

  /** Nothing awaits between the check and the writes: the body is atomic as it is. */
  protected override _atomically(body: () => Outcome): Outcome {
    return body();
  }

  protected override _write(writes: readonly Write[], meta: Record<string, string>): Tid {
    // Tids come from the clock in microseconds, and stay strictly increasing even if the
    // clock steps back or two commits fall in the same microsecond.
    const tid = Math.max(this.#lastTid + 1, Date.now() * 1000);
    for (const { oid, data } of writes) {
      const revision = { serial: tid, data: copy(data) };
      const revisions = this.#revisions.get(oid);
      if (revisions === undefined) this.#revisions.set(oid, [revision]);
      else revisions.push(revision);
      if (oid >= this.#nextOid) this.#nextOid = oid + 1;
    }
    this.#transactions.push({ tid, oids: writes.map((w) => w.oid), meta: { ...meta } });
    this.#lastTid = tid;
    return tid;
  }

  protected override async _close(): Promise<void> {}

  #revisionAt(oid: Oid, at: Tid): Revision | null {
    const revisions = this.#revisions.get(oid);
    if (revisions === undefined) return null;
    for (let i = revisions.length - 1; i >= 0; i--) {
      if (revisions[i]!.serial <= at) return revisions[i]!;
    }
    return null;
  }

  /** Index of the first logged transaction with tid > `since` (binary search). */
  #firstAfter(since: Tid): number {
    let lo = 0;
    let hi = this.#transactions.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#transactions[mid]!.tid <= since) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
