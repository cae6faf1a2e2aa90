/**
 * The contract every storage passes: one suite, run by each storage's test file with a
 * factory for fresh, empty storages. Every operation of the interface is exercised through
 * its public API only. A storage that cannot do something declares it in `skip` with the
 * reason, so an opt-out is visible in the test report rather than silent.
 *
 * Usage (in a `*.test.ts`):  storageContract("memory", async () => new MemoryStorage());
 */
import { afterEach, describe, expect, it } from "vitest";
import { FanOut, readEnvelope, writeEnvelope } from "../codec/record.ts";
import { ConflictError, StorageError } from "../errors.ts";
import type { CommitRequest, Oid, Storage, StoredRecord, Tid } from "./storage.ts";
import { MAX_NEW_OIDS } from "./validation.ts";

/** Parts of the contract a storage may opt out of, each with its reason. */
export type ContractPart = "history" | "undo" | "synchronous";

export interface ContractOptions {
  /** Open the same data again after `closed` was closed; enables the persistence tests. */
  reopen?: (closed: Storage) => Promise<Storage>;
  skip?: Partial<Record<ContractPart, string>>;
}

/** Realistic record bytes: an envelope whose state is the UTF-8 of `label`. */
export function fakeRecord(label: string, refOids: Oid[] = []): Uint8Array {
  return writeEnvelope({
    className: "T",
    classVersion: 0,
    refOids,
    refPaths: refOids.map((_, i) => `ref${i}`),
    refClasses: refOids.map(() => "T"),
    state: new TextEncoder().encode(label),
  });
}

/** The label of a record built by `fakeRecord`, or null for a missing one. */
export function labelOf(record: StoredRecord | null | undefined): string | null {
  if (record === null || record === undefined) return null;
  return new TextDecoder().decode(readEnvelope(record.data, record.oid).state);
}

function request(
  records: Array<[Oid, Tid, string]>,
  readCurrent: Array<[Oid, Tid]> = [],
  meta?: Record<string, string>,
): CommitRequest {
  return {
    records: records.map(([oid, serial, label]) => ({ oid, serial, data: fakeRecord(label) })),
    readCurrent: readCurrent.map(([oid, serial]) => ({ oid, serial })),
    ...(meta === undefined ? {} : { meta }),
  };
}

const sorted = (oids: readonly Oid[] | null): Oid[] | null => (oids === null ? null : [...oids].sort((a, b) => a - b));

