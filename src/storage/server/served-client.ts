/**
 * One client connection of the storage server: reading its frames, the HELLO, running its
 * requests (handlers.ts) when the scheduler gives it a turn (scheduler.ts), and what it
 * may make the server hold.
 *
 * Bounds (what one client can make the server hold):
 * - Before the token is checked, frames of at most PRE_AUTH_MAX_FRAME bytes are accepted
 *   (a larger declared length is a ProtocolError at once), and nothing but HELLO is read.
 * - Requests read and not yet run wait in a queue of at most INPUT_BYTES / INPUT_FRAMES;
 *   beyond that the socket is paused (TCP pushes back on the client) until the queue is
 *   half empty.
 * - A request runs only while fewer than MAX_IN_FLIGHT of the client's requests are in
 *   progress and while less than OUTPUT_BYTES of replies wait to be sent: a client that
 *   does not read its replies stops being served, so its queue fills and it stops being
 *   read. The server holds at most about OUTPUT_BYTES plus the replies in progress for it.
 * - Pushes (invalidations) are sent whatever the backlog; a client whose backlog passes
 *   PUSH_BACKLOG beyond its largest pending reply is disconnected (it does not read).
 *
 * A frame that breaks the protocol closes this connection with a logged ProtocolError; the
 * requests queued behind it never run. At shutdown the queued requests are dropped (never
 * started), those in progress finish, and CLOSING is sent after their replies.
 */
import type { Socket } from "node:net";
import { ProtocolError, StorageError } from "../../errors.ts";
import type { CommitRequest } from "../storage.ts";
import { handlers, type ClientContext, type Handler } from "./handlers.ts";
import type { Hosted, PushTarget } from "./hosted.ts";
import {
  Cmd,
  commandName,
  encodeError,
  FrameReader,
  FrameSplitter,
  FrameWriter,
  PRE_AUTH_MAX_FRAME,
  PROTOCOL_VERSION,
  Reply,
  type Hello,
  type HelloReply,
} from "./protocol.ts";
import type { FairScheduler, Turns } from "./scheduler.ts";

const INPUT_BYTES = 1024 * 1024;
const INPUT_FRAMES = 1024;
const MAX_IN_FLIGHT = 32;
const OUTPUT_BYTES = 4 * 1024 * 1024;
const PUSH_BACKLOG = 64 * 1024 * 1024;

/** What a client connection needs of the server. */
export interface ServerSide {
  readonly maxFrame: number;
  readonly scheduler: FairScheduler;
  log(line: string): void;
  checkToken(given: unknown): boolean;
  database(name: string, create: boolean): Promise<Hosted>;
}

export class ServedClient implements Turns, PushTarget, ClientContext {
  readonly #server: ServerSide;
  readonly #socket: Socket;
  readonly #splitter = new FrameSplitter(PRE_AUTH_MAX_FRAME);
  readonly #peer: string;
  #hosted: Hosted | null = null;
  readonly voted = new Map<number, CommitRequest>();
  #helloSeen = false;
  /** Requests read, waiting for a turn. */
  #queue: Buffer[] = [];
  #queuedBytes = 0;
  #paused = false;
  readonly #inflight = new Set<Promise<void>>();
  /** The largest reply written since the socket last drained (see PUSH_BACKLOG). */
  #largestReply = 0;
  #stopping = false;
  /** The client has finished sending (half-closed): answer what it sent, then close. */
  #ended = false;
  #closed = false;

