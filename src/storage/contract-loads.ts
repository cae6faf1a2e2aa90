/**
 * The storage contract, loads: loading plans (steps, fan-out through collections and
 * their pieces, `have`, limits), closures (breadth-first, limits, `have`, missing objects,
 * snapshots), and synchronous access with its lending rule (`loadOneSync(…, true)`). See
 * contract.ts.
 *
 * @internal
 */
import { FanOut, writeEnvelope } from "../codec/record.ts";
import { StorageError } from "../errors.ts";
import { failureOf, fakeCollection, fakeRecord, labelOf, request, type ContractContext } from "./contract-kit.ts";
import type { Oid, Storage, StoredRecord, Tid } from "./storage.ts";

/** Let timers run (lmdb-js, for one, resets its read snapshot on a timer). */
const turns = async (n = 3): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setTimeout(resolve, 2));
};

const oidsOf = (records: readonly StoredRecord[]): Oid[] => records.map((r) => r.oid);

export function loadCases(c: ContractContext): void {
  const { describe, it, expect } = c.t;
  const { fresh, part } = c;

  describe("loading plans", () => {
    it("loadPlan follows stored reference paths, fans out over collections, skips `have` and reports dangling references", async () => {
      const s = await fresh();
      const [a, b, c, d, list, x, y, e] = await s.newOids(8);
      const listRecord = writeEnvelope({
        className: "amber.PersistentList",
        classVersion: 0,
        refOids: [x!, y!],
        refPaths: ["items", "items"],
        refClasses: ["T", "T"],
        fanOut: FanOut.ITEMS, // a collection: a plan step through it gives its items
        state: new TextEncoder().encode("list"),
      });
      const withList = writeEnvelope({
        className: "T",
        classVersion: 0,
        refOids: [b!, c!, list!],
        refPaths: ["ref0", "ref1", "members"],
        refClasses: ["T", "T", "amber.PersistentList"],
        state: new TextEncoder().encode("a"),
      });
      const tid = await s.finish({
        records: [
          { oid: a!, serial: 0, data: withList },
          { oid: b!, serial: 0, data: fakeRecord("b", [d!]) },
          { oid: c!, serial: 0, data: fakeRecord("c") },
          { oid: d!, serial: 0, data: fakeRecord("d") },
          { oid: list!, serial: 0, data: listRecord },
          { oid: x!, serial: 0, data: fakeRecord("x") },
          { oid: y!, serial: 0, data: fakeRecord("y") },
          { oid: e!, serial: 0, data: fakeRecord("e", [987_654]) },
        ],
        readCurrent: [],
      });
      const steps = [{ from: [a!] }, { follow: 0, prop: "ref0" }, { follow: 1, prop: "ref0" }, { union: [1, 2] }, { follow: 0, prop: "members" }];
      const p = await s.loadPlan(steps, tid);
      expect(p.groups).toEqual([[a], [b], [d], [b, d], [x, y]]);
      expect(p.missing).toEqual([]);
      // Group members and the collection walked through; not c (ref1 was not followed).
      expect(p.records.map((r) => r.oid).sort((m, n) => m - n)).toEqual([a!, b!, d!, list!, x!, y!].sort((m, n) => m - n));
      expect(labelOf(p.records.find((r) => r.oid === d))).toBe("d");
      // What the caller holds is walked through but not sent.
      const held = await s.loadPlan(steps, tid, { have: [a!, b!] });
      expect(held.groups).toEqual(p.groups);
      expect(held.records.map((r) => r.oid).sort((m, n) => m - n)).toEqual([d!, list!, x!, y!].sort((m, n) => m - n));
      // At a snapshot before the commit nothing exists: the start is reported missing.
      expect((await s.loadPlan([{ from: [a!] }], tid - 1)).missing).toEqual([{ oid: a, path: `#${a}` }]);
      const dangling = await s.loadPlan([{ from: [e!] }, { follow: 0, prop: "ref0" }], tid);
      expect(dangling.missing).toEqual([{ oid: 987_654, path: `T#${e}.ref0` }]);
      await expect(s.loadPlan([], tid)).rejects.toThrow(TypeError);
      await expect(s.loadPlan([{ follow: 0, prop: "x" }], tid)).rejects.toThrow(TypeError);
      await expect(s.loadPlan([{ from: [a!] }, { follow: 0 }], tid)).rejects.toThrow(TypeError);
    });

    it("loadPlan fans out through a collection's pieces (a BTree's nodes and buckets) and reports dangling items", async () => {
      const s = await fresh();
      const [owner, tree, node, b1, b2, x1, x2, x3, list] = await s.newOids(9);
      const tid = await s.finish({
        records: [
          { oid: owner!, serial: 0, data: fakeRecord("owner", [tree!, list!], ["index", "members"]) },
          { oid: tree!, serial: 0, data: fakeCollection("amber.BTree", [node!]) },
          { oid: node!, serial: 0, data: fakeCollection("amber.BTreeNode", [b1!, b2!], FanOut.PIECES) },
          { oid: b1!, serial: 0, data: fakeCollection("amber.BTreeBucket", [x1!, x2!], FanOut.PIECES) },
          { oid: b2!, serial: 0, data: fakeCollection("amber.BTreeBucket", [x3!, x1!], FanOut.PIECES) },
          { oid: x1!, serial: 0, data: fakeRecord("x1") },
          { oid: x2!, serial: 0, data: fakeRecord("x2") },
          { oid: x3!, serial: 0, data: fakeRecord("x3") },
          { oid: list!, serial: 0, data: fakeCollection("amber.PersistentList", [x2!, 876_543]) },
        ],
        readCurrent: [],
      });
      const p = await s.loadPlan([{ from: [owner!] }, { follow: 0, prop: "index" }, { follow: 0, prop: "members" }], tid);
      expect(p.groups).toEqual([[owner], [x1, x2, x3], [x2]]);
      expect(p.missing).toEqual([{ oid: 876_543, path: `T#${owner}.members[…]` }]);
      const sortedOids = (oids: Oid[]) => [...oids].sort((m, n) => m - n);
      expect(sortedOids(oidsOf(p.records))).toEqual(sortedOids([owner!, tree!, node!, b1!, b2!, x1!, x2!, x3!, list!]));
      expect(new Set(oidsOf(p.records)).size).toBe(p.records.length); // each record once
    });
  });

  part("loading plans: maxBytes", c.options.skip?.planMaxBytes, () => {
    it("loadPlan past maxBytes fails with StorageError 'too-large'", async () => {
      const s = await fresh();
      const [a, b] = await s.newOids(2);
      const tid = await s.finish({
        records: [
          { oid: a!, serial: 0, data: fakeRecord("a".repeat(400), [b!]) },
          { oid: b!, serial: 0, data: fakeRecord("b".repeat(400)) },
        ],
        readCurrent: [],
      });
      const steps = [{ from: [a!] }, { follow: 0, prop: "ref0" }];
      const err = await failureOf(s.loadPlan(steps, tid, { maxBytes: 600 }));
      expect(err).toBeInstanceOf(StorageError);
      expect((err as StorageError).code).toBe("too-large");
      expect((await s.loadPlan(steps, tid, { maxBytes: 10_000 })).groups).toEqual([[a], [b]]);
  });
  });

  describe("closures", () => {
    /**
     * r -> a, b; a -> c; b -> c, r (a cycle); c -> a dangling oid. At t2, a -> d instead
     * of c, and d is new.
     */
    const graph = async (s: Storage) => {
      const [r, a, b, cc, d] = await s.newOids(5);
      const t1 = await s.finish({
        records: [
          { oid: r!, serial: 0, data: fakeRecord("r", [a!, b!]) },
          { oid: a!, serial: 0, data: fakeRecord("a", [cc!]) },
          { oid: b!, serial: 0, data: fakeRecord("b", [cc!, r!]) },
          { oid: cc!, serial: 0, data: fakeRecord("c", [987_654]) },
        ],
        readCurrent: [],
      });
      const t2 = await s.finish({
        records: [
          { oid: a!, serial: t1, data: fakeRecord("a2", [d!]) },
          { oid: d!, serial: 0, data: fakeRecord("d") },
        ],
        readCurrent: [],
      });
      return { r: r!, a: a!, b: b!, c: cc!, d: d!, t1, t2 };
    };

    it("loadClosure returns the object and all it reaches, breadth-first, each once, at the snapshot", async () => {
      const s = await fresh();
      const { r, a, b, c: cc, d, t1, t2 } = await graph(s);
      const old = await s.loadClosure(r, t1);
      expect(oidsOf(old.records)).toEqual([r, a, b, cc]);
      expect(old.records.map(labelOf)).toEqual(["r", "a", "b", "c"]);
      expect(old.records.map((rec) => rec.serial)).toEqual([t1, t1, t1, t1]);
      expect(old.missing).toEqual([987_654]);
      expect(old.truncated).toBe(false);
      const now = await s.loadClosure(r, t2);
      expect(oidsOf(now.records)).toEqual([r, a, b, d, cc]);
      expect(labelOf(now.records[1])).toBe("a2");
      expect(now.records[1]!.serial).toBe(t2);
      // Starting lower in the graph.
      expect(oidsOf((await s.loadClosure(cc, t2)).records)).toEqual([cc]);
    });

    it("loadClosure of an object missing at the snapshot gives no records and missing: [oid]", async () => {
      const s = await fresh();
      const { r, d, t1 } = await graph(s);
      expect(await s.loadClosure(r, t1 - 1)).toEqual({ records: [], missing: [r], truncated: false });
      expect(await s.loadClosure(d, t1)).toEqual({ records: [], missing: [d], truncated: false });
      expect(await s.loadClosure(123_456, t1)).toEqual({ records: [], missing: [123_456], truncated: false });
    });

    it("loadClosure stops before the record that would pass maxObjects or maxBytes, nearest first", async () => {
      const s = await fresh();
      const { r, a, b, c: cc, t1 } = await graph(s);
      const all = await s.loadClosure(r, t1);
      const two = await s.loadClosure(r, t1, { maxObjects: 2 });
      expect([oidsOf(two.records), two.truncated]).toEqual([[r, a], true]);
      const exact = await s.loadClosure(r, t1, { maxObjects: 4 });
      expect([oidsOf(exact.records), exact.truncated]).toEqual([[r, a, b, cc], false]);
      const bytes = all.records[0]!.data.length + all.records[1]!.data.length;
      const byBytes = await s.loadClosure(r, t1, { maxBytes: bytes + 1 });
      expect([oidsOf(byBytes.records), byBytes.truncated]).toEqual([[r, a], true]);
      const none = await s.loadClosure(r, t1, { maxBytes: 1 });
      expect([none.records, none.truncated]).toEqual([[], true]);
    });

    it("loadClosure walks through objects in `have` without returning them; limits count what is returned", async () => {
      const s = await fresh();
      const { r, a, b, c: cc, t1 } = await graph(s);
      const held = await s.loadClosure(r, t1, { have: [r, a] });
      expect(oidsOf(held.records)).toEqual([b, cc]); // c is reached through a, which is held
      expect(held.missing).toEqual([987_654]);
      const one = await s.loadClosure(r, t1, { have: [r], maxObjects: 1 });
      expect([oidsOf(one.records), one.truncated]).toEqual([[a], true]);
    });

    it("loadClosure rejects limits that are not positive", async () => {
      const s = await fresh();
      const { r, t1 } = await graph(s);
      await expect(s.loadClosure(r, t1, { maxObjects: 0 })).rejects.toThrow(RangeError);
      await expect(s.loadClosure(r, t1, { maxObjects: 1.5 })).rejects.toThrow(RangeError);
      await expect(s.loadClosure(r, t1, { maxBytes: 0 })).rejects.toThrow(RangeError);
      await expect(s.loadClosure(-1, t1)).rejects.toThrow(RangeError);
    });
  });

  part("synchronous access", c.options.skip?.synchronous, () => {
    it("loadSync, newOidsSync and changesSinceSync agree with their async forms", async () => {
      const s = await fresh();
      expect(s.capabilities.synchronous).toBe(true);
      const oids = s.newOidsSync!(3);
      expect(new Set(oids).size).toBe(3);
      expect(oids).not.toContain(0);
      const t1 = await s.finish(request(oids.map((oid) => [oid, 0, `v${oid}`])));
      const t2 = await s.finish(request([[oids[1]!, t1, "changed"]]));
      const probe = [oids[2]!, 424_242, oids[1]!, oids[0]!];
      for (const at of [0, t1, t2]) expect(s.loadSync!(probe, at)).toEqual(await s.load(probe, at));
      expect(s.changesSinceSync!(t1)).toEqual(await s.changesSince(t1));
      expect(s.changesSinceSync!(t1)).toEqual({ tid: t2, oids: [oids[1]] });
      expect(() => s.loadSync!([1], -1)).toThrow(RangeError);
    });

    it("loadOneSync answers as load does: the revision at the snapshot, null before creation or for no object", async () => {
      const s = await fresh();
      const [x] = s.newOidsSync!(1);
      const t1 = await s.finish(request([[x!, 0, "x1"]]));
      const t2 = await s.finish(request([[x!, t1, "x2"]]));
      for (const borrow of [false, true]) {
        for (const at of [t1, t2 - 1, t2, Number.MAX_SAFE_INTEGER]) {
          const one = s.loadOneSync!(x!, at, borrow);
          const [expected] = await s.load([x!], at);
          expect([one?.oid, one?.serial, labelOf(one)], `at ${at}, borrow ${borrow}`).toEqual([x, expected!.serial, labelOf(expected)]);
        }
        expect(s.loadOneSync!(x!, t1 - 1, borrow)).toBeNull();
        expect(s.loadOneSync!(424_242, t2, borrow)).toBeNull();
      }
      expect(() => s.loadOneSync!(-1, t2, true)).toThrow(RangeError);
    });

    it("a record lent by loadOneSync(…, true) does not change until the caller's next call", async () => {
      const s = await fresh();
      const [x, y] = s.newOidsSync!(2);
      const t1 = await s.finish(request([[x!, 0, "x1"], [y!, 0, "y".repeat(3000)]]));
      const t2 = await s.finish(request([[x!, t1, "x2"]]));
      const lent = s.loadOneSync!(x!, t2, true)!;
      const copy = Buffer.from(lent.data);
      expect(labelOf(lent)).toBe("x2");
      await turns(); // timers run, snapshots are let go, the storage is not called
      expect(Buffer.from(lent.data)).toEqual(copy);
      // Lent from an old snapshot (a revision no longer current) too.
      const old = s.loadOneSync!(x!, t1, true)!;
      const oldCopy = Buffer.from(old.data);
      await turns();
      expect([old.serial, Buffer.from(old.data)]).toEqual([t1, oldCopy]);
      expect(labelOf(s.loadOneSync!(y!, t2, true))).toBe("y".repeat(3000));
    });

    it("records from every other read are the caller's: later reads, lending and commits leave them as they were", async () => {
      const s = await fresh();
      const [x, y] = s.newOidsSync!(2);
      const t1 = await s.finish({ records: [{ oid: x!, serial: 0, data: fakeRecord("x1", [y!]) }, { oid: y!, serial: 0, data: fakeRecord("y1") }], readCurrent: [] });
      const t2 = await s.finish(request([[x!, t1, "x2"]]));
      const kept: Array<[string, StoredRecord]> = [
        ["load", (await s.load([x!], t2))[0]!],
        ["loadSync", s.loadSync!([x!], t1)[0]!],
        ["loadOneSync", s.loadOneSync!(x!, t2, false)!],
        ["loadBefore", (await s.loadBefore(x!, t2))!],
        ["history", (await s.history(x!))[0]!],
        ["loadClosure", (await s.loadClosure(x!, t1)).records[1]!],
        ["loadPlan", (await s.loadPlan([{ from: [y!] }], t1)).records[0]!],
      ];
      const copies = kept.map(([, r]) => Buffer.from(r.data));
      for (let i = 0; i < 5; i++) {
        s.loadOneSync!(y!, t1, true);
        s.loadOneSync!(x!, t1, true);
        s.loadSync!([y!, x!], t2);
        await s.load([x!, y!], t2);
      }
      const tids: Tid[] = [t2];
      for (let i = 3; i < 6; i++) tids.push(await s.finish(request([[x!, tids.at(-1)!, `x${i}`]])));
      await turns();
      kept.forEach(([what, r], i) => expect(Buffer.from(r.data), what).toEqual(copies[i]));
    });
  });
}
