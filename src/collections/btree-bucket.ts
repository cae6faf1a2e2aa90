/**
 * The persistent pieces of a BTree (see btree.ts for the tree, its algorithms and the
 * invariants): buckets, the leaves that hold keys and values, and interior nodes, which
 * hold separators and children. Each piece is its own persistent object, so a change
 * rewrites only the pieces it touches.
 *
 * Stored states (the property names are part of the stored format; keep them):
 *
 *   class name          state
 *   ------------------  ---------------------------------------------------------------
 *   amber.BTreeBucket   { keys: K[], values: V[], next: BTreeBucket | null }
 *                       keys strictly ascending; values[i] belongs to keys[i]; `next` is
 *                       the following bucket in key order (the leaf chain), null for the last
 *   amber.BTreeNode     { keys: K[], children: Array<BTreeNode | BTreeBucket> }
 *                       keys.length === children.length - 1; keys[i] separates
 *                       children[i] (all keys < keys[i]) from children[i + 1] (all keys >=)
 *
 * In memory the state lives in one symbol-keyed slot per piece (`BUCKET`, `NODE`), a plain
 * object the tree code reads and changes directly; the code calls `changedSlot(piece)`
 * before each change. As with every persistent class, no `#private` members: a ghost is
 * made without running the constructor.
 */
import { registerClass } from "../persistent/class-registry.ts";
import { Persistent, isPersistent } from "../persistent/persistent.ts";
import { CLEAR_STATE, FAN_OUT, GET_STATE, HOLDS_CONTAINERS, SET_STATE, setSlot } from "../persistent/slots.ts";
import { compareKeys } from "./key-compare.ts";

/** @internal The slot holding a bucket's state. */
export const BUCKET: unique symbol = Symbol("amber.btree.bucket");
/** @internal The slot holding a node's state. */
export const NODE: unique symbol = Symbol("amber.btree.node");

/** @internal */
export interface BucketData<K, V> {
  keys: K[];
  values: V[];
  next: BTreeBucket<K, V> | null;
}

/** @internal */
export interface NodeData<K, V> {
  keys: K[];
  children: Array<BTreePiece<K, V>>;
}

/** @internal A child of an interior node. */
export type BTreePiece<K, V> = BTreeNode<K, V> | BTreeBucket<K, V>;

/** @internal A leaf of a BTree: sorted keys, their values, and the next leaf. */
export class BTreeBucket<K = unknown, V = unknown> extends Persistent {
  declare [BUCKET]: BucketData<K, V>;

  constructor(keys: K[] = [], values: V[] = [], next: BTreeBucket<K, V> | null = null) {
    super();
    setSlot(this, BUCKET, { keys, values, next });
  }

  /** @internal */
  [GET_STATE](): Record<string, unknown> {
    const d = this[BUCKET];
    return { keys: d.keys, values: d.values, next: d.next };
  }
  /** @internal */
  [SET_STATE](state: Record<string, unknown>): void {
    const data: BucketData<K, V> = {
      keys: Array.isArray(state.keys) ? (state.keys as K[]) : [],
      values: Array.isArray(state.values) ? (state.values as V[]) : [],
      next: state.next instanceof BTreeBucket ? (state.next as BTreeBucket<K, V>) : null,
    };
    setSlot(this, BUCKET, data);
  }
  /** @internal */
  [CLEAR_STATE](): void {
    delete (this as Partial<this>)[BUCKET];
  }
  /** @internal The values (keys are handed out as copies) */
  [HOLDS_CONTAINERS](): boolean {
    for (const v of this[BUCKET].values) if (typeof v === "object" && v !== null && !isPersistent(v)) return true;
    return false;
  }
}

/** @internal An interior node of a BTree: separators and children. */
export class BTreeNode<K = unknown, V = unknown> extends Persistent {
  declare [NODE]: NodeData<K, V>;

  constructor(keys: K[] = [], children: Array<BTreePiece<K, V>> = []) {
    super();
    setSlot(this, NODE, { keys, children });
  }

  /** @internal */
  [GET_STATE](): Record<string, unknown> {
    const d = this[NODE];
    return { keys: d.keys, children: d.children };
  }
  /** @internal */
  [SET_STATE](state: Record<string, unknown>): void {
    const data: NodeData<K, V> = {
      keys: Array.isArray(state.keys) ? (state.keys as K[]) : [],
      children: Array.isArray(state.children) ? (state.children as Array<BTreePiece<K, V>>) : [],
    };
    setSlot(this, NODE, data);
  }
  /** @internal */
  [CLEAR_STATE](): void {
    delete (this as Partial<this>)[NODE];
  }
  /** @internal */
  [HOLDS_CONTAINERS](): boolean {
    return false;
  }
}

