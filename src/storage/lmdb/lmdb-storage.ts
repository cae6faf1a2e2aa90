/**
 * The embedded storage: one LMDB environment in a directory (see layout.ts), shared by any
 * number of processes on one machine. Validation, the conflict check, finish rounds and
 * undo are BaseStorage's; this file reads and writes the layout.
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
 * turn. Operations that must see the newest state (`_readNewest`) call `resetReadTxn()`
 * first. Loads read at a snapshot tid: they only refresh when asked for a tid newer than
 * any this instance has seen, since every read transaction started after seeing tid T
 * includes T.
 *
 * Lending: `loadOneSync(…, true)` returns a view of lmdb-js's read buffer, which is one
 * buffer for every environment of the process: the next read by any LmdbStorage of this
 * process overwrites it (the contract's "until the next call"). Values of 16 MiB or more
 * come from lmdb-js as views of the memory map instead, and are copied (see _lendAt).
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
import type { RootDatabase } from "lmdb";
import { StorageError } from "../../errors.ts";
import { BaseStorage, type CurrentRevision, type Outcome, type Write } from "../base-storage.ts";
import type { Changes, Oid, StorageCapabilities, StoredRecord, Tid, TransactionInfo } from "../storage.ts";
import { flags, openDatabases, openEnvironment, type Databases } from "./databases.ts";
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

export class LmdbStorage extends BaseStorage {
  /** The store's identity (kept in its marker). */
  readonly id: string;
  readonly capabilities: StorageCapabilities = { synchronous: true, history: true };

  readonly #root: RootDatabase;
  readonly #db: Databases;
  readonly #commitFlags: number;
  /** A committed tid: every read transaction started from now on includes it. */
  #knownTid: Tid = 0;
  /** Reserved oids not handed out yet: [#oidNext, #oidEnd). */
  #oidNext: Oid = 0;
  #oidEnd: Oid = 0;

  private constructor(url: string, root: RootDatabase, db: Databases, options: LmdbStorageOptions) {
    super(url, { readOnly: options.readOnly === true });
    this.id = db.id;
    this.#root = root;
    this.#db = db;
    this.#commitFlags = options.durability === "relaxed" ? flags.RELAXED : flags.DURABLE;
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
    const root = await openEnvironment(path, readOnly);
    try {
      const storage = new LmdbStorage(path, root, openDatabases(root, path, create), options);
      storage.#knownTid = storage.#readLastTid();
      return storage;
    } catch (err) {
      await root.close();
      throw err;
    }
  }

  // --- reads -------------------------------------------------------------------------------

  /** Start reading from the newest committed state (see "Freshness" above). */
  protected override _readNewest(): Tid {
    this.#root.resetReadTxn();
    this.#knownTid = Math.max(this.#knownTid, this.#readLastTid());
    return this.#knownTid;
  }

  protected override _readAt(at: Tid): void {
    if (at > this.#knownTid) this._readNewest();
  }

  /** The revision of `oid` current at snapshot `at`: one get when "current" is old enough. */
  protected override _loadAt(oid: Oid, at: Tid): StoredRecord | null {
    try {
      const current = this.#db.current.getBinaryFast(oid);
      if (current === undefined) return null;
      const serial = L.revisionSerial(current, oid);
      if (serial <= at) return { oid, serial, data: L.revisionData(current) };
      return this.#historyAtOrBefore(oid, at);
    } catch (err) {
      throw this.#readFailure(err, oid);
    }
  }

  /**
   * Lends a view of lmdb-js's reusable read buffer. A value of 16 MiB or more comes instead
   * as a view of the memory map, whose pages other writers reuse once lmdb-js lets its
   * read snapshot go (on a timer, with no call on this storage): that one is copied.
   */
  protected override _lendAt(oid: Oid, at: Tid): StoredRecord | null {
    try {
      const current = this.#db.current.getBinaryFast(oid);
      if (current === undefined) return null;
      const serial = L.revisionSerial(current, oid);
      // `isGlobal` marks lmdb-js's own reusable buffer (lmdb-js read.js).
      const reusable = (current as { isGlobal?: boolean }).isGlobal === true;
      if (serial <= at) return { oid, serial, data: reusable ? L.revisionView(current) : L.revisionData(current) };
      return this.#historyAtOrBefore(oid, at);
    } catch (err) {
      throw this.#readFailure(err, oid);
    }
  }

  /** `data` is a view of lmdb-js's read buffer, valid until the next read. */
  protected override _current(oid: Oid): CurrentRevision | null {
    try {
      const current = this.#db.current.getBinaryFast(oid);
      if (current === undefined) return null;
      return { serial: L.revisionSerial(current, oid), data: L.revisionView(current) };
    } catch (err) {
      throw this.#readFailure(err, oid);
    }
  }

  protected override _history(oid: Oid, max: number): StoredRecord[] {
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

  protected override _changesSince(since: Tid): Changes {
    // Everything below reads the read transaction _readNewest just renewed: one snapshot.
    const tid = this.#knownTid;
    if (since >= tid) return { tid, oids: [] };
    if (since < L.decodeU64(this.#db.meta.getBinary(L.KEY_LOG_START), L.KEY_LOG_START, 0)) return { tid, oids: null };
    const oids = new Set<Oid>();
    for (const { key, value } of this.#db.txns.getRange({ start: since + 1 })) {
      for (const oid of L.decodeTxn(value, key).oids) oids.add(oid);
    }
    return { tid, oids: [...oids] };
  }

  protected override _transactions(since: Tid, max: number): TransactionInfo[] {
    const range = this.#db.txns.getRange({ end: since, reverse: true, ...(max === Infinity ? {} : { limit: max }) });
    const out: TransactionInfo[] = [];
    for (const { key, value } of range) out.push({ tid: key, ...L.decodeTxn(value, key) });
    return out;
  }

  protected override _transactionOids(tid: Tid): readonly Oid[] | null {
    const logged = this.#db.txns.getBinary(tid);
    return logged === undefined ? null : L.decodeTxn(logged, tid).oids;
  }

  // --- writes ------------------------------------------------------------------------------

  protected override _newOids(count: number): Oid[] {
    const out: Oid[] = [];
    while (out.length < count) {
      if (this.#oidNext === this.#oidEnd) this.#reserveOids(Math.max(count - out.length, OID_BLOCK));
      const take = Math.min(count - out.length, this.#oidEnd - this.#oidNext);
      for (let i = 0; i < take; i++) out.push(this.#oidNext + i);
      this.#oidNext += take;
    }
    return out;
  }

  /**
   * One LMDB write transaction. A returned conflict list aborts it (nothing written); a
   * thrown error aborts it and propagates; a returned tid commits it.
   */
  protected override _atomically(body: () => Outcome): Outcome {
    let outcome: Outcome = [];
    this.#root.transactionSync(() => {
      outcome = body();
      return typeof outcome === "number" ? undefined : flags.ABORT;
    }, this.#commitFlags);
    if (typeof outcome === "number") this.#knownTid = Math.max(this.#knownTid, outcome);
    return outcome;
  }

  /**
   * Inside a write transaction: write `writes` under a new tid, moving each replaced current
   * revision into "history", log the transaction, and advance "lastTid" and "nextOid".
   */
  protected override _write(writes: readonly Write[], meta: Record<string, string>): Tid {
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

  protected override _close(): Promise<void> {
    return this.#root.close();
  }

  #readLastTid(): Tid {
    return L.decodeU64(this.#db.meta.getBinary(L.KEY_LAST_TID), L.KEY_LAST_TID, 0);
  }

  /** An LMDB failure while reading `oid`, as a `StorageError` that names the oid. */
  #readFailure(err: unknown, oid: Oid): StorageError {
    if (err instanceof StorageError) return err;
    return new StorageError(`reading object ${oid} from ${this.url} failed: ${(err as Error).message}`, { oid, cause: err });
  }

  /** The newest revision of `oid` in "history" with serial <= `at`. */
  #historyAtOrBefore(oid: Oid, at: Tid): StoredRecord | null {
    for (const { value } of this.#db.history.getRange({ start: [oid, at], end: [oid], reverse: true, limit: 1 })) {
      return { oid, serial: L.revisionSerial(value, oid), data: L.revisionData(value) };
    }
    return null;
  }

  /** Reserve `count` oids in one (relaxed) write transaction; see _write for why relaxed is safe. */
  #reserveOids(count: number): void {
    const meta = this.#db.meta;
    this.#root.transactionSync(() => {
      const next = L.decodeU64(meta.getBinary(L.KEY_NEXT_OID), L.KEY_NEXT_OID, 1);
      meta.putSync(L.KEY_NEXT_OID, L.encodeU64(next + count));
      this.#oidNext = next;
      this.#oidEnd = next + count;
    }, flags.RELAXED);
  }
}
