/**
 * The client storage: `DB.open("amber://host:port[/name]", { token })`, a Storage whose
 * records live in an `amber serve` process, reached over the protocol of protocol.ts.
 *
 * - One socket per storage, owned by a worker thread (client-worker.mjs). Asynchronous
 *   calls post a frame and await the reply; synchronous calls (a ghost touched in plain
 *   code) post a frame and block on `Atomics.wait` until the worker has the reply. Both
 *   read one ordered stream of frames, so invalidations are always applied before a reply
 *   that was sent after them.
 * - Invalidations are pushed by the server after every commit; `changesSince` is answered
 *   from them locally (`capabilities.pushesInvalidations`).
 * - A record cache (client-cache.ts) bounded in bytes, shared by the DB's connections,
 *   optionally saved to `clientCachePath` at close and revalidated at the next open.
 * - New oids come from the server in blocks.
 * - Losing the connection fails the requests in flight with `StorageError` (code
 *   "disconnected"; for a commit "commit-unknown": it may or may not have happened). The
 *   next call reconnects, learns what changed meanwhile, and bumps `session`, so a
 *   transaction that spanned the outage fails instead of reading on.
 */
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from "node:worker_threads";
import { ProtocolError, StorageError } from "../../errors.ts";
import { closureLimits } from "../closure.ts";
import { checkPlan } from "../plan-walk.ts";
import type {
  Changes,
  ClosureOptions,
  ClosureResult,
  PlanOptions,
  PlanResult,
  PlanStep,
  CommitRequest,
  Oid,
  Storage,
  StorageCapabilities,
  StorageConflict,
  StoredRecord,
  Tid,
  TransactionInfo,
} from "../storage.ts";
import { checkCommitRequest, checkCount, checkLimit, checkOid, checkOids, checkTid } from "../validation.ts";
import { ClientCache } from "./client-cache.ts";
import {
  Cmd,
  commandName,
  CLIENT_MAX_FRAME,
  decodeError,
  DEFAULT_MAX_FRAME,
  DEFAULT_PORT,
  FrameReader,
  FrameWriter,
  notAmberError,
  PROTOCOL_VERSION,
  Reply,
  type HelloReply,
} from "./protocol.ts";

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
}

/** Cached records named in a closure request, so the server sends markers for them. */
const MAX_CACHED = 200_000;
/** Oids asked for at a time; the unused rest of a block is never handed out. */
const OID_BLOCK = 512;

type Settle = { resolve: (r: FrameReader) => void; reject: (e: Error) => void; commit: boolean };
type Step = { kind: number; write?: (w: FrameWriter) => void };

export class ClientStorage implements Storage {
  readonly url: string;
  #id = "";
  #capabilities: StorageCapabilities = { synchronous: true, history: true, pushesInvalidations: true };
  #session = 0;
  readonly #options: ClientOptions;
  readonly #database: string;
  /** host:port, for messages. */
  readonly #address: string;
  readonly #worker: Worker;
  readonly #port: MessagePort;
  readonly #signal: Int32Array;
  readonly #cache: ClientCache;
  readonly #pending = new Map<number, Settle>();
  #nextId = 1;
  #nextVote = 1;
  /** Voted requests: their vote id and the session they were voted in. */
  readonly #votes = new WeakMap<CommitRequest, { id: number; session: number }>();
  #oidPool: Oid[] = [];
  /** The largest request the server accepts (from HELLO). */
  #maxFrame = DEFAULT_MAX_FRAME;
  #connected = false;
  /** Set by the worker's "connected" / "disconnected" messages while a connect waits. */
  #connectOutcome: { ok: true } | { ok: false; error: string } | undefined;
  #connectWaiter: (() => void) | undefined;
  #lastError = "";
  #everConnected = false;
  #closed = false;
  #refs = 0;

