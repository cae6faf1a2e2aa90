/**
 * Conflict resolution at its edges: lost updates, stale reads after a BTree replay,
 * originals of hook classes (also in an old class version), historical views with
 * readCurrent, and the built-in resolvers meeting each other in one commit. Tests marked
 * "Regression (fixed)" pin bugs found in a review of the conflict-resolution code.
 *
 * Some scenarios need a commit to land at a precise moment inside another connection's
 * commit (between its first vote and its replay); they wrap `db.storage.vote` to run that
 * commit, which is what a second process would do at that moment.
 */
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
  BTree,
  ConflictError,
  Counter,
  DB,
  Persistent,
  PersistentMap,
  PersistentSet,
  persistent,
  registerClass,
  oidOf,
  stateOf,
  type CommitRequest,
  type Connection,
  type State,
  type StorageConflict,
} from "../src/index.ts";
// Only to write a record in an old class version (a fixture, as in transactions.test.ts).
import { writeEnvelope } from "../src/codec/record.ts";
import { encodeState } from "../src/codec/state.ts";
import { cleanupDirs, fresh, openDB, storages } from "./helpers.ts";

afterAll(cleanupDirs);

@persistent("edge.Item")
class Item extends Persistent {
  n = 0;
}

@persistent("edge.Tally")
class Tally extends Persistent {
  n = 0;
  static resolveConflict(original: State, committed: State, mine: State): State | undefined {
    return { ...mine, n: committed.n + mine.n - original.n };
  }
}

const opened: DB[] = [];
afterEach(async () => {
  for (const db of opened.splice(0)) await db.close().catch(() => {});
});

async function open(url = "memory:"): Promise<DB> {
  const db = await openDB(url);
  opened.push(db);
  return db;
}

/** Commits root.t = BTree {1: "a", 2: "b"} and root.x = a new Item. */
async function seedTreeAndItem(db: DB): Promise<void> {
  await db.transact((root) => {
    const t = new BTree<number, string>();
    t.set(1, "a");
    t.set(2, "b");
    root.set("t", t);
    root.set("x", new Item());
  });
}

function errorOf(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => undefined,
    (e: unknown) => e,
  );
}

/**
 * Run `during` once, right after the first vote that reports conflicts (before the
 * voting connection merges): a commit of another process landing at that moment.
 */
function afterFirstConflictingVote(db: DB, during: () => Promise<void>): void {
  const s = db.storage as { vote(r: CommitRequest): Promise<StorageConflict[]> };
  const vote = s.vote.bind(s);
  let done = false;
  s.vote = async (r: CommitRequest) => {
    const conflicts = await vote(r);
    if (!done && conflicts.length > 0) {
      done = true;
      await during();
    }
    return conflicts;
  };
}

