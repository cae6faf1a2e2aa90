/**
 * Review: behaviour checked during the review that is correct today (these must pass).
 * Runs on the memory and the embedded storage.
 */
import { afterAll, describe, expect, it } from "vitest";
import {
  ConflictError,
  DB,
  Persistent,
  PersistentMap,
  markChanged,
  oidOf,
  ObjectNotFoundError,
  registerClass,
  stateOf,
} from "../src/index.ts";
import { cleanupDirs, storages } from "./helpers.ts";

class Pv extends Persistent {
  [k: string]: any;
}
registerClass(Pv, "review.passing.Pv");
class PvSub extends Pv {}
class Temp extends Persistent {
  celsius = 0;
  get fahrenheit(): number {
    return (this.celsius * 9) / 5 + 32;
  }
  set fahrenheit(f: number) {
    this.celsius = ((f - 32) * 5) / 9;
  }
  warm(): boolean {
    return this.celsius > 20;
  }
}
registerClass(Temp, "review.passing.Temp");
class Holder {
  items: unknown[] = [];
}
registerClass(Holder, "review.passing.Holder");

afterAll(cleanupDirs);

const make = (fields: Record<string, unknown>): Pv => Object.assign(new Pv(), fields);

describe.each(storages)("review: correct behaviour on $name", ({ url }) => {
  const withDB = async (fn: (db: DB) => Promise<void>) => {
    const db = await DB.open(url(), { durability: "relaxed" });
    try {
      await fn(db);
    } finally {
      await db.close();
    }
  };
  const reread = (db: DB) => db.open({ cacheSize: 10_000 });

  it("keeps changed objects through eviction, and commits changes to objects evicted and reloaded", () =>
    withDB(async (db) => {
      await db.transact((root) => {
        for (let i = 0; i < 30; i++) root.set(`p${i}`, make({ v: 0, tags: [] }));
      });
      const conn = db.open({ cacheSize: 3 });
      const root = conn.root();
      const p0 = root.get("p0");
      const p1 = root.get("p1");
      const p2 = root.get("p2");
      p0.v = 1; // top-level change
      p1.tags.push("n"); // nested change
      void p2.v;
      for (let i = 3; i < 30; i++) void root.get(`p${i}`).v;
      // Mid-transaction, changed objects and objects that handed out a nested container in
      // this transaction are not evicted; others are, nested containers or not.
      expect([stateOf(p0), stateOf(p1), stateOf(p2)]).toEqual(["changed", "changed", "ghost"]);
      conn.cacheGC();
      expect([stateOf(p0), stateOf(p1), stateOf(p2)]).toEqual(["changed", "changed", "ghost"]);
      p2.v = 7; // reloads, then changes
      await conn.commit();
      const check = reread(db);
      expect([check.root().get("p0").v, check.root().get("p1").tags, check.root().get("p2").v]).toEqual([1, ["n"], 7]);
    }));

  it("aborts after a ConflictError, reloads the other commit's state, and the retry commits", () =>
    withDB(async (db) => {
      await db.transact((root) => root.set("a", make({ v: [1] })));
      const c1 = db.open({ cacheSize: 100 });
      const c2 = db.open({ cacheSize: 100 });
      const a1 = c1.root().get("a");
      c1.root().get("a").v.push(2);
      c2.root().get("a").v.push(3);
      await c2.commit();
      await expect(c1.commit()).rejects.toBeInstanceOf(ConflictError);
      c1.abort();
      expect(stateOf(a1)).toBe("ghost");
      expect(a1.v).toEqual([1, 3]);
      a1.v.push(4);
      await c1.commit();
      expect(reread(db).root().get("a").v).toEqual([1, 3, 4]);
    }));

  it("stores new objects reached only through Map values, Set members, value-class arrays, cycles and shared refs", () =>
    withDB(async (db) => {
      await db.transact((root) => root.set("q", new Pv()));
      await db.transact((root) => {
        const q = root.get("q");
        const box = new Holder();
        box.items.push([make({ name: "inBox" })]);
        const d = make({ name: "d" });
        const e = make({ name: "e", other: d });
        d.other = e;
        d.self = d;
        const shared = make({ name: "shared" });
        Object.assign(q, {
          map: new Map([["a", make({ name: "inMap" })]]),
          set: new Set([make({ name: "inSet" })]),
          box,
          cyc: [d],
          s1: shared,
        });
        root.set("s2", shared);
      });
      const root = reread(db).root();
      const q = root.get("q");
      expect(q.map.get("a").name).toBe("inMap");
      expect([...q.set][0].name).toBe("inSet");
      expect(q.box).toBeInstanceOf(Holder);
      expect(q.box.items[0][0].name).toBe("inBox");
      const d = q.cyc[0];
      expect([d.name, d.other.name, d.other.other === d, d.self === d]).toEqual(["d", "e", true, true]);
      expect(q.s1).toBe(root.get("s2"));
    }));

  it("round-trips -0, NaN, BigInt, -Infinity, undefined, a 1 MB string, a self-reference and 10,000 refs", () =>
    withDB(async (db) => {
      const big = "x".repeat(1 << 20);
      await db.transact((root) => {
        const q = make({ nz: -0, nan: NaN, big: 12345678901234567890n, inf: -Infinity, arr: [-0, NaN], s: big, u: undefined });
        q.self = q;
        root.set("q", q);
        const m = new PersistentMap<number, Pv>();
        for (let i = 0; i < 10_000; i++) m.set(i, make({ i }));
        root.set("m", m);
      });
      const root = reread(db).root();
      const q = root.get("q");
      expect(Object.is(q.nz, -0) && Number.isNaN(q.nan) && Object.is(q.arr[0], -0) && Number.isNaN(q.arr[1])).toBe(true);
      expect([q.big, q.inf, q.s.length, Object.hasOwn(q, "u"), q.self === q]).toEqual([12345678901234567890n, -Infinity, 1 << 20, true, true]);
      expect(stateOf(q)).toBe("saved");
      const m = root.get("m");
      expect([m.size, m.get(9999).i, stateOf(m)]).toEqual([10_000, 9999, "saved"]);
    }));

  it("detects in-place changes of Dates, typed arrays and plain arrays inside a PersistentMap", () =>
    withDB(async (db) => {
      await db.transact((root) => {
        root.set("q", make({ d: new Date(0), t: new Float64Array(3), u: new Uint8Array(3) }));
        root.set("m", new PersistentMap([["k", [1]]]));
      });
      await db.transact((root) => {
        const q = root.get("q");
        q.d.setTime(1000);
        q.t[1] = 2.5;
        q.u[2] = 7;
        root.get("m").get("k").push(2);
      });
      const root = reread(db).root();
      const q = root.get("q");
      expect([q.d.getTime(), [...q.t], [...q.u], root.get("m").get("k")]).toEqual([1000, [0, 2.5, 0], [0, 0, 7], [1, 2]]);
    }));

  it("handles delete then re-add, undefined vs delete, Object.prototype names and symbol keys", () =>
    withDB(async (db) => {
      await db.transact((root) => root.set("p", make({ a: 1, b: 2, c: 3 })));
      const conn = db.open({ cacheSize: 100 });
      const p = conn.root().get("p");
      void p.a; // loaded (a ghost has accessors only for the fields its class declares)
      expect(() => delete p.a).toThrow(TypeError); // a stored field: refused, not lost
      expect(stateOf(p)).toBe("saved");
      p.b = undefined;
      p.d = 4;
      delete p.d; // added in this transaction: may go again
      p.toString = "ts";
      p.hasOwnProperty = "hop";
      p.then = "not a thenable";
      const sym = Symbol("volatile");
      p[sym] = 42;
      await conn.commit();
      const q = reread(db).root().get("p");
      expect(q.toString).toBe("ts"); // loads the ghost through the end of the prototype chain
      expect([Object.hasOwn(q, "b"), q.b, q.c, Object.hasOwn(q, "d"), q.hasOwnProperty, q.then]).toEqual([true, undefined, 3, false, "hop", "not a thenable"]);
      expect(Object.getOwnPropertySymbols(q)).toEqual([]); // symbol keys are not stored
      expect(await Promise.resolve(q)).toBe(q);
    }));

  it("keeps getters, setters and methods of persistent classes working on ghosts", () =>
    withDB(async (db) => {
      await db.transact((root) => {
        const t = new Temp();
        t.fahrenheit = 212;
        root.set("t", t);
      });
      const conn = db.open({ cacheSize: 100 });
      const t = conn.root().get("t") as Temp;
      expect(stateOf(t)).toBe("ghost");
      expect(t.fahrenheit).toBe(212);
      conn.cacheMinimize();
      expect(t.warm()).toBe(true);
      conn.cacheMinimize();
      t.fahrenheit = 32; // setter on a ghost
      await conn.commit();
      expect((reread(db).root().get("t") as Temp).celsius).toBe(0);
    }));

  it("refuses an unregistered subclass of a registered class, naming it", () =>
    withDB(async (db) => {
      await expect(db.transact((root) => root.set("s", new PvSub()))).rejects.toThrow(/class PvSub is not registered/);
    }));

  it("reports states, and readCurrent / markChanged on new objects and empty commits are harmless", () =>
    withDB(async (db) => {
      await db.transact((root) => root.set("p", make({ v: 1 })));
      const conn = db.open({ cacheSize: 100 });
      const n = new Pv();
      expect(stateOf(n)).toBe("new");
      conn.readCurrent(n);
      markChanged(n);
      expect(stateOf(n)).toBe("new");
      const p = conn.root().get("p");
      expect(stateOf(p)).toBe("ghost");
      const before = await db.lastTid();
      await conn.commit();
      expect(await db.lastTid()).toBe(before);
      expect(stateOf(p)).toBe("ghost");
      void p.v;
      expect(stateOf(p)).toBe("saved");
    }));

  it("returns a closed connection to the pool with no changes pending", () =>
    withDB(async (db) => {
      await db.transact((root) => root.set("a", make({ v: 1 })));
      const c = db.open();
      c.root().get("a").v = 5;
      c.root().get("a").w = [1];
      c.root().set("n", new Pv());
      await c.close();
      const d = db.open();
      expect(d).toBe(c);
      expect([d.root().get("a").v, d.root().get("a").w, d.root().has("n")]).toEqual([1, undefined, false]);
      await d.commit();
      await d.close();
      expect(reread(db).root().get("a").v).toBe(1);
    }));

  it("historical views see the past and cannot load objects created later", () =>
    withDB(async (db) => {
      await db.transact((root) => root.set("a", new Pv()));
      const t1 = await db.lastTid();
      await db.transact((root) => {
        const n = make({ x: 1 });
        root.get("a").n = n;
        root.set("n", n);
      });
      const newOid = oidOf(reread(db).root().get("n"))!;
      const h = db.open({ at: t1 });
      expect(h.root().get("a").n).toBeUndefined();
      expect(h.root().has("n")).toBe(false);
      expect(() => h.get(newOid)).toThrow(ObjectNotFoundError);
      await h.close();
    }));
});
