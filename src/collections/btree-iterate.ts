/**
 * Iterating a BTree: whole-tree scans (an iterator class, the hot path) and bounded or
 * reversed ranges (generators). Every scan survives changes between its steps by seeking
 * again past the last key it returned, in the tree as it is then (see `scan`).
 */
import {
  BUCKET,
  firstBucket,
  lastBucket,
  seekAfter,
  seekBefore,
  type BTreeBucket,
  type BTreePiece,
  type BucketData,
} from "./btree-bucket.ts";
import { compareKeys, ownKey, type BTreeKey } from "./key-compare.ts";
import { handedSlot } from "../persistent/slots.ts";

/** One end of a range. */
export interface Bound {
  key: unknown;
  inclusive: boolean;
}

/** What a scan yields: keys, values, or [key, value] entries. */
export const KEYS = 0;
export const VALUES = 1;
export const ENTRIES = 2;

/**
 * Iterate a tree whose current root `rootOf()` returns, in key order (or reversed), within
 * the bounds, at most `limit` items. Buckets load as the iteration reaches them (nothing
 * loads before the first step). A scan sees the tree as it is at each step: before each
 * step it checks that the root and the bucket it is reading are unchanged, and otherwise
 * seeks again past the last key it returned, in the tree as it is now. So it never yields
 * an entry deleted before it got there, and it ends after `clear()` (the root is replaced
 * or emptied), also when the tree was reloaded with another state (an abort after another
 * transaction cleared it): a bucket that has left the tree is never read on.
 *
 * Keys are handed out as copies (`ownKey`): changing a yielded Date or array cannot
 * change the key stored in the bucket. The scan keeps the stored key as its place.
 */
export function scan<K extends BTreeKey, V>(
  rootOf: () => BTreePiece<K, V>,
  lo: Bound | undefined,
  hi: Bound | undefined,
  reverse: boolean,
  limit: number,
  kind: number,
): IterableIterator<any> {
  if (!reverse && lo === undefined && hi === undefined && limit === Infinity) return new FullScan(rootOf, kind);
  return reverse ? backward(rootOf, lo, hi, limit, kind) : forward(rootOf, lo, hi, limit, kind);
}

function item<K, V>(kind: number, k: K, v: V, bucket: BTreeBucket<K, V> | null): unknown {
  // A nested value handed out: the bucket is compared at commit (changes in place count).
  if (bucket !== null && kind !== KEYS && typeof v === "object" && v !== null) handedSlot(bucket);
  if (kind === VALUES) return v;
  // A Date or array key is handed out as a copy; the test is inline for the common
  // primitive keys (calling ownKey for each of them costs a third of a keys() scan).
  const key = typeof k === "object" ? ownKey(k) : k;
  return kind === KEYS ? key : [key, v];
}

/**
 * A whole-tree scan in key order (keys, values or entries): the hot path of iteration,
 * written as an iterator class because it is several times cheaper per item than a
 * generator. Like the generators it sees the tree as it is at each step: when the root
 * was replaced, or the bucket it is in changed, it seeks past the last key it returned.
 */
class FullScan<K extends BTreeKey, V> implements IterableIterator<unknown> {
  #rootOf: () => BTreePiece<K, V>;
  #kind: number;
  /** The root when the scan last found its place; null before the first step. */
  #root: BTreePiece<K, V> | null = null;
  /** The bucket being read; null before the first step and once the scan has ended. */
  #bucket: BTreeBucket<K, V> | null = null;
  /** The bucket's state when the scan last returned a key from it. */
  #data: BucketData<K, V> | null = null;
  /** Our place: the index after the last key returned (>= 1 once a key was returned). */
  #i = 0;
  /** The stored key last returned (not the copy handed out). */
  #last: K | undefined = undefined;
  #started = false;

  constructor(rootOf: () => BTreePiece<K, V>, kind: number) {
    this.#rootOf = rootOf;
    this.#kind = kind;
  }

