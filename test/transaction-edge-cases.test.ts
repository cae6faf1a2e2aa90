/**
 * Review findings: each test here FAILS on the current code and shows one bug through the
 * public API (the BrokenObject case builds a legacy record with the internal codec, as
 * test/transactions.test.ts does). Runs on the memory and the embedded storage.
 */
import { afterAll, describe, expect, it } from "vitest";
import { DB, Persistent, registerClass, stateOf, TransactionError } from "../src/index.ts";
import { writeEnvelope } from "../src/codec/record.ts";
import { encodeState } from "../src/codec/state.ts";
import { cleanupDirs, storages } from "./helpers.ts";

class Rv extends Persistent {
  [k: string]: any;
}
registerClass(Rv, "review.findings.Rv");

afterAll(cleanupDirs);

describe.each(storages)("review findings on $name", ({ url }) => {
  const withDB = async (fn: (db: DB) => Promise<void>, options = {}) => {
    const db = await DB.open(url(), { durability: "relaxed", ...options });
    try {
      await fn(db);
    } finally {
      await db.close();
    }
  };

  it("F1: a loaded BrokenObject whose state holds an array does not break commit, abort or stateOf", () =>
    withDB(async (db) => {
      await db.transact((root) => root.set("x", 1));
      const enc = encodeState("X", { label: "kept", n: [1, 2] }, () => {});
      const [oid] = await db.storage.newOids(1);
      const data = writeEnvelope({ className: "review.Gone", classVersion: 0, refOids: [], refPaths: [], refClasses: [], state: enc.state });
      await db.storage.finish({ records: [{ oid: oid!, serial: 0, data }], readCurrent: [] });
      const conn = db.open({ cacheSize: 100 });
      const broken = conn.get(oid!) as any;
      expect(broken.label).toBe("kept");
      expect(() => stateOf(broken)).not.toThrow(); // TypeError: class BrokenObject is not registered
      conn.root().set("y", 2); // an unrelated change
      await conn.commit(); // throws the same TypeError: the connection can never commit again
      expect(() => conn.abort()).not.toThrow();
      await conn.close();
    }));

  it("F4: an in-place change through a nested array held across a mid-transaction eviction is committed", () =>
    withDB(async (db) => {
      await db.transact((root) => {
        for (let i = 0; i < 20; i++) {
          const p = new Rv();
          p.tags = ["a"];
          root.set(`p${i}`, p);
        }
      });
      const conn = db.open({ cacheSize: 3 });
      const root = conn.root();
      const tags = root.get("p0").tags as string[];
      for (let i = 1; i < 20; i++) void root.get(`p${i}`).tags; // loads evict p0 (still unchanged)
      tags.push("b"); // an ordinary in-place change of p0's array
      await conn.commit();
      const check = db.open({ cacheSize: 100 });
      expect(check.root().get("p0").tags).toEqual(["a", "b"]); // got ["a"]: the change was lost
      await check.close();
      await conn.close();
    }));

  it("F5: an object holding a Buffer is not perpetually changed (and readers do not conflict)", () =>
    withDB(async (db) => {
      await db.transact((root) => {
        const p = new Rv();
        p.bytes = Buffer.from("ab");
        root.set("p", p);
      });
      await db.transact((root) => {
        root.set("x", new Rv());
        root.set("y", new Rv());
      });
      const c1 = db.open({ cacheSize: 100 });
      const c2 = db.open({ cacheSize: 100 });
      void c1.root().get("p").bytes;
      void c2.root().get("p").bytes;
      expect(stateOf(c1.root().get("p"))).toBe("saved"); // "changed" without any change
      expect(Buffer.isBuffer(c1.root().get("p").bytes)).toBe(true);
      c1.root().get("x").v = 1;
      c2.root().get("y").v = 2;
      await c1.commit();
      await c2.commit(); // was a ConflictError on p, which neither connection changed
      await c1.close();
      await c2.close();
    }));

  it("F6: cacheInfo.bytes returns to 0 after committing a shrunk object and minimizing", () =>
    withDB(async (db) => {
      await db.transact((root) => {
        const a = new Rv();
        a.s = "x".repeat(10_000);
        root.set("a", a);
      });
      const conn = db.open({ cacheSize: 100 });
      const a = conn.root().get("a");
      void a.s;
      a.s = "y";
      await conn.commit();
      conn.cacheMinimize();
      expect(conn.cacheInfo.loaded).toBe(0);
      expect(conn.cacheInfo.bytes).toBe(0); // 10001: the byte budget drifts on every commit
      await conn.close();
    }));

  it("F7: a field named `constructor` can be stored", () =>
    withDB(async (db) => {
      await db.transact((root) => {
        const p = new Rv();
        (p as any).constructor = "a string field";
        root.set("p", p); // TypeError: class undefined is not registered
      });
      const check = db.open({ cacheSize: 100 });
      const p = check.root().get("p");
      // While a ghost, names found on the class prototype read the class member (documented
      // in the README); once loaded, the stored field shadows it.
      expect(stateOf(p)).toBe("ghost");
      expect(p.constructor).toBe(Rv);
      void p.v; // loads it
      expect(p.constructor).toBe("a string field");
      await check.close();
    }));

  it("F8: a nested plain object with a `__proto__` key is refused with the path, not silently renamed", () =>
    withDB(async (db) => {
      const before = await db.lastTid();
      await expect(
        db.transact((root) => {
          const p = new Rv();
          p.json = JSON.parse('{"__proto__": 5, "x": 1}');
          root.set("p", p);
        }),
      ).rejects.toThrow(/Rv\.json: a property named "__proto__" cannot be stored/);
      expect(await db.lastTid()).toBe(before);
    }));

  it("F9: changing another object while a commit is in flight is reported, not carried into the next transaction", () =>
    withDB(async (db) => {
      await db.transact((root) => {
        for (const k of ["a", "b"]) {
          const o = new Rv();
          o.v = 1;
          root.set(k, o);
        }
      });
      const conn = db.open({ cacheSize: 100 });
      const a = conn.root().get("a");
      const b = conn.root().get("b");
      void b.v;
      a.v = 2;
      const pending = conn.commit();
      // Not part of the commit in flight: refused at once (README, "How changes are found").
      expect(() => (b.v = 99)).toThrow(TransactionError);
      await pending;
      expect(b.v).toBe(1);
      conn.abort();
      await conn.close();
    }));

  it("F10: an async function may return a ghost of a connection it closed", () =>
    withDB(async (db) => {
      await db.transact((root) => root.set("p", new Rv()));
      const find = async () => {
        const conn = db.open({ cacheSize: 100 });
        const p = conn.root().get("p"); // a ghost
        await conn.close();
        return p; // resolving the promise reads p.then, which tries to load the ghost
      };
      const p = await find(); // rejects: "cannot load ...: its connection is closed"
      expect(stateOf(p)).toBe("ghost");
    }));
});
