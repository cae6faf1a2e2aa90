/**
 * The storage contract, commits: two-phase commit and its protocol (vote, finish, abort,
 * finish without vote), conflicts (stale serials, creations, readCurrent), commits in
 * flight at once, several instances on one store, and conflicts merged inside finish
 * (`resolve`). After ZODB's BasicStorage, MTStorage and ConflictResolution tests, where
 * amberdb has the feature. See contract.ts.
 *
 * @internal
 */
import { ConflictError } from "../errors.ts";
import { failureOf, fakeRecord, labelOf, request, sorted, type ContractContext } from "./contract-kit.ts";
import type { CommitRequest, StorageConflict, Tid } from "./storage.ts";

export function commitCases(c: ContractContext): void {
  const { describe, it, expect } = c.t;
  const { fresh, create, part } = c;
  const newest = Number.MAX_SAFE_INTEGER;

  describe("commits", () => {
    it("commits new records: visible at the new tid, absent at the tid before", async () => {
      const s = await fresh();
      const oids = await s.newOids(2);
      const req = request([[oids[0]!, 0, "a"], [oids[1]!, 0, "b"]]);
      expect(await s.vote(req)).toEqual([]);
      const tid = await s.finish(req);
      expect(tid).toBeGreaterThan(0);
      expect(await s.lastTid()).toBe(tid);
      const loaded = await s.load(oids, tid);
      expect(loaded.map(labelOf)).toEqual(["a", "b"]);
      expect(loaded.map((r) => r?.serial)).toEqual([tid, tid]);
      expect(loaded.map((r) => r?.oid)).toEqual(oids);
      expect(Buffer.from(loaded[0]!.data)).toEqual(Buffer.from(req.records[0]!.data));
      expect(await s.load(oids, tid - 1)).toEqual([null, null]);
      expect(await s.load(oids, 0)).toEqual([null, null]);
    });

    it("updates with the serial read, keeping the old revision at the old snapshot", async () => {
      const s = await fresh();
      const { oids: [x], tid: t1 } = await create(s, "x1");
      const t2 = await s.finish(request([[x!, t1, "x2"]]));
      const t3 = await s.finish(request([[x!, t2, "x3"]]));
      expect(t2).toBeGreaterThan(t1);
      expect(t3).toBeGreaterThan(t2);
      expect((await s.load([x!], t3))[0]).toMatchObject({ oid: x, serial: t3 });
      expect(labelOf((await s.load([x!], t3))[0])).toBe("x3");
      expect(labelOf((await s.load([x!], t2))[0])).toBe("x2");
      expect(labelOf((await s.load([x!], t3 - 1))[0])).toBe("x2");
      expect(labelOf((await s.load([x!], t1))[0])).toBe("x1");
      expect((await s.load([x!], t1))[0]!.serial).toBe(t1);
    });

    it("a stale serial is a conflict: vote reports it, finish raises and writes nothing", async () => {
      const s = await fresh();
      const { oids: [x], tid: t1 } = await create(s, "x1");
      const t2 = await s.finish(request([[x!, t1, "x2"]]));
      const stale = request([[x!, t1, "mine"]]);
      const conflicts = await s.vote(stale);
      expect(conflicts).toHaveLength(1);
      expect(conflicts[0]).toMatchObject({ oid: x, readSerial: t1, committedSerial: t2, readOnly: false });
      expect(labelOf({ oid: x!, serial: t2, data: conflicts[0]!.committedData! })).toBe("x2");
      const err = await s.finish(stale).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).oids).toEqual([x]);
      expect((err as ConflictError).serials).toEqual([{ oid: x, read: t1, committed: t2 }]);
      expect(await s.lastTid()).toBe(t2);
      expect(labelOf((await s.load([x!], Number.MAX_SAFE_INTEGER))[0])).toBe("x2");
    });

    it("a transaction with one good and one stale record writes neither", async () => {
      const s = await fresh();
      const { oids: [good, bad], tid: t1 } = await create(s, "g1", "b1");
      const t2 = await s.finish(request([[bad!, t1, "b2"]]));
      const err = await s.finish(request([[good!, t1, "g-mine"], [bad!, t1, "b-mine"]])).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).oids).toEqual([bad]);
      expect(await s.lastTid()).toBe(t2);
      expect((await s.load([good!, bad!], Number.MAX_SAFE_INTEGER)).map(labelOf)).toEqual(["g1", "b2"]);
      expect(await s.changesSince(t2)).toEqual({ tid: t2, oids: [] });
      expect((await s.transactions()).map((t) => t.tid)).toEqual([t2, t1]);
    });

    it("creating an object that exists, or updating one that does not, conflicts", async () => {
      const s = await fresh();
      const { oids: [x], tid } = await create(s, "x1");
      const [missing] = await s.newOids(1);
      const conflicts = await s.vote(request([[x!, 0, "again"], [missing!, tid, "ghost"]]));
      expect(conflicts).toHaveLength(2);
      expect(conflicts[0]).toMatchObject({ oid: x, readSerial: 0, committedSerial: tid, readOnly: false });
      expect(conflicts[1]).toEqual({ oid: missing, readSerial: tid, committedSerial: 0, committedData: null, readOnly: false });
      await expect(s.finish(request([[missing!, tid, "ghost"]]))).rejects.toBeInstanceOf(ConflictError);
      expect(await s.load([missing!], Number.MAX_SAFE_INTEGER)).toEqual([null]);
    });

    it("readCurrent entries conflict when changed since, and are not written", async () => {
      const s = await fresh();
      const { oids: [r, w], tid: t1 } = await create(s, "r1", "w1");
      const t2 = await s.finish(request([[w!, t1, "w2"]], [[r!, t1]]));
      expect((await s.load([r!], t2))[0]!.serial).toBe(t1);
      const t3 = await s.finish(request([[r!, t1, "r2"]]));
      const req = request([[w!, t2, "w3"]], [[r!, t1]]);
      const conflicts = await s.vote(req);
      expect(conflicts).toHaveLength(1);
      expect(conflicts[0]).toMatchObject({ oid: r, readSerial: t1, committedSerial: t3, readOnly: true });
      expect(labelOf({ oid: r!, serial: t3, data: conflicts[0]!.committedData! })).toBe("r2");
      const err = await s.finish(req).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).conflicts[0]).toMatchObject({ oid: r, readOnly: true });
      expect(labelOf((await s.load([w!], Number.MAX_SAFE_INTEGER))[0])).toBe("w2");
    });

    it("tids increase strictly, even for commits in quick succession", async () => {
      const s = await fresh();
      const { oids: [x], tid } = await create(s, "0");
      const tids = [tid];
      for (let i = 1; i <= 25; i++) tids.push(await s.finish(request([[x!, tids[i - 1]!, String(i)]])));
      for (let i = 1; i < tids.length; i++) expect(tids[i]).toBeGreaterThan(tids[i - 1]!);
      expect(await s.lastTid()).toBe(tids.at(-1));
    });

    it("abort releases a voted transaction and writes nothing", async () => {
      const s = await fresh();
      const { oids: [x], tid } = await create(s, "x1");
      const req = request([[x!, tid, "x2"]]);
      expect(await s.vote(req)).toEqual([]);
      await s.abort(req);
      expect(await s.lastTid()).toBe(tid);
      expect(labelOf((await s.load([x!], Number.MAX_SAFE_INTEGER))[0])).toBe("x1");
      expect(await s.finish(req)).toBeGreaterThan(tid);
    });

    it("finish without a vote checks and commits; abort without a vote, or twice, does nothing", async () => {
      const s = await fresh();
      const { oids: [x], tid: t1 } = await create(s, "x1");
      const unvoted = request([[x!, t1, "x2"]]);
      await s.abort(unvoted);
      await s.abort(unvoted);
      expect(await s.lastTid()).toBe(t1);
      const t2 = await s.finish(unvoted);
      expect(labelOf((await s.load([x!], t2))[0])).toBe("x2");
      await expect(s.finish(request([[x!, t1, "again"]]))).rejects.toBeInstanceOf(ConflictError);
    });

    it("after a voted transaction is aborted, others commit as usual (checkAbortAfterVote)", async () => {
      const s = await fresh();
      const { oids: [a], tid: t1 } = await create(s, "a");
      const [b] = await s.newOids(1);
      const given = request([[b!, 0, "b-aborted"], [a!, t1, "a-aborted"]]);
      expect(await s.vote(given)).toEqual([]);
      await s.abort(given);
      const { oids: [d], tid: t2 } = await create(s, "d");
      const t3 = await s.finish(request([[a!, t1, "a2"]]));
      expect((await s.load([a!, b!, d!], t3)).map(labelOf)).toEqual(["a2", null, "d"]);
      expect((await s.load([a!, d!], t3)).map((r) => r?.serial)).toEqual([t3, t2]);
      expect((await s.transactions()).map((t) => t.tid)).toEqual([t3, t2, t1]);
    });

    it("of two transactions voted on one object, the first finish wins and the second raises", async () => {
      const s = await fresh();
      const { oids: [x], tid: t1 } = await create(s, "x1");
      const first = request([[x!, t1, "first"]]);
      const second = request([[x!, t1, "second"]]);
      expect(await s.vote(first)).toEqual([]);
      expect(await s.vote(second)).toEqual([]);
      const t2 = await s.finish(first);
      const err = await failureOf(s.finish(second));
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).serials).toEqual([{ oid: x, read: t1, committed: t2 }]);
      await s.abort(second);
      expect(labelOf((await s.load([x!], newest))[0])).toBe("first");
      expect(await s.lastTid()).toBe(t2);
    });

    it("commits in flight at once: disjoint ones all commit; of those changing one object from one serial, exactly one", async () => {
      const s = await fresh();
      const oids = await s.newOids(6);
      const tids = await Promise.all(oids.map((oid) => s.finish(request([[oid, 0, `o${oid}`]]))));
      expect(new Set(tids).size).toBe(oids.length);
      expect(sorted((await s.transactions()).map((t) => t.tid))).toEqual(sorted(tids));
      expect((await s.load(oids, Math.max(...tids))).map(labelOf)).toEqual(oids.map((oid) => `o${oid}`));
      const x = oids[0]!;
      const read = tids[0]!;
      const racers = Array.from({ length: 5 }, (_, i) => s.finish(request([[x, read, `racer${i}`]])));
      const outcomes = await Promise.allSettled(racers);
      const won = outcomes.flatMap((o, i) => (o.status === "fulfilled" ? [{ i, tid: o.value }] : []));
      expect(won).toHaveLength(1);
      for (const o of outcomes) if (o.status === "rejected") expect(o.reason).toBeInstanceOf(ConflictError);
      const [now] = await s.load([x], newest);
      expect([labelOf(now), now?.serial]).toEqual([`racer${won[0]!.i}`, won[0]!.tid]);
    });

    it("reads at a snapshot made while commits are in flight see that snapshot", async () => {
      const s = await fresh();
      const { oids: [x, y], tid: t1 } = await create(s, "x1", "y1");
      const [before, t2, after] = await Promise.all([
        s.load([x!, y!], t1),
        s.finish(request([[x!, t1, "x2"], [y!, t1, "y2"]])),
        s.load([x!, y!], t1),
      ]);
      expect(before.map(labelOf)).toEqual(["x1", "y1"]);
      expect(after.map(labelOf)).toEqual(["x1", "y1"]);
      expect((await s.load([x!, y!], t2)).map(labelOf)).toEqual(["x2", "y2"]);
      // A tid handed out is readable at once, and lastTid has reached it (check_tid_ordering_w_commit).
      expect(await s.lastTid()).toBeGreaterThanOrEqual(t2);
    });

    it("readCurrent objects are checked by finish too, and a conflict there writes nothing", async () => {
      const s = await fresh();
      const { oids: [r, w], tid: t1 } = await create(s, "r1", "w1");
      const req = request([[w!, t1, "w2"]], [[r!, t1]]);
      expect(await s.vote(req)).toEqual([]);
      const t2 = await s.finish(request([[r!, t1, "r2"]])); // between the vote and the finish
      const err = await failureOf(s.finish(req));
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).conflicts).toMatchObject([{ oid: r, readSerial: t1, committedSerial: t2, readOnly: true }]);
      expect(labelOf((await s.load([w!], newest))[0])).toBe("w1");
    });
  });

  part("several instances on one store", c.options.openAgain === undefined ? "no openAgain given" : undefined, () => {
    it("a second instance sees the first one's commits at once, conflicts with them, and hands out other oids", async () => {
      const a = await fresh();
      const b = c.track(await c.options.openAgain!(a));
      expect(b.id).toBe(a.id);
      const { oids: [x], tid: t1 } = await create(a, "x1");
      expect(await b.lastTid()).toBe(t1);
      expect(labelOf((await b.load([x!], t1))[0])).toBe("x1");
      const t2 = await b.finish(request([[x!, t1, "x2"]]));
      expect(await a.changesSince(t1)).toEqual({ tid: t2, oids: [x] });
      expect(labelOf((await a.load([x!], t2))[0])).toBe("x2");
      const stale = request([[x!, t1, "mine"]]);
      expect(await a.vote(stale)).toMatchObject([{ oid: x, readSerial: t1, committedSerial: t2 }]);
      await expect(a.finish(stale)).rejects.toBeInstanceOf(ConflictError);
      const fromA = await a.newOids(50);
      const fromB = await b.newOids(50);
      expect(new Set([...fromA, ...fromB, x!]).size).toBe(101);
    });
  });

  part("conflicts merged inside finish (resolve)", c.options.skip?.resolveInFinish, () => {
    /** x and y at t1, a transaction that voted clean on both, then another commit to x (t2). */
    const overtaken = async () => {
      const s = await fresh();
      const { oids: [x, y], tid: t1 } = await create(s, "x1", "y1");
      const mine = request([[x!, t1, "x-mine"], [y!, t1, "y-mine"]], [], { user: "ann" });
      expect(await s.vote(mine)).toEqual([]);
      const t2 = await s.finish(request([[x!, t1, "x-theirs"]]));
      return { s, x: x!, y: y!, t1, t2, mine };
    };

    it("a conflict that appears at finish goes to resolve; the merged request is written atomically", async () => {
      const { s, x, y, t1, t2, mine } = await overtaken();
      const seen: StorageConflict[][] = [];
      const t3 = await s.finish(mine, (conflicts) => {
        seen.push(conflicts);
        return {
          records: [
            { oid: x, serial: conflicts[0]!.committedSerial, data: fakeRecord(`merged ${labelOf({ oid: x, serial: t2, data: conflicts[0]!.committedData! })}`) },
            mine.records[1]!,
          ],
          readCurrent: [],
          meta: mine.meta!,
        };
      });
      expect(seen).toHaveLength(1);
      expect(seen[0]).toMatchObject([{ oid: x, readSerial: t1, committedSerial: t2, readOnly: false }]);
      expect(t3).toBeGreaterThan(t2);
      const now = await s.load([x, y], t3);
      expect(now.map(labelOf)).toEqual(["merged x-theirs", "y-mine"]);
      expect(now.map((r) => r?.serial)).toEqual([t3, t3]);
      expect(await s.transactions(t2)).toMatchObject([{ tid: t3, meta: { user: "ann" } }]);
      expect(sorted((await s.transactions(t2))[0]!.oids)).toEqual(sorted([x, y]));
    });

    it("resolve is not called when nothing conflicts", async () => {
      const s = await fresh();
      const { oids: [x], tid: t1 } = await create(s, "x1");
      let calls = 0;
      const t2 = await s.finish(request([[x!, t1, "x2"]]), () => {
        calls++;
        return null;
      });
      expect(calls).toBe(0);
      expect(labelOf((await s.load([x!], t2))[0])).toBe("x2");
    });

    it("resolve returning null: ConflictError, and nothing is written", async () => {
      const { s, x, y, t1, t2, mine } = await overtaken();
      const err = await failureOf(s.finish(mine, () => null));
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).serials).toEqual([{ oid: x, read: t1, committed: t2 }]);
      expect(await s.lastTid()).toBe(t2);
      expect((await s.load([x, y], newest)).map(labelOf)).toEqual(["x-theirs", "y1"]);
    });

    it("a merged request that still conflicts goes back to resolve, a bounded number of times, then ConflictError", async () => {
      const { s, x, y, t2, mine } = await overtaken();
      let calls = 0;
      const err = await failureOf(
        s.finish(mine, (conflicts) => {
          calls++;
          expect(conflicts.map((k) => k.oid)).toEqual([x]);
          return mine; // still reads t1: conflicts again
        }),
      );
      expect(err).toBeInstanceOf(ConflictError);
      expect(calls).toBeGreaterThanOrEqual(1);
      expect(calls).toBeLessThanOrEqual(16);
      expect(await s.lastTid()).toBe(t2);
      expect((await s.load([x, y], newest)).map(labelOf)).toEqual(["x-theirs", "y1"]);
    });

    it("what resolve throws, finish throws, and nothing is written", async () => {
      const { s, x, y, t2, mine } = await overtaken();
      const boom = new Error("the merge failed");
      await expect(
        s.finish(mine, () => {
          throw boom;
        }),
      ).rejects.toThrow("the merge failed");
      expect(await s.lastTid()).toBe(t2);
      expect((await s.load([x, y], newest)).map(labelOf)).toEqual(["x-theirs", "y1"]);
    });

    it("readCurrent conflicts go to resolve too (readOnly), and a malformed merge is refused", async () => {
      const s = await fresh();
      const { oids: [r, w], tid: t1 } = await create(s, "r1", "w1");
      const req = request([[w!, t1, "w2"]], [[r!, t1]]);
      const t2 = await s.finish(request([[r!, t1, "r2"]]));
      const merged = (serial: Tid): CommitRequest => ({ records: req.records, readCurrent: [{ oid: r!, serial }] });
      let seen: StorageConflict[] = [];
      const t3 = await s.finish(req, (conflicts) => {
        seen = conflicts;
        return merged(conflicts[0]!.committedSerial);
      });
      expect(seen).toMatchObject([{ oid: r, readSerial: t1, committedSerial: t2, readOnly: true }]);
      expect((await s.load([r!, w!], t3)).map(labelOf)).toEqual(["r2", "w2"]);
      const bad = { records: [{ oid: w!, serial: t3, data: "not bytes" }], readCurrent: [] } as unknown as CommitRequest;
      await expect(s.finish(request([[w!, t2, "w3"]]), () => bad)).rejects.toThrow(TypeError);
      expect(await s.lastTid()).toBe(t3);
    });
  });
}
