/**
 * BTree options: what a tree's constructor and `range` accept, checked with errors that
 * name what they got, and the node sizes a stored tree must have.
 */
import type { Bound } from "./btree-iterate.ts";
import { checkKey } from "./key-compare.ts";

export interface BTreeOptions {
  /** Most keys in one bucket (an integer >= 4; default 64). */
  bucketSize?: number;
  /** Most children of one interior node (an integer >= 4; default 64). */
  nodeSize?: number;
}

/** Bounds and direction of `BTree.range`: at most one lower and one upper bound. */
export interface BTreeRangeOptions<K> {
  gte?: K;
  gt?: K;
  lte?: K;
  lt?: K;
  /** Descending order (default ascending). */
  reverse?: boolean;
  /** Return at most this many entries (a non-negative integer; default all). */
  limit?: number;
}

export const DEFAULT_SIZE = 64;
export const MIN_SIZE = 4;

export function validSize(n: unknown): n is number {
  return typeof n === "number" && Number.isInteger(n) && n >= MIN_SIZE;
}

export function sizeOption(n: unknown, name: string): number {
  if (n === undefined) return DEFAULT_SIZE;
  if (!validSize(n)) {
    const got = typeof n === "number" ? String(n) : `${typeof n} ${JSON.stringify(n) ?? String(n)}`;
    throw new RangeError(`BTree ${name} must be an integer >= ${MIN_SIZE}, got ${got}`);
  }
  return n;
}

export function rangeBounds<K>(options: BTreeRangeOptions<K>): { lo?: Bound; hi?: Bound; reverse: boolean; limit: number } {
  const { gte, gt, lte, lt, reverse = false, limit = Infinity } = options ?? {};
  if (gte !== undefined && gt !== undefined) throw new TypeError("BTree.range: give gte or gt, not both");
  if (lte !== undefined && lt !== undefined) throw new TypeError("BTree.range: give lte or lt, not both");
  if (typeof limit !== "number" || !(limit >= 0) || (limit !== Infinity && !Number.isInteger(limit))) {
    throw new RangeError(`BTree.range: limit must be a non-negative integer, got ${String(limit)}`);
  }
  const bound = (key: K | undefined, inclusive: boolean, name: string): Bound | undefined => {
    if (key === undefined) return undefined;
    checkKey(key, `range bound ${name}`);
    return { key, inclusive };
  };
  return {
    lo: gte !== undefined ? bound(gte, true, "gte") : bound(gt, false, "gt"),
    hi: lte !== undefined ? bound(lte, true, "lte") : bound(lt, false, "lt"),
    reverse: reverse === true,
    limit,
  };
}
