/**
 * The embedded storage: one LMDB environment in a directory (see layout.ts), shared by any
 * number of processes on one machine.
 *
 * Atomicity across processes: `finish`, `undo` and oid reservation each run as one LMDB
 * write transaction (lmdb-js `transactionSync`). LMDB admits one write transaction at a
 * time across every process of the environment (a robust mutex in lock.mdb, released if
 * its holder dies), and a write transaction reads the newest committed state; so the
 * re-check of serials, the tid allocation and every write happen with no other commit in
 * between, and an abort (a conflict, a thrown error) writes nothing.
 *
 * Freshness: lmdb-js reads through a cached read transaction that it renews lazily, at the
 * first read after a `setTimeout(0)` turn or after its own commit; a commit by another
 * process (or another `LmdbStorage` on the same path) is not visible to a read in the same
 * turn. Operations that must see the newest state (`lastTid`, `changesSince`, `vote`) call
 * `resetReadTxn()` first. Loads read at a snapshot tid: they only refresh when asked for a
 * tid newer than any this instance has seen, since every read transaction started after
 * seeing tid T includes T.
 *
 * Durability: "durable" (default) commits with lmdb-js's default flags: the data pages are
 * written and fdatasync'ed, then the meta page is written through an O_DSYNC descriptor,
 * all before `transactionSync` returns (seen with strace). "relaxed" adds NO_SYNC_FLUSH:
 * LMDB may return before the flush, and marks the meta page of an unflushed commit so that
 * after a system crash it opens the newest flushed one; at most the last commits are lost,
 * never part of one. (lmdb-js 3.5 on Linux still flushes before returning, but after it
 * has released the write lock, so other processes' commits do not queue behind the
 * fsync.) A process crash loses nothing in either mode: the pages are in the OS cache.
 */
import type { Database, RootDatabase } from "lmdb";
import { StorageError } from "../../errors.ts";
import { closureOf } from "../closure.ts";
import { walkPlan } from "../plan-walk.ts";
import { MAX_IN_COMMIT_ROUNDS, conflictError, undoable } from "../conflicts.ts";
import type {
  Changes,
  ClosureOptions,
  ClosureResult,
  PlanOptions,
  PlanResult,
  PlanStep,
  CommitRequest,
  ResolveInCommit,
  Oid,
  Storage,
  StorageCapabilities,
  StorageConflict,
  StoredRecord,
  Tid,
  TransactionInfo,
} from "../storage.ts";
import { checkCommitRequest, checkCount, checkLimit, checkOid, checkOids, checkTid } from "../validation.ts";
import * as L from "./layout.ts";
import { preparePath } from "./store-path.ts";

export interface LmdbStorageOptions {
  /**
   * "durable" (default): a returned commit is on disk. "relaxed": a system crash may lose
   * the last commits, never part of one (see the module comment).
   */
  durability?: "durable" | "relaxed";
  /** Create the directory and the store when missing (default true). */
  create?: boolean;
  /** Open for reading only: commits, undo and newOids raise `StorageError` ("read-only"). */
  readOnly?: boolean;
}

/** Oids reserved per write to "nextOid": unused ones are skipped when the process ends. */
const OID_BLOCK = 1024;

/**
 * lmdb-js, loaded by the first `LmdbStorage.open` (`loadLmdb`): importing amberdb loads no
 * native code, and a program that only uses `memory:` or a server never loads it.
 */
let lmdb: typeof import("lmdb") | undefined;
/**
 * The commit flags (from lmdb-js's TransactionFlags) and lmdb-js's ABORT, set by `loadLmdb`
 * before any `LmdbStorage` exists (they are only read by instances).
 */
let DURABLE = 0;
let RELAXED = 0;
let ABORT: typeof import("lmdb").ABORT = {};

