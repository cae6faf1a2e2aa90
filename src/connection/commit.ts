/**
 * The commit: rounds of vote and finish against the storage, with conflict resolution in
 * between, and the transaction's phase.
 *
 * The transaction's phase (`Core.phase`, one value at a time):
 *
 *   phase       writes to its objects        how it gets there                 leaves by
 *   ----------  ---------------------------  --------------------------------  ---------------------------
 *   ACTIVE      allowed                      open, reopen; a boundary          commit() -> COMMITTING;
 *                                                                              close()/discard() -> CLOSED
 *   COMMITTING  refused ("in-flight"); the   commit()                          success or failure ->
 *               objects of the round are                                       ACTIVE (a new transaction
 *               LOCKED                                                         after success); a failed
 *                                                                              BTree replay -> DOOMED
 *   REPLAYING   allowed, to the replay only  a round merging BTree conflicts   the replay ends ->
 *               (strict mode off)            (conflict-resolution.ts)          COMMITTING
 *   DOOMED      allowed; commit() raises     a replay that failed part-way     abort() -> ACTIVE
 *               the replay's error           (the tree changes are gone)
 *   CLOSED      refused ("stale-object")     close(), discard()                reopen() -> ACTIVE (a new
 *                                                                              checkout, new instances)
 *
 * One round (`CommitRound`): collect the work (the objects the transaction changed, the
 * objects that handed out nested values and now differ from their records, the new objects
 * they reach: each encoded once), lock it, vote (conflicts come back with the committed
 * records), merge what classes can merge and vote again, or finish (a local storage merges
 * conflicts that appear inside its atomic finish). After a merge by hooks the next round
 * finishes at once. A conflict that cannot merge raises `ConflictError` with the changes in
 * place, to be aborted.
 */
import { ConflictError, TransactionError, type ConflictDetail } from "../errors.ts";
import { BrokenObject } from "../persistent/broken-object.ts";
import { keepAddedFields } from "../persistent/fields.ts";
import { NEW, SAVED, type Meta, type Persistent } from "../persistent/persistent.ts";
import { hasCustomState } from "../persistent/slots.ts";
import { clearState } from "../persistent/data-props.ts";
import type { CommitRequest, StorageConflict, Tid } from "../storage/storage.ts";
import { CommitRound } from "./commit-round.ts";
import { mayResolve, resolve, resolveInCommit } from "./conflict-resolution.ts";
import { Phase } from "./phase.ts";
import { assertOpen, checkSession, type Core } from "./core.ts";
import { holdOver, keepsOriginal } from "./object-loader.ts";
import { holdsContainers, putState } from "./object-state.ts";
import { finishTransaction } from "./snapshot.ts";
import { buildRequest, conflictErrorFor } from "./transaction.ts";

/**
 * Commit every change of this transaction (and the new objects they reach) atomically.
 * Raises `ConflictError` if another transaction changed an object this one changed or
 * marked `readCurrent`; the changes are then still in place, to be aborted. Only what the
 * transaction touched is looked at.
 */
export async function commit(c: Core): Promise<void> {
  assertOpen(c, "commit");
  if (c.phase === Phase.COMMITTING || c.phase === Phase.REPLAYING) {
    throw new TransactionError("commit() called while a commit of this connection is in flight", "in-flight");
  }
  if (c.doomed !== null) throw c.doomed;
  c.phase = Phase.COMMITTING;
  c.token.ok = false;
  let round: CommitRound | null = null;
  let mergedByHooks = false;
  try {
    for (let n = 1; ; n++) {
      round?.unlock();
      round = new CommitRound(c);
      const { work, snaps, adopted } = round;
      if (c.at !== undefined && work.length > 0) {
        throw new TransactionError("cannot commit changes in a read-only historical view", "read-only");
      }
      round.lock();
      if (work.length === 0) {
        // Nothing to write (also when a merge found its changes already committed). Objects
        // only marked readCurrent are checked, and no transaction is written.
        if (c.readCurrent.size > 0 && c.at === undefined) await checkReadCurrent(c);
        finishTransaction(c);
        await yieldToEventLoop();
        return;
      }
      checkSession(c);
      if (adopted.length > 0) await assignOids(c, adopted);
      let request = buildRequest(work, snaps, c.readCurrent.values());
      // After a merge by hooks, finish at once: the check there is atomic (and a local
      // storage merges again inside it), and a second vote would only widen the window
      // in which another commit can slip in.
      const vote: boolean = !mergedByHooks;
      mergedByHooks = false;
      c.stats.roundTrips++;
      const conflicts: StorageConflict[] = vote ? await c.storage.vote(request) : [];
      if (c.storage.session !== c.session) {
        await c.storage.abort(request); // voted in a new session: this transaction read the old one
        checkSession(c);
      }
      if (conflicts.length > 0) {
        await c.storage.abort(request); // a storage that locks at vote releases here
        // Classes that resolve conflicts merge, and the transaction votes again.
        const trees: boolean = conflicts.some((x) => mayResolve(round!, x.oid, true));
        if (n < MAX_RESOLVE_ROUNDS && resolve(c, round, conflicts)) {
          round.forgetOids();
          mergedByHooks = !trees;
          continue;
        }
        throw conflictErrorFor(conflicts, work, c.readCurrent.values());
      }
      if (vote) c.stats.roundTrips++;
      let tid: Tid;
      try {
        // A local storage merges conflicts that appear now inside its atomic section.
        const r = round;
        tid = await c.storage.finish(request, (found) => {
          const merged = resolveInCommit(c, r, found);
          if (merged !== null) request = merged;
          return merged;
        });
      } catch (err) {
        if (err instanceof ConflictError) {
          // A commit came between vote and finish: vote again if it may merge.
          if (n < MAX_RESOLVE_ROUNDS && err.conflicts.every((x) => mayResolve(round!, x.oid))) {
            round.forgetOids();
            // Repeatedly overtaken (a server serializes commits, and another client's was
            // in flight each time): step out of lockstep with a short jittered pause.
            if (n >= 2) await pause(Math.random() * Math.min(20, 0.5 * 2 ** Math.min(n - 2, 8)));
            continue;
          }
          throw conflictErrorFor(err.conflicts.map(toStorageConflict), work, c.readCurrent.values());
        }
        throw err;
      }
      c.stats.commits++;
      const inFlight = committed(c, round, request, tid);
      round = null;
      finishTransaction(c, tid);
      await yieldToEventLoop();
      if (inFlight.length > 0) {
        throw new TransactionError(
          `the commit succeeded (tid ${tid}), but ${inFlight.join(", ")} changed while it was in flight; ` +
            `those changes belong to no transaction and were discarded`,
          "changed-in-flight",
        );
      }
      return;
    }
  } catch (err) {
    round?.forgetOids();
    if (round?.replayFailed === true && c.doomed === null) c.doomed = err instanceof Error ? err : new Error(String(err));
    throw err;
  } finally {
    round?.unlock();
    if (c.phase === Phase.COMMITTING || c.phase === Phase.REPLAYING) c.phase = c.doomed !== null ? Phase.DOOMED : Phase.ACTIVE;
    c.token.ok = c.phase !== Phase.CLOSED && c.at === undefined;
  }
}

