/**
 * The storage contract, history: old revisions (`loadBefore`, `history`, reading every
 * revision at its tid, after ZODB's RevisionStorage and HistoryStorage tests), undo (after
 * TransactionalUndoStorage), and persistence across close and reopen. See contract.ts.
 *
 * @internal
 */
import { ConflictError, StorageError } from "../errors.ts";
import { labelOf, request, sorted, type ContractContext } from "./contract-kit.ts";

export function historyCases(c: ContractContext): void {
  const { it, expect } = c.t;
  const { fresh, create, part } = c;

  part("history: loadBefore and history", c.options.skip?.history, () => {
    it("loadBefore returns the newest revision strictly before a tid", async () => {
      const s = await fresh();
      const { oids: [x], tid: t1 } = await create(s, "v1");
      const t2 = await s.finish(request([[x!, t1, "v2"]]));
      const t3 = await s.finish(request([[x!, t2, "v3"]]));
      expect(labelOf(await s.loadBefore(x!, t3))).toBe("v2");
      expect((await s.loadBefore(x!, t3))!.serial).toBe(t2);
      expect(labelOf(await s.loadBefore(x!, t2))).toBe("v1");
      expect(await s.loadBefore(x!, t1)).toBeNull();
      expect(labelOf(await s.loadBefore(x!, t3 + 1))).toBe("v3");
      expect(await s.loadBefore(123_456, t3)).toBeNull();
    });

    it("history lists revisions newest first, at most limit", async () => {
      const s = await fresh();
      const { oids: [x, other], tid: t1 } = await create(s, "v1", "o1");
      const t2 = await s.finish(request([[x!, t1, "v2"], [other!, t1, "o2"]]));
      const t3 = await s.finish(request([[x!, t2, "v3"]]));
      const all = await s.history(x!);
      expect(all.map((r) => r.serial)).toEqual([t3, t2, t1]);
      expect(all.map(labelOf)).toEqual(["v3", "v2", "v1"]);
      expect(all.every((r) => r.oid === x)).toBe(true);
      expect((await s.history(x!, 2)).map(labelOf)).toEqual(["v3", "v2"]);
      expect((await s.history(x!, 1)).map(labelOf)).toEqual(["v3"]);
      expect(await s.history(777_777)).toEqual([]);
      await expect(s.history(x!, 0)).rejects.toThrow(RangeError);
    });

    it("a snapshot keeps reading its revisions while newer transactions commit", async () => {
      const s = await fresh();
      const { oids, tid: snapshot } = await create(s, "a1", "b1", "c1");
      let tid = snapshot;
      for (let i = 2; i <= 6; i++) {
        tid = await s.finish(request(oids.map((oid, j) => [oid, tid, `${"abc"[j]}${i}`])));
      }
      expect((await s.load(oids, snapshot)).map(labelOf)).toEqual(["a1", "b1", "c1"]);
      expect((await s.load(oids, tid)).map(labelOf)).toEqual(["a6", "b6", "c6"]);
      expect((await s.load(oids, tid - 1)).map(labelOf)).toEqual(["a5", "b5", "c5"]);
    });

    it("every revision is read at its own tid, and loadBefore it gives the one before (checkLoadSerial, consecutive tids)", async () => {
      const s = await fresh();
      const { oids: [x], tid: first } = await create(s, "v0");
      const tids = [first];
      for (let i = 1; i < 7; i++) tids.push(await s.finish(request([[x!, tids[i - 1]!, `v${i}`]])));
      for (let i = 0; i < tids.length; i++) {
        const [at] = await s.load([x!], tids[i]!);
        expect([at?.serial, labelOf(at)]).toEqual([tids[i], `v${i}`]);
        const before = await s.loadBefore(x!, tids[i]!);
        expect(i === 0 ? before : [before?.serial, labelOf(before)]).toEqual(i === 0 ? null : [tids[i - 1], `v${i - 1}`]);
      }
    });

    it("loadBefore an object's creation, or of an object created later, is null (checkLoadBeforeCreation)", async () => {
      const s = await fresh();
      const { tid: t1 } = await create(s, "other");
      const { oids: [y], tid: t2 } = await create(s, "y");
      expect(await s.loadBefore(y!, t2)).toBeNull();
      expect(await s.loadBefore(y!, t1)).toBeNull();
      expect(await s.loadBefore(y!, 0)).toBeNull();
      expect(labelOf(await s.loadBefore(y!, t2 + 1))).toBe("y");
    });
  });

  part("undo", c.options.skip?.undo, () => {
    it("restores the revision before the undone transaction, under a new tid", async () => {
      const s = await fresh();
      const { oids: [x, y], tid: t1 } = await create(s, "x1", "y1");
      const t2 = await s.finish(request([[x!, t1, "x2"], [y!, t1, "y2"]], [], { user: "ann" }));
      const u = await s.undo(t2);
      expect(u).toBeGreaterThan(t2);
      expect(await s.lastTid()).toBe(u);
      const now = await s.load([x!, y!], u);
      expect(now.map(labelOf)).toEqual(["x1", "y1"]);
      expect(now.map((r) => r?.serial)).toEqual([u, u]);
      expect((await s.load([x!], t2)).map(labelOf)).toEqual(["x2"]);
      expect(sorted((await s.transactions(t2))[0]!.oids)).toEqual(sorted([x!, y!]));
      expect(sorted((await s.changesSince(t2)).oids)).toEqual(sorted([x!, y!]));
    });

    it("conflicts when an object was changed after the undone transaction", async () => {
      const s = await fresh();
      const { oids: [x], tid: t1 } = await create(s, "x1");
      const t2 = await s.finish(request([[x!, t1, "x2"]]));
      const t3 = await s.finish(request([[x!, t2, "x3"]]));
      const err = await s.undo(t2).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).serials).toEqual([{ oid: x, read: t2, committed: t3 }]);
      expect(await s.lastTid()).toBe(t3);
      expect(labelOf((await s.load([x!], t3))[0])).toBe("x3");
    });

    // The cases of ZODB's TransactionalUndoStorage tests that apply (amberdb keeps an
    // object whose creation is undone, unreachable, instead of deleting it).

    it("steps back one transaction at a time: undo t3, then t2 (testSimpleTransactionalUndo)", async () => {
      const s = await fresh();
      const { oids: [x, y], tid: t1 } = await create(s, "x23", "y1");
      const t2 = await s.finish(request([[x!, t1, "x24"], [y!, t1, "y2"]]));
      const t3 = await s.finish(request([[x!, t2, "x25"]]));
      const u1 = await s.undo(t3);
      expect(labelOf((await s.load([x!], u1))[0])).toBe("x24");
      // x's current revision is u1's, not t2's: it holds the state t2 wrote, so t2 can go.
      const u2 = await s.undo(t2);
      expect(u2).toBeGreaterThan(u1);
      const now = await s.load([x!, y!], u2);
      expect(now.map(labelOf)).toEqual(["x23", "y1"]);
      expect(now.map((r) => r?.serial)).toEqual([u2, u2]);
      expect((await s.transactions(u1)).map((t) => t.meta)).toEqual([{ undo: String(t2) }]);
      expect((await s.history(x!)).map(labelOf)).toEqual(["x23", "x24", "x25", "x24", "x23"]);
    });

    it("undoes an undo, and the undone transaction again after that (testUndoCreationBranch2)", async () => {
      const s = await fresh();
      const { oids: [x, y], tid: t1 } = await create(s, "x1", "y1");
      const t2 = await s.finish(request([[x!, t1, "x2"], [y!, t1, "y2"]]));
      const u1 = await s.undo(t2);
      const u2 = await s.undo(u1); // redo
      expect((await s.load([x!, y!], u2)).map(labelOf)).toEqual(["x2", "y2"]);
      const u3 = await s.undo(t2); // current states are t2's again (written back by u2)
      expect((await s.load([x!, y!], u3)).map(labelOf)).toEqual(["x1", "y1"]);
      // u3 wrote back the states u1 wrote: u1 can be undone again, restoring what preceded it.
      const u4 = await s.undo(u1);
      expect((await s.load([x!, y!], u4)).map(labelOf)).toEqual(["x2", "y2"]);
    });

    it("undoes the transaction that created an object: the object is left, the references go (testUndoCreationBranch1)", async () => {
      const s = await fresh();
      const { oids: [r], tid: t1 } = await create(s, "r1");
      const [x] = await s.newOids(1);
      const t2 = await s.finish(request([[r!, t1, "r2 -> x"], [x!, 0, "x1"]]));
      const u1 = await s.undo(t2);
      expect(labelOf((await s.load([r!], u1))[0])).toBe("r1");
      const left = (await s.load([x!], u1))[0];
      expect([labelOf(left), left?.serial]).toEqual(["x1", t2]);
      expect((await s.transactions(t2))[0]).toEqual({ tid: u1, oids: [r], meta: { undo: String(t2) } });
      // Undoing that undo brings the reference back to the object, which is still there.
      const u2 = await s.undo(u1);
      expect((await s.load([r!, x!], u2)).map(labelOf)).toEqual(["r2 -> x", "x1"]);
    });

    it("a creation cannot be undone once the object changed, unless an undo wrote it back", async () => {
      const s = await fresh();
      const { oids: [r], tid: t1 } = await create(s, "r1");
      const [x] = await s.newOids(1);
      const t2 = await s.finish(request([[r!, t1, "r2 -> x"], [x!, 0, "x1"]]));
      const t3 = await s.finish(request([[x!, t2, "x2"]]));
      const err = await s.undo(t2).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).serials).toEqual([{ oid: x, read: t2, committed: t3 }]);
      expect(await s.lastTid()).toBe(t3);
      const u1 = await s.undo(t3);
      const u2 = await s.undo(t2);
      expect((await s.load([r!, x!], u2)).map(labelOf)).toEqual(["r1", "x1"]);
      expect(u2).toBeGreaterThan(u1);
    });

    it("conflicts with a later change that is not an undo, even after stepping back (testNotUndoable)", async () => {
      const s = await fresh();
      const { oids: [x, y], tid: t1 } = await create(s, "x1", "y1");
      const t2 = await s.finish(request([[x!, t1, "x2"], [y!, t1, "y2"]]));
      const t3 = await s.finish(request([[x!, t2, "x3"]]));
      const u1 = await s.undo(t3);
      const t4 = await s.finish(request([[x!, u1, "x4"]]));
      for (const tid of [t2, u1]) {
        const err = await s.undo(tid).catch((e: unknown) => e);
        expect(err, `undo ${tid}`).toBeInstanceOf(ConflictError);
        // Only x conflicts (y still holds t2's state), and nothing is written.
        expect((err as ConflictError).serials, `undo ${tid}`).toEqual([{ oid: x, read: tid, committed: t4 }]);
      }
      expect(await s.lastTid()).toBe(t4);
      expect((await s.load([x!, y!], t4)).map(labelOf)).toEqual(["x4", "y2"]);
    });

    it("compares states, not serials: a later change back to the undone transaction's state does not conflict", async () => {
      const s = await fresh();
      const { oids: [x], tid: t1 } = await create(s, "x1");
      const t2 = await s.finish(request([[x!, t1, "x2"]]));
      const t3 = await s.finish(request([[x!, t2, "x3"]]));
      const t4 = await s.finish(request([[x!, t3, "x2"]]));
      const u = await s.undo(t2);
      expect(u).toBeGreaterThan(t4);
      expect(labelOf((await s.load([x!], u))[0])).toBe("x1");
    });

    it("rejects a tid that is not a transaction", async () => {
      const s = await fresh();
      const { tid } = await create(s, "x");
      await expect(s.undo(tid + 1)).rejects.toBeInstanceOf(StorageError);
      await expect(s.undo(-1)).rejects.toThrow(RangeError);
    });

    it("loadBefore the undo gives the undone revision; the undo's own revision restores the one before (checkLoadBeforeUndo)", async () => {
      const s = await fresh();
      const { oids: [x], tid: t1 } = await create(s, "x1");
      const t2 = await s.finish(request([[x!, t1, "x2"]]));
      const u = await s.undo(t2);
      const before = await s.loadBefore(x!, u);
      expect([before?.serial, labelOf(before)]).toEqual([t2, "x2"]);
      const [now] = await s.load([x!], u);
      expect([now?.serial, labelOf(now)]).toEqual([u, "x1"]);
      expect(sorted((await s.changesSince(t2)).oids)).toEqual([x]);
    });
  });

  part("persistence", c.options.reopen === undefined ? "no reopen given" : undefined, () => {
    it("keeps records, history, transactions and the oid counter across close and reopen", async () => {
      const s = await fresh();
      const { oids: [x, y], tid: t1 } = await create(s, "x1", "y1");
      const t2 = await s.finish(request([[x!, t1, "x2"]], [], { user: "ann" }));
      const handedOut = await s.newOids(5);
      await s.close();
      const again = c.track(await c.options.reopen!(s));
      expect(again.id).toBe(s.id);
      expect(await again.lastTid()).toBe(t2);
      expect((await again.load([x!, y!], t2)).map(labelOf)).toEqual(["x2", "y1"]);
      expect((await again.load([x!], t1)).map(labelOf)).toEqual(["x1"]);
      expect(await again.transactions()).toEqual([
        { tid: t2, oids: [x], meta: { user: "ann" } },
        { tid: t1, oids: [x, y], meta: {} },
      ]);
      const next = await again.newOids(10);
      for (const oid of [x!, y!, ...handedOut]) expect(next).not.toContain(oid);
      const t3 = await again.finish(request([[x!, t2, "x3"]]));
      expect(t3).toBeGreaterThan(t2);
    });
  });
}
