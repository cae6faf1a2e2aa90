/**
 * BTree conflict merging (SPEC §4, §5; src/collections/btree-merge.ts), property-based, on
 * every storage: committed operation sequences against a sorted model; two connections
 * changing disjoint keys of one tree concurrently (splits and bucket removals on both
 * sides) always merge; the same key changed by both sides to different values conflicts
 * and writes nothing, even if commit() is called again; clear() against a concurrent insert
 * (a serializable outcome; the clearing side never merges); persistent values keep their
 * identity.
 *
 * Each run uses a fresh database. Runs per property are set per storage in RUNS (scale
 * them all with AMBER_BTREE_MERGE_RUNS=<factor>).
 */
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { BTree, ConflictError, DB, PersistentMap, oidOf, type Connection } from "../src/index.ts";
import { BTreeBucket, BTreeNode } from "../src/collections/btree-bucket.ts";
import { type Persistent } from "../src/persistent/persistent.ts";
import { GET_STATE } from "../src/persistent/slots.ts";
import { cleanupDirs, fresh, openDB, storages } from "./helpers.ts";

afterAll(cleanupDirs);

const SCALE = Number(process.env.AMBER_BTREE_MERGE_RUNS ?? 1) || 1;
const RUNS: Record<string, number> = { memory: 50, embedded: 20, server: 15 };
const runsFor = (name: string, factor = 1): number => Math.max(1, Math.round((RUNS[name] ?? 10) * factor * SCALE));

type Tree = BTree<number, unknown>;
type Op = { op: "set"; key: number; value: number } | { op: "delete"; key: number };
const ABSENT = Symbol("absent");
type Pending = Map<number, unknown>; // key -> new value or ABSENT

const sorted = (m: Map<number, unknown>): Array<[number, unknown]> => [...m].sort((x, y) => x[0] - y[0]);
const withPending = (base: Map<number, unknown>, pending: Pending): Map<number, unknown> => {
  const out = new Map(base);
  for (const [k, v] of pending) {
    if (v === ABSENT) out.delete(k);
    else out.set(k, v);
  }
  return out;
};

/** The pending changes that really change `base` (a key changed and changed back is none). */
const netOf = (base: Map<number, unknown>, pending: Pending): Pending =>
  new Map([...pending].filter(([k, v]) => (v === ABSENT ? base.has(k) : !base.has(k) || !Object.is(base.get(k), v))));

/** Apply `op` to the tree and to the side's view (and its pending changes), checking reads. */
function apply(tree: Tree, view: Map<number, unknown>, pending: Pending | null, op: Op): void {
  if (op.op === "set") {
    tree.set(op.key, op.value);
    view.set(op.key, op.value);
    pending?.set(op.key, op.value);
  } else {
    expect(tree.delete(op.key)).toBe(view.delete(op.key));
    pending?.set(op.key, ABSENT);
  }
  expect(tree.get(op.key)).toBe(view.get(op.key));
  expect(tree.has(op.key)).toBe(view.has(op.key));
}

/** Every piece of a tree, through the stored states (for shape statistics only). */
function shapeOf(tree: Tree): { buckets: number; depth: number } {
  let buckets = 0;
  let depth = 0;
  const walk = (p: Persistent, d: number): void => {
    if (p instanceof BTreeNode) for (const c of p[GET_STATE]().children as Persistent[]) walk(c, d + 1);
    else if (p instanceof BTreeBucket) {
      buckets++;
      depth = Math.max(depth, d);
    }
  };
  walk(tree[GET_STATE]().root as Persistent, 0);
  return { buckets, depth };
}

/** Open a fresh database (and, when `twoDBs`, a second DB on the same storage), run, close. */
async function withDB<T>(s: { name: string; url: () => string }, twoDBs: boolean, fn: (db: DB, db2: DB) => Promise<T>): Promise<T> {
  const url = s.url();
  const db = await openDB(url);
  let db2: DB | null = null;
  try {
    if (twoDBs && s.name !== "memory") db2 = await openDB(url);
    return await fn(db, db2 ?? db);
  } finally {
    await db2?.close();
    await db.close();
  }
}

/** Store a new tree with these entries (inserted in the order given) as root "t". */
async function storeTree(db: DB, sizes: { bucketSize: number; nodeSize: number }, entries: Iterable<[number, unknown]>): Promise<void> {
  const c = fresh(db);
  const t = new BTree<number, unknown>(sizes);
  for (const [k, v] of entries) t.set(k, v);
  c.root().set("t", t);
  await c.commit();
  await c.close();
}

