/**
 * The storage interface: what a connection needs from the place records live. Implementers
 * start here (then base-storage.ts for a local storage, and the contract suite in
 * contract.ts, exported as `storageContract` from `amberdb/testing`).
 *
 * A record is `(oid, serial, data)`. `data` is the record envelope written by
 * `codec/record.ts` (class name, references with the property paths that hold them, and
 * the state bytes). Storages treat it as opaque bytes; when they need to walk the graph
 * (closures, plans, garbage collection) they read the references with `readEnvelope(data)`,
 * never the application's classes.
 *
 * Time is counted in tids (see ids.ts): positive integers, strictly increasing with each
 * committed transaction. A record's serial is the tid of the transaction that wrote it.
 * Tid 0 means "before the first transaction". Reads name the snapshot they read (`at`):
 * a storage answers every read as of one committed tid, never a mix.
 *
 * Every operation that can go remote is batch-shaped: one call loads many oids or stores a
 * whole transaction, so a remote storage spends one round trip on it.
 *
 * ## Call protocol
 *
 * A commit is two-phase, after ZODB's tpc_vote / tpc_finish, with one `CommitRequest`:
 *
 *   vote(request)    -> [] ........ finish(request, resolve?) -> tid     (committed)
 *                                   or abort(request)                    (nothing written)
 *                    -> conflicts . abort(request), then give up or build a new request
 *   finish(request)  without a vote: allowed. finish checks every serial again, atomically,
 *                    so a vote is an early, cheap look, never a promise; the connection
 *                    finishes at once after merging conflicts by hooks.
 *   abort(request)   allowed without a vote, and more than once; never throws for a valid
 *                    request. A storage that holds something from the vote (a lock, a
 *                    server-side vote) releases it here; the local storages hold nothing.
 *
 * Pass `finish` and `abort` the very object that was voted: a remote storage recognises its
 * vote by identity (another object is committed as if it had not been voted).
 *
 * Concurrency on one storage object (several connections of one DB share it): every call
 * may run while others are in flight, reads and commits alike. Commits are atomic with
 * respect to each other and to reads: a read at snapshot `at` never sees a later commit,
 * and of two commits that change one object from the same serial exactly one succeeds
 * (the other's finish raises ConflictError), also across processes and instances on the
 * same data. Synchronous members run to completion without yielding. `close` may be
 * called at any time; calls made after it raise "closed" (calls in flight may too).
 *
 * What each call may throw (error classes from errors.ts; codes are `AmberError.code`):
 *
 *   every call            StorageError "closed"        after close()
 *                         TypeError / RangeError       malformed arguments (a bug in the caller);
 *                                                      async members reject, never throw at once
 *                         StorageError "corrupt"       damaged data, naming the oid (`err.oid`)
 *   remote storages       StorageError "disconnected", "timeout", "auth", "database-changed", …
 *                         ProtocolError "protocol"     a peer that does not speak amberdb
 *   vote                  nothing else: conflicts are its return value
 *   finish                ConflictError "conflict"     a conflict not merged by `resolve`; nothing written
 *                         StorageError "disconnected"  (remote) the connection dropped and the
 *                                                      commit did not happen (the client asked)
 *                         StorageError "commit-unknown" (remote) the server could not be reached
 *                                                      again within commitRecoveryMs to ask
 *                         whatever `resolve` throws    nothing written
 *   vote, finish, undo,   StorageError "read-only"     a storage opened read-only
 *   newOids
 *   undo                  ConflictError "conflict"     a later change would be lost; nothing written
 *                         StorageError "not-found"     no such transaction
 *   loadPlan              StorageError "too-large"     the plan reaches more than `maxBytes`
 *   load, loadBefore      StorageError (naming the oid) a revision that should exist was packed away
 *
 * A missing object is `null`, never an error; a conflict at vote is data, not an error.
 * `checkStorage(value)` checks that an object has every required member (DB.open calls it).
 */
