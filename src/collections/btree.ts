/**
 * BTree: a sorted map for large collections, kept as a B+ tree of persistent pieces so that
 * a change rewrites only the pieces it touches (usually one bucket).
 *
 * Stored states (the property names are part of the stored format; keep them):
 *
 *   class name          state
 *   ------------------  ---------------------------------------------------------------
 *   amber.BTree         { root: BTreeNode | BTreeBucket, bucketSize: number, nodeSize: number }
 *   amber.BTreeBucket   { keys: K[], values: V[], next: BTreeBucket | null }   (btree-bucket.ts)
 *   amber.BTreeNode     { keys: K[], children: Array<BTreeNode | BTreeBucket> } (btree-bucket.ts)
 *
 * Invariants (`check()` verifies every one):
 *
 *   1. In each bucket, keys are strictly ascending (key-compare.ts gives the order) and
 *      `values.length === keys.length`; a bucket holds at most `bucketSize` keys.
 *   2. In each node, `keys.length === children.length - 1`, separators are strictly
 *      ascending, and there are at most `nodeSize` children and at least one.
 *   3. Separators bound their children: every key under `children[i]` is >= `keys[i - 1]`
 *      and < `keys[i]` (and within the node's own bounds). A separator is the smallest key
 *      of the right-hand child when a split creates it; a later delete of that key does not
 *      update it (that would rewrite a node for no gain, and would make the bounds depend
 *      on more objects than the bucket changed), so separator i is <= the smallest key of
 *      child i + 1.
 *   4. All buckets are at the same depth.
 *   5. No bucket is empty, except a root bucket (the empty tree); a root node has at least
 *      two children (a root node left with one child is replaced by that child).
 *   6. The leaf chain (`next`, starting at the leftmost bucket) visits exactly the buckets of
 *      the tree, in key order, and the last bucket's `next` is null.
 *
 * What each change writes (only objects that really change are marked changed):
 *
 *   - set into a bucket with room, set of an existing key, delete leaving the bucket
 *     non-empty: the bucket alone. The tree object keeps no size counter for this reason.
 *   - a bucket split: the bucket, the new bucket, the parent node (and so on up while nodes
 *     split; a root split also writes the tree object).
 *   - deleting the last key of a bucket: the bucket (written empty), the previous bucket
 *     (its `next`), the parent node, and the tree object if the root collapses. A piece
 *     that is unlinked from the tree is always written (emptied): a concurrent transaction
 *     that changes it then conflicts, instead of committing into a piece nobody reaches.
 *   - clear(): the root bucket, or the tree object when the root is a node (the old pieces
 *     are left as garbage: a concurrent change to them is equivalent to one that committed
 *     just before the clear).
 *
 * Costs: get/has/set/delete are O(log n) piece loads; `size` walks the leaf chain, so it is
 * O(buckets) and loads every bucket; iteration loads buckets one at a time as it goes.
 * Iterators tolerate changes to the tree between steps: each step continues after the last
 * key it returned in the tree as it is now (re-seeking from the root when the root or the
 * bucket it was reading changed), so a scan never yields an entry deleted before it got
 * there and ends after `clear()`, unless keys were added past its place since
 * (btree-iterate.ts).
 *
 * Keys handed out (iteration, `range`, `forEach`, `minKey`, `maxKey`) are copies of the
 * stored keys for Dates and arrays, so changing one cannot break the order of a bucket.
 *
 * Modules: btree.ts (the tree object, changes, iteration), btree-bucket.ts (the piece
 * classes and navigation among them), btree-check.ts (`check()`), key-compare.ts (keys).
 */