  private constructor(url: string, host: string, port: number, database: string, options: ClientOptions) {
    this.url = url;
    this.#options = options;
    this.#database = database;
    this.#address = `${host.includes(":") ? `[${host}]` : host}:${port}`;
    this.#cache = new ClientCache(options.clientCacheBytes ?? 128 * 1024 * 1024);
    const { port1, port2 } = new MessageChannel();
    this.#port = port1;
    this.#signal = new Int32Array(new SharedArrayBuffer(4));
    const tlsOptions =
      options.tls === undefined
        ? null
        : {
            ...(options.tls.ca === undefined ? {} : { ca: options.tls.ca }),
            rejectUnauthorized: options.tls.rejectUnauthorized ?? true,
            servername: options.tls.servername ?? (/^[\d.:]+$/.test(host) ? undefined : host),
          };
    this.#worker = new Worker(new URL("./client-worker.mjs", import.meta.url), {
      workerData: {
        port: port2,
        signal: this.#signal,
        host,
        portNumber: port,
        tlsOptions,
        maxFrame: CLIENT_MAX_FRAME,
        connectTimeoutMs: options.connectTimeoutMs ?? 5000,
      },
      transferList: [port2],
    });
    this.#worker.unref();
    this.#worker.on("error", (err) => {
      this.#lastError = `client worker failed: ${err.message}`;
      this.#connectOutcome = { ok: false, error: this.#lastError };
      this.#onDisconnected(this.#lastError);
      this.#connectWaiter?.();
    });
    port1.on("message", (m) => this.#onMessage(m));
    port1.unref();
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
    for (const [k, v] of [["clientCacheBytes", options.clientCacheBytes], ["connectTimeoutMs", options.connectTimeoutMs], ["requestTimeoutMs", options.requestTimeoutMs]] as const) {
      if (v !== undefined && !(typeof v === "number" && v >= 0)) throw new RangeError(`${k} must be a non-negative number, got ${String(v)}`);
    }
    const storage = new ClientStorage(url, host, port, database, options);
    try {
      await storage.#connect();
    } catch (err) {
      await storage.close();
      throw err;
    }
    return storage;
  }

  get id(): string {
    return this.#id;
  }

  get capabilities(): StorageCapabilities {
    return this.#capabilities;
  }

  get session(): number {
    return this.#session;
  }

  /** Record cache figures: entries, bytes, hits and misses since open. */
  get cacheInfo(): { entries: number; bytes: number; hits: number; misses: number; knownTid: Tid } {
    const c = this.#cache;
    return { entries: c.size, bytes: c.bytes, hits: c.hits, misses: c.misses, knownTid: c.known };
  }

  // --- Storage ---------------------------------------------------------------------------

  async lastTid(): Promise<Tid> {
    const r = await this.#call({ kind: Cmd.LAST_TID });
    return r.id53("tid");
  }

  async load(oids: readonly Oid[], at: Tid): Promise<Array<StoredRecord | null>> {
    this.#checkOpen();
    checkOids(oids);
    checkTid(at, "at");
    const { out, missing, where } = this.#fromCache(oids, at);
    if (missing.length > 0) this.#fill(out, where, at, await this.#call(this.#loadStep(missing, at)));
    return out;
  }

  loadSync(oids: readonly Oid[], at: Tid): Array<StoredRecord | null> {
    this.#checkOpen();
    checkOids(oids);
    checkTid(at, "at");
    const { out, missing, where } = this.#fromCache(oids, at);
    if (missing.length > 0) this.#fill(out, where, at, this.#callSync(this.#loadStep(missing, at)));
    return out;
  }

  loadOneSync(oid: Oid, at: Tid, borrow: boolean): StoredRecord | null {
    this.#checkOpen();
    checkOid(oid);
    checkTid(at, "at");
    this.#drain();
    const hit = this.#cache.get(oid, at);
    if (hit !== undefined) return { oid, serial: hit.serial, data: borrow ? hit.data : hit.data.slice() };
    const r = this.#callSync(this.#loadStep([oid], at));
    const rec = r.records()[0] ?? null;
    if (rec !== null) this.#cache.put(rec, at);
    return rec;
  }

  /**
   * One LOAD_CLOSURE request (two in the rare case below). Besides the caller's `have`,
   * the request lists the (oid, serial) of records this client's cache holds; the server
   * counts those against the limits in breadth-first order like any other, but sends only
   * a marker, and the record comes from the cache. A marker whose record the cache lost
   * meanwhile (evicted, or invalidated by a push that arrived first) is loaded again.
   */
  async loadClosure(oid: Oid, at: Tid, options: ClosureOptions = {}): Promise<ClosureResult> {
    this.#checkOpen();
    checkOid(oid);
    checkTid(at, "at");
    const limits = closureLimits(options);
    // The wire carries integers below 2^53: larger or fractional limits mean the same there.
    const maxObjects = Math.min(limits.maxObjects, Number.MAX_SAFE_INTEGER);
    const maxBytes = Math.min(Math.floor(limits.maxBytes), Number.MAX_SAFE_INTEGER);
    const have = options.have ?? [];
    this.#drain();
    const room = Math.floor((this.#maxFrame / 2 - 8 * have.length) / 16);
    const cached = this.#cache.validAt(at, Math.max(0, Math.min(MAX_CACHED, room)), have.length === 0 ? null : new Set(have));
    const r = await this.#call({
      kind: Cmd.LOAD_CLOSURE,
      write: (w) => w.num(at).num(oid).num(maxObjects).num(maxBytes).nums(have).pairs(cached),
    });
    const records = await this.#recordsWithMarkers(r, at);
    r.nums(); // held: the caller's own `have`
    const truncated = r.u8() === 1;
    const missing = r.nums();
    return { records, missing, truncated };
  }

  /** One LOAD_PLAN request: the server evaluates the plan (see plan-walk.ts). */
  async loadPlan(steps: readonly PlanStep[], at: Tid, options: PlanOptions = {}): Promise<PlanResult> {
    this.#checkOpen();
    checkTid(at, "at");
    checkPlan(steps);
    const have = options.have ?? [];
    this.#drain();
    const room = Math.floor((this.#maxFrame / 2 - 8 * have.length) / 16);
    const cached = this.#cache.validAt(at, Math.max(0, Math.min(MAX_CACHED, room)), have.length === 0 ? null : new Set(have));
    const r = await this.#call({
      kind: Cmd.LOAD_PLAN,
      write: (w) => w.num(at).msgpack(steps).nums(have).pairs(cached),
    });
    const records = await this.#recordsWithMarkers(r, at);
    const groups: Oid[][] = new Array(r.u32());
    for (let i = 0; i < groups.length; i++) groups[i] = r.nums();
    const missing = r.msgpack() as Array<{ oid: Oid; path: string }>;
    return { records, groups, missing };
  }

  /**
   * The records of a closure or plan reply, markers replaced by this cache's records (read
   * before the new ones are cached, which could evict them; any lost meanwhile are loaded
   * again). Every record was checked: by the server's walk, or when it was cached.
   */
  async #recordsWithMarkers(r: FrameReader, at: Tid): Promise<StoredRecord[]> {
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
      const again = await this.load(lost.map((i) => entries[i]!.oid), at);
      lost.forEach((i, k) => {
        const rec = again[k];
        if (rec === null || rec === undefined) throw new StorageError(`object ${entries[i]!.oid} vanished during a batch load`, { oid: entries[i]!.oid });
        records[i] = rec;
      });
    }
    return records;
  }

  async loadBefore(oid: Oid, before: Tid): Promise<StoredRecord | null> {
    this.#checkOpen();
    checkOid(oid);
    checkTid(before, "before");
    const r = await this.#call({ kind: Cmd.LOAD_BEFORE, write: (w) => w.num(oid).num(before) });
    return r.records()[0] ?? null;
  }

  async history(oid: Oid, limit?: number): Promise<StoredRecord[]> {
    this.#checkOpen();
    checkOid(oid);
    const max = checkLimit(limit);
    const r = await this.#call({ kind: Cmd.HISTORY, write: (w) => w.num(oid).num(Number.isFinite(max) ? max : 0) });
    return r.records() as StoredRecord[];
  }

  async newOids(count: number): Promise<Oid[]> {
    this.#checkOpen();
    checkCount(count, "count");
    if (this.#oidPool.length < count) this.#refill(await this.#call(this.#oidStep(count)));
    return this.#oidPool.splice(0, count);
  }

  newOidsSync(count: number): Oid[] {
    this.#checkOpen();
    checkCount(count, "count");
    if (this.#oidPool.length < count) this.#refill(this.#callSync(this.#oidStep(count)));
    return this.#oidPool.splice(0, count);
  }

  async vote(request: CommitRequest): Promise<StorageConflict[]> {
    this.#checkOpen();
    checkCommitRequest(request);
    const voteId = this.#nextVote++;
    const r = await this.#call({ kind: Cmd.VOTE, write: (w) => w.u32(voteId).request(request) });
    const conflicts = r.conflicts();
    if (conflicts.length === 0) this.#votes.set(request, { id: voteId, session: this.#session });
    return conflicts;
  }

  async finish(request: CommitRequest): Promise<Tid> {
    this.#checkOpen();
    checkCommitRequest(request);
    const vote = this.#votes.get(request);
    this.#votes.delete(request);
    if (vote !== undefined && (vote.session !== this.#session || !this.#connected)) {
      // The server forgot the vote with the connection it came on: nothing was written.
      throw new StorageError(`lost the connection to ${this.url} after the vote; nothing was committed`, { code: "disconnected" });
    }
    const step: Step =
      vote === undefined ? { kind: Cmd.COMMIT, write: (w) => w.request(request) } : { kind: Cmd.FINISH, write: (w) => w.u32(vote.id) };
    const r = await this.#call(step, true);
    return r.id53("tid");
  }

  async abort(request: CommitRequest): Promise<void> {
    this.#checkOpen();
    const vote = this.#votes.get(request);
    this.#votes.delete(request);
    if (vote === undefined || !this.#connected || vote.session !== this.#session) return; // a lost connection aborted it already
    await this.#call({ kind: Cmd.ABORT, write: (w) => w.u32(vote.id) });
  }

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
    this.#checkOpen();
    checkTid(since, "since");
    let local = true;
    try {
      if (!this.#connected) await this.#connect();
      if (this.#syncNeeded(ownCommit)) {
        await this.#call({ kind: Cmd.LAST_TID });
        local = false;
      }
    } catch {
      // see above
    }
    this.#drain();
    const changes = this.#cache.changesSince(since);
    return local ? { ...changes, local } : changes;
  }

  changesSinceSync(since: Tid, ownCommit?: Tid): Changes {
    this.#checkOpen();
    checkTid(since, "since");
    let local = true;
    try {
      if (!this.#connected) this.#connectSync();
      if (this.#syncNeeded(ownCommit)) {
        this.#callSync({ kind: Cmd.LAST_TID });
        local = false;
      }
    } catch {
      // see changesSince
    }
    this.#drain();
    const changes = this.#cache.changesSince(since);
    return local ? { ...changes, local } : changes;
  }

  #syncNeeded(ownCommit: Tid | undefined): boolean {
    if (this.#options.serverSync === false) return false;
    return ownCommit === undefined || ownCommit > this.#cache.known || !this.#connected;
  }

  async transactions(since: Tid = 0, limit?: number): Promise<TransactionInfo[]> {
    this.#checkOpen();
    checkTid(since, "since");
    const max = checkLimit(limit);
    const r = await this.#call({ kind: Cmd.TRANSACTIONS, write: (w) => w.num(since).num(Number.isFinite(max) ? max : 0) });
    return r.msgpack() as TransactionInfo[];
  }

  async undo(tid: Tid): Promise<Tid> {
    this.#checkOpen();
    checkTid(tid, "tid");
    const r = await this.#call({ kind: Cmd.UNDO, write: (w) => w.num(tid) }, true);
    return r.id53("tid");
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#options.clientCachePath !== undefined && this.#id !== "" && this.#cache.size > 0) {
      try {
        this.#cache.save(this.#options.clientCachePath, this.#id);
      } catch {
        // Saving the cache is an optimisation: a failure only means a cold start next time.
      }
    }
    this.#failPending("closed", `${this.url} was closed`);
    this.#connectOutcome = { ok: false, error: "the storage was closed" };
    this.#connectWaiter?.();
    this.#port.postMessage({ type: "close" });
    this.#port.close();
    await this.#worker.terminate();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- requests ----------------------------------------------------------------------------

  #loadStep(oids: readonly Oid[], at: Tid): Step {
    return { kind: Cmd.LOAD, write: (w) => w.num(at).nums(oids) };
  }

  #oidStep(count: number): Step {
    const want = Math.max(count, OID_BLOCK);
    return { kind: Cmd.NEW_OIDS, write: (w) => w.u32(want) };
  }

  #refill(r: FrameReader): void {
    for (const oid of r.nums()) this.#oidPool.push(oid);
  }

  /** Cached records (copied) at their places in `out`; the others to load, and where they go. */
  #fromCache(oids: readonly Oid[], at: Tid): { out: Array<StoredRecord | null>; missing: Oid[]; where: number[] } {
    this.#drain();
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
    return { out, missing, where };
  }

  /** Put a LOAD reply (one entry per requested oid, in order) into `out` and the cache. */
  #fill(out: Array<StoredRecord | null>, where: number[], at: Tid, r: FrameReader): void {
    const records = r.records();
    records.forEach((rec, k) => {
      if (rec === null) return;
      this.#cache.put(rec, at);
      out[where[k]!] = rec;
    });
  }

  #frame(step: Step, id: number): ArrayBuffer {
    const w = new FrameWriter(id, step.kind);
    step.write?.(w);
    const bytes = w.finish();
    if (bytes.length - 4 > this.#maxFrame) {
      throw new StorageError(
        `a ${commandName(step.kind) ?? "request"} of ${bytes.length} bytes is larger than ${this.url} accepts ` +
          `(${this.#maxFrame} bytes; amber serve --max-frame)`,
        { code: "too-large" },
      );
    }
    const ab = new ArrayBuffer(bytes.length);
    new Uint8Array(ab).set(bytes);
    return ab;
  }

  async #call(step: Step, commit = false): Promise<FrameReader> {
    this.#checkOpen();
    if (!this.#connected) await this.#connect();
    return this.#send(step, commit);
  }

  #send(step: Step, commit: boolean): Promise<FrameReader> {
    const id = this.#nextId++;
    const frame = this.#frame(step, id);
    const timeout = this.#options.requestTimeoutMs ?? 60_000;
    let timer: NodeJS.Timeout | undefined;
    return new Promise<FrameReader>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, commit });
      if (this.#refs++ === 0) this.#port.ref();
      this.#port.postMessage({ type: "send", frames: [frame] }, [frame]);
      timer = setTimeout(() => {
        if (!this.#pending.has(id)) return;
        // No answer: treat the connection as broken (this fails every request in flight).
        this.#lastError = `no answer within ${timeout} ms`;
        this.#port.postMessage({ type: "close-socket" });
        this.#onDisconnected(this.#lastError);
      }, timeout);
    }).finally(() => {
      clearTimeout(timer);
      if (--this.#refs === 0) this.#port.unref();
    });
  }

  #callSync(step: Step): FrameReader {
    this.#checkOpen();
    if (!this.#connected) this.#connectSync();
    return this.#sendSync(step);
  }

  #sendSync(step: Step): FrameReader {
    const id = this.#nextId++;
    const frame = this.#frame(step, id);
    let result: FrameReader | undefined;
    let failure: Error | undefined;
    this.#pending.set(id, {
      resolve: (r) => (result = r),
      reject: (e) => (failure = e),
      commit: false,
    });
    this.#port.postMessage({ type: "send", frames: [frame] }, [frame]);
    this.#pump(() => result !== undefined || failure !== undefined, `waiting for the reply to a ${String(step.kind)} request`);
    if (failure !== undefined) throw failure;
    return result!;
  }

  /** Block until `done()`, handling everything the worker posts meanwhile. */
  #pump(done: () => boolean, what: string): void {
    const timeout = this.#options.requestTimeoutMs ?? 60_000;
    const deadline = Date.now() + timeout;
    while (!done()) {
      const seen = Atomics.load(this.#signal, 0);
      const m = receiveMessageOnPort(this.#port);
      if (m !== undefined) {
        this.#onMessage(m.message);
        continue;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        this.#onDisconnected(`no answer from ${this.url} within ${timeout} ms (${what})`);
        this.#port.postMessage({ type: "close-socket" });
        throw new StorageError(`no answer from ${this.url} within ${timeout} ms (${what})`, { code: "timeout" });
      }
      Atomics.wait(this.#signal, 0, seen, left);
    }
  }

  /** Handle what the worker has posted and not yet delivered (pushed invalidations). */
  #drain(): void {
    for (let m = receiveMessageOnPort(this.#port); m !== undefined; m = receiveMessageOnPort(this.#port)) this.#onMessage(m.message);
  }

  // --- the stream from the worker --------------------------------------------------------

  #onMessage(m: {
    type: string;
    frames?: ArrayBuffer[];
    error?: string;
    foreign?: { head: Uint8Array; problem: string };
  }): void {
    switch (m.type) {
      case "frames":
        for (const f of m.frames!) this.#onFrame(new Uint8Array(f));
        break;
      case "connected":
        this.#connectOutcome = { ok: true };
        this.#connectWaiter?.();
        break;
      case "disconnected":
        this.#connectOutcome = { ok: false, error: m.error ?? "connection lost" };
        this.#onDisconnected(
          m.error ?? "connection lost",
          // The peer's first bytes were no amber frame: not an amber server at all.
          m.foreign === undefined ? undefined : notAmberError(this.#address, this.url, m.foreign.head, m.foreign.problem),
        );
        this.#connectWaiter?.();
        break;
    }
  }

  #onFrame(frame: Uint8Array): void {
    let r: FrameReader;
    try {
      r = new FrameReader(frame);
    } catch {
      return;
    }
    if (r.id === 0) {
      if (r.kind === Reply.INVALIDATE) this.#cache.invalidate(r.changes());
      else if (r.kind === Reply.CLOSING) this.#lastError = "the server shut down";
      return;
    }
    const p = this.#pending.get(r.id);
    if (p === undefined) return;
    this.#pending.delete(r.id);
    if (r.kind === Reply.OK) p.resolve(r);
    else if (r.kind === Reply.ERROR) p.reject(decodeError(r, this.url));
    else p.reject(new StorageError(`${this.url} sent a reply of unknown kind ${r.kind}`, { code: "protocol" }));
  }

  /** `failure`, when given, is the error for the requests in flight (else "disconnected"). */
  #onDisconnected(error: string, failure?: Error): void {
    // A new session at once: what a transaction of the old one reads from the record cache
    // from now on may be stale (invalidations are missed until the reconnect).
    if (this.#connected) this.#session++;
    this.#connected = false;
    this.#oidPool = [];
    this.#failPending("disconnected", `lost the connection to ${this.url}: ${this.#lastError || error}`, failure);
    this.#lastError = "";
  }

  #failPending(code: string, message: string, failure?: Error): void {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) {
      p.reject(
        failure !== undefined
          ? failure
          : p.commit && code === "disconnected"
          ? new StorageError(`${message}; the commit may or may not have happened`, { code: "commit-unknown" })
          : new StorageError(message, { code }),
      );
    }
  }

  // --- connecting ------------------------------------------------------------------------

  /**
   * The handshake after the socket is up: HELLO (with the token and, when reconnecting or
   * reusing a saved cache, the tid this client knows), then what changed meanwhile.
   */
  *#handshake(): Generator<Step, void, FrameReader> {
    const reconnecting = this.#everConnected;
    const since = reconnecting ? this.#cache.known : undefined;
    const fileSince = this.#savedCacheTid();
    const r = yield {
      kind: Cmd.HELLO,
      write: (w) =>
        w.msgpack({
          version: PROTOCOL_VERSION,
          token: this.#options.token,
          database: this.#database,
          ...(this.#options.create === false ? { create: false } : {}),
          ...(since !== undefined ? { since } : fileSince !== undefined ? { since: fileSince.tid } : {}),
        }),
    };
    const hello = r.msgpack() as HelloReply;
    if (typeof hello !== "object" || hello === null || typeof hello.storageId !== "string" || typeof hello.tid !== "number") {
      throw new ProtocolError(
        `${this.#address} does not speak the amber protocol: expected the reply to HELLO to hold ` +
          `{version, storageId, tid, history, maxFrame}, found ${describeValue(hello)}`,
      );
    }
    if (reconnecting && hello.storageId !== this.#id) {
      // Another database answers at this address now: nothing known about the old one
      // holds. Forget it all, end the session, and refuse to go on.
      this.#cache.reset(this.#cache.known);
      this.#session++;
      throw new StorageError(
        `${this.url} now serves a different database (id ${hello.storageId}, was ${this.#id}); open it again with DB.open`,
        { code: "database-changed" },
      );
    }
    this.#capabilities = { synchronous: true, history: hello.history, pushesInvalidations: true };
    this.#maxFrame = typeof hello.maxFrame === "number" && hello.maxFrame >= 1024 ? hello.maxFrame : DEFAULT_MAX_FRAME;
    if (reconnecting && hello.changes !== undefined) {
      this.#cache.invalidate({ tid: Math.max(hello.changes.tid, hello.tid), oids: hello.changes.oids });
    } else {
      this.#cache.reset(hello.tid);
      if (!reconnecting && fileSince !== undefined && hello.changes !== undefined && hello.changes.oids !== null) {
        const file = ClientCache.read(this.#options.clientCachePath!, hello.storageId);
        if (file !== undefined) this.#cache.restore(file.records, new Set(hello.changes.oids));
      }
    }
    this.#id = hello.storageId;
    this.#connected = true;
    this.#everConnected = true;
    this.#session++;
  }

  /** The tid of a saved cache file, read only for its header. */
  #savedCacheTid(): { tid: Tid } | undefined {
    const path = this.#options.clientCachePath;
    if (path === undefined || this.#everConnected) return undefined;
    const file = ClientCache.read(path, null);
    return file === undefined ? undefined : { tid: file.tid };
  }

  async #connect(): Promise<void> {
    this.#checkOpen();
    this.#connectOutcome = undefined;
    this.#port.ref();
    try {
      await new Promise<void>((resolve) => {
        this.#connectWaiter = resolve;
        this.#port.postMessage({ type: "connect" });
      });
    } finally {
      this.#connectWaiter = undefined;
      if (this.#refs === 0) this.#port.unref();
    }
    this.#checkOpen();
    const o = this.#connectOutcome!;
    if (!o.ok) throw this.#connectFailed(o.error);
    const gen = this.#handshake();
    let step = gen.next();
    try {
      while (!step.done) step = gen.next(await this.#send(step.value, false));
    } catch (err) {
      throw this.#handshakeFailed(err);
    }
  }

  #connectSync(): void {
    this.#checkOpen();
    this.#connectOutcome = undefined;
    this.#port.postMessage({ type: "connect" });
    this.#pump(() => this.#connectOutcome !== undefined, "connecting");
    const o = this.#connectOutcome!;
    if (!o.ok) throw this.#connectFailed(o.error);
    const gen = this.#handshake();
    let step = gen.next();
    try {
      while (!step.done) step = gen.next(this.#sendSync(step.value));
    } catch (err) {
      throw this.#handshakeFailed(err);
    }
  }

  #connectFailed(error: string): StorageError {
    return new StorageError(`cannot connect to ${this.url}: ${error}`, { code: "disconnected" });
  }

  #handshakeFailed(err: unknown): Error {
    this.#port.postMessage({ type: "close-socket" });
    if (err instanceof StorageError && err.code === "auth") {
      return new StorageError(`${this.url} refused the connection: wrong or missing token`, { code: "auth", cause: err });
    }
    return err instanceof Error ? err : new StorageError(String(err));
  }

  #checkOpen(): void {
    if (this.#closed) throw new StorageError(`${this.url} is closed`, { code: "closed" });
  }
}

/** A decoded value, briefly, for messages. */
function describeValue(v: unknown): string {
  if (v === null || typeof v !== "object") return String(v);
  if (Array.isArray(v)) return `an array of ${v.length}`;
  const keys = Object.keys(v);
  return keys.length === 0 ? "an empty object" : `an object with ${keys.slice(0, 6).join(", ")}${keys.length > 6 ? ", ..." : ""}`;
}