import type { Oid, Tid } from "../ids.ts";
export type { Oid, Tid } from "../ids.ts";
export { ROOT_OID } from "../ids.ts";

/** One revision of one object, as loaded. */
export interface StoredRecord {
  oid: Oid;
  /** Tid of the transaction that wrote this revision. */
  serial: Tid;
  /** The record envelope (see codec/record.ts). */
  data: Uint8Array;
}

/** One object written by a transaction. */
export interface RecordToStore {
  oid: Oid;
  /** The serial this transaction read; 0 for an object this transaction created. */
  serial: Tid;
  data: Uint8Array;
}

/** What a transaction asks the storage to commit, in one batch. */
export interface CommitRequest {
  records: RecordToStore[];
  /** Objects only read, that must still be current at commit (`readCurrent`). */
  readCurrent: Array<{ oid: Oid; serial: Tid }>;
  /** Free-form transaction metadata kept with the transaction (user, description). */
  meta?: Record<string, string>;
}

/** An object whose committed serial is not the one the transaction read. */
export interface StorageConflict {
  oid: Oid;
  /** The serial the transaction read (0 for a new object). */
  readSerial: Tid;
  /** The serial now committed (0 if the object does not exist). */
  committedSerial: Tid;
  /** The committed record's data, so a class can resolve the conflict without a load. */
  committedData: Uint8Array | null;
  /** True when the object was in `readCurrent` rather than `records`. */
  readOnly: boolean;
}

/** Objects changed by transactions after some tid. */
export interface Changes {
  /** The newest committed tid: the snapshot a new transaction should read. */
  tid: Tid;
  /**
   * Oids written by transactions with tid in (since, tid]. `null` when the storage can no
   * longer tell (history packed away, cache missed too much): invalidate everything.
   */
  oids: Oid[] | null;
  /** Answered without asking a remote server (from pushed invalidations). */
  local?: boolean;
}

/** A committed transaction, newest first in `transactions()`. */
export interface TransactionInfo {
  tid: Tid;
  oids: Oid[];
  meta: Record<string, string>;
}

/** Limits and knowledge for `loadClosure`. */
export interface ClosureOptions {
  /** Return at most this many records (default: no limit). */
  maxObjects?: number;
  /** Return at most this many bytes of record data (default: no limit). */
  maxBytes?: number;
  /**
   * Oids whose revision at the snapshot the caller already holds: walked through (their
   * references are followed) but not returned.
   */
  have?: readonly Oid[];
}

/** What `loadClosure` found. */
export interface ClosureResult {
  /** The records reached, breadth-first from the root, except those in `have`. */
  records: StoredRecord[];
  /** Referenced oids that do not exist at the snapshot (dangling references). */
  missing: Oid[];
  /** A limit stopped the walk before it reached everything. */
  truncated: boolean;
}

/**
 * One step of a loading plan; a plan is a list of them, each making one group of oids.
 * `from`: these objects. `follow`: the objects that the members of an earlier group
 * reference through property `prop` (collections fan out: see plan-walk.ts). `union`:
 * the members of earlier groups. Groups keep the order objects were first found in.
 */
export interface PlanStep {
  from?: readonly Oid[];
  follow?: number;
  prop?: string;
  union?: readonly number[];
}

export interface PlanOptions {
  /** Oids whose revision at the snapshot the caller holds: read, not returned. */
  have?: readonly Oid[];
  /** Fail rather than return more than this many bytes of records. */
  maxBytes?: number;
}

export interface PlanResult {
  /** Every record the plan reached (group members and collection pieces), except `have`. */
  records: StoredRecord[];
  /** The oids of each step's group, in order. */
  groups: Oid[][];
  /** References to objects that do not exist at the snapshot, with the path that reached each. */
  missing: Array<{ oid: Oid; path: string }>;
}

