/**
 * The client storage: `DB.open("amber://host:port[/name]", { token })`, a Storage whose
 * records live in an `amber serve` process, reached over the protocol of protocol.ts.
 *
 * - One connection per storage, owned by a worker thread (client-worker.mjs) behind the
 *   request/response channel (remote/rpc-channel.ts): asynchronous calls await the reply,
 *   synchronous calls (a ghost touched in plain code) block on `Atomics.wait` until it has
 *   come. Both read one ordered stream, so invalidations are always applied before a reply
 *   that was sent after them.
 * - Every operation is written once, as a generator of requests, and driven synchronously
 *   or asynchronously by the session (client-session.ts), which also connects, reconnects
 *   and decides what a lost connection means for the requests in flight.
 * - Invalidations are pushed by the server after every commit; `changesSince` is answered
 *   from them locally (`capabilities.pushesInvalidations`).
 * - A record cache (client-cache.ts) bounded in bytes, shared by the DB's connections,
 *   optionally saved to `clientCachePath` at close and revalidated at the next open. A load
 *   it answers is no round trip: `remoteRequests` counts only requests sent to the server.
 * - New oids come from the server in blocks.
 * - Losing the connection fails the requests in flight with `StorageError` (code
 *   "disconnected"). A commit in flight is not left in doubt: each carries a unique id, and
 *   after reconnecting the client asks the server whether it happened; `finish` then
 *   returns its tid, or fails with "disconnected" when it did not (nothing was committed,
 *   and the server makes sure it never will be). Only when the server cannot be reached
 *   again within `commitRecoveryMs` does it fail with "commit-unknown". The next call
 *   after an outage reconnects, learns what changed meanwhile, and bumps `session`, so a
 *   transaction that spanned the outage fails instead of reading on.
 */
import { randomUUID } from "node:crypto";
import { StorageError } from "../../errors.ts";
import { closureLimits } from "../closure.ts";
import { checkPlan } from "../plan-walk.ts";
import type {
  Changes,
  ClosureOptions,
  ClosureResult,
  CommitRequest,
  Oid,
  PlanOptions,
  PlanResult,
  PlanStep,
  Storage,
  StorageCapabilities,
  StorageConflict,
  StoredRecord,
  Tid,
  TransactionInfo,
} from "../storage.ts";
import { checkCommitRequest, checkCount, checkLimit, checkOid, checkOids, checkTid } from "../validation.ts";
import { ClientCache } from "./client-cache.ts";
import { ClientSession, CONNECT, type Op, type Request, type SessionSettings } from "./client-session.ts";
import { Cmd, COMMIT_ID_KEY, DEFAULT_PORT, type FrameReader } from "./protocol.ts";

export interface ClientOptions {
  /**
   * false: fail with code "not-found" instead of making the server create a database
   * that does not exist yet (servers with one store per name). Default true.
   */
  create?: boolean;
  /** The server's token (`amber serve --token`). */
  token?: string;
  /** Connect with TLS; `ca` trusts a self-signed server certificate. */
  tls?: { ca?: string | Buffer; rejectUnauthorized?: boolean; servername?: string };
  /** Bytes of records cached for all connections of the DB (default 128 MiB; 0: none). */
  clientCacheBytes?: number;
  /** Save the record cache here at close and reuse it (revalidated) at the next open. */
  clientCachePath?: string;
  /**
   * Ask the server for its newest tid when a transaction begins (default true), so that a
   * commit another process made and reported is always seen. false saves that round
   * trip per transaction and sees other commits as soon as their invalidations arrive
   * (ZEO's default behaviour).
   */
  serverSync?: boolean;
  /** Give up connecting after this long (default 5,000 ms). */
  connectTimeoutMs?: number;
  /** Give up waiting for a reply after this long (default 60,000 ms). */
  requestTimeoutMs?: number;
  /**
   * After losing the connection during a commit, keep trying to reach the server and ask
   * whether the commit happened for this long (default 10,000 ms); then the commit fails
   * with code "commit-unknown".
   */
  commitRecoveryMs?: number;
}

/** Cached records named in a closure request, so the server sends markers for them. */
const MAX_CACHED = 200_000;
/** Oids asked for at a time; the unused rest of a block is never handed out. */
const OID_BLOCK = 512;

