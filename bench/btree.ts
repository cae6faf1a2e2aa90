/**
 * BTree throughput against a plain sorted structure in the same run (SPEC §4; issue 5):
 * 1,000,000 random inserts, then 1,000,000 random lookups, in a persistent BTree (default
 * bucket and node size 64) and in `sorted-btree` (a well-kept in-memory B+ tree, no
 * persistence): objects/s and the ratio. The persistent tree commits every 100,000
 * inserts (its pieces are written as they would be); lookups run in a new connection,
 * once cold (every piece loaded from the storage) and once hot.
 *
 * `tsx bench/btree.ts --storage memory:|embedded|server [--n 1000000]`
 */
import sortedBTree from "sorted-btree";
import { BTree } from "../src/index.ts";
import { argValue, fmt, labelOf, makeTarget } from "./lib.ts";

const storage = argValue("--storage", "embedded");
const N = Number(argValue("--n", "1000000"));
const BATCH = 100_000;

// Random distinct keys (a permutation), and a random lookup order.
function shuffled(n: number, seed: number): number[] {
  const a = Array.from({ length: n }, (_, i) => i * 7 + 3);
  let s = seed;
  for (let i = n - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) >>> 0;
    const j = s % (i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}
const keys = shuffled(N, 1);
const probes = shuffled(N, 2);

function rate(n: number, ms: number): string {
  return `${fmt((n / ms) * 1000)}/s`;
}

// Baseline: sorted-btree, in memory.
let t = performance.now();
// sorted-btree is CommonJS: its class is the module's `default`.
type SortedTree = { set(k: number, v: number): unknown; get(k: number): number | undefined };
const mod = sortedBTree as unknown as { default?: new () => SortedTree };
const SortedBTree = mod.default ?? (sortedBTree as unknown as new () => SortedTree);
const plain = new SortedBTree();
for (const k of keys) plain.set(k, k);
const plainInsert = performance.now() - t;
t = performance.now();
let sum = 0;
for (const k of probes) sum += plain.get(k)!;
const plainLookup = performance.now() - t;

// amberdb BTree.
const target = makeTarget(storage);
const db = await target.open();
let conn = db.open({ cacheSize: 100_000 });
t = performance.now();
const tree = new BTree<number, number>();
conn.root().set("tree", tree);
for (let i = 0; i < N; i++) {
  tree.set(keys[i]!, keys[i]!);
  if ((i + 1) % BATCH === 0) await conn.commit();
}
await conn.commit();
const treeInsert = performance.now() - t;
await conn.close();

conn = db.open({ cacheSize: 100_000 });
const tree2 = conn.root().get("tree") as BTree<number, number>;
t = performance.now();
let sum2 = 0;
for (const k of probes) sum2 += tree2.get(k)!;
const sum3 = sum2;
const treeCold = performance.now() - t;
const loads = conn.stats.loads;
t = performance.now();
for (const k of probes) sum2 -= tree2.get(k)!;
const treeHot = performance.now() - t;
if (sum3 !== sum || sum2 !== 0 || sum !== keys.reduce((a, b) => a + b, 0)) throw new Error("lookups disagree");

const row = (what: string, ms: number, base: number) =>
  console.log(`| ${what} | ${labelOf(storage)} | ${ms.toFixed(0)} ms | ${rate(N, ms)} | ${(ms / base).toFixed(1)}x sorted-btree (${rate(N, base)}) |`);
row(`${fmt(N)} random inserts (commit every ${fmt(BATCH)})`, treeInsert, plainInsert);
row(`${fmt(N)} random lookups, cold (${loads} loads)`, treeCold, plainLookup);
row(`${fmt(N)} random lookups, hot`, treeHot, plainLookup);
await conn.close();
await db.close();
await target.dispose();