import { registerClass } from "../persistent/class-registry.ts";
import { GHOST, Persistent, isPersistent, metaOf } from "../persistent/persistent.ts";
import { CLEAR_STATE, FAN_OUT, ITEMS, GET_STATE, HOLDS_CONTAINERS, SET_STATE, changedSlot, handedSlot, setSlot } from "../persistent/slots.ts";
import { JSON_FORM, NOT_LOADED, toJSONValue } from "../persistent/json.ts";
import {
  BTreeBucket,
  BTreeNode,
  BUCKET,
  NODE,
  descend,
  findBucket,
  firstBucket,
  isBucket,
  lastBucket,
  previousBucket,
  search,
  seekAfter,
  seekBefore,
  type BTreePiece,
  type BucketData,
  type NodeData,
  type Path,
} from "./btree-bucket.ts";
import { checkTree } from "./btree-check.ts";
import { ENTRIES, KEYS, VALUES, scan } from "./btree-iterate.ts";
import { DEFAULT_SIZE, MIN_SIZE, rangeBounds, sizeOption, validSize, type BTreeOptions, type BTreeRangeOptions } from "./btree-options.ts";
import { checkKey, ownKey, type BTreeKey } from "./key-compare.ts";
import { ABSENT, CHANGED_IN_PLACE, logChange, logClear } from "./btree-merge.ts";

export type { BTreeKey, BTreeOptions, BTreeRangeOptions };

const TREE: unique symbol = Symbol("amber.btree");

interface TreeData<K, V> {
  root: BTreePiece<K, V>;
  bucketSize: number;
  nodeSize: number;
}

export class BTree<K extends BTreeKey = BTreeKey, V = unknown> extends Persistent implements Iterable<[K, V]> {
  declare [TREE]: TreeData<K, V>;

  constructor(options: BTreeOptions = {}) {
    super();
    const bucketSize = sizeOption(options?.bucketSize, "bucketSize");
    const nodeSize = sizeOption(options?.nodeSize, "nodeSize");
    setSlot(this, TREE, { root: new BTreeBucket<K, V>(), bucketSize, nodeSize });
  }

  /** Most keys in one bucket. */
  get bucketSize(): number {
    return this[TREE].bucketSize;
  }
  /** Most children of one interior node. */
  get nodeSize(): number {
    return this[TREE].nodeSize;
  }

  /** The number of entries. O(buckets): walks the leaf chain (loading every bucket). */
  get size(): number {
    let n = 0;
    for (let b: BTreeBucket<K, V> | null = firstBucket(this[TREE].root); b !== null; b = b[BUCKET].next) {
      n += b[BUCKET].keys.length;
    }
    return n;
  }

  get(key: K): V | undefined {
    checkKey(key);
    const bucket = findBucket(this[TREE].root, key);
    const d = bucket[BUCKET];
    const i = search(d.keys, key);
    if (i < 0) return undefined;
    const v = d.values[i];
    // A nested value handed out: the bucket is compared at commit (changes in place count).
    if (typeof v === "object" && v !== null) handedSlot(bucket);
    return v;
  }

  has(key: K): boolean {
    checkKey(key);
    return search(findBucket(this[TREE].root, key)[BUCKET].keys, key) >= 0;
  }

  set(key: K, value: V): this {
    checkKey(key);
    insert(this, key, value);
    return this;
  }

  delete(key: K): boolean {
    checkKey(key);
    return remove(this, key);
  }

  /** Remove every entry. */
  clear(): void {
    const root = this[TREE].root;
    if (!isBucket(root) || root[BUCKET].keys.length > 0) logClear(this);
    if (!isBucket(root)) {
      writeTree(this).root = new BTreeBucket<K, V>();
    } else if (root[BUCKET].keys.length > 0) {
      const d = writeBucket(root);
      d.keys.length = 0;
      d.values.length = 0;
    }
  }

