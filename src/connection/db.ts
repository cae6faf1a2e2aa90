/**
 * DB: a database opened on a storage. It hands out connections (`open()`, pooled and
 * reused with their caches), runs transactions with retries (`transact`), and offers the
 * storage's history (`history`, `undo`, `open({ at })`).
 */
import { AmberError, ConflictError, TransactionError } from "../errors.ts";
import { isPersistent, metaOf, type Persistent } from "../persistent/persistent.ts";
import { openStorage, type StorageOptions } from "../storage/open-storage.ts";
import { ROOT_OID, checkStorage, type Storage, type Tid } from "../storage/storage.ts";
import { Connection, createRoot, decodeHistory, discard, reopen, type ConnectionHost, type ConnectionOptions } from "./connection.ts";
import type { PersistentMap } from "../persistent/persistent-map.ts";

export interface DBOptions extends ConnectionOptions, StorageOptions {
  /** Closed connections kept, with their caches, for reuse (default 8). */
  poolSize?: number;
}

export interface TransactOptions {
  /** How many times to re-run `fn` after a ConflictError (default 5). */
  retries?: number;
  /** First backoff delay in ms, doubled per retry, with jitter (default 2). */
  backoffMs?: number;
}

export interface HistoryEntry {
  tid: Tid;
  /** The object's stored state in that revision; references are objects of `obj`'s connection. */
  state: Record<string, unknown>;
}

export class DB implements ConnectionHost, AsyncDisposable {
  readonly storage: Storage;
  readonly #options: DBOptions;
  readonly #pool: Connection[] = [];
  readonly #all = new Set<Connection>();
  readonly #unpooled = new WeakSet<Connection>();
  #closed = false;
  #tid: Tid;

  private constructor(storage: Storage, tid: Tid, options: DBOptions) {
    this.storage = storage;
    this.#tid = tid;
    this.#options = options;
  }

  /**
   * Open a database: `"memory:"`, a directory path (the embedded storage, created if
   * missing), a `file:` URL, or a `Storage` object. The root object is created if the
   * database is new.
   */
  static async open(target: string | Storage, options: DBOptions = {}): Promise<DB> {
    if (typeof target !== "string" && (typeof target !== "object" || target === null)) {
      throw new TypeError(
        `DB.open() expects a storage URL or path (string) or a Storage object, got ${target === null ? "null" : typeof target}`,
      );
    }
    if (typeof target !== "string") checkStorage(target, "DB.open()");
    const storage = typeof target === "string" ? await openStorage(target, options) : target;
    const db = new DB(storage, await storage.lastTid(), options);
    try {
      await db.#ensureRoot();
    } catch (err) {
      await storage.close();
      throw err;
    }
    return db;
  }

