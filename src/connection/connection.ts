/**
 * A Connection: one object cache, one transaction at a time, one consistent snapshot.
 *
 * - Snapshot isolation: every load reads the revision current at `#tid`, the snapshot the
 *   transaction began with. A transaction begins when the connection is opened and again
 *   right after each commit or abort; that is when invalidations (objects other
 *   transactions changed) are applied, never in the middle of a transaction.
 * - Identity: one oid maps to one object per connection (`ObjectCache`).
 * - Changes are found by dirty checking loaded objects at commit (see object-state.ts);
 *   new objects reachable from changed ones are stored with them.
 * - Commit is two-phase against the storage: vote (conflicts come back as data), then
 *   finish (atomic, durable). A conflict leaves the transaction's changes in place and
 *   raises `ConflictError`; `abort()` (or `db.transact`) then discards them.
 */
import { readEnvelope, type ParsedEnvelope } from "../codec/record.ts";
import { decodeState } from "../codec/state.ts";
import {
  ConflictError,
  NotLoadedError,
  ObjectNotFoundError,
  StorageError,
  TransactionError,
  type ConflictDetail,
} from "../errors.ts";
import { BrokenObject, keepOriginal } from "../persistent/broken-object.ts";
import { classByName, persistentInfo } from "../persistent/class-registry.ts";
import { BTree, bucketOf, lookupEntry, type BTreeKey } from "../collections/btree.ts";
import { compareKeys } from "../collections/key-compare.ts";
import { BTreeBucket, BTreeNode } from "../collections/btree-bucket.ts";
import { CHANGED_IN_PLACE, netChanges, replay, replayable, type NetChange, type TreeLog } from "../collections/btree-merge.ts";
import { PersistentRef, RefTable, liveState, resolverOf, type State } from "./conflict.ts";
import { PersistentList } from "../persistent/persistent-list.ts";
import { PersistentMap } from "../persistent/persistent-map.ts";
import { PersistentSet } from "../persistent/persistent-set.ts";
import {
  CHANGED,
  GHOST,
  LOCKED,
  NEW,
  SAVED,
  STALE_CONTAINERS,
  Meta,
  clearState,
  hasCustomState,
  isPersistent,
  makeGhost,
  metaOf,
  needsLoad,
  type Jar,
  type Persistent,
  type Token,
} from "../persistent/persistent.ts";
import { dropAddedFields, giveAccessors, keepAddedFields } from "../persistent/fields.ts";
import { applyDefaults } from "./class-defaults.ts";
import type {
  Changes,
  CommitRequest,
  PlanStep,
  Oid,
  Storage,
  StorageConflict,
  StoredRecord,
  Tid,
} from "../storage/storage.ts";
import { ROOT_OID } from "../storage/storage.ts";
import { Plan, type Group, type PlanHost } from "../loading/plan.ts";
import { ObjectCache } from "./object-cache.ts";
import { buildRequest, collectWork, conflictErrorFor, encodeChanged } from "./transaction.ts";
import { dropState, holdsContainers, putState, sameAsStored, snapshotObject, type ObjectSnapshot } from "./object-state.ts";
import { encodeState } from "../codec/state.ts";

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

/** @internal What a connection needs from its DB. */
export interface ConnectionHost {
  readonly storage: Storage;
  /** A connection was closed: take it back into the pool. */
  release(conn: Connection): void;
  /** A connection moved to snapshot `tid`: new connections can start there. */
  noteTid(tid: Tid): void;
}

/**
 * @internal For amberdb/testing: the live connections (to sum their stats) and, while a
 * helper is counting, loads by class name.
 */
export const accounting = {
  live: new Set<WeakRef<Connection>>(),
  byClass: null as Map<string, number> | null,
};

function noteLoad(className: string): void {
  const m = accounting.byClass;
  if (m !== null) m.set(className, (m.get(className) ?? 0) + 1);
}

const emptyStats = (): ConnectionStats => ({
  roundTrips: 0,
  loads: 0,
  bytesRead: 0,
  bytesWritten: 0,
  cacheHits: 0,
  commits: 0,
  conflictsResolved: 0,
});

export class Connection implements Jar, AsyncDisposable, PlanHost {
  readonly stats: ConnectionStats = emptyStats();
  readonly #host: ConnectionHost;
  readonly #storage: Storage;
  readonly #cache: ObjectCache;
  readonly #at: Tid | undefined;
  #tid: Tid;
  #open = true;
  #committing = false;
  /**
   * This checkout's token: every object of the connection handed out since it was opened
   * (or taken from its pool) carries it; closing ends it, and the objects become stale.
   */
  #token: Token = { ok: true };
  /** Objects that became CHANGED in this transaction (each once). */
  #changedList: Persistent[] = [];
  /** Objects that handed out a nested mutable value in this transaction (each once). */
  #handedList: Persistent[] = [];
  /** BTree pieces found changed in place by comparison (their changes cannot be replayed). */
  #changedInPlace = new Set<Meta>();
  #readCurrent = new Map<Persistent, Meta>();
  readonly #strictDefault: boolean;
  /** Set while a plan installs its records: nothing is evicted until it is done. */
  #holdEviction = false;
  /** The plan group each object was last realized in (for strict-mode hints). */
  #planGroups = new WeakMap<Meta, string>();
  #strict: boolean;
  /** The storage session this transaction began in (remote storages; see Storage.session). */
  #session: number | undefined;
  /** Counts transactions: a load that was in flight across a boundary is dropped. */
  #txn = 0;
  /**
   * Set when a BTree replay failed part-way: the transaction's tree changes are gone, so
   * it may not commit what is left; commit() raises this until abort().
   */
  #doomed: Error | null = null;
  #replayFailed = false;
  /** Objects a BTree replay kept at an older serial although they changed (see #replayTrees). */
  #staleKept: Persistent[] = [];
  /** Notes objects keep for this transaction (Jar.transactionNotes), or null. */
  #notes: Map<object, unknown> | null = null;
  /**
   * The stored state bytes each object of a class with `resolveConflict` was read at: the
   * "original" given to the hook. Kept only for such classes.
   */
  readonly #originals = new WeakMap<Meta, { bytes: Uint8Array; shared: boolean; version: number }>();

  /** @internal Use `db.open()`. */
  constructor(host: ConnectionHost, tid: Tid, options: ConnectionOptions = {}) {
    this.#host = host;
    this.#storage = host.storage;
    const cacheSize = options.cacheSize ?? 10_000;
    const cacheBytes = options.cacheBytes ?? 64 * 1024 * 1024;
    if (!Number.isInteger(cacheSize) || cacheSize < 1) {
      throw new RangeError(`cacheSize must be a positive integer, got ${String(cacheSize)}`);
    }
    if (!(cacheBytes > 0)) throw new RangeError(`cacheBytes must be positive, got ${String(cacheBytes)}`);
    this.#cache = new ObjectCache(cacheSize, cacheBytes);
    this.#at = options.at;
    this.#tid = options.at ?? tid;
    this.#strictDefault = options.strict === true;
    accounting.live.add(new WeakRef(this));
    this.#strict = this.#strictDefault;
    this.#session = this.#storage.session;
    this.#token.ok = this.#at === undefined;
  }

  /** @internal The token of this checkout (see persistent.ts). */
  get token(): Token {
    return this.#token;
  }

  /** The tid of the snapshot this transaction reads. */
  get snapshotTid(): Tid {
    return this.#tid;
  }

  /**
   * Strict mode (see ConnectionOptions.strict). A pooled connection gets its DB's setting
   * back when it is handed out again.
   */
  get strict(): boolean {
    return this.#strict;
  }

  set strict(value: boolean) {
    if (typeof value !== "boolean") throw new TypeError(`conn.strict must be a boolean, got ${typeof value}`);
    this.#strict = value;
  }

  /** Is this a read-only view of the past (`db.open({ at })`)? */
  get isHistorical(): boolean {
    return this.#at !== undefined;
  }