/**
 * Conflict resolution inside `finish`'s atomic section (local storages): called with the
 * conflicts found there (committed data included), while no other commit can happen. It
 * returns the transaction's request with the conflicting records merged (their `serial`
 * the committed one), which is checked again (and, if it still conflicts, handed back to
 * `resolve`, a bounded number of times) and written atomically; or null: `finish` raises
 * ConflictError and writes nothing. It runs synchronously and must not call the storage;
 * what it throws, `finish` throws, writing nothing. A storage that cannot call it (a remote
 * one) ignores it: the caller gets ConflictError and votes again instead.
 */
export type ResolveInCommit = (conflicts: StorageConflict[]) => CommitRequest | null;

export interface StorageCapabilities {
  /** The synchronous members (`SyncAccess`) exist: ghosts can load transparently. */
  readonly synchronous: boolean;
  /** Old revisions are kept: `loadBefore`, `history`, `open({ at })` and `undo` work. */
  readonly history: boolean;
  /**
   * Invalidations arrive on their own (a server pushes them): `changesSince` is answered
   * from what the storage was told and costs no round trip.
   */
  readonly pushesInvalidations?: boolean;
}

/**
 * The synchronous members: a storage has all four or none (`checkStorage` refuses a part),
 * and has them exactly when `capabilities.synchronous` is true. Each means what its async
 * form means; they exist so that touching a ghost can load it transparently.
 */
export interface SyncAccess {
  /** `load`, synchronously. */
  loadSync(oids: readonly Oid[], at: Tid): Array<StoredRecord | null>;
  /**
   * One object, synchronously: the path of a ghost being touched. Same semantics as
   * `load`. With `borrow`, `data` may be a view of memory the storage reuses: it does not
   * change until the caller's next call on this storage (or on another storage of the same
   * kind in this process: lmdb-js lends one buffer to all its environments), whatever
   * other processes commit meanwhile; the caller decodes or copies it before that call.
   * Without `borrow`, and from every other read, `data` is the caller's to keep.
   */
  loadOneSync(oid: Oid, at: Tid, borrow: boolean): StoredRecord | null;
  /** `newOids`, synchronously. */
  newOidsSync(count: number): Oid[];
  /** `changesSince`, synchronously. */
  changesSinceSync(since: Tid, ownCommit?: Tid): Changes;
}

/** The names of the `SyncAccess` members, in the order messages list them. */
export const SYNC_MEMBERS = ["loadSync", "loadOneSync", "newOidsSync", "changesSinceSync"] as const satisfies ReadonlyArray<keyof SyncAccess>;

/**
 * A storage. The synchronous members are optional here as a group (see `SyncAccess`); a
 * storage that has them is a `SyncStorage`.
 */
export interface Storage extends Partial<SyncAccess> {
  /** The URL or path the storage was opened with (for messages). */
  readonly url: string;
  /**
   * Identifies the stored database: the same for every process that opens it, different
   * for another database. A client that finds it changed drops what it cached.
   */
  readonly id: string;
  readonly capabilities: StorageCapabilities;

  /**
   * Changes when a remote storage lost its connection and made a new one. A transaction
   * that began in an earlier session may have missed invalidations: the connection fails
   * it instead of reading on. Local storages leave it undefined.
   */
  readonly session?: number;
  /**
   * Requests sent to a remote server since the storage was opened (each one round trip).
   * A remote storage that answers some calls itself (from a record cache) has it; the
   * connection counts the requests a synchronous load sent (possibly none) instead of one
   * per call. Local storages leave it undefined (each call is one round trip).
   */
  readonly remoteRequests?: number;

  /** The newest committed tid (0 for an empty storage). */
  lastTid(): Promise<Tid>;

  /**
   * Load the revision of each oid that was current at snapshot `at`: the newest revision
   * with serial <= at. `null` for an oid that did not exist at `at` (never created, or
   * created later). The result has one entry per requested oid, in order; its `data` is
   * the caller's (later calls and commits do not change it).
   * Raises `StorageError` naming the oid when a revision that should exist was packed away.
   */
  load(oids: readonly Oid[], at: Tid): Promise<Array<StoredRecord | null>>;