describe("conflict resolution edge cases on memory", () => {
  it("after the readCurrent failure above, db.transact can still succeed (no permanent conflict)", async () => {
    const db = await open();
    await seedTreeAndItem(db);
    const a = fresh(db);
    const b = fresh(db);
    const xa = a.root().get("x") as Item;
    void xa.n;
    a.readCurrent(xa);
    (a.root().get("t") as BTree<number, string>).set(1, "A");
    (b.root().get("t") as BTree<number, string>).set(2, "B");
    await b.commit();
    afterFirstConflictingVote(db, async () => {
      const c = fresh(db);
      (c.root().get("x") as Item).n = 5;
      await c.commit();
      await c.close();
    });
    await errorOf(a.commit());
    a.abort();
    // The same connection, next transaction: write x (stale state, old serial) -> conflicts every time.
    (a.root().get("x") as Item).n += 1;
    const err = await errorOf(a.commit());
    // Regression (fixed): the stale x keeps its old serial, so every later write to it conflicts (transact retries can never succeed on this connection)
    expect(err).toBeUndefined();
    expect((fresh(db).root().get("x") as Item).n).toBe(6);
  });

  it("resolveConflict gets the upgraded original for an object loaded in an old class version", async () => {
    class VTally extends Persistent {
      n = 0;
      static upgrade(state: Record<string, unknown>, storedVersion: number): Record<string, unknown> {
        return storedVersion < 1 ? { n: state.count } : state;
      }
      static resolveConflict(original: State, committed: State, mine: State): State | undefined {
        return { ...mine, n: committed.n + mine.n - original.n };
      }
    }
    const name = `edge.VTally.${Math.random()}`;
    registerClass(VTally, name, { version: 1 });
    const db = await open();
    await db.transact(() => {});
    const [oid] = await db.storage.newOids(1);
    const enc = encodeState("V", { count: 5 }, () => {});
    await db.storage.finish({
      records: [
        {
          oid: oid!,
          serial: 0,
          data: writeEnvelope({ className: name, classVersion: 0, refOids: [], refPaths: [], refClasses: [], state: enc.state }),
        },
      ],
      readCurrent: [],
    });
    await db.lastTid();
    const a = fresh(db);
    const b = fresh(db);
    const va = a.get(oid!) as VTally;
    const vb = b.get(oid!) as VTally;
    expect([va.n, vb.n]).toEqual([5, 5]); // both upgraded (and so both written)
    va.n += 1;
    vb.n += 2;
    await b.commit();
    await a.commit();
    // Regression (fixed): #originals keeps the pre-upgrade bytes ({count: 5}), so the hook sees original.n undefined and writes NaN
    expect(va.n).toBe(8);
    expect((fresh(db).get(oid!) as VTally).n).toBe(8);
  });

  it("a historical view with readCurrent commits nothing", async () => {
    const db = await open();
    await db.transact((root) => root.set("x", new Item()));
    const at = await db.lastTid();
    await db.transact((root) => {
      (root.get("x") as Item).n = 1;
    });
    const before = await db.lastTid();
    const h = db.open({ at });
    const x = h.root().get("x") as Item;
    expect(x.n).toBe(0);
    h.readCurrent(x);
    const err = await errorOf(h.commit());
    // Regression (fixed): commit() of a historical view only refuses when objects changed; with readCurrent it votes (ConflictError here) or writes an empty transaction
    expect(err).toBeUndefined();
    expect(await db.lastTid()).toBe(before);
  });

  it("a historical view with readCurrent on an unchanged object writes no transaction", async () => {
    const db = await open();
    await db.transact((root) => root.set("x", new Item()));
    const at = await db.lastTid();
    const h = db.open({ at });
    const x = h.root().get("x") as Item;
    h.readCurrent(x);
    await errorOf(h.commit());
    // Regression (fixed): the historical view's commit() reached finish and wrote an empty transaction
    expect(await db.lastTid()).toBe(at);
  });

  it("a replay whose net change is empty (the same change committed) writes no empty transaction", async () => {
    const db = await open();
    await db.transact((root) => {
      const t = new BTree<number, string>();
      t.set(1, "a");
      t.set(2, "b");
      root.set("t", t);
    });
    const a = fresh(db);
    const b = fresh(db);
    (a.root().get("t") as BTree<number, string>).set(1, "x");
    (b.root().get("t") as BTree<number, string>).set(1, "x");
    await b.commit();
    const before = await db.lastTid();
    await a.commit();
    // Regression (fixed): after the replay nothing is left to write, but rounds > 1 skip the "nothing to commit" check and finish an empty transaction
    expect(await db.lastTid()).toBe(before);
  });

  it("a container value changed in place and set again merges with a change to another key of the bucket", async () => {
    const db = await open();
    await db.transact((root) => {
      const t = new BTree<number, unknown>();
      t.set(1, [1, 2]);
      t.set(2, "b");
      root.set("t", t);
    });
    const a = fresh(db);
    const b = fresh(db);
    const ta = a.root().get("t") as BTree<number, number[] | string>;
    const arr = ta.get(1) as number[];
    arr.push(3);
    ta.set(1, arr);
    (b.root().get("t") as BTree<number, unknown>).set(2, "B");
    await b.commit();
    const err = await errorOf(a.commit());
    // Regression (fixed): CHANGED_IN_PLACE equals nothing, so the replay treats key 1 as changed by the other side too and the whole transaction conflicts (SPEC §5: different keys merge)
    expect(err).toBeUndefined();
    const t = fresh(db).root().get("t") as BTree<number, unknown>;
    expect(t.get(1)).toEqual([1, 2, 3]);
    expect(t.get(2)).toBe("B");
  });

  it("a prefetch in flight across a BTree replay does not install records of the old snapshot", async () => {
    const db = await open();
    await seedTreeAndItem(db);
    const a = fresh(db);
    const b = fresh(db);
    const xa = a.root().get("x") as Item; // a ghost
    expect(stateOf(xa)).toBe("ghost");
    (a.root().get("t") as BTree<number, string>).set(1, "A");
    (b.root().get("t") as BTree<number, string>).set(2, "B");
    (b.root().get("x") as Item).n = 5;
    await b.commit();
    // Hold a's prefetch until the replay has moved a's snapshot; release it during the second vote.
    const s = db.storage as any;
    const load = s.load.bind(s);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    s.load = async (oids: number[], at: number) => {
      const out = await load(oids, at);
      await held;
      return out;
    };
    const vote = s.vote.bind(s);
    let votes = 0;
    s.vote = async (r: CommitRequest) => {
      const out = await vote(r);
      if (++votes === 2) {
        release();
        for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
      }
      return out;
    };
    const p = a.prefetch([xa]);
    await a.commit();
    await p;
    s.load = load;
    s.vote = vote;
    // Regression (fixed): prefetch checks only #txn, which a replay does not bump: it installs x as of the old snapshot, and #begin (from the moved tid) never invalidates it
    expect(xa.n).toBe(5);
  });
});

