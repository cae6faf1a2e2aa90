/**
 * Conflict resolution at commit (SPEC §5): classes with a `resolveConflict` hook merge the
 * committed state with this transaction's (three decoded states, references as
 * `PersistentRef`s); BTree pieces merge by replaying this transaction's net key changes on
 * the newest tree (collections/btree-merge.ts). Used by the commit rounds (commit.ts), and
 * by local storages inside their atomic finish (hook classes only).
 */
import { readEnvelope, type ParsedEnvelope } from "../codec/record.ts";
import { decodeState } from "../codec/state.ts";
import { mergeByReplay, treesReplayable as canReplay } from "../collections/btree-replay.ts";
import { classByName, persistentInfo } from "../persistent/class-registry.ts";
import { CHANGED, GHOST, NEW, metaOf, type Meta, type Persistent } from "../persistent/persistent.ts";
import type { CommitRequest, Oid, StorageConflict } from "../storage/storage.ts";
import { isTreePiece, type CommitRound } from "./commit-round.ts";
import { Phase } from "./phase.ts";
import { PersistentRef, RefTable, liveState, resolverOf, type State } from "../persistent/conflict-hooks.ts";
import type { Core } from "./core.ts";
import { copyBytes, decodeRecord, ghostify, objectFor, refsOf } from "./object-loader.ts";
import { putState } from "./object-state.ts";
import { buildRequest, encodeChanged } from "./transaction.ts";

/**
 * Merge conflicts found inside a local storage's `finish` (ResolveInCommit): hook
 * classes only (a BTree replay loads, which cannot happen there), and only when the
 * merged states reach no new object. Returns the request to write, or null.
 */
export function resolveInCommit(c: Core, round: CommitRound, conflicts: StorageConflict[]): CommitRequest | null {
  const { work, snaps, index } = round;
  for (const x of conflicts) {
    const i = index.get(x.oid);
    if (i === undefined || isTreePiece(work[i]![0])) return null;
  }
  if (!resolve(c, round, conflicts)) return null;
  for (const x of conflicts) {
    const i = index.get(x.oid)!;
    const adopted: Meta[] = [];
    const snap = encodeChanged(c, [work[i]!], adopted);
    if (adopted.length > 0) {
      // The next round gives them oids (the state stays merged).
      for (const m of adopted) {
        m.jar = null;
        m.oid = -1;
      }
      return null;
    }
    snaps[i] = snap[0]!;
  }
  return buildRequest(work, snaps, c.readCurrent.values());
}

/** Could a conflict on `oid` (an object this transaction writes) be merged? */
export function mayResolve(round: CommitRound, oid: Oid, treesOnly = false): boolean {
  const i = round.index.get(oid);
  if (i === undefined) return false;
  const obj = round.work[i]![0];
  return isTreePiece(obj) || (!treesOnly && resolverOf(obj.constructor) !== undefined);
}

/**
 * Merge the conflicts of a vote (SPEC §5). Objects of classes with `resolveConflict`
 * get the state it returns, based on the committed revision; BTree pieces are merged by
 * replaying this transaction's key changes on the newest tree (btree-merge.ts). Returns
 * false, having changed nothing, when any conflict cannot be merged; after a merge of a
 * BTree it may return false having replayed part of it (the commit fails and is aborted).
 */