/** A transaction that only marked objects readCurrent: check them, write nothing. */
export async function checkReadCurrent(c: Core): Promise<void> {
  checkSession(c);
  const request = buildRequest([], [], c.readCurrent.values());
  c.stats.roundTrips++;
  const conflicts = await c.storage.vote(request);
  await c.storage.abort(request);
  if (conflicts.length > 0) throw conflictErrorFor(conflicts, [], c.readCurrent.values());
}

async function assignOids(c: Core, adopted: Meta[]): Promise<void> {
  const s = c.storage;
  c.stats.roundTrips++;
  const oids = s.newOidsSync !== undefined ? s.newOidsSync(adopted.length) : await s.newOids(adopted.length);
  adopted.forEach((m, i) => {
    m.oid = oids[i]!;
  });
}

/**
 * Bookkeeping after a successful finish: each written object holds its new record; its
 * nested values stay with this transaction (held over: fresh copies from the record before
 * one is handed out again). New objects get field accessors. Returns the new objects
 * assigned to while the commit was in flight (their changes are discarded).
 */
function committed(c: Core, round: CommitRound, request: CommitRequest, tid: Tid): string[] {
  const { work, snaps } = round;
  const inFlight: string[] = [];
  for (let i = 0; i < work.length; i++) {
    const [obj, meta] = work[i]!;
    const snap = snaps[i];
    const data = request.records[i]!.data;
    c.stats.bytesWritten += data.length;
    const wasNew = meta.state === NEW;
    meta.serial = tid;
    meta.record = data;
    meta.handed = false;
    c.cache.resize(meta, data.length);
    if (snap !== null && snap !== undefined) {
      meta.className = snap.info.name;
      meta.bytes = data.subarray(data.length - 4 - snap.state.length, data.length - 4);
      meta.refs = snap.refs;
      if (keepsOriginal(obj, snap.values)) c.originals.set(meta, { bytes: meta.bytes, shared: snap.shared, version: snap.info.version });
    }
    if (wasNew) {
      meta.token = c.token;
      c.cache.add(meta.oid, obj);
      if (snap !== null && snap !== undefined && !hasCustomState(obj)) {
        if (changedSince(obj, snap.values)) inFlight.push(`${meta.className}#${meta.oid}`);
        clearState(obj);
        putState(obj, meta, snap.values);
      }
    }
    keepAddedFields(obj, meta);
    meta.state = SAVED;
    const broken = obj instanceof BrokenObject;
    meta.containers = !broken && (snap === null || snap === undefined || holdsContainers(obj, snap.values));
    c.cache.touch(obj, meta);
    // Nested values the application may still hold stay with this transaction.
    if (meta.containers) holdOver(c, obj, meta);
    else meta.watch = 0;
  }
  return inFlight;
}

/**
 * Conflict resolution rounds (vote, merge, vote again) before a commit gives up. Every round
 * merges (a conflict that cannot merge fails at once); many rounds happen only when other
 * commits keep landing between this one's vote and finish (a storage server, which holds no
 * lock between them, under many writers of one object), and the jittered pause between
 * rounds lets one through. Concurrent adds to a Counter then always merge.
 */
const MAX_RESOLVE_ROUNDS = 200;

function pause(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}

function toStorageConflict(c: ConflictDetail): StorageConflict {
  return { oid: c.oid, readSerial: c.readSerial, committedSerial: c.committedSerial, committedData: null, readOnly: c.readOnly };
}

/** Let the event loop run (timers, I/O, signals) after a commit settles. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((done) => setImmediate(done));
}

/** Were top-level properties of a new object assigned since `values` were taken from it? */
function changedSince(obj: Persistent, values: Record<string, unknown>): boolean {
  const keys = Object.keys(obj);
  if (keys.length !== Object.keys(values).length) return true;
  for (const k of keys) if (!Object.hasOwn(values, k) || !Object.is((obj as unknown as Record<string, unknown>)[k], values[k])) return true;
  return false;
}
