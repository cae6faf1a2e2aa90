/**
 * One round of a commit (commit.ts): the objects it writes and their encodings (each encoded
 * once), the new objects they reach, and what conflict resolution needs of them.
 */
import { isTreePiece } from "../collections/btree-replay.ts";
import { CHANGED, LOCKED, NEW, type Meta, type Persistent } from "../persistent/persistent.ts";
import type { Oid } from "../storage/storage.ts";
import type { Core } from "./core.ts";
import type { ObjectSnapshot } from "./object-state.ts";
import { collectWork } from "./transaction.ts";

export { isTreePiece };

/** The work of one round of a commit. */
export class CommitRound {
  /** The objects written, and their encodings (null: a BrokenObject's original bytes). */
  readonly work: Array<[Persistent, Meta]>;
  readonly snaps: Array<ObjectSnapshot | null>;
  /** New objects reached from the work: given oids for this round only. */
  readonly adopted: Meta[] = [];
  /** A BTree replay of this round failed part-way: the transaction is doomed. */
  replayFailed = false;
  #index: Map<Oid, number> | null = null;

  constructor(c: Core) {
    const collected = collectWork(c, c.changedList, c.handedList, this.adopted, (obj, meta) => {
      // Found changed by comparison: a change in place of a nested value.
      if (isTreePiece(obj)) c.changedInPlace.add(meta);
      c.changed(obj, meta);
    });
    this.work = collected.work;
    this.snaps = collected.snaps;
  }

  /** Oid -> position in the work (built once, when the round meets a conflict). */
  get index(): Map<Oid, number> {
    if (this.#index === null) {
      this.#index = new Map();
      for (let i = 0; i < this.work.length; i++) this.#index.set(this.work[i]![1].oid, i);
    }
    return this.#index;
  }

  /** Writes to the round's changed objects are refused while it is in flight. */
  lock(): void {
    for (const [, m] of this.work) if (m.state === CHANGED) m.state = LOCKED;
  }

  /** The round is over: its objects still LOCKED are CHANGED again. */
  unlock(): void {
    for (const [, m] of this.work) if (m.state === LOCKED) m.state = CHANGED;
  }

  /** New objects given oids by a vote that did not commit get them again next time. */
  forgetOids(): void {
    for (const m of this.adopted) {
      if (m.state === NEW) {
        m.jar = null;
        m.oid = -1;
      }
    }
  }
}