for (const s of storages) {
  describe(`BTree replay on ${s.name}`, () => {
    it("readCurrent object changed between the first vote and the replay is not left stale", async () => {
      const db = await open(s.url());
      await seedTreeAndItem(db);
      const a = fresh(db);
      const b = fresh(db);
      const xa = a.root().get("x") as Item;
      expect(xa.n).toBe(0);
      a.readCurrent(xa);
      (a.root().get("t") as BTree<number, string>).set(1, "A");
      (b.root().get("t") as BTree<number, string>).set(2, "B");
      await b.commit();
      afterFirstConflictingVote(db, async () => {
        const c = fresh(db);
        (c.root().get("x") as Item).n = 5;
        await c.commit();
        await c.close();
      });
      expect(await errorOf(a.commit())).toBeInstanceOf(ConflictError);
      a.abort();
      // Regression (fixed): #replayTrees keeps readCurrent objects changed by others (not ghostified) and moves #tid past their change, so abort/#begin never invalidates x: it stays at n = 0
      expect((a.root().get("x") as Item).n).toBe(5);
    });

    it("replay with a tiny cache (evictions while replaying), a changed-in-place object and a hook", async () => {
      const db = await open(s.url());
      await db.transact((root) => {
        const t = new BTree<number, string>({ bucketSize: 4, nodeSize: 4 });
        for (let i = 0; i < 200; i++) t.set(i * 10, `v${i}`);
        root.set("t", t);
        root.set("y", new Tally());
        const bag = new Item() as Item & { list: number[] };
        bag.list = [1];
        root.set("bag", bag);
      });
      const a = db.open({ cacheSize: 3 });
      const b = fresh(db);
      const ta = a.root().get("t") as BTree<number, string>;
      const tb = b.root().get("t") as BTree<number, string>;
      for (let i = 0; i < 200; i += 7) ta.set(i * 10 + 1, "A");
      for (let i = 0; i < 200; i += 5) tb.set(i * 10 + 2, "B");
      for (let i = 0; i < 200; i += 11) tb.delete(i * 10);
      ((a.root().get("bag") as Item & { list: number[] }).list).push(2); // in place: stays "saved" until commit
      (a.root().get("y") as Tally).n += 1;
      (b.root().get("y") as Tally).n += 2;
      await b.commit();
      await a.commit();
      const r = fresh(db);
      const t = r.root().get("t") as BTree<number, string>;
      t.check();
      const expected = new Map<number, string>();
      for (let i = 0; i < 200; i++) expected.set(i * 10, `v${i}`);
      for (let i = 0; i < 200; i += 7) expected.set(i * 10 + 1, "A");
      for (let i = 0; i < 200; i += 5) expected.set(i * 10 + 2, "B");
      for (let i = 0; i < 200; i += 11) expected.delete(i * 10);
      expect([...t]).toEqual([...expected].sort((x, y) => x[0] - y[0]));
      expect((r.root().get("y") as Tally).n).toBe(3);
      expect((r.root().get("bag") as Item & { list: number[] }).list).toEqual([1, 2]);
    });

    it("strict mode: a replay loads what it needs and the commit succeeds", async () => {
      const db = await open(s.url());
      await db.transact((root) => {
        const t = new BTree<number, string>({ bucketSize: 4 });
        for (let i = 0; i < 40; i++) t.set(i * 10, `v${i}`);
        root.set("t", t);
      });
      const a = db.open({ strict: true, cacheSize: 10_000 });
      const b = fresh(db);
      await a.loadClosure(a.root());
      const ta = a.root().get("t") as BTree<number, string>;
      ta.set(11, "A");
      ta.set(12, "A");
      const tb = b.root().get("t") as BTree<number, string>;
      for (let i = 13; i < 20; i++) tb.set(i, "B"); // splits the bucket a changed
      await b.commit();
      await a.commit();
      expect(a.strict).toBe(true);
      a.abort();
      await a.loadClosure(a.root());
      const t = a.root().get("t") as BTree<number, string>;
      t.check();
      expect(t.get(11)).toBe("A");
      expect(t.get(19)).toBe("B");
    });

    it("a hook that keeps conflicting: the commit ends (merged or ConflictError) and the total is exact", async () => {
      const db = await open(s.url());
      await db.transact((root) => root.set("y", new Tally()));
      const a = fresh(db);
      (a.root().get("y") as Tally).n += 1;
      const st = db.storage as any;
      const vote = st.vote.bind(st);
      const finish = st.finish.bind(st);
      let busy = false;
      let injected = 0;
      const inject = async () => {
        if (busy) return;
        busy = true;
        const c = fresh(db);
        (c.root().get("y") as Tally).n += 100;
        await c.commit();
        await c.close();
        injected++;
        busy = false;
      };
      st.vote = async (r: CommitRequest) => {
        await inject();
        return vote(r);
      };
      st.finish = async (r: CommitRequest, res?: unknown) => {
        await inject();
        return finish(r, res);
      };
      const err = await errorOf(a.commit());
      st.vote = vote;
      st.finish = finish;
      if (err !== undefined) expect(err).toBeInstanceOf(ConflictError);
      a.abort();
      expect((a.root().get("y") as Tally).n).toBe(100 * injected + (err === undefined ? 1 : 0));
      // Bounded: at most two injected commits per round (vote, finish) for MAX_RESOLVE_ROUNDS
      // (200) rounds, a bound generous enough that contention on a server (many writers of one
      // Counter) always merges.
      expect(injected).toBeLessThanOrEqual(2 * 200 + 10);
    });
  });
}

