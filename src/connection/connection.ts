/**
 * A Connection: one object cache, one transaction at a time, one consistent snapshot.
 *
 * - Snapshot isolation: every load reads the revision current at the snapshot the
 *   transaction began with. A transaction begins when the connection is opened and again
 *   right after each commit or abort; that is when invalidations (objects other
 *   transactions changed) are applied, never in the middle of a transaction.
 * - Identity: one oid maps to one object per checkout of the connection (`ObjectCache`);
 *   closing it ends the checkout, and its objects become stale.
 * - Changes are seen when they happen (field accessors, see persistent/fields.ts); a commit
 *   writes what the transaction changed and what it handed out and changed in place.
 * - Commit is two-phase against the storage: vote (conflicts come back as data), then
 *   finish (atomic, durable). A conflict leaves the transaction's changes in place and
 *   raises `ConflictError`; `abort()` (or `db.transact`) then discards them.
 *
 * This class is the public API only; the work is done by the connection's internals
 * (core.ts and the modules beside it), which persistent objects call back.
 */
import { PersistentMap as PersistentMapClass, type PersistentMap } from "../persistent/persistent-map.ts";
import { CHANGED, GHOST, NEW, metaOf, needsLoad, type Persistent } from "../persistent/persistent.ts";
import { ROOT_OID, type Oid, type StoredRecord, type Tid } from "../storage/storage.ts";
import { readEnvelope } from "../codec/record.ts";
import { Plan } from "../loading/plan.ts";
import { TransactionError } from "../errors.ts";
import { loadClosure, planHost, prefetch } from "./bulk-loads.ts";
import { commit } from "./commit.ts";
import { Phase } from "./phase.ts";
import { accounting, assertOpen, emptyStats, own, type ConnectionHost, type ConnectionStats } from "./core.ts";
import type { Core } from "./core.ts";
import { ConnectionJar } from "./jar.ts";
import { decodeRecord, evict, install, loadOne, objectFor, reinstance } from "./object-loader.ts";
import { begin, discardChanges } from "./snapshot.ts";

export { accounting, type ConnectionHost, type ConnectionStats };

export interface ConnectionOptions {
  /** Loaded objects kept in memory before the least recently used are evicted (default 10,000). */
  cacheSize?: number;
  /** Bytes of loaded records kept before eviction (default 64 MiB). */
  cacheBytes?: number;
  /** Open a read-only view of the database as of this tid. */
  at?: Tid;
  /**
   * Strict mode: touching a ghost that was not loaded beforehand (by `prefetch`,
   * `loadClosure` or a loading plan) throws `NotLoadedError` instead of loading it.
   */
  strict?: boolean;
}

let coreOfImpl: (conn: Connection) => Core;

export class Connection implements AsyncDisposable {
  readonly #c: Core;

  /** @internal Use `db.open()`. */
  constructor(host: ConnectionHost, tid: Tid, options: ConnectionOptions = {}) {
    this.#c = new ConnectionJar(host, this, tid, options);
    accounting.live.add(new WeakRef(this));
  }

  static {
    coreOfImpl = (conn) => conn.#c;
  }

  /** Counters since the connection opened (or `resetStats()`). */
  get stats(): ConnectionStats {
    return this.#c.stats;
  }

  /** The tid of the snapshot this transaction reads. */
  get snapshotTid(): Tid {
    return this.#c.tid;
  }

  /**
   * Strict mode (see ConnectionOptions.strict). A pooled connection gets its DB's setting
   * back when it is handed out again.
   */
  get strict(): boolean {
    return this.#c.strict;
  }

  set strict(value: boolean) {
    if (typeof value !== "boolean") throw new TypeError(`conn.strict must be a boolean, got ${typeof value}`);
    this.#c.strict = value;
  }

  /** Is this a read-only view of the past (`db.open({ at })`)? */
  get isHistorical(): boolean {
    return this.#c.at !== undefined;
  }

  /** Is the connection open (not closed back into its pool)? */
  get isOpen(): boolean {
    return this.#c.phase !== Phase.CLOSED;
  }

  /** Objects with their state in memory, and the bytes they hold. */
  get cacheInfo(): { loaded: number; bytes: number; known: number } {
    const cache = this.#c.cache;
    return { loaded: cache.loadedCount, bytes: cache.loadedBytes, known: cache.knownCount };
  }