  constructor(server: ServerSide, socket: Socket) {
    this.#server = server;
    this.#socket = socket;
    this.#splitter.limitReason = " before authentication (HELLO)";
    this.#peer = `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`;
    socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    socket.on("drain", () => {
      this.#largestReply = 0;
      this.#wakeIfReady();
    });
    socket.on("end", () => {
      this.#ended = true;
      this.#maybeEnd();
    });
    socket.on("error", () => undefined); // "close" follows
    socket.once("close", () => this.#onClose());
  }

  get hosted(): Hosted {
    return this.#hosted!;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** An invalidation (or another push): sent whatever the backlog, up to PUSH_BACKLOG. */
  push(frame: Buffer): void {
    if (this.#closed) return;
    if (this.#socket.writableLength > PUSH_BACKLOG + this.#largestReply) {
      this.#fail(new ProtocolError(`client ${this.#peer} does not read what it is sent (${this.#socket.writableLength} bytes queued)`));
      return;
    }
    this.#socket.write(frame);
  }

  #reply(frame: Buffer): void {
    if (this.#closed) return;
    if (this.#socket.writableLength > 0) this.#largestReply = Math.max(this.#largestReply, frame.length);
    this.#socket.write(frame);
  }

  // --- reading -------------------------------------------------------------------------------

  #onData(chunk: Buffer): void {
    if (this.#closed || this.#stopping) return;
    this.#splitter.append(chunk);
    this.#read();
  }

  /** Take whole frames from what was received, up to the queue's bounds. */
  #read(): void {
    try {
      while (!this.#closed && !this.#stopping) {
        if (this.#queuedBytes >= INPUT_BYTES || this.#queue.length >= INPUT_FRAMES) {
          if (!this.#paused) {
            this.#paused = true;
            this.#socket.pause();
          }
          break;
        }
        const frame = this.#splitter.next();
        if (frame === undefined) break;
        if (!this.#helloSeen) this.#hello(frame);
        else {
          this.#queue.push(frame);
          this.#queuedBytes += frame.length;
        }
      }
    } catch (err) {
      this.#fail(err);
      return;
    }
    this.#wakeIfReady();
  }

  /** Read again once the queue is half empty. */
  #maybeResume(): void {
    if (!this.#paused || this.#closed || this.#stopping) return;
    if (this.#queuedBytes > INPUT_BYTES / 2 || this.#queue.length > INPUT_FRAMES / 2) return;
    this.#paused = false;
    this.#read(); // frames already received come first
    if (!this.#paused) this.#socket.resume();
  }

  // --- running -------------------------------------------------------------------------------

  #ready(): boolean {
    return (
      !this.#closed &&
      !this.#stopping &&
      this.#hosted !== null &&
      this.#queue.length > 0 &&
      this.#inflight.size < MAX_IN_FLIGHT &&
      this.#socket.writableLength < OUTPUT_BYTES
    );
  }

  #wakeIfReady(): void {
    if (this.#ready()) this.#server.scheduler.wake(this);
  }

  runTurn(budget: number): boolean {
    for (let n = 0; n < budget && this.#ready(); n++) {
      const frame = this.#queue.shift()!;
      this.#queuedBytes -= frame.length;
      this.#dispatch(frame);
    }
    this.#maybeResume();
    this.#maybeEnd();
    return this.#ready();
  }

  #dispatch(frame: Buffer): void {
    let reader: FrameReader;
    let handler: Handler | undefined;
    try {
      reader = new FrameReader(frame);
      handler = (handlers as Record<number, Handler | undefined>)[reader.kind];
      if (handler === undefined || reader.kind === Cmd.HELLO) {
        throw new ProtocolError(reader.kind === Cmd.HELLO ? "HELLO sent twice" : `unknown command ${commandName(reader.kind) ?? `kind ${reader.kind}`}`);
      }
    } catch (err) {
      this.#fail(err);
      return;
    }
    const failed = (err: unknown): void => {
      if (err instanceof ProtocolError) this.#fail(err);
      else this.#reply(encodeError(reader.id, err));
    };
    let handled: Buffer | Promise<Buffer>;
    try {
      handled = handler(reader, this);
    } catch (err) {
      failed(err);
      return;
    }
    if (!(handled instanceof Promise)) {
      this.#reply(handled);
      return;
    }
    const work = handled.then((reply) => this.#reply(reply), failed);
    this.#inflight.add(work);
    void work.finally(() => {
      this.#inflight.delete(work);
      this.#wakeIfReady();
      this.#maybeEnd();
    });
  }

  /**
   * After the client half-closed: once every request it sent has been answered, close. A
   * frame it left unfinished is a ProtocolError.
   */
  #maybeEnd(): void {
    if (!this.#ended || this.#closed || this.#stopping) return;
    if (this.#queue.length > 0 || this.#inflight.size > 0 || (this.#helloSeen && this.#hosted === null)) return;
    if (this.#splitter.pending > 0) {
      this.#paused = false;
      this.#read(); // whole frames held back while the queue was full come first
      if (this.#closed || this.#queue.length > 0 || (this.#helloSeen && this.#hosted === null)) return;
      if (this.#splitter.pending > 0) {
        this.#fail(new ProtocolError(`connection closed inside a frame (${this.#splitter.pending} bytes of it received)`));
        return;
      }
    }
    this.#closed = true;
    this.#drop();
    void this.#release();
    this.#socket.end();
  }

  // --- HELLO ---------------------------------------------------------------------------------

  #hello(frame: Buffer): void {
    this.#helloSeen = true;
    const reader = new FrameReader(frame);
    if (reader.kind !== Cmd.HELLO) {
      throw new ProtocolError(`the first frame must be HELLO, got ${commandName(reader.kind) ?? `unknown kind ${reader.kind}`}`);
    }
    const hello = reader.msgpack() as Hello;
    reader.end();
    if (typeof hello !== "object" || hello === null || typeof hello.database !== "string") throw new ProtocolError("HELLO needs {version, database}");
    const id = reader.id;
    if (!this.#server.checkToken(hello.token)) {
      this.#server.log(`refused client ${this.#peer}: ${hello.token === undefined ? "no token" : "wrong token"}`);
      this.#refuse(id, new StorageError("authentication failed: wrong or missing token", { code: "auth" }));
      return;
    }
    if (hello.version !== PROTOCOL_VERSION) {
      this.#refuse(id, new StorageError(`protocol version ${String(hello.version)} is not supported (server speaks ${PROTOCOL_VERSION})`, { code: "version" }));
      return;
    }
    // Authenticated: requests may be as large as the server accepts.
    this.#splitter.maxFrame = this.#server.maxFrame;
    this.#splitter.limitReason = "";
    this.#server.database(hello.database, hello.create !== false).then(
      (hosted) =>
        hosted.serialize(async () => {
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
          this.#reply(new FrameWriter(id, Reply.OK).msgpack(reply).finish());
          this.#wakeIfReady(); // the requests pipelined behind HELLO
          this.#maybeEnd();
        }),
      (err: unknown) => this.#refuse(id, err),
    );
  }

  /** Answer the HELLO with an error and hang up, reading nothing more. */
  #refuse(id: number, err: unknown): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#drop();
    this.#socket.end(encodeError(id, err));
  }

  // --- the end -------------------------------------------------------------------------------

  /** Server shutdown: drop what waits, finish what is in progress, say goodbye, close. */
  async shutdown(reason: string): Promise<void> {
    this.#stopping = true;
    this.#socket.pause();
    this.#drop(); // never started: the client learns so from CLOSING
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
    this.push(new FrameWriter(0, Reply.CLOSING).msgpack({ reason }).finish());
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

  #drop(): void {
    this.#queue = [];
    this.#queuedBytes = 0;
  }

  #fail(err: unknown): void {
    if (this.#closed) return;
    const pe = err instanceof ProtocolError ? err : new ProtocolError(String((err as Error)?.message ?? err), { cause: err });
    this.#server.log(`ProtocolError from client ${this.#peer}: ${pe.message}; closing its connection`);
    this.#closed = true;
    this.#drop();
    this.#socket.destroy();
  }

  #onClose(): void {
    if (this.#splitter.pending > 0 && !this.#closed && !this.#paused && !this.#ended) {
      this.#server.log(`ProtocolError from client ${this.#peer}: connection closed inside a frame (${this.#splitter.pending} bytes of it received)`);
    }
    this.#closed = true;
    this.#drop();
    void this.#release();
  }

  /** Forget this client: abort what it voted (nothing of it was written). */
  async #release(): Promise<void> {
    this.#hosted?.clients.delete(this);
    const voted = [...this.voted.values()];
    this.voted.clear();
    for (const request of voted) {
      try {
        await this.#hosted!.storage.abort(request);
      } catch (err) {
        this.#server.log(`aborting a transaction of ${this.#peer} failed: ${(err as Error).message}`);
      }
    }
  }
}
