/**
 * The request/response channel of a remote storage, and its synchronous bridge.
 *
 * A worker thread owns the connection (a socket to `amber serve` for the client storage;
 * a PostgreSQL connection later) and does nothing but move frames. This side sends
 * requests and receives the worker's messages as one ordered stream: replies and pushes
 * are handled in the order the worker posted them, so a push is always applied before a
 * reply that came after it.
 *
 * - `request()` posts a frame and resolves with its reply.
 * - `requestSync()` posts a frame and blocks on `Atomics.wait` until the reply has come (a
 *   ghost touched in plain code), handling everything posted before it on the way. The
 *   worker keeps reading meanwhile; it bumps `signal[0]` and wakes the waiter after every
 *   post.
 * - A request that gets no answer within `timeoutMs` is a lost connection: the socket is
 *   dropped and `onLost` runs, which fails every request in flight.
 *
 * Contract with the worker (client-worker.mjs is one):
 *
 *   workerData          whatever the worker needs, plus `port` (a MessagePort) and `signal`
 *                       (an Int32Array over a SharedArrayBuffer), added here
 *   to the worker       {type: "connect"} | {type: "send", frames: ArrayBuffer[]}
 *                       | {type: "close-socket"} | {type: "close"}
 *   from the worker     {type: "connected"} | {type: "frames", frames: ArrayBuffer[]}
 *                       | {type: "disconnected", error: string, foreign?: unknown}
 *                       each followed by Atomics.add(signal, 0, 1) and Atomics.notify(signal, 0)
 *
 * Frames: bytes 4 to 7 of every frame are a big-endian u32 request id. The channel writes
 * the id of each request it sends there; a frame from the worker with a known id is that
 * request's reply, and one with id 0 is a push (`onPush`). Everything else about a frame
 * (its length prefix, its kind, its payload) is the caller's business.
 */
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from "node:worker_threads";
import { StorageError } from "../../errors.ts";

export interface ChannelOptions {
  /** The worker script (plain JavaScript: a worker does not inherit a TypeScript loader). */
  worker: URL;
  /** Handed to the worker beside `port` and `signal` (structured-cloneable). */
  workerData: Record<string, unknown>;
  /** For messages: what the channel talks to (a URL). */
  name: string;
  /** A request unanswered after this long is a lost connection. */
  timeoutMs: number;
  /** A frame with request id 0. */
  onPush(frame: Uint8Array): void;
  /**
   * The connection is gone: the worker said so (`foreign` is its diagnosis of a peer that
   * speaks another protocol), a request timed out, or the worker failed. The requests in
   * flight are still pending: fail them with `failAll`.
   */
  onLost(error: string, foreign: unknown): void;
}

interface Pending {
  resolve(frame: Uint8Array): void;
  reject(err: Error): void;
  /** What the caller said the request is (to choose the error when the connection is lost). */
  tag: string;
}

type ConnectOutcome = { ok: true } | { ok: false; error: string };

export class RpcChannel {
  readonly #options: ChannelOptions;
  readonly #worker: Worker;
  readonly #port: MessagePort;
  readonly #signal: Int32Array;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  /** Requests sent since the channel was made. */
  #sent = 0;
  /** Async waits (requests, connects) that keep the process alive. */
  #refs = 0;
  #connectOutcome: ConnectOutcome | undefined;
  #connectWaiter: (() => void) | undefined;
  #closed = false;

