/**
 * Change tracking (SPEC §1, §2): every kind of change is committed without markChanged,
 * transaction boundaries look only at what the transaction touched, stale objects are
 * refused, abort restores stored state and never throws, commits yield to the event loop,
 * fields added to a class read as its declared defaults, JSON.stringify does no I/O.
 * Runs on the memory and embedded storages and on a real server process.
 */
import { afterAll, describe, expect, it } from "vitest";
import {
  BTree,
  DB,
  Persistent,
  PersistentList,
  PersistentMap,
  TransactionError,
  oidOf,
  persistent,
  stateOf,
} from "../src/index.ts";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { cleanupDirs, fresh, openDB, storages, tempDir } from "./helpers.ts";

const run = promisify(execFile);

afterAll(cleanupDirs);

@persistent("ct.Doc")
class Doc extends Persistent {
  title = "";
  tags: string[] = [];
  meta = new Map<string, unknown>();
  seen = new Set<string>();
  when = new Date(0);
  samples = new Float64Array(2);
  nested: { list: number[] } = { list: [] };
}

@persistent("ct.Holder")
class Holder extends Persistent {
  items: number[] = [];
  n = 0;
}

@persistent("ct.Acc")
class Acc extends Persistent {
  meta = new Map<string, unknown>();
  n = 0;
}