  next(): IteratorResult<unknown> {
    const bucket = this.#bucket;
    if (bucket === null) {
      if (this.#started) return { value: undefined, done: true };
      this.#started = true;
      this.#root = this.#rootOf();
      this.#bucket = firstBucket(this.#root);
    } else {
      // Resuming: the tree may have changed since the last step. Go on in this bucket only
      // if the root is the same (clear(), a root split or collapse, or the tree reloaded
      // replace it, and the bucket may have left the tree), the bucket's state is the same
      // object (not reloaded), and the key before our place is still the one returned last
      // (no key inserted or removed before it). Otherwise find our place again.
      const d = bucket[BUCKET];
      const i = this.#i;
      const root = this.#rootOf();
      if (root === this.#root && d === this.#data && d.keys[i - 1] === this.#last) {
        if (i < d.keys.length) {
          // The hot path: the next key of the same bucket.
          const k = d.keys[i]!;
          this.#i = i + 1;
          this.#last = k;
          return { value: item(this.#kind, k, d.values[i], null), done: false };
        }
      } else {
        this.#seek(root);
      }
    }
    for (;;) {
      const b = this.#bucket;
      if (b === null) return { value: undefined, done: true };
      const d = b[BUCKET];
      const i = this.#i;
      if (i < d.keys.length) {
        const k = d.keys[i]!;
        this.#data = d;
        this.#i = i + 1;
        this.#last = k;
        // Entering a bucket: its values are handed out (once per bucket and scan).
        if (this.#kind !== KEYS) handedSlot(b);
        return { value: item(this.#kind, k, d.values[i], null), done: false };
      }
      this.#bucket = d.next;
      this.#i = 0;
    }
  }

  /** Go to the place just after the last key returned, in the tree under `root`. */
  #seek(root: BTreePiece<K, V>): void {
    this.#root = root;
    if (this.#last === undefined) {
      this.#bucket = firstBucket(root);
      this.#i = 0;
    } else {
      [this.#bucket, this.#i] = seekAfter(root, this.#last, false);
    }
  }

  [Symbol.iterator](): this {
    return this;
  }
}

function* forward<K extends BTreeKey, V>(
  rootOf: () => BTreePiece<K, V>,
  lo: Bound | undefined,
  hi: Bound | undefined,
  limit: number,
  kind: number,
): Generator<unknown, void, undefined> {
  if (limit <= 0) return;
  let root = rootOf();
  let [bucket, i]: [BTreeBucket<K, V> | null, number] =
    lo === undefined ? [firstBucket(root), 0] : seekAfter(root, lo.key, lo.inclusive);
  let n = 0;
  while (bucket !== null) {
    const d: BucketData<K, V> = bucket[BUCKET];
    if (i >= d.keys.length) {
      bucket = d.next;
      i = 0;
      continue;
    }
    const k = d.keys[i]!;
    if (hi !== undefined) {
      const c = compareKeys(k, hi.key);
      if (c > 0 || (c === 0 && !hi.inclusive)) return;
    }
    yield item(kind, k, d.values[i], bucket);
    if (++n >= limit) return;
    // The tree may have changed while suspended: unless the root, the bucket's state and
    // our place in it are as they were, go on after `k` in the tree as it is now.
    const now = rootOf();
    if (now === root && bucket[BUCKET] === d && d.keys[i] === k) {
      i++;
    } else {
      root = now;
      [bucket, i] = seekAfter(root, k, false);
    }
  }
}

function* backward<K extends BTreeKey, V>(
  rootOf: () => BTreePiece<K, V>,
  lo: Bound | undefined,
  hi: Bound | undefined,
  limit: number,
  kind: number,
): Generator<unknown, void, undefined> {
  if (limit <= 0) return;
  let root = rootOf();
  let bucket: BTreeBucket<K, V> | null;
  let i: number;
  if (hi === undefined) {
    bucket = lastBucket(root);
    i = bucket[BUCKET].keys.length - 1;
  } else {
    [bucket, i] = seekBefore(root, hi.key, hi.inclusive);
  }
  let n = 0;
  while (bucket !== null && i >= 0) {
    const d: BucketData<K, V> = bucket[BUCKET];
    const k = d.keys[i]!;
    if (lo !== undefined) {
      const c = compareKeys(k, lo.key);
      if (c < 0 || (c === 0 && !lo.inclusive)) return;
    }
    yield item(kind, k, d.values[i], bucket);
    if (++n >= limit) return;
    // Step back within the bucket if the root, the bucket's state and our place in it are
    // unchanged; otherwise (or at the bucket's start) seek in the tree as it is now.
    const now = rootOf();
    if (i > 0 && now === root && bucket[BUCKET] === d && d.keys[i] === k) {
      i--;
    } else {
      root = now;
      [bucket, i] = seekBefore(root, k, false);
    }
  }
}
