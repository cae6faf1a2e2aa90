/**
 * What the local storages (memory, embedded) share: each public method validates its
 * arguments and the storage's state, then calls a protected hook that does the work
 * (DESIGN habit 5, after abstract-level's `get()` -> `_get()`). Here, once for both:
 *
 * - argument checks (validation.ts) and the "closed" / "read-only" refusals;
 * - the conflict check of `vote` and `finish` (a record's serial against the current one);
 * - `finish`'s rounds: conflicts found inside the atomic section go to `resolve`, whose
 *   merged request is checked again and written, or nothing is written;
 * - `undo` (the rule in conflicts.ts), closures and plans (closure.ts, plan-walk.ts).
 *
 * A subclass provides the hooks below: reads of one revision at a snapshot, the current
 * revision, the transaction log, oid reservation, and `_atomically` / `_write`, which
 * make a commit atomic. Hooks receive validated, trusted values and may raise
 * `StorageError` for damaged data; they never see a closed storage.
 *
 * Freshness: `_readNewest()` is called before each operation that must see every commit
 * made so far, by anyone (`lastTid`, `vote`, `changesSince`, `transactions`, `history`);
 * `_readAt(at)` before a batch of reads at snapshot `at`.
 *
 * @internal
 */
import { StorageError } from "../errors.ts";
import { closureLimits, closureOf } from "./closure.ts";
import { MAX_IN_COMMIT_ROUNDS, conflictError, undoable } from "./conflicts.ts";
import { checkPlan, walkPlan } from "./plan-walk.ts";
import type {
  Changes,
  ClosureOptions,
  ClosureResult,
  CommitRequest,
  Oid,
  PlanOptions,
  PlanResult,
  PlanStep,
  ResolveInCommit,
  StorageCapabilities,
  StorageConflict,
  StoredRecord,
  SyncStorage,
  Tid,
  TransactionInfo,
} from "./storage.ts";
import { checkCommitRequest, checkCount, checkLimit, checkOid, checkOids, checkTid } from "./validation.ts";

/** The current revision of an object; `data` may be lent (valid until the next hook call). */
export interface CurrentRevision {
  serial: Tid;
  data: Uint8Array;
}

/** One object to write in a commit, checked already. */
export interface Write {
  oid: Oid;
  data: Uint8Array;
  /** The serial of the current revision this one replaces; 0 for a new object. */
  serial: Tid;
}

/** What `_atomically`'s body returns: the new tid (commit) or the conflicts (write nothing). */
export type Outcome = Tid | StorageConflict[];

export abstract class BaseStorage implements SyncStorage {
  readonly url: string;
  abstract readonly id: string;
  abstract readonly capabilities: StorageCapabilities;
  readonly #readOnly: boolean;
  #closing: Promise<void> | undefined;

  protected constructor(url: string, options: { readOnly?: boolean } = {}) {
    this.url = url;
    this.#readOnly = options.readOnly === true;
  }

  // --- hooks -------------------------------------------------------------------------------

  /** Start reading from the newest committed state; return its tid. */
  protected abstract _readNewest(): Tid;
  /** Prepare to read at snapshot `at` (a tid this storage may not have seen yet). */
  protected _readAt(_at: Tid): void {}
  /** The revision of `oid` current at `at`, as a copy the caller keeps; null if none. */
  protected abstract _loadAt(oid: Oid, at: Tid): StoredRecord | null;
  /** As `_loadAt`, but `data` may be lent (see `loadOneSync`). */
  protected _lendAt(oid: Oid, at: Tid): StoredRecord | null {
    return this._loadAt(oid, at);
  }
  /** The newest revision of `oid` (in the atomic section: the one a commit would replace). */
  protected abstract _current(oid: Oid): CurrentRevision | null;
  /** Revisions of `oid`, newest first, at most `max` (Infinity: all). */
  protected abstract _history(oid: Oid, max: number): StoredRecord[];
  protected abstract _newOids(count: number): Oid[];
  /** After `_readNewest()`: what changed after `since`. */
  protected abstract _changesSince(since: Tid): Changes;
  /** After `_readNewest()`: transactions with tid > `since`, newest first, at most `max`. */
  protected abstract _transactions(since: Tid, max: number): TransactionInfo[];
  /** The oids transaction `tid` wrote, or null when there is no such transaction. */
  protected abstract _transactionOids(tid: Tid): readonly Oid[] | null;
  /**
   * Run `body` with no other commit in between (across processes, for a shared store),
   * reading the newest state. A returned tid commits what `_write` wrote; returned
   * conflicts or a thrown error leave nothing written.
   */
  protected abstract _atomically(body: () => Outcome): Outcome;
  /** Inside `_atomically`: write `writes` under a new tid, log it with `meta`, return the tid. */
  protected abstract _write(writes: readonly Write[], meta: Record<string, string>): Tid;
  /** Release resources; called once, by the first `close()`. */
  protected abstract _close(): Promise<void>;

