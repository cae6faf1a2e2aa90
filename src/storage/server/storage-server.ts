/**
 * The storage server behind `amber serve`: any storage, shared by many client processes
 * over TCP (or TLS), speaking the protocol of protocol.ts.
 *
 * - One storage per database name. A storage URL without `{name}` serves one database
 *   (`amber://host:port`); with it (`./stores/{name}`, `memory:{name}`) every name a client
 *   asks for (`amber://host:port/<name>`) is its own storage, opened on first use.
 * - Commits of one database are serialized here (vote is optimistic and holds no lock;
 *   finish checks again atomically in the storage), so a client that disappears between
 *   vote and finish holds nothing and has written nothing.
 * - After every commit the server tells every client of that database which oids changed
 *   (INVALIDATE), before it answers the committer. Commits made to the storage by other
 *   processes are found by polling `lastTid` and announced the same way.
 * - A frame that breaks the protocol closes that one connection with a logged
 *   `ProtocolError`; other clients go on. A client must send HELLO with the right token
 *   before anything else is read.
 * - `close()` (SIGTERM, Ctrl-C) stops accepting, lets requests in progress finish (a
 *   commit either completes or was never started), aborts voted transactions, tells the
 *   clients, and closes the storages.
 */
import { timingSafeEqual } from "node:crypto";
import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from "node:net";
import { createServer as createTlsServer } from "node:tls";
import { ProtocolError, StorageError } from "../../errors.ts";
import { closureLimits, walkClosure } from "../closure.ts";
import { checkPlan, walkPlan } from "../plan-walk.ts";
import { openStorage, type StorageOptions } from "../open-storage.ts";
import type { CommitRequest, Storage, StoredRecord } from "../storage.ts";
import {
  CLIENT_MAX_FRAME,
  Cmd,
  commandName,
  DEFAULT_MAX_FRAME,
  encodeError,
  FrameReader,
  FrameSplitter,
  FrameWriter,
  PROTOCOL_VERSION,
  Reply,
  type Hello,
  type HelloReply,
} from "./protocol.ts";

export interface ServerOptions {
  /** The storage to serve: a URL (may contain `{name}`) or an open Storage. */
  storage: string | Storage;
  /** Default 127.0.0.1. Any other interface needs a token. */
  host?: string;
  /** Default 7700; 0 picks a free port. */
  port?: number;
  /** Clients must present this token in HELLO. */
  token?: string;
  /** Serve TLS with this certificate and key (PEM). */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** Largest frame accepted from a client (default 64 MiB). */
  maxFrame?: number;
  /** Options for storages opened from a URL. */
  storageOptions?: StorageOptions;
  /** Where log lines go (default: stderr with a timestamp). */
  log?: (line: string) => void;
  /** How often to look for commits made to the storage by other processes (ms, default 200). */
  pollMs?: number;
}

/** A database name: a plain file name (not "." or ".."), so `{name}` stays inside its directory. */
const NAME = /^(?!\.{1,2}$)[A-Za-z0-9_.-]{1,64}$/;
/** Replies queued to a client that does not read them, beyond which it is disconnected. */
const MAX_BACKLOG = 512 * 1024 * 1024;

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** One served database: its storage, its clients, its commit order. */
class Hosted {
  readonly clients = new Set<Session>();
  /** Every client has been sent every invalidation up to this tid. */
  lastBroadcast = 0;
  #chain: Promise<unknown> = Promise.resolve();

  constructor(
    readonly name: string,
    readonly storage: Storage,
  ) {}

  /** Run `fn` after every commit queued before it (commits and broadcasts in tid order). */
  serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(fn, fn);
    this.#chain = run.catch(() => undefined);
    return run;
  }

  /** Tell every client what changed since the last broadcast. Call inside `serialize`. */
  async broadcast(): Promise<void> {
    const s = this.storage;
    const changes = s.changesSinceSync !== undefined ? s.changesSinceSync(this.lastBroadcast) : await s.changesSince(this.lastBroadcast);
    if (changes.tid <= this.lastBroadcast) return;
    const frame = new FrameWriter(0, Reply.INVALIDATE, 32 + 8 * (changes.oids?.length ?? 0)).changes(changes).finish();
    for (const c of this.clients) c.send(frame);
    this.lastBroadcast = changes.tid;
  }

  /** Announce commits that other processes made to the storage. */
  poll(): Promise<void> {
    return this.serialize(async () => {
      if ((await this.storage.lastTid()) > this.lastBroadcast) await this.broadcast();
    });
  }
}

