/**
 * Iterating a BTree: whole-tree scans (an iterator class, the hot path) and bounded or
 * reversed ranges (generators). Every scan survives changes between its steps by seeking
 * again past the last key it returned.
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
import { compareKeys, type BTreeKey } from "./key-compare.ts";

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
 * the bounds, at most `limit` items. Buckets load as the iteration reaches them; if the tree
 * changes between steps, the scan seeks again past the last key it returned.
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

function item<K, V>(kind: number, k: K, v: V): unknown {
  return kind === VALUES ? v : kind === KEYS ? k : [k, v];
}

/**
 * A whole-tree scan in key order (keys, values or entries): the hot path of iteration,
 * written as an iterator class because it is several times cheaper per item than a
 * generator. Like the generators it survives changes between steps: when the bucket it
 * is in changed, it seeks past the last key it returned.
 */
class FullScan<K extends BTreeKey, V> implements IterableIterator<unknown> {
  #rootOf: () => BTreePiece<K, V>;
  #kind: number;
  #bucket: BTreeBucket<K, V> | null;
  #data: BucketData<K, V> | null = null;
  #i = 0;
  #last: K | undefined = undefined;

  constructor(rootOf: () => BTreePiece<K, V>, kind: number) {
    this.#rootOf = rootOf;
    this.#kind = kind;
    this.#bucket = firstBucket(rootOf());
  }

  next(): IteratorResult<unknown> {
    for (;;) {
      const bucket = this.#bucket;
      if (bucket === null) return { value: undefined, done: true };
      const d = bucket[BUCKET];
      if (d !== this.#data) {
        if (this.#data !== null) {
          // The bucket's state was replaced (reloaded or changed): find our place again.
          [this.#bucket, this.#i] = seekAfter(this.#rootOf(), this.#last as K, false);
          this.#data = null;
          continue;
        }
        this.#data = d;
      }
      const i = this.#i;
      if (i > 0 && d.keys[i - 1] !== this.#last) {
        // Keys were inserted or removed before our place (or the bucket split): seek again.
        [this.#bucket, this.#i] = seekAfter(this.#rootOf(), this.#last as K, false);
        this.#data = null;
        continue;
      }
      if (i < d.keys.length) {
        const k = d.keys[i]!;
        this.#i = i + 1;
        this.#last = k;
        return { value: item(this.#kind, k, d.values[i]), done: false };
      }
      this.#bucket = d.next;
      this.#data = null;
      this.#i = 0;
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
  let [bucket, i]: [BTreeBucket<K, V> | null, number] =
    lo === undefined ? [firstBucket(rootOf()), 0] : seekAfter(rootOf(), lo.key, lo.inclusive);
  let n = 0;
  while (bucket !== null) {
    const d: BucketData<K, V> = bucket[BUCKET];
    const keys = d.keys;
    const values = d.values;
    let moved = false;
    while (i < keys.length) {
      const k = keys[i]!;
      if (hi !== undefined) {
        const c = compareKeys(k, hi.key);
        if (c > 0 || (c === 0 && !hi.inclusive)) return;
      }
      yield item(kind, k, values[i]);
      if (++n >= limit) return;
      // The tree may have changed while suspended: go on after `k`.
      if (bucket[BUCKET] === d && keys[i] === k) {
        i++;
      } else {
        [bucket, i] = seekAfter(rootOf(), k, false);
        moved = true;
        break;
      }
    }
    if (!moved) {
      bucket = d.next;
      i = 0;
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
  let bucket: BTreeBucket<K, V> | null;
  let i: number;
  if (hi === undefined) {
    bucket = lastBucket(rootOf());
    i = bucket[BUCKET].keys.length - 1;
  } else {
    [bucket, i] = seekBefore(rootOf(), hi.key, hi.inclusive);
  }
  let n = 0;
  while (bucket !== null && i >= 0) {
    const d: BucketData<K, V> = bucket[BUCKET];
    const k = d.keys[i]!;
    if (lo !== undefined) {
      const c = compareKeys(k, lo.key);
      if (c < 0 || (c === 0 && !lo.inclusive)) return;
    }
    yield item(kind, k, d.values[i]);
    if (++n >= limit) return;
    // Step back within the bucket if it is unchanged; otherwise (or at its start) seek.
    if (i > 0 && bucket[BUCKET].keys[i] === k) i--;
    else [bucket, i] = seekBefore(rootOf(), k, false);
  }
}
