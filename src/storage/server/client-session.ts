/**
 * The client storage's session with the server (client-storage.ts): connecting, the
 * handshake, what a lost connection means for the requests in flight, reconnecting, and
 * finding out what became of a commit whose connection was lost.
 *
 * OPERATIONS. Every operation of the client storage is written once, as a generator of
 * steps (`Op`): a request (a command and its payload) resumes the generator with the
 * reply, or throws the error reply into it; `CONNECT` makes sure the connection is up;
 * `{sleep}` waits. `run` drives an operation asynchronously, `runSync` synchronously
 * (blocking on the channel's Atomics.wait bridge, rpc-channel.ts), so the two forms of an
 * operation cannot drift apart. A request when not connected connects first (the
 * handshake is an operation too, driven without that rule).
 *
 * SESSIONS. `number` changes when the connection is lost (at once, so that what a
 * transaction of the old session reads from the record cache is refused from then on:
 * invalidations are missed until the reconnect) and again when a new connection is made.
 * The handshake tells the server the newest tid this client knows, and applies what
 * changed meanwhile to the record cache.
 *
 * LOST CONNECTIONS. The requests in flight fail with StorageError "disconnected", except a
 * commit: its fate is unknown ("commit-unknown"), unless the server had said CLOSING
 * first (it sends that after every request it started has been answered, and starts no
 * other: the commit never started, "disconnected"). The client storage then calls
 * `recoverCommit`: it reconnects and asks the server (COMMIT_STATUS) about the commit's
 * id, which the commit carried in its metadata. The answer is the commit's tid, or "it did
 * not happen, and now never will" (the server fences the id), or, when the server cannot
 * be reached within `commitRecoveryMs`, the original "commit-unknown".
 */
import { ProtocolError, StorageError } from "../../errors.ts";
import { ConnectFailed, RpcChannel } from "../remote/rpc-channel.ts";
import type { StorageCapabilities, Tid } from "../storage.ts";
import { ClientCache } from "./client-cache.ts";
import {
  Cmd,
  CLIENT_MAX_FRAME,
  commandName,
  CommitOutcome,
  decodeError,
  DEFAULT_MAX_FRAME,
  FrameReader,
  FrameWriter,
  PROTOCOL_VERSION,
  Reply,
  type HelloReply,
} from "./protocol.ts";

/** A request: one frame to the server, one reply back. */
export interface Request {
  kind: number;
  write?: (w: FrameWriter) => void;
  /** A commit (FINISH, COMMIT, UNDO): losing the connection leaves its outcome unknown. */
  commit?: boolean;
}
/** Resumes the operation with `NO_REPLY` once connected (or throws the connect's error into it). */
export const CONNECT = { connect: true } as const;
export type Step = Request | typeof CONNECT | { sleep: number };
export type Op<T> = Generator<Step, T, FrameReader>;

/** What an operation is resumed with after CONNECT or a sleep (an empty frame: nothing to read). */
const NO_REPLY = new FrameReader(new Uint8Array(9));

export interface SessionSettings {
  url: string;
  host: string;
  port: number;
  database: string;
  token?: string;
  create?: boolean;
  tls?: { ca?: string | Buffer; rejectUnauthorized?: boolean; servername?: string };
  clientCachePath?: string;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  commitRecoveryMs: number;
}

export class ClientSession {
  readonly url: string;
  /** host:port, for messages. */
  readonly #address: string;
  readonly #settings: SessionSettings;
  readonly #cache: ClientCache;
  readonly #channel: RpcChannel;
  readonly #onLost: () => void;
  #id = "";
  #capabilities: StorageCapabilities = { synchronous: true, history: true, pushesInvalidations: true };
  #number = 0;
  /** The largest request the server accepts (from HELLO). */
  #maxFrame = DEFAULT_MAX_FRAME;
  #connected = false;
  #everConnected = false;
  /** The server said CLOSING on this connection: it starts no request from now on. */
  #closing = false;
  #lastError = "";
  #connecting: Promise<void> | undefined;
  #closed = false;