export function resolve(c: Core, round: CommitRound, conflicts: StorageConflict[]): boolean {
  const { work, snaps, index } = round;
  // A merged state may refer to objects this transaction creates: their oids are only
  // this vote's (forgotten before the next one), and they are not in the cache yet.
  const objectForRef = (r: PersistentRef): Persistent => {
    const i = index.get(r.oid);
    return i !== undefined && work[i]![1].state === NEW ? work[i]![0] : objectFor(c, r.oid, r.className);
  };
  const installs: Array<() => void> = [];
  let trees = false;
  const table = new RefTable();
  const refsOfObjects = (objs: readonly Persistent[]): PersistentRef[] =>
    objs.map((p) => {
      const m = metaOf(p);
      return table.ref(m.oid, m.className !== "" ? m.className : persistentInfo(p).name);
    });
  for (const x of conflicts) {
    if (x.readOnly || x.committedData === null || x.readSerial === 0) return false;
    const i = index.get(x.oid);
    if (i === undefined) return false;
    const [obj, meta] = work[i]!;
    const snap = snaps[i];
    if (snap === null || snap === undefined) return false;
    if (isTreePiece(obj)) {
      trees = true;
      continue;
    }
    const resolver = resolverOf(obj.constructor);
    const orig = c.originals.get(meta);
    if (resolver === undefined || orig === undefined || meta.refs === null) return false;
    let env: ParsedEnvelope;
    let resolved: unknown;
    try {
      env = readEnvelope(x.committedData, x.oid);
      const info = classByName(env.className);
      if (info === undefined || info.cls !== obj.constructor) return false;
      const upgrade = (info.cls as { upgrade?: (s: State, v: number) => State }).upgrade;
      const current = (st: State, version: number): State =>
        version < info.version && typeof upgrade === "function" ? upgrade.call(info.cls, st, version) : st;
      const original = current(decodeState(orig.bytes, refsOfObjects(meta.refs), orig.shared), orig.version);
      const committed = current(
        decodeState(env.data, table.refs(env.refOids, env.refClasses), env.shared, env.stateStart, env.stateEnd),
        env.classVersion,
      );
      const mine = decodeState(snap.state, refsOfObjects(snap.refs), snap.shared);
      resolved = resolver.call(obj.constructor, original, committed, mine);
    } catch {
      return false; // a resolver that throws keeps the conflict
    }
    if (typeof resolved !== "object" || resolved === null || Array.isArray(resolved)) return false;
    const committedEnv = env;
    const serial = x.committedSerial;
    installs.push(() => {
      putState(obj, meta, liveState(resolved as State, objectForRef));
      // The object now stands on the committed revision: that is what abort restores.
      const record = copyBytes(committedEnv.data);
      meta.record = record;
      const bytes = record.subarray(committedEnv.stateStart, committedEnv.stateEnd);
      meta.bytes = bytes;
      meta.serial = serial;
      meta.watch = 0; // the merged state's nested values are new: none was handed out
      c.changed(obj, meta);
      meta.state = CHANGED;
      meta.refs = refsOf(c, committedEnv, meta);
      c.originals.set(meta, { bytes, shared: committedEnv.shared, version: committedEnv.classVersion });
    });
  }
  if (trees && !treesReplayable(c)) return false;
  for (const install of installs) install();
  let replayed = !trees;
  try {
    if (trees) replayed = replayTrees(c, work);
  } finally {
    if (!replayed) round.replayFailed = true;
  }
  if (!replayed) return false;
  c.stats.conflictsResolved += conflicts.length;
  return true;
}

/** Did this transaction change BTrees only in ways that can be replayed? */
export function treesReplayable(c: Core): boolean {
  // A value changed in place is in no tree's log of key changes: a replay would lose it.
  if (c.changedInPlace.size > 0) return false;
  return canReplay(c.notes ?? []) && c.storage.changesSinceSync !== undefined;
}

/**
 * Redo this transaction's BTree changes on the newest snapshot (the BTree's merge hook,
 * collections/btree-replay.ts), with this connection as its host.
 */
export function replayTrees(c: Core, work: Array<[Persistent, Meta]>): boolean {
  // The replay reads pieces no plan loaded (strict mode is off while REPLAYING) and changes
  // them, as part of this commit.
  c.phase = Phase.REPLAYING;
  try {
    return mergeByReplay({
      notes: () => c.notes ?? [],
      storedState: (piece) => {
        const m = metaOf(piece);
        const s = c.storage;
        const rec = s.loadOneSync?.(m.oid, c.tid, false) ?? s.loadSync?.([m.oid], c.tid)[0] ?? null;
        if (rec === null) return null;
        c.stats.roundTrips++;
        return decodeRecord(c, rec);
      },
      moveToNewestSnapshot: (isPiece) => moveToNewestSnapshot(c, work, isPiece),
    });
  } finally {
    c.phase = Phase.COMMITTING;
  }
}

/**
 * Drop this transaction's changes to the pieces in `work` and move its reads to the newest
 * snapshot: objects it changed keep the serial they were read at (the next vote still checks
 * them); the others that changed since become ghosts.
 */
function moveToNewestSnapshot(c: Core, work: Array<[Persistent, Meta]>, isPiece: (obj: Persistent) => boolean): void {
  const keep = new Set<Meta>(c.readCurrent.values());
  for (const [obj, meta] of work) {
    if (isPiece(obj)) {
      if (meta.state !== NEW) ghostify(c, obj, meta);
    } else keep.add(meta);
  }
  const changes = c.storage.changesSinceSync!(c.tid);
  if (changes.local !== true) c.stats.roundTrips++;
  // Objects kept at their read serial that changed since stay stale until the transaction
  // ends: begin() (snapshot.ts) drops them then (it only asks for changes after the new tid).
  if (changes.oids === null) {
    for (const [obj, meta] of c.cache.loadedObjects()) {
      if (!keep.has(meta)) ghostify(c, obj, meta);
      else c.staleKept.push(obj);
    }
  } else {
    for (const oid of changes.oids) {
      const obj = c.cache.get(oid);
      if (obj === undefined) continue;
      const meta = metaOf(obj);
      if (meta.state === NEW || (meta.state === GHOST && meta.record === null)) continue; // soft ghosts hold a record: drop it
      if (keep.has(meta)) c.staleKept.push(obj);
      else ghostify(c, obj, meta);
    }
  }
  c.txn++; // a load in flight from the old snapshot is dropped
  c.tid = Math.max(c.tid, changes.tid);
  c.host.noteTid(c.tid);
  c.notes = null; // the replay logs its changes afresh, relative to the newest tree
}