  constructor(options: ChannelOptions) {
    this.#options = options;
    const { port1, port2 } = new MessageChannel();
    this.#port = port1;
    this.#signal = new Int32Array(new SharedArrayBuffer(4));
    this.#worker = new Worker(options.worker, {
      workerData: { ...options.workerData, port: port2, signal: this.#signal },
      transferList: [port2],
    });
    this.#worker.unref();
    this.#worker.on("error", (err) => {
      const error = `the channel's worker failed: ${err.message}`;
      this.#settleConnect({ ok: false, error });
      options.onLost(error, undefined);
    });
    port1.on("message", (m) => this.#onMessage(m));
    port1.unref();
  }

  /** Requests sent so far (each is one round trip to the remote side). */
  get requests(): number {
    return this.#sent;
  }

  /** Bring the connection up; rejects with the worker's reason when it cannot. */
  async connect(): Promise<void> {
    this.#connectOutcome = undefined;
    this.#hold();
    try {
      await new Promise<void>((resolve) => {
        this.#connectWaiter = resolve;
        this.#port.postMessage({ type: "connect" });
      });
    } finally {
      this.#connectWaiter = undefined;
      this.#release();
    }
    this.#checkConnected();
  }

  /** The same, blocking. */
  connectSync(): void {
    this.#connectOutcome = undefined;
    this.#port.postMessage({ type: "connect" });
    this.#pump(() => this.#connectOutcome !== undefined, "connecting");
    this.#checkConnected();
  }

  #checkConnected(): void {
    const o = this.#connectOutcome!;
    if (!o.ok) throw new ConnectFailed(o.error);
  }

  #settleConnect(outcome: ConnectOutcome): void {
    this.#connectOutcome ??= outcome;
    this.#connectWaiter?.();
  }

  /** Send `frame` (its bytes 4 to 7 are overwritten with the request id); resolves with the reply. */
  request(frame: Uint8Array, tag: string): Promise<Uint8Array> {
    const id = this.#post(frame);
    let timer: NodeJS.Timeout | undefined;
    this.#hold();
    return new Promise<Uint8Array>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, tag });
      const timeout = this.#options.timeoutMs;
      timer = setTimeout(() => {
        if (this.#pending.has(id)) this.#lose(`no answer within ${timeout} ms`);
      }, timeout);
    }).finally(() => {
      clearTimeout(timer);
      this.#release();
    });
  }

  /** The same, blocking until the reply has come. */
  requestSync(frame: Uint8Array, tag: string, what: string): Uint8Array {
    let reply: Uint8Array | undefined;
    let failure: Error | undefined;
    const id = this.#post(frame);
    this.#pending.set(id, { resolve: (r) => (reply = r), reject: (e) => (failure = e), tag });
    this.#pump(() => reply !== undefined || failure !== undefined, what);
    if (failure !== undefined) throw failure;
    return reply!;
  }

  #post(frame: Uint8Array): number {
    const id = this.#nextId++;
    if (this.#nextId > 0xffffffff) this.#nextId = 1; // 0 is a push
    const ab = new ArrayBuffer(frame.length);
    const bytes = new Uint8Array(ab);
    bytes.set(frame);
    new DataView(ab).setUint32(4, id);
    this.#sent++;
    this.#port.postMessage({ type: "send", frames: [ab] }, [ab]);
    return id;
  }

  /** Block (Atomics.wait) until `done()`, handling everything the worker posts meanwhile. */
  #pump(done: () => boolean, what: string): void {
    const timeout = this.#options.timeoutMs;
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
        const message = `no answer from ${this.#options.name} within ${timeout} ms (${what})`;
        this.#lose(message);
        throw new StorageError(message, { code: "timeout" });
      }
      Atomics.wait(this.#signal, 0, seen, left);
    }
  }

  /** Handle what the worker has posted and not yet delivered (pushes), without waiting. */
  drain(): void {
    for (let m = receiveMessageOnPort(this.#port); m !== undefined; m = receiveMessageOnPort(this.#port)) this.#onMessage(m.message);
  }

  /** Reject every request in flight with `error(tag)`. */
  failAll(error: (tag: string) => Error): void {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) p.reject(error(p.tag));
  }

  /** Drop the connection (the next `connect` makes a new one) and report it lost. */
  #lose(error: string): void {
    this.#port.postMessage({ type: "close-socket" });
    this.#options.onLost(error, undefined);
  }

  /** Drop the connection without reporting it (the caller knows). */
  dropConnection(): void {
    this.#port.postMessage({ type: "close-socket" });
  }

  /** Stop the worker. Fail the pending requests first (`failAll`): they are dropped. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#pending.clear();
    this.#settleConnect({ ok: false, error: "the channel was closed" });
    this.#port.postMessage({ type: "close" });
    this.#port.close();
    await this.#worker.terminate();
  }

  #hold(): void {
    if (this.#refs++ === 0) this.#port.ref();
  }

  #release(): void {
    if (--this.#refs === 0) this.#port.unref();
  }

  #onMessage(m: { type: string; frames?: ArrayBuffer[]; error?: string; foreign?: unknown }): void {
    switch (m.type) {
      case "frames":
        for (const f of m.frames!) this.#onFrame(new Uint8Array(f));
        break;
      case "connected":
        this.#settleConnect({ ok: true });
        break;
      case "disconnected": {
        const error = m.error ?? "connection lost";
        this.#settleConnect({ ok: false, error });
        this.#options.onLost(error, m.foreign);
        break;
      }
    }
  }

  #onFrame(frame: Uint8Array): void {
    if (frame.length < 8) return;
    const id = new DataView(frame.buffer, frame.byteOffset, frame.byteLength).getUint32(4);
    if (id === 0) {
      this.#options.onPush(frame);
      return;
    }
    const p = this.#pending.get(id);
    if (p === undefined) return; // the answer to a request already given up on
    this.#pending.delete(id);
    p.resolve(frame);
  }
}

/** The connection could not be made (the worker's reason in the message). */
export class ConnectFailed extends Error {}
