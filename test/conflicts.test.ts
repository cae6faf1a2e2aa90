/**
 * Conflict resolution through the public API (SPEC §2 and §5): `resolveConflict` hooks on
 * user classes, the built-in resolvers (Counter, PersistentSet, PersistentMap with
 * mergeKeys), failures that write nothing, PersistentRef values in the hook's states,
 * the round-trip cost of a resolved conflict, and db.transact retries. Runs on every
 * storage of helpers.ts.
 */
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
  ConflictError,
  Connection,
  Counter,
  DB,
  Persistent,
  PersistentMap,
  PersistentRef,
  PersistentSet,
  oidOf,
  persistent,
  stateOf,
  type State,
} from "../src/index.ts";
import { cleanupDirs, fresh, openDB, storages } from "./helpers.ts";

afterAll(cleanupDirs);

// --- test classes ----------------------------------------------------------------------

/** Increments merge: committed + (mine - original); other fields are taken from mine. */
@persistent("test.conflicts.Tally")
class Tally extends Persistent {
  n = 0;
  label = "";
  static calls = 0;
  static resolveConflict(original: State, committed: State, mine: State): State | undefined {
    Tally.calls++;
    return { ...mine, n: committed.n + mine.n - original.n };
  }
}

/** Same shape, no hook: every write conflict stands. */
@persistent("test.conflicts.Plain")
class Plain extends Persistent {
  n = 0;
  text = "orig";
}

/** A hook that never resolves. */
@persistent("test.conflicts.Stubborn")
class Stubborn extends Persistent {
  n = 0;
  static calls = 0;
  static resolveConflict(): State | undefined {
    Stubborn.calls++;
    return undefined;
  }
}

/** A hook that throws. */
@persistent("test.conflicts.Thrower")
class Thrower extends Persistent {
  n = 0;
  static calls = 0;
  static resolveConflict(): State | undefined {
    Thrower.calls++;
    throw new Error("cannot merge this");
  }
}

/** A hook that returns something that is not a state. */
@persistent("test.conflicts.BadReturn")
class BadReturn extends Persistent {
  n = 0;
  static calls = 0;
  static resolveConflict(): State | undefined {
    BadReturn.calls++;
    return [1, 2, 3] as unknown as State;
  }
}

@persistent("test.conflicts.Item")
class Item extends Persistent {
  constructor(public name = "") {
    super();
  }
}

/** Holds a plain array of references; concurrent appends merge (a union, in order). */
@persistent("test.conflicts.Bag")
class Bag extends Persistent {
  items: Item[] = [];
  owner: Item | null = null;
  static seen: Array<{ original: State; committed: State; mine: State }> = [];
  static resolveConflict(original: State, committed: State, mine: State): State | undefined {
    Bag.seen.push({ original, committed, mine });
    const items = [...(committed.items as unknown[])];
    for (const x of mine.items as unknown[]) {
      if (!(original.items as unknown[]).includes(x) && !items.includes(x)) items.push(x);
    }
    return { ...mine, items };
  }
}

// --- helpers ---------------------------------------------------------------------------

const opened: DB[] = [];
afterEach(async () => {
  for (const db of opened.splice(0)) await db.close().catch(() => {});
});

async function commitError(conn: Connection): Promise<unknown> {
  return conn.commit().then(
    () => undefined,
    (e: unknown) => e,
  );
}

/** Round trips one commit of `conn` costs. */
async function commitCost(conn: Connection): Promise<{ trips: number; error: unknown }> {
  const before = conn.stats.roundTrips;
  const error = await commitError(conn);
  return { trips: conn.stats.roundTrips - before, error };
}