export class ClientStorage implements Storage {
  readonly url: string;
  readonly #options: ClientOptions;
  readonly #cache: ClientCache;
  readonly #session: ClientSession;
  #nextVote = 1;
  /** Voted requests: their vote id, commit id and the session they were voted in. */
  readonly #votes = new WeakMap<CommitRequest, { id: number; commitId: string; session: number }>();
  /** Commit ids: this storage's random prefix and a counter. */
  readonly #commitPrefix = randomUUID();
  #nextCommit = 1;
  #oidPool: Oid[] = [];
  #closed = false;

  private constructor(url: string, host: string, port: number, database: string, options: ClientOptions) {
    this.url = url;
    this.#options = options;
    this.#cache = new ClientCache(options.clientCacheBytes ?? 128 * 1024 * 1024);
    const { token, create, tls, clientCachePath } = options;
    const settings: SessionSettings = {
      ...{ url, host, port, database, token, create, tls, clientCachePath },
      connectTimeoutMs: options.connectTimeoutMs ?? 5000,
      requestTimeoutMs: options.requestTimeoutMs ?? 60_000,
      commitRecoveryMs: options.commitRecoveryMs ?? 10_000,
    };
    this.#session = new ClientSession(settings, this.#cache, () => (this.#oidPool = []));
  }

  /** Connect to `amber://host[:port][/name]`. */
  static async open(url: string, options: ClientOptions = {}): Promise<ClientStorage> {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new TypeError(`${url} is not a valid amber:// URL (expected amber://host:port or amber://host:port/name)`);
    }
    if (parsed.protocol !== "amber:" || parsed.hostname === "") {
      throw new TypeError(`${url} is not a valid amber:// URL (expected amber://host:port or amber://host:port/name)`);
    }
    const host = parsed.hostname.replace(/^\[(.*)\]$/, "$1");
    const port = parsed.port === "" ? DEFAULT_PORT : Number(parsed.port);
    const database = decodeURIComponent(parsed.pathname.replace(/^\//, ""));
    const { clientCacheBytes, connectTimeoutMs, requestTimeoutMs, commitRecoveryMs } = options;
    for (const [k, v] of Object.entries({ clientCacheBytes, connectTimeoutMs, requestTimeoutMs, commitRecoveryMs })) {
      if (v !== undefined && !(typeof v === "number" && v >= 0)) throw new RangeError(`${k} must be a non-negative number, got ${String(v)}`);
    }
    const storage = new ClientStorage(url, host, port, database, options);
    try {
      await storage.#session.run(storage.#connectOp());
    } catch (err) {
      await storage.close();
      throw err;
    }
    return storage;
  }

  get id(): string {
    return this.#session.id;
  }

  get capabilities(): StorageCapabilities {
    return this.#session.capabilities;
  }

  get session(): number {
    return this.#session.number;
  }

  /**
   * Requests sent to the server since open: the round trips. A load answered from the
   * record cache sends none; a reconnect sends its handshake.
   */
  get remoteRequests(): number {
    return this.#session.requests;
  }

  /** Record cache figures: entries, bytes, hits and misses since open. */
  get cacheInfo(): { entries: number; bytes: number; hits: number; misses: number; knownTid: Tid } {
    const c = this.#cache;
    return { entries: c.size, bytes: c.bytes, hits: c.hits, misses: c.misses, knownTid: c.known };
  }

  // --- reads ---------------------------------------------------------------------------------

  async lastTid(): Promise<Tid> {
    this.#session.checkOpen();
    return this.#session.run(this.#single({ kind: Cmd.LAST_TID }, (r) => r.id53("tid")));
  }

  async load(oids: readonly Oid[], at: Tid): Promise<Array<StoredRecord | null>> {
    this.#checkLoad(oids, at);
    return this.#session.run(this.#loadOp(oids, at));
  }

  loadSync(oids: readonly Oid[], at: Tid): Array<StoredRecord | null> {
    this.#checkLoad(oids, at);
    return this.#session.runSync(this.#loadOp(oids, at));
  }

  loadOneSync(oid: Oid, at: Tid, borrow: boolean): StoredRecord | null {
    this.#session.checkOpen();
    checkOid(oid);
    checkTid(at, "at");
    this.#session.drain();
    const hit = this.#cache.get(oid, at);
    if (hit !== undefined) return { oid, serial: hit.serial, data: borrow ? hit.data : hit.data.slice() };
    return this.#session.runSync(this.#fetchOp([oid], at))[0] ?? null;
  }

  #checkLoad(oids: readonly Oid[], at: Tid): void {
    this.#session.checkOpen();
    checkOids(oids);
    checkTid(at, "at");
  }