async function loadLmdb(): Promise<typeof import("lmdb")> {
  if (lmdb === undefined) {
    const m = await import("lmdb");
    DURABLE = m.TransactionFlags.ABORTABLE | m.TransactionFlags.SYNCHRONOUS_COMMIT;
    RELAXED = DURABLE | m.TransactionFlags.NO_SYNC_FLUSH;
    ABORT = m.ABORT;
    lmdb = m;
  }
  return lmdb;
}

type Bytes = Database<Buffer, string | number | L.HistoryKey>;

interface Databases {
  id: string;
  meta: Database<Buffer, string>;
  current: Database<Buffer, Oid>;
  history: Database<Buffer, L.HistoryKey>;
  txns: Database<Buffer, Tid>;
}

/** One object to write in a commit. */
interface Write {
  oid: Oid;
  data: Uint8Array;
  /** The serial of the current revision this one replaces, checked already; 0 for a new object. */
  serial: Tid;
}

export class LmdbStorage implements Storage {
  readonly url: string;
  /** The store's identity (kept in its marker). */
  readonly id: string;
  readonly capabilities: StorageCapabilities = { synchronous: true, history: true };

  readonly #root: RootDatabase;
  readonly #db: Databases;
  readonly #commitFlags: number;
  readonly #readOnly: boolean;
  #closing: Promise<void> | undefined;
  /** A committed tid: every read transaction started from now on includes it. */
  #knownTid: Tid = 0;
  /** Reserved oids not handed out yet: [#oidNext, #oidEnd). */
  #oidNext: Oid = 0;
  #oidEnd: Oid = 0;

  private constructor(url: string, root: RootDatabase, db: Databases, options: LmdbStorageOptions) {
    this.url = url;
    this.id = db.id;
    this.#root = root;
    this.#db = db;
    this.#commitFlags = options.durability === "relaxed" ? RELAXED : DURABLE;
    this.#readOnly = options.readOnly === true;
  }

  /** Open (and by default create) the store in directory `path`. */
  static async open(path: string, options: LmdbStorageOptions = {}): Promise<LmdbStorage> {
    if (typeof path !== "string" || path.length === 0) {
      throw new TypeError(`LmdbStorage.open() needs a directory path, got ${path === "" ? "an empty string" : typeof path}`);
    }
    if (options.durability !== undefined && options.durability !== "durable" && options.durability !== "relaxed") {
      throw new RangeError(`durability must be "durable" or "relaxed", got ${JSON.stringify(options.durability)}`);
    }
    const readOnly = options.readOnly === true;
    const create = options.create !== false && !readOnly;
    preparePath(path, create);
    const { open } = await loadLmdb();
    let root: RootDatabase;
    try {
      root = open(path, { noSubdir: false, readOnly, overlappingSync: process.platform !== "win32", maxDbs: 8 });
    } catch (err) {
      throw new StorageError(`cannot open the LMDB environment in ${path}: ${(err as Error).message}`, { cause: err });
    }
    try {
      const db = openDatabases(root, path, create);
      const storage = new LmdbStorage(path, root, db, options);
      storage.#knownTid = storage.#readLastTid();
      return storage;
    } catch (err) {
      await root.close();
      throw err;
    }
  }

  async lastTid(): Promise<Tid> {
    this.#checkOpen();
    this.#refresh();
    return this.#knownTid;
  }

  async load(oids: readonly Oid[], at: Tid): Promise<Array<StoredRecord | null>> {
    return this.loadSync(oids, at);
  }