  /**
   * The smallest key; with `bound`, the smallest key >= `bound` (as ZODB's BTrees'
   * `minKey(min)`). `undefined` when no key qualifies: the tree is empty, or every key is
   * below `bound` (ZODB raises ValueError in both cases; here both give `undefined`, as the
   * empty tree always did). `minKey(undefined)` is `minKey()`; any other bound that is not
   * a valid key throws a TypeError. The key returned is a copy (a Date or array key can be
   * changed without changing the tree).
   */
  minKey(bound?: K): K | undefined {
    const root = this[TREE].root;
    if (bound === undefined) return ownKey(firstBucket(root)[BUCKET].keys[0]);
    checkKey(bound, "minKey bound");
    let [bucket, i]: [BTreeBucket<K, V> | null, number] = seekAfter(root, bound, true);
    // Past the end of the bucket that would hold `bound`: the answer starts the next one.
    while (bucket !== null) {
      const d: BucketData<K, V> = bucket[BUCKET];
      if (i < d.keys.length) return ownKey(d.keys[i]);
      bucket = d.next;
      i = 0;
    }
    return undefined;
  }

  /**
   * The largest key; with `bound`, the largest key <= `bound` (as ZODB's BTrees'
   * `maxKey(max)`). `undefined` when no key qualifies: the tree is empty, or every key is
   * above `bound` (ZODB raises ValueError in both cases; here both give `undefined`, as the
   * empty tree always did). `maxKey(undefined)` is `maxKey()`; any other bound that is not
   * a valid key throws a TypeError. The key returned is a copy.
   */
  maxKey(bound?: K): K | undefined {
    const root = this[TREE].root;
    if (bound === undefined) {
      const keys = lastBucket(root)[BUCKET].keys;
      return ownKey(keys[keys.length - 1]);
    }
    checkKey(bound, "maxKey bound");
    const [bucket, i] = seekBefore(root, bound, true);
    return bucket === null ? undefined : ownKey(bucket[BUCKET].keys[i]);
  }

  /**
   * The entries within the bounds, ascending (or descending with `reverse`), at most
   * `limit` of them. Bounds are checked now; buckets load as the iteration reaches them.
   */
  range(options: BTreeRangeOptions<K> = {}): IterableIterator<[K, V]> {
    const { lo, hi, reverse, limit } = rangeBounds(options);
    return scan(rootGetter(this), lo, hi, reverse, limit, ENTRIES);
  }

  keys(): IterableIterator<K> {
    return scan(rootGetter(this), undefined, undefined, false, Infinity, KEYS);
  }
  values(): IterableIterator<V> {
    return scan(rootGetter(this), undefined, undefined, false, Infinity, VALUES);
  }
  entries(): IterableIterator<[K, V]> {
    return scan(rootGetter(this), undefined, undefined, false, Infinity, ENTRIES);
  }
  [Symbol.iterator](): IterableIterator<[K, V]> {
    return this.entries();
  }
  forEach(fn: (value: V, key: K, tree: this) => void): void {
    for (const [k, v] of this.entries()) fn(v, k, this);
  }
  /** The entries as `[key, value]` pairs, when every bucket is loaded (see json.ts). */
  toJSON(): Array<[K, V]> {
    return toJSONValue(this) as Array<[K, V]>;
  }
  /** @internal The entries, or NOT_LOADED when a piece of the tree is a ghost (no I/O). */
  [JSON_FORM](): unknown {
    const loaded = (p: Persistent): boolean => {
      const m = metaOf(p);
      return m.state !== GHOST || m.record !== null;
    };
    const pieces: Array<BTreePiece<K, V>> = [this[TREE].root];
    while (pieces.length > 0) {
      const p = pieces.pop()!;
      if (!loaded(p)) return NOT_LOADED;
      if (!isBucket(p)) pieces.push(...p[NODE].children);
    }
    return [...this.entries()];
  }

  /**
   * Verify every invariant listed at the top of btree.ts (loading the whole tree); throws an
   * Error describing the first violation found.
   */
  check(): void {
    const t = this[TREE];
    for (const name of ["bucketSize", "nodeSize"] as const) {
      if (!validSize(t[name])) throw new Error(`BTree.check: ${name} ${String(t[name])} is not an integer >= ${MIN_SIZE}`);
    }
    checkTree(t.root, t.bucketSize, t.nodeSize);
  }