/** The tree as a new connection reads it (after check()). */
async function readBack(db: DB): Promise<Array<[number, unknown]>> {
  const c = fresh(db);
  try {
    const t = c.root().get("t") as Tree;
    t.check();
    const entries = [...t];
    expect(t.size).toBe(entries.length);
    expect([...t.range({ reverse: true })]).toEqual([...entries].reverse());
    return entries;
  } finally {
    await c.close();
  }
}

const treeOf = (c: Connection): Tree => c.root().get("t") as Tree;

// ---------------------------------------------------------------------------------------
// Arbitraries.

const DOMAIN = 48; // keys 0..47
const sizesArb = fc.record({ bucketSize: fc.constantFrom(4, 5), nodeSize: fc.constantFrom(4, 5) });
const valueArb = fc.integer({ min: 0, max: 3 }); // small: sets to the value already there happen
/** A start tree: a random subset of the domain, inserted in random or ascending order. */
const startArb = fc
  .tuple(fc.shuffledSubarray(Array.from({ length: DOMAIN }, (_, k) => k)), fc.boolean())
  .chain(([keys, asc]) => fc.tuple(...(asc ? [...keys].sort((x, y) => x - y) : keys).map((k) => fc.tuple(fc.constant(k), valueArb))))
  .map((entries) => entries as Array<[number, number]>);

/** How keys are split between A and B: never both. */
type Partition = "parity" | "blocks" | "halves";
const partitionArb = fc.constantFrom<Partition>("parity", "blocks", "halves");
const sideOf = (p: Partition, k: number): "A" | "B" =>
  p === "parity" ? (k % 2 === 0 ? "A" : "B") : p === "blocks" ? (Math.floor(k / 3) % 2 === 0 ? "A" : "B") : k < DOMAIN / 2 ? "A" : "B";
const keysOf = (p: Partition, side: "A" | "B", except: number[] = []): number[] =>
  Array.from({ length: DOMAIN }, (_, k) => k).filter((k) => sideOf(p, k) === side && !except.includes(k));

/** A raw op: the key is an index into the side's key list, resolved later. */
type RawOp = { side: "A" | "B"; op: "set" | "delete"; idx: number; value: number };
const rawOpArb = fc.record({
  side: fc.constantFrom<"A" | "B">("A", "B"),
  op: fc.constantFrom<"set" | "delete">("set", "set", "delete", "delete", "delete"),
  idx: fc.nat(),
  value: valueArb,
});
/** Ops in runs: single changes, or a run of deletes or inserts of consecutive keys of one
 *  side (which empties buckets and splits them far more often than single changes do). */
const opsArb = (maxLength: number): fc.Arbitrary<RawOp[]> =>
  fc
    .array(
      fc.oneof(
        { arbitrary: rawOpArb.map((r) => [r]), weight: 4 },
        {
          arbitrary: fc
            .tuple(rawOpArb, fc.integer({ min: 2, max: 8 }))
            .map(([r, len]) => Array.from({ length: len }, (_, i) => ({ ...r, idx: r.idx + i }))),
          weight: 1,
        },
      ),
      { maxLength, size: "max" },
    )
    .map((chunks) => chunks.flat());
const resolve = (raw: RawOp, keys: number[]): Op =>
  raw.op === "set" ? { op: "set", key: keys[raw.idx % keys.length]!, value: raw.value } : { op: "delete", key: keys[raw.idx % keys.length]! };

/** Ops that delete every key of `keys` in a row, then insert `inserts` (fixed examples). */
const deletesThenInserts = (side: "A" | "B", deletes: number[], inserts: number[], keys: number[]): RawOp[] => [
  ...deletes.map((k) => ({ side, op: "delete" as const, idx: keys.indexOf(k), value: 0 })),
  ...inserts.map((k) => ({ side, op: "set" as const, idx: keys.indexOf(k), value: 1 })),
];

const ascending = (n: number, v = 0): Array<[number, number]> => Array.from({ length: n }, (_, k) => [k, v]);

// ---------------------------------------------------------------------------------------

