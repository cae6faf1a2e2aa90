/**
 * The BTree's merge hook (beside `resolveConflict`, SPEC §5): when a commit conflicts on the
 * pieces of BTrees this transaction changed, the connection asks `BTree[MERGE_BY_REPLAY]`
 * to merge. The hook takes the net change per key from each tree's log (btree-merge.ts),
 * lets the connection drop this transaction's changes to the pieces and move its reads to
 * the newest snapshot, and then applies the changes again with the ordinary insert and
 * delete code: inserts and deletes of different keys merge across splits and removals on
 * either side; the same key changed to different values conflicts.
 */
import { metaOf, NEW, type Persistent } from "../persistent/persistent.ts";
import { BTree, bucketOf, lookupEntry, type BTreeKey } from "./btree.ts";
import { BTreeBucket, BTreeNode } from "./btree-bucket.ts";
import { CHANGED_IN_PLACE, netChanges, replay, replayable, type NetChange, type TreeLog } from "./btree-merge.ts";
import { compareKeys } from "./key-compare.ts";

/** What the merge needs from the connection. */
export interface ReplayHost {
  /** The transaction's notes: each changed tree and its log. */
  notes(): Iterable<[object, unknown]>;
  /** The stored state of a piece at this transaction's snapshot (null: none). */
  storedState(piece: Persistent): Record<string, unknown> | null;
  /**
   * Drop this transaction's changes to the pieces (`isPiece`) and move its reads to the
   * newest snapshot (objects it changed keep their read serials, so the vote checks them).
   */
  moveToNewestSnapshot(isPiece: (obj: Persistent) => boolean): void;
}

/** Is `obj` a piece of a BTree (its conflicts merge by replay)? */
export function isTreePiece(obj: Persistent): boolean {
  return obj instanceof BTree || obj instanceof BTreeBucket || obj instanceof BTreeNode;
}

/** Could the transaction's BTree changes be replayed (its logs are complete)? */
export function treesReplayable(notes: Iterable<[object, unknown]>): boolean {
  let any = false;
  for (const [owner, log] of notes) {
    if (!(owner instanceof BTree)) continue;
    if (!replayable(log as TreeLog)) return false;
    any = true;
  }
  return any;
}

/** Merge by replay; false when a change cannot be merged (the transaction's tree changes are then gone). */
export function mergeByReplay(host: ReplayHost): boolean {
  const pending: Array<[BTree, NetChange[]]> = [];
  for (const [owner, log] of host.notes()) {
    if (!(owner instanceof BTree)) continue;
    const net = netChanges(log as TreeLog, (k) => lookupEntry(owner, k));
    for (const change of net) if (change.orig === CHANGED_IN_PLACE) change.orig = storedEntry(host, owner, change.key);
    pending.push([owner, net]);
  }
  host.moveToNewestSnapshot(isTreePiece);
  for (const [tree, net] of pending) {
    const stands = replay(
      net,
      (k) => lookupEntry(tree, k),
      (k, v) => tree.set(k as BTreeKey, v),
      (k) => tree.delete(k as BTreeKey),
    );
    if (stands !== undefined) return false;
  }
  return true;
}

/**
 * The value `key` had in `tree` at the transaction's snapshot, read from the stored bucket
 * (a container changed in place has lost it); CHANGED_IN_PLACE when unknown.
 */
function storedEntry(host: ReplayHost, tree: BTree, key: unknown): unknown {
  const bucket = bucketOf(tree, key);
  const m = metaOf(bucket);
  if (m.state === NEW || m.oid < 0) return CHANGED_IN_PLACE;
  const state = host.storedState(bucket);
  if (state === null) return CHANGED_IN_PLACE;
  const keys = state.keys as unknown[];
  const i = Array.isArray(keys) ? keys.findIndex((k) => compareKeys(k, key) === 0) : -1;
  return i >= 0 ? (state.values as unknown[])[i] : CHANGED_IN_PLACE;
}