  /** @internal */
  [GET_STATE](): Record<string, unknown> {
    const t = this[TREE];
    return { root: t.root, bucketSize: t.bucketSize, nodeSize: t.nodeSize };
  }
  /** @internal */
  [SET_STATE](state: Record<string, unknown>): void {
    const root = state.root;
    const data: TreeData<K, V> = {
      root: root instanceof BTreeBucket || root instanceof BTreeNode ? (root as BTreePiece<K, V>) : new BTreeBucket<K, V>(),
      bucketSize: validSize(state.bucketSize) ? state.bucketSize : DEFAULT_SIZE,
      nodeSize: validSize(state.nodeSize) ? state.nodeSize : DEFAULT_SIZE,
    };
    setSlot(this, TREE, data);
  }
  /** @internal */
  [CLEAR_STATE](): void {
    delete (this as Partial<this>)[TREE];
  }
  /** @internal */
  [HOLDS_CONTAINERS](): boolean {
    return false;
  }
}

Object.defineProperty(BTree, FAN_OUT, { value: 1 }); // plans step through to the items
Object.defineProperty(BTree.prototype, ITEMS, {
  value: function items(this: BTree): Iterable<unknown> {
    return this.values();
  },
});
registerClass(BTree, "amber.BTree");

// ---------------------------------------------------------------------------------------
// Changing.

/*
 * Changing a piece: read its slot (loading a ghost), mark it changed, then change that
 * state, with no other piece loaded in between. Loading a piece can evict unchanged
 * objects (including the tree object and pieces read earlier) back to ghosts, so a state
 * read before other loads may no longer be the object's; changed objects are never
 * evicted, so the state returned by the helpers below stays the object's until commit.
 */

function writeTree<K extends BTreeKey, V>(tree: BTree<K, V>): TreeData<K, V> {
  const t = tree[TREE];
  changedSlot(tree);
  return t;
}

function writeBucket<K, V>(bucket: BTreeBucket<K, V>): BucketData<K, V> {
  const d = bucket[BUCKET];
  changedSlot(bucket);
  return d;
}

function writeNode<K, V>(node: BTreeNode<K, V>): NodeData<K, V> {
  const d = node[NODE];
  changedSlot(node);
  return d;
}

function insert<K extends BTreeKey, V>(tree: BTree<K, V>, key: K, value: V): void {
  const { root, bucketSize } = tree[TREE];
  const path = descend(root, key);
  const bucket = path.bucket;
  const found = bucket[BUCKET];
  const i = search(found.keys, key);
  if (i >= 0) {
    const old = found.values[i];
    if (Object.is(old, value)) {
      // The same primitive or persistent object: nothing changes. The same container,
      // set again after changing it in place, is written (buckets are not re-encoded at
      // commit to look for in-place changes); its value before is unknown.
      if (typeof value !== "object" || value === null || isPersistent(value)) return;
      logChange(tree, ownKey(key), CHANGED_IN_PLACE);
    } else logChange(tree, ownKey(key), old);
    writeBucket(bucket).values[i] = value;
    return;
  }
  logChange(tree, ownKey(key), ABSENT);
  const d = writeBucket(bucket);
  const at = -i - 1;
  d.keys.splice(at, 0, ownKey(key));
  d.values.splice(at, 0, value);
  if (d.keys.length <= bucketSize) return;
  // Split the bucket in half; the new right half follows it in the leaf chain.
  const mid = d.keys.length >>> 1;
  const right = new BTreeBucket<K, V>(d.keys.splice(mid), d.values.splice(mid), d.next);
  d.next = right;
  addChild(tree, path, right[BUCKET].keys[0]!, right);
}

/**
 * Insert `right` (with separator `sep`) just after the child that `path` passed through
 * at the deepest level, splitting nodes that grow past `nodeSize` and, at the top, growing
 * a new root.
 */
