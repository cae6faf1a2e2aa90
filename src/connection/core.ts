/**
 * The internals of one connection (the public `Connection` holds one): its state, and the
 * callbacks persistent objects make (`Jar`). The work is done by the modules beside it:
 * object-loader.ts (installing loaded state), snapshot.ts (transaction boundaries), commit.ts
 * (the commit rounds and the transaction's phase), conflict-resolution.ts, bulk-loads.ts
 * (prefetch, closures, plans). Not exported from the package.
 */
import { ObjectNotFoundError, TransactionError } from "../errors.ts";
import { NEW, isPersistent, metaOf, type Jar, type Meta, type Persistent, type Token } from "../persistent/persistent.ts";
import type { Oid, Storage, Tid } from "../storage/storage.ts";
import { ObjectCache } from "./object-cache.ts";
import { Phase } from "./phase.ts";

/** Counters since the connection opened (or `resetStats()`). */
export interface ConnectionStats {
  roundTrips: number;
  loads: number;
  bytesRead: number;
  bytesWritten: number;
  cacheHits: number;
  commits: number;
  conflictsResolved: number;
}

export const emptyStats = (): ConnectionStats => ({
  roundTrips: 0,
  loads: 0,
  bytesRead: 0,
  bytesWritten: 0,
  cacheHits: 0,
  commits: 0,
  conflictsResolved: 0,
});

/** What a connection needs from its DB. */
export interface ConnectionHost {
  readonly storage: Storage;
  /** A connection was closed: take it back into the pool. */
  release(conn: object): void;
  /** A connection moved to snapshot `tid`: new connections can start there. */
  noteTid(tid: Tid): void;
}

/**
 * For amberdb/testing: the live connections (to sum their stats) and, while a helper is
 * counting, loads by class name.
 */
export const accounting = {
  live: new Set<WeakRef<{ readonly stats: ConnectionStats }>>(),
  byClass: null as Map<string, number> | null,
};

export function noteLoad(className: string): void {
  const m = accounting.byClass;
  if (m !== null) m.set(className, (m.get(className) ?? 0) + 1);
}

export interface CoreOptions {
  cacheSize?: number;
  cacheBytes?: number;
  at?: Tid;
  strict?: boolean;
}

export abstract class Core implements Jar {
  readonly stats: ConnectionStats;
  readonly cache: ObjectCache;
  readonly storage: Storage;
  /** The snapshot (tid) a historical view reads; undefined for a current connection. */
  readonly at: Tid | undefined;
  /** The tid of the snapshot this transaction reads. */
  tid: Tid;
  /** The transaction's phase (see commit.ts). */
  phase: number = Phase.ACTIVE;
  /** Set when a BTree replay failed part-way: commit raises it until abort (phase DOOMED). */
  doomed: Error | null = null;
  /**
   * This checkout's token: every object of the connection handed out since it was opened
   * (or taken from its pool) carries it; closing ends it, and the objects become stale.
   */
  token: Token = { ok: true };
  /** Objects that became CHANGED in this transaction (each once; a replay may add again). */
  changedList: Persistent[] = [];
  /** Objects that handed out a nested mutable value in this transaction (each once). */
  handedList: Persistent[] = [];
  /** BTree pieces found changed in place by comparison (their changes cannot be replayed). */
  changedInPlace = new Set<Meta>();
  readCurrent = new Map<Persistent, Meta>();
  readonly strictDefault: boolean;
  strict: boolean;
  /** While a plan installs its records: nothing is evicted and strict mode is off. */
  installingPlan = false;
  /** The plan group each object was last realized in (for strict-mode hints). */
  planGroups = new WeakMap<Meta, string>();
  /** The storage session this transaction began in (remote storages; see Storage.session). */
  session: number | undefined;
  /** Counts transactions: a load that was in flight across a boundary is dropped. */
  txn = 0;
  /** Objects a BTree replay kept at an older serial although they changed (conflict-resolution.ts). */
  staleKept: Persistent[] = [];
  /** Notes objects keep for this transaction (Jar.transactionNotes), or null. */
  notes: Map<object, unknown> | null = null;
  /**
   * The stored state bytes each object of a class with `resolveConflict` was read at: the
   * "original" given to the hook. Kept only for such classes.
   */
  readonly originals = new WeakMap<Meta, { bytes: Uint8Array; shared: boolean; version: number }>();
  /** Eviction callbacks for the cache (jar.ts): any unchanged object, or (in the middle of a
   *  transaction) only those that handed out no nested value in it. */
  abstract readonly evictCb: (obj: Persistent, meta: Meta) => boolean;
  abstract readonly evictFlatCb: (obj: Persistent, meta: Meta) => boolean;

