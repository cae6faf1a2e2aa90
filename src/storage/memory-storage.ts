/**
 * The in-memory storage (`memory:`): the fast fixture for tests, and the reference for what
 * every other storage must do (it runs the same contract suite).
 *
 * Invariants:
 * - `#revisions.get(oid)` holds every revision of the object in increasing serial order; the
 *   last one is current. Nothing is ever removed (no pack), so every snapshot stays readable.
 * - `#transactions` is in increasing tid order and its last tid equals `#lastTid`.
 * - Stored and returned bytes are copies: a caller that reuses its buffers cannot change
 *   committed history, as with a real storage.
 * - A commit runs start to end without awaiting, so in one process it is atomic with
 *   respect to every other call: the re-check and the writes see the same state.
 */
import { randomUUID } from "node:crypto";
import { StorageError } from "../errors.ts";
import { closureOf } from "./closure.ts";
import { walkPlan } from "./plan-walk.ts";
import { MAX_IN_COMMIT_ROUNDS, conflictError, undoable } from "./conflicts.ts";
import type {
  ClosureOptions,
  ClosureResult,
  PlanOptions,
  PlanResult,
  PlanStep,
  Changes,
  CommitRequest,
  ResolveInCommit,
  Oid,
  Storage,
  StorageCapabilities,
  StorageConflict,
  StoredRecord,
  Tid,
  TransactionInfo,
} from "./storage.ts";
import { checkCommitRequest, checkCount, checkLimit, checkOid, checkOids, checkTid } from "./validation.ts";

interface Revision {
  serial: Tid;
  data: Uint8Array;
}

export class MemoryStorage implements Storage {
  readonly url: string;
  /** A fresh identity per instance: a memory storage is gone when its process ends. */
  readonly id = randomUUID();
  readonly capabilities: StorageCapabilities = { synchronous: true, history: true };

  #revisions = new Map<Oid, Revision[]>();
  #transactions: TransactionInfo[] = [];
  #lastTid: Tid = 0;
  /** Oid 0 is the root, created by the first connection: never handed out. */
  #nextOid: Oid = 1;
  #closed = false;

  /** `name` only labels the storage in messages (`memory:` followed by anything). */
  constructor(url = "memory:") {
    this.url = url;
  }

  async lastTid(): Promise<Tid> {
    this.#checkOpen();
    return this.#lastTid;
  }

  async load(oids: readonly Oid[], at: Tid): Promise<Array<StoredRecord | null>> {
    return this.loadSync(oids, at);
  }