  /**
   * `oid` and every object reachable from it through stored references, each at snapshot
   * `at`, breadth-first, within the limits. One round trip on a remote storage: the walk
   * happens where the records are. An `oid` that does not exist at `at` gives no records
   * and `missing: [oid]`. Raises RangeError for limits that are not positive numbers.
   */
  loadClosure(oid: Oid, at: Tid, options?: ClosureOptions): Promise<ClosureResult>;

  /**
   * Evaluate a loading plan at snapshot `at`: every group's members and every record
   * reached, in one round trip on a remote storage (the walk happens where the records
   * are, following the reference paths stored in each record). Raises TypeError for a
   * malformed plan, `StorageError` "too-large" past `options.maxBytes`.
   */
  loadPlan(steps: readonly PlanStep[], at: Tid, options?: PlanOptions): Promise<PlanResult>;

  /** The newest revision of `oid` with serial < `before`, or `null`. Needs history. */
  loadBefore(oid: Oid, before: Tid): Promise<StoredRecord | null>;

  /** Revisions of `oid`, newest first, at most `limit`. Needs history. */
  history(oid: Oid, limit?: number): Promise<StoredRecord[]>;

  /** Reserve `count` fresh oids, never handed out before (also across processes). */
  newOids(count: number): Promise<Oid[]>;

  /**
   * Phase one of a commit: check every record's `serial` (and every `readCurrent` entry)
   * against what is committed now. Returns the conflicts; empty means the transaction may
   * go on to `finish`. Embedded storages check optimistically and hold no lock (finish
   * checks again atomically); a server may hold something until finish or abort.
   */
  vote(request: CommitRequest): Promise<StorageConflict[]>;

  /**
   * Phase two: atomically check again and write every record of `request` under one new
   * tid, which it returns. Durable when it returns (unless opened with relaxed
   * durability). If a conflict appeared since the vote, nothing is written and it raises
   * `ConflictError` (its `conflicts` carry oids and serials; class names may be "?"),
   * unless `resolve` merges them (see ResolveInCommit). Either all records are written or
   * none are. `readCurrent` entries are checked, not written.
   */
  finish(request: CommitRequest, resolve?: ResolveInCommit): Promise<Tid>;

  /** Give up a voted transaction (releases what `vote` held). Never throws for a valid request. */
  abort(request: CommitRequest): Promise<void>;

  /**
   * Which objects changed after `since`, and the newest tid. Used for invalidations, at
   * the start of every transaction: the answer must include every transaction committed
   * before the call (whoever committed it), so that a commit another process reported
   * is seen. `ownCommit` says the caller itself just committed that tid and has done
   * nothing since: a storage that is told about commits in order may then answer from
   * what it was told, without asking.
   */
  changesSince(since: Tid, ownCommit?: Tid): Promise<Changes>;

  /** Committed transactions with tid > `since`, newest first, at most `limit`. */
  transactions(since?: Tid, limit?: number): Promise<TransactionInfo[]>;

  /**
   * Undo transaction `tid`: commit a new transaction that restores, for every object it
   * wrote, the state the object had before `tid` (its revision just before `tid`'s), and
   * return the new tid. Needs history. The undo transaction is logged with meta
   * `{ undo: String(tid) }` and lists the objects it wrote.
   *
   * The rule, as in ZODB: an object may be restored when its current state is the one
   * `tid` wrote, that is when its current revision is `tid`'s, or when a later transaction
   * wrote that same state back (byte for byte): typically the undo of the transaction
   * after `tid`, so that undoing t25 and then t24 steps back one transaction at a time, as
   * does undoing an undo. If any object's current state is something else (a later change
   * that undoing `tid` would lose), nothing is written and it raises `ConflictError`
   * (read serial `tid`, committed serial the current one, for each such object).
   *
   * An object that `tid` created has no state before it: it is left as it is (and is
   * not among the undo's objects), and becomes unreachable garbage once the references to
   * it, written by `tid` too, are undone; it still conflicts when a later transaction
   * changed it. Raises `StorageError` (code "not-found") when `tid` is not a transaction.
   */
  undo(tid: Tid): Promise<Tid>;

