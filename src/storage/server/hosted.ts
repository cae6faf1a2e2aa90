/**
 * One database served by `amber serve`: its storage, its connected clients, its commit
 * order, and the ids of its recent commits.
 *
 * - Commits (and undos, HELLOs, polls, COMMIT_STATUS questions) run one at a time in the
 *   order they arrived (`serialize`), and every client is told what a commit changed
 *   (INVALIDATE) before its committer is answered.
 * - Commit ids (protocol.ts, COMMIT IDS): the storage keeps each transaction's id in its
 *   metadata, so whether a commit happened survives a crash of this process. Besides, this
 *   process remembers the ids of the last RECENT_COMMITS commits it made and the ids it
 *   declared lost (in memory, per process): a FINISH or COMMIT carrying a remembered id is
 *   answered with that commit's tid instead of committing twice, and one carrying an id
 *   declared lost is refused (it can only be a late frame of a connection the client gave
 *   up on; a restarted process has no such connections).
 */
import { StorageError } from "../../errors.ts";
import type { CommitRequest, Storage, Tid } from "../storage.ts";
import { COMMIT_ID_KEY, CommitOutcome, FrameWriter, Reply } from "./protocol.ts";

/** Commit ids remembered per database (the oldest are forgotten first). */
const RECENT_COMMITS = 100_000;
/** Marks an id declared lost in `#recent`. */
const LOST = -1;

/** @internal Test hooks: called around the storage's finish of every commit. */
export interface ServerHooks {
  beforeCommit?(commitId: string | undefined): void;
  afterCommit?(commitId: string | undefined, tid: Tid): void;
}

/** Something that can be sent a push (a connected client). */
export interface PushTarget {
  push(frame: Buffer): void;
}

export class Hosted {
  readonly clients = new Set<PushTarget>();
  /** Every client has been sent every invalidation up to this tid. */
  lastBroadcast = 0;
  #chain: Promise<unknown> = Promise.resolve();
  /** A poll queued in the commit order and not started yet: later LAST_TIDs share it. */
  #poll: Promise<void> | undefined;
  /** Commit id -> its tid, or LOST. Insertion order is age. */
  readonly #recent = new Map<string, Tid>();

  constructor(
    readonly name: string,
    readonly storage: Storage,
    readonly hooks: ServerHooks | undefined,
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
    for (const c of this.clients) c.push(frame);
    this.lastBroadcast = changes.tid;
  }

  /**
   * Announce commits that other processes made to the storage. A poll answers every
   * request that arrived before it started, so requests arriving while one waits in the
   * commit order share it (a flood of LAST_TIDs adds one poll to the order, not thousands).
   */
  poll(): Promise<void> {
    return (this.#poll ??= this.serialize(async () => {
      this.#poll = undefined;
      if ((await this.storage.lastTid()) > this.lastBroadcast) await this.broadcast();
    }));
  }

  /** Finish `request` in commit order and announce it; its commit id makes it happen at most once. */
  commit(request: CommitRequest): Promise<Tid> {
    const id = request.meta?.[COMMIT_ID_KEY];
    return this.serialize(async () => {
      if (id !== undefined) {
        const known = this.#recent.get(id);
        if (known === LOST) {
          throw new StorageError(`commit ${id} was declared lost (its client was told it did not happen); it is not committed now`, { code: "disconnected" });
        }
        if (known !== undefined) return known; // the same commit again: it happened once
      }
      this.hooks?.beforeCommit?.(id);
      const tid = await this.storage.finish(request);
      if (id !== undefined) this.#remember(id, tid);
      this.hooks?.afterCommit?.(id, tid);
      await this.broadcast();
      return tid;
    });
  }

  /**
   * What became of commit `id`, sent by a client that knew the database up to `since`
   * (COMMIT_STATUS). Asked in commit order, so a commit received before the question has
   * finished. An id found nowhere is declared lost: it is never committed afterwards.
   */
  commitStatus(id: string, since: Tid): Promise<{ outcome: number; tid: Tid }> {
    return this.serialize(async () => {
      const known = this.#recent.get(id);
      if (known === LOST) return { outcome: CommitOutcome.NOT_COMMITTED, tid: 0 };
      if (known !== undefined) return { outcome: CommitOutcome.COMMITTED, tid: known };
      // Not made by this process (it restarted), or forgotten: the storage's log tells,
      // if it still reaches back to `since` (the commit's tid is after it).
      if ((await this.storage.changesSince(since)).oids === null) return { outcome: CommitOutcome.UNKNOWN, tid: 0 };
      for (const t of await this.storage.transactions(since)) {
        if (t.meta[COMMIT_ID_KEY] === id) {
          this.#remember(id, t.tid);
          return { outcome: CommitOutcome.COMMITTED, tid: t.tid };
        }
      }
      this.#remember(id, LOST);
      return { outcome: CommitOutcome.NOT_COMMITTED, tid: 0 };
    });
  }

  #remember(id: string, tid: Tid): void {
    this.#recent.delete(id);
    this.#recent.set(id, tid);
    if (this.#recent.size > RECENT_COMMITS) this.#recent.delete(this.#recent.keys().next().value!);
  }
}