  /** Is the connection open (not closed back into its pool)? */
  get isOpen(): boolean {
    return this.#open;
  }

  /** Objects with their state in memory, and the bytes they hold. */
  get cacheInfo(): { loaded: number; bytes: number; known: number } {
    return { loaded: this.#cache.loadedCount, bytes: this.#cache.loadedBytes, known: this.#cache.knownCount };
  }

  resetStats(): void {
    Object.assign(this.stats, emptyStats());
  }

  /** The root object: a PersistentMap every database has. */
  root<T = any>(): PersistentMap<string, T> {
    this.#assertOpen("root");
    const root = this.#objectFor(ROOT_OID, "amber.PersistentMap");
    const m = metaOf(root);
    // Loaded explicitly, also in strict mode: every transaction starts here.
    if (needsLoad(m)) {
      const rec = this.#loadOne(ROOT_OID, m.className);
      this.#install(root, m, rec, readEnvelope(rec.data, rec.oid));
    }
    return root as never;
  }

  /**
   * The object with `oid`, loading it if this connection does not hold it yet (its class
   * is only known from its record). Raises `ObjectNotFoundError` if it does not exist.
   */
  get(oid: Oid): Persistent {
    this.#assertOpen("get");
    if (!Number.isSafeInteger(oid) || oid < 0) throw new TypeError(`get(): oid must be a non-negative integer, got ${String(oid)}`);
    const known = this.#cache.get(oid);
    if (known !== undefined) {
      if (metaOf(known).token === this.#token) {
        this.stats.cacheHits++;
        return known;
      }
      return this.#reinstance(known, metaOf(known));
    }
    const rec = this.#loadOne(oid, "");
    const env = readEnvelope(rec.data, oid);
    const obj = this.#objectFor(oid, env.className);
    this.#install(obj, metaOf(obj), rec, env);
    return obj;
  }

  /** A loading plan on this connection (see loading/plan.ts). */
  plan(): Plan {
    this.#assertOpen("plan");
    return new Plan(this);
  }

  /**
   * Load every ghost among `objects` in one round trip (objects already loaded, new or
   * of no connection are skipped). Returns how many were loaded. With `paths` (dotted
   * property paths such as `"reporter.branding"`), the short form of a loading plan:
   * `objects` and everything the paths reach, in one round trip.
   */
  async prefetch(objects: Iterable<Persistent>, paths?: readonly string[]): Promise<number> {
    this.#assertOpen("prefetch");
    if (paths !== undefined) return this.#prefetchPaths(objects, paths);
    const ghosts: Persistent[] = [];
    const seen = new Set<Oid>();
    for (const obj of objects) {
      const m = this.#own(obj, "prefetch");
      if (needsLoad(m) && !seen.has(m.oid)) {
        seen.add(m.oid);
        ghosts.push(obj);
      }
    }
    if (ghosts.length === 0) return 0;
    const oids = ghosts.map((g) => metaOf(g).oid);
    this.stats.roundTrips++;
    const txn = this.#txn;
    const records = await this.#storage.load(oids, this.#tid);
    // The transaction ended (commit, abort) while the load was in flight: its records
    // belong to the old snapshot. The objects stay ghosts and load when touched.
    if (txn !== this.#txn || !this.#open) return 0;
    this.#checkSession();
    let loaded = 0;
    records.forEach((rec, i) => {
      const obj = ghosts[i]!;
      const m = metaOf(obj);
      if (rec === null) throw this.#notFound(m.oid, m.className);
      if (!needsLoad(m)) return; // loaded meanwhile (an upgrade hook, another prefetch)
      this.stats.loads++;
      noteLoad(m.className);
      this.stats.bytesRead += rec.data.length;
      this.#install(obj, m, rec, readEnvelope(rec.data, rec.oid), false);
      loaded++;
    });
    return loaded;
  }

  /**
   * Load `obj` and every object reachable from it, in one round trip (on a remote storage
   * the server walks the stored references), as of this transaction's snapshot. Objects
   * this connection has loaded already are walked through but not sent again. Stops at
   * `maxObjects` records (default: the connection's cacheSize) or `maxBytes` of record
   * data (default: its cacheBytes). Returns what it loaded and whether a limit cut it short.
   */
  async loadClosure(obj: Persistent, options: { maxObjects?: number; maxBytes?: number } = {}): Promise<{ loaded: number; truncated: boolean }> {
    this.#assertOpen("loadClosure");
    const m = this.#own(obj, "loadClosure");
    if (m.state === NEW || m.oid < 0) return { loaded: 0, truncated: false };
    const have: Oid[] = [];
    for (const [, meta] of this.#cache.loadedObjects()) if (meta.state !== NEW) have.push(meta.oid);
    this.stats.roundTrips++;
    const txn = this.#txn;
    const result = await this.#storage.loadClosure(m.oid, this.#tid, {
      maxObjects: options.maxObjects ?? this.#cache.cacheSize,
      maxBytes: options.maxBytes ?? this.#cache.cacheBytes,
      have,
    });
    if (txn !== this.#txn || !this.#open) return { loaded: 0, truncated: result.truncated }; // see prefetch
    this.#checkSession();
    if (result.missing.includes(m.oid)) throw this.#notFound(m.oid, m.className);
    let loaded = 0;
    // Parse every envelope first: making ghosts for the references of the first records
    // must not evict records of the same closure before they are installed.
    for (const rec of result.records) {
      const env = readEnvelope(rec.data, rec.oid, true); // checked by the walk that found it (closure.ts)
      const target = this.#objectFor(rec.oid, env.className);
      const tm = metaOf(target);
      if (!needsLoad(tm)) continue;
      this.stats.loads++;
      noteLoad(env.className);
      this.stats.bytesRead += rec.data.length;
      this.#install(target, tm, rec, env, false);
      loaded++;
    }
    return { loaded, truncated: result.truncated };
  }

  async #prefetchPaths(objects: Iterable<Persistent>, paths: readonly string[]): Promise<number> {
    if (!Array.isArray(paths) || !paths.every((p) => typeof p === "string" && p.length > 0)) {
      throw new TypeError('prefetch(objects, paths): paths must be property paths such as ["reporter.branding"]');
    }
    const plan = this.plan();
    const root = plan.from(objects);
    const byPrefix = new Map<string, Group>();
    for (const path of paths) {
      let group: Group = root;
      let prefix = "";
      for (const prop of path.split(".")) {
        if (prop === "") throw new TypeError(`prefetch(): empty step in path ${JSON.stringify(path)}`);
        prefix += `.${prop}`;
        let next = byPrefix.get(prefix);
        if (next === undefined) {
          next = (group as Group<never>).follow(prop as never) as Group;
          byPrefix.set(prefix, next);
        }
        group = next;
      }
    }
    const before = this.stats.loads;
    await plan.realize();
    return this.stats.loads - before;
  }

  /** @internal PlanHost: the oid of a plan's starting object (null for a new one). */
  oidForPlan(obj: Persistent): number | null {
    const m = this.#own(obj, "plan.from");
    return m.state === NEW || m.oid < 0 ? null : m.oid;
  }

  /**
   * @internal PlanHost. The storage evaluates the plan over the stored records in one call
   * and everything it reached is installed; then the groups are worked out here, from the
   * objects themselves, so that changes this transaction made and has not committed count
   * (objects they reach that are not loaded yet cost one more round trip per step, only
   * then). Eviction waits until the plan is installed: a plan may exceed the cache.
   */
  async realizePlan(steps: PlanStep[], labels: string[], starts: Array<Persistent[] | null>): Promise<Persistent[][]> {
    this.#assertOpen("realize");
    const have: Oid[] = [];
    for (const [, meta] of this.#cache.loadedObjects()) if (meta.state !== NEW) have.push(meta.oid);
    this.stats.roundTrips++;
    const txn = this.#txn;
    const result = await this.#storage.loadPlan(steps, this.#tid, { have });
    const ended = () => {
      if (txn !== this.#txn || !this.#open) {
        throw new TransactionError("realize(): the transaction ended (commit or abort) while the plan was loading; realize a new plan", "in-flight");
      }
    };
    ended();
    this.#checkSession();
    const strict = this.#strict;
    this.#holdEviction = true;
    this.#strict = false;
    try {
      for (const rec of result.records) {
        const env = readEnvelope(rec.data, rec.oid, true); // checked by the walk (plan-walk.ts)
        const target = this.#objectFor(rec.oid, env.className);
        const tm = metaOf(target);
        if (!needsLoad(tm)) continue;
        this.stats.loads++;
        this.stats.bytesRead += rec.data.length;
        noteLoad(env.className);
        this.#install(target, tm, rec, env, false);
      }
      const dangling = result.missing[0];
      if (dangling !== undefined) {
        throw new ObjectNotFoundError(dangling.oid, ` at snapshot ${this.#tid}: a dangling reference, reached as ${dangling.path}`);
      }
      const groups: Persistent[][] = [];
      for (let i = 0; i < steps.length; i++) {
        const step = steps[i]!;
        const out = new Set<Persistent>();
        if (step.union !== undefined) {
          for (const g of step.union) for (const obj of groups[g]!) out.add(obj);
        } else if (step.follow !== undefined) {
          const sources = groups[step.follow]!;
          await this.#loadGhosts(sources);
          ended();
          for (const obj of sources) {
            checkFollowed(obj, step.prop!, labels[i]!);
            for (const item of itemsOf((obj as unknown as Record<string, unknown>)[step.prop!])) out.add(item);
          }
        } else {
          for (const obj of starts[i] ?? []) out.add(obj);
        }
        groups.push([...out]);
      }
      // The last groups' members are loaded too (their own references are not followed).
      for (const g of groups) await this.#loadGhosts(g);
      ended();
      groups.forEach((g, i) => {
        for (const obj of g) this.#planGroups.set(metaOf(obj), labels[i]!);
      });
      return groups;
    } finally {
      this.#holdEviction = false;
      this.#strict = strict;
    }
  }

  /** Load the ghosts among `objects` in one round trip, if there are any. */
  async #loadGhosts(objects: Persistent[]): Promise<void> {
    const ghosts = objects.filter((o) => needsLoad(metaOf(o)));
    if (ghosts.length > 0) await this.prefetch(ghosts);
  }

  /** Make the commit fail with a conflict if `obj` was changed by another transaction since it was read. */
  readCurrent(obj: Persistent): void {
    this.#assertOpen("readCurrent");
    const m = this.#own(obj, "readCurrent");
    if (m.state === NEW) return;
    if (m.state === GHOST) this.activate(obj, m);
    this.#readCurrent.set(obj, m);
  }

  /** @internal Decode a record's state without installing it (history). */
  decodeRecord(rec: StoredRecord): Record<string, unknown> {
    const env = readEnvelope(rec.data, rec.oid);
    return decodeState(env.data, this.#refsOf(env), env.shared, env.stateStart, env.stateEnd);
  }

  /** @internal Create the root object of a new database (oid 0) and commit it. */
  async createRoot(): Promise<void> {
    const root = new PersistentMap();
    const m = metaOf(root);
    m.jar = this;
    m.token = this.#token;
    m.oid = ROOT_OID;
    m.className = "amber.PersistentMap";
    m.state = CHANGED;
    this.#changedList.push(root);
    this.#cache.add(ROOT_OID, root);
    await this.commit();
  }

  // --- Jar: called by persistent objects ---------------------------------------------

  /** @internal */
  activate(obj: Persistent, meta: Meta): void {
    if (meta.token !== this.#token || !this.#open) {
      if (meta.record === null) throw this.#stale(meta, "read");
      this.#installStale(obj, meta);
      return;
    }
    if (meta.record !== null) {
      this.#installKept(obj, meta); // a soft ghost: its record is here, no storage call
      return;
    }
    if (this.#strict) throw this.#notLoaded(meta);
    const rec = this.#loadOne(meta.oid, meta.className);
    this.#install(obj, meta, rec, readEnvelope(rec.data, rec.oid));
  }

  /** The strict-mode error for touching the ghost of `meta`. */
  #notLoaded(meta: Meta): NotLoadedError {
    const steps: string[] = [];
    let m = meta;
    while (m.viaMeta !== null && steps.length < 3) {
      steps.unshift(m.viaPath);
      m = m.viaMeta;
    }
    const more = m.viaMeta !== null ? "…" : "";
    const path = steps.length === 0 ? "" : ` (reached as ${more}${m.className}#${m.oid}.${steps.join(".")})`;
    const parent = meta.viaMeta;
    const group = parent === null ? undefined : this.#planGroups.get(parent);
    const step =
      parent === null
        ? ""
        : group !== undefined
          ? `; the plan step ${group}.follow(${JSON.stringify(meta.viaPath)}) would have loaded it`
          : `; a plan step .follow(${JSON.stringify(meta.viaPath)}) on a group holding ${parent.className}#${parent.oid} would have loaded it`;
    return new NotLoadedError(
      meta.oid,
      meta.className,
      `${meta.className}#${meta.oid}${path} is not loaded, and strict mode forbids loading on touch${step} ` +
        `(load beforehand with a loading plan, conn.prefetch or conn.loadClosure, or set conn.strict = false)`,
    );
  }

  /** @internal */
  checkWrite(obj: Persistent, meta: Meta): void {
    if (meta.token !== this.#token || !this.#open) throw this.#stale(meta, "change");
    if (this.#committing) {
      throw new TransactionError(
        `cannot change ${meta.className}#${meta.oid} while a commit of its connection is in flight; ` +
          `await the commit first (changes now would belong to no transaction)`,
        "in-flight",
      );
    }
    if (this.#at !== undefined) {
      throw new TransactionError(`cannot change ${meta.className}#${meta.oid}: this is a read-only historical view`, "read-only");
    }
  }

  /** @internal */
  isDirty(obj: Persistent, meta: Meta): boolean {
    if (meta.state === CHANGED || meta.state === LOCKED) return true;
    if (meta.state !== SAVED || !meta.handed || meta.token !== this.#token) return false;
    try {
      return !sameAsStored(meta, snapshotObject(obj, meta, acceptAnyRef));
    } catch {
      return true; // holds something that cannot be stored: certainly not the stored state
    }
  }

  /**
   * @internal Nested values of `obj` may have been handed out in an earlier transaction:
   * install fresh copies from its record (its other values are the stored ones already).
   */
  refreshContainers(obj: Persistent, meta: Meta): void {
    meta.watch = meta.containers ? 1 : 0;
    const values = meta.values;
    const data = meta.record;
    if (values === null || data === null || meta.token !== this.#token || hasCustomState(obj)) return;
    const env = readEnvelope(data, meta.oid, true);
    const state = decodeState(env.data, this.#refsOf(env, meta), env.shared, env.stateStart, env.stateEnd);
    applyDefaults(Object.getPrototypeOf(obj) as object, state, Object.keys(state));
    for (const k of Object.keys(state)) {
      const v = state[k];
      if (typeof v === "object" && v !== null && !isPersistent(v)) values[k] = v;
    }
  }

  /** @internal A loaded object handed out a nested mutable value (see persistent.ts). */
  handedOut(obj: Persistent, meta: Meta): void {
    if (meta.handed || meta.token !== this.#token) return;
    meta.handed = true;
    this.#handedList.push(obj);
  }

  /** The error for touching an object whose checkout has ended. */
  #stale(meta: Meta, what: "read" | "change"): TransactionError {
    const verb = what === "read" ? "load" : "change";
    const why = this.#open ? "a transaction of a connection that has since been closed (returned to its pool)" : "a connection that is closed";
    return new TransactionError(
      `cannot ${verb} ${meta.className}#${meta.oid}: it belongs to ${why}; ` +
        `get the object again in the current transaction (conn.root(), conn.get(${meta.oid}) or a reference from a current object)`,
      "stale-object",
    );
  }

  /** @internal */
  transactionNotes(): Map<object, unknown> {
    return (this.#notes ??= new Map());
  }

  /** @internal */
  changed(obj: Persistent, meta: Meta): void {
    if (meta.state === SAVED) {
      if (meta.watch === STALE_CONTAINERS) this.refreshContainers(obj, meta);
      meta.state = CHANGED;
      this.#changedList.push(obj);
      this.#cache.touch(obj, meta);
    }
  }

  // --- transactions ---------------------------------------------------------------------

  /**
   * Commit every change of this transaction (and the new objects they reach) atomically.
   * Raises `ConflictError` if another transaction changed an object this one changed or
   * marked `readCurrent`; the changes are then still in place, to be aborted. Only what the
   * transaction touched is looked at: the objects it changed and those that handed out a
   * nested mutable value (encoded once, and written when they differ from their record).
   */
  async commit(): Promise<void> {
    this.#assertOpen("commit");
    if (this.#committing) {
      throw new TransactionError("commit() called while a commit of this connection is in flight", "in-flight");
    }
    if (this.#doomed !== null) throw this.#doomed;
    this.#committing = true;
    this.#token.ok = false;
    let adopted: Meta[] = [];
    let mergedByHooks = false;
    const rounds: Array<Array<[Persistent, Meta]>> = [];
    try {
      for (let round = 1; ; round++) {
        unlock(rounds);
        adopted = [];
        const { work, snaps } = collectWork(this, this.#changedList, this.#handedList, adopted, (obj, meta) => {
          // Found changed by comparison: a change in place of a nested value.
          if (isTreePiece(obj)) this.#changedInPlace.add(meta);
          this.changed(obj, meta);
        });
        if (this.#at !== undefined && work.length > 0) {
          throw new TransactionError("cannot commit changes in a read-only historical view", "read-only");
        }
        // Writes to these objects while the round is in flight are refused (fields.ts).
        for (const [, m] of work) if (m.state === CHANGED) m.state = LOCKED;
        rounds.push(work);
        if (work.length === 0) {
          // Nothing to write (also when a merge found its changes already committed). Objects
          // only marked readCurrent are checked, and no transaction is written.
          if (this.#readCurrent.size > 0 && this.#at === undefined) await this.#checkReadCurrent();
          this.#finishTransaction();
          await yieldToEventLoop();
          return;
        }
        this.#checkSession();
        if (adopted.length > 0) await this.#assignOids(adopted);
        let request = buildRequest(work, snaps, this.#readCurrent.values());
        // After a merge by hooks, finish at once: the check there is atomic (and a local
        // storage merges again inside it), and a second vote would only widen the window
        // in which another commit can slip in.
        const vote: boolean = !mergedByHooks;
        mergedByHooks = false;
        this.stats.roundTrips++;
        const conflicts: StorageConflict[] = vote ? await this.#storage.vote(request) : [];
        if (this.#storage.session !== this.#session) {
          await this.#storage.abort(request); // voted in a new session: this transaction read the old one
          this.#checkSession();
        }
        if (conflicts.length > 0) {
          await this.#storage.abort(request); // a storage that locks at vote releases here
          // Classes that resolve conflicts merge, and the transaction votes again.
          const trees: boolean = conflicts.some((c: StorageConflict) => this.#mayResolve(c.oid, work, true));
          if (round < MAX_RESOLVE_ROUNDS && this.#resolve(conflicts, work, snaps)) {
            forgetOids(adopted);
            mergedByHooks = !trees;
            continue;
          }
          throw conflictErrorFor(conflicts, work, this.#readCurrent.values());
        }
        if (vote) this.stats.roundTrips++;
        let tid: Tid;
        try {
          // A local storage merges conflicts that appear now inside its atomic section.
          tid = await this.#storage.finish(request, (found) => {
            const merged = this.#resolveInCommit(found, work, snaps);
            if (merged !== null) request = merged;
            return merged;
          });
        } catch (err) {
          if (err instanceof ConflictError) {
            // A commit came between vote and finish: vote again if it may merge.
            if (round < MAX_RESOLVE_ROUNDS && err.conflicts.every((c) => this.#mayResolve(c.oid, work))) {
              forgetOids(adopted);
              // Repeatedly overtaken (a server serializes commits, and another client's was
              // in flight each time): step out of lockstep with a short jittered pause.
              if (round >= 2) await pause(Math.random() * Math.min(20, 0.5 * 2 ** Math.min(round - 2, 8)));
              continue;
            }
            throw conflictErrorFor(err.conflicts.map(toStorageConflict), work, this.#readCurrent.values());
          }
          throw err;
        }
        this.stats.commits++;
        const inFlight = this.#committed(work, snaps, request, tid);
        this.#finishTransaction(tid);
        await yieldToEventLoop();
        if (inFlight.length > 0) {
          throw new TransactionError(
            `the commit succeeded (tid ${tid}), but ${inFlight.join(", ")} changed while it was in flight; ` +
              `those changes belong to no transaction and were discarded`,
            "changed-in-flight",
          );
        }
        return;
      }
    } catch (err) {
      forgetOids(adopted);
      if (this.#replayFailed && this.#doomed === null) this.#doomed = err instanceof Error ? err : new Error(String(err));
      throw err;
    } finally {
      unlock(rounds);
      this.#committing = false;
      this.#token.ok = this.#open && this.#at === undefined;
    }
  }

  /** A transaction that only marked objects readCurrent: check them, write nothing. */
  async #checkReadCurrent(): Promise<void> {
    this.#checkSession();
    const request = buildRequest([], [], this.#readCurrent.values());
    this.stats.roundTrips++;
    const conflicts = await this.#storage.vote(request);
    await this.#storage.abort(request);
    if (conflicts.length > 0) throw conflictErrorFor(conflicts, [], this.#readCurrent.values());
  }

  /** The transaction is over (committed, or had nothing to write): begin the next one. */
  #finishTransaction(committedTid?: Tid): void {
    this.#committing = false;
    this.#token.ok = this.#open && this.#at === undefined;
    this.#readCurrent.clear();
    this.#endTransaction();
    this.#begin(committedTid);
  }

  /**
   * Forget this transaction's lists. Objects that handed out nested values become soft
   * ghosts: the values handed out belong to this transaction, and the next read of the
   * object installs fresh ones from its record (no storage call).
   */
  #endTransaction(): void {
    for (const obj of this.#handedList) {
      const m = metaOf(obj);
      if (m.handed && m.token === this.#token && m.state === SAVED) this.#holdOver(obj, m);
      m.handed = false;
    }
    this.#handedList = [];
    this.#changedList = [];
    this.#changedInPlace.clear();
  }

  /**
   * Merge conflicts found inside a local storage's `finish` (ResolveInCommit): hook
   * classes only (a BTree replay loads, which cannot happen there), and only when the
   * merged states reach no new object. Returns the request to write, or null.
   */
  #resolveInCommit(
    conflicts: StorageConflict[],
    work: Array<[Persistent, Meta]>,
    snaps: Array<ObjectSnapshot | null>,
  ): CommitRequest | null {
    const index = workIndex(work);
    for (const c of conflicts) {
      const i = index.get(c.oid);
      if (i === undefined || isTreePiece(work[i]![0])) return null;
    }
    if (!this.#resolve(conflicts, work, snaps)) return null;
    for (const c of conflicts) {
      const i = index.get(c.oid)!;
      const adopted: Meta[] = [];
      const snap = encodeChanged(this, [work[i]!], adopted);
      if (adopted.length > 0) {
        forgetOids(adopted); // the next round gives them oids (the state stays merged)
        return null;
      }
      snaps[i] = snap[0]!;
    }
    return buildRequest(work, snaps, this.#readCurrent.values());
  }

  /** Could a conflict on `oid` (an object this transaction writes) be merged? */
  #mayResolve(oid: Oid, work: Array<[Persistent, Meta]>, treesOnly = false): boolean {
    const i = workIndex(work).get(oid);
    if (i === undefined) return false;
    const obj = work[i]![0];
    return isTreePiece(obj) || (!treesOnly && resolverOf(obj.constructor) !== undefined);
  }

  /**
   * Merge the conflicts of a vote (SPEC §5). Objects of classes with `resolveConflict`
   * get the state it returns, based on the committed revision; BTree pieces are merged by
   * replaying this transaction's key changes on the newest tree (btree-merge.ts). Returns
   * false, having changed nothing, when any conflict cannot be merged; after a merge of a
   * BTree it may return false having replayed part of it (the commit fails and is aborted).
   */
  #resolve(conflicts: StorageConflict[], work: Array<[Persistent, Meta]>, snaps: Array<ObjectSnapshot | null>): boolean {
    const index = workIndex(work);
    // A merged state may refer to objects this transaction creates: their oids are only
    // this vote's (forgotten before the next one), and they are not in the cache yet.
    const objectFor = (r: PersistentRef): Persistent => {
      const i = index.get(r.oid);
      return i !== undefined && work[i]![1].state === NEW ? work[i]![0] : this.#objectFor(r.oid, r.className);
    };
    const installs: Array<() => void> = [];
    let trees = false;
    const table = new RefTable();
    const refsOfObjects = (objs: readonly Persistent[]): PersistentRef[] =>
      objs.map((p) => {
        const m = metaOf(p);
        return table.ref(m.oid, m.className !== "" ? m.className : persistentInfo(p).name);
      });
    for (const c of conflicts) {
      if (c.readOnly || c.committedData === null || c.readSerial === 0) return false;
      const i = index.get(c.oid);
      if (i === undefined) return false;
      const [obj, meta] = work[i]!;
      const snap = snaps[i];
      if (snap === null || snap === undefined) return false;
      if (isTreePiece(obj)) {
        trees = true;
        continue;
      }
      const resolver = resolverOf(obj.constructor);
      const orig = this.#originals.get(meta);
      if (resolver === undefined || orig === undefined || meta.refs === null) return false;
      let env: ParsedEnvelope;
      let resolved: unknown;
      try {
        env = readEnvelope(c.committedData, c.oid);
        const info = classByName(env.className);
        if (info === undefined || info.cls !== obj.constructor) return false;
        const upgrade = (info.cls as { upgrade?: (s: State, v: number) => State }).upgrade;
        const current = (st: State, version: number): State =>
          version < info.version && typeof upgrade === "function" ? upgrade.call(info.cls, st, version) : st;
        const original = current(decodeState(orig.bytes, refsOfObjects(meta.refs), orig.shared), orig.version);
        const committed = current(
          decodeState(env.data, table.refs(env.refOids, env.refClasses), env.shared, env.stateStart, env.stateEnd),
          env.classVersion,
        );
        const mine = decodeState(snap.state, refsOfObjects(snap.refs), snap.shared);
        resolved = resolver.call(obj.constructor, original, committed, mine);
      } catch {
        return false; // a resolver that throws keeps the conflict
      }
      if (typeof resolved !== "object" || resolved === null || Array.isArray(resolved)) return false;
      const committedEnv = env;
      const serial = c.committedSerial;
      installs.push(() => {
        putState(obj, meta, liveState(resolved as State, objectFor));
        // The object now stands on the committed revision: that is what abort restores.
        const record = copyBytes(committedEnv.data);
        meta.record = record;
        meta.bytes = record.subarray(committedEnv.stateStart, committedEnv.stateEnd);
        meta.serial = serial;
        meta.watch = 0; // the merged state's nested values are new: none was handed out
        this.changed(obj, meta);
        meta.state = CHANGED;
        meta.refs = this.#refsOf(committedEnv, meta);
        this.#originals.set(meta, { bytes: meta.bytes, shared: committedEnv.shared, version: committedEnv.classVersion });
      });
    }
    if (trees && !this.#treesReplayable()) return false;
    for (const install of installs) install();
    let replayed = !trees;
    try {
      if (trees) replayed = this.#replayTrees(work);
    } finally {
      if (!replayed) this.#replayFailed = true;
    }
    if (!replayed) return false;
    this.stats.conflictsResolved += conflicts.length;
    return true;
  }

  /**
   * The value `key` had in `tree` at this transaction's snapshot, read from the stored
   * bucket (a container changed in place has lost it); CHANGED_IN_PLACE when unknown.
   */
  #storedEntry(tree: BTree, key: unknown): unknown {
    const bucket = bucketOf(tree, key);
    const m = metaOf(bucket);
    const s = this.#storage;
    if (m.state === NEW || m.oid < 0) return CHANGED_IN_PLACE;
    const rec = s.loadOneSync?.(m.oid, this.#tid, false) ?? s.loadSync?.([m.oid], this.#tid)[0] ?? null;
    if (rec === null) return CHANGED_IN_PLACE;
    this.stats.roundTrips++;
    const state = this.decodeRecord(rec);
    const keys = state.keys as unknown[];
    const i = Array.isArray(keys) ? keys.findIndex((k) => compareKeys(k, key) === 0) : -1;
    return i >= 0 ? (state.values as unknown[])[i] : CHANGED_IN_PLACE;
  }

  /** Did this transaction change BTrees only in ways that can be replayed? */
  #treesReplayable(): boolean {
    // A value changed in place is in no tree's log of key changes: a replay would lose it.
    if (this.#changedInPlace.size > 0) return false;
    let any = false;
    for (const [owner, log] of this.#notes ?? []) {
      if (!(owner instanceof BTree)) continue;
      if (!replayable(log as TreeLog)) return false;
      any = true;
    }
    return any && this.#storage.changesSinceSync !== undefined;
  }

  /**
   * Redo this transaction's BTree changes on the newest snapshot (see btree-merge.ts):
   * take the net change per key, drop every change to BTree pieces, move this
   * transaction's reads to the newest snapshot (objects it changed keep the serial they
   * were read at, so the next vote still checks them), and apply the changes again.
   */
  #replayTrees(work: Array<[Persistent, Meta]>): boolean {
    const strict = this.#strict;
    this.#strict = false; // the replay reads pieces no plan loaded
    this.#committing = false; // and changes them, as part of this commit
    try {
      const pending: Array<[BTree, NetChange[]]> = [];
      for (const [owner, log] of this.#notes ?? []) {
        if (!(owner instanceof BTree)) continue;
        const net = netChanges(log as TreeLog, (k) => lookupEntry(owner, k));
        for (const change of net) if (change.orig === CHANGED_IN_PLACE) change.orig = this.#storedEntry(owner, change.key);
        pending.push([owner, net]);
      }
      const keep = new Set<Meta>(this.#readCurrent.values());
      for (const [obj, meta] of work) {
        if (isTreePiece(obj)) {
          if (meta.state !== NEW) this.#ghostify(obj, meta);
        } else keep.add(meta);
      }
      const changes = this.#storage.changesSinceSync!(this.#tid);
      if (changes.local !== true) this.stats.roundTrips++;
      // Objects kept at their read serial that changed since stay stale until the
      // transaction ends: #begin drops them then (it only asks for changes after the new tid).
      if (changes.oids === null) {
        for (const [obj, meta] of this.#cache.loadedObjects()) {
          if (!keep.has(meta)) this.#ghostify(obj, meta);
          else this.#staleKept.push(obj);
        }
      } else {
        for (const oid of changes.oids) {
          const obj = this.#cache.get(oid);
          if (obj === undefined) continue;
          const meta = metaOf(obj);
          if (meta.state === NEW || (meta.state === GHOST && meta.record === null)) continue; // soft ghosts hold a record: drop it
          if (keep.has(meta)) this.#staleKept.push(obj);
          else this.#ghostify(obj, meta);
        }
      }
      this.#txn++; // a load in flight from the old snapshot is dropped
      this.#tid = Math.max(this.#tid, changes.tid);
      this.#host.noteTid(this.#tid);
      this.#notes = null; // the replay logs its changes afresh, relative to the newest tree
      for (const [tree, net] of pending) {
        const stands = replay(
          net,
          (k) => lookupEntry(tree, k),
          (k, v) => tree.set(k as BTreeKey, v),
          (k) => tree.delete(k as BTreeKey),
        );
        if (stands !== undefined) return false;
      }
      return true;
    } finally {
      this.#strict = strict;
      this.#committing = true;
    }
  }

  /**
   * Discard this transaction's changes and begin a new transaction on a fresh snapshot.
   * Every object the transaction changed holds its stored state again (installed from the
   * record it was loaded with, on its next touch). Never throws; during a commit in flight
   * it does nothing (the commit decides, and a failed commit leaves its changes to abort).
   */
  abort(): void {
    if (!this.#open || this.#committing) return;
    this.#discardChanges();
    this.#begin();
  }

  /** Every changed object holds its stored state again; the transaction's lists are emptied. */
  #discardChanges(): void {
    for (const obj of this.#changedList) {
      const m = metaOf(obj);
      if (m.state !== CHANGED || m.token !== this.#token) continue;
      dropAddedFields(obj, m);
      if (m.record !== null) this.#soften(obj, m);
      else if (m.oid >= 0 && this.#cache.get(m.oid) === obj) this.#ghostify(obj, m);
    }
    this.#readCurrent.clear();
    this.#endTransaction();
  }

  /**
   * Abort anything pending and return the connection (with its cache) to its DB's pool.
   * The objects of this checkout become stale: changing one throws ("stale-object"), and
   * the next checkout gets its own instances.
   */
  async close(): Promise<void> {
    if (!this.#open) return;
    if (this.#committing) throw new TransactionError("close() called while a commit of this connection is in flight; await the commit first", "in-flight");
    this.#discardChanges(); // the next checkout begins its own transaction (reopen)
    this.#open = false;
    this.#token.ok = false;
    this.#host.release(this);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** @internal Reopen a pooled connection: a new checkout, a fresh transaction, nothing pending. */
  reopen(): void {
    this.#open = true;
    this.#token = { ok: this.#at === undefined };
    this.#strict = this.#strictDefault;
    this.#begin();
  }

  /**
   * @internal Drop the cache for good (the DB is closing or the pool is full). Objects the
   * application still holds keep the state they have; touching a ghost raises "stale-object".
   */
  discard(): void {
    if (this.#open && !this.#committing) this.#discardChanges();
    this.#open = false;
    this.#token.ok = false;
    this.#cache.clear();
  }

  /**
   * Trim the cache to `cacheSize`/`cacheBytes` now, in the middle of a transaction,
   * evicting least-recently-used unchanged objects, including ones with nested arrays, Maps
   * or Sets (which happens automatically only at transaction boundaries). Do not keep
   * using a nested container taken from an object across this call: if its object was
   * evicted, changes to the container are not seen. For long read-only traversals.
   */
  cacheGC(): void {
    if (this.#cache.overBudget()) this.#cache.shrink(this.#evict);
  }

  /** Evict every unchanged loaded object back to a ghost (the caveat of `cacheGC` applies). */
  cacheMinimize(): void {
    for (const [obj, meta] of this.#cache.loadedObjects()) this.#evict(obj, meta);
  }

  // --- internals --------------------------------------------------------------------------

  #assertOpen(what: string): void {
    if (!this.#open) throw new TransactionError(`${what}() on a closed connection; open one with db.open()`, "closed");
  }

  #own(obj: Persistent, what: string): Meta {
    if (!isPersistent(obj)) throw new TypeError(`${what}() expects a persistent object`);
    const m = metaOf(obj);
    if (m.jar !== null && m.jar !== this) {
      throw new TransactionError(`${what}(): ${m.className}#${m.oid} belongs to another connection`, "foreign-object");
    }
    if (m.jar === this && m.state !== NEW && m.token !== this.#token) throw this.#stale(m, "read");
    return m;
  }

  /**
   * Load one record for a ghost. The data may be lent by the storage (valid until its next
   * call): `#install` decodes it at once and copies the little it keeps.
   */
  #loadOne(oid: Oid, className: string): StoredRecord {
    const s = this.#storage;
    if (s.loadOneSync !== undefined) {
      this.stats.roundTrips++;
      const rec = s.loadOneSync(oid, this.#tid, true);
      if (s.session !== this.#session) this.#checkSession();
      if (rec === null) throw this.#notFound(oid, className);
      this.stats.loads++;
      noteLoad(className);
      this.stats.bytesRead += rec.data.length;
      return rec;
    }
    const load = s.loadSync;
    if (load === undefined) {
      throw new NotLoadedError(
        oid,
        className,
        `${className}#${oid} is not loaded and ${this.#storage.url} cannot load synchronously; ` +
          `load it first with await conn.prefetch([...])`,
      );
    }
    this.stats.roundTrips++;
    const rec = load.call(this.#storage, [oid], this.#tid)[0];
    this.#checkSession();
    if (rec === null || rec === undefined) throw this.#notFound(oid, className);
    this.stats.loads++;
    noteLoad(className);
    this.stats.bytesRead += rec.data.length;
    return rec;
  }

  /**
   * A remote storage that reconnected may have missed invalidations: a transaction that
   * began before must not go on reading or commit.
   */
  #checkSession(): void {
    if (this.#storage.session === this.#session) return;
    throw new TransactionError(
      `the connection to ${this.#storage.url} was lost and made again during this transaction; ` +
        `it may have missed changes, so abort it and run it again (db.transact does so)`,
      "disconnected",
    );
  }

  #notFound(oid: Oid, className: string): ObjectNotFoundError {
    const what = className === "" ? "" : ` (a ${className} referenced from another object)`;
    return new ObjectNotFoundError(oid, `${what} at snapshot ${this.#tid}`);
  }

  /** The object for `oid`: the one this connection holds, or a new ghost of the stored class. */
  #objectFor(oid: Oid, className: string, viaMeta: Meta | null = null, viaPath = ""): Persistent {
    const known = this.#cache.get(oid);
    if (known !== undefined) {
      const km = metaOf(known);
      if (km.token !== this.#token) return this.#reinstance(known, km);
      if (km.state !== GHOST) this.stats.cacheHits++;
      return known;
    }
    const meta = new Meta();
    meta.jar = this;
    meta.token = this.#token;
    meta.oid = oid;
    meta.className = className;
    meta.viaMeta = viaMeta;
    meta.viaPath = viaPath;
    const obj = this.#ghostOf(className, meta);
    this.#cache.add(oid, obj);
    return obj;
  }

  /** A ghost of the stored class `className` (with the accessors of its fields). */
  #ghostOf(className: string, meta: Meta): Persistent {
    const info = classByName(className);
    const cls = info !== undefined && info.kind === "persistent" ? info.cls : BrokenObject;
    const obj = makeGhost(cls, meta);
    if (cls !== BrokenObject && !hasCustomState(obj)) giveAccessors(obj, meta);
    return obj;
  }

  /**
   * The object for an oid whose cached instance belongs to an earlier checkout of this
   * connection (stale): a new instance for this checkout, which takes over the record the
   * old one holds (a soft ghost, installed on first touch without a storage call). The
   * old instance keeps what it holds for reading; changing it throws.
   */
  #reinstance(old: Persistent, om: Meta): Persistent {
    const meta = new Meta();
    meta.jar = this;
    meta.token = this.#token;
    meta.oid = om.oid;
    meta.className = om.className;
    const kept = om.record !== null && om.state !== NEW && om.state !== CHANGED;
    if (kept) {
      meta.record = om.record;
      meta.serial = om.serial;
      meta.size = om.size;
    }
    const obj = this.#ghostOf(om.className, meta);
    this.#cache.unload(old, om);
    this.#cache.add(meta.oid, obj);
    if (kept) this.#cache.touch(obj, meta);
    return obj;
  }

  /**
   * Decode `rec` into the ghost `obj`. With `lent` (the default), `rec.data` is the
   * storage's memory: the record is copied (an object keeps its record while loaded, to
   * restore, compare and reinstall its state without a storage call).
   */
  #install(obj: Persistent, meta: Meta, rec: StoredRecord, env: ParsedEnvelope, lent = true): void {
    const refs = this.#refsOf(env, meta);
    let state: Record<string, unknown>;
    try {
      state = decodeState(env.data, refs, env.shared, env.stateStart, env.stateEnd);
    } catch (err) {
      throw new StorageError(`record of object ${rec.oid} (${env.className}) cannot be decoded: ${(err as Error).message}`, {
        oid: rec.oid,
        cause: err,
        code: "corrupt",
      });
    }
    // Our own copy of the record, unless it is ours already (a kept record, a batch reply
    // that is not much larger than the record).
    const data = rec.data;
    const own = data === meta.record ? data : lent || data.buffer.byteLength > 2 * data.byteLength ? copyBytes(data) : data;
    let bytes: Uint8Array | null = own.subarray(env.stateStart, env.stateEnd);
    let upgraded = false;
    const info = classByName(env.className);
    const broken = obj instanceof BrokenObject;
    if (broken) keepOriginal(obj, own);
    else if (info !== undefined && info.version > env.classVersion) {
      const upgrade = (info.cls as { upgrade?: unknown }).upgrade;
      if (typeof upgrade === "function") {
        state = upgrade.call(info.cls, state, env.classVersion) as Record<string, unknown>;
        upgraded = true;
      }
    }
    // The hook's "original" (upgraded, like the committed state, before the hook sees it).
    if (resolverOf(obj.constructor) !== undefined) {
      if (keepsOriginal(obj, state)) this.#originals.set(meta, { bytes, shared: env.shared, version: env.classVersion });
      else this.#originals.delete(meta); // a PersistentMap that stopped merging keys
    }
    const fields = !broken && !hasCustomState(obj);
    // Fields the class declares and the record lacks read as the declared defaults; what is
    // unchanged is then the state with them.
    if (fields && applyDefaults(Object.getPrototypeOf(obj) as object, state, Object.keys(state)) && !upgraded) {
      bytes = encodeState(env.className, state, acceptAnyRef).state;
    }
    putState(obj, meta, state);
    meta.serial = rec.serial;
    meta.className = env.className;
    meta.record = own;
    meta.bytes = bytes;
    meta.refs = refs;
    meta.containers = holdsContainers(obj, state);
    meta.watch = meta.containers ? 1 : 0;
    meta.handed = false;
    meta.state = SAVED;
    if (upgraded) this.changed(obj, meta);
    this.#cache.resize(meta, own.length);
    this.#cache.touch(obj, meta);
    if (!this.#holdEviction && this.#cache.overBudget()) this.#cache.shrink(this.#evictFlat, obj, 16);
  }

  /**
   * Reading a stale soft ghost (its checkout ended): its kept record is installed for
   * reading only. References in it are the objects of the same ended checkout when this
   * connection still holds them, else ghosts of that checkout, which cannot be loaded.
   */
  #installStale(obj: Persistent, meta: Meta): void {
    const data = meta.record!;
    const env = readEnvelope(data, meta.oid, true);
    const refs = env.refOids.map((oid, i) => {
      const known = this.#cache.get(oid);
      if (known !== undefined && metaOf(known).token === meta.token) return known;
      const m = new Meta();
      m.jar = this;
      m.token = meta.token;
      m.oid = oid;
      m.className = env.refClasses[i]!;
      return this.#ghostOf(m.className, m);
    });
    putState(obj, meta, decodeState(env.data, refs, env.shared, env.stateStart, env.stateEnd));
    meta.refs = refs;
    meta.watch = 0;
    meta.state = SAVED;
  }

  /** Install a soft ghost's kept record again (no storage call, allowed in strict mode). */
  #installKept(obj: Persistent, meta: Meta): void {
    const data = meta.record!;
    this.#install(obj, meta, { oid: meta.oid, serial: meta.serial, data }, readEnvelope(data, meta.oid, true), false);
  }

  /** The objects a record refers to; new ghosts remember `parent` and the path (strict mode). */
  #refsOf(env: ParsedEnvelope, parent: Meta | null = null): Persistent[] {
    const n = env.refOids.length;
    const refs: Persistent[] = new Array(n);
    const paths = env.refPaths;
    for (let i = 0; i < n; i++) refs[i] = this.#objectFor(env.refOids[i]!, env.refClasses[i]!, parent, paths[i]!);
    return refs;
  }

  /**
   * Eviction in the middle of a transaction: not objects that handed out nested values in
   * this transaction (the application may still change those values; evicting the object
   * would lose the change). They are trimmed at transaction boundaries, or by `cacheGC()`.
   */
  #evictFlat = (obj: Persistent, meta: Meta): boolean => !meta.handed && this.#evict(obj, meta);

  #evict = (obj: Persistent, meta: Meta): boolean => {
    if (meta.state === GHOST) {
      if (meta.record === null) return false;
      this.#ghostify(obj, meta); // a soft ghost gives up its record
      return true;
    }
    if (meta.state !== SAVED) return false;
    if (meta.handed && this.isDirty(obj, meta)) {
      this.changed(obj, meta);
      return false;
    }
    this.#ghostify(obj, meta);
    return true;
  };

  /**
   * The transaction that may have handed out the object's nested values ends: a field object
   * gets fresh ones from its record before it hands one out again (STALE_CONTAINERS), a
   * collection becomes a soft ghost (its state is installed again on the next touch).
   */
  #holdOver(obj: Persistent, meta: Meta): void {
    meta.handed = false;
    if (meta.values !== null && !hasCustomState(obj)) meta.watch = STALE_CONTAINERS;
    else this.#soften(obj, meta);
  }

  /** Drop the installed state but keep the record: the next touch installs it again. */
  #soften(obj: Persistent, meta: Meta): void {
    dropState(obj, meta);
    meta.state = GHOST;
    meta.handed = false;
    meta.watch = 0;
  }

  #ghostify(obj: Persistent, meta: Meta): void {
    this.#cache.unload(obj, meta);
    dropAddedFields(obj, meta);
    dropState(obj, meta);
    meta.state = GHOST;
    const refs = meta.refs;
    meta.record = null;
    meta.bytes = null;
    meta.refs = null;
    meta.handed = false;
    meta.watch = 0;
    // The object and the ghosts it referred to may now be unreachable: hold them weakly.
    this.#cache.demote(meta.oid, obj);
    if (refs !== null) {
      for (const r of refs) {
        const rm = metaOf(r);
        if (rm.state === GHOST && rm.record === null) this.#cache.demote(rm.oid, r);
      }
    }
  }

  async #assignOids(adopted: Meta[]): Promise<void> {
    const s = this.#storage;
    this.stats.roundTrips++;
    const oids = s.newOidsSync !== undefined ? s.newOidsSync(adopted.length) : await s.newOids(adopted.length);
    adopted.forEach((m, i) => {
      m.oid = oids[i]!;
    });
  }

  /**
   * Bookkeeping after a successful finish: each written object holds its new record, and
   * becomes a soft ghost when it holds nested values (the application may hold them: they
   * stay with this transaction). New objects get field accessors. Returns the new objects
   * assigned to while the commit was in flight (their changes are discarded).
   */
  #committed(work: Array<[Persistent, Meta]>, snaps: Array<ObjectSnapshot | null>, request: CommitRequest, tid: Tid): string[] {
    const inFlight: string[] = [];
    for (let i = 0; i < work.length; i++) {
      const [obj, meta] = work[i]!;
      const snap = snaps[i];
      const data = request.records[i]!.data;
      this.stats.bytesWritten += data.length;
      const wasNew = meta.state === NEW;
      meta.serial = tid;
      meta.record = data;
      meta.handed = false;
      this.#cache.resize(meta, data.length);
      if (snap !== null && snap !== undefined) {
        meta.className = snap.info.name;
        meta.bytes = data.subarray(data.length - 4 - snap.state.length, data.length - 4);
        meta.refs = snap.refs;
        if (keepsOriginal(obj, snap.values)) this.#originals.set(meta, { bytes: meta.bytes, shared: snap.shared, version: snap.info.version });
      }
      if (wasNew) {
        meta.token = this.#token;
        this.#cache.add(meta.oid, obj);
        if (snap !== null && snap !== undefined && !hasCustomState(obj)) {
          if (changedSince(obj, snap.values)) inFlight.push(`${meta.className}#${meta.oid}`);
          clearState(obj);
          putState(obj, meta, snap.values);
        }
      }
      keepAddedFields(obj, meta);
      meta.state = SAVED;
      const broken = obj instanceof BrokenObject;
      meta.containers = !broken && (snap === null || snap === undefined || holdsContainers(obj, snap.values));
      this.#cache.touch(obj, meta);
      // Nested values the application may still hold stay with this transaction.
      if (meta.containers) this.#holdOver(obj, meta);
      else meta.watch = 0;
    }
    return inFlight;
  }

  /** Begin a new transaction: apply invalidations, move to the newest snapshot, trim the cache. */
  #begin(committedTid?: Tid): void {
    this.#txn++;
    this.#notes = null;
    for (const obj of this.#staleKept.splice(0)) {
      const meta = metaOf(obj);
      if ((meta.record !== null || meta.state === CHANGED) && meta.serial !== committedTid) this.#ghostify(obj, meta);
    }
    this.#doomed = null;
    this.#replayFailed = false;
    if (this.#cache.overBudget()) this.#cache.shrink(this.#evict);
    const s = this.#storage;
    if (this.#at !== undefined) {
      this.#session = s.session;
      return;
    }
    if (s.changesSinceSync === undefined) {
      this.#session = s.session;
      return;
    }
    const changes = s.changesSinceSync(this.#tid, committedTid);
    if (changes.local !== true) this.stats.roundTrips++;
    if (this.#session !== s.session) {
      // The storage reconnected since this connection's last transaction (possibly to
      // another database, whose tids need not be comparable): drop every loaded object
      // and take the storage's snapshot as it is.
      this.#session = s.session;
      this.#invalidate({ tid: changes.tid, oids: null }, undefined, true);
      return;
    }
    this.#invalidate(changes, committedTid);
  }

  #invalidate(changes: Changes, committedTid?: Tid, reset = false): void {
    if (changes.oids === null) {
      for (const [obj, meta] of this.#cache.loadedObjects()) if (meta.serial !== committedTid) this.#ghostify(obj, meta);
    } else {
      for (const oid of changes.oids) {
        const obj = this.#cache.get(oid);
        if (obj === undefined) continue;
        const meta = metaOf(obj);
        if ((meta.record !== null || meta.state === CHANGED) && meta.serial !== committedTid) this.#ghostify(obj, meta);
      }
    }
    this.#tid = reset ? changes.tid : Math.max(this.#tid, changes.tid);
    this.#host.noteTid(this.#tid);
  }
}

/**
 * After realize: `obj`, a member of a group followed through `prop`, must have that
 * property, holding references (a persistent object, a collection or container of them,
 * or null), not other data.
 */
function checkFollowed(obj: Persistent, prop: string, label: string): void {
  const m = metaOf(obj);
  const where = `${m.className}#${m.oid}`;
  if (!(prop in obj)) throw new TypeError(`realize(): ${where} has no property ${JSON.stringify(prop)} (plan step ${label})`);
  const v = (obj as unknown as Record<string, unknown>)[prop];
  if (v === null || v === undefined || isPersistent(v) || v instanceof Map || v instanceof Set) return;
  if (Array.isArray(v) && v.every((x) => x === null || x === undefined || isPersistent(x))) return;
  const what = Array.isArray(v) ? "an array of non-references" : typeof v === "object" ? "a plain object" : `a ${typeof v}`;
  throw new TypeError(`realize(): ${where}.${prop} holds ${what}, not a reference (plan step ${label})`);
}

/** The persistent objects a followed property yields: itself, or a collection's items. */
function itemsOf(v: unknown): Persistent[] {
  if (v === null || v === undefined) return [];
  let items: Iterable<unknown>;
  if (v instanceof PersistentMap || v instanceof BTree) items = v.values();
  else if (v instanceof PersistentList || v instanceof PersistentSet) items = v;
  else if (isPersistent(v)) return [v];
  else if (Array.isArray(v)) items = v;
  else if (v instanceof Map) items = v.values();
  else if (v instanceof Set) items = v;
  else return [];
  const out: Persistent[] = [];
  for (const x of items) if (isPersistent(x)) out.push(x);
  return out;
}

/** A copy (Buffer's own `slice` would be a view of the same memory). */
/**
 * A copy of a record's bytes. `Buffer.from` copies small records into Node's shared pool
 * (a few times faster than a typed-array slice); records loaded together share a slab.
 */
function copyBytes(bytes: Uint8Array): Uint8Array {
  return Buffer.from(bytes);
}

/**
 * Oid -> position in a commit round's work list, built once per round that meets a
 * conflict (the list no longer changes by then).
 */
const workIndexes = new WeakMap<object, Map<Oid, number>>();
function workIndex(work: Array<[Persistent, Meta]>): Map<Oid, number> {
  let index = workIndexes.get(work);
  if (index === undefined) {
    index = new Map();
    for (let i = 0; i < work.length; i++) index.set(work[i]![1].oid, i);
    workIndexes.set(work, index);
  }
  return index;
}

/**
 * Conflict resolution rounds (vote, merge, vote again) before a commit gives up. Every round
 * merges (a conflict that cannot merge fails at once); many rounds happen only when other
 * commits keep landing between this one's vote and finish (a storage server, which holds no
 * lock between them, under many writers of one object), and the jittered pause between
 * rounds lets one through. Concurrent adds to a Counter then always merge.
 */
const MAX_RESOLVE_ROUNDS = 200;

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Objects of the commit rounds so far that are still LOCKED are CHANGED again. */
function unlock(rounds: Array<Array<[Persistent, Meta]>>): void {
  for (const work of rounds.splice(0)) for (const [, m] of work) if (m.state === LOCKED) m.state = CHANGED;
}

/** New objects given oids by a vote that did not commit get them again next time. */
function forgetOids(adopted: Meta[]): void {
  for (const m of adopted) {
    if (m.state === NEW) {
      m.jar = null;
      m.oid = -1;
    }
  }
}

/** Keep the stored bytes an object was read at (its class resolves conflicts)? */
function keepsOriginal(obj: Persistent, state: Record<string, unknown>): boolean {
  if (resolverOf(obj.constructor) === undefined) return false;
  return !(obj instanceof PersistentMap) || state.mergeKeys === true;
}

/** A piece of a BTree (their conflicts merge by replay, not by a hook). */
function isTreePiece(obj: Persistent): boolean {
  return obj instanceof BTree || obj instanceof BTreeBucket || obj instanceof BTreeNode;
}

function toStorageConflict(c: ConflictDetail): StorageConflict {
  return { oid: c.oid, readSerial: c.readSerial, committedSerial: c.committedSerial, committedData: null, readOnly: c.readOnly };
}

/** For comparisons: every reference is acceptable (nothing is adopted). */
function acceptAnyRef(): void {}

/** Let the event loop run (timers, I/O, signals) after a commit settles. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Were top-level properties of a new object assigned since `values` were taken from it? */
function changedSince(obj: Persistent, values: Record<string, unknown>): boolean {
  const keys = Object.keys(obj);
  if (keys.length !== Object.keys(values).length) return true;
  for (const k of keys) if (!Object.hasOwn(values, k) || !Object.is((obj as unknown as Record<string, unknown>)[k], values[k])) return true;
  return false;
}