  // --- reads -------------------------------------------------------------------------------

  async lastTid(): Promise<Tid> {
    this.checkOpen();
    return this._readNewest();
  }

  async load(oids: readonly Oid[], at: Tid): Promise<Array<StoredRecord | null>> {
    return this.loadSync(oids, at);
  }

  loadSync(oids: readonly Oid[], at: Tid): Array<StoredRecord | null> {
    this.checkOpen();
    checkOids(oids);
    checkTid(at, "at");
    this._readAt(at);
    const out = new Array<StoredRecord | null>(oids.length);
    for (let i = 0; i < oids.length; i++) out[i] = this._loadAt(oids[i]!, at);
    return out;
  }

  loadOneSync(oid: Oid, at: Tid, borrow: boolean): StoredRecord | null {
    this.checkOpen();
    checkOid(oid);
    checkTid(at, "at");
    this._readAt(at);
    return borrow ? this._lendAt(oid, at) : this._loadAt(oid, at);
  }

  async loadClosure(oid: Oid, at: Tid, options?: ClosureOptions): Promise<ClosureResult> {
    this.checkOpen();
    checkOid(oid);
    checkTid(at, "at");
    closureLimits(options);
    if (options?.have !== undefined) checkOids(options.have);
    this._readAt(at);
    return closureOf((o, t) => this._loadAt(o, t), oid, at, options);
  }

  async loadPlan(steps: readonly PlanStep[], at: Tid, options?: PlanOptions): Promise<PlanResult> {
    this.checkOpen();
    checkPlan(steps);
    checkTid(at, "at");
    if (options?.have !== undefined) checkOids(options.have);
    this._readAt(at);
    const { records, groups, missing } = walkPlan((o) => this._loadAt(o, at), steps, options);
    return { records, groups, missing };
  }

  async loadBefore(oid: Oid, before: Tid): Promise<StoredRecord | null> {
    this.checkOpen();
    checkOid(oid);
    checkTid(before, "before");
    if (before === 0) return null;
    this._readAt(before - 1);
    return this._loadAt(oid, before - 1);
  }

  async history(oid: Oid, limit?: number): Promise<StoredRecord[]> {
    this.checkOpen();
    checkOid(oid);
    const max = checkLimit(limit);
    this._readNewest();
    return this._history(oid, max);
  }

  async changesSince(since: Tid): Promise<Changes> {
    return this.changesSinceSync(since);
  }

  changesSinceSync(since: Tid): Changes {
    this.checkOpen();
    checkTid(since, "since");
    this._readNewest();
    return this._changesSince(since);
  }

  async transactions(since: Tid = 0, limit?: number): Promise<TransactionInfo[]> {
    this.checkOpen();
    checkTid(since, "since");
    const max = checkLimit(limit);
    this._readNewest();
    return this._transactions(since, max);
  }

  // --- writes ------------------------------------------------------------------------------

  async newOids(count: number): Promise<Oid[]> {
    return this.newOidsSync(count);
  }

  newOidsSync(count: number): Oid[] {
    this.checkWritable("newOids");
    checkCount(count, "count");
    return this._newOids(count);
  }

  async vote(request: CommitRequest): Promise<StorageConflict[]> {
    this.checkWritable("vote");
    checkCommitRequest(request);
    this._readNewest();
    return this.#conflicts(request);
  }

