/**
 * Transactions through the public API: snapshot isolation, invalidations, conflicts,
 * readCurrent, transact retries, the bounded cache, history and undo, broken objects and
 * upgrades. Runs on the memory and the embedded storage.
 */
import { afterAll, describe, expect, it } from "vitest";
import {
  BrokenObject,
  ConflictError,
  DB,
  Persistent,
  PersistentMap,
  StorageError,
  oidOf,
  registerAlias,
  registerClass,
  serialOf,
  stateOf,
  markChanged,
} from "../src/index.ts";
import { readEnvelope, writeEnvelope } from "../src/codec/record.ts";
import { encodeState } from "../src/codec/state.ts";
import { cleanupDirs, fresh, openDB, storages } from "./helpers.ts";
import { Order, Tally } from "./model.ts";

afterAll(cleanupDirs);

describe.each(storages)("transactions on $name", ({ url }) => {
  const setup = async (options = {}): Promise<DB> => openDB(url(), options);

  it("reads one consistent snapshot until the transaction ends", async () => {
    const db = await setup();
    await db.transact((root) => {
      root.set("x", new Order(1));
      root.set("y", new Order(1));
    });
    const reader = db.open();
    const x = reader.root().get("x") as Order;
    expect(x.total).toBe(1);
    await db.transact((root) => {
      (root.get("x") as Order).total = 2;
      (root.get("y") as Order).total = 2;
    });
    // y was never loaded by the reader: it still loads the revision of the reader's snapshot.
    expect((reader.root().get("y") as Order).total).toBe(1);
    expect(x.total).toBe(1);
    reader.abort(); // a new transaction: invalidations applied
    expect(stateOf(x)).toBe("ghost");
    expect(x.total).toBe(2);
    expect((reader.root().get("y") as Order).total).toBe(2);
    await db.close();
  });

  it("applies invalidations from other connections at commit too", async () => {
    const db = await setup();
    await db.transact((root) => root.set("x", new Order(1)));
    const a = db.open();
    const xa = a.root().get("x") as Order;
    expect(xa.total).toBe(1);
    await db.transact((root) => ((root.get("x") as Order).total = 5));
    a.root().set("unrelated", 1);
    await a.commit();
    expect(xa.total).toBe(5);
    await db.close();
  });

  it("readCurrent makes a read-only dependency conflict", async () => {
    const db = await setup();
    await db.transact((root) => {
      root.set("limit", new Order(10));
      root.set("spent", new Order(0));
    });
    const a = db.open();
    const limit = a.root().get("limit") as Order;
    a.readCurrent(limit);
    (a.root().get("spent") as Order).total = limit.total;
    await db.transact((root) => ((root.get("limit") as Order).total = 5));
    const err = await a.commit().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConflictError);
    expect((err as ConflictError).conflicts[0]).toMatchObject({ oid: oidOf(limit), readOnly: true, className: "test.Order" });
    a.abort();
    expect((a.root().get("spent") as Order).total).toBe(0);
    await db.close();
  });

  it("transact retries conflicts on a fresh snapshot until every increment lands", async () => {
    const db = await setup();
    await db.transact((root) => root.set("tally", new Tally()));
    const workers = Array.from({ length: 4 }, async () => {
      for (let i = 0; i < 10; i++) {
        await db.transact(async (root) => {
          const t = root.get("tally") as Tally;
          const n = t.n;
          await new Promise((r) => setTimeout(r, Math.random() * 2));
          t.n = n + 1;
        }, { retries: 100 });
      }
    });
    await Promise.all(workers);
    const conn = db.open();
    expect((conn.root().get("tally") as Tally).n).toBe(40);
    await db.close();
  });

  it("transact re-throws the last ConflictError after its retries, naming the attempts", async () => {
    const db = await setup();
    await db.transact((root) => root.set("tally", new Tally()));
    let runs = 0;
    const err = await db
      .transact(async (root) => {
        runs++;
        (root.get("tally") as Tally).n++;
        await db.transact((r) => (r.get("tally") as Tally).n++); // always commits first
      }, { retries: 2, backoffMs: 1 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConflictError);
    expect(runs).toBe(3);
    expect((err as Error).message).toMatch(/after 3 attempts.*test\.Tally#/);
    await db.close();
  });

  it("transact aborts and re-throws other errors at once", async () => {
    const db = await setup();
    await expect(
      db.transact((root) => {
        root.set("half", 1);
        throw new Error("boom");
      }),
    ).rejects.toThrow("boom");
    expect(db.open().root().has("half")).toBe(false);
    await db.close();
  });

  it("bounds the object cache, evicting unchanged objects to ghosts", async () => {
    const db = await setup({ cacheSize: 50 });
    await db.transact((root) => {
      const m = new PersistentMap<number, Order>();
      for (let i = 0; i < 500; i++) m.set(i, new Order(i));
      root.set("orders", m);
    });
    const conn = db.open();
    const m = conn.root().get("orders") as PersistentMap<number, Order>;
    const first = m.get(0)!;
    first.total = -1; // changed objects are never evicted
    let sum = 0;
    for (const [, o] of m) sum += o.total;
    expect(sum).toBe((499 * 500) / 2 - 1);
    expect(conn.cacheInfo.loaded).toBeLessThanOrEqual(51);
    expect(stateOf(first)).toBe("changed");
    expect(stateOf(m.get(1)!)).toBe("ghost");
    expect(m.get(1)!.total).toBe(1); // reloads transparently
    await conn.commit();
    const check = db.open();
    expect(((check.root().get("orders") as PersistentMap<number, Order>).get(0) as Order).total).toBe(-1);
    await db.close();
  });

  it("bounds the cache by bytes too (cacheBytes)", async () => {
    const db = await setup();
    await db.transact((root) => {
      const m = new PersistentMap<number, Order>();
      for (let i = 0; i < 200; i++) m.set(i, Object.assign(new Order(i), { note: "x".repeat(1000) }));
      root.set("big", m);
    });
    const conn = db.open({ cacheSize: 100_000, cacheBytes: 20_000 });
    const m = conn.root().get("big") as PersistentMap<number, Order>;
    let total = 0;
    for (const [, o] of m) total += (o as any).note.length;
    expect(total).toBe(200_000);
    // Each record is over 1,000 bytes: about 20 fit (plus the map itself and the root).
    expect(conn.cacheInfo.bytes).toBeLessThanOrEqual(20_000 + 2_000);
    expect(conn.cacheInfo.loaded).toBeLessThan(25);
    await db.close();
  });

  it("counts cache hits for objects already loaded", async () => {
    const db = await setup();
    await db.transact((root) => {
      const o = new Order(1);
      root.set("a", o);
      root.set("b", o);
    });
    const conn = fresh(db);
    const root = conn.root();
    void (root.get("a") as Order).total;
    conn.resetStats();
    const again = conn.get(oidOf(root.get("a") as Order)!);
    expect(again).toBe(root.get("b"));
    expect(conn.stats.cacheHits).toBeGreaterThanOrEqual(1);
    expect(conn.stats.loads).toBe(0);
    await db.close();
  });

  it("reuses closed connections with their caches", async () => {
    const db = await setup();
    await db.transact((root) => root.set("o", new Order(1)));
    const a = db.open();
    const o = a.root().get("o") as Order;
    void o.total;
    await a.close();
    const b = db.open();
    expect(b).toBe(a);
    expect(stateOf(o)).toBe("saved");
    b.resetStats();
    expect((b.root().get("o") as Order).total).toBe(1);
    expect(b.stats.loads).toBe(0);
    await db.close();
  });

  it("loads unknown classes as BrokenObject and writes them back byte-for-byte", async () => {
    const db = await setup();
    await db.transact((root) => root.set("o", new Order(1)));
    // Store a record of a class no process here has registered, pointing at a known object.
    const conn = db.open();
    const target = conn.root().get("o") as Order;
    const enc = encodeState("X", { label: "kept", n: [1, 2], ref: target }, () => {});
    const [oid] = await db.storage.newOids(1);
    const data = writeEnvelope({
      className: "legacy.Gone",
      classVersion: 3,
      refOids: [oidOf(target)!],
      refPaths: enc.refPaths,
      refClasses: ["test.Order"],
      state: enc.state,
    });
    await db.storage.finish({ records: [{ oid: oid!, serial: 0, data }], readCurrent: [] });
    conn.abort();
    const broken = conn.get(oid!) as BrokenObject;
    expect(broken).toBeInstanceOf(BrokenObject);
    expect(BrokenObject.storedClassName(broken)).toBe("legacy.Gone");
    expect((broken as any).label).toBe("kept");
    expect((broken as any).ref).toBe(target);
    markChanged(broken);
    await conn.commit();
    const [rec] = await db.storage.load([oid!], await db.lastTid());
    expect(rec!.serial).toBe(serialOf(broken));
    expect(Buffer.compare(Buffer.from(rec!.data), Buffer.from(data))).toBe(0);
    await db.close();
  });

  it("maps old class names with registerAlias and migrates old states with upgrade", async () => {
    class Profile extends Persistent {
      fullName = "";
      static upgrade(state: Record<string, unknown>, storedVersion: number): Record<string, unknown> {
        if (storedVersion < 1) return { fullName: `${state.first} ${state.last}` };
        return state;
      }
    }
    const name = `test.Profile.${Math.random()}`;
    registerClass(Profile, name, { version: 1 });
    registerAlias(`${name}.old`, Profile);
    const db = await setup();
    await db.transact(() => {});
    const enc = encodeState("P", { first: "Ada", last: "Lovelace" }, () => {});
    const [oid] = await db.storage.newOids(1);
    await db.storage.finish({
      records: [{ oid: oid!, serial: 0, data: writeEnvelope({ className: `${name}.old`, classVersion: 0, refOids: [], refPaths: [], refClasses: [], state: enc.state }) }],
      readCurrent: [],
    });
    const conn = db.open();
    conn.root().set("p", conn.get(oid!));
    const p = conn.root().get("p") as Profile;
    expect(p).toBeInstanceOf(Profile);
    expect(p.fullName).toBe("Ada Lovelace");
    expect(stateOf(p)).toBe("changed"); // upgraded states are written back in the new shape
    await conn.commit();
    const [rec] = await db.storage.load([oid!], await db.lastTid());
    const env = readEnvelope(rec!.data);
    expect([env.className, env.classVersion]).toEqual([name, 1]);
    await db.close();
  });

  it("raises StorageError naming the oid for a damaged record", async () => {
    const db = await setup();
    await db.transact((root) => root.set("o", new Order(1)));
    const conn = db.open();
    const oid = oidOf(conn.root().get("o") as Order)!;
    const [rec] = await db.storage.load([oid], await db.lastTid());
    const bad = Uint8Array.from(rec!.data);
    bad[bad.length - 2] = bad[bad.length - 2]! ^ 0xff;
    await db.storage.finish({ records: [{ oid, serial: rec!.serial, data: bad }], readCurrent: [] });
    conn.abort();
    const err = (() => {
      try {
        return (conn.root().get("o") as Order).total;
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).oid).toBe(oid);
    expect((err as Error).message).toMatch(new RegExp(`object ${oid} is damaged: checksum mismatch`));
    await db.close();
  });

  it("opens historical read-only views and lists an object's history", async () => {
    const db = await setup();
    await db.transact((root) => root.set("o", new Order(1)));
    const t1 = await db.lastTid();
    await db.transact((root) => ((root.get("o") as Order).total = 2));
    const t2 = await db.lastTid();
    await db.transact((root) => ((root.get("o") as Order).total = 3));
    const old = db.open({ at: t1 });
    const oOld = old.root().get("o") as Order;
    expect(oOld.total).toBe(1);
    expect(db.open({ at: t2 }).root().get("o")).toMatchObject({ total: 2 });
    expect(() => (oOld.total = 10)).toThrow(/read-only historical view/);
    await old.commit(); // nothing to write
    const conn = db.open();
    const o = conn.root().get("o") as Order;
    const hist = await db.history(o);
    expect(hist.map((h) => h.state.total)).toEqual([3, 2, 1]);
    expect(hist[0]!.tid).toBe(serialOf(o));
    await db.close();
  });

  it("undoes a transaction", async () => {
    const db = await setup();
    await db.transact((root) => root.set("o", new Order(1)));
    await db.transact((root) => ((root.get("o") as Order).total = 2));
    const tid = await db.lastTid();
    await db.undo(tid);
    const conn = db.open();
    expect((conn.root().get("o") as Order).total).toBe(1);
    await db.close();
  });
});
