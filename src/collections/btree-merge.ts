/**
 * Merging concurrent changes to a BTree (SPEC §4, §5).
 *
 * ZODB resolves a bucket conflict only when neither side split the bucket and the tree
 * has one bucket at the top. amberdb merges by key instead: each transaction keeps a log
 * of the keys it changed in each tree and what each held before (`logChange`, called by
 * set, delete and clear). When a commit conflicts on any piece of a tree (bucket, node or
 * the tree object), the connection:
 *
 *   1. takes this transaction's net change per key from the log: the value before the
 *      first change, and the value now (`netChanges`);
 *   2. drops every change this transaction made to BTree pieces (they become ghosts, the
 *      pieces it created are left behind), and moves its reads to the newest snapshot;
 *   3. applies the net changes again to the newest tree (`replay`), with the ordinary
 *      insert and delete code, so splits and removals on either side are simply the tree
 *      they find. A key that the other side changed to something else is a real conflict.
 *
 * Then it votes again: the pieces it writes now carry their newest serials, so a commit
 * that came in between is caught (and merged again). Inserts and deletes of different
 * keys therefore always merge, whatever either side split; the same key changed by both
 * sides to different values conflicts. A transaction that called `clear()` does not
 * replay (its conflicts stand). Against a concurrent clear, a transaction that changed
 * keys either conflicts on a piece the clear wrote and is merged onto the cleared tree, or
 * (when the root was a node: the clear writes only the tree object and leaves the old
 * pieces behind) it wrote only old pieces and is ordered before the clear, which removes
 * its keys: a serializable outcome either way, as in ZODB.
 *
 * The log holds at most `MAX_LOGGED` changes per tree and transaction; a transaction that
 * changes more keys of one tree (a bulk load) keeps ZODB-style conflicts for that tree.
 */
import { sameValue } from "../persistent/conflict-hooks.ts";
import { metaOf, type Persistent } from "../persistent/persistent.ts";
import { compareKeys } from "./key-compare.ts";

/** Marks "no entry for this key". */
export const ABSENT: unique symbol = Symbol("amber.btree.absent");

/**
 * The value before a change is unknown: a container changed in place and set again. Equal
 * to nothing, so a concurrent change to that key conflicts.
 */
export const CHANGED_IN_PLACE: unique symbol = Symbol("amber.btree.changedInPlace");

export const MAX_LOGGED = 100_000;

/** One transaction's changes to one tree. */
export interface TreeLog {
  keys: unknown[];
  /** The value before each logged change (ABSENT: the key was not there). */
  before: unknown[];
  overflow: boolean;
  cleared: boolean;
}

export interface NetChange {
  key: unknown;
  orig: unknown;
  final: unknown;
}

/** The log of `tree` in its connection's transaction; null for a tree not yet stored. */
export function logOf(tree: Persistent): TreeLog | null {
  const jar = metaOf(tree).jar;
  if (jar === null) return null;
  const notes = jar.transactionNotes();
  let log = notes.get(tree) as TreeLog | undefined;
  if (log === undefined) {
    log = { keys: [], before: [], overflow: false, cleared: false };
    notes.set(tree, log);
  }
  return log;
}

/** Note that `key` is about to change in `tree`; it held `before` (or ABSENT). */
export function logChange(tree: Persistent, key: unknown, before: unknown): void {
  const log = logOf(tree);
  if (log === null || log.overflow) return;
  if (log.keys.length >= MAX_LOGGED) {
    log.overflow = true;
    log.keys = [];
    log.before = [];
    return;
  }
  log.keys.push(key);
  log.before.push(before);
}

/** `tree.clear()` was called: a concurrent change to the tree cannot be merged with it. */
export function logClear(tree: Persistent): void {
  const log = logOf(tree);
  if (log !== null) log.cleared = true;
}

/** Can the changes in `log` be replayed on a newer tree? */
export function replayable(log: TreeLog): boolean {
  return !log.overflow && !log.cleared;
}

/**
 * The net change per key (sorted by key): the value before this transaction's first
 * change and the value now, read with `lookup` from the tree as this transaction left it.
 * Keys changed and changed back are dropped.
 */
export function netChanges(log: TreeLog, lookup: (key: unknown) => unknown): NetChange[] {
  const order = log.keys.map((_, i) => i);
  order.sort((a, b) => compareKeys(log.keys[a], log.keys[b]) || a - b); // stable: first change first
  const out: NetChange[] = [];
  for (let j = 0; j < order.length; j++) {
    const i = order[j]!;
    const key = log.keys[i];
    if (j > 0 && compareKeys(log.keys[order[j - 1]!], key) === 0) continue;
    const orig = log.before[i];
    const final = lookup(key);
    if (!sameValue(orig, final)) out.push({ key, orig, final });
  }
  return out;
}

/**
 * Apply `changes` to the tree as it is now (the newest snapshot): `lookup` reads a key,
 * `set` and `remove` change it. Returns the first key that the other side changed to a
 * different value (a conflict that stands), or undefined when every change applied.
 */
export function replay(
  changes: readonly NetChange[],
  lookup: (key: unknown) => unknown,
  set: (key: unknown, value: unknown) => void,
  remove: (key: unknown) => void,
): { key: unknown } | undefined {
  for (const { key, orig, final } of changes) {
    const now = lookup(key);
    if (sameValue(now, final)) continue; // the same change was committed
    if (!sameValue(now, orig)) return { key };
    if (final === ABSENT) remove(key);
    else set(key, final);
  }
  return undefined;
}