  loadSync(oids: readonly Oid[], at: Tid): Array<StoredRecord | null> {
    this.#checkOpen();
    checkOids(oids);
    checkTid(at, "at");
    if (at > this.#knownTid) this.#refresh();
    const out = new Array<StoredRecord | null>(oids.length);
    let oid = -1;
    try {
      for (let i = 0; i < oids.length; i++) {
        oid = oids[i]!;
        out[i] = this.#loadAt(oid, at);
      }
    } catch (err) {
      throw this.#readFailure(err, oid);
    }
    return out;
  }

  loadOneSync(oid: Oid, at: Tid, borrow: boolean): StoredRecord | null {
    this.#checkOpen();
    checkOid(oid);
    checkTid(at, "at");
    if (at > this.#knownTid) this.#refresh();
    try {
      if (borrow) {
        const current = this.#db.current.getBinaryFast(oid);
        if (current === undefined) return null;
        const serial = L.revisionSerial(current, oid);
        if (serial <= at) return { oid, serial, data: L.revisionView(current) };
      }
      return this.#loadAt(oid, at);
    } catch (err) {
      throw this.#readFailure(err, oid);
    }
  }

  async loadClosure(oid: Oid, at: Tid, options?: ClosureOptions): Promise<ClosureResult> {
    this.#checkOpen();
    checkOid(oid);
    checkTid(at, "at");
    if (at > this.#knownTid) this.#refresh();
    return closureOf((o, t) => this.#loadOrFail(o, t), oid, at, options);
  }

  async loadPlan(steps: readonly PlanStep[], at: Tid, options?: PlanOptions): Promise<PlanResult> {
    this.#checkOpen();
    checkTid(at, "at");
    if (at > this.#knownTid) this.#refresh();
    const { records, groups, missing } = walkPlan((o) => this.#loadOrFail(o, at), steps, options);
    return { records, groups, missing };
  }

  async loadBefore(oid: Oid, before: Tid): Promise<StoredRecord | null> {
    this.#checkOpen();
    checkOid(oid);
    checkTid(before, "before");
    if (before === 0) return null;
    if (before - 1 > this.#knownTid) this.#refresh();
    try {
      return this.#loadAt(oid, before - 1);
    } catch (err) {
      throw this.#readFailure(err, oid);
    }
  }

  async history(oid: Oid, limit?: number): Promise<StoredRecord[]> {
    this.#checkOpen();
    checkOid(oid);
    const max = checkLimit(limit);
    this.#refresh();
    try {
      const current = this.#db.current.getBinaryFast(oid);
      if (current === undefined) return [];
      const out: StoredRecord[] = [{ oid, serial: L.revisionSerial(current, oid), data: L.revisionData(current) }];
      if (out.length >= max) return out;
      const range = this.#db.history.getRange({
        start: [oid, Number.MAX_SAFE_INTEGER],
        end: [oid],
        reverse: true,
        ...(max === Infinity ? {} : { limit: max - 1 }),
      });
      for (const { value } of range) out.push({ oid, serial: L.revisionSerial(value, oid), data: L.revisionData(value) });
      return out;
    } catch (err) {
      throw this.#readFailure(err, oid);
    }
  }

  async newOids(count: number): Promise<Oid[]> {
    return this.newOidsSync(count);
  }

  newOidsSync(count: number): Oid[] {
    this.#checkWritable("newOids");
    checkCount(count, "count");
    const out: Oid[] = [];
    while (out.length < count) {
      if (this.#oidNext === this.#oidEnd) this.#reserveOids(Math.max(count - out.length, OID_BLOCK));
      const take = Math.min(count - out.length, this.#oidEnd - this.#oidNext);
      for (let i = 0; i < take; i++) out.push(this.#oidNext + i);
      this.#oidNext += take;
    }
    return out;
  }

  async vote(request: CommitRequest): Promise<StorageConflict[]> {
    this.#checkWritable("vote");
    checkCommitRequest(request);
    this.#refresh();
    return this.#conflicts(request);
  }

  async finish(request: CommitRequest, resolve?: ResolveInCommit): Promise<Tid> {
    this.#checkWritable("finish");
    checkCommitRequest(request);
    const meta = request.meta ?? {};
    const outcome = this.#writeTransaction(() => {
      // Conflicts found here may be merged while the write lock is held, so that another
      // process's commits cannot keep slipping in between a merge and its write.
      for (let round = 0; ; round++) {
        const conflicts = this.#conflicts(request);
        if (conflicts.length === 0) return this.#write(request.records, meta);
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
    this.#checkOpen();
    checkCommitRequest(request);
    // vote takes no lock here (finish re-checks atomically), so there is nothing to release.
  }

  async changesSince(since: Tid): Promise<Changes> {
    return this.changesSinceSync(since);
  }

  changesSinceSync(since: Tid): Changes {
    this.#checkOpen();
    checkTid(since, "since");
    this.#refresh();
    // Everything below reads the read transaction #refresh just renewed: one snapshot.
    const tid = this.#knownTid;
    if (since >= tid) return { tid, oids: [] };
    if (since < L.decodeU64(this.#db.meta.getBinary(L.KEY_LOG_START), L.KEY_LOG_START, 0)) return { tid, oids: null };
    const oids = new Set<Oid>();
    for (const { key, value } of this.#db.txns.getRange({ start: since + 1 })) {
      for (const oid of L.decodeTxn(value, key).oids) oids.add(oid);
    }
    return { tid, oids: [...oids] };
  }

  async transactions(since: Tid = 0, limit?: number): Promise<TransactionInfo[]> {
    this.#checkOpen();
    checkTid(since, "since");
    const max = checkLimit(limit);
    this.#refresh();
    const range = this.#db.txns.getRange({ end: since, reverse: true, ...(max === Infinity ? {} : { limit: max }) });
    const out: TransactionInfo[] = [];
    for (const { key, value } of range) out.push({ tid: key, ...L.decodeTxn(value, key) });
    return out;
  }

  async undo(tid: Tid): Promise<Tid> {
    this.#checkWritable("undo");
    checkTid(tid);
    const outcome = this.#writeTransaction(() => {
      const logged = this.#db.txns.getBinary(tid);
      if (logged === undefined) {
        throw new StorageError(`cannot undo transaction ${tid}: ${this.url} has no such transaction`, { code: "not-found" });
      }
      const conflicts: StorageConflict[] = [];
      const restores: Write[] = [];
      for (const oid of L.decodeTxn(logged, tid).oids) {
        const current = this.#db.current.getBinaryFast(oid);
        if (current === undefined) {
          conflicts.push({ oid, readSerial: tid, committedSerial: 0, committedData: null, readOnly: false });
          continue;
        }
        // Copied out before the next read: lmdb-js reuses the buffer it lent.
        const serial = L.revisionSerial(current, oid);
        const currentData = L.revisionData(current);
        if (serial !== tid) {
          // The revision `tid` wrote is in "history" now: the newest one at or before `tid`.
          const undone = this.#historyAtOrBefore(oid, tid);
          if (!undoable(tid, serial, currentData, undone?.serial === tid ? undone.data : null)) {
            conflicts.push({ oid, readSerial: tid, committedSerial: serial, committedData: currentData, readOnly: false });
            continue;
          }
        }
        // An object this transaction created has no earlier revision: it is left as it is,
        // and becomes unreachable garbage once the references to it are undone too.
        const previous = this.#historyAtOrBefore(oid, tid - 1);
        if (previous !== null) restores.push({ oid, data: previous.data, serial });
      }
      return conflicts.length > 0 ? conflicts : this.#write(restores, { undo: String(tid) });
    });
    if (typeof outcome !== "number") throw conflictError(outcome);
    return outcome;
  }

  close(): Promise<void> {
    this.#closing ??= this.#root.close();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #checkOpen(): void {
    if (this.#closing !== undefined) throw new StorageError(`storage ${this.url} is closed`, { code: "closed" });
  }

  #checkWritable(operation: string): void {
    this.#checkOpen();
    if (this.#readOnly) {
      throw new StorageError(`${operation}: storage ${this.url} was opened read-only`, { code: "read-only" });
    }
  }

  /** Start reading from the newest committed state (see "Freshness" above). */
  #refresh(): void {
    this.#root.resetReadTxn();
    this.#knownTid = Math.max(this.#knownTid, this.#readLastTid());
  }

  #readLastTid(): Tid {
    return L.decodeU64(this.#db.meta.getBinary(L.KEY_LAST_TID), L.KEY_LAST_TID, 0);
  }

  /** An LMDB failure while reading `oid`, as a `StorageError` that names the oid. */
  #readFailure(err: unknown, oid: Oid): StorageError {
    if (err instanceof StorageError) return err;
    return new StorageError(`reading object ${oid} from ${this.url} failed: ${(err as Error).message}`, { oid, cause: err });
  }

  #loadOrFail(oid: Oid, at: Tid): StoredRecord | null {
    try {
      return this.#loadAt(oid, at);
    } catch (err) {
      throw this.#readFailure(err, oid);
    }
  }

  /** The revision of `oid` current at snapshot `at`: one get when "current" is old enough. */
  #loadAt(oid: Oid, at: Tid): StoredRecord | null {
    const current = this.#db.current.getBinaryFast(oid);
    if (current === undefined) return null;
    const serial = L.revisionSerial(current, oid);
    if (serial <= at) return { oid, serial, data: L.revisionData(current) };
    return this.#historyAtOrBefore(oid, at);
  }

  /** The newest revision of `oid` in "history" with serial <= `at`. */
  #historyAtOrBefore(oid: Oid, at: Tid): StoredRecord | null {
    for (const { value } of this.#db.history.getRange({ start: [oid, at], end: [oid], reverse: true, limit: 1 })) {
      return { oid, serial: L.revisionSerial(value, oid), data: L.revisionData(value) };
    }
    return null;
  }

  /** Serial mismatches against what the current read (or write) transaction sees. */
  #conflicts(request: CommitRequest): StorageConflict[] {
    const conflicts: StorageConflict[] = [];
    const check = (oid: Oid, readSerial: Tid, readOnly: boolean): void => {
      let current: Buffer | undefined;
      try {
        current = this.#db.current.getBinaryFast(oid);
      } catch (err) {
        throw this.#readFailure(err, oid);
      }
      const committedSerial = current === undefined ? 0 : L.revisionSerial(current, oid);
      if (committedSerial !== readSerial) {
        const committedData = current === undefined ? null : L.revisionData(current);
        conflicts.push({ oid, readSerial, committedSerial, committedData, readOnly });
      }
    };
    for (const r of request.records) check(r.oid, r.serial, false);
    for (const r of request.readCurrent) check(r.oid, r.serial, true);
    return conflicts;
  }

  /**
   * Run `body` in one LMDB write transaction. A returned conflict list aborts it (nothing
   * written); a thrown error aborts it and propagates; a returned tid commits it.
   */
  #writeTransaction(body: () => StorageConflict[] | Tid): StorageConflict[] | Tid {
    let outcome = [] as StorageConflict[] | Tid;
    this.#root.transactionSync(() => {
      outcome = body();
      return typeof outcome === "number" ? undefined : ABORT;
    }, this.#commitFlags);
    if (typeof outcome === "number") this.#knownTid = Math.max(this.#knownTid, outcome);
    return outcome;
  }

  /**
   * Inside a write transaction: write `writes` under a new tid, moving each replaced current
   * revision into "history", log the transaction, and advance "lastTid" and "nextOid".
   */
  #write(writes: readonly Write[], meta: Record<string, string>): Tid {
    const { current, history, txns, meta: metaDb } = this.#db;
    // Tids come from the clock in microseconds, and stay strictly increasing even when the
    // clock steps back or two commits fall in one microsecond.
    const tid = Math.max(this.#readLastTid() + 1, Date.now() * 1000);
    let maxOid = -1;
    for (const { oid, data, serial } of writes) {
      // The conflict check proved that the current revision has `serial`: a new object
      // (serial 0) costs one put, a changed one moves its old bytes to "history" first.
      if (serial !== 0) history.putSync([oid, serial], L.copyRevision(current.getBinaryFast(oid)!));
      current.putSync(oid, L.encodeRevision(tid, data));
      if (oid > maxOid) maxOid = oid;
    }
    txns.putSync(tid, L.encodeTxn(writes.map((w) => w.oid), meta));
    metaDb.putSync(L.KEY_LAST_TID, L.encodeU64(tid));
    // A durable commit that writes an oid also records that the oid is taken, so a lost
    // (relaxed) oid reservation can never hand it out again.
    if (maxOid >= L.decodeU64(metaDb.getBinary(L.KEY_NEXT_OID), L.KEY_NEXT_OID, 1)) {
      metaDb.putSync(L.KEY_NEXT_OID, L.encodeU64(maxOid + 1));
    }
    return tid;
  }

  /** Reserve `count` oids in one (relaxed) write transaction; see finish for why relaxed is safe. */
  #reserveOids(count: number): void {
    const meta = this.#db.meta;
    this.#root.transactionSync(() => {
      const next = L.decodeU64(meta.getBinary(L.KEY_NEXT_OID), L.KEY_NEXT_OID, 1);
      meta.putSync(L.KEY_NEXT_OID, L.encodeU64(next + count));
      this.#oidNext = next;
      this.#oidEnd = next + count;
    }, RELAXED);
  }
}