for (const s of storages) {
  describe(`BTree merging on ${s.name}`, () => {
    it("a sequence of committed operations matches a sorted model, read afresh after each commit", async () => {
      const step = fc.oneof(
        { arbitrary: fc.record({ op: fc.constant("set" as const), key: fc.integer({ min: 0, max: 40 }), value: valueArb }), weight: 6 },
        { arbitrary: fc.record({ op: fc.constant("delete" as const), key: fc.integer({ min: 0, max: 40 }) }), weight: 5 },
        { arbitrary: fc.constant({ op: "commit" as const }), weight: 2 },
      );
      await fc.assert(
        fc.asyncProperty(sizesArb, fc.array(step, { maxLength: 120 }), async (sizes, steps) =>
          withDB(s, false, async (db) => {
            await storeTree(db, sizes, []);
            const conn = db.open({ cacheSize: 10_000 });
            const t = treeOf(conn);
            const model = new Map<number, unknown>();
            for (const st of [...steps, { op: "commit" as const }]) {
              if (st.op === "commit") {
                await conn.commit();
                expect(await readBack(db)).toEqual(sorted(model));
                t.check();
                expect([...t]).toEqual(sorted(model));
              } else apply(t, model, null, st);
            }
            await conn.close();
          }),
        ),
        { numRuns: runsFor(s.name) },
      );
    });

    it("two connections changing disjoint keys from one snapshot both commit, and the tree holds both", async () => {
      const stats = { merged: 0, aGrew: 0, aShrank: 0, bGrew: 0, bShrank: 0 };
      // Fixed examples that certainly split and empty buckets on both sides.
      const evens = keysOf("parity", "A");
      const odds = keysOf("parity", "B");
      const halvesA = keysOf("halves", "A");
      const halvesB = keysOf("halves", "B");
      type Args = [{ bucketSize: number; nodeSize: number }, Array<[number, number]>, Partition, RawOp[], number, number, boolean, boolean];
      const examples: Args[] = [
        // Ascending fill of 0..23 (buckets of 2, all A's keys): A deletes a run of them
        // (emptying buckets), B inserts a run of its keys after them (splitting).
        [
          { bucketSize: 4, nodeSize: 4 },
          ascending(24),
          "halves",
          [
            ...deletesThenInserts("A", [0, 1, 2, 3, 4, 5], [], halvesA),
            ...deletesThenInserts("B", [], [24, 25, 26, 27, 28, 29, 30, 31], halvesB),
          ],
          10_000,
          10_000,
          false,
          false,
        ],
        // Parity: each side deletes its keys from mixed buckets and appends (splitting).
        [
          { bucketSize: 4, nodeSize: 4 },
          ascending(32),
          "parity",
          [
            ...deletesThenInserts("A", [0, 2, 4, 6, 8, 10, 12, 14], [40, 42, 44, 46], evens),
            ...deletesThenInserts("B", [17, 19, 21, 23, 25, 27, 29, 31], [33, 35, 37, 39, 41, 43, 45, 47], odds),
          ],
          10_000,
          10_000,
          false,
          false,
        ],
        // Both sides remove their halves completely (the root collapses on both).
        [
          { bucketSize: 4, nodeSize: 4 },
          ascending(DOMAIN),
          "halves",
          [...deletesThenInserts("A", halvesA, [], halvesA), ...deletesThenInserts("B", halvesB, [], halvesB)],
          10_000,
          10_000,
          false,
          false,
        ],
        // From an empty tree, both sides grow it to several levels.
        [
          { bucketSize: 4, nodeSize: 4 },
          [],
          "parity",
          [...deletesThenInserts("B", [], odds, odds), ...deletesThenInserts("A", [], evens, evens)],
          10_000,
          10_000,
          false,
          false,
        ],
      ];
      await fc.assert(
        fc.asyncProperty(
          sizesArb,
          startArb,
          partitionArb,
          opsArb(30),
          fc.constantFrom(10_000, 10_000, 6, 2), // a tiny cache evicts pieces between changes
          fc.constantFrom(10_000, 10_000, 6, 2),
          fc.boolean(), // B in a second DB on the same storage (not for memory)
          fc.boolean(), // commit both at once (Promise.all) instead of A then B
          async (sizes, start, partition, raw, cacheA, cacheB, twoDBs, together) =>
            withDB(s, twoDBs, async (db, db2) => {
              await storeTree(db, sizes, start);
              const base = new Map<number, unknown>(start);
              const a = db.open({ cacheSize: cacheA });
              const b = db2.open({ cacheSize: cacheB });
              const ta = treeOf(a);
              const tb = treeOf(b);
              const before = shapeOf(ta);
              const views = { A: new Map(base), B: new Map(base) };
              const pending = { A: new Map() as Pending, B: new Map() as Pending };
              const keys = { A: keysOf(partition, "A"), B: keysOf(partition, "B") };
              for (const r of raw) apply(r.side === "A" ? ta : tb, views[r.side], pending[r.side], resolve(r, keys[r.side]));
              ta.check();
              tb.check();
              expect([...ta]).toEqual(sorted(views.A));
              expect([...tb]).toEqual(sorted(views.B));
              const shapeA = shapeOf(ta);
              const shapeB = shapeOf(tb);
              if (shapeA.buckets > before.buckets) stats.aGrew++;
              if (shapeA.buckets < before.buckets) stats.aShrank++;
              if (shapeB.buckets > before.buckets) stats.bGrew++;
              if (shapeB.buckets < before.buckets) stats.bShrank++;

              if (together) await Promise.all([a.commit(), b.commit()]);
              else {
                await a.commit();
                await b.commit(); // must merge, never conflict
              }
              if (a.stats.conflictsResolved + b.stats.conflictsResolved > 0) stats.merged++;
              const expected = sorted(withPending(withPending(base, pending.A), pending.B));
              expect(await readBack(db)).toEqual(expected);
              if (db2 !== db) expect(await readBack(db2)).toEqual(expected);
              // B's objects hold the merged tree right after its commit (when it committed
              // last); both see it in their next transaction.
              if (!together) {
                tb.check();
                expect([...tb]).toEqual(expected);
              }
              b.abort();
              tb.check();
              expect([...tb]).toEqual(expected);
              a.abort();
              ta.check();
              expect([...ta]).toEqual(expected);
              await a.close();
              await b.close();
            }),
        ),
        { numRuns: runsFor(s.name), examples },
      );
      // The runs did merge, with splits and bucket removals on both sides (the examples
      // guarantee each at least once).
      expect(stats.merged).toBeGreaterThan(0);
      for (const k of ["aGrew", "aShrank", "bGrew", "bShrank"] as const) expect(stats[k], k).toBeGreaterThan(0);
    });

    it("commits alternating over several rounds, each side working on its older snapshot, all merge", async () => {
      type Event = RawOp | { side: "A" | "B"; op: "commit" };
      const eventArb: fc.Arbitrary<Event | Event[]> = fc.oneof(
        { arbitrary: rawOpArb, weight: 6 },
        {
          arbitrary: fc
            .tuple(rawOpArb, fc.integer({ min: 2, max: 8 }))
            .map(([r, len]) => Array.from({ length: len }, (_, i) => ({ ...r, idx: r.idx + i }))),
          weight: 2,
        },
        { arbitrary: fc.record({ side: fc.constantFrom<"A" | "B">("A", "B"), op: fc.constant("commit" as const) }), weight: 2 },
      );
      const commit = (side: "A" | "B"): Event => ({ side, op: "commit" });
      let merged = 0;
      const evens = keysOf("parity", "A");
      const odds = keysOf("parity", "B");
      // Parity keys share every bucket, so each commit after the first merges: B empties
      // buckets A already thinned, then both append past the end (splitting) on old snapshots.
      const examples: Array<[{ bucketSize: number; nodeSize: number }, Array<[number, number]>, Partition, Event[], boolean]> = [
        [
          { bucketSize: 4, nodeSize: 4 },
          ascending(40),
          "parity",
          [
            ...deletesThenInserts("A", [0, 2, 4, 6, 8], [], evens),
            commit("A"),
            ...deletesThenInserts("B", [1, 3, 5, 7, 9], [41, 43, 45, 47], odds),
            commit("B"),
            ...deletesThenInserts("A", [10, 12, 14], [40, 42, 44, 46], evens),
            commit("A"),
            ...deletesThenInserts("B", [11, 13, 15, 41, 43], [], odds),
            commit("B"),
            ...deletesThenInserts("A", [], [0, 2, 4, 6, 8], evens),
            commit("A"),
          ],
          false,
        ],
      ];
      await fc.assert(
        fc.asyncProperty(sizesArb, startArb, partitionArb, fc.array(eventArb, { maxLength: 50 }).map((es) => es.flat()), fc.boolean(), async (sizes, start, partition, events, twoDBs) =>
          withDB(s, twoDBs, async (db, db2) => {
            await storeTree(db, sizes, start);
            let model = new Map<number, unknown>(start);
            const conns = { A: db.open({ cacheSize: 10_000 }), B: db2.open({ cacheSize: 10_000 }) };
            const trees = { A: treeOf(conns.A), B: treeOf(conns.B) };
            const views = { A: new Map(model), B: new Map(model) };
            const pending = { A: new Map() as Pending, B: new Map() as Pending };
            const keys = { A: keysOf(partition, "A"), B: keysOf(partition, "B") };
            for (const e of [...events, commit("A"), commit("B")]) {
              if (e.op === "commit") {
                await conns[e.side].commit(); // must merge, never conflict
                merged += conns[e.side].stats.conflictsResolved > 0 ? 1 : 0;
                model = withPending(model, pending[e.side]);
                pending[e.side].clear();
                views[e.side] = new Map(model);
                trees[e.side].check();
                expect([...trees[e.side]]).toEqual(sorted(model));
                expect(await readBack(db)).toEqual(sorted(model));
              } else apply(trees[e.side], views[e.side], pending[e.side], resolve(e, keys[e.side]));
            }
            if (db2 !== db) expect(await readBack(db2)).toEqual(sorted(model));
            await conns.A.close();
            await conns.B.close();
          }),
        ),
        { numRuns: runsFor(s.name, 0.75), examples },
      );
      expect(merged).toBeGreaterThan(0);
    });

    it("the same key changed by both sides: different values conflict, equal changes merge", async () => {
      type Change = { op: "set"; value: number } | { op: "delete" };
      type Scenario = { present: boolean; a: Change[]; b: Change[]; conflict: boolean };
      const set = (value: number): Change => ({ op: "set", value });
      const del: Change = { op: "delete" };
      // The key holds 1 when present.
      const scenarios: Record<string, Scenario> = {
        "both set different values": { present: true, a: [set(7)], b: [set(8)], conflict: true },
        "both insert different values": { present: false, a: [set(7)], b: [set(8)], conflict: true },
        "both set the same value": { present: true, a: [set(7)], b: [set(7)], conflict: false },
        "both insert the same value": { present: false, a: [set(7)], b: [set(7)], conflict: false },
        "both delete": { present: true, a: [del], b: [del], conflict: false },
        "A deletes, B changes the value": { present: true, a: [del], b: [set(8)], conflict: true },
        "A changes the value, B deletes": { present: true, a: [set(7)], b: [del], conflict: true },
        "A inserts, B inserts and deletes again": { present: false, a: [set(7)], b: [set(8), del], conflict: false },
        "A changes and restores, B changes": { present: true, a: [set(7), set(1)], b: [set(8)], conflict: false },
        "A deletes and reinserts the old value, B changes": { present: true, a: [del, set(1)], b: [set(8)], conflict: false },
        "A changes, B changes and restores": { present: true, a: [set(7)], b: [set(8), set(1)], conflict: false },
        "A deletes, B deletes and reinserts a new value": { present: true, a: [del], b: [del, set(8)], conflict: true },
      };
      const tally = new Map<string, number>();
      await fc.assert(
        fc.asyncProperty(
          sizesArb,
          startArb,
          partitionArb,
          fc.constantFrom(...Object.keys(scenarios)),
          fc.integer({ min: 0, max: DOMAIN - 1 }),
          opsArb(15),
          fc.nat(40),
          fc.nat(40),
          async (sizes, start0, partition, name, k, raw, atA, atB) =>
            withDB(s, false, async (db) => {
              const sc = scenarios[name]!;
              tally.set(name, (tally.get(name) ?? 0) + 1);
              const start = start0.filter(([key]) => key !== k);
              if (sc.present) start.push([k, 1]);
              await storeTree(db, sizes, start);
              const base = new Map<number, unknown>(start);
              const a = db.open({ cacheSize: 10_000 });
              const b = db.open({ cacheSize: 10_000 });
              const ta = treeOf(a);
              const tb = treeOf(b);
              const views = { A: new Map(base), B: new Map(base) };
              const pending = { A: new Map() as Pending, B: new Map() as Pending };
              const keys = { A: keysOf(partition, "A", [k]), B: keysOf(partition, "B", [k]) };
              const shared = (change: Change): Op => (change.op === "set" ? { op: "set", key: k, value: change.value } : { op: "delete", key: k });
              const net = (changes: Change[]): Change | null => {
                const last = changes[changes.length - 1]!;
                const was: Change | null = sc.present ? set(1) : del;
                return JSON.stringify(last) === JSON.stringify(was) ? null : last;
              };
              // The shared key's change goes somewhere among each side's other changes.
              const seq: Array<{ side: "A" | "B"; op: Op }> = raw.map((r) => ({ side: r.side, op: resolve(r, keys[r.side]) }));
              const insertAt = (side: "A" | "B", at: number, ops: Op[]): void => {
                const positions = seq.map((e, i) => (e.side === side ? i : -1)).filter((i) => i >= 0);
                const pos = positions.length === 0 ? seq.length : (positions[at % (positions.length + 1)] ?? seq.length);
                seq.splice(pos, 0, ...ops.map((op) => ({ side, op })));
              };
              insertAt("A", atA, sc.a.map(shared));
              insertAt("B", atB, sc.b.map(shared));
              expect(sc.conflict).toBe(net(sc.a) !== null && net(sc.b) !== null && JSON.stringify(net(sc.a)) !== JSON.stringify(net(sc.b)));
              for (const e of seq) apply(e.side === "A" ? ta : tb, views[e.side], pending[e.side], e.op);

              await a.commit();
              const afterA = sorted(withPending(base, netOf(base, pending.A)));
              if (sc.conflict) {
                const err = await b.commit().catch((x: unknown) => x);
                expect(err).toBeInstanceOf(ConflictError);
                // Nothing of B's transaction was written, not even its other keys.
                expect(await readBack(db)).toEqual(afterA);
                b.abort();
                tb.check();
                expect([...tb]).toEqual(afterA);
                // The connection is usable again: B's other changes alone now commit.
                const rest = new Map(pending.B);
                rest.delete(k);
                for (const [key, v] of rest) {
                  if (v === ABSENT) tb.delete(key);
                  else tb.set(key, v);
                }
                await b.commit();
                expect(await readBack(db)).toEqual(sorted(withPending(new Map(afterA), rest)));
              } else {
                await b.commit();
                const expected = sorted(withPending(withPending(base, netOf(base, pending.A)), netOf(base, pending.B)));
                expect(await readBack(db)).toEqual(expected);
                tb.check();
                expect([...tb]).toEqual(expected);
              }
              await a.close();
              await b.close();
            }),
        ),
        {
          numRuns: runsFor(s.name, 1.5),
          // Every scenario at least once, among other changes on both sides.
          examples: Object.keys(scenarios).map((name, i) => [
            { bucketSize: 4, nodeSize: 4 },
            ascending(24, 1),
            "parity" as const,
            name,
            10 + i,
            [
              ...deletesThenInserts("A", [0, 2, 4, 6], [30, 32, 34, 36], keysOf("parity", "A", [10 + i])),
              ...deletesThenInserts("B", [1, 3, 5, 7], [31, 33, 35, 37], keysOf("parity", "B", [10 + i])),
            ],
            i,
            i + 1,
          ]),
        },
      );
      expect(tally.size).toBe(Object.keys(scenarios).length);
    });

    it("a commit that raised ConflictError commits no part of its transaction, even when commit() is called again without abort()", async () => {
      // Regression: after a BTree merge failed part-way, a second commit() once wrote the
      // half-replayed transaction.
      const bKeys = keysOf("parity", "B", [10]);
      type Args = [{ bucketSize: number; nodeSize: number }, Array<[number, number]>, Partition, number, RawOp[], number, boolean];
      const examples: Args[] = [
        // fast-check's shrunk counterexample: an empty tree, A sets 0 to 7, B sets 0 to 8. B's
        // first commit raises ConflictError; the second resolves, having written nothing.
        [{ bucketSize: 4, nodeSize: 4 }, [], "parity", 0, [], 0, false],
        // A sets 10; B sets 3, 10, 19, 31. The second commit writes 3 and drops 19 and 31.
        [{ bucketSize: 4, nodeSize: 4 }, ascending(20, 0), "parity", 10, deletesThenInserts("B", [], [3, 19, 31], bKeys), 1, false],
        // The conflicting key first (nothing replayed) and a change to another object: the
        // second commit writes that object alone.
        [{ bucketSize: 4, nodeSize: 4 }, ascending(20, 0), "parity", 10, deletesThenInserts("B", [], [3, 19, 31], bKeys), 0, true],
      ];
      await fc.assert(
        fc.asyncProperty(
          sizesArb,
          startArb,
          partitionArb,
          fc.integer({ min: 0, max: DOMAIN - 1 }), // both sides set this key, to different values
          opsArb(15),
          fc.nat(40), // where B's change of that key goes among B's other changes
          fc.boolean(), // B also changes an object that is not part of the tree
          async (sizes, start0, partition, k, raw, at, other) =>
            withDB(s, false, async (db) => {
              const start = start0.filter(([key]) => key !== k);
              await storeTree(db, sizes, start);
              const base = new Map<number, unknown>(start);
              const a = db.open({ cacheSize: 10_000 });
              const b = db.open({ cacheSize: 10_000 });
              const ta = treeOf(a);
              const tb = treeOf(b);
              const views = { A: new Map(base), B: new Map(base) };
              const pending = { A: new Map() as Pending, B: new Map() as Pending };
              const keys = { A: keysOf(partition, "A", [k]), B: keysOf(partition, "B", [k]) };
              const seq: Array<{ side: "A" | "B"; op: Op }> = raw.map((r) => ({ side: r.side, op: resolve(r, keys[r.side]) }));
              const positions = seq.map((e, i) => (e.side === "B" ? i : -1)).filter((i) => i >= 0);
              seq.splice(positions[at % (positions.length + 1)] ?? seq.length, 0, { side: "B", op: { op: "set", key: k, value: 8 } });
              seq.push({ side: "A", op: { op: "set", key: k, value: 7 } });
              for (const e of seq) apply(e.side === "A" ? ta : tb, views[e.side], pending[e.side], e.op);
              if (other) b.root().set("other", 1);
              await a.commit();
              const afterA = sorted(withPending(base, netOf(base, pending.A)));
              expect(await b.commit().catch((x: unknown) => x)).toBeInstanceOf(ConflictError);
              const again = await b.commit().then(
                () => "committed",
                (x: unknown) => (x instanceof Error ? x.constructor.name : String(x)),
              );
              const c = fresh(db);
              const otherWritten = c.root().get("other");
              await c.close();
              expect({ committed: again === "committed", tree: await readBack(db), other: otherWritten }).toEqual({
                committed: false,
                tree: afterA,
                other: undefined,
              });
              await a.close();
              await b.close();
            }),
        ),
        { numRuns: runsFor(s.name), examples },
      );
    });

    describe("clear() against a concurrent insert", () => {
      // A small tree (root bucket) or a larger one (root node, depth 3); the clear or the
      // insert committed first; a few inserted keys, or enough to split the root node.
      // Every case's outcome is one of the serial orders, or the second commit conflicts
      // and writes nothing. A transaction that cleared never merges: when it is the one
      // that meets a conflict (a root bucket both wrote), it raises ConflictError. The
      // other side may merge onto the cleared tree, or, when it only wrote buckets the
      // clear left behind, be ordered before the clear (see btree-merge.ts).
      const cases = [
        { shape: "root bucket", n: 3, first: "insert", many: false, clearerConflicts: true },
        { shape: "root bucket", n: 3, first: "clear", many: false, clearerConflicts: false },
        { shape: "root node", n: 30, first: "clear", many: false, clearerConflicts: false },
        { shape: "root node", n: 30, first: "clear", many: true, clearerConflicts: false },
        { shape: "root node", n: 30, first: "insert", many: false, clearerConflicts: false },
      ] as const;

      async function run(c: (typeof cases)[number]) {
        return withDB(s, false, async (db) => {
          await storeTree(db, { bucketSize: 4, nodeSize: 4 }, ascending(c.n, 0));
          const clearer = db.open({ cacheSize: 10_000 });
          const inserter = db.open({ cacheSize: 10_000 });
          const tc = treeOf(clearer);
          const ti = treeOf(inserter);
          const depth = shapeOf(tc).depth;
          if (c.shape === "root bucket") expect(depth).toBe(0);
          else expect(depth).toBeGreaterThan(1);
          tc.clear();
          const inserted: Array<[number, number]> = [[1.5, 1]]; // inside an existing bucket
          for (let k = 100; k < (c.many ? 160 : 101); k++) inserted.push([k, 1]); // and at the end
          for (const [k, v] of inserted) ti.set(k, v);
          if (c.many) expect(shapeOf(ti).depth).toBe(depth + 1);
          const all = [...ascending(c.n, 0), ...inserted].sort((x, y) => x[0] - y[0]);
          const [firstConn, secondConn, firstModel] = c.first === "clear" ? [clearer, inserter, []] : [inserter, clearer, all];
          await firstConn.commit();
          expect(await readBack(db)).toEqual(firstModel);
          const err = await secondConn.commit().catch((x: unknown) => x);
          const after = await readBack(db);
          await clearer.close();
          await inserter.close();
          return {
            error: err instanceof ConflictError ? "ConflictError" : String(err),
            tree: after,
            firstModel,
            clearThenInsert: inserted,
            insertThenClear: [],
          };
        });
      }

      for (const c of cases) {
        const name = `${c.shape}, ${c.first} committed first${c.many ? ", the insert splits the root" : ""}`;
        it(`${name}: the outcome is serializable`, async () => {
          const r = await run(c);
          if (r.error === "ConflictError") expect(r.tree).toEqual(r.firstModel);
          else {
            expect(r.error).toBe("undefined");
            expect([r.clearThenInsert, r.insertThenClear]).toContainEqual(r.tree);
          }
        });
        if (c.clearerConflicts) {
          it(`${name}: the clearing transaction, committing second, raises ConflictError`, async () => {
            const r = await run(c);
            expect({ error: r.error, tree: r.tree }).toEqual({ error: "ConflictError", tree: r.firstModel });
          });
        }
      }
    });

    it("persistent values survive a merge with their identity", async () => {
      await withDB(s, false, async (db) => {
        const sizes = { bucketSize: 4, nodeSize: 4 };
        await storeTree(
          db,
          sizes,
          Array.from({ length: 30 }, (_, k): [number, unknown] => [k, new PersistentMap<string, number>([["n", k]])]),
        );
        const a = db.open({ cacheSize: 10_000 });
        const b = db.open({ cacheSize: 10_000 });
        const ta = treeOf(a) as BTree<number, PersistentMap<string, number>>;
        const tb = treeOf(b) as BTree<number, PersistentMap<string, number>>;
        // A: deletes a run of even keys (emptying buckets), inserts new maps (splitting).
        for (let k = 0; k <= 10; k += 2) ta.delete(k);
        for (let k = 30; k <= 40; k += 2) ta.set(k, new PersistentMap([["n", k]]));
        ta.set(12, new PersistentMap([["n", 1200]]));
        // B: holds its own objects, inserts new ones, moves one, changes one.
        const mine = new Map<number, PersistentMap<string, number>>();
        for (let k = 11; k < 30; k += 2) mine.set(k, tb.get(k)!);
        for (let k = 1; k <= 9; k += 2) tb.delete(k);
        for (let k = 31; k <= 41; k += 2) {
          const m = new PersistentMap<string, number>([["n", k]]);
          tb.set(k, m);
          mine.set(k, m);
        }
        const moved = mine.get(13)!;
        tb.delete(13);
        mine.delete(13);
        tb.set(43, moved);
        mine.set(43, moved);
        mine.get(15)!.set("n", 1500);
        const shared = mine.get(17)!;
        tb.set(45, shared); // one object under two keys
        mine.set(45, shared);

        await a.commit();
        await b.commit();
        expect(b.stats.conflictsResolved).toBeGreaterThan(0);
        tb.check();
        for (const [k, m] of mine) expect(tb.get(k), `key ${k}`).toBe(m);
        expect(tb.get(45)).toBe(tb.get(17));
        expect(tb.get(12)!.get("n")).toBe(1200); // A's change, loaded in B
        expect(tb.has(13)).toBe(false);

        const expectedN = new Map<number, number>();
        for (let k = 0; k < 30; k++) expectedN.set(k, k);
        for (let k = 0; k <= 10; k += 2) expectedN.delete(k);
        for (let k = 1; k <= 9; k += 2) expectedN.delete(k);
        for (let k = 30; k <= 41; k++) expectedN.set(k, k);
        expectedN.set(12, 1200);
        expectedN.delete(13);
        expectedN.set(43, 13);
        expectedN.set(15, 1500);
        expectedN.set(45, 17);
        const c = fresh(db);
        const tc = treeOf(c) as BTree<number, PersistentMap<string, number>>;
        tc.check();
        expect([...tc].map(([k, m]) => [k, m.get("n")])).toEqual([...expectedN].sort((x, y) => x[0] - y[0]));
        expect(tc.get(45)).toBe(tc.get(17)); // still one object
        expect(oidOf(tc.get(43)!)).toBe(oidOf(moved));
        await c.close();
        await a.close();
        await b.close();
      });
    });

    it("BTrees as values: changes to a nested tree and to the outer tree merge, new trees keep their identity", async () => {
      await withDB(s, false, async (db) => {
        const sizes = { bucketSize: 4, nodeSize: 4 };
        const inner0 = new BTree<number, unknown>(sizes);
        for (let k = 0; k < 20; k++) inner0.set(k, k);
        await storeTree(db, sizes, [...ascending(20, 0), [100, inner0]]);
        const a = db.open({ cacheSize: 10_000 });
        const b = db.open({ cacheSize: 10_000 });
        const ta = treeOf(a);
        const tb = treeOf(b);
        const ia = ta.get(100) as Tree;
        const ib = tb.get(100) as Tree;
        for (let k = 0; k < 4; k++) ta.delete(k);
        for (let k = 20; k <= 40; k += 2) ia.set(k, k);
        for (const k of [0, 2, 4]) ia.delete(k);
        for (let k = 50; k <= 60; k++) tb.set(k, 1);
        const added = new BTree<number, unknown>(sizes);
        for (let k = 0; k < 10; k++) added.set(k, -k);
        tb.set(101, added);
        for (let k = 21; k <= 41; k += 2) ib.set(k, k);
        for (const k of [1, 3, 5]) ib.delete(k);
        await a.commit();
        await b.commit();
        expect(b.stats.conflictsResolved).toBeGreaterThan(0);
        expect(tb.get(100)).toBe(ib);
        expect(tb.get(101)).toBe(added);
        const outer: Array<[number, unknown]> = [...ascending(20, 0).slice(4)];
        for (let k = 50; k <= 60; k++) outer.push([k, 1]);
        const inner = new Map<number, number>();
        for (let k = 0; k < 20; k++) inner.set(k, k);
        for (let k = 20; k <= 41; k++) inner.set(k, k);
        for (const k of [0, 1, 2, 3, 4, 5]) inner.delete(k);
        const check = (t: Tree): void => {
          t.check();
          const i = t.get(100) as Tree;
          const n = t.get(101) as Tree;
          i.check();
          n.check();
          expect([...t].filter(([k]) => k < 100)).toEqual(outer);
          expect([...i]).toEqual(sorted(inner));
          expect([...n]).toEqual(Array.from({ length: 10 }, (_, k) => [k, -k]));
        };
        check(tb);
        const c = fresh(db);
        check(treeOf(c));
        await c.close();
        await a.close();
        await b.close();
      });
    });
  });
}