describe.each(storages)("change tracking on $name", ({ url }) => {
  async function setup(): Promise<DB> {
    return openDB(url());
  }

  it("commits every kind of in-place change made in a later transaction of the same connection", async () => {
    const db = await setup();
    await db.transact((root) => root.set("d", new Doc()));
    const conn = fresh(db);
    const changes: Array<[string, (d: Doc) => void, (d: Doc) => void]> = [
      ["array", (d) => d.tags.push("t"), (d) => expect(d.tags).toEqual(["t"])],
      ["Map", (d) => d.meta.set("k", [1]), (d) => expect(d.meta.get("k")).toEqual([1])],
      ["Map value in place", (d) => (d.meta.get("k") as number[]).push(2), (d) => expect(d.meta.get("k")).toEqual([1, 2])],
      ["Set", (d) => d.seen.add("s"), (d) => expect([...d.seen]).toEqual(["s"])],
      ["Date", (d) => d.when.setTime(1234), (d) => expect(d.when.getTime()).toBe(1234)],
      ["typed array", (d) => (d.samples[1] = 7.5), (d) => expect([...d.samples]).toEqual([0, 7.5])],
      ["nested object", (d) => d.nested.list.push(3), (d) => expect(d.nested.list).toEqual([3])],
      ["new property", (d) => ((d as any).extra = { a: 1 }), (d) => expect((d as any).extra).toEqual({ a: 1 })],
    ];
    const d = conn.root().get("d") as Doc;
    for (const [what, change, check] of changes) {
      change(d); // the same object, carried on from the previous transaction
      expect(stateOf(d), what).toBe("changed");
      await conn.commit();
      const other = fresh(db);
      check(other.root().get("d") as Doc);
      await other.close();
    }
    await conn.close();
    await db.close();
  });

  it("a BTree value changed in place is committed, and the committing cache agrees with the store", async () => {
    const db = await setup();
    await db.transact((root) => {
      const t = new BTree<number, number[]>();
      t.set(1, [1]);
      root.set("t", t);
    });
    const conn = fresh(db);
    const t = conn.root().get("t") as BTree<number, number[]>;
    t.get(1)!.push(2);
    await conn.commit();
    expect(t.get(1)).toEqual([1, 2]);
    const other = fresh(db);
    expect((other.root().get("t") as BTree<number, number[]>).get(1)).toEqual([1, 2]);
    for (const [, v] of t) v.push(3); // values handed out by iteration too
    await conn.commit();
    const third = fresh(db);
    expect((third.root().get("t") as BTree<number, number[]>).get(1)).toEqual([1, 2, 3]);
    await Promise.all([conn.close(), other.close(), third.close()]);
    await db.close();
  });

  it("a BTree value changed in place conflicts with a concurrent change of its bucket instead of being lost in a merge", async () => {
    const db = await setup();
    await db.transact((root) => {
      const t = new BTree<number, number[]>();
      t.set(1, [1]);
      t.set(2, [2]);
      root.set("t", t);
    });
    const a = fresh(db);
    const ta = a.root().get("t") as BTree<number, number[]>;
    ta.get(1)!.push(10);
    await db.transact((root) => void (root.get("t") as BTree<number, number[]>).set(3, [3]));
    await expect(a.commit()).rejects.toThrow(/another transaction committed/);
    a.abort();
    expect(ta.get(1)).toEqual([1]);
    ta.get(1)!.push(10);
    await a.commit();
    const check = fresh(db);
    const tc = check.root().get("t") as BTree<number, number[]>;
    expect([...tc]).toEqual([[1, [1, 10]], [2, [2]], [3, [3]]]);
    await Promise.all([a.close(), check.close()]);
    await db.close();
  });

  it("an object restored by abort is invalidated by a BTree merge that moves the snapshot past another commit", async () => {
    const db = await setup();
    await db.transact((root) => {
      root.set("t", new BTree<number, string>());
      root.set("x", new PersistentList([1]));
    });
    const a = fresh(db);
    const x = a.root().get("x") as PersistentList<number>;
    const t = a.root().get("t") as BTree<number, string>;
    x.push(2);
    a.abort(); // x holds its stored state again (installed from its record on next touch)
    void t.size;
    await db.transact((root) => void (root.get("x") as PersistentList<number>).push(99));
    await db.transact((root) => void (root.get("t") as BTree<number, string>).set(2, "other"));
    t.set(3, "mine"); // conflicts with the other insert into the same bucket: merged by replay
    await a.commit();
    expect([...t.keys()]).toEqual([2, 3]);
    expect([...x]).toEqual([1, 99]); // not the state from before the other commit
    await a.close();
    await db.close();
  });

  it("a boundary looks only at what the transaction touched; containers taken earlier stay with their transaction", async () => {
    const db = await setup();
    await db.transact((root) => {
      const list: Holder[] = [];
      for (let i = 0; i < 300; i++) list.push(new Holder());
      root.set("holders", new PersistentList(list));
    });
    const conn = fresh(db);
    const holders = [...(conn.root().get("holders") as PersistentList<Holder>)];
    const taken = holders.map((h) => h.items); // every object loaded, each handing out a container
    await conn.commit();
    // Changes through containers of the previous transaction (even unstorable ones) are not
    // this transaction's: only what it touches is looked at and written.
    for (const items of taken) (items as unknown[]).push(() => "not storable");
    holders[0]!.n = 1;
    holders[1]!.items.push(2); // read again in this transaction: a fresh container
    await conn.commit();
    expect(holders[0]!.items).toEqual([]);
    holders[2]!.n = 5;
    conn.abort();
    await conn.close();
    const check = fresh(db);
    const again = [...(check.root().get("holders") as PersistentList<Holder>)];
    expect(again[0]!.n).toBe(1);
    expect(again[0]!.items).toEqual([]);
    expect(again[1]!.items).toEqual([2]);
    expect(again[2]!.n).toBe(0);
    await check.close();
    await db.close();
  });

  it("nested values of a new object stay with the transaction that committed it", async () => {
    const db = await setup();
    const conn = fresh(db);
    const d = new Doc();
    const tags = d.tags;
    conn.root().set("d", d);
    await conn.commit();
    tags.push("after the commit, through the array of the new object");
    d.title = "t"; // a change of the same object in the next transaction
    expect(d.tags).toEqual([]);
    expect(d.tags).not.toBe(tags);
    d.tags.push("read again");
    await conn.commit();
    const other = fresh(db);
    const o = other.root().get("d") as Doc;
    expect([o.title, o.tags]).toEqual(["t", ["read again"]]);
    await Promise.all([conn.close(), other.close()]);
    await db.close();
  });

  it("refuses changes to an object whose transaction ended, also after its connection is checked out again", async () => {
    const db = await setup();
    await db.transact((root) => root.set("d", new Doc()));
    let kept: Doc | undefined;
    let tags: string[] | undefined;
    await db.transact((root) => {
      kept = root.get("d") as Doc;
      tags = kept.tags;
      void kept.title;
    });
    const d = kept!;
    expect(d.title).toBe(""); // reading what it held goes on
    const stale = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        expect(err).toBeInstanceOf(TransactionError);
        expect((err as TransactionError).code).toBe("stale-object");
        expect((err as Error).message).toMatch(new RegExp(`ct\\.Doc#${oidOf(d)}`));
        expect((err as Error).message).toMatch(/get the object again in the current transaction/);
        return;
      }
      throw new Error("expected a stale-object error");
    };
    stale(() => (d.title = "stale"));
    stale(() => ((d as any).fresh = 1));
    // Another transaction on the same pooled connection: it has its own instance.
    await db.transact(async (root) => {
      const mine = root.get("d") as Doc;
      expect(mine).not.toBe(d);
      stale(() => (d.title = "during another transaction"));
      tags!.push("through a container taken earlier");
      mine.title = "mine";
    });
    const conn = fresh(db);
    const now = conn.root().get("d") as Doc;
    expect(now.title).toBe("mine");
    expect(now.tags).toEqual([]);
    await conn.close();
    await db.close();
  });

  it("abort never throws, restores stored state, and leaves the connection usable after a failed commit", async () => {
    const db = await setup();
    await db.transact((root) => root.set("accs", new PersistentList([new Acc()])));
    const conn = fresh(db);
    const acc = (conn.root().get("accs") as PersistentList<Acc>).get(0)!;
    acc.meta.set("cb", () => 1);
    acc.n = 5;
    await expect(conn.commit()).rejects.toThrow(/functions cannot be stored/);
    expect(() => conn.abort()).not.toThrow();
    expect(acc.meta.has("cb")).toBe(false);
    expect(acc.n).toBe(0);
    acc.meta.set("ok", 1);
    await conn.commit();
    conn.abort();
    const other = fresh(db);
    const acc2 = (other.root().get("accs") as PersistentList<Acc>).get(0)!;
    expect([...acc2.meta]).toEqual([["ok", 1]]);
    await Promise.all([conn.close(), other.close()]);
    await db.close();
  });

  it("awaiting commits lets timers run", async () => {
    const db = await setup();
    await db.transact((root) => root.set("acc", new Acc()));
    let fired = 0;
    const timer = setInterval(() => fired++, 0);
    let commits = 0;
    try {
      for (let i = 0; i < 200 && fired < 3; i++) {
        await db.transact((root) => {
          (root.get("acc") as Acc).n++;
        });
        commits++;
      }
    } finally {
      clearInterval(timer);
    }
    expect(fired).toBeGreaterThanOrEqual(3);
    expect(commits).toBeLessThan(200);
    await db.close();
  });

  it("a transaction that only called readCurrent writes no transaction, and still conflicts", async () => {
    const db = await setup();
    await db.transact((root) => root.set("acc", new Acc()));
    const before = await db.lastTid();
    const a = fresh(db);
    const acc = a.root().get("acc") as Acc;
    a.readCurrent(acc);
    await a.commit();
    expect(await db.lastTid()).toBe(before);
    a.readCurrent(acc);
    await db.transact((root) => void ((root.get("acc") as Acc).n = 9));
    await expect(a.commit()).rejects.toThrow(/ConflictError|another transaction committed/);
    a.abort();
    await a.close();
    await db.close();
  });

  it("JSON.stringify does no I/O: loaded objects nest, ghosts and repeats are references", async () => {
    const db = await setup();
    await db.transact((root) => {
      const d = new Doc();
      d.title = "a";
      d.samples[0] = 1.5;
      const other = new Doc();
      other.title = "b";
      (d as any).link = other;
      (d as any).self = d;
      root.set("d", d);
    });
    const conn = fresh(db);
    const d = conn.root().get("d") as Doc;
    void d.title;
    conn.resetStats();
    const json = JSON.parse(JSON.stringify(d));
    expect(conn.stats.roundTrips).toBe(0);
    expect(json.title).toBe("a");
    expect(json.samples).toEqual([1.5, 0]);
    expect(json.link).toEqual({ $ref: oidOf((d as any).link), $class: "ct.Doc" });
    expect(json.self).toEqual({ $ref: oidOf(d), $class: "ct.Doc" });
    void (d as any).link.title; // loaded now: nested
    const again = JSON.parse(JSON.stringify({ doc: d }));
    expect(again.doc.link.title).toBe("b");
    await conn.close();
    await db.close();
  });

  it("in strict mode conn.root() is usable", async () => {
    const db = await setup();
    await db.transact((root) => root.set("x", 1));
    const conn = db.open({ strict: true });
    expect(conn.root().get("x")).toBe(1);
    await conn.close();
    await db.close();
  });
});