/**
 * Open the named databases. A store carries the marker in "meta"; an environment without
 * it is some other program's LMDB data, unless it is empty (a new store, or the creation
 * of one that was interrupted): then, when `create` allows, the databases and the marker
 * are created, the marker last, so that a store with a marker is complete.
 */
function openDatabases(root: RootDatabase, path: string, create: boolean): Databases {
  const openOne = (name: string, mustExist: boolean): Bytes | undefined => {
    try {
      // `create` is a runtime option of lmdb-js's openDB that its types do not declare.
      return root.openDB<Buffer, string>(name, { encoding: "binary", create: !mustExist } as { encoding: "binary" });
    } catch (err) {
      if (mustExist && /not found/i.test((err as Error).message)) return undefined;
      throw new StorageError(`cannot open database "${name}" in ${path}: ${(err as Error).message}`, { cause: err });
    }
  };
  const notAStore = (): StorageError =>
    new StorageError(`${path} is not an amberdb store: it holds an LMDB environment without the amberdb marker`, {
      code: "not-a-store",
    });
  let meta = openOne(L.DB_META, true);
  if (meta === undefined) {
    if (!create || root.getKeysCount() > 0) throw notAStore();
    meta = openOne(L.DB_META, false)!;
  }
  let marker = meta.getBinary(L.KEY_MARKER);
  if (marker === undefined) {
    if (!create || meta.getKeysCount() > 0) throw notAStore();
    for (const name of [L.DB_CURRENT, L.DB_HISTORY, L.DB_TXNS]) openOne(name, false);
    const m = meta;
    root.transactionSync(() => {
      if (m.getBinary(L.KEY_MARKER) === undefined) m.putSync(L.KEY_MARKER, L.encodeMarker());
    }, DURABLE);
    marker = meta.getBinary(L.KEY_MARKER)!;
  }
  const found = L.decodeMarker(marker);
  if (typeof found === "string") {
    throw new StorageError(`${path} is not a readable amberdb store: found ${found}`, { code: "not-a-store" });
  }
  if (found.format !== L.FORMAT) {
    throw new StorageError(`${path} is an amberdb store of format ${found.format}; this version reads format ${L.FORMAT}`, {
      code: "format",
    });
  }
  const [current, history, txns] = [L.DB_CURRENT, L.DB_HISTORY, L.DB_TXNS].map((name) => {
    const db = openOne(name, true);
    if (db === undefined) {
      throw new StorageError(`${path} is a damaged amberdb store: its database "${name}" is missing`, { code: "corrupt" });
    }
    return db;
  });
  return {
    id: L.storeId(found),
    meta: meta as Database<Buffer, string>,
    current: current as Database<Buffer, Oid>,
    history: history as Database<Buffer, L.HistoryKey>,
    txns: txns as Database<Buffer, Tid>,
  };
}