  constructor(
    readonly host: ConnectionHost,
    /** The public connection (what `connectionOf` returns). */
    readonly owner: object,
    tid: Tid,
    options: CoreOptions,
  ) {
    this.storage = host.storage;
    const cacheSize = options.cacheSize ?? 10_000;
    const cacheBytes = options.cacheBytes ?? 64 * 1024 * 1024;
    if (!Number.isInteger(cacheSize) || cacheSize < 1) {
      throw new RangeError(`cacheSize must be a positive integer, got ${String(cacheSize)}`);
    }
    if (!(cacheBytes > 0)) throw new RangeError(`cacheBytes must be positive, got ${String(cacheBytes)}`);
    this.cache = new ObjectCache(cacheSize, cacheBytes);
    this.stats = emptyStats();
    this.at = options.at;
    this.tid = options.at ?? tid;
    this.strictDefault = options.strict === true;
    this.strict = this.strictDefault;
    this.session = this.storage.session;
    this.token.ok = this.at === undefined;
  }

  // --- Jar: called by persistent objects (implemented in jar.ts) ----------------------

  abstract activate(obj: Persistent, meta: Meta): void;
  abstract checkWrite(obj: Persistent, meta: Meta): void;
  abstract isDirty(obj: Persistent, meta: Meta): boolean;
  abstract refreshContainers(obj: Persistent, meta: Meta): void;
  abstract handedOut(obj: Persistent, meta: Meta): void;
  abstract changed(obj: Persistent, meta: Meta): void;

  transactionNotes(): Map<object, unknown> {
    return (this.notes ??= new Map());
  }
}

/** The error for touching an object whose checkout has ended. */
export function stale(c: Core, meta: Meta, what: "read" | "change"): TransactionError {
  const verb = what === "read" ? "load" : "change";
  const why = c.phase !== Phase.CLOSED ? "a transaction of a connection that has since been closed (returned to its pool)" : "a connection that is closed";
  return new TransactionError(
    `cannot ${verb} ${meta.className}#${meta.oid}: it belongs to ${why}; ` +
      `get the object again in the current transaction (conn.root(), conn.get(${meta.oid}) or a reference from a current object)`,
    "stale-object",
  );
}

export function assertOpen(c: Core, what: string): void {
  if (c.phase === Phase.CLOSED) throw new TransactionError(`${what}() on a closed connection; open one with db.open()`, "closed");
}

export function own(c: Core, obj: Persistent, what: string): Meta {
  if (!isPersistent(obj)) throw new TypeError(`${what}() expects a persistent object`);
  const m = metaOf(obj);
  if (m.jar !== null && m.jar !== c) {
    throw new TransactionError(`${what}(): ${m.className}#${m.oid} belongs to another connection`, "foreign-object");
  }
  if (m.jar === c && m.state !== NEW && m.token !== c.token) throw stale(c, m, "read");
  return m;
}

/**
 * A remote storage that reconnected may have missed invalidations: a transaction that
 * began before must not go on reading or commit.
 */
export function checkSession(c: Core): void {
  if (c.storage.session === c.session) return;
  throw new TransactionError(
    `the connection to ${c.storage.url} was lost and made again during this transaction; ` +
      `it may have missed changes, so abort it and run it again (db.transact does so)`,
    "disconnected",
  );
}

export function notFound(c: Core, oid: Oid, className: string): ObjectNotFoundError {
  const what = className === "" ? "" : ` (a ${className} referenced from another object)`;
  return new ObjectNotFoundError(oid, `${what} at snapshot ${c.tid}`);
}