  /** Cached records (copied), and the others from the server in one LOAD. */
  *#loadOp(oids: readonly Oid[], at: Tid): Op<Array<StoredRecord | null>> {
    this.#session.drain();
    const out: Array<StoredRecord | null> = new Array(oids.length).fill(null);
    const missing: Oid[] = [];
    const where: number[] = [];
    oids.forEach((oid, i) => {
      const hit = this.#cache.get(oid, at);
      if (hit !== undefined) out[i] = { oid, serial: hit.serial, data: hit.data.slice() };
      else {
        missing.push(oid);
        where.push(i);
      }
    });
    if (missing.length === 0) return out;
    const loaded = yield* this.#fetchOp(missing, at);
    loaded.forEach((rec, k) => {
      if (rec !== null) out[where[k]!] = rec;
    });
    return out;
  }

  /** One LOAD of `oids` (one entry per oid, in order), the records put in the cache. */
  *#fetchOp(oids: readonly Oid[], at: Tid): Op<Array<StoredRecord | null>> {
    const r = yield { kind: Cmd.LOAD, write: (w) => w.num(at).nums(oids) };
    const records = r.records();
    for (const rec of records) if (rec !== null) this.#cache.put(rec, at);
    return records;
  }

  /**
   * One LOAD_CLOSURE request (two in the rare case below). Besides the caller's `have`,
   * the request lists the (oid, serial) of records this client's cache holds; the server
   * counts those against the limits in breadth-first order like any other, but sends only
   * a marker, and the record comes from the cache. A marker whose record the cache lost
   * meanwhile (evicted, or invalidated by a push that arrived first) is loaded again.
   */
  async loadClosure(oid: Oid, at: Tid, options: ClosureOptions = {}): Promise<ClosureResult> {
    this.#session.checkOpen();
    checkOid(oid);
    checkTid(at, "at");
    const limits = closureLimits(options);
    // The wire carries integers below 2^53: larger or fractional limits mean the same there.
    const maxObjects = Math.min(limits.maxObjects, Number.MAX_SAFE_INTEGER);
    const maxBytes = Math.min(Math.floor(limits.maxBytes), Number.MAX_SAFE_INTEGER);
    const have = options.have ?? [];
    return this.#session.run(this.#closureOp(oid, at, maxObjects, maxBytes, have));
  }

  *#closureOp(oid: Oid, at: Tid, maxObjects: number, maxBytes: number, have: readonly Oid[]): Op<ClosureResult> {
    const cached = this.#cachedPairs(at, have);
    const r = yield { kind: Cmd.LOAD_CLOSURE, write: (w) => w.num(at).num(oid).num(maxObjects).num(maxBytes).nums(have).pairs(cached) };
    const records = yield* this.#recordsWithMarkers(r, at);
    r.nums(); // held: the caller's own `have`
    const truncated = r.u8() === 1;
    const missing = r.nums();
    return { records, missing, truncated };
  }

  /** One LOAD_PLAN request: the server evaluates the plan (see plan-walk.ts). */
  async loadPlan(steps: readonly PlanStep[], at: Tid, options: PlanOptions = {}): Promise<PlanResult> {
    this.#session.checkOpen();
    checkTid(at, "at");
    checkPlan(steps);
    return this.#session.run(this.#planOp(steps, at, options.have ?? []));
  }

  *#planOp(steps: readonly PlanStep[], at: Tid, have: readonly Oid[]): Op<PlanResult> {
    const cached = this.#cachedPairs(at, have);
    const r = yield { kind: Cmd.LOAD_PLAN, write: (w) => w.num(at).msgpack(steps).nums(have).pairs(cached) };
    const records = yield* this.#recordsWithMarkers(r, at);
    const groups: Oid[][] = new Array(r.u32());
    for (let i = 0; i < groups.length; i++) groups[i] = r.nums();
    const missing = r.msgpack() as Array<{ oid: Oid; path: string }>;
    return { records, groups, missing };
  }

  /** (oid, serial) of the cached records valid at `at` that fit in a request, `have` left out. */
  #cachedPairs(at: Tid, have: readonly Oid[]): Array<[Oid, Tid]> {
    this.#session.drain();
    const room = Math.floor((this.#session.maxFrame / 2 - 8 * have.length) / 16);
    return this.#cache.validAt(at, Math.max(0, Math.min(MAX_CACHED, room)), have.length === 0 ? null : new Set(have));
  }

  /**
   * The records of a closure or plan reply, markers replaced by this cache's records (read
   * before the new ones are cached, which could evict them; any lost meanwhile are loaded
   * again). Every record was checked: by the server's walk, or when it was cached.
   */
  *#recordsWithMarkers(r: FrameReader, at: Tid): Op<StoredRecord[]> {
    const entries = r.closureRecords();
    const records: StoredRecord[] = new Array(entries.length);
    const lost: number[] = [];
    entries.forEach((e, i) => {
      if (e.data !== null) records[i] = e as StoredRecord;
      else {
        const hit = this.#cache.get(e.oid, at);
        if (hit !== undefined && hit.serial === e.serial) records[i] = { oid: e.oid, serial: e.serial, data: hit.data };
        else lost.push(i);
      }
    });
    // The cache keeps copies (a view would keep the whole reply in memory).
    for (const e of entries) if (e.data !== null) this.#cache.put(e as StoredRecord, at, true, true);
    if (lost.length > 0) {
      const again = yield* this.#loadOp(lost.map((i) => entries[i]!.oid), at);
      lost.forEach((i, k) => {
        const rec = again[k];
        if (rec === null || rec === undefined) throw new StorageError(`object ${entries[i]!.oid} vanished during a batch load`, { oid: entries[i]!.oid });
        records[i] = rec;
      });
    }
    return records;
  }

  async loadBefore(oid: Oid, before: Tid): Promise<StoredRecord | null> {
    this.#session.checkOpen();
    checkOid(oid);
    checkTid(before, "before");
    return this.#session.run(this.#single({ kind: Cmd.LOAD_BEFORE, write: (w) => w.num(oid).num(before) }, (r) => r.records()[0] ?? null));
  }

  async history(oid: Oid, limit?: number): Promise<StoredRecord[]> {
    this.#session.checkOpen();
    checkOid(oid);
    const max = checkLimit(limit);
    const step: Request = { kind: Cmd.HISTORY, write: (w) => w.num(oid).num(Number.isFinite(max) ? max : 0) };
    return this.#session.run(this.#single(step, (r) => r.records() as StoredRecord[]));
  }

  async transactions(since: Tid = 0, limit?: number): Promise<TransactionInfo[]> {
    this.#session.checkOpen();
    checkTid(since, "since");
    const max = checkLimit(limit);
    const step: Request = { kind: Cmd.TRANSACTIONS, write: (w) => w.num(since).num(Number.isFinite(max) ? max : 0) };
    return this.#session.run(this.#single(step, (r) => r.msgpack() as TransactionInfo[]));
  }

  /** One request, its reply read by `read`. */
  *#single<T>(step: Request, read: (r: FrameReader) => T): Op<T> {
    return read(yield step);
  }

  *#connectOp(): Op<void> {
    yield CONNECT;
  }

  // --- oids --------------------------------------------------------------------------------

  async newOids(count: number): Promise<Oid[]> {
    this.#session.checkOpen();
    checkCount(count, "count");
    return this.#session.run(this.#newOidsOp(count));
  }

  newOidsSync(count: number): Oid[] {
    this.#session.checkOpen();
    checkCount(count, "count");
    return this.#session.runSync(this.#newOidsOp(count));
  }

  *#newOidsOp(count: number): Op<Oid[]> {
    if (this.#oidPool.length < count) {
      const r = yield { kind: Cmd.NEW_OIDS, write: (w) => w.u32(Math.max(count, OID_BLOCK)) };
      for (const oid of r.nums()) this.#oidPool.push(oid);
    }
    return this.#oidPool.splice(0, count);
  }

  // --- commits -------------------------------------------------------------------------------

  async vote(request: CommitRequest): Promise<StorageConflict[]> {
    this.#session.checkOpen();
    checkCommitRequest(request);
    const voteId = this.#nextVote++;
    const commitId = this.#newCommitId();
    const sent = withCommitId(request, commitId);
    const conflicts = await this.#session.run(this.#single({ kind: Cmd.VOTE, write: (w) => w.u32(voteId).request(sent) }, (r) => r.conflicts()));
    if (conflicts.length === 0) this.#votes.set(request, { id: voteId, commitId, session: this.#session.number });
    return conflicts;
  }

  async finish(request: CommitRequest): Promise<Tid> {
    this.#session.checkOpen();
    checkCommitRequest(request);
    const vote = this.#votes.get(request);
    this.#votes.delete(request);
    if (vote !== undefined && (vote.session !== this.#session.number || !this.#session.connected)) {
      // The server forgot the vote with the connection it came on: nothing was written.
      throw new StorageError(`lost the connection to ${this.url} after the vote; nothing was committed`, { code: "disconnected" });
    }
    const commitId = vote?.commitId ?? this.#newCommitId();
    const step: Request =
      vote === undefined
        ? { kind: Cmd.COMMIT, write: (w) => w.request(withCommitId(request, commitId)), commit: true }
        : { kind: Cmd.FINISH, write: (w) => w.u32(vote.id), commit: true };
    return this.#session.run(this.#commitOp(step, commitId, this.#cache.known));
  }

  /** Send a commit; if its connection is lost, find out from the server what became of it. */
  *#commitOp(step: Request, commitId: string, since: Tid): Op<Tid> {
    try {
      return (yield step).id53("tid");
    } catch (err) {
      if (!(err instanceof StorageError && err.code === "commit-unknown")) throw err;
      return yield* this.#session.recoverCommit(commitId, since, err);
    }
  }

  async abort(request: CommitRequest): Promise<void> {
    this.#session.checkOpen();
    const vote = this.#votes.get(request);
    this.#votes.delete(request);
    // A lost connection aborted it already.
    if (vote === undefined || !this.#session.connected || vote.session !== this.#session.number) return;
    await this.#session.run(this.#single({ kind: Cmd.ABORT, write: (w) => w.u32(vote.id) }, () => undefined));
  }

  async undo(tid: Tid): Promise<Tid> {
    this.#session.checkOpen();
    checkTid(tid, "tid");
    return this.#session.run(this.#single({ kind: Cmd.UNDO, write: (w) => w.num(tid), commit: true }, (r) => r.id53("tid")));
  }

  #newCommitId(): string {
    return `${this.#commitPrefix}/${this.#nextCommit++}`;
  }

  // --- invalidations -------------------------------------------------------------------------

  /**
   * Answered from the pushed invalidations, after one LAST_TID round trip (the server
   * answers it after every invalidation before it, so a commit another process reported
   * is seen), unless `serverSync` is false or `ownCommit` says the caller just committed
   * (the commit's reply came after every invalidation before it). When disconnected it
   * first tries to reconnect; if that fails the answer is what was known before the outage
   * (a consistent, older snapshot), and the first request that reaches the server again
   * starts a new session, failing the transaction that began in the old one.
   */
  async changesSince(since: Tid, ownCommit?: Tid): Promise<Changes> {
    this.#session.checkOpen();
    checkTid(since, "since");
    return this.#session.run(this.#changesOp(since, ownCommit));
  }

  changesSinceSync(since: Tid, ownCommit?: Tid): Changes {
    this.#session.checkOpen();
    checkTid(since, "since");
    return this.#session.runSync(this.#changesOp(since, ownCommit));
  }

  *#changesOp(since: Tid, ownCommit: Tid | undefined): Op<Changes> {
    let local = true;
    try {
      if (!this.#session.connected) yield CONNECT;
      if (this.#syncNeeded(ownCommit)) {
        yield { kind: Cmd.LAST_TID };
        local = false;
      }
    } catch {
      // Unreachable: answer from what is known (see above).
    }
    this.#session.drain();
    const changes = this.#cache.changesSince(since);
    return local ? { ...changes, local } : changes;
  }

  #syncNeeded(ownCommit: Tid | undefined): boolean {
    if (this.#options.serverSync === false) return false;
    return ownCommit === undefined || ownCommit > this.#cache.known || !this.#session.connected;
  }

  // --- closing -------------------------------------------------------------------------------

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#options.clientCachePath !== undefined && this.#session.id !== "" && this.#cache.size > 0) {
      try {
        this.#cache.save(this.#options.clientCachePath, this.#session.id);
      } catch {
        // Saving the cache is an optimisation: a failure only means a cold start next time.
      }
    }
    await this.#session.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** `request` as sent: its metadata carries the commit id (protocol.ts, COMMIT IDS). */
function withCommitId(request: CommitRequest, commitId: string): CommitRequest {
  return { ...request, meta: { ...request.meta, [COMMIT_ID_KEY]: commitId } };
}