// Schema evolution: records written by an older version of a class (in another process,
// test/fixtures/old-profiles.ts) read as the newer class's declared defaults.
@persistent("ct.Profile")
class Profile extends Persistent {
  name = "";
  visits = 0;
  labels: string[] = ["new"];
  orders = new PersistentList<unknown>();
}

describe("fields added to a class", () => {
  it("read as the declared defaults on old records, containers fresh per object, persistent defaults not shared", async () => {
    const path = tempDir();
    await run(process.execPath, ["--import", "tsx", "test/fixtures/old-profiles.ts", path]);
    const db = await DB.open(path);
    const conn = db.open();
    const a = conn.root().get("a") as Profile;
    const b = conn.root().get("b") as Profile;
    expect(a).toBeInstanceOf(Profile);
    expect(a.name).toBe("a");
    expect(a.visits).toBe(0);
    expect(a.labels).toEqual(["new"]);
    expect(a.labels).not.toBe(b.labels);
    expect(a.orders).toBeUndefined(); // the upgrade hook's business
    expect(stateOf(a)).toBe("saved");
    a.labels.push("x");
    await conn.commit();
    const other = db.open();
    expect((other.root().get("a") as Profile).labels).toEqual(["new", "x"]);
    expect((other.root().get("b") as Profile).labels).toEqual(["new"]);
    await db.close();
  });
});

// A PersistentMap holding a container: values handed out are tracked too.
describe("collections hand out nested values", () => {
  it("a PersistentMap's array value changed in place is committed", async () => {
    const db = await DB.open("memory:");
    await db.transact((root) => root.set("m", new PersistentMap([["k", [1]]])));
    const conn = db.open();
    const m = conn.root().get("m") as PersistentMap<string, number[]>;
    m.get("k")!.push(2);
    await conn.commit();
    const other = db.open();
    expect((other.root().get("m") as PersistentMap<string, number[]>).get("k")).toEqual([1, 2]);
    await db.close();
  });
});

describe("stale objects given to a current transaction", () => {
  it("are refused as references and by prefetch, naming the object", async () => {
    const db = await DB.open("memory:");
    await db.transact((root) => root.set("d", new Doc()));
    const stale = await db.transact((root) => root.get("d") as Doc);
    await expect(db.transact((root) => root.set("again", stale))).rejects.toThrow(
      expect.objectContaining({ code: "stale-object", message: expect.stringMatching(/earlier checkout/) }),
    );
    const conn = db.open();
    await expect(conn.prefetch([stale])).rejects.toThrow(expect.objectContaining({ code: "stale-object" }));
    await conn.close();
    await db.close();
  });
});
