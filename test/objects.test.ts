/**
 * Persistent objects through the public API: storing and loading graphs, identity, ghosts,
 * change tracking (assignments, deletes, nested containers), metadata functions, bad input.
 * Runs on the memory and the embedded storage.
 */
import { afterAll, describe, expect, it } from "vitest";
import {
  ConflictError,
  DB,
  Persistent,
  PersistentList,
  PersistentMap,
  PersistentSet,
  TransactionError,
  connectionOf,
  markChanged,
  oidOf,
  persistent,
  registerClass,
  serialOf,
  stateOf,
} from "../src/index.ts";
import { cleanupDirs, fresh, openDB, storages } from "./helpers.ts";
import { Address, Assigned, Customer, Order, customers } from "./model.ts";

afterAll(cleanupDirs);

describe.each(storages)("objects on $name", ({ url }) => {
  async function setup(): Promise<{ db: DB; path: string }> {
    const path = url();
    return { db: await openDB(path), path };
  }

  it("stores an object graph and reads it back in a new connection", async () => {
    const { db } = await setup();
    await db.transact((root) => {
      const alice = new Customer();
      alice.name = "Alice";
      alice.tags = ["vip", "early"];
      alice.address = new Address("1 Main St", "Springfield");
      alice.orders.push(new Order(10, alice), new Order(25.5, alice));
      alice.prefs.set("theme", "dark");
      customers(root).set("alice", alice);
    });
    const conn = fresh(db);
    const alice = conn.root().get("customers").get("alice") as Customer;
    expect(stateOf(alice)).toBe("ghost");
    expect(alice.name).toBe("Alice");
    expect(stateOf(alice)).toBe("saved");
    expect(alice.greet()).toBe("hello Alice");
    expect(alice.tags).toEqual(["vip", "early"]);
    expect(alice.address).toBeInstanceOf(Address);
    expect(alice.address!.label()).toBe("1 Main St, Springfield");
    expect(alice.orders.length).toBe(2);
    expect(alice.orders.at(1)!.total).toBe(25.5);
    expect(alice.orders.at(0)!.customer).toBe(alice);
    expect(alice.prefs.get("theme")).toBe("dark");
    expect(Object.keys(alice)).toEqual(["name", "status", "tags", "address", "orders", "friend", "prefs"]);
    expect(alice.status).toBe("active");
    await conn.close();
    await db.close();
  });

  it("keeps one object per oid in a connection, with cycles between persistent objects", async () => {
    const { db } = await setup();
    await db.transact((root) => {
      const a = new Customer();
      const b = new Customer();
      a.name = "a";
      b.name = "b";
      a.friend = b;
      b.friend = a;
      customers(root).set("a", a);
      customers(root).set("b", b);
    });
    const conn = db.open();
    const cs = conn.root().get("customers") as PersistentMap<string, Customer>;
    const a = cs.get("a")!;
    const b = cs.get("b")!;
    expect(a.friend).toBe(b);
    expect(b.friend).toBe(a);
    expect(a.friend!.friend).toBe(a);
    expect(conn.get(oidOf(a)!)).toBe(a);
    expect(connectionOf(a)).toBe(conn);
    await db.close();
  });

  it("tracks assignments, deletes, new properties and nested mutations", async () => {
    const { db } = await setup();
    await db.transact((root) => {
      const c = new Customer();
      c.name = "c";
      c.tags = ["x"];
      c.prefs.set("a", [1]);
      customers(root).set("c", c);
    });
    const cases: Array<[string, (c: Customer) => void, (c: Customer) => void]> = [
      ["assignment", (c) => (c.name = "renamed"), (c) => expect(c.name).toBe("renamed")],
      ["new property", (c) => ((c as any).nickname = "cc"), (c) => expect((c as any).nickname).toBe("cc")],
      ["array push", (c) => c.tags.push("y"), (c) => expect(c.tags).toContain("y")],
      ["nested Map in place", (c) => (c.prefs.get("a") as number[]).push(2), (c) => expect(c.prefs.get("a")).toEqual([1, 2])],
      ["Map set", (c) => c.prefs.set("b", true), (c) => expect(c.prefs.get("b")).toBe(true)],
    ];
    for (const [what, change, check] of cases) {
      const conn = fresh(db);
      const c = conn.root().get("customers").get("c") as Customer;
      expect(stateOf(c), what).toBe("ghost");
      void c.name;
      expect(stateOf(c), what).toBe("saved");
      change(c);
      expect(stateOf(c), what).toBe("changed");
      const before = serialOf(c);
      await conn.commit();
      expect(serialOf(c), what).toBeGreaterThan(before);
      expect(stateOf(c), what).toBe("saved");
      await conn.close();
      const other = fresh(db, { cacheSize: 50 });
      check(other.root().get("customers").get("c") as Customer);
      await other.close();
    }
    await db.close();
  });

  it("refuses a delete of a stored field at once, and commits deletes of fields added in the transaction", async () => {
    const { db } = await setup();
    await db.transact((root) => {
      const c = new Customer();
      c.name = "c";
      customers(root).set("c", c);
    });
    const conn = fresh(db);
    const c = conn.root().get("customers").get("c") as Customer;
    expect(() => delete (c as Partial<Customer>).address).toThrow(TypeError); // a ghost too
    void c.name;
    expect(() => delete (c as Partial<Customer>).address).toThrow(/Cannot delete property 'address' of \[object test\.Customer\]/);
    expect(stateOf(c)).toBe("saved");
    expect(Object.keys(c)).toContain("address");
    (c as any).extra = 1;
    (c as any).gone = 2;
    expect(delete (c as any).gone).toBe(true);
    await conn.commit();
    expect(Object.keys(c)).toContain("extra");
    expect(() => delete (c as any).extra).toThrow(TypeError);
    await conn.close();
    const other = fresh(db);
    const c2 = other.root().get("customers").get("c") as any;
    expect(c2.extra).toBe(1);
    expect(Object.hasOwn(c2, "gone")).toBe(false);
    expect(c2.address).toBe(c.address);
    await other.close();
    await db.close();
  });

  it("keeps binary values intact after later loads reuse the storage's buffers", async () => {
    const { db } = await setup();
    await db.transact((root) => {
      for (let i = 0; i < 50; i++) {
        const o = new Order(i);
        (o as any).bytes = Buffer.alloc(40, i);
        (o as any).floats = new Float64Array([i, i + 0.5]);
        root.set(`o${i}`, o);
      }
    });
    const conn = fresh(db);
    const loaded = Array.from({ length: 50 }, (_, i) => conn.root().get(`o${i}`) as any);
    for (const o of loaded) void o.total; // each load may reuse the previous one's buffer
    loaded.forEach((o, i) => {
      expect([...o.bytes]).toEqual(new Array(40).fill(i));
      expect([...o.floats]).toEqual([i, i + 0.5]);
    });
    await db.close();
  });

  it("writes only objects that changed", async () => {
    const { db } = await setup();
    await db.transact((root) => {
      for (let i = 0; i < 20; i++) customers(root).set(`c${i}`, Object.assign(new Customer(), { name: `c${i}` }));
    });
    const conn = db.open();
    const cs = conn.root().get("customers") as PersistentMap<string, Customer>;
    for (const c of cs.values()) void c.name;
    const serials = [...cs.values()].map(serialOf);
    cs.get("c3")!.name = "changed";
    await conn.commit();
    const after = [...cs.values()].map(serialOf);
    expect(after.filter((s, i) => s !== serials[i]).length).toBe(1);
    await db.close();
  });

  it("handles constructors that assign fields and new classes registered without decorators", async () => {
    class Plain extends Persistent {
      x = 1;
    }
    registerClass(Plain, `test.Plain.${Math.random()}`);
    const { db } = await setup();
    await db.transact((root) => {
      root.set("assigned", new Assigned(7, "seven"));
      root.set("plain", new Plain());
    });
    const conn = db.open();
    const a = conn.root().get("assigned") as Assigned;
    expect(a).toBeInstanceOf(Assigned);
    expect([a.a, a.b]).toEqual([7, "seven"]);
    a.a = 8;
    expect(stateOf(a)).toBe("changed");
    expect((conn.root().get("plain") as Plain).x).toBe(1);
    await conn.commit();
    await db.close();
  });

  it("markChanged forces a write", async () => {
    const { db } = await setup();
    await db.transact((root) => root.set("t", new Order(1)));
    const conn = db.open();
    const o = conn.root().get("t") as Order;
    const s = serialOf(o);
    markChanged(o);
    expect(stateOf(o)).toBe("changed");
    await conn.commit();
    expect(serialOf(o)).toBeGreaterThan(s);
    await db.close();
  });

  it("abort discards changes; objects reload their committed state", async () => {
    const { db } = await setup();
    await db.transact((root) => root.set("o", new Order(5)));
    const conn = db.open();
    const o = conn.root().get("o") as Order;
    o.total = 99;
    conn.abort();
    expect(stateOf(o)).toBe("saved");
    expect(o.total).toBe(5);
    await db.close();
  });

  it("PersistentMap, PersistentList and PersistentSet behave like their platform types", async () => {
    const { db } = await setup();
    await db.transact((root) => {
      root.set("m", new PersistentMap([["a", 1]]));
      root.set("l", new PersistentList([1, 2, 3]));
      root.set("s", new PersistentSet(["x"]));
    });
    await db.transact((root) => {
      const m = root.get("m") as PersistentMap<string, number>;
      const l = root.get("l") as PersistentList<number>;
      const s = root.get("s") as PersistentSet<string>;
      m.set("b", 2);
      m.delete("a");
      l.push(4);
      l.splice(0, 1);
      s.add("y");
      s.delete("x");
    });
    const conn = db.open();
    const root = conn.root();
    expect([...(root.get("m") as PersistentMap<string, number>)]).toEqual([["b", 2]]);
    expect([...(root.get("l") as PersistentList<number>)]).toEqual([2, 3, 4]);
    expect([...(root.get("s") as PersistentSet<string>)]).toEqual(["y"]);
    expect((root.get("l") as PersistentList<number>).length).toBe(3);
    await db.close();
  });

  it("refuses functions and unregistered classes with the property path, writing nothing", async () => {
    const { db } = await setup();
    const before = await db.lastTid();
    class NotRegistered extends Persistent {}
    class Loose {}
    const conn = db.open();
    const c = new Customer();
    c.orders.push(new Order(1), new Order(2), new Order(3));
    (c.orders.at(2) as any).callback = () => 1;
    conn.root().set("bad", c);
    await expect(conn.commit()).rejects.toThrow(/Order\.callback: functions cannot be stored/);
    conn.abort();
    conn.root().set("bad2", new NotRegistered());
    await expect(conn.commit()).rejects.toThrow(/class NotRegistered is not registered/);
    conn.abort();
    const c2 = new Customer();
    c2.prefs.set("x", new Loose());
    conn.root().set("bad3", c2);
    await expect(conn.commit()).rejects.toThrow(new TypeError(`Customer.prefs[Map key "x"]: instances of class Loose cannot be stored: it is not registered (use @serializable("name") for a value class, or extend Persistent and use @persistent("name"))`));
    conn.abort();
    expect(await db.lastTid()).toBe(before);
    expect(conn.root().has("bad")).toBe(false);
    await db.close();
  });

  it("raises clear errors for closed connections and objects of other connections", async () => {
    const { db } = await setup();
    await db.transact((root) => root.set("o", new Order(1)));
    const a = db.open();
    const b = db.open();
    const oa = a.root().get("o") as Order;
    b.root().set("stolen", oa);
    await expect(b.commit()).rejects.toThrow(/refers to test\.Order#\d+, which belongs to another connection/);
    b.abort();
    const ghost = a.root().get("o") as Order;
    a.cacheMinimize();
    await a.close();
    expect(() => ghost.total).toThrow(TransactionError);
    expect(() => ghost.total).toThrow(/belongs to a connection that is closed/);
    expect(() => (ghost.total = 2)).toThrow(expect.objectContaining({ code: "stale-object" }));
    await expect(a.commit()).rejects.toThrow(/closed connection/);
    await db.close();
  });

  it("refuses changes and a second commit while a commit is in flight", async () => {
    const { db } = await setup();
    await db.transact((root) => root.set("o", new Order(1)));
    const conn = db.open();
    const o = conn.root().get("o") as Order;
    o.total = 2;
    const pending = conn.commit();
    const second = conn.commit();
    expect(() => ((o as any).extra = 1)).toThrow(/in flight/);
    expect(() => markChanged(o)).toThrow(/in flight/);
    expect(() => (o.total = 3)).toThrow(/in flight/);
    await expect(second).rejects.toThrow(/in flight/);
    await pending;
    const check = fresh(db);
    expect((check.root().get("o") as Order).total).toBe(2);
    expect(o.total).toBe(2);
    await db.close();
  });

  it("counts round trips, loads, bytes and commits in conn.stats", async () => {
    const { db } = await setup();
    await db.transact((root) => {
      for (let i = 0; i < 10; i++) root.set(`o${i}`, new Order(i));
    });
    const conn = fresh(db);
    conn.resetStats();
    const root = conn.root();
    let sum = 0;
    for (let i = 0; i < 10; i++) sum += (root.get(`o${i}`) as Order).total;
    expect(sum).toBe(45);
    expect(conn.stats.loads).toBe(11);
    expect(conn.stats.roundTrips).toBe(11);
    expect(conn.stats.bytesRead).toBeGreaterThan(0);
    (root.get("o1") as Order).total = 100;
    conn.resetStats();
    await conn.commit();
    expect(conn.stats.commits).toBe(1);
    expect(conn.stats.bytesWritten).toBeGreaterThan(0);
    expect(conn.stats.loads).toBe(0);
    await db.close();
  });

  it("supports await using for DB and Connection", async () => {
    const path = url();
    {
      await using db = await openDB(path);
      await using conn = db.open();
      conn.root().set("k", 1);
      await conn.commit();
    }
    if (path !== "memory:") {
      await using db2 = await openDB(path);
      expect(db2.open().root().get("k")).toBe(1);
    }
  });

  it("a ConflictError names the class, oid and serials", async () => {
    const { db } = await setup();
    await db.transact((root) => root.set("o", new Order(1)));
    const a = fresh(db);
    const b = fresh(db);
    const oa = a.root().get("o") as Order;
    const ob = b.root().get("o") as Order;
    oa.total = 2;
    ob.total = 3;
    await a.commit();
    const err = await b.commit().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConflictError);
    const ce = err as ConflictError;
    expect(ce.oids).toEqual([oidOf(ob)]);
    expect(ce.classNames).toEqual(["test.Order"]);
    expect(ce.serials[0]!.committed).toBe(serialOf(oa));
    expect(ce.message).toMatch(new RegExp(`test\\.Order#${oidOf(ob)} \\(changed at serial \\d+, committed since at serial ${serialOf(oa)}\\)`));
    b.abort();
    expect(ob.total).toBe(2);
    await db.close();
  });
});

