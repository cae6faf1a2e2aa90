/**
 * BTree.check(): verify every invariant listed at the top of btree.ts by walking the whole
 * tree (loading every piece), and throw an Error describing the first violation found.
 */
import { BTreeBucket, BTreeNode, BUCKET, NODE, type BTreePiece } from "./btree-bucket.ts";
import { checkKey, compareKeys } from "./key-compare.ts";

/** @internal */
export function checkTree<K, V>(root: BTreePiece<K, V>, bucketSize: number, nodeSize: number): void {
  const t = { root, bucketSize, nodeSize };
  const fail = (message: string): never => {
    throw new Error(`BTree.check: ${message}`);
  };
  const buckets: Array<BTreeBucket<K, V>> = [];
  const seen = new Set<object>();
  let leafDepth = -1;

  const checkKeys = (keys: readonly unknown[], lo: unknown, hi: unknown, name: string): void => {
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i];
      try {
        checkKey(k);
      } catch (err) {
        fail(`${name}[${i}] is not a valid key (${(err as Error).message})`);
      }
      if (i > 0 && compareKeys(keys[i - 1], k) >= 0) {
        fail(`${name} not strictly ascending at ${i}: ${show(keys[i - 1])} then ${show(k)}`);
      }
      if (lo !== undefined && compareKeys(k, lo) < 0) fail(`${name}[${i}] = ${show(k)} is below the lower bound ${show(lo)}`);
      if (hi !== undefined && compareKeys(k, hi) >= 0) fail(`${name}[${i}] = ${show(k)} is not below the upper bound ${show(hi)}`);
    }
  };

  const walk = (p: unknown, at: number[], lo: unknown, hi: unknown): void => {
    const name = at.length === 0 ? "the root" : `the piece at [${at.join(", ")}]`;
    if (typeof p !== "object" || p === null || seen.has(p)) fail(`${name} is missing or reached twice`);
    seen.add(p as object);
    if (p instanceof BTreeBucket) {
      if (leafDepth < 0) leafDepth = at.length;
      else if (at.length !== leafDepth) fail(`bucket ${name} is at depth ${at.length}, the first bucket at ${leafDepth}`);
      const d = (p as BTreeBucket<K, V>)[BUCKET];
      if (d.keys.length !== d.values.length) fail(`bucket ${name} has ${d.keys.length} keys but ${d.values.length} values`);
      if (d.keys.length > t.bucketSize) fail(`bucket ${name} has ${d.keys.length} keys, more than bucketSize ${t.bucketSize}`);
      if (d.keys.length === 0 && at.length > 0) fail(`bucket ${name} is empty`);
      checkKeys(d.keys, lo, hi, `bucket ${name}: keys`);
      buckets.push(p as BTreeBucket<K, V>);
    } else if (p instanceof BTreeNode) {
      const d = (p as BTreeNode<K, V>)[NODE];
      const n = d.children.length;
      if (n === 0) fail(`node ${name} has no children`);
      if (at.length === 0 && n < 2) fail(`the root node has ${n} child; it should have been collapsed`);
      if (n > t.nodeSize) fail(`node ${name} has ${n} children, more than nodeSize ${t.nodeSize}`);
      if (d.keys.length !== n - 1) fail(`node ${name} has ${n} children but ${d.keys.length} separators`);
      checkKeys(d.keys, lo, hi, `node ${name}: separators`);
      for (let i = 0; i < n; i++) walk(d.children[i], [...at, i], i === 0 ? lo : d.keys[i - 1], i === n - 1 ? hi : d.keys[i]);
    } else {
      fail(`${name} is neither a BTreeBucket nor a BTreeNode`);
    }
  };
  walk(t.root, [], undefined, undefined);

  // The leaf chain: from the first bucket, exactly the buckets found above, in order.
  for (let i = 0; i < buckets.length; i++) {
    const next = buckets[i]![BUCKET].next;
    const expected = buckets[i + 1] ?? null;
    if (next !== expected) {
      const index = next === null ? -1 : buckets.indexOf(next);
      const found = next === null ? "null" : index >= 0 ? `bucket #${index}` : "a bucket outside the tree";
      fail(`leaf chain: bucket #${i} (in key order) links to ${found} instead of ${expected === null ? "null" : `bucket #${i + 1}`}`);
    }
    const keys = buckets[i]![BUCKET].keys;
    const following = expected?.[BUCKET].keys[0];
    if (following !== undefined && compareKeys(keys[keys.length - 1], following) >= 0) {
      fail(`leaf chain: bucket #${i} ends with ${show(keys[keys.length - 1])}, not below the next bucket's first key ${show(following)}`);
    }
  }
}

/** A key for messages. */
function show(key: unknown): string {
  if (typeof key === "bigint") return `${key}n`;
  if (typeof key === "string") return JSON.stringify(key);
  if (key instanceof Date) return Number.isNaN(key.getTime()) ? "Invalid Date" : key.toISOString();
  if (Array.isArray(key)) return `[${key.map(show).join(", ")}]`;
  return String(key);
}