for (const s of storages) {
  describe(`built-in resolvers on ${s.name}`, () => {
    it("Counter and Tally resolved in the same round as a BTree replay", async () => {
      const db = await open(s.url());
      await db.transact((root) => {
        const t = new BTree<number, string>({ bucketSize: 4 });
        for (let i = 0; i < 20; i++) t.set(i * 10, `v${i}`);
        root.set("t", t);
        root.set("c", new Counter(0));
        root.set("y", new Tally());
      });
      const a = fresh(db);
      const b = fresh(db);
      const ta = a.root().get("t") as BTree<number, string>;
      const tb = b.root().get("t") as BTree<number, string>;
      for (let i = 0; i < 6; i++) ta.set(i * 10 + 1, "A");
      for (let i = 0; i < 6; i++) tb.set(i * 10 + 2, "B");
      (a.root().get("c") as Counter).add(3);
      (b.root().get("c") as Counter).add(4);
      (a.root().get("y") as Tally).n += 10;
      (b.root().get("y") as Tally).n += 20;
      await b.commit();
      await a.commit();
      const r = fresh(db);
      const t = r.root().get("t") as BTree<number, string>;
      t.check();
      expect(t.size).toBe(32);
      expect((r.root().get("c") as Counter).value).toBe(7);
      expect((r.root().get("y") as Tally).n).toBe(30);
      expect((a.root().get("c") as Counter).value).toBe(7);
    });

    it("PersistentSet: a member removed by mine and re-added by committed stays; hook sees new members", async () => {
      const db = await open(s.url());
      await db.transact((root) => root.set("s", new PersistentSet<unknown>(["a", "b"])));
      const a = fresh(db);
      const b = fresh(db);
      const sa = a.root().get("s") as PersistentSet<unknown>;
      const sb = b.root().get("s") as PersistentSet<unknown>;
      const item = new Item();
      sa.delete("a");
      sa.add(item);
      sb.add("c");
      await b.commit();
      await a.commit();
      const r = fresh(db);
      const members = [...(r.root().get("s") as PersistentSet<unknown>)];
      expect(members.filter((m) => typeof m === "string").sort()).toEqual(["b", "c"]);
      const objs = members.filter((m) => m instanceof Item) as Item[];
      expect(objs.length).toBe(1);
      expect(oidOf(objs[0]!)).toBe(oidOf(item));
    });

    it("Counter loaded by loadClosure/prefetch (bytes not copied) keeps a correct original after more loads", async () => {
      const db = await open(s.url());
      await db.transact((root) => {
        root.set("c", new Counter(10));
        const m = new PersistentMap<number, Item>();
        for (let i = 0; i < 300; i++) {
          const it = new Item();
          it.n = i;
          m.set(i, it);
        }
        root.set("m", m);
      });
      const a = fresh(db);
      const b = fresh(db);
      await a.loadClosure(a.root(), { maxObjects: 3 });
      const ca = a.root().get("c") as Counter;
      await a.prefetch([ca]);
      expect(ca.value).toBe(10);
      // many more loads through batched replies
      const m = a.root().get("m") as PersistentMap<number, Item>;
      await a.prefetch([...m.values()]);
      await a.loadClosure(m);
      ca.add(1);
      (b.root().get("c") as Counter).add(5);
      await b.commit();
      await a.commit();
      expect((fresh(db).root().get("c") as Counter).value).toBe(16);
    });

    it("PersistentMap mergeKeys: different keys merge, same key different values conflict", async () => {
      const db = await open(s.url());
      await db.transact((root) => root.set("m", new PersistentMap<string, unknown>([["k", 1]], { mergeKeys: true })));
      const a = fresh(db);
      const b = fresh(db);
      (a.root().get("m") as PersistentMap<string, unknown>).set("a", 1);
      (b.root().get("m") as PersistentMap<string, unknown>).set("b", 2);
      await b.commit();
      await a.commit();
      const r = fresh(db);
      expect([...(r.root().get("m") as PersistentMap<string, unknown>)].sort()).toEqual([
        ["a", 1],
        ["b", 2],
        ["k", 1],
      ]);
      // same key
      const c = fresh(db);
      const d = fresh(db);
      (c.root().get("m") as PersistentMap<string, unknown>).set("k", 10);
      (d.root().get("m") as PersistentMap<string, unknown>).set("k", 20);
      await d.commit();
      expect(await errorOf(c.commit())).toBeInstanceOf(ConflictError);
    });
  });
}

export type { Connection };
