import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ConflictError, DB, PersistentMap, serialOf, stateOf, type Connection } from "../index.ts";
import { type Persistent } from "../persistent/persistent.ts";
import { GET_STATE } from "../persistent/slots.ts";
import { BTreeBucket, BTreeNode, BUCKET, NODE } from "./btree-bucket.ts";
import { BTree, type BTreeKey, type BTreeRangeOptions } from "./btree.ts";
import { compareKeys } from "./key-compare.ts";

/** Every piece of a tree (nodes and buckets), depth first, through the stored states. */
function piecesOf(tree: BTree<any, any>): Persistent[] {
  const out: Persistent[] = [];
  const walk = (p: Persistent): void => {
    out.push(p);
    if (p instanceof BTreeNode) for (const c of p[GET_STATE]().children as Persistent[]) walk(c);
  };
  walk(tree[GET_STATE]().root as Persistent);
  return out;
}
const bucketsOf = (tree: BTree<any, any>): Array<BTreeBucket<any, any>> =>
  piecesOf(tree).filter((p): p is BTreeBucket<any, any> => p instanceof BTreeBucket);
const depthOf = (tree: BTree<any, any>): number => {
  let d = 0;
  for (let p = tree[GET_STATE]().root as Persistent; p instanceof BTreeNode; p = p[NODE].children[0]!) d++;
  return d;
};