  /** Release files, handles and connections. Idempotent. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** A storage with the synchronous members (memory, embedded, the server's client). */
export type SyncStorage = Storage & SyncAccess;

/** Does `storage` have the synchronous members? (`checkStorage` ensures all or none.) */
export function hasSyncAccess(storage: Storage): storage is SyncStorage {
  return typeof storage.loadSync === "function";
}

/** The methods every storage has (the synchronous ones come as a group, see SyncAccess). */
const METHODS = [
  "lastTid",
  "load",
  "loadClosure",
  "loadPlan",
  "loadBefore",
  "history",
  "newOids",
  "vote",
  "finish",
  "abort",
  "changesSince",
  "transactions",
  "undo",
  "close",
] as const satisfies ReadonlyArray<keyof Storage>;

/**
 * Check that `value` is a complete Storage: every required member, the synchronous
 * members all or none, and capabilities that agree with them. Raises one TypeError that
 * names everything missing or wrong (prefixed by `context`, e.g. "DB.open()").
 */
export function checkStorage(value: unknown, context = "storage"): asserts value is Storage {
  if (typeof value !== "object" || value === null) {
    throw new TypeError(`${context}: expected a Storage object, got ${value === null ? "null" : typeof value}`);
  }
  const s = value as Record<PropertyKey, unknown>;
  const problems: string[] = [];
  const missing: string[] = [];
  if (typeof s.url !== "string") missing.push("url (a string)");
  if (typeof s.id !== "string") missing.push("id (a string)");
  const caps = s.capabilities as Partial<Record<keyof StorageCapabilities, unknown>> | undefined;
  const capsOk = typeof caps === "object" && caps !== null;
  if (!capsOk) missing.push("capabilities ({ synchronous, history })");
  for (const m of METHODS) if (typeof s[m] !== "function") missing.push(`${m}()`);
  if (typeof s[Symbol.asyncDispose] !== "function") missing.push("[Symbol.asyncDispose]()");
  if (missing.length > 0) problems.push(`missing ${missing.join(", ")}`);
  if (s.session !== undefined && typeof s.session !== "number") problems.push(`session must be a number or undefined, got ${typeof s.session}`);

  const present = SYNC_MEMBERS.filter((m) => typeof s[m] === "function");
  const absent = SYNC_MEMBERS.filter((m) => typeof s[m] !== "function");
  const list = (names: readonly string[]) => names.map((n) => `${n}()`).join(", ");
  if (present.length > 0 && absent.length > 0) {
    problems.push(`the synchronous members come together: it has ${list(present)} but lacks ${list(absent)}`);
  }
  if (capsOk) {
    for (const key of ["synchronous", "history"] as const) {
      if (typeof caps[key] !== "boolean") problems.push(`capabilities.${key} must be a boolean, got ${typeof caps[key]}`);
    }
    if (caps.synchronous === true && absent.length > 0 && present.length === 0) {
      problems.push(`capabilities.synchronous is true, but it lacks ${list(absent)}`);
    } else if (caps.synchronous === false && present.length === SYNC_MEMBERS.length) {
      problems.push(`capabilities.synchronous is false, but it has ${list(present)}: say true`);
    }
  }
  if (problems.length > 0) {
    const label = typeof s.url === "string" ? ` ${JSON.stringify(s.url)}` : "";
    const kind = (value as object).constructor?.name ?? "object";
    throw new TypeError(`${context}: ${kind}${label} is not a complete Storage: ${problems.join("; ")}`);
  }
}
