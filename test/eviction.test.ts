/**
 * The object cache under pressure: changed objects and objects that handed out nested values
 * survive eviction in the middle of a transaction, changes to evicted and reloaded objects
 * are committed, and the cache's byte count returns to zero. Runs on every storage of
 * test/helpers.ts. Comments marked "was:" record the bug a case pinned, fixed since.
 */
import { afterAll, describe, expect, it } from "vitest";
import { DB, Persistent, registerClass, stateOf } from "../src/index.ts";
import { cleanupDirs, storages } from "./helpers.ts";

/** A persistent class whose objects take any field. */
class Doc extends Persistent {
  [k: string]: any;
}
registerClass(Doc, "eviction.Doc");

afterAll(cleanupDirs);

const make = (fields: Record<string, unknown>): Doc => Object.assign(new Doc(), fields);

describe.each(storages)("cache and eviction on $name", ({ url }) => {
  const withDB = async (fn: (db: DB) => Promise<void>) => {
    await using db = await DB.open(url(), { durability: "relaxed" });
    await fn(db);
  };
  const reread = (db: DB) => db.open({ cacheSize: 10_000 });

  it("keeps changed objects through eviction, and commits changes to objects evicted and reloaded", () =>
    withDB(async (db) => {
      await db.transact((root) => {
        for (let i = 0; i < 30; i++) root.set(`p${i}`, make({ v: 0, tags: [] }));
      });
      await using conn = db.open({ cacheSize: 3 });
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

  it("an in-place change through a nested array held across a mid-transaction eviction is committed", () =>
    withDB(async (db) => {
      await db.transact((root) => {
        for (let i = 0; i < 20; i++) {
          const p = new Doc();
          p.tags = ["a"];
          root.set(`p${i}`, p);
        }
      });
      await using conn = db.open({ cacheSize: 3 });
      const root = conn.root();
      const tags = root.get("p0").tags as string[];
      for (let i = 1; i < 20; i++) void root.get(`p${i}`).tags; // loads evict p0 (still unchanged)
      tags.push("b"); // an ordinary in-place change of p0's array
      await conn.commit();
      await using check = db.open({ cacheSize: 100 });
      expect(check.root().get("p0").tags).toEqual(["a", "b"]); // was: ["a"], the change was lost
    }));

  it("cacheInfo.bytes returns to 0 after committing a shrunk object and minimizing", () =>
    withDB(async (db) => {
      await db.transact((root) => {
        const a = new Doc();
        a.s = "x".repeat(10_000);
        root.set("a", a);
      });
      await using conn = db.open({ cacheSize: 100 });
      const a = conn.root().get("a");
      void a.s;
      a.s = "y";
      await conn.commit();
      conn.cacheMinimize();
      expect(conn.cacheInfo.loaded).toBe(0);
      expect(conn.cacheInfo.bytes).toBe(0); // was: 10001, the byte budget drifted on every commit
    }));
});