export class StorageServer {
  readonly #server: Server;
  readonly #options: ServerOptions;
  readonly #log: (line: string) => void;
  readonly #hosted = new Map<string, Promise<Hosted>>();
  readonly #sessions = new Set<Session>();
  readonly #maxFrame: number;
  #poll: NodeJS.Timeout | undefined;
  #closing: Promise<void> | undefined;

  private constructor(server: Server, options: ServerOptions) {
    this.#server = server;
    this.#options = options;
    this.#maxFrame = options.maxFrame ?? DEFAULT_MAX_FRAME;
    this.#log = options.log ?? ((line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`));
  }

  /** Start serving; resolves once listening. */
  static async start(options: ServerOptions): Promise<StorageServer> {
    const host = options.host ?? "127.0.0.1";
    if (!isLoopback(host) && (options.token === undefined || options.token.length === 0)) {
      throw new StorageError(`refusing to listen on ${host} without a token: beyond loopback every client must authenticate (--token)`, {
        code: "no-token",
      });
    }
    if (options.maxFrame !== undefined && !(Number.isInteger(options.maxFrame) && options.maxFrame >= 1024)) {
      throw new RangeError(`maxFrame must be an integer of at least 1024, got ${String(options.maxFrame)}`);
    }
    let self: StorageServer | undefined;
    const onSocket = (socket: Socket): void => self!.#accept(socket);
    const server = options.tls !== undefined ? createTlsServer({ cert: options.tls.cert, key: options.tls.key }, onSocket) : createTcpServer(onSocket);
    self = new StorageServer(server, options);
    if (typeof options.storage !== "string") {
      const hosted = new Hosted("", options.storage);
      hosted.lastBroadcast = await options.storage.lastTid();
      self.#hosted.set("", Promise.resolve(hosted));
    } else if (!options.storage.includes("{name}")) {
      await self.#host(""); // open it now: a bad path fails at start, not at the first client
    }
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port ?? 7700, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", (err) => self!.#log(`server error: ${err.message}`));
    const pollMs = options.pollMs ?? 200;
    self.#poll = setInterval(() => self!.#pollAll(), pollMs);
    self.#poll.unref();
    return self;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  get host(): string {
    return (this.#server.address() as AddressInfo).address;
  }

  /** The URL clients open (for the default database). */
  get url(): string {
    const h = this.host.includes(":") ? `[${this.host}]` : this.host;
    return `amber://${h}:${this.port}`;
  }

  /** Clients connected now. */
  get clientCount(): number {
    return this.#sessions.size;
  }

  /** @internal */
  log(line: string): void {
    this.#log(line);
  }

  /** @internal */
  get maxFrame(): number {
    return this.#maxFrame;
  }

  /** @internal */
  checkToken(given: unknown): boolean {
    const want = this.#options.token;
    if (want === undefined || want.length === 0) return true;
    if (typeof given !== "string") return false;
    const a = Buffer.from(given);
    const b = Buffer.from(want);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  /** @internal The database `name`, opened on first use (`create` false: only if it exists). */
  database(name: string, create = true): Promise<Hosted> {
    return this.#host(name, create);
  }

  #host(name: string, create = true): Promise<Hosted> {
    const known = this.#hosted.get(name);
    if (known !== undefined) {
      if (!create) return known;
      // A create: false opening in progress may fail for want of the store: then make it.
      return known.catch((err: unknown) =>
        err instanceof StorageError && err.code === "not-found" ? this.#host(name, true) : Promise.reject(err),
      );
    }
    const url = this.#options.storage as string;
    if (typeof this.#options.storage !== "string" || (!url.includes("{name}") && name !== "")) {
      return Promise.reject(new StorageError(`this server has no database named "${name}" (connect to amber://host:port without a path)`, { code: "no-database" }));
    }
    if (name === "" && url.includes("{name}")) {
      return Promise.reject(new StorageError(`this server serves named databases: connect to amber://host:port/<name>`, { code: "no-database" }));
    }
    if (name !== "" && !NAME.test(name)) {
      return Promise.reject(new StorageError(`database name ${JSON.stringify(name)} must be 1-64 letters, digits, "_", "." or "-"`, { code: "no-database" }));
    }
    const target = url.replaceAll("{name}", name);
    if (!create && target.startsWith("memory:")) {
      // A memory store exists only once opened (then it is in #hosted): nothing to find.
      return Promise.reject(new StorageError(`this server has no database named "${name}" yet (and create is false)`, { code: "not-found" }));
    }
    const opening = (async () => {
      const options = create ? this.#options.storageOptions : { ...this.#options.storageOptions, create: false };
      const storage = await openStorage(target, options);
      const hosted = new Hosted(name, storage);
      hosted.lastBroadcast = await storage.lastTid();
      return hosted;
    })();
    this.#hosted.set(name, opening);
    opening.catch(() => this.#hosted.delete(name));
    return opening;
  }

  #accept(socket: Socket): void {
    if (this.#closing !== undefined) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    const session = new Session(this, socket);
    this.#sessions.add(session);
    socket.once("close", () => this.#sessions.delete(session));
  }

  #pollAll(): void {
    for (const [, opening] of this.#hosted) {
      opening
        .then((h) => (h.clients.size > 0 ? h.poll() : undefined))
        .catch((err: unknown) => this.#log(`polling for commits failed: ${(err as Error).message}`));
    }
  }

  /**
   * Shut down: stop accepting, let requests in progress finish, abort voted transactions,
   * tell and disconnect the clients, close the storages. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    clearInterval(this.#poll);
    const stopped = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await Promise.all([...this.#sessions].map((s) => s.shutdown("the server is shutting down")));
    await stopped;
    for (const [, opening] of this.#hosted) {
      const hosted = await opening.catch(() => undefined);
      // A Storage handed in by the caller stays the caller's to close.
      if (hosted !== undefined && typeof this.#options.storage === "string") await hosted.storage.close();
    }
  }
}

/** One client connection. */
class Session {
  readonly #server: StorageServer;
  readonly #socket: Socket;
  readonly #splitter: FrameSplitter;
  readonly #peer: string;
  #hosted: Hosted | null = null;
  /** Frames received before HELLO was answered (at most maxFrame bytes in all). */
  #early: Buffer[] | null = [];
  #earlyBytes = 0;
  #helloSeen = false;
  readonly #voted = new Map<number, CommitRequest>();
  readonly #inflight = new Set<Promise<void>>();
  #closed = false;

  constructor(server: StorageServer, socket: Socket) {
    this.#server = server;
    this.#socket = socket;
    this.#splitter = new FrameSplitter(server.maxFrame);
    this.#peer = `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`;
    socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    socket.on("error", () => undefined); // "close" follows
    socket.once("close", () => this.#onClose());
  }

  send(frame: Buffer): void {
    if (this.#closed) return;
    if (this.#socket.writableLength > MAX_BACKLOG) {
      this.#fail(new ProtocolError(`client ${this.#peer} does not read its replies (${this.#socket.writableLength} bytes queued)`));
      return;
    }
    this.#socket.write(frame);
  }

  /** Server shutdown: finish what is in progress, then say goodbye and close. */
  async shutdown(reason: string): Promise<void> {
    this.#socket.pause();
    this.#early = null;
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
    this.send(new FrameWriter(0, Reply.CLOSING).msgpack({ reason }).finish());
    this.#closed = true; // read no more requests; only wait for the client to hang up
    await this.#release();
    await new Promise<void>((resolve) => {
      if (this.#socket.destroyed) return resolve();
      // A client that goes on sending must not keep the socket (and the shutdown) open.
      const timer = setTimeout(() => this.#socket.destroy(), 2000);
      this.#socket.once("close", () => {
        clearTimeout(timer);
        resolve();
      });
      this.#socket.end();
      this.#socket.resume();
    });
  }

  #onData(chunk: Buffer): void {
    if (this.#closed) return;
    let frames: Buffer[];
    try {
      frames = this.#splitter.push(chunk);
    } catch (err) {
      this.#fail(err);
      return;
    }
    for (const frame of frames) {
      if (this.#closed) return;
      if (this.#hosted === null) this.#beforeHello(frame);
      else this.#dispatch(frame);
    }
  }

  #beforeHello(frame: Buffer): void {
    if (this.#helloSeen) {
      // Pipelined behind HELLO: held until HELLO is answered (bounded by maxFrame each).
      this.#earlyBytes += frame.length;
      if (this.#early === null || this.#early.length > 1024 || this.#earlyBytes > this.#server.maxFrame) {
        this.#fail(new ProtocolError("too many requests before HELLO was answered"));
      } else this.#early.push(frame);
      return;
    }
    this.#helloSeen = true;
    let reader: FrameReader;
    let hello: Hello;
    try {
      reader = new FrameReader(frame);
      if (reader.kind !== Cmd.HELLO) {
        throw new ProtocolError(`the first frame must be HELLO, got ${commandName(reader.kind) ?? `unknown kind ${reader.kind}`}`);
      }
      hello = reader.msgpack() as Hello;
      reader.end();
      if (typeof hello !== "object" || hello === null || typeof hello.database !== "string") throw new ProtocolError("HELLO needs {version, database}");
    } catch (err) {
      this.#fail(err);
      return;
    }
    const id = reader.id;
    if (!this.#server.checkToken(hello.token)) {
      this.#server.log(`refused client ${this.#peer}: ${hello.token === undefined ? "no token" : "wrong token"}`);
      this.#socket.end(encodeError(id, new StorageError("authentication failed: wrong or missing token", { code: "auth" })));
      this.#closed = true;
      return;
    }
    if (hello.version !== PROTOCOL_VERSION) {
      this.#socket.end(
        encodeError(id, new StorageError(`protocol version ${String(hello.version)} is not supported (server speaks ${PROTOCOL_VERSION})`, { code: "version" })),
      );
      this.#closed = true;
      return;
    }
    this.#server.database(hello.database, hello.create !== false).then(
      (hosted) => hosted.serialize(async () => {
        if (this.#closed) return;
        // Inside the commit order: no INVALIDATE for a tid <= reply.tid reaches this client later.
        if ((await hosted.storage.lastTid()) > hosted.lastBroadcast) await hosted.broadcast();
        let changes: HelloReply["changes"];
        if (Number.isSafeInteger(hello.since) && hello.since! >= 0) {
          // changes.tid >= lastBroadcast; commits after lastBroadcast reach this client with
          // the next broadcast too (which covers everything after lastBroadcast).
          changes = await hosted.storage.changesSince(hello.since!);
        }
        if (this.#closed) return; // hung up during the handshake
        const reply: HelloReply = {
          version: PROTOCOL_VERSION,
          storageId: hosted.storage.id,
          tid: Math.max(hosted.lastBroadcast, changes?.tid ?? 0),
          history: hosted.storage.capabilities.history,
          maxFrame: this.#server.maxFrame,
          ...(changes === undefined ? {} : { changes }),
        };
        this.#hosted = hosted;
        hosted.clients.add(this);
        this.send(new FrameWriter(id, Reply.OK).msgpack(reply).finish());
        const early = this.#early ?? [];
        this.#early = null;
        for (const f of early) {
          if (this.#closed) break;
          this.#dispatch(f);
        }
      }),
      (err: unknown) => {
        this.#socket.end(encodeError(id, err));
        this.#closed = true;
      },
    );
  }

  #dispatch(frame: Buffer): void {
    let reader: FrameReader;
    try {
      reader = new FrameReader(frame);
    } catch (err) {
      this.#fail(err);
      return;
    }
    // #handle parses the whole request before its first await: a malformed one throws
    // here, synchronously, so frames after it in the same chunk are never run.
    let handled: Promise<Buffer>;
    try {
      handled = this.#handle(reader);
    } catch (err) {
      if (err instanceof ProtocolError) this.#fail(err);
      else this.send(encodeError(reader.id, err));
      return;
    }
    const work = handled.then(
      (reply) => this.send(reply),
      (err: unknown) => {
        if (err instanceof ProtocolError) this.#fail(err);
        else this.send(encodeError(reader.id, err));
      },
    );
    this.#inflight.add(work);
    void work.finally(() => this.#inflight.delete(work));
  }

  /** Parse `r` (synchronously: errors are thrown, not rejected), then do the work. */
  #handle(r: FrameReader): Promise<Buffer> {
    const hosted = this.#hosted!;
    const s = hosted.storage;
    const ok = (capacity?: number) => new FrameWriter(r.id, Reply.OK, capacity);
    const done = (frame: Buffer) => Promise.resolve(frame);
    switch (r.kind) {
      case Cmd.LAST_TID: {
        r.end();
        return hosted.poll().then(() => ok().num(hosted.lastBroadcast).finish());
      }
      case Cmd.LOAD: {
        const at = r.id53("tid");
        const oids = r.nums();
        r.end();
        const loadOne = s.loadOneSync;
        if (loadOne === undefined) {
          return s.load(oids, at).then((records) => ok(64 + records.reduce((n, rec) => n + 24 + (rec?.data.length ?? 0), 0)).records(records).finish());
        }
        // Borrowed bytes go straight into the reply: no copy per record.
        const w = ok(64 + 128 * oids.length).u32(oids.length);
        for (const oid of oids) w.record(loadOne.call(s, oid, at, true));
        return done(w.finish());
      }
      case Cmd.LOAD_CLOSURE: {
        const at = r.id53("tid");
        const oid = r.id53("oid");
        const maxObjects = r.id53("maxObjects");
        // Replies are bounded by what a client accepts, not by the server's request limit.
        const maxBytes = Math.min(r.id53("maxBytes"), CLIENT_MAX_FRAME / 2);
        const have = r.nums();
        const cached = r.pairs("cached records");
        r.end();
        const options = { maxObjects, maxBytes, have };
        closureLimits(options);
        const loadOne = s.loadOneSync;
        if (loadOne === undefined) {
          return s.loadClosure(oid, at, options).then((walk) => ok().records(walk.records).nums([]).u8(walk.truncated ? 1 : 0).nums(walk.missing).finish());
        }
        const w = ok(64 * 1024);
        const stream = recordStream(w);
        const walk = walkClosure((o) => loadOne.call(s, o, at, true), oid, options, stream.emit, cached);
        stream.end();
        return done(w.nums(walk.held).u8(walk.truncated ? 1 : 0).nums(walk.missing).finish());
      }
      case Cmd.LOAD_PLAN: {
        const at = r.id53("tid");
        const steps = r.msgpack();
        const have = r.nums();
        const cached = r.pairs("cached records");
        r.end();
        checkPlan(steps);
        const options = { have, maxBytes: CLIENT_MAX_FRAME / 2 };
        const loadOne = s.loadOneSync;
        if (loadOne === undefined) {
          return s.loadPlan(steps, at, options).then((p) => {
            const w = ok().records(p.records).u32(p.groups.length);
            for (const g of p.groups) w.nums(g);
            return w.msgpack(p.missing).finish();
          });
        }
        const w = ok(64 * 1024);
        const stream = recordStream(w);
        const walk = walkPlan((o) => loadOne.call(s, o, at, true), steps, options, stream.emit, cached);
        stream.end().u32(walk.groups.length);
        for (const g of walk.groups) w.nums(g);
        return done(w.msgpack(walk.missing).finish());
      }
      case Cmd.LOAD_BEFORE: {
        const oid = r.id53("oid");
        const before = r.id53("tid");
        r.end();
        return s.loadBefore(oid, before).then((rec) => ok().records([rec]).finish());
      }
      case Cmd.HISTORY: {
        const oid = r.id53("oid");
        const limit = r.id53("limit");
        r.end();
        return s.history(oid, limit === 0 ? undefined : limit).then((recs) => ok().records(recs).finish());
      }
      case Cmd.NEW_OIDS: {
        const count = r.u32();
        r.end();
        return s.newOids(count).then((oids) => ok().nums(oids).finish());
      }
      case Cmd.VOTE: {
        const voteId = r.u32();
        const request = r.request();
        r.end();
        return s.vote(request).then((conflicts) => {
          if (conflicts.length === 0 && !this.#closed) this.#voted.set(voteId, request);
          return ok().conflicts(conflicts).finish();
        });
      }
      case Cmd.FINISH: {
        const voteId = r.u32();
        r.end();
        const request = this.#voted.get(voteId);
        if (request === undefined) throw new StorageError(`no voted transaction ${voteId} on this connection`, { code: "no-vote" });
        this.#voted.delete(voteId);
        return this.#commit(hosted, request, r.id);
      }
      case Cmd.COMMIT: {
        const request = r.request();
        r.end();
        return this.#commit(hosted, request, r.id);
      }
      case Cmd.ABORT: {
        const voteId = r.u32();
        r.end();
        const request = this.#voted.get(voteId);
        this.#voted.delete(voteId);
        return (request === undefined ? Promise.resolve() : s.abort(request)).then(() => ok().finish());
      }
      case Cmd.CHANGES_SINCE: {
        const since = r.id53("tid");
        r.end();
        return s.changesSince(since).then((changes) => ok().changes(changes).finish());
      }
      case Cmd.TRANSACTIONS: {
        const since = r.id53("tid");
        const limit = r.id53("limit");
        r.end();
        return s.transactions(since, limit === 0 ? undefined : limit).then((txns) => ok().msgpack(txns).finish());
      }
      case Cmd.UNDO: {
        const tid = r.id53("tid");
        r.end();
        return hosted.serialize(async () => {
          const t = await s.undo(tid);
          await hosted.broadcast();
          return ok().num(t).finish();
        });
      }
      default:
        throw new ProtocolError(
          r.kind === Cmd.HELLO ? "HELLO sent twice" : `unknown command ${commandName(r.kind) ?? `kind ${r.kind}`}`,
        );
    }
  }

  /** Finish a transaction in commit order and announce it before answering. */
  #commit(hosted: Hosted, request: CommitRequest, id: number): Promise<Buffer> {
    return hosted.serialize(async () => {
      const tid = await hosted.storage.finish(request);
      await hosted.broadcast();
      return new FrameWriter(id, Reply.OK).num(tid).finish();
    });
  }

  #fail(err: unknown): void {
    if (this.#closed) return;
    const pe = err instanceof ProtocolError ? err : new ProtocolError(String((err as Error)?.message ?? err), { cause: err });
    this.#server.log(`ProtocolError from client ${this.#peer}: ${pe.message}; closing its connection`);
    this.#closed = true;
    this.#socket.destroy();
  }

  #onClose(): void {
    if (this.#splitter.pending > 0 && !this.#closed) {
      this.#server.log(`ProtocolError from client ${this.#peer}: connection closed inside a frame (${this.#splitter.pending} bytes of it received)`);
    }
    this.#closed = true;
    void this.#release();
  }

  /** Forget this client: abort what it voted (nothing of it was written). */
  async #release(): Promise<void> {
    this.#hosted?.clients.delete(this);
    const voted = [...this.#voted.values()];
    this.#voted.clear();
    for (const request of voted) {
      try {
        await this.#hosted!.storage.abort(request);
      } catch (err) {
        this.#server.log(`aborting a transaction of ${this.#peer} failed: ${(err as Error).message}`);
      }
    }
  }
}

/**
 * Records written into a reply as a walk finds them (borrowed bytes, no copy): a count,
 * patched in by `end()`, then each record; one the client holds a copy of is sent as its
 * oid and serial with no bytes.
 */
function recordStream(w: FrameWriter): { emit: (rec: StoredRecord, cachedCopy: boolean) => void; end: () => FrameWriter } {
  const countAt = w.position;
  w.u32(0);
  let count = 0;
  return {
    emit(rec, cachedCopy) {
      if (cachedCopy) w.num(rec.oid).num(rec.serial).bytes(null);
      else w.record(rec);
      count++;
    },
    end: () => w.patchU32(countAt, count),
  };
}