  /** `onLost` runs when the connection is lost (before the requests in flight fail). */
  constructor(settings: SessionSettings, cache: ClientCache, onLost: () => void) {
    this.url = settings.url;
    this.#settings = settings;
    this.#cache = cache;
    this.#onLost = onLost;
    const { host, tls } = settings;
    this.#address = `${host.includes(":") ? `[${host}]` : host}:${settings.port}`;
    const tlsOptions =
      tls === undefined
        ? null
        : {
            ...(tls.ca === undefined ? {} : { ca: tls.ca }),
            rejectUnauthorized: tls.rejectUnauthorized ?? true,
            servername: tls.servername ?? (/^[\d.:]+$/.test(host) ? undefined : host),
          };
    this.#channel = new RpcChannel({
      worker: new URL("./client-worker.mjs", import.meta.url),
      workerData: { host, portNumber: settings.port, tlsOptions, maxFrame: CLIENT_MAX_FRAME, connectTimeoutMs: settings.connectTimeoutMs },
      name: settings.url,
      timeoutMs: settings.requestTimeoutMs,
      onPush: (frame) => this.#onPush(frame),
      onLost: (error, foreign) => this.#lost(error, foreign as { head: Uint8Array; problem: string } | undefined),
    });
  }

  get id(): string {
    return this.#id;
  }

  get capabilities(): StorageCapabilities {
    return this.#capabilities;
  }

  /** See SESSIONS above. */
  get number(): number {
    return this.#number;
  }

  get connected(): boolean {
    return this.#connected;
  }

  get maxFrame(): number {
    return this.#maxFrame;
  }

  /** Requests sent to the server so far (round trips). */
  get requests(): number {
    return this.#channel.requests;
  }

  checkOpen(): void {
    if (this.#closed) throw new StorageError(`${this.url} is closed`, { code: "closed" });
  }

  /** Apply the pushes that have arrived (invalidations) before reading the record cache. */
  drain(): void {
    this.#channel.drain();
  }

  // --- the drivers ---------------------------------------------------------------------------

  /** Drive `op` asynchronously. `raw`: do not connect first (the handshake). */
  async run<T>(op: Op<T>, raw = false): Promise<T> {
    let next = op.next();
    while (!next.done) {
      let reply: FrameReader;
      try {
        reply = await this.#step(next.value, raw);
      } catch (err) {
        next = op.throw(err);
        continue;
      }
      next = op.next(reply);
    }
    return next.value;
  }

  /** Drive `op` synchronously. */
  runSync<T>(op: Op<T>, raw = false): T {
    let next = op.next();
    while (!next.done) {
      let reply: FrameReader;
      try {
        reply = this.#stepSync(next.value, raw);
      } catch (err) {
        next = op.throw(err);
        continue;
      }
      next = op.next(reply);
    }
    return next.value;
  }

  async #step(step: Step, raw: boolean): Promise<FrameReader> {
    this.checkOpen();
    if ("sleep" in step) {
      await new Promise((resolve) => setTimeout(resolve, step.sleep));
      return NO_REPLY;
    }
    if (!raw && !this.#connected) await this.#connect();
    if ("connect" in step) return NO_REPLY;
    return this.#reply(await this.#channel.request(this.#frame(step), step.commit === true ? "commit" : "request"));
  }

  #stepSync(step: Step, raw: boolean): FrameReader {
    this.checkOpen();
    if ("sleep" in step) {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, step.sleep);
      return NO_REPLY;
    }
    if (!raw && !this.#connected) this.#connectSync();
    if ("connect" in step) return NO_REPLY;
    const what = `waiting for the reply to ${commandName(step.kind) ?? `a request of kind ${step.kind}`}`;
    return this.#reply(this.#channel.requestSync(this.#frame(step), step.commit === true ? "commit" : "request", what));
  }

  #frame(step: Request): Uint8Array {
    const w = new FrameWriter(0, step.kind); // the channel writes the request id
    step.write?.(w);
    const bytes = w.finish();
    if (bytes.length - 4 > this.#maxFrame) {
      throw new StorageError(
        `a ${commandName(step.kind) ?? "request"} of ${bytes.length} bytes is larger than ${this.url} accepts ` +
          `(${this.#maxFrame} bytes; amber serve --max-frame)`,
        { code: "too-large" },
      );
    }
    return bytes;
  }

  #reply(frame: Uint8Array): FrameReader {
    const r = new FrameReader(frame);
    if (r.kind === Reply.OK) return r;
    if (r.kind === Reply.ERROR) throw decodeError(r, this.url);
    throw new StorageError(`${this.url} sent a reply of unknown kind ${r.kind}`, { code: "protocol" });
  }

  // --- what the server pushes, and losing it ---------------------------------------------------

  #onPush(frame: Uint8Array): void {
    let r: FrameReader;
    try {
      r = new FrameReader(frame);
      if (r.kind === Reply.INVALIDATE) this.#cache.invalidate(r.changes());
      else if (r.kind === Reply.CLOSING) {
        this.#lastError = "the server shut down";
        this.#closing = true;
      }
    } catch (err) {
      // A push that does not parse: the two sides disagree; start over on a new connection.
      this.#channel.dropConnection();
      this.#lost(`the server sent a malformed push (${(err as Error).message})`, undefined);
    }
  }

  /** The connection is gone (see LOST CONNECTIONS above). */
  #lost(error: string, foreign: { head: Uint8Array; problem: string } | undefined): void {
    if (this.#connected) this.#number++;
    this.#connected = false;
    this.#onLost();
    const message = `lost the connection to ${this.url}: ${this.#lastError || error}`;
    // The peer's first bytes were no amber frame: not an amber server at all.
    const failure = foreign === undefined ? undefined : notAmberError(this.#address, this.url, foreign.head, foreign.problem);
    const closing = this.#closing;
    this.#channel.failAll((tag) => {
      if (failure !== undefined) return failure;
      if (tag !== "commit") return new StorageError(message, { code: "disconnected" });
      if (closing) return new StorageError(`${message}; it never started the commit, so nothing was committed`, { code: "disconnected" });
      return new StorageError(`${message}; the commit may or may not have happened`, { code: "commit-unknown" });
    });
    this.#lastError = "";
    this.#closing = false;
  }

  // --- connecting ------------------------------------------------------------------------------

  /** One connect at a time: calls that find one under way wait for it. */
  #connect(): Promise<void> {
    return (this.#connecting ??= this.#connectOnce().finally(() => (this.#connecting = undefined)));
  }

  async #connectOnce(): Promise<void> {
    this.checkOpen();
    this.#closing = false;
    try {
      await this.#channel.connect();
    } catch (err) {
      throw this.#connectFailed(err);
    }
    try {
      await this.run(this.#handshake(), true);
    } catch (err) {
      throw this.#handshakeFailed(err);
    }
  }

  #connectSync(): void {
    this.checkOpen();
    if (this.#connecting !== undefined) {
      // An asynchronous connect is under way, and its handshake cannot go on while this
      // thread blocks: this call fails as if the connection were still down.
      throw new StorageError(`lost the connection to ${this.url}: reconnecting is under way`, { code: "disconnected" });
    }
    this.#closing = false;
    try {
      this.#channel.connectSync();
    } catch (err) {
      throw this.#connectFailed(err);
    }
    try {
      this.runSync(this.#handshake(), true);
    } catch (err) {
      throw this.#handshakeFailed(err);
    }
  }

  /**
   * The handshake after the socket is up: HELLO (with the token and, when reconnecting or
   * reusing a saved cache, the tid this client knows), then what changed meanwhile.
   */
  *#handshake(): Op<void> {
    this.checkOpen();
    const reconnecting = this.#everConnected;
    const since = reconnecting ? this.#cache.known : undefined;
    const fileSince = this.#savedCacheTid();
    const r = yield {
      kind: Cmd.HELLO,
      write: (w) =>
        w.msgpack({
          version: PROTOCOL_VERSION,
          token: this.#settings.token,
          database: this.#settings.database,
          ...(this.#settings.create === false ? { create: false } : {}),
          ...(since !== undefined ? { since } : fileSince !== undefined ? { since: fileSince } : {}),
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
      this.#number++;
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
        const file = ClientCache.read(this.#settings.clientCachePath!, hello.storageId);
        if (file !== undefined) this.#cache.restore(file.records, new Set(hello.changes.oids));
      }
    }
    this.#id = hello.storageId;
    this.#connected = true;
    this.#everConnected = true;
    this.#number++;
  }

  /** The tid of a saved cache file, read only for its header. */
  #savedCacheTid(): Tid | undefined {
    const path = this.#settings.clientCachePath;
    if (path === undefined || this.#everConnected) return undefined;
    return ClientCache.read(path, null)?.tid;
  }

  #connectFailed(err: unknown): Error {
    this.checkOpen(); // closed while connecting: "closed", not a connection error
    if (!(err instanceof ConnectFailed)) return err instanceof Error ? err : new StorageError(String(err));
    return new StorageError(`cannot connect to ${this.url}: ${err.message}`, { code: "disconnected" });
  }

  #handshakeFailed(err: unknown): Error {
    this.#channel.dropConnection();
    if (err instanceof StorageError && err.code === "auth") {
      return new StorageError(`${this.url} refused the connection: wrong or missing token`, { code: "auth", cause: err });
    }
    return err instanceof Error ? err : new StorageError(String(err));
  }

  // --- a commit whose connection was lost --------------------------------------------------------

  /**
   * Find out what became of commit `commitId`, sent when this client knew the database up
   * to `since`, after its connection was lost (`unknown`): its tid if it happened; else
   * StorageError "disconnected" (nothing committed, and the server makes sure it never
   * will be: safe to run the transaction again). While the server cannot be reached it
   * tries again, for `commitRecoveryMs`; then `unknown` stands (code "commit-unknown").
   */
  *recoverCommit(commitId: string, since: Tid, unknown: StorageError): Op<Tid> {
    const deadline = Date.now() + this.#settings.commitRecoveryMs;
    let delay = 20;
    for (;;) {
      let r: FrameReader | undefined;
      try {
        r = yield { kind: Cmd.COMMIT_STATUS, write: (w) => w.msgpack(commitId).num(since) };
      } catch (err) {
        if (err instanceof StorageError && err.code === "closed") throw err;
        const reachable = !(err instanceof StorageError && (err.code === "disconnected" || err.code === "timeout"));
        if (reachable || Date.now() + delay > deadline) {
          const why = reachable ? `asking the server about it failed: ${(err as Error).message}` : `the server could not be reached again within ${this.#settings.commitRecoveryMs} ms`;
          throw new StorageError(`${unknown.message} (${why})`, { code: "commit-unknown", cause: err });
        }
      }
      if (r !== undefined) {
        const outcome = r.u8();
        const tid = r.id53("tid");
        r.end();
        if (outcome === CommitOutcome.COMMITTED) return tid;
        if (outcome === CommitOutcome.NOT_COMMITTED) {
          throw new StorageError(
            `lost the connection to ${this.url} during a commit; after reconnecting, the server says the commit did not happen ` +
              `(and now never will): nothing was committed, run the transaction again (db.transact does)`,
            { code: "disconnected", cause: unknown },
          );
        }
        throw new StorageError(`${unknown.message} (the server can no longer tell: its transaction log does not reach back to tid ${since})`, {
          code: "commit-unknown",
          cause: unknown,
        });
      }
      yield { sleep: delay };
      delay = Math.min(delay * 2, 500);
    }
  }

  /** Fail what is in flight with "closed" and stop the channel. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#channel.failAll(() => new StorageError(`${this.url} was closed`, { code: "closed" }));
    await this.#channel.close();
  }
}

/**
 * The error for a peer whose first bytes are not an amber reply (protocol.ts, FRAMES):
 * `address` (host:port) does not speak the amber protocol; says what was expected and what
 * came instead (`problem`, and the first bytes `head`, shown as text when they are text).
 */