// Plans walk through a tree's pieces to its values.
Object.defineProperty(BTreeBucket, FAN_OUT, { value: 2 });
Object.defineProperty(BTreeNode, FAN_OUT, { value: 2 });
registerClass(BTreeBucket, "amber.BTreeBucket");
registerClass(BTreeNode, "amber.BTreeNode");

/**
 * A tag on both class prototypes telling buckets from nodes. Reading it never loads a ghost,
 * and it is found on the first prototype, whereas `instanceof` on a node walks the chain
 * down to the Proxy at its end (see persistent.ts), several times slower on the hot path.
 */
const IS_BUCKET: unique symbol = Symbol("amber.btree.isBucket");
Object.defineProperty(BTreeBucket.prototype, IS_BUCKET, { value: true });
Object.defineProperty(BTreeNode.prototype, IS_BUCKET, { value: false });

/** @internal Is this piece a bucket (else a node)? */
export function isBucket<K, V>(p: BTreePiece<K, V>): p is BTreeBucket<K, V> {
  return (p as unknown as Record<typeof IS_BUCKET, boolean>)[IS_BUCKET];
}

// ---------------------------------------------------------------------------------------
// Navigation among the pieces (@internal, for btree.ts and btree-check.ts). Every function
// assumes the invariants listed in btree.ts; a ghost piece loads when its slot is read.

/** The index of `key` in the sorted `keys`, or `-(insertion point) - 1` when absent. */
export function search(keys: readonly unknown[], key: unknown): number {
  let lo = 0;
  let hi = keys.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const c = compareKeys(keys[mid], key);
    if (c < 0) lo = mid + 1;
    else if (c > 0) hi = mid - 1;
    else return mid;
  }
  return -lo - 1;
}

/** The child of a node whose range holds `key`: the number of separators <= key. */
export function childIndex(separators: readonly unknown[], key: unknown): number {
  let lo = 0;
  let hi = separators.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareKeys(separators[mid], key) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export function findBucket<K, V>(root: BTreePiece<K, V>, key: unknown): BTreeBucket<K, V> {
  let p = root;
  while (!isBucket(p)) {
    const d = p[NODE];
    p = d.children[childIndex(d.keys, key)]!;
  }
  return p;
}

export function firstBucket<K, V>(root: BTreePiece<K, V>): BTreeBucket<K, V> {
  let p = root;
  while (!isBucket(p)) p = p[NODE].children[0]!;
  return p;
}

export function lastBucket<K, V>(root: BTreePiece<K, V>): BTreeBucket<K, V> {
  let p = root;
  while (!isBucket(p)) {
    const c = p[NODE].children;
    p = c[c.length - 1]!;
  }
  return p;
}

/** @internal The way from the root to the bucket whose range holds a key. */
export interface Path<K, V> {
  /** The nodes passed, root first. */
  nodes: Array<BTreeNode<K, V>>;
  /** `indexes[i]`: the child of `nodes[i]` taken. */
  indexes: number[];
  bucket: BTreeBucket<K, V>;
}

export function descend<K, V>(root: BTreePiece<K, V>, key: unknown): Path<K, V> {
  const nodes: Array<BTreeNode<K, V>> = [];
  const indexes: number[] = [];
  let p = root;
  while (!isBucket(p)) {
    const d = p[NODE];
    const i = childIndex(d.keys, key);
    nodes.push(p);
    indexes.push(i);
    p = d.children[i]!;
  }
  return { nodes, indexes, bucket: p };
}

/** The bucket before `path.bucket` in key order, or null for the first bucket. */
export function previousBucket<K, V>(path: Path<K, V>): BTreeBucket<K, V> | null {
  for (let level = path.nodes.length - 1; level >= 0; level--) {
    const i = path.indexes[level]!;
    if (i > 0) return lastBucket(path.nodes[level]![NODE].children[i - 1]!);
  }
  return null;
}

/** The first position at or after `key` (after it when not inclusive); may be past the end. */
export function seekAfter<K, V>(root: BTreePiece<K, V>, key: unknown, inclusive: boolean): [BTreeBucket<K, V>, number] {
  const bucket = findBucket(root, key);
  const s = search(bucket[BUCKET].keys, key);
  return [bucket, s >= 0 ? (inclusive ? s : s + 1) : -s - 1];
}

/** The last position at or before `key` (before it when not inclusive), or [null, -1]. */
export function seekBefore<K, V>(root: BTreePiece<K, V>, key: unknown, inclusive: boolean): [BTreeBucket<K, V> | null, number] {
  const path = descend(root, key);
  const s = search(path.bucket[BUCKET].keys, key);
  const i = s >= 0 ? (inclusive ? s : s - 1) : -s - 2;
  if (i >= 0) return [path.bucket, i];
  // Every key of earlier buckets is below this bucket's lower bound, hence below `key`.
  const prev = previousBucket(path);
  return prev === null ? [null, -1] : [prev, prev[BUCKET].keys.length - 1];
}