function addChild<K extends BTreeKey, V>(tree: BTree<K, V>, path: Path<K, V>, sep: K, right: BTreePiece<K, V>): void {
  const { nodeSize } = tree[TREE];
  let left: BTreePiece<K, V> = path.bucket;
  for (let level = path.nodes.length - 1; level >= 0; level--) {
    const node = path.nodes[level]!;
    const d = writeNode(node);
    const i = path.indexes[level]!;
    d.keys.splice(i, 0, sep);
    d.children.splice(i + 1, 0, right);
    if (d.children.length <= nodeSize) return;
    // children c0..c(n-1), separators k0..k(n-2): the left keeps c0..c(mid-1) and
    // k0..k(mid-2), k(mid-1) moves up, the right takes c(mid).. and k(mid)..
    const mid = d.children.length >>> 1;
    const children = d.children.splice(mid);
    const keys = d.keys.splice(mid);
    sep = d.keys.pop()!;
    left = node;
    right = new BTreeNode<K, V>(keys, children);
  }
  writeTree(tree).root = new BTreeNode<K, V>([sep], [left, right]);
}

function remove<K extends BTreeKey, V>(tree: BTree<K, V>, key: K): boolean {
  const path = descend(tree[TREE].root, key);
  const bucket = path.bucket;
  const i = search(bucket[BUCKET].keys, key);
  if (i < 0) return false;
  logChange(tree, ownKey(key), bucket[BUCKET].values[i]);
  const d = writeBucket(bucket);
  if (d.keys.length > 1 || path.nodes.length === 0) {
    d.keys.splice(i, 1);
    d.values.splice(i, 1);
    return true;
  }
  // The bucket's last key: unlink the bucket from the leaf chain and from its parent, and
  // write it empty (see "What each change writes").
  const prev = previousBucket(path);
  if (prev !== null) writeBucket(prev).next = d.next;
  d.keys.length = 0;
  d.values.length = 0;
  d.next = null;
  for (let level = path.nodes.length - 1; level >= 0; level--) {
    const nd = writeNode(path.nodes[level]!);
    const ci = path.indexes[level]!;
    nd.children.splice(ci, 1);
    nd.keys.splice(ci === 0 ? 0 : ci - 1, 1);
    // A node left without children (it had one) is unlinked from its own parent in turn.
    if (nd.children.length > 0) break;
  }
  collapseRoot(tree);
  return true;
}

/** Replace a root node that has a single child by that child (repeatedly). */
function collapseRoot<K extends BTreeKey, V>(tree: BTree<K, V>): void {
  const old = tree[TREE].root;
  let root: BTreePiece<K, V> = old;
  while (!isBucket(root) && root[NODE].children.length <= 1) {
    // The node leaves the tree: write it empty.
    const d = writeNode(root);
    const only = d.children[0];
    d.children.length = 0;
    d.keys.length = 0;
    root = only ?? new BTreeBucket<K, V>();
  }
  if (root !== old) writeTree(tree).root = root;
}

/** The current root of `tree`, read afresh each time (the tree object may be reloaded). */
function rootGetter<K extends BTreeKey, V>(tree: BTree<K, V>): () => BTreePiece<K, V> {
  return () => tree[TREE].root;
}

/** @internal The value of `key` in `tree`, or ABSENT (for merging, btree-merge.ts). */
export function lookupEntry(tree: BTree, key: unknown): unknown {
  const d = findBucket(tree[TREE].root, key as BTreeKey)[BUCKET];
  const i = search(d.keys, key as BTreeKey);
  return i >= 0 ? d.values[i] : ABSENT;
}

/** @internal The bucket that holds, or would hold, `key` in `tree` (for merging). */
export function bucketOf(tree: BTree, key: unknown): BTreeBucket {
  return findBucket(tree[TREE].root, key as BTreeKey) as BTreeBucket;
}