export function storageContract(name: string, open: () => Promise<Storage>, options: ContractOptions = {}): void {
  const opened: Storage[] = [];
  const fresh = async (): Promise<Storage> => {
    const s = await open();
    opened.push(s);
    return s;
  };
  /** Create objects with the given labels in one transaction: their oids and its tid. */
  const create = async (s: Storage, ...labels: string[]): Promise<{ oids: Oid[]; tid: Tid }> => {
    const oids = await s.newOids(labels.length);
    const tid = await s.finish(request(oids.map((oid, i) => [oid, 0, labels[i]!])));
    return { oids, tid };
  };
  const part = (p: ContractPart, title: string, body: () => void): void => {
    const reason = options.skip?.[p];
    if (reason === undefined) describe(title, body);
    else describe.skip(`${title} (skipped: ${reason})`, body);
  };

  describe(`storage contract: ${name}`, () => {
    afterEach(async () => {
      for (const s of opened.splice(0)) await s.close();
    });

    it("an empty storage has lastTid 0, no objects and no transactions", async () => {
      const s = await fresh();
      expect(await s.lastTid()).toBe(0);
      expect(await s.load([0, 1, 7], 0)).toEqual([null, null, null]);
      expect(await s.load([0], Number.MAX_SAFE_INTEGER)).toEqual([null]);
      expect(await s.changesSince(0)).toEqual({ tid: 0, oids: [] });
      expect(await s.transactions()).toEqual([]);
    });

    it("newOids hands out unique oids, never the root oid 0", async () => {
      const s = await fresh();
      const all: Oid[] = [];
      for (let i = 0; i < 30; i++) all.push(...(await s.newOids(1)));
      all.push(...(await s.newOids(2500)));
      all.push(...(await s.newOids(3)));
      expect(all).toHaveLength(2533);
      expect(new Set(all).size).toBe(all.length);
      expect(all).not.toContain(0);
      for (const oid of all) expect(Number.isSafeInteger(oid) && oid > 0).toBe(true);
    });

    it("newOids rejects a count that is not a positive integer", async () => {
      const s = await fresh();
      await expect(s.newOids(0)).rejects.toThrow(RangeError);
      await expect(s.newOids(-2)).rejects.toThrow(/positive integer/);
      await expect(s.newOids(1.5)).rejects.toThrow(RangeError);
      await expect(s.newOids("3" as unknown as number)).rejects.toThrow(TypeError);
      await expect(s.newOids(MAX_NEW_OIDS + 1)).rejects.toThrow(RangeError); // bounded: one request cannot exhaust memory
    });

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

    it("load answers one entry per oid, in order, with null for missing oids", async () => {
      const s = await fresh();
      const { oids: [a, b], tid } = await create(s, "a", "b");
      const loaded = await s.load([b!, 999_999, a!, b!, 0], tid);
      expect(loaded.map(labelOf)).toEqual(["b", null, "a", "b", null]);
      expect(await s.load([], tid)).toEqual([]);
      expect((await s.load([a!], Number.MAX_SAFE_INTEGER)).map(labelOf)).toEqual(["a"]);
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

    it("changesSince lists exactly the oids written after a tid", async () => {
      const s = await fresh();
      const { oids: [a, b], tid: t1 } = await create(s, "a", "b");
      const { oids: [c], tid: t2 } = await create(s, "c");
      const t3 = await s.finish(request([[a!, t1, "a2"]]));
      expect(sorted((await s.changesSince(t1)).oids)).toEqual(sorted([a!, c!]));
      expect((await s.changesSince(t1)).tid).toBe(t3);
      expect(await s.changesSince(t2)).toEqual({ tid: t3, oids: [a] });
      expect(await s.changesSince(t3)).toEqual({ tid: t3, oids: [] });
      expect(sorted((await s.changesSince(0)).oids)).toEqual(sorted([a!, b!, c!]));
    });

    it("transactions() lists newest first with their oids and metadata", async () => {
      const s = await fresh();
      const [x, y] = await s.newOids(2);
      const t1 = await s.finish(request([[x!, 0, "x"]], [], { user: "ann", description: "first" }));
      const t2 = await s.finish(request([[y!, 0, "y"], [x!, t1, "x2"]], [], { user: "bob" }));
      const t3 = await s.finish(request([[y!, t2, "y2"]]));
      const all = await s.transactions();
      expect(all.map((t) => t.tid)).toEqual([t3, t2, t1]);
      expect(all[2]).toEqual({ tid: t1, oids: [x], meta: { user: "ann", description: "first" } });
      expect(sorted(all[1]!.oids)).toEqual(sorted([x!, y!]));
      expect(all[1]!.meta).toEqual({ user: "bob" });
      expect(all[0]!.meta).toEqual({});
      expect((await s.transactions(t1)).map((t) => t.tid)).toEqual([t3, t2]);
      expect((await s.transactions(0, 1)).map((t) => t.tid)).toEqual([t3]);
      expect(await s.transactions(t3)).toEqual([]);
    });

    it("copies bytes: changing a committed or loaded buffer changes nothing stored", async () => {
      const s = await fresh();
      const [x] = await s.newOids(1);
      const req = request([[x!, 0, "kept"]]);
      const tid = await s.finish(req);
      req.records[0]!.data.fill(0);
      const first = (await s.load([x!], tid))[0]!;
      first.data.fill(0);
      expect(labelOf((await s.load([x!], tid))[0])).toBe("kept");
    });

    it("stores and loads large records byte for byte", async () => {
      const s = await fresh();
      const [big, small] = await s.newOids(2);
      const label = Array.from({ length: 4 << 20 }, (_, i) => String.fromCharCode(97 + (i % 26))).join("");
      const t1 = await s.finish(request([[big!, 0, label], [small!, 0, "s"]]));
      const t2 = await s.finish(request([[big!, t1, `${label}!`]]));
      const loaded = await s.load([big!, small!, big!], t2);
      expect(loaded.map((r) => labelOf(r)?.length)).toEqual([label.length + 1, 1, label.length + 1]);
      expect(labelOf(loaded[0])).toBe(`${label}!`);
      expect(labelOf((await s.load([big!], t1))[0])).toBe(label);
    });

    it("rejects malformed arguments with TypeError or RangeError", async () => {
      const s = await fresh();
      await expect(s.load("1" as unknown as Oid[], 0)).rejects.toThrow(TypeError);
      await expect(s.load([-1], 0)).rejects.toThrow(RangeError);
      await expect(s.load([1], -5)).rejects.toThrow(/at must be/);
      await expect(s.changesSince(Number.NaN)).rejects.toThrow(RangeError);
      const bad = { records: [{ oid: 1, serial: 0, data: "x" }], readCurrent: [] } as unknown as CommitRequest;
      await expect(s.finish(bad)).rejects.toThrow(/data must be a Uint8Array/);
      const twice = request([[5, 0, "a"], [5, 0, "b"]]);
      await expect(s.vote(twice)).rejects.toThrow(/twice/);
      await expect(s.finish(twice)).rejects.toThrow(RangeError);
      expect(await s.lastTid()).toBe(0);
    });

    it("after close every operation rejects with StorageError code 'closed'; close is idempotent", async () => {
      const s = await fresh();
      const { oids: [x], tid } = await create(s, "x");
      await s.close();
      await s.close();
      const req = request([[x!, tid, "y"]]);
      const calls: Array<[string, () => Promise<unknown>]> = [
        ["lastTid", () => s.lastTid()],
        ["load", () => s.load([x!], tid)],
        ["loadBefore", () => s.loadBefore(x!, tid)],
        ["history", () => s.history(x!)],
        ["newOids", () => s.newOids(1)],
        ["vote", () => s.vote(req)],
        ["finish", () => s.finish(req)],
        ["abort", () => s.abort(req)],
        ["changesSince", () => s.changesSince(0)],
        ["transactions", () => s.transactions()],
        ["undo", () => s.undo(tid)],
      ];
      for (const [what, call] of calls) {
        const err = await call().then(() => undefined, (e: unknown) => e);
        expect(err, what).toBeInstanceOf(StorageError);
        expect((err as StorageError).code, what).toBe("closed");
      }
      if (s.loadSync !== undefined) expect(() => s.loadSync!([x!], tid)).toThrow(StorageError);
      if (s.newOidsSync !== undefined) expect(() => s.newOidsSync!(1)).toThrow(/closed/);
      await s[Symbol.asyncDispose]();
    });

    part("history", "history: loadBefore and history", () => {
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
    });

    part("undo", "undo", () => {
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
    });

    part("synchronous", "synchronous access", () => {
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
    });

    describe.skipIf(options.reopen === undefined)(
      `persistence${options.reopen === undefined ? " (skipped: no reopen given)" : ""}`,
      () => {
        it("keeps records, history, transactions and the oid counter across close and reopen", async () => {
          const s = await fresh();
          const { oids: [x, y], tid: t1 } = await create(s, "x1", "y1");
          const t2 = await s.finish(request([[x!, t1, "x2"]], [], { user: "ann" }));
          const handedOut = await s.newOids(5);
          await s.close();
          const again = await options.reopen!(s);
          opened.push(again);
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
      },
    );
  });
}
