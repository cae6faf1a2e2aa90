/**
 * Undo through the public API (`db.undo(tid)`, SPEC §2), as in ZODB: undos step back one
 * transaction at a time, an undo can be undone, undoing the transaction that created an
 * object takes away the references to it, and a later change that an undo would lose
 * conflicts. The storage-level cases are in the shared contract (src/storage/contract.ts).
 * Runs on every storage of helpers.ts.
 */
import { afterAll, describe, expect, it } from "vitest";
import { ConflictError, type DB, oidOf } from "../src/index.ts";
import { cleanupDirs, fresh, openDB, storages } from "./helpers.ts";
import { Order } from "./model.ts";

afterAll(cleanupDirs);

describe.each(storages)("undo on $name", ({ url }) => {
  /** The total of root["o"] (undefined when absent) read in a new connection. */
  const total = async (db: DB): Promise<number | undefined> => {
    const conn = fresh(db);
    const o = conn.root().get("o") as Order | undefined;
    const t = o?.total;
    await conn.close();
    return t;
  };
  /** Commit `fn` and return its tid. */
  const commit = async (db: DB, fn: (o: Order) => void): Promise<number> => {
    await db.transact((root) => fn(root.get("o") as Order));
    return db.lastTid();
  };

  it("steps back one transaction at a time: undo t25, then t24, then the creation t23", async () => {
    const db = await openDB(url());
    await db.transact((root) => root.set("o", new Order(23)));
    const t23 = await db.lastTid();
    const t24 = await commit(db, (o) => (o.total = 24));
    const t25 = await commit(db, (o) => (o.total = 25));
    const reader = fresh(db);
    const o = reader.root().get("o") as Order;
    expect(o.total).toBe(25);

    await db.undo(t25);
    expect(await total(db)).toBe(24);
    await db.undo(t24); // raised ConflictError before: o's current revision is the undo's
    expect(await total(db)).toBe(23);
    reader.abort();
    expect(o.total).toBe(23); // an open connection sees the undos at its next transaction

    // Undoing the creating transaction takes the reference away (the object is left behind).
    await db.undo(t23);
    expect(await total(db)).toBeUndefined();
    await reader.close();
    await db.close();
  });

  it("undoes an undo, and then the original transaction again", async () => {
    const db = await openDB(url());
    await db.transact((root) => root.set("o", new Order(1)));
    const t2 = await commit(db, (o) => (o.total = 2));
    const u1 = await db.undo(t2);
    expect(await total(db)).toBe(1);
    await db.undo(u1);
    expect(await total(db)).toBe(2);
    await db.undo(t2);
    expect(await total(db)).toBe(1);
    await db.close();
  });

  it("undoes the creation of an object, and that undo again", async () => {
    const db = await openDB(url());
    await db.transact((root) => root.set("other", new Order(0)));
    await db.transact((root) => root.set("o", new Order(5)));
    const created = await db.lastTid();
    const u = await db.undo(created);
    expect(await total(db)).toBeUndefined();
    await db.undo(u);
    expect(await total(db)).toBe(5);
    await db.close();
  });

  it("refuses an undo that would lose a later change, also after stepping back, and writes nothing", async () => {
    const db = await openDB(url());
    await db.transact((root) => root.set("o", new Order(1)));
    const t2 = await commit(db, (o) => (o.total = 2));
    const t3 = await commit(db, (o) => (o.total = 3));
    const conn = fresh(db);
    const oid = oidOf(conn.root().get("o") as Order);
    await conn.close();

    const refused = await db.undo(t2).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ConflictError);
    expect((refused as ConflictError).serials).toEqual([{ oid, read: t2, committed: t3 }]);
    expect(await db.lastTid()).toBe(t3);
    expect(await total(db)).toBe(3);

    const u = await db.undo(t3);
    const t4 = await commit(db, (o) => (o.total = 4)); // a change that is not an undo
    for (const tid of [t2, u]) {
      const err = await db.undo(tid).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).serials).toEqual([{ oid, read: tid, committed: t4 }]);
    }
    expect(await db.lastTid()).toBe(t4);
    expect(await total(db)).toBe(4);
    await db.close();
  });
});
