/**
 * The storage contract, basics: an empty storage, oids, loads, the change log, bytes kept
 * as given, argument checks, and closing. See contract.ts.
 *
 * @internal
 */
import { StorageError } from "../errors.ts";
import { failureOf, labelOf, request, sorted, type ContractContext } from "./contract-kit.ts";
import { checkStorage, hasSyncAccess, type CommitRequest, type Oid } from "./storage.ts";
import { MAX_NEW_OIDS } from "./validation.ts";

export function basicCases(c: ContractContext): void {
  const { it, expect } = c.t;
  const { fresh, create } = c;

  it("is a complete Storage (checkStorage), with the synchronous members all or none", async () => {
    const s = await fresh();
    checkStorage(s, "contract");
    expect(hasSyncAccess(s)).toBe(s.capabilities.synchronous);
    expect(typeof s.url).toBe("string");
    expect(typeof s.id).toBe("string");
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

  it("load answers one entry per oid, in order, with null for missing oids", async () => {
    const s = await fresh();
    const { oids: [a, b], tid } = await create(s, "a", "b");
    const loaded = await s.load([b!, 999_999, a!, b!, 0], tid);
    expect(loaded.map(labelOf)).toEqual(["b", null, "a", "b", null]);
    expect(await s.load([], tid)).toEqual([]);
    expect((await s.load([a!], Number.MAX_SAFE_INTEGER)).map(labelOf)).toEqual(["a"]);
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
      ["loadClosure", () => s.loadClosure(x!, tid)],
      ["loadPlan", () => s.loadPlan([{ from: [x!] }], tid)],
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
      const err = await failureOf(call());
      expect(err, what).toBeInstanceOf(StorageError);
      expect((err as StorageError).code, what).toBe("closed");
    }
    if (s.loadSync !== undefined) expect(() => s.loadSync!([x!], tid)).toThrow(StorageError);
    if (s.newOidsSync !== undefined) expect(() => s.newOidsSync!(1)).toThrow(/closed/);
    if (s.loadOneSync !== undefined) expect(() => s.loadOneSync!(x!, tid, true)).toThrow(StorageError);
    if (s.changesSinceSync !== undefined) expect(() => s.changesSinceSync!(0)).toThrow(StorageError);
    await s[Symbol.asyncDispose]();
  });
}