for (const s of storages) {
  describe(s.name, () => {
    const setup = async (init: (root: PersistentMap<string, any>) => void): Promise<DB> => {
      const db = await openDB(s.url());
      opened.push(db);
      await db.transact(init);
      return db;
    };

    // --- 1. the three-connection scenario ---------------------------------------------

    it("three connections increment a Tally with a hook: all commit, the sum lands", async () => {
      const db = await setup((root) => root.set("t", new Tally()));
      const conns = [db.open(), db.open(), db.open()];
      const tallies = conns.map((c) => c.root().get("t") as Tally);
      for (const t of tallies) expect(t.n).toBe(0); // all three read the same snapshot
      const callsBefore = Tally.calls;
      tallies.forEach((t, i) => {
        t.n++;
        t.label = `conn${i}`;
      });

      await conns[0]!.commit();
      expect(tallies[0]!.n).toBe(1);
      await conns[1]!.commit();
      expect(tallies[1]!.n).toBe(2); // the resolved state: 1 committed + (1 - 0) mine
      expect(tallies[1]!.label).toBe("conn1"); // the rest of the state is the hook's (mine)
      await conns[2]!.commit();
      expect(tallies[2]!.n).toBe(3);
      expect(stateOf(tallies[2]!)).toBe("saved");

      expect(conns.map((c) => c.stats.conflictsResolved)).toEqual([0, 1, 1]);
      expect(Tally.calls - callsBefore).toBe(2);

      const reader = fresh(db);
      const t = reader.root().get("t") as Tally;
      expect(t.n).toBe(3);
      expect(t.label).toBe("conn2");

      // The first connection's object is stale (n = 1); another increment from it merges
      // against the right original (what it committed), giving 4, not 2 or 5.
      tallies[0]!.n++;
      await conns[0]!.commit();
      expect(tallies[0]!.n).toBe(4);
      expect(conns[0]!.stats.conflictsResolved).toBe(1);
      // The second connection, after its resolved commit, conflicts and merges again.
      tallies[1]!.n += 10;
      await conns[1]!.commit();
      expect(tallies[1]!.n).toBe(14);
      expect(conns[1]!.stats.conflictsResolved).toBe(2);
      reader.abort();
      expect((reader.root().get("t") as Tally).n).toBe(14);
    });

    // --- 2. Counter ---------------------------------------------------------------------

    it("Counter: adds from three connections always merge, negative adds included", async () => {
      const db = await setup((root) => root.set("c", new Counter(10)));
      const conns = [db.open(), db.open(), db.open()];
      const counters = conns.map((c) => c.root().get("c") as Counter);
      expect(counters.map((c) => c.value)).toEqual([10, 10, 10]);
      expect(counters[0]!.add(5)).toBe(15);
      counters[1]!.add(-3);
      counters[1]!.add(-4);
      counters[2]!.add(100);
      for (const c of conns) await c.commit();
      expect(counters[2]!.value).toBe(108);
      expect(conns.map((c) => c.stats.conflictsResolved)).toEqual([0, 1, 1]);
      expect((fresh(db).root().get("c") as Counter).value).toBe(108);

      // Rounds of concurrent commits (vote and finish interleave).
      let expected = 108;
      for (let round = 0; round < 5; round++) {
        for (const c of conns) c.abort();
        const amounts = [round + 1, -(round * 2), 7];
        conns.forEach((c, i) => {
          (c.root().get("c") as Counter).add(amounts[i] === 0 ? -1 : amounts[i]!);
          expected += amounts[i] === 0 ? -1 : amounts[i]!;
        });
        await Promise.all(conns.map((c) => c.commit()));
      }
      expect((fresh(db).root().get("c") as Counter).value).toBe(expected);
    });

    it("Counter.add rejects NaN and infinities with a TypeError and changes nothing", async () => {
      const db = await setup((root) => root.set("c", new Counter(1)));
      const conn = db.open();
      const c = conn.root().get("c") as Counter;
      for (const bad of [NaN, Infinity, -Infinity, "2" as unknown as number]) {
        expect(() => c.add(bad)).toThrow(TypeError);
      }
      expect(() => new Counter(NaN)).toThrow(TypeError);
      expect(() => new Counter(Infinity)).toThrow(TypeError);
      expect(c.value).toBe(1);
      expect(stateOf(c)).toBe("saved");
      c.add(-2);
      await conn.commit();
      expect((fresh(db).root().get("c") as Counter).value).toBe(-1);
    });

    // --- 3. PersistentSet and PersistentMap ----------------------------------------------

    it("PersistentSet: concurrent adds and removes of different members merge", async () => {
      let x!: Item, y!: Item, z!: Item;
      const db = await setup((root) => {
        x = new Item("x");
        y = new Item("y");
        z = new Item("z");
        root.set("items", [x, y, z]);
        root.set("set", new PersistentSet<unknown>(["a", "b", 1, 2, x]));
      });
      const [a, b] = [db.open(), db.open()];
      const setA = a.root().get("set") as PersistentSet<unknown>;
      const setB = b.root().get("set") as PersistentSet<unknown>;
      const [, ya] = a.root().get("items") as Item[];
      const [xb, , zb] = b.root().get("items") as Item[];
      expect(setA.size).toBe(5);
      expect(setB.size).toBe(5);
      setA.add("c");
      setA.delete(1);
      setA.add(ya!);
      setB.add(3);
      setB.delete("a");
      setB.delete(xb!);
      setB.add(zb!);
      setB.add("c"); // the same addition on both sides
      await a.commit();
      await b.commit();
      expect(b.stats.conflictsResolved).toBe(1);
      const expected = (members: Iterable<unknown>) =>
        [...members].map((m) => (m instanceof Item ? `item:${m.name}` : String(m))).sort();
      // b's object holds the merged set, with b's own Item objects as members.
      expect(expected(setB)).toEqual(["2", "3", "b", "c", "item:y", "item:z"]);
      expect(setB.has(zb!)).toBe(true);
      const yb = (b.root().get("items") as Item[])[1]!;
      expect(setB.has(yb)).toBe(true);
      expect(setB.has(xb!)).toBe(false);

      const r = fresh(db);
      const setR = r.root().get("set") as PersistentSet<unknown>;
      expect(expected(setR)).toEqual(["2", "3", "b", "c", "item:y", "item:z"]);
      const itemsR = r.root().get("items") as Item[];
      expect(setR.has(itemsR[1]!)).toBe(true);
      expect(setR.has(itemsR[2]!)).toBe(true);
    });

    it("PersistentSet: a new persistent object added concurrently is stored with the merge", async () => {
      const db = await setup((root) => root.set("set", new PersistentSet<unknown>(["a"])));
      const [a, b] = [db.open(), db.open()];
      const setA = a.root().get("set") as PersistentSet<unknown>;
      const setB = b.root().get("set") as PersistentSet<unknown>;
      expect(setA.size + setB.size).toBe(2);
      setA.add("from-a");
      const added = new Item("new-in-b");
      setB.add(added);
      await a.commit();
      // Regression: a resolved commit once lost a NEW member object (the merged set held a ghost of a discarded oid).
      await b.commit();
      expect(b.stats.conflictsResolved).toBe(1);
      expect(setB.has(added)).toBe(true); // the connection keeps its own object as the member
      expect(oidOf(added)).toBeGreaterThan(0);
      const setR = fresh(db).root().get("set") as PersistentSet<unknown>;
      const names = [...setR].map((m) => (m instanceof Item ? m.name : m));
      expect(names.sort()).toEqual(["a", "from-a", "new-in-b"]);
    });

    it("PersistentMap with mergeKeys: different keys and equal changes merge, different values conflict", async () => {
      let shared!: Item;
      const db = await setup((root) => {
        shared = new Item("shared");
        root.set("shared", shared);
        root.set("m", new PersistentMap<string, unknown>([["k1", 1], ["k2", 2], ["gone", 0]], { mergeKeys: true }));
      });
      const [a, b] = [db.open(), db.open()];
      const mA = a.root().get("m") as PersistentMap<string, unknown>;
      const mB = b.root().get("m") as PersistentMap<string, unknown>;
      expect(mA.mergeKeys && mB.mergeKeys).toBe(true);
      mA.set("k1", 10);
      mA.set("same", "v");
      mA.set("ref", a.root().get("shared"));
      mA.delete("gone");
      mB.set("k2", 20);
      mB.set("same", "v"); // same key, same value
      mB.set("ref", b.root().get("shared")); // same key, same persistent object
      mB.set("onlyB", [1, 2]);
      await a.commit();
      await b.commit();
      expect(b.stats.conflictsResolved).toBe(1);
      expect(mB.get("k1")).toBe(10);
      expect(mB.get("ref")).toBe(b.root().get("shared"));
      expect(mB.has("gone")).toBe(false);

      const r = fresh(db);
      const mR = r.root().get("m") as PersistentMap<string, unknown>;
      expect(mR.mergeKeys).toBe(true);
      expect(Object.fromEntries([...mR].filter(([k]) => k !== "ref"))).toEqual({ k1: 10, k2: 20, same: "v", onlyB: [1, 2] });
      expect(mR.get("ref")).toBe(r.root().get("shared"));

      // Same key, different values: the conflict stands.
      a.abort();
      b.abort();
      (a.root().get("m") as PersistentMap<string, unknown>).set("k1", "a");
      (b.root().get("m") as PersistentMap<string, unknown>).set("k1", "b");
      await a.commit();
      const err = await commitError(b);
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).oids).toEqual([oidOf(mB)]);
      expect((err as ConflictError).classNames).toEqual(["amber.PersistentMap"]);
      expect(b.stats.conflictsResolved).toBe(1);
      b.abort();
      expect((b.root().get("m") as PersistentMap<string, unknown>).get("k1")).toBe("a");

      // A removal on one side and a change of the same key on the other: conflict.
      a.abort();
      (a.root().get("m") as PersistentMap<string, unknown>).delete("k2");
      (b.root().get("m") as PersistentMap<string, unknown>).set("k2", 21);
      await a.commit();
      expect(await commitError(b)).toBeInstanceOf(ConflictError);
    });

    it("a PersistentMap without mergeKeys conflicts even on different keys", async () => {
      const db = await setup((root) => root.set("m", new PersistentMap<string, number>([["k1", 1]])));
      const [a, b] = [db.open(), db.open()];
      const mA = a.root().get("m") as PersistentMap<string, number>;
      const mB = b.root().get("m") as PersistentMap<string, number>;
      expect(mA.mergeKeys).toBe(false);
      mA.set("x", 1);
      mB.set("y", 2);
      await a.commit();
      const err = await commitError(b);
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).oids).toEqual([oidOf(mB)]);
      expect(b.stats.conflictsResolved).toBe(0);
      b.abort();
      expect([...(b.root().get("m") as PersistentMap<string, number>).keys()].sort()).toEqual(["k1", "x"]);
    });

    it("several resolvable conflicts in one commit all merge, and each is counted", async () => {
      const db = await setup((root) => {
        root.set("c", new Counter());
        root.set("t", new Tally());
        root.set("set", new PersistentSet<string>());
        root.set("untouched", new Plain());
      });
      const [a, b] = [db.open(), db.open()];
      const objs = (c: Connection) => [c.root().get("c"), c.root().get("t"), c.root().get("set")] as [Counter, Tally, PersistentSet<string>];
      const [cA, tA, setA] = objs(a);
      const [cB, tB, setB] = objs(b);
      expect(cA.value + tA.n + setA.size + cB.value + tB.n + setB.size).toBe(0);
      cA.add(1);
      tA.n = 1;
      setA.add("a");
      await a.commit();
      cB.add(2);
      tB.n = 2;
      setB.add("b");
      (b.root().get("untouched") as Plain).text = "b";
      await b.commit();
      expect(b.stats.conflictsResolved).toBe(3);
      expect([cB.value, tB.n, [...setB].sort()]).toEqual([3, 3, ["a", "b"]]);
      const r = fresh(db).root();
      expect((r.get("c") as Counter).value).toBe(3);
      expect((r.get("t") as Tally).n).toBe(3);
      expect([...(r.get("set") as PersistentSet<string>)].sort()).toEqual(["a", "b"]);
      expect((r.get("untouched") as Plain).text).toBe("b");
    });

    // --- 4. failures write nothing -------------------------------------------------------

    for (const [name, Cls] of [
      ["returns undefined", Stubborn],
      ["throws", Thrower],
      ["returns a non-state", BadReturn],
    ] as const) {
      it(`a hook that ${name} keeps the conflict, and nothing of the transaction is written`, async () => {
        const db = await setup((root) => {
          root.set("s", new Cls());
          root.set("other", new Plain());
          root.set("c", new Counter());
        });
        const [a, b] = [db.open(), db.open()];
        const sA = a.root().get("s") as InstanceType<typeof Cls>;
        const otherA = a.root().get("other") as Plain;
        const sB = b.root().get("s") as InstanceType<typeof Cls>;
        expect(sA.n + sB.n + otherA.n).toBe(0);
        sB.n = 7;
        await b.commit();
        const callsBefore = Cls.calls;
        sA.n = 1;
        otherA.text = "changed by a";
        (a.root().get("c") as Counter).add(1);
        a.root().set("newKey", new Item("new"));
        const err = await commitError(a);
        expect(Cls.calls).toBeGreaterThan(callsBefore); // the hook was asked
        expect(err).toBeInstanceOf(ConflictError);
        const ce = err as ConflictError;
        expect(ce.oids).toEqual([oidOf(sA)]);
        expect(ce.classNames).toEqual([`test.conflicts.${Cls.name}`]);
        expect(ce.message).toContain(`test.conflicts.${Cls.name}#${oidOf(sA)}`);
        expect(a.stats.conflictsResolved).toBe(0);
        a.abort();

        const r = fresh(db);
        const root = r.root();
        expect((root.get("s") as InstanceType<typeof Cls>).n).toBe(7);
        expect((root.get("other") as Plain).text).toBe("orig");
        expect((root.get("c") as Counter).value).toBe(0);
        expect(root.has("newKey")).toBe(false);
      });
    }

    for (const order of ["resolvable first", "unresolvable first"] as const) {
      it(`one resolvable and one unresolvable conflict fail the whole transaction (${order})`, async () => {
        const db = await setup((root) => {
          // Oids follow creation order: the first object created conflicts first.
          if (order === "resolvable first") {
            root.set("c", new Counter());
            root.set("p", new Plain());
          } else {
            root.set("p", new Plain());
            root.set("c", new Counter());
          }
          root.set("t", new Tally());
        });
        const [a, b] = [db.open(), db.open()];
        const [cA, pA, tA] = ["c", "p", "t"].map((k) => a.root().get(k)) as [Counter, Plain, Tally];
        const [cB, pB, tB] = ["c", "p", "t"].map((k) => b.root().get(k)) as [Counter, Plain, Tally];
        expect(cA.value + pA.n + tA.n + cB.value + pB.n + tB.n).toBe(0);
        cB.add(2);
        pB.n = 2;
        tB.n = 2;
        await b.commit();
        cA.add(1);
        pA.n = 1;
        tA.n = 1;
        const err = await commitError(a);
        expect(err).toBeInstanceOf(ConflictError);
        expect((err as ConflictError).oids).toContain(oidOf(pA));
        expect(a.stats.conflictsResolved).toBe(0);
        // The failed resolution changed none of a's objects: its own changes are in place.
        expect(cA.value).toBe(1);
        expect(tA.n).toBe(1);
        a.abort();
        const r = fresh(db).root();
        expect((r.get("c") as Counter).value).toBe(2);
        expect((r.get("p") as Plain).n).toBe(2);
        expect((r.get("t") as Tally).n).toBe(2);
        // And a's view after abort is the committed one.
        expect(cA.value).toBe(2);
      });
    }

    // --- 5. PersistentRef values ---------------------------------------------------------

    it("a hook sees references as PersistentRefs and its result's references come back as objects", async () => {
      const db = await setup((root) => {
        const first = new Item("first");
        root.set("first", first);
        root.set("fromA", new Item("fromA"));
        root.set("fromB", new Item("fromB"));
        const bag = new Bag();
        bag.items = [first];
        bag.owner = first;
        root.set("bag", bag);
      });
      const [a, b] = [db.open(), db.open()];
      const bagA = a.root().get("bag") as Bag;
      const bagB = b.root().get("bag") as Bag;
      expect(bagA.items.length + bagB.items.length).toBe(2);
      bagA.items.push(a.root().get("fromA") as Item);
      bagB.items.push(b.root().get("fromB") as Item);
      await a.commit();
      Bag.seen = [];
      await b.commit();
      expect(b.stats.conflictsResolved).toBe(1);
      expect(Bag.seen).toHaveLength(1);

      const { original, committed, mine } = Bag.seen[0]!;
      const firstOid = oidOf(b.root().get("first") as Item);
      for (const st of [original, committed, mine]) {
        expect(st.items[0]).toBeInstanceOf(PersistentRef);
        expect(st.items[0]).not.toBeInstanceOf(Item);
        expect(st.owner).toBeInstanceOf(PersistentRef);
      }
      // One PersistentRef per oid across the three states of a resolution.
      expect(original.items[0]).toBe(committed.items[0]);
      expect(committed.items[0]).toBe(mine.items[0]);
      expect(mine.owner).toBe(mine.items[0]);
      const ref = original.items[0] as PersistentRef;
      expect(ref.oid).toBe(firstOid);
      expect(ref.className).toBe("test.conflicts.Item");
      expect(committed.items[1].oid).toBe(oidOf(b.root().get("fromA") as Item));
      expect(mine.items[1].oid).toBe(oidOf(b.root().get("fromB") as Item));
      expect(original.items).toHaveLength(1);

      // b's object holds real objects: its own, by identity, in the merged order.
      expect(bagB.items).toHaveLength(3);
      expect(bagB.items[0]).toBe(b.root().get("first"));
      expect(bagB.items[1]).toBe(b.root().get("fromA"));
      expect(bagB.items[2]).toBe(b.root().get("fromB"));
      expect(bagB.owner).toBe(b.root().get("first"));
      expect(bagB.items.map((i) => i.name)).toEqual(["first", "fromA", "fromB"]);

      const r = fresh(db).root();
      const bagR = r.get("bag") as Bag;
      expect(bagR.items.map((i) => i.name)).toEqual(["first", "fromA", "fromB"]);
      expect(bagR.items[2]).toBe(r.get("fromB"));
      expect(bagR.owner).toBe(r.get("first"));
    });

    it("a hook's result may reference a new object of the resolving transaction", async () => {
      const db = await setup((root) => root.set("bag", new Bag()));
      const [a, b] = [db.open(), db.open()];
      const bagA = a.root().get("bag") as Bag;
      const bagB = b.root().get("bag") as Bag;
      expect(bagA.items.length + bagB.items.length).toBe(0);
      bagA.items.push(new Item("newA"));
      const newB = new Item("newB");
      bagB.items.push(newB);
      await a.commit();
      // Regression: a reference to a NEW object in the resolved state once became a ghost of a discarded oid.
      await b.commit();
      expect(b.stats.conflictsResolved).toBe(1);
      expect(bagB.items[1] === newB).toBe(true); // b's own new object, not a ghost standing in for it
      expect(oidOf(newB)).toBeGreaterThan(0);
      const bagR = fresh(db).root().get("bag") as Bag;
      expect(bagR.items.map((i) => i.name)).toEqual(["newA", "newB"]);
    });

    // --- 6. round trips ------------------------------------------------------------------

    it("a conflict resolved by a hook costs no more round trips than no conflict; a class without the hook fails after the vote", async () => {
      const db = await setup((root) => {
        root.set("t1", new Tally());
        root.set("t2", new Tally());
        root.set("p", new Plain());
        root.set("q", new Plain());
        root.set("s", new Stubborn());
      });
      const [a, b] = [db.open(), db.open()];
      const load = (c: Connection) => ["t1", "t2", "p", "q"].map((k) => c.root().get(k)) as [Tally, Tally, Plain, Plain];
      const [t1A, , pA] = load(a);
      const [t1B, t2B, pB, qB] = load(b);
      const sA = a.root().get("s") as Stubborn;
      expect(t1A.n + t1B.n + t2B.n + pA.n + pB.n + qB.n + sA.n).toBe(0); // loaded before measuring
      expect((b.root().get("s") as Stubborn).n).toBe(0);

      // Without a conflict: a Tally commit and a Plain commit cost the same.
      t2B.n = 1;
      const plainTally = await commitCost(b);
      expect(plainTally.error).toBeUndefined();
      qB.n = 1;
      const plainPlain = await commitCost(b);
      expect(plainPlain.error).toBeUndefined();
      expect(plainTally.trips).toBeGreaterThan(0);
      expect(plainTally.trips).toBe(plainPlain.trips);

      // The same commit with a conflict the hook resolves: exactly one more.
      t1A.n = 5;
      await a.commit();
      t1B.n = 1;
      const resolved = await commitCost(b);
      expect(resolved.error).toBeUndefined();
      expect(b.stats.conflictsResolved).toBe(1);
      // At most one more (SPEC §5). In fact none: after a merge the commit finishes at once
      // (no second vote), so it costs what a commit without conflict costs.
      expect(resolved.trips).toBe(plainTally.trips);
      expect(t1B.n).toBe(6);

      // A class without the hook: ConflictError at the vote, its only request (no finish,
      // no second vote).
      pA.n = 5;
      await a.commit();
      pB.n = 1;
      const failed = await commitCost(b);
      expect(failed.error).toBeInstanceOf(ConflictError);
      expect(failed.trips).toBe(1);
      expect(b.stats.conflictsResolved).toBe(1);
      b.abort();

      // A hook that declines (undefined) costs no more than no hook at all.
      sA.n = 5;
      await a.commit();
      (b.root().get("s") as Stubborn).n = 1;
      const declined = await commitCost(b);
      expect(declined.error).toBeInstanceOf(ConflictError);
      expect(declined.trips).toBe(failed.trips);
    });

    // --- 7. db.transact ------------------------------------------------------------------

    it("transact: an unresolvable conflict every time ends in a ConflictError naming the object and the attempts", async () => {
      const db = await setup((root) => root.set("s", new Stubborn()));
      let runs = 0;
      let oid = 0;
      const callsBefore = Stubborn.calls;
      const err = await db
        .transact(
          async (root) => {
            runs++;
            const s = root.get("s") as Stubborn;
            oid = oidOf(s)!;
            s.n++;
            await db.transact((r) => void (r.get("s") as Stubborn).n++); // always commits first
          },
          { retries: 2, backoffMs: 1 },
        )
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConflictError);
      expect(runs).toBe(3);
      expect(Stubborn.calls - callsBefore).toBe(3);
      const message = (err as Error).message;
      expect(message).toContain("after 3 attempts");
      expect(message).toContain(`test.conflicts.Stubborn#${oid}`);
      expect((err as ConflictError).oids).toEqual([oid]);
      expect((fresh(db).root().get("s") as Stubborn).n).toBe(3); // only the inner transactions
    });

    it("transact: a conflict the hook resolves needs no retry", async () => {
      const db = await setup((root) => root.set("t", new Tally()));
      let runs = 0;
      let used: Connection | undefined;
      await db.transact(
        async (root, conn) => {
          runs++;
          used = conn;
          (root.get("t") as Tally).n += 10;
          await db.transact((r) => void (r.get("t") as Tally).n++); // commits first
        },
        { retries: 0 },
      );
      expect(runs).toBe(1);
      expect(used!.stats.conflictsResolved).toBe(1);
      expect((fresh(db).root().get("t") as Tally).n).toBe(11);
    });
  });
}