function notAmberError(address: string, url: string, head: Uint8Array, problem: string): ProtocolError {
  const kind = serverKind(head);
  return new ProtocolError(
    `${address} does not speak the amber protocol: expected the reply to HELLO (a frame: length 5 to ` +
      `${CLIENT_MAX_FRAME}, request id, reply kind ${Reply.OK} to ${Reply.CLOSING}), found ${problem}; ` +
      `the first bytes were ${showBytes(head)}${kind === "" ? "" : ` (${kind})`}. ` +
      `Check that ${url} is the address of an amber serve process`,
  );
}

/** Bytes for a message: a quoted string when they are mostly printable text, else hex. */
function showBytes(head: Uint8Array): string {
  const shown = head.subarray(0, 48);
  let printable = 0;
  for (const b of shown) if ((b >= 0x20 && b < 0x7f) || b === 0x0a || b === 0x0d || b === 0x09) printable++;
  const more = head.length > shown.length ? "..." : "";
  if (shown.length > 0 && printable >= shown.length * 0.9) return `${JSON.stringify(Buffer.from(shown).toString("latin1"))}${more}`;
  return `${Buffer.from(shown).toString("hex").replace(/(..)(?!$)/g, "$1 ")}${more} (hex)`;
}

/** What kind of server sent `head`, when its first bytes give it away ("" if they don't). */
function serverKind(head: Uint8Array): string {
  const text = Buffer.from(head.subarray(0, 16)).toString("latin1");
  if (/^HTTP\/\d/.test(text)) return "an HTTP server";
  if (text.startsWith("SSH-")) return "an SSH server";
  // A TLS record (alert or handshake) of version 3.x: a TLS server answering plain bytes.
  if ((head[0] === 0x15 || head[0] === 0x16) && head[1] === 0x03) return "a TLS server: connect with the tls option";
  return "";
}

/** A decoded value, briefly, for messages. */
function describeValue(v: unknown): string {
  if (v === null || typeof v !== "object") return String(v);
  if (Array.isArray(v)) return `an array of ${v.length}`;
  const keys = Object.keys(v);
  return keys.length === 0 ? "an empty object" : `an object with ${keys.slice(0, 6).join(", ")}${keys.length > 6 ? ", ..." : ""}`;
}