  loadSync(oids: readonly Oid[], at: Tid): Array<StoredRecord | null> {
    this.#checkOpen();
    checkOids(oids);
    checkTid(at, "at");
    return oids.map((oid) => this.#newestAtOrBefore(oid, at));
  }

  loadOneSync(oid: Oid, at: Tid, borrow: boolean): StoredRecord | null {
    this.#checkOpen();
    checkOid(oid);
    checkTid(at, "at");
    if (!borrow) return this.#newestAtOrBefore(oid, at);
    const revisions = this.#revisions.get(oid);
    if (revisions === undefined) return null;
    for (let i = revisions.length - 1; i >= 0; i--) {
      const r = revisions[i]!;
      if (r.serial <= at) return { oid, serial: r.serial, data: r.data }; // lent, not copied
    }
    return null;
  }

  async loadClosure(oid: Oid, at: Tid, options?: ClosureOptions): Promise<ClosureResult> {
    this.#checkOpen();
    checkOid(oid);
    checkTid(at, "at");
    return closureOf((o, t) => this.#newestAtOrBefore(o, t), oid, at, options);
  }

  async loadPlan(steps: readonly PlanStep[], at: Tid, options?: PlanOptions): Promise<PlanResult> {
    this.#checkOpen();
    checkTid(at, "at");
    const { records, groups, missing } = walkPlan((o) => this.#newestAtOrBefore(o, at), steps, options);
    return { records, groups, missing };
  }

  async loadBefore(oid: Oid, before: Tid): Promise<StoredRecord | null> {
    this.#checkOpen();
    checkOid(oid);
    checkTid(before, "before");
    return before === 0 ? null : this.#newestAtOrBefore(oid, before - 1);
  }

  async history(oid: Oid, limit?: number): Promise<StoredRecord[]> {
    this.#checkOpen();
    checkOid(oid);
    const max = checkLimit(limit);
    const revisions = this.#revisions.get(oid) ?? [];
    const out: StoredRecord[] = [];
    for (let i = revisions.length - 1; i >= 0 && out.length < max; i--) {
      out.push(toRecord(oid, revisions[i]!));
    }
    return out;
  }

  async newOids(count: number): Promise<Oid[]> {
    return this.newOidsSync(count);
  }

  newOidsSync(count: number): Oid[] {
    this.#checkOpen();
    checkCount(count, "count");
    const first = this.#nextOid;
    this.#nextOid += count;
    return Array.from({ length: count }, (_, i) => first + i);
  }

  async vote(request: CommitRequest): Promise<StorageConflict[]> {
    this.#checkOpen();
    checkCommitRequest(request);
    return this.#conflicts(request);
  }

  async finish(request: CommitRequest, resolve?: ResolveInCommit): Promise<Tid> {
    this.#checkOpen();
    checkCommitRequest(request);
    for (let round = 0; ; round++) {
      const conflicts = this.#conflicts(request);
      if (conflicts.length === 0) break;
      const merged = resolve !== undefined && round < MAX_IN_COMMIT_ROUNDS ? resolve(conflicts) : null;
      if (merged === null) throw conflictError(conflicts);
      checkCommitRequest(merged);
      request = merged;
    }
    return this.#commit(
      request.records.map((r) => ({ oid: r.oid, data: r.data })),
      request.meta ?? {},
    );
  }

  async abort(request: CommitRequest): Promise<void> {
    this.#checkOpen();
    checkCommitRequest(request);
    // vote holds nothing here, so there is nothing to release.
  }

  async changesSince(since: Tid): Promise<Changes> {
    return this.changesSinceSync(since);
  }

  changesSinceSync(since: Tid): Changes {
    this.#checkOpen();
    checkTid(since, "since");
    const oids = new Set<Oid>();
    for (let i = this.#firstAfter(since); i < this.#transactions.length; i++) {
      for (const oid of this.#transactions[i]!.oids) oids.add(oid);
    }
    return { tid: this.#lastTid, oids: [...oids] };
  }

  async transactions(since: Tid = 0, limit?: number): Promise<TransactionInfo[]> {
    this.#checkOpen();
    checkTid(since, "since");
    const max = checkLimit(limit);
    const first = this.#firstAfter(since);
    const out: TransactionInfo[] = [];
    for (let i = this.#transactions.length - 1; i >= first && out.length < max; i--) {
      const t = this.#transactions[i]!;
      out.push({ tid: t.tid, oids: [...t.oids], meta: { ...t.meta } });
    }
    return out;
  }

  async undo(tid: Tid): Promise<Tid> {
    this.#checkOpen();
    checkTid(tid);
    const info = this.#transactions[this.#firstAfter(tid - 1)];
    if (info === undefined || info.tid !== tid) {
      throw new StorageError(`cannot undo transaction ${tid}: ${this.url} has no such transaction`, {
        code: "not-found",
      });
    }
    const conflicts: StorageConflict[] = [];
    const restores: Array<{ oid: Oid; data: Uint8Array }> = [];
    for (const oid of info.oids) {
      const revisions = this.#revisions.get(oid)!;
      const current = revisions[revisions.length - 1]!;
      // The revision `tid` wrote, and the one before it (none: `tid` created the object).
      let at = revisions.length - 1;
      while (at >= 0 && revisions[at]!.serial !== tid) at--;
      const undone = revisions[at];
      if (!undoable(tid, current.serial, current.data, undone?.data ?? null)) {
        const committedData = copy(current.data);
        conflicts.push({ oid, readSerial: tid, committedSerial: current.serial, committedData, readOnly: false });
      }
      // An object this transaction created has no earlier revision: it is left as it is, and
      // becomes unreachable garbage once the references to it are undone too.
      const previous = at > 0 ? revisions[at - 1] : undefined;
      if (previous !== undefined) restores.push({ oid, data: previous.data });
    }
    if (conflicts.length > 0) throw conflictError(conflicts);
    return this.#commit(restores, { undo: String(tid) });
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #checkOpen(): void {
    if (this.#closed) throw new StorageError(`storage ${this.url} is closed`, { code: "closed" });
  }

  #newestAtOrBefore(oid: Oid, at: Tid): StoredRecord | null {
    const revisions = this.#revisions.get(oid);
    if (revisions === undefined) return null;
    for (let i = revisions.length - 1; i >= 0; i--) {
      if (revisions[i]!.serial <= at) return toRecord(oid, revisions[i]!);
    }
    return null;
  }

  #conflicts(request: CommitRequest): StorageConflict[] {
    const conflicts: StorageConflict[] = [];
    const check = (oid: Oid, readSerial: Tid, readOnly: boolean): void => {
      const revisions = this.#revisions.get(oid);
      const current = revisions?.[revisions.length - 1];
      const committedSerial = current?.serial ?? 0;
      if (committedSerial !== readSerial) {
        const committedData = current === undefined ? null : copy(current.data);
        conflicts.push({ oid, readSerial, committedSerial, committedData, readOnly });
      }
    };
    for (const r of request.records) check(r.oid, r.serial, false);
    for (const r of request.readCurrent) check(r.oid, r.serial, true);
    return conflicts;
  }

  /** Write already-checked new revisions under a fresh tid and log the transaction. */
  #commit(writes: ReadonlyArray<{ oid: Oid; data: Uint8Array }>, meta: Record<string, string>): Tid {
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

function toRecord(oid: Oid, revision: Revision): StoredRecord {
  return { oid, serial: revision.serial, data: copy(revision.data) };
}

/** A copy of the bytes (not `slice()`: on a Buffer, that is a view of the same memory). */
function copy(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes);
}
