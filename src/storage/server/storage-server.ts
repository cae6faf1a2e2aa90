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
 * - Each commit carries an id (protocol.ts, COMMIT IDS): a client that lost its
 *   connection during a commit asks what became of it, and no commit happens twice
 *   (hosted.ts).
 * - A frame that breaks the protocol closes that one connection with a logged
 *   `ProtocolError`; other clients go on. A client must send HELLO with the right token
 *   before anything else is read.
 * - Clients are served fairly (round-robin, a budget of requests per turn: scheduler.ts),
 *   and what one client can make the server hold is bounded (served-client.ts).
 * - `close()` (SIGTERM, Ctrl-C) stops accepting, lets requests in progress finish (a
 *   commit either completes or was never started), aborts voted transactions, tells the
 *   clients, and closes the storages.
 *
 * Files: storage-server.ts (listening, databases, shutdown), hosted.ts (one database),
 * served-client.ts (one connection), handlers.ts (the commands), scheduler.ts.
 */
import { timingSafeEqual } from "node:crypto";
import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from "node:net";
import { createServer as createTlsServer } from "node:tls";
import { StorageError } from "../../errors.ts";
import { openStorage, type StorageOptions } from "../open-storage.ts";
import type { Storage } from "../storage.ts";
import { Hosted, type ServerHooks } from "./hosted.ts";
import { DEFAULT_MAX_FRAME } from "./protocol.ts";
import { FairScheduler } from "./scheduler.ts";
import { ServedClient, type ServerSide } from "./served-client.ts";

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
  /** @internal Test hooks (a server that dies at a chosen moment of a commit). */
  hooks?: ServerHooks;
}

/** A database name: a plain file name (not "." or ".."), so `{name}` stays inside its directory. */
const NAME = /^(?!\.{1,2}$)[A-Za-z0-9_.-]{1,64}$/;

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export class StorageServer implements ServerSide {
  readonly #server: Server;
  readonly #options: ServerOptions;
  readonly #log: (line: string) => void;
  readonly #hosted = new Map<string, Promise<Hosted>>();
  readonly #clients = new Set<ServedClient>();
  /** @internal Runs the clients' requests, round-robin. */
  readonly scheduler = new FairScheduler();
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
    // Half-open: a client that finishes sending still gets the replies to what it sent.
    const server =
      options.tls !== undefined
        ? createTlsServer({ cert: options.tls.cert, key: options.tls.key, allowHalfOpen: true }, onSocket)
        : createTcpServer({ allowHalfOpen: true }, onSocket);
    self = new StorageServer(server, options);
    if (typeof options.storage !== "string") {
      const hosted = new Hosted("", options.storage, options.hooks);
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
    return this.#clients.size;
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
      const hosted = new Hosted(name, storage, this.#options.hooks);
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
    const client = new ServedClient(this, socket);
    this.#clients.add(client);
    socket.once("close", () => this.#clients.delete(client));
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
    await Promise.all([...this.#clients].map((c) => c.shutdown("the server is shutting down")));
    await stopped;
    for (const [, opening] of this.#hosted) {
      const hosted = await opening.catch(() => undefined);
      // A Storage handed in by the caller stays the caller's to close.
      if (hosted !== undefined && typeof this.#options.storage === "string") await hosted.storage.close();
    }
  }
}
