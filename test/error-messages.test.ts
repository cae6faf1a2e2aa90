/**
 * What errors say when printed: `ConflictError` shows its class name once (not
 * "ConflictError: ConflictError: ..."), and storing an instance of a persistent class that
 * was never registered raises a TypeError naming the property path that holds it, as an
 * unregistered value class does, with nothing written. Runs on every storage.
 */
import { inspect } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { ConflictError, Persistent, PersistentList, persistent, type DB } from "../src/index.ts";
import { cleanupDirs, fresh, openDB, storages } from "./helpers.ts";

afterAll(cleanupDirs);

@persistent("errmsg.Account")
class Account extends Persistent {
  balance = 0;
  orders = new PersistentList<unknown>();
  notes: unknown[] = [];
  extra = new Map<string, unknown>();
}

/** A persistent class nobody registered. */
class Unregistered extends Persistent {
  v = 1;
}

/** An unregistered subclass of a registered persistent class. */
class SubAccount extends Account {}

const HINT = (name: string) =>
  `class ${name} is not registered: persistent classes need @persistent("name") or registerClass(${name}, "name")`;

describe.each(storages)("error messages on $name", ({ url }) => {
  async function conflict(db: DB, attempts?: number): Promise<ConflictError> {
    await db.transact((root) => root.set("a", new Account()));
    if (attempts !== undefined) {
      const err = await db
        .transact(
          async (root) => {
            (root.get("a") as Account).balance++;
            await db.transact((r) => void (r.get("a") as Account).balance++); // always commits first
          },
          { retries: attempts - 1, backoffMs: 1 },
        )
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConflictError);
      return err as ConflictError;
    }
    const a = fresh(db);
    const b = fresh(db);
    (a.root().get("a") as Account).balance = 1;
    (b.root().get("a") as Account).balance = 2;
    await a.commit();
    const err = await b.commit().catch((e: unknown) => e);
    b.abort();
    expect(err).toBeInstanceOf(ConflictError);
    return err as ConflictError;
  }

  it("a ConflictError names its class once when printed, and keeps the oid, class and serials", async () => {
    const db = await openDB(url());
    const err = await conflict(db);
    const [c] = err.conflicts;
    const detail = `errmsg.Account#${c!.oid} (changed at serial ${c!.readSerial}, committed since at serial ${c!.committedSerial})`;
    expect(String(err)).toBe(`ConflictError: another transaction committed changes to ${detail}`);
    expect(err.message).not.toMatch(/ConflictError/);
    expect(inspect(err).split("\n")[0]).toBe(`ConflictError: another transaction committed changes to ${detail}`);
    expect(err.stack!.match(/ConflictError/g)).toHaveLength(1);
    await db.close();
  });

  it("a ConflictError after transact's retries says how many attempts, once prefixed", async () => {
    const db = await openDB(url());
    const err = await conflict(db, 3);
    expect(String(err)).toMatch(/^ConflictError: gave up after 3 attempts: another transaction committed changes to errmsg\.Account#\d+ \(changed at serial \d+, committed since at serial \d+\)$/);
    await db.close();
  });

  it("an unregistered persistent class stored in a field: TypeError naming the property path and the class, nothing written", async () => {
    const db = await openDB(url());
    await db.transact((root) => root.set("a", new Account()));
    const before = await db.lastTid();
    const conn = fresh(db);
    const a = conn.root().get("a") as Account;

    a.notes = [1, 2, { deep: new Unregistered() }];
    await expect(conn.commit()).rejects.toThrow(new TypeError(`Account.notes[2].deep: ${HINT("Unregistered")}`));
    expect(() => conn.abort()).not.toThrow(); // abort() compares states too, and never throws

    a.extra.set("k", new SubAccount());
    await expect(conn.commit()).rejects.toThrow(new TypeError(`Account.extra[Map key "k"]: ${HINT("SubAccount")}`));
    conn.abort();

    // Through a persistent list: the path is inside the list's own record.
    a.orders.push(1, 2, 3, new Unregistered());
    const err = await conn.commit().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TypeError);
    expect((err as Error).message).toMatch(/\.items\[3\]: class Unregistered is not registered/);
    conn.abort();

    // Directly under the root.
    conn.root().set("stray", new Unregistered());
    await expect(conn.commit()).rejects.toThrow(/\[Map key "stray"\]: class Unregistered is not registered/);
    conn.abort();

    expect(await db.lastTid()).toBe(before);
    const check = fresh(db);
    expect(check.root().has("stray")).toBe(false);
    expect((check.root().get("a") as Account).notes).toEqual([]);
    await check.close();
    await conn.close();
    await db.close();
  });

  it("a registered class that refers to an unregistered one through a new registered object is refused the same way", async () => {
    const db = await openDB(url());
    const before = await db.lastTid();
    const err = await db
      .transact((root) => {
        const outer = new Account();
        const inner = new Account();
        inner.notes = [new Unregistered()];
        outer.notes = [inner];
        root.set("outer", outer);
      })
      .catch((e: unknown) => e);
    expect(err).toEqual(new TypeError(`Account.notes[0]: ${HINT("Unregistered")}`));
    expect(await db.lastTid()).toBe(before);
    await db.close();
  });
});