describe("bad input to DB and Connection", () => {
  it("names what was expected", async () => {
    await expect(DB.open(123 as never)).rejects.toThrow(
      new TypeError("DB.open() expects a storage URL or path (string) or a Storage object, got number"),
    );
    await expect(DB.open("")).rejects.toThrow(/needs a storage URL or path, got an empty string/);
    await expect(DB.open("postgres://127.0.0.1:1/x")).rejects.toThrow(/postgres:\/\/ storage is not available/);
    await expect(DB.open("amber://127.0.0.1:1")).rejects.toThrow(/^cannot connect to amber:\/\/127.0.0.1:1: .*ECONNREFUSED/);
    await expect(DB.open("amber://")).rejects.toThrow(/not a valid amber:\/\/ URL/);
    // A Storage object missing part of the synchronous group would never invalidate: refused.
    const { MemoryStorage } = await import("../src/index.ts");
    const partial = new MemoryStorage();
    Object.defineProperty(partial, "changesSinceSync", { value: undefined });
    await expect(DB.open(partial)).rejects.toThrow(/DB\.open\(\): .*is not a complete Storage: .*lacks changesSinceSync\(\)/);
    await partial.close();
    await expect(DB.open({ url: "x" } as never)).rejects.toThrow(/DB\.open\(\): .*is not a complete Storage: missing id .*vote\(\)/);
    const db = await DB.open("memory:");
    const conn = db.open();
    expect(() => conn.get(-1)).toThrow(/oid must be a non-negative integer, got -1/);
    expect(() => conn.get(987_654)).toThrow(/^object 987654 does not exist in the storage at snapshot \d+$/);
    expect(() => db.open({ cacheSize: 0 })).toThrow(RangeError);
    await expect(db.transact(() => 1, { retries: -1 })).rejects.toThrow(RangeError);
    await db.close();
    expect(() => db.open()).toThrow(/the database is closed/);
    await expect(conn.commit()).rejects.toThrow(/closed connection/);
  });
});

describe("class registration", () => {
  it("refuses two classes under one name and unregistered persistent classes, naming them", () => {
    class A extends Persistent {}
    class B extends Persistent {}
    registerClass(A, "test.reg.Same");
    expect(() => registerClass(B, "test.reg.Same")).toThrow(
      /cannot register class B as "test\.reg\.Same": that name is already registered to class A/,
    );
    expect(() => registerClass(A, "test.reg.Same")).not.toThrow();
    expect(() => registerClass(A, "test.reg.Other")).toThrow(/already registered as "test\.reg\.Same"/);
    expect(() => persistent("x")(class NotPersistent {} as never, {} as never)).toThrow(/must extend Persistent/);
  });

  it("keeps bookkeeping out of the user's namespace", () => {
    const o = new Order(3);
    expect(Object.keys(o)).toEqual(["total", "customer"]);
    expect(JSON.parse(JSON.stringify(o))).toEqual({ total: 3, customer: null });
    expect(stateOf(o)).toBe("new");
    expect(oidOf(o)).toBeUndefined();
    expect(() => stateOf({} as never)).toThrow(/expects a persistent object/);
  });
});