function shuffled(n: number, seed = 1): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  let s = seed;
  for (let i = n - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2147483648;
    const j = s % (i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

describe("BTree in memory", () => {
  it("starts empty", () => {
    const t = new BTree<number, string>();
    expect(t.size).toBe(0);
    expect(t.get(1)).toBeUndefined();
    expect(t.has(1)).toBe(false);
    expect(t.delete(1)).toBe(false);
    expect(t.minKey()).toBeUndefined();
    expect(t.maxKey()).toBeUndefined();
    expect([...t]).toEqual([]);
    expect([...t.range({ gte: 0, reverse: true })]).toEqual([]);
    expect(t.bucketSize).toBe(64);
    expect(t.nodeSize).toBe(64);
    t.check();
  });

  it("is a Map-like sorted map", () => {
    const t = new BTree<number, string>({ bucketSize: 4, nodeSize: 4 });
    expect(t.set(3, "c")).toBe(t);
    t.set(1, "a").set(2, "b");
    expect(t.get(2)).toBe("b");
    expect(t.has(3)).toBe(true);
    t.set(2, "B");
    expect(t.size).toBe(3);
    expect([...t]).toEqual([[1, "a"], [2, "B"], [3, "c"]]);
    expect([...t.keys()]).toEqual([1, 2, 3]);
    expect([...t.values()]).toEqual(["a", "B", "c"]);
    expect([...t.entries()]).toEqual([...t]);
    const seen: Array<[number, string, unknown]> = [];
    t.forEach((v, k, tree) => seen.push([k, v, tree]));
    expect(seen).toEqual([[1, "a", t], [2, "B", t], [3, "c", t]]);
    expect(t.toJSON()).toEqual([[1, "a"], [2, "B"], [3, "c"]]);
    expect(t.delete(2)).toBe(true);
    expect(t.delete(2)).toBe(false);
    expect([...t.keys()]).toEqual([1, 3]);
    t.clear();
    expect(t.size).toBe(0);
    t.check();
  });

  it("keeps an undefined value distinct from a missing key", () => {
    const t = new BTree<string, undefined>();
    t.set("x", undefined);
    expect(t.has("x")).toBe(true);
    expect(t.size).toBe(1);
  });

  it("splits into a tree of equal-depth buckets and shrinks back to a lone bucket", () => {
    const t = new BTree<number, number>({ bucketSize: 4, nodeSize: 4 });
    const keys = shuffled(2000, 7);
    for (const k of keys) t.set(k, k * 2);
    t.check();
    expect(t.size).toBe(2000);
    expect(depthOf(t)).toBeGreaterThanOrEqual(4);
    expect([...t.keys()]).toEqual(Array.from({ length: 2000 }, (_, i) => i));
    expect(t.minKey()).toBe(0);
    expect(t.maxKey()).toBe(1999);
    for (const k of shuffled(2000, 3)) {
      expect(t.delete(k)).toBe(true);
      if (k % 97 === 0) t.check();
    }
    t.check();
    expect(depthOf(t)).toBe(0);
    expect(bucketsOf(t)).toHaveLength(1);
    expect(t.size).toBe(0);
    t.set(5, 5);
    expect([...t]).toEqual([[5, 5]]);
  });

  it("splits in half: ascending inserts leave buckets at least half full", () => {
    const t = new BTree<number, null>({ bucketSize: 8, nodeSize: 4 });
    for (let i = 0; i < 1000; i++) t.set(i, null);
    t.check();
    for (const b of bucketsOf(t)) expect(b[BUCKET].keys.length).toBeGreaterThanOrEqual(4);
  });

  it("orders mixed keys: numbers and bigints, strings, Dates, arrays", () => {
    const t = new BTree<BTreeKey, number>({ bucketSize: 4 });
    const keys: BTreeKey[] = [["a"], new Date(10), "b", 2n, [1, 2], "", 1.5, new Date(0), [1], -Infinity, [], 10n ** 30n];
    keys.forEach((k, i) => t.set(k, i));
    t.check();
    expect([...t.keys()]).toEqual([-Infinity, 1.5, 2n, 10n ** 30n, "", "b", new Date(0), new Date(10), [], [1], [1, 2], ["a"]]);
    expect(t.get([1, 2])).toBe(4);
    expect(t.get(new Date(10))).toBe(1);
  });

  it("treats keys that compare equal as one key (1 and 1n, 0 and -0)", () => {
    const t = new BTree<BTreeKey, string>();
    t.set(1, "number").set(1n, "bigint").set(-0, "minus zero").set(0, "zero");
    expect(t.size).toBe(2);
    expect(t.get(1)).toBe("bigint");
    expect(t.get(-0)).toBe("zero");
  });

  it("copies array and Date keys, so changing the caller's key later does no harm", () => {
    const t = new BTree<BTreeKey, number>({ bucketSize: 4 });
    const k: [number, string] = [5, "x"];
    const d = new Date(1000);
    t.set(k, 1).set(d, 2).set([1], 0).set([9], 3);
    k[0] = 100;
    d.setTime(0);
    expect(t.get([5, "x"])).toBe(1);
    expect(t.get(new Date(1000))).toBe(2);
    t.check();
  });

  it("rejects bad keys with a TypeError naming the key type", () => {
    const t = new BTree<any, number>();
    expect(() => t.set(Number.NaN, 1)).toThrow(/got NaN/);
    expect(() => t.set(true, 1)).toThrow(TypeError);
    expect(() => t.get(null)).toThrow(/got null/);
    expect(() => t.has(undefined)).toThrow(/got undefined/);
    expect(() => t.delete({})).toThrow(/got a plain object/);
    expect(() => t.set(new BTree(), 1)).toThrow(/persistent object \(BTree\)/);
    expect(() => t.set([1, Symbol("x")], 1)).toThrow(/a symbol at \[1\]/);
    expect(() => t.range({ gte: true })).toThrow(/range bound gte .*boolean/);
    expect(t.size).toBe(0);
  });

  it("validates options with a RangeError", () => {
    for (const bad of [3, 0, -1, 4.5, Number.NaN, Infinity, "8"]) {
      expect(() => new BTree({ bucketSize: bad as number })).toThrow(RangeError);
      expect(() => new BTree({ nodeSize: bad as number })).toThrow(/nodeSize must be an integer >= 4/);
    }
    const t = new BTree({ bucketSize: 4, nodeSize: 5 });
    expect([t.bucketSize, t.nodeSize]).toEqual([4, 5]);
  });

  describe("range", () => {
    const t = new BTree<number, string>({ bucketSize: 4, nodeSize: 4 });
    for (let i = 0; i < 100; i += 2) t.set(i, `v${i}`);
    const keys = (o: BTreeRangeOptions<number>): number[] => [...t.range(o)].map(([k]) => k);

    it("takes inclusive and exclusive bounds, between keys or on them", () => {
      expect(keys({ gte: 10, lt: 20 })).toEqual([10, 12, 14, 16, 18]);
      expect(keys({ gt: 10, lte: 20 })).toEqual([12, 14, 16, 18, 20]);
      expect(keys({ gt: 9, lt: 15 })).toEqual([10, 12, 14]);
      expect(keys({ gte: 95 })).toEqual([96, 98]);
      expect(keys({ lt: 3 })).toEqual([0, 2]);
      expect(keys({ gte: 50, lt: 50 })).toEqual([]);
      expect(keys({ gte: 60, lte: 40 })).toEqual([]);
      expect(keys({ gte: 1000 })).toEqual([]);
      expect(keys({ lt: -5 })).toEqual([]);
      expect([...t.range({ gte: 4, lte: 6 })]).toEqual([[4, "v4"], [6, "v6"]]);
    });

    it("goes backwards with reverse and stops at limit", () => {
      expect(keys({ gte: 10, lt: 20, reverse: true })).toEqual([18, 16, 14, 12, 10]);
      expect(keys({ gt: 9, lte: 15, reverse: true })).toEqual([14, 12, 10]);
      expect(keys({ reverse: true, limit: 3 })).toEqual([98, 96, 94]);
      expect(keys({ lt: 1, reverse: true })).toEqual([0]);
      expect(keys({ lt: 0, reverse: true })).toEqual([]);
      expect(keys({ limit: 2 })).toEqual([0, 2]);
      expect(keys({ limit: 0 })).toEqual([]);
      expect(keys({ reverse: true })).toHaveLength(50);
    });

    it("rejects two lower or two upper bounds, and bad limits", () => {
      expect(() => t.range({ gte: 1, gt: 1 })).toThrow(TypeError);
      expect(() => t.range({ lte: 1, lt: 1 })).toThrow(TypeError);
      expect(() => t.range({ limit: -1 })).toThrow(RangeError);
      expect(() => t.range({ limit: 1.5 })).toThrow(RangeError);
    });
  });

  it("lets iteration continue after changes made between steps", () => {
    const t = new BTree<number, number>({ bucketSize: 4, nodeSize: 4 });
    for (let i = 0; i < 200; i++) t.set(i, i);
    // Delete each key as it is returned: every key is still visited once, in order.
    const seen: number[] = [];
    for (const [k] of t) {
      seen.push(k);
      t.delete(k);
    }
    expect(seen).toEqual(Array.from({ length: 200 }, (_, i) => i));
    expect(t.size).toBe(0);
    // Insert ahead while iterating: the new keys are visited too; keys behind are not.
    for (let i = 0; i < 100; i += 10) t.set(i, i);
    const visited: number[] = [];
    for (const [k] of t) {
      visited.push(k);
      if (k < 100) t.set(k + 5, k + 5);
      t.set(-k - 1, 0);
    }
    expect(visited).toEqual(Array.from({ length: 21 }, (_, i) => i * 5));
    t.check();
    // Reverse: delete each key as returned, and delete the next one down too.
    const back: number[] = [];
    for (const [k] of t.range({ reverse: true, gte: 0 })) {
      back.push(k);
      t.delete(k);
      t.delete(k - 5);
    }
    expect(back).toEqual([100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 0]);
    expect(t.minKey()).toBe(-101);
    expect(t.maxKey()).toBe(-1);
    t.check();
  });

  describe("minKey(bound) and maxKey(bound): the least key >= bound, the greatest key <= bound", () => {
    it("answers ZODB's testMaxKeyMinKey cases (a deleted key, bounds on and between keys, nothing qualifying)", () => {
      const t = new BTree<number, number>();
      for (const [k, v] of [[7, 6], [3, 10], [8, 12], [1, 100], [5, 200], [10, 500], [6, 99], [4, 150]] as const) t.set(k, v);
      t.delete(7);
      expect(t.maxKey()).toBe(10);
      expect(t.maxKey(undefined)).toBe(10);
      expect(t.maxKey(6)).toBe(6);
      expect(t.maxKey(9)).toBe(8);
      expect(t.maxKey(7)).toBe(6); // the deleted key
      expect(t.minKey()).toBe(1);
      expect(t.minKey(undefined)).toBe(1);
      expect(t.minKey(3)).toBe(3);
      expect(t.minKey(9)).toBe(10);
      expect(t.minKey(7)).toBe(8);
      expect(t.has(t.minKey()!) && t.has(t.maxKey()!)).toBe(true);
      // No key satisfies the bound: undefined, as minKey()/maxKey() of an empty tree.
      expect(t.maxKey(t.minKey()! - 1)).toBeUndefined();
      expect(t.minKey(t.maxKey()! + 1)).toBeUndefined();
      expect(t.maxKey(-Infinity)).toBeUndefined();
      expect(t.minKey(Infinity)).toBeUndefined();
    });

    it("answers ZODB's bucket cases (hit, miss, fail) and the empty tree", () => {
      const t = new BTree<string, number>();
      for (const k of ["alpha", "bravo", "charlie", "delta", "echo"]) t.set(k, 0);
      expect(t.minKey("bravo")).toBe("bravo");
      expect(t.minKey("candy")).toBe("charlie");
      expect(t.minKey("foxtrot")).toBeUndefined();
      expect(t.maxKey("bravo")).toBe("bravo");
      expect(t.maxKey("candy")).toBe("bravo");
      expect(t.maxKey("abacus")).toBeUndefined();
      const empty = new BTree<number, number>();
      expect([empty.minKey(5), empty.maxKey(5), empty.minKey(), empty.maxKey()]).toEqual([undefined, undefined, undefined, undefined]);
    });

    it("crosses bucket boundaries and stale separators in a multi-level tree", () => {
      const t = new BTree<number, number>({ bucketSize: 4, nodeSize: 4 });
      for (let k = 0; k < 400; k += 2) t.set(k, k);
      // Delete the first key of many buckets: their separators stay behind, now below them.
      for (const b of bucketsOf(t).slice(1)) if (b[BUCKET].keys.length > 1) t.delete(b[BUCKET].keys[0] as number);
      for (let k = 100; k < 140; k += 2) t.delete(k); // and a run of whole buckets
      t.check();
      expect(depthOf(t)).toBeGreaterThan(1);
      const keys = [...t.keys()];
      for (let b = -2; b <= 402; b += 0.5) {
        expect(t.minKey(b), `minKey(${b})`).toBe(keys.find((k) => k >= b));
        expect(t.maxKey(b), `maxKey(${b})`).toBe(keys.findLast((k) => k <= b));
      }
    });

    it("takes bounds of any key kind, and rejects a bound that is not a key", () => {
      const t = new BTree<BTreeKey, number>({ bucketSize: 4 });
      for (const k of [1, 2n, "b", new Date(5), [1, 2]]) t.set(k, 0);
      expect(t.minKey("a")).toBe("b");
      expect(t.maxKey("a")).toBe(2n);
      expect(t.minKey(new Date(6))).toEqual([1, 2]);
      expect(t.maxKey([1])).toEqual(new Date(5));
      expect(t.minKey([1, 2, 0])).toBeUndefined();
      expect(() => t.minKey(null as unknown as number)).toThrow(/minKey bound .*got null/);
      expect(() => t.maxKey(Number.NaN)).toThrow(TypeError);
      expect(() => t.minKey({} as unknown as number)).toThrow(/plain object/);
    });
  });

  it("hands out copies of Date and array keys: changing one breaks neither check() nor lookups", () => {
    const t = new BTree<BTreeKey, number>({ bucketSize: 4, nodeSize: 4 });
    for (let i = 0; i < 40; i++) {
      t.set(new Date(i * 1000), i);
      t.set([i, "x"], i);
      t.set([new Date(i), [i]], i);
    }
    const expected = [...t.keys()].map((k) => structuredClone(k));
    const handedOut: unknown[] = [
      ...t.keys(),
      ...[...t.entries()].map(([k]) => k),
      ...[...t].map(([k]) => k),
      ...[...t.range({ gte: new Date(5000), lt: [3] })].map(([k]) => k),
      ...[...t.range({ reverse: true, limit: 30 })].map(([k]) => k),
      ...t.toJSON().map(([k]) => k),
      t.minKey(),
      t.maxKey(),
      t.minKey(new Date(2500)),
      t.maxKey([3, "y"]),
      t.minKey([new Date(7)]),
    ];
    t.forEach((_, k) => handedOut.push(k));
    const mangle = (k: unknown): void => {
      if (k instanceof Date) k.setTime(-k.getTime() - 1_000_000);
      else if (Array.isArray(k)) {
        for (const part of k) mangle(part);
        if (typeof k[0] === "number") k[0] = -k[0] - 1000;
        k.push("z");
      }
    };
    for (const k of handedOut) mangle(k);
    t.check();
    for (let i = 0; i < 40; i++) {
      expect(t.get(new Date(i * 1000))).toBe(i);
      expect(t.get([i, "x"])).toBe(i);
      expect(t.get([new Date(i), [i]])).toBe(i);
    }
    expect([...t.keys()]).toEqual(expected);
    expect(t.minKey(new Date(0))).toEqual(new Date(0));
  });

  describe("a scan sees the tree as changed by the same transaction", () => {
    const build = (n = 200): BTree<number, number> => {
      const t = new BTree<number, number>({ bucketSize: 4, nodeSize: 4 });
      for (let i = 0; i < n; i++) t.set(i, i);
      return t;
    };
    const scans: Array<[string, (t: BTree<number, number>) => Iterable<unknown>]> = [
      ["keys()", (t) => t.keys()],
      ["values()", (t) => t.values()],
      ["entries()", (t) => t.entries()],
      ["iteration", (t) => t],
      ["range({ gte })", (t) => t.range({ gte: 0 })],
      ["range({ limit })", (t) => t.range({ limit: 1000 })],
      ["range({ reverse })", (t) => t.range({ reverse: true })],
      ["range({ lte, reverse })", (t) => t.range({ lte: 500, reverse: true })],
    ];

    it("ends after clear(), on a multi-level tree and on a lone bucket", () => {
      for (const [name, scan] of scans) {
        for (const size of [200, 3]) {
          const t = build(size);
          let n = 0;
          for (const _ of scan(t)) if (++n === 2) t.clear();
          expect(n, `${name} on ${size} keys`).toBe(2);
          t.check();
        }
      }
      const t = build();
      let n = 0;
      t.forEach(() => {
        if (++n === 10) t.clear();
      });
      expect(n).toBe(10);
    });

    it("after clear(), visits only keys added past its place since", () => {
      const t = build();
      const seen: number[] = [];
      for (const k of t.keys()) {
        seen.push(k);
        if (k === 9) {
          t.clear();
          t.set(5, 5); // behind the scan
          t.set(1000, 0);
        }
      }
      expect(seen).toEqual([...Array.from({ length: 10 }, (_, i) => i), 1000]);
    });

    it("never yields an entry deleted before it got there", () => {
      for (const [name, scan] of scans) {
        const reverse = name.includes("reverse");
        const t = build();
        const seen: number[] = [];
        for (const v of scan(t)) {
          const k = Array.isArray(v) ? (v[0] as number) : (v as number);
          seen.push(k);
          if (k === (reverse ? 190 : 10)) {
            t.delete(reverse ? 189 : 11); // the next key, in the same bucket
            for (let d = 50; d < 150; d++) t.delete(d); // whole buckets and parts of buckets ahead
          }
        }
        const left = Array.from({ length: 200 }, (_, i) => i).filter((i) => (i < 50 || i >= 150) && i !== (reverse ? 189 : 11));
        expect(seen, name).toEqual(reverse ? left.reverse() : left);
      }
    });

    it("goes on after the key it returned when that key is deleted from the middle of its bucket", () => {
      // Seeking after a deleted key lands past a key that is not the one returned last:
      // the position found must be taken as it is (an earlier version sought again forever).
      for (const [name, scan] of scans) {
        const t = build();
        const seen: number[] = [];
        for (const v of scan(t)) {
          const k = Array.isArray(v) ? (v[0] as number) : (v as number);
          seen.push(k);
          if (k % 3 === 1) t.delete(k);
        }
        const all = Array.from({ length: 200 }, (_, i) => i);
        expect(seen, name).toEqual(name.includes("reverse") ? all.reverse() : all);
        expect(t.size).toBe(200 - 67);
        t.check();
      }
    });

    it("starts where the tree is at its first step, not where it was when the scan was made", () => {
      for (const [name, scan] of scans) {
        const reverse = name.includes("reverse");
        const t = build();
        const it = scan(t)[Symbol.iterator]();
        // Empty the first (last) buckets before the first step: they leave the tree.
        for (let d = 0; d < 20; d++) t.delete(reverse ? 199 - d : d);
        const seen = [...{ [Symbol.iterator]: () => it }].map((v) => (Array.isArray(v) ? v[0] : v));
        const left = Array.from({ length: 180 }, (_, i) => (reverse ? i : i + 20));
        expect(seen, name).toEqual(reverse ? left.reverse() : left);
      }
    });
  });

  it("check() reports broken invariants", () => {
    const build = (): BTree<number, number> => {
      const t = new BTree<number, number>({ bucketSize: 4, nodeSize: 4 });
      for (let i = 0; i < 40; i++) t.set(i, i);
      t.check();
      return t;
    };
    let t = build();
    let b = bucketsOf(t)[2]![BUCKET];
    [b.keys[0], b.keys[1]] = [b.keys[1]!, b.keys[0]!];
    expect(() => t.check()).toThrow(/not strictly ascending/);

    t = build();
    b = bucketsOf(t)[2]![BUCKET];
    b.keys[b.keys.length - 1] = 1000;
    expect(() => t.check()).toThrow(/not below the upper bound/);

    t = build();
    const buckets = bucketsOf(t);
    buckets[1]![BUCKET].next = buckets[3]!;
    expect(() => t.check()).toThrow(/leaf chain: bucket #1 \(in key order\) links to bucket #3 instead of bucket #2/);

    t = build();
    b = bucketsOf(t)[1]![BUCKET];
    b.keys.length = 0;
    b.values.length = 0;
    expect(() => t.check()).toThrow(/is empty/);

    t = build();
    b = bucketsOf(t)[0]![BUCKET];
    b.values.pop();
    expect(() => t.check()).toThrow(/keys but .* values/);

    t = build();
    const root = t[GET_STATE]().root as BTreeNode<number, number>;
    const child = root[NODE].children[0] as BTreeNode<number, number>;
    child[NODE].children[0] = new BTreeNode([], [child[NODE].children[0]!]);
    expect(() => t.check()).toThrow(/depth/);
  });
});

// ---------------------------------------------------------------------------------------
// Property-based: random operation sequences against a sorted-array model.

type Op<K> =
  | { op: "set"; key: K; value: number }
  | { op: "delete"; key: K }
  | { op: "get"; key: K }
  | { op: "range"; lo?: K; loInclusive: boolean; hi?: K; hiInclusive: boolean; reverse: boolean; limit?: number }
  | { op: "ends" }
  | { op: "bounds"; key: K }
  | { op: "clear" };

class Model<K> {
  entries: Array<[K, number]> = [];
  find(key: K): { found: boolean; at: number } {
    let lo = 0;
    let hi = this.entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareKeys(this.entries[mid]![0], key) < 0) lo = mid + 1;
      else hi = mid;
    }
    return { found: lo < this.entries.length && compareKeys(this.entries[lo]![0], key) === 0, at: lo };
  }
}

function opsFor<K>(key: fc.Arbitrary<K>): fc.Arbitrary<Array<Op<K>>> {
  const op: fc.Arbitrary<Op<K>> = fc.oneof(
    { arbitrary: fc.record({ op: fc.constant("set" as const), key, value: fc.integer() }), weight: 10 },
    { arbitrary: fc.record({ op: fc.constant("delete" as const), key }), weight: 7 },
    { arbitrary: fc.record({ op: fc.constant("get" as const), key }), weight: 3 },
    {
      arbitrary: fc.record(
        {
          op: fc.constant("range" as const),
          lo: key,
          loInclusive: fc.boolean(),
          hi: key,
          hiInclusive: fc.boolean(),
          reverse: fc.boolean(),
          limit: fc.nat(20),
        },
        { requiredKeys: ["op", "loInclusive", "hiInclusive", "reverse"] },
      ),
      weight: 2,
    },
    { arbitrary: fc.constant({ op: "ends" as const }), weight: 1 },
    { arbitrary: fc.record({ op: fc.constant("bounds" as const), key }), weight: 2 },
    { arbitrary: fc.constant({ op: "clear" as const }), weight: 1 },
  );
  return fc.array(op, { maxLength: 400, size: "max" });
}

function run<K extends BTreeKey>(sizes: { bucketSize: number; nodeSize: number }, ops: Array<Op<K>>): void {
  const t = new BTree<K, number>(sizes);
  const m = new Model<K>();
  for (const o of ops) {
    switch (o.op) {
      case "set": {
        t.set(o.key, o.value);
        const { found, at } = m.find(o.key);
        if (found) m.entries[at]![1] = o.value;
        else m.entries.splice(at, 0, [o.key, o.value]);
        break;
      }
      case "delete": {
        const { found, at } = m.find(o.key);
        expect(t.delete(o.key)).toBe(found);
        if (found) m.entries.splice(at, 1);
        break;
      }
      case "get": {
        const { found, at } = m.find(o.key);
        expect(t.has(o.key)).toBe(found);
        expect(t.get(o.key)).toBe(found ? m.entries[at]![1] : undefined);
        break;
      }
      case "range": {
        const options: BTreeRangeOptions<K> = { reverse: o.reverse, limit: o.limit };
        if (o.lo !== undefined) options[o.loInclusive ? "gte" : "gt"] = o.lo;
        if (o.hi !== undefined) options[o.hiInclusive ? "lte" : "lt"] = o.hi;
        let expected = m.entries.filter(([k]) => {
          if (o.lo !== undefined) {
            const c = compareKeys(k, o.lo);
            if (c < 0 || (c === 0 && !o.loInclusive)) return false;
          }
          if (o.hi !== undefined) {
            const c = compareKeys(k, o.hi);
            if (c > 0 || (c === 0 && !o.hiInclusive)) return false;
          }
          return true;
        });
        if (o.reverse) expected = expected.reverse();
        if (o.limit !== undefined) expected = expected.slice(0, o.limit);
        expect([...t.range(options)]).toEqual(expected);
        break;
      }
      case "ends":
        expect(t.minKey()).toEqual(m.entries[0]?.[0]);
        expect(t.maxKey()).toEqual(m.entries[m.entries.length - 1]?.[0]);
        expect(t.size).toBe(m.entries.length);
        break;
      case "bounds": {
        // minKey(bound): the least key >= bound; maxKey(bound): the greatest key <= bound.
        const { found, at } = m.find(o.key);
        expect(t.minKey(o.key)).toEqual(m.entries[at]?.[0]);
        expect(t.maxKey(o.key)).toEqual(m.entries[found ? at : at - 1]?.[0]);
        break;
      }
      case "clear":
        t.clear();
        m.entries = [];
        break;
    }
    t.check();
  }
  expect([...t]).toEqual(m.entries);
  expect([...t.range({ reverse: true })]).toEqual([...m.entries].reverse());
  expect(t.size).toBe(m.entries.length);
}

describe("BTree against a sorted model (property-based)", () => {
  const sizes = fc.record({ bucketSize: fc.integer({ min: 4, max: 6 }), nodeSize: fc.integer({ min: 4, max: 5 }) });

  it("integer keys from a small domain (many splits and bucket removals)", () => {
    fc.assert(fc.property(sizes, opsFor(fc.integer({ min: 0, max: 80 })), run), { numRuns: 300 });
  });

  it("integer keys in a wide domain, insert-heavy", () => {
    const key = fc.integer({ min: -1000, max: 1000 });
    const ops = fc.array(
      fc.oneof(
        { arbitrary: fc.record({ op: fc.constant("set" as const), key, value: fc.integer() }), weight: 5 },
        { arbitrary: fc.record({ op: fc.constant("delete" as const), key }), weight: 1 },
        { arbitrary: fc.constant({ op: "ends" as const }), weight: 1 },
      ),
      { maxLength: 600, size: "max" },
    );
    fc.assert(fc.property(sizes, ops, run), { numRuns: 100 });
  });

  it("mixed keys: numbers, bigints, strings, Dates and arrays", () => {
    const scalar = fc.oneof(
      fc.integer({ min: 0, max: 9 }),
      fc.bigInt({ min: 0n, max: 9n }),
      fc.constantFrom("", "a", "b", "ab"),
      fc.integer({ min: 0, max: 3 }).map((n) => new Date(n)),
    );
    const key: fc.Arbitrary<BTreeKey> = fc.oneof(scalar, fc.array(scalar, { maxLength: 2 }));
    fc.assert(fc.property(sizes, opsFor(key), run), { numRuns: 200 });
  });
});

// ---------------------------------------------------------------------------------------
// Through a real database.

describe("BTree in a database", () => {
  let db: DB;
  beforeEach(async () => {
    db = await DB.open("memory:");
  });
  afterEach(async () => {
    await db.close();
  });

  /** A new connection (not the pooled one, whose cache holds the objects just stored). */
  const fresh = (options: { cacheSize?: number } = {}): Connection => db.open({ cacheSize: 100_000, ...options });

  async function store(tree: BTree<any, any>): Promise<void> {
    await db.transact((root) => {
      root.set("t", tree);
    });
  }

  it("stores 5,000 keys in one transaction and loads them lazily in another connection", async () => {
    const tree = new BTree<number, string>({ bucketSize: 32, nodeSize: 8 });
    for (const k of shuffled(5000)) tree.set(k, `v${k}`);
    await store(tree);

    const conn = fresh();
    const t = conn.root().get("t") as BTree<number, string>;
    expect(stateOf(t)).toBe("ghost");
    expect(t === tree).toBe(false);
    conn.resetStats();
    expect(t.get(1234)).toBe("v1234");
    // The tree object, one node per level and one bucket: not the whole tree.
    expect(conn.stats.loads).toBe(1 + depthOf(t) + 1);
    expect([t.bucketSize, t.nodeSize]).toEqual([32, 8]);
    expect(t.size).toBe(5000);
    expect([...t.keys()]).toEqual(Array.from({ length: 5000 }, (_, i) => i));
    expect([...t.range({ gte: 100, lt: 103 })]).toEqual([[100, "v100"], [101, "v101"], [102, "v102"]]);
    expect([...t.range({ lte: 4990, reverse: true, limit: 3 })].map(([k]) => k)).toEqual([4990, 4989, 4988]);
    expect([t.minKey(), t.maxKey()]).toEqual([0, 4999]);
    t.check();
    await conn.close();
  });

  it("applies later transactions' changes, down to an empty tree", async () => {
    await store(new BTree<number, string>({ bucketSize: 16, nodeSize: 4 }));
    await db.transact((root) => {
      const t = root.get("t") as BTree<number, string>;
      for (let k = 0; k < 5000; k++) t.set(k, `v${k}`);
    });
    await db.transact((root) => {
      const t = root.get("t") as BTree<number, string>;
      for (let k = 0; k < 5000; k += 2) t.delete(k);
      t.set(1, "one");
      t.set(10_000, "last");
    });
    let conn = fresh();
    let t = conn.root().get("t") as BTree<number, string>;
    t.check();
    expect(t.size).toBe(2501);
    expect(t.get(1)).toBe("one");
    expect(t.get(2)).toBeUndefined();
    expect([...t.range({ gt: 4990 })]).toEqual([[4991, "v4991"], [4993, "v4993"], [4995, "v4995"], [4997, "v4997"], [4999, "v4999"], [10_000, "last"]]);
    await conn.close();

    await db.transact((root) => {
      const t = root.get("t") as BTree<number, string>;
      for (const k of [...t.keys()]) t.delete(k);
    });
    conn = fresh();
    t = conn.root().get("t") as BTree<number, string>;
    t.check();
    expect(t.size).toBe(0);
    expect(depthOf(t)).toBe(0);
    await conn.close();
  });

  it("a plain insert into a bucket with room rewrites that bucket and nothing else", async () => {
    const tree = new BTree<number, string>({ bucketSize: 64, nodeSize: 8 });
    for (const k of shuffled(5000)) tree.set(k * 2, "even");
    await store(tree);

    const conn = fresh();
    const t = conn.root().get("t") as BTree<number, string>;
    t.check(); // loads every piece
    const pieces = piecesOf(t);
    expect(pieces.length).toBeGreaterThan(100);
    expect(pieces.every((p) => stateOf(p) === "saved")).toBe(true);
    const bucket = bucketsOf(t).find((b) => b[BUCKET].keys.length < 64)!;
    const key = (bucket[BUCKET].keys[0] as number) + 1;
    const serials = (): number[] => [serialOf(t), ...pieces.map((p) => serialOf(p))];
    const before = serials();

    t.set(key, "odd");
    expect(stateOf(bucket)).toBe("changed");
    expect(pieces.filter((p) => stateOf(p) !== "saved")).toEqual([bucket]);
    conn.resetStats();
    await conn.commit();
    const after = serials();
    const changed = pieces.filter((_, i) => after[i + 1] !== before[i + 1]);
    expect(changed).toEqual([bucket]);
    expect(after[0]).toBe(before[0]);
    expect(conn.stats.bytesWritten).toBeGreaterThan(0);
    expect(conn.stats.bytesWritten).toBeLessThan(2000);

    // Replacing a value and deleting a key (the bucket keeps others) are one-bucket changes too.
    const other = bucketsOf(t).find((b) => b !== bucket && b[BUCKET].keys.length > 2)!;
    t.set(other[BUCKET].keys[0] as number, "changed");
    t.delete(other[BUCKET].keys[1] as number);
    const before2 = serials();
    await conn.commit();
    const after2 = serials();
    expect(pieces.filter((_, i) => after2[i + 1] !== before2[i + 1])).toEqual([other]);
    await conn.close();
  });

  it("a bucket split writes the bucket, the new bucket and the parent node", async () => {
    const tree = new BTree<number, null>({ bucketSize: 4, nodeSize: 64 });
    for (let k = 0; k < 40; k += 2) tree.set(k, null);
    await store(tree);
    const conn = fresh();
    const t = conn.root().get("t") as BTree<number, null>;
    t.check();
    const full = bucketsOf(t).find((b) => b[BUCKET].keys.length === 4)!;
    const pieces = piecesOf(t);
    t.set((full[BUCKET].keys[0] as number) + 1, null);
    const changed = pieces.filter((p) => stateOf(p) === "changed");
    expect(changed).toHaveLength(2);
    expect(changed).toContain(full);
    expect(changed.some((p) => p instanceof BTreeNode)).toBe(true);
    expect(stateOf(t)).toBe("saved");
    await conn.commit();
    t.check();
    await conn.close();
  });

  it("keeps persistent objects as values", async () => {
    const tree = new BTree<string, PersistentMap<string, number>>();
    tree.set("a", new PersistentMap([["n", 1]]));
    tree.set("b", new PersistentMap([["n", 2]]));
    await store(tree);
    const conn = fresh();
    const t = conn.root().get("t") as BTree<string, PersistentMap<string, number>>;
    const a = t.get("a")!;
    expect(a).toBeInstanceOf(PersistentMap);
    expect(a.get("n")).toBe(1);
    const bucket = bucketsOf(t)[0]!;
    a.set("n", 10);
    await conn.commit();
    expect(stateOf(bucket)).toBe("saved");
    const conn2 = fresh();
    expect((conn2.root().get("t") as typeof t).get("a")!.get("n")).toBe(10);
    await conn.close();
    await conn2.close();
  });

  it("works through a tiny object cache (pieces evicted and reloaded mid-operation)", async () => {
    await store(new BTree<number, number>({ bucketSize: 4, nodeSize: 4 }));
    const conn = fresh({ cacheSize: 3 });
    const t = conn.root().get("t") as BTree<number, number>;
    const model = new Map<number, number>();
    const keys = shuffled(2000, 11);
    for (let round = 0; round < 3; round++) {
      // Commit often: the connection keeps every changed object, whatever its cacheSize.
      for (let i = 0; i < keys.length; i++) {
        const k = keys[i]!;
        if ((k + round) % 3 === 0) {
          t.delete(k);
          model.delete(k);
        } else {
          t.set(k, k + round);
          model.set(k, k + round);
        }
        if (i % 200 === 199) await conn.commit();
      }
      await conn.commit();
      const sorted = [...model].sort((x, y) => x[0] - y[0]);
      expect([...t]).toEqual(sorted);
      const other = fresh();
      const t2 = other.root().get("t") as BTree<number, number>;
      t2.check();
      expect([...t2]).toEqual(sorted);
      expect([...t2.range({ reverse: true })]).toEqual(sorted.reverse());
      await other.close();
    }
    await conn.close();
  });

  it("a container value changed in place and set again is written; a concurrent change to that key conflicts", async () => {
    const tree = new BTree<number, number[]>({ bucketSize: 4, nodeSize: 4 });
    for (let k = 0; k < 20; k++) tree.set(k, [k]);
    await store(tree);
    const c1 = fresh();
    const c2 = fresh();
    const t1 = c1.root().get("t") as BTree<number, number[]>;
    const arr = t1.get(7)!;
    arr.push(70);
    t1.set(7, arr); // the same array: written because it may have changed in place
    await c1.commit();
    const c3 = fresh();
    expect((c3.root().get("t") as BTree<number, number[]>).get(7)).toEqual([7, 70]);
    await c3.close();
    // c2 read key 7 before that commit: changing it in place too cannot merge.
    const t2 = c2.root().get("t") as BTree<number, number[]>;
    const arr2 = t2.get(7)!;
    arr2.push(71);
    t2.set(7, arr2);
    await expect(c2.commit()).rejects.toBeInstanceOf(ConflictError);
    await c1.close();
    await c2.close();
  });

  it("an insert into a bucket that a concurrent transaction emptied and unlinked merges, and is not lost", async () => {
    const tree = new BTree<number, string>({ bucketSize: 4, nodeSize: 4 });
    for (let k = 0; k < 100; k++) tree.set(k, "x"); // ascending: most buckets keep 2 keys
    await store(tree);
    const c1 = fresh();
    const c2 = fresh();
    const t1 = c1.root().get("t") as BTree<number, string>;
    const t2 = c2.root().get("t") as BTree<number, string>;
    const victim = bucketsOf(t1).find((b) => b[BUCKET].keys.length === 2 && (b[BUCKET].keys[0] as number) > 40)!;
    const [a, b] = victim[BUCKET].keys as number[];
    t1.delete(a!);
    t1.delete(b!);
    t1.check();
    t2.set(a! + 0.5, "concurrent");
    await c1.commit();
    await c2.commit(); // the unlinked bucket is written (emptied): a conflict, merged by replay
    expect(c2.stats.conflictsResolved).toBeGreaterThan(0);
    const c3 = fresh();
    const t3 = c3.root().get("t") as BTree<number, string>;
    t3.check();
    expect(t3.get(a! + 0.5)).toBe("concurrent");
    expect(t3.has(a!)).toBe(false);
    expect(t3.has(b!)).toBe(false);
    expect(t3.size).toBe(99);
    await c3.close();
    await c1.close();
    await c2.close();
  });

  describe("a scan running when abort() brings in another transaction's clear()", () => {
    const build = (): BTree<number, string> => {
      const tree = new BTree<number, string>({ bucketSize: 4, nodeSize: 4 });
      for (let k = 0; k < 200; k++) tree.set(k, `v${k}`);
      return tree;
    };
    const key = (v: unknown): number => (Array.isArray(v) ? (v[0] as number) : typeof v === "string" ? Number(v.slice(1)) : (v as number));
    const scans: Array<[string, (t: BTree<number, string>) => Iterator<unknown>]> = [
      ["keys()", (t) => t.keys()],
      ["values()", (t) => t.values()],
      ["entries()", (t) => t.entries()],
      ["range({ gte })", (t) => t.range({ gte: 0 })],
      ["range({ reverse })", (t) => t.range({ reverse: true })],
    ];

    /** Take 10 items from a scan in one connection, let `change` commit in another, abort, and return the rest. */
    async function scanAcross(scan: (t: BTree<number, string>) => Iterator<unknown>, change: (t: BTree<number, string>) => void) {
      await store(build());
      const reader = fresh();
      const t = reader.root().get("t") as BTree<number, string>;
      expect(depthOf(t)).toBeGreaterThan(1);
      const it = scan(t);
      const before: number[] = [];
      for (let i = 0; i < 10; i++) before.push(key(it.next().value));
      const writer = fresh();
      change(writer.root().get("t") as BTree<number, string>);
      await writer.commit();
      await writer.close();
      reader.abort(); // the new snapshot: the tree object is reloaded with the other root
      const after: number[] = [];
      for (let r = it.next(); !r.done; r = it.next()) after.push(key(r.value));
      await reader.close();
      return { before, after };
    }

    it("ends: the old buckets, no longer in the tree, are not read on", async () => {
      for (const [name, scan] of scans) {
        const { before, after } = await scanAcross(scan, (t) => t.clear());
        expect(before, name).toHaveLength(10);
        expect(after, name).toEqual([]);
      }
    });

    it("goes on with the keys the tree has now past its place", async () => {
      for (const [name, scan] of scans) {
        const reverse = name.includes("reverse");
        const { before, after } = await scanAcross(scan, (t) => {
          t.clear();
          for (const k of [5, 100, 195, 300]) t.set(k, `v${k}`);
        });
        expect(after, name).toEqual(reverse ? [100, 5] : [100, 195, 300]);
        expect(before[9], name).toBe(reverse ? 190 : 9);
      }
    });
  });
});