  async finish(request: CommitRequest, resolve?: ResolveInCommit): Promise<Tid> {
    this.checkWritable("finish");
    checkCommitRequest(request);
    if (resolve !== undefined && typeof resolve !== "function") {
      throw new TypeError(`resolve must be a function or undefined, got ${typeof resolve}`);
    }
    const outcome = this._atomically(() => {
      // Conflicts found here are merged while no other commit can happen, so that other
      // processes' commits cannot keep slipping in between a merge and its write.
      for (let round = 0; ; round++) {
        const conflicts = this.#conflicts(request);
        if (conflicts.length === 0) {
          const writes = request.records.map((r) => ({ oid: r.oid, data: r.data, serial: r.serial }));
          return this._write(writes, request.meta ?? {});
        }
        const merged = resolve !== undefined && round < MAX_IN_COMMIT_ROUNDS ? resolve(conflicts) : null;
        if (merged === null) return conflicts;
        checkCommitRequest(merged);
        request = merged;
      }
    });
    if (typeof outcome !== "number") throw conflictError(outcome);
    return outcome;
  }

  async abort(request: CommitRequest): Promise<void> {
    this.checkOpen();
    checkCommitRequest(request);
    // vote holds nothing here (finish checks again atomically): nothing to release.
  }

  async undo(tid: Tid): Promise<Tid> {
    this.checkWritable("undo");
    checkTid(tid);
    const outcome = this._atomically(() => {
      const oids = this._transactionOids(tid);
      if (oids === null) {
        throw new StorageError(`cannot undo transaction ${tid}: ${this.url} has no such transaction`, { code: "not-found" });
      }
      const conflicts: StorageConflict[] = [];
      const restores: Write[] = [];
      for (const oid of oids) {
        const current = this._current(oid);
        if (current === null) {
          conflicts.push({ oid, readSerial: tid, committedSerial: 0, committedData: null, readOnly: false });
          continue;
        }
        const serial = current.serial;
        if (serial !== tid) {
          // Copied before the next read: `current.data` may be lent.
          const currentData = copy(current.data);
          const undone = this._loadAt(oid, tid); // the revision `tid` wrote, if still stored
          if (!undoable(tid, serial, currentData, undone?.serial === tid ? undone.data : null)) {
            conflicts.push({ oid, readSerial: tid, committedSerial: serial, committedData: currentData, readOnly: false });
            continue;
          }
        }
        // An object this transaction created has no earlier revision: it is left as it is,
        // and becomes unreachable garbage once the references to it are undone too.
        const previous = this._loadAt(oid, tid - 1);
        if (previous !== null) restores.push({ oid, data: previous.data, serial });
      }
      return conflicts.length > 0 ? conflicts : this._write(restores, { undo: String(tid) });
    });
    if (typeof outcome !== "number") throw conflictError(outcome);
    return outcome;
  }

  // --- life cycle ----------------------------------------------------------------------------

  close(): Promise<void> {
    this.#closing ??= this._close();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  protected checkOpen(): void {
    if (this.#closing !== undefined) throw new StorageError(`storage ${this.url} is closed`, { code: "closed" });
  }

  protected checkWritable(operation: string): void {
    this.checkOpen();
    if (this.#readOnly) {
      throw new StorageError(`${operation}: storage ${this.url} was opened read-only`, { code: "read-only" });
    }
  }

  /** Serial mismatches against the current revisions (what the atomic section sees, in it). */
  #conflicts(request: CommitRequest): StorageConflict[] {
    const conflicts: StorageConflict[] = [];
    const check = (oid: Oid, readSerial: Tid, readOnly: boolean): void => {
      const current = this._current(oid);
      const committedSerial = current === null ? 0 : current.serial;
      if (committedSerial !== readSerial) {
        const committedData = current === null ? null : copy(current.data);
        conflicts.push({ oid, readSerial, committedSerial, committedData, readOnly });
      }
    };
    for (const r of request.records) check(r.oid, r.serial, false);
    for (const r of request.readCurrent) check(r.oid, r.serial, true);
    return conflicts;
  }
}

/** A copy of the bytes (not `slice()`: on a Buffer, that is a view of the same memory). */
export function copy(bytes: Uint8Array): Uint8Array {
  return Uint8Array.prototype.slice.call(bytes);
}