  /** A connection: one object cache and one transaction at a time. Close it when done. */
  open(options: ConnectionOptions = {}): Connection {
    this.#assertOpen();
    if (options.at !== undefined) {
      if (!this.storage.capabilities.history) {
        throw new TransactionError(`${this.storage.url} keeps no history: open({ at }) is not available`, "no-history");
      }
      const conn = new Connection(this, this.#tid, { ...this.#options, ...options });
      this.#all.add(conn);
      return conn;
    }
    // Only connections with the DB's own options are pooled, and only those are handed out
    // again: a connection opened with other options is discarded when closed.
    const plain = Object.keys(options).length === 0;
    const pooled = plain ? this.#pool.pop() : undefined;
    if (pooled !== undefined) {
      reopen(pooled);
      return pooled;
    }
    const conn = new Connection(this, this.#tid, { ...this.#options, ...options });
    conn.abort();
    this.#all.add(conn);
    if (!plain) this.#unpooled.add(conn);
    return conn;
  }

  /**
   * Run `fn` in a transaction on a pooled connection and commit. After a ConflictError the
   * changes are aborted and `fn` runs again on a fresh snapshot, with jittered exponential
   * backoff, up to `retries` more times; then the last ConflictError is thrown.
   * A transaction that did not commit because its server connection was lost (code
   * "disconnected": lost before the commit, or during it and the server, asked after the
   * reconnect, says it did not happen and now never will) is run again the same way: only
   * what did not happen is retried. Any other error aborts and is thrown at once, including
   * "commit-unknown" (the server could not be reached again to ask: the commit may have
   * happened, and running it again could apply it twice).
   */
  async transact<T>(
    fn: (root: PersistentMap<string, any>, conn: Connection) => T | Promise<T>,
    options: TransactOptions = {},
  ): Promise<T> {
    const retries = options.retries ?? 5;
    const backoff = options.backoffMs ?? 2;
    if (!Number.isInteger(retries) || retries < 0) throw new RangeError(`retries must be a non-negative integer, got ${retries}`);
    const conn = this.open();
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          const result = await fn(conn.root(), conn);
          await conn.commit();
          return result;
        } catch (err) {
          conn.abort();
          // "disconnected": nothing of this transaction was committed (a commit whose connection
          // was lost is only reported so once the server said it did not happen): safe to run again.
          const disconnected = err instanceof AmberError && err.code === "disconnected";
          if (!(err instanceof ConflictError) && !(disconnected && attempt <= retries)) throw err;
          if (err instanceof ConflictError && attempt > retries) throw new ConflictError(err.conflicts, { cause: err, attempts: attempt });
          const delay = backoff * 2 ** (attempt - 1) * (0.5 + Math.random());
          await new Promise((resolve) => setTimeout(resolve, Math.min(delay, 250)));
          conn.abort(); // begin the retry's snapshot after the wait, not before it
        }
      }
    } finally {
      await conn.close();
    }
  }

  /** Stored revisions of `obj`, newest first (needs a storage that keeps history). */
  async history(obj: Persistent, limit = 100): Promise<HistoryEntry[]> {
    this.#assertOpen();
    if (!isPersistent(obj) || metaOf(obj).oid < 0) throw new TypeError("history() expects a stored persistent object");
    const m = metaOf(obj);
    const owner = (m.jar as { owner?: unknown } | null)?.owner;
    const conn = owner instanceof Connection ? owner : null;
    if (conn === null || !(conn instanceof Connection)) throw new TypeError("history() expects an object of an open connection");
    const revisions = await this.storage.history(m.oid, limit);
    return revisions.map((rec) => ({ tid: rec.serial, state: decodeHistory(conn, rec) }));
  }

  /**
   * Undo transaction `tid` by committing, for each object it wrote, the state before it;
   * returns the new tid. As in ZODB an object may be restored when its current state is
   * the one `tid` wrote, also when an undo wrote it back: undoing t25 and then t24 steps
   * back one transaction at a time, and an undo can be undone. A later change that the
   * undo would lose raises `ConflictError` and nothing is written (see `Storage.undo`).
   */
  async undo(tid: Tid): Promise<Tid> {
    this.#assertOpen();
    return this.storage.undo(tid);
  }

  /** The newest committed tid. */
  async lastTid(): Promise<Tid> {
    this.#tid = Math.max(this.#tid, await this.storage.lastTid());
    return this.#tid;
  }

  /** Close every connection and the storage. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const conn of this.#all) discard(conn);
    this.#all.clear();
    this.#pool.length = 0;
    await this.storage.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** @internal */
  release(conn: Connection): void {
    if (this.#closed) return;
    const limit = this.#options.poolSize ?? 8;
    if (conn.isHistorical || this.#unpooled.has(conn) || this.#pool.length >= limit) {
      discard(conn);
      this.#all.delete(conn);
      return;
    }
    this.#pool.push(conn);
  }

  /** @internal */
  noteTid(tid: Tid): void {
    if (tid > this.#tid) this.#tid = tid;
  }

  #assertOpen(): void {
    if (this.#closed) throw new TransactionError("the database is closed", "closed");
  }

  async #ensureRoot(): Promise<void> {
    const [rec] = await this.storage.load([ROOT_OID], await this.storage.lastTid());
    if (rec !== null && rec !== undefined) return;
    const conn = this.open();
    try {
      await createRoot(conn);
    } catch (err) {
      if (!(err instanceof ConflictError)) throw err; // another process created it first
    } finally {
      await conn.close();
    }
  }
}
