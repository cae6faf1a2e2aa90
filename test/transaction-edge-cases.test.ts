/**
 * Transactions at their edges: a retry after a ConflictError, states of new objects and
 * empty commits, a connection back in its pool, historical views, changes while a commit is
 * in flight, and a ghost handed out of a closed connection. Runs on every storage of
 * test/helpers.ts. Comments marked "was:" record the bug a case pinned, fixed since.
 */
import { afterAll, describe, expect, it } from "vitest";
import { ConflictError, DB, Persistent, markChanged, oidOf, ObjectNotFoundError, registerClass, stateOf, TransactionError } from "../src/index.ts";
import { cleanupDirs, storages } from "./helpers.ts";

/** A persistent class whose objects take any field. */
class Doc extends Persistent {
  [k: string]: any;
}
registerClass(Doc, "edge.transactions.Doc");

afterAll(cleanupDirs);

const make = (fields: Record<string, unknown>): Doc => Object.assign(new Doc(), fields);

describe.each(storages)("transactions: edge cases on $name", ({ url }) => {
  const withDB = async (fn: (db: DB) => Promise<void>) => {
    await using db = await DB.open(url(), { durability: "relaxed" });
    await fn(db);
  };
  const reread = (db: DB) => db.open({ cacheSize: 10_000 });

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

  it("reports states, and readCurrent / markChanged on new objects and empty commits are harmless", () =>
    withDB(async (db) => {
      await db.transact((root) => root.set("p", make({ v: 1 })));
      const conn = db.open({ cacheSize: 100 });
      const n = new Doc();
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
      c.root().set("n", new Doc());
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
      await db.transact((root) => root.set("a", new Doc()));
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

  it("changing another object while a commit is in flight is reported, not carried into the next transaction", () =>
    withDB(async (db) => {
      await db.transact((root) => {
        for (const k of ["a", "b"]) {
          const o = new Doc();
          o.v = 1;
          root.set(k, o);
        }
      });
      await using conn = db.open({ cacheSize: 100 });
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
    }));

  it("an async function may return a ghost of a connection it closed", () =>
    withDB(async (db) => {
      await db.transact((root) => root.set("p", new Doc()));
      const find = async () => {
        const conn = db.open({ cacheSize: 100 });
        const p = conn.root().get("p"); // a ghost
        await conn.close();
        return p; // resolving the promise reads p.then, which tries to load the ghost
      };
      const p = await find(); // was: rejected, "cannot load ...: its connection is closed"
      expect(stateOf(p)).toBe("ghost");
    }));
});