  resetStats(): void {
    Object.assign(this.#c.stats, emptyStats());
  }

  /** The root object: a PersistentMap every database has. */
  root<T = any>(): PersistentMap<string, T> {
    const c = this.#c;
    assertOpen(c, "root");
    const root = objectFor(c, ROOT_OID, "amber.PersistentMap");
    const m = metaOf(root);
    // Loaded explicitly, also in strict mode: every transaction starts here.
    if (needsLoad(m)) {
      const rec = loadOne(c, ROOT_OID, m.className);
      install(c, root, m, rec, readEnvelope(rec.data, rec.oid));
    }
    return root as never;
  }

  /**
   * The object with `oid`, loading it if this connection does not hold it yet (its class
   * is only known from its record). Raises `ObjectNotFoundError` if it does not exist.
   */
  get(oid: Oid): Persistent {
    const c = this.#c;
    assertOpen(c, "get");
    if (!Number.isSafeInteger(oid) || oid < 0) throw new TypeError(`get(): oid must be a non-negative integer, got ${String(oid)}`);
    const known = c.cache.get(oid);
    if (known !== undefined) {
      if (metaOf(known).token === c.token) {
        c.stats.cacheHits++;
        return known;
      }
      return reinstance(c, known, metaOf(known));
    }
    const rec = loadOne(c, oid, "");
    const env = readEnvelope(rec.data, oid);
    const obj = objectFor(c, oid, env.className);
    install(c, obj, metaOf(obj), rec, env);
    return obj;
  }

  /** A loading plan on this connection (see loading/plan.ts). */
  plan(): Plan {
    assertOpen(this.#c, "plan");
    return new Plan(planHost(this.#c));
  }

  /**
   * Load every ghost among `objects` in one round trip (objects already loaded, new or of
   * no connection are skipped). Returns how many were loaded. With `paths` (dotted property
   * paths such as `"reporter.branding"`), the short form of a loading plan: `objects` and
   * everything the paths reach, in one round trip.
   */
  prefetch(objects: Iterable<Persistent>, paths?: readonly string[]): Promise<number> {
    return prefetch(this.#c, objects, paths);
  }

  /**
   * Load `obj` and every object reachable from it, in one round trip (on a remote storage
   * the server walks the stored references), as of this transaction's snapshot. Objects
   * this connection has loaded already are walked through but not sent again. Stops at
   * `maxObjects` records (default: the connection's cacheSize) or `maxBytes` of record
   * data (default: its cacheBytes). Returns what it loaded and whether a limit cut it short.
   */
  loadClosure(obj: Persistent, options: { maxObjects?: number; maxBytes?: number } = {}): Promise<{ loaded: number; truncated: boolean }> {
    return loadClosure(this.#c, obj, options);
  }

  /** Make the commit fail with a conflict if `obj` was changed by another transaction since it was read. */
  readCurrent(obj: Persistent): void {
    const c = this.#c;
    assertOpen(c, "readCurrent");
    const m = own(c, obj, "readCurrent");
    if (m.state === NEW) return;
    if (m.state === GHOST) c.activate(obj, m);
    c.readCurrent.set(obj, m);
  }

  /**
   * Commit every change of this transaction (and the new objects they reach) atomically.
   * Raises `ConflictError` if another transaction changed an object this one changed or
   * marked `readCurrent`; the changes are then still in place, to be aborted. Awaiting it
   * lets the event loop run.
   */
  commit(): Promise<void> {
    return commit(this.#c);
  }

  /**
   * Discard this transaction's changes and begin a new transaction on a fresh snapshot.
   * Every object the transaction changed holds its stored state again (installed from the
   * record it was loaded with, on its next touch). Never throws; during a commit in flight
   * it does nothing (the commit decides, and a failed commit leaves its changes to abort).
   */
  abort(): void {
    const c = this.#c;
    if (c.phase === Phase.CLOSED || c.phase === Phase.COMMITTING || c.phase === Phase.REPLAYING) return;
    discardChanges(c);
    begin(c);
  }

  /**
   * Discard anything pending and return the connection (with its cache) to its DB's pool.
   * The objects of this checkout become stale: changing one throws ("stale-object"), and
   * the next checkout gets its own instances. Begins no transaction (the next checkout does).
   */
  async close(): Promise<void> {
    const c = this.#c;
    if (c.phase === Phase.CLOSED) return;
    if (c.phase === Phase.COMMITTING || c.phase === Phase.REPLAYING) {
      throw new TransactionError("close() called while a commit of this connection is in flight; await the commit first", "in-flight");
    }
    discardChanges(c);
    c.phase = Phase.CLOSED;
    c.token.ok = false;
    c.host.release(this);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * Trim the cache to `cacheSize`/`cacheBytes` now, in the middle of a transaction,
   * evicting least-recently-used unchanged objects, including ones that handed out nested
   * arrays, Maps or Sets in this transaction (which happens automatically only at
   * transaction boundaries). Do not keep using a nested value taken from an object across
   * this call: if its object was evicted, changes to it are not seen. For long read-only
   * traversals.
   */
  cacheGC(): void {
    const c = this.#c;
    if (c.cache.overBudget()) c.cache.shrink(c.evictCb);
  }

  /** Evict every unchanged loaded object back to a ghost (the caveat of `cacheGC` applies). */
  cacheMinimize(): void {
    const c = this.#c;
    for (const [obj, meta] of c.cache.loadedObjects()) evict(c, obj, meta);
  }
}

/** @internal The internals of a connection, for its DB (db.ts). */
export function coreOf(conn: Connection): Core {
  return coreOfImpl(conn);
}

/** @internal Reopen a pooled connection: a new checkout, a fresh transaction, nothing pending. */
export function reopen(conn: Connection): void {
  const c = coreOf(conn);
  c.phase = Phase.ACTIVE;
  c.token = { ok: c.at === undefined };
  c.strict = c.strictDefault;
  begin(c);
}

/**
 * @internal Drop the cache for good (the DB is closing or the pool is full). Objects the
 * application still holds keep the state they have; touching a ghost raises "stale-object".
 */
export function discard(conn: Connection): void {
  const c = coreOf(conn);
  if (c.phase === Phase.ACTIVE || c.phase === Phase.DOOMED) discardChanges(c);
  c.phase = Phase.CLOSED;
  c.token.ok = false;
  c.cache.clear();
}

/** @internal Begin the first transaction of a new connection. */
export function beginFirst(conn: Connection): void {
  conn.abort();
}

/** @internal Decode a record's state without installing it (history). */
export function decodeHistory(conn: Connection, rec: StoredRecord): Record<string, unknown> {
  return decodeRecord(coreOf(conn), rec);
}

/** @internal Create the root object of a new database (oid 0) and commit it. */
export async function createRoot(conn: Connection): Promise<void> {
  const c = coreOf(conn);
  const root = new PersistentMapClass();
  const m = metaOf(root);
  m.jar = c;
  m.token = c.token;
  m.oid = ROOT_OID;
  m.className = "amber.PersistentMap";
  m.state = CHANGED;
  c.changedList.push(root);
  c.cache.add(ROOT_OID, root);
  await commit(c);
}
