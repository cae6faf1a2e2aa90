/**
 * Closure loading and prefetching through the public API, on every storage: `conn.loadClosure`
 * (one round trip for a whole graph, objects already held not sent again, limits cut it
 * breadth-first, snapshot consistency, dangling references) and `conn.prefetch`. Then, on
 * the server storage only, the client storage's record cache shared by a DB's connections
 * (hits, invalidation, size bounds) and its persistent form (`clientCachePath`).
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Packr } from "msgpackr";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
  type Connection,
  type DB,
  ObjectNotFoundError,
  Persistent,
  PersistentList,
  PersistentMap,
  TransactionError,
  isPersistent,
  oidOf,
  persistent,
  stateOf,
} from "../src/index.ts";
import { writeEnvelope } from "../src/codec/record.ts";
import { encodeState } from "../src/codec/state.ts";
import type { ClientStorage } from "../src/storage/server/client-storage.ts";
import { cleanupDirs, fresh, openDB, serverUrl, storages } from "./helpers.ts";

@persistent("closure.Node")
class Node extends Persistent {
  children: Node[] = [];
  peer: Node | null = null;
  bag: PersistentMap<string, Node> | PersistentList<Node> | null = null;
  constructor(
    public label = "",
    public value = 0,
  ) {
    super();
  }
}

// --- the graph ----------------------------------------------------------------------------
//
// root["tree"] = T, a Node with L1 children (T refers to nothing else: its closure cut at
// 1 + L1 objects is exactly T and its children). Each level-1 node has L2 children whose
// `peer` is their parent (cycles), and a bag: even ones a PersistentMap holding two of its
// own children (shared references) and two leaves only the map reaches; odd ones a
// PersistentList of three leaves and T itself (a cycle back to the top). Each level-2 node
// has L3 leaf children, each leaf's `peer` the next sibling (shared), the last one's T.

const L1 = 6;
const L2 = 6;
const L3 = 5;
const NODES = 1 + L1 + L1 * L2 + L1 * L2 * L3 + (L1 / 2) * 2 + (L1 / 2) * 3;
const BAGS = L1;
const TOTAL = NODES + BAGS; // 244 objects in T's closure
const VALUE_SUM = (NODES * (NODES - 1)) / 2; // values are 0 .. NODES-1

function buildTree(root: PersistentMap<string, any>): void {
  let next = 0;
  const t = new Node("T", next++);
  for (let i = 0; i < L1; i++) {
    const a = new Node(`T.${i}`, next++);
    t.children.push(a);
    for (let j = 0; j < L2; j++) {
      const b = new Node(`T.${i}.${j}`, next++);
      b.peer = a;
      a.children.push(b);
      for (let k = 0; k < L3; k++) b.children.push(new Node(`T.${i}.${j}.${k}`, next++));
      b.children.forEach((c, k) => (c.peer = b.children[k + 1] ?? t));
    }
    if (i % 2 === 0) {
      a.bag = new PersistentMap<string, Node>([
        ["first", a.children[0]!],
        ["second", a.children[1]!],
        ["x", new Node(`T.${i}.x`, next++)],
        ["y", new Node(`T.${i}.y`, next++)],
      ]);
    } else {
      a.bag = new PersistentList<Node>([new Node(`T.${i}.l0`, next++), new Node(`T.${i}.l1`, next++), new Node(`T.${i}.l2`, next++), t]);
    }
  }
  if (next !== NODES) throw new Error(`built ${next} nodes, expected ${NODES}`);
  root.set("tree", t);
}

/**
 * Visit every object reachable from `start`, touching every field (loading ghosts as it
 * goes). Returns the distinct objects, the sum of the node values and the labels by value.
 */
function walk(start: Persistent): { objects: Set<Persistent>; sum: number; nodes: Map<string, Node> } {
  const objects = new Set<Persistent>();
  const nodes = new Map<string, Node>();
  let sum = 0;
  const stack: Persistent[] = [start];
  while (stack.length > 0) {
    const o = stack.pop()!;
    if (objects.has(o)) continue;
    objects.add(o);
    if (o instanceof Node) {
      sum += o.value;
      nodes.set(o.label, o);
      for (const c of o.children) stack.push(c);
      if (o.peer !== null) stack.push(o.peer);
      if (o.bag !== null) stack.push(o.bag);
    } else if (o instanceof PersistentMap) {
      for (const [k, v] of o) {
        expect(typeof k).toBe("string");
        if (isPersistent(v)) stack.push(v);
      }
    } else if (o instanceof PersistentList) {
      for (const v of o) if (isPersistent(v)) stack.push(v);
    } else {
      throw new Error(`unexpected object ${String(o)}`);
    }
  }
  return { objects, sum, nodes };
}

/** The value buildTree gives node T.i (values are handed out depth-first). */
function level1Value(i: number): number {
  let v = 1;
  for (let k = 0; k < i; k++) v += 1 + L2 + L2 * L3 + (k % 2 === 0 ? 2 : 3);
  return v;
}

const treeOf = (conn: Connection): Node => conn.root().get("tree") as Node;
/** A node by its path of child indexes, touching only the nodes on the way. */
const nodeAt = (t: Node, ...path: number[]): Node => path.reduce((n, i) => n.children[i]!, t);

const opened: DB[] = [];
/** Open a DB that afterEach closes. */
async function track(p: Promise<DB>): Promise<DB> {
  const db = await p;
  opened.push(db);
  return db;
}
afterEach(async () => {
  for (const db of opened.splice(0).reverse()) await db.close();
});
afterAll(cleanupDirs);

describe.each(storages)("loadClosure and prefetch on $name", ({ name, url }) => {
  /** A DB with the tree; `url` is the DB's URL (to open a second client on the server). */
  async function setup(options = {}): Promise<{ db: DB; dbUrl: string }> {
    const dbUrl = url();
    const db = await track(openDB(dbUrl, options));
    await db.transact((root) => buildTree(root));
    return { db, dbUrl };
  }
  /** Another client of the same database on the server; the same DB elsewhere (memory: is per DB). */
  const otherClient = async (db: DB, dbUrl: string): Promise<DB> => (name === "server" ? track(openDB(dbUrl)) : db);

  // --- 1. one round trip --------------------------------------------------------------------

  it("loads a tree of a few hundred objects (maps, lists, shared references, cycles) in one round trip", async () => {
    const { db } = await setup();
    const conn = fresh(db);
    const t = treeOf(conn);
    expect(stateOf(t)).toBe("ghost");
    conn.resetStats();
    const result = await conn.loadClosure(t);
    expect(result).toEqual({ loaded: TOTAL, truncated: false });
    expect(conn.stats.roundTrips).toBe(1);
    expect(conn.stats.loads).toBe(TOTAL); // each object once, despite shared references and cycles
    expect(conn.stats.bytesRead).toBeGreaterThan(TOTAL * 10);

    conn.resetStats();
    const seen = walk(t);
    expect(conn.stats.roundTrips).toBe(0);
    expect(conn.stats.loads).toBe(0);
    expect(seen.objects.size).toBe(TOTAL);
    expect(new Set([...seen.objects].map((o) => oidOf(o))).size).toBe(TOTAL);
    for (const o of seen.objects) expect(stateOf(o)).toBe("saved");
    expect(seen.sum).toBe(VALUE_SUM);
    // Identity: a shared reference is one object, cycles close on the same objects.
    const a0 = nodeAt(t, 0);
    const bag = a0.bag as PersistentMap<string, Node>;
    expect(bag.get("first")).toBe(a0.children[0]);
    expect(a0.children[3]!.peer).toBe(a0);
    expect((nodeAt(t, 1).bag as PersistentList<Node>).at(-1)).toBe(t);
    expect(nodeAt(t, 2, 3, L3 - 1).peer).toBe(t);
    expect(conn.stats.roundTrips).toBe(0);

    // Everything held: a second closure loads nothing, in one more round trip.
    conn.resetStats();
    expect(await conn.loadClosure(t)).toEqual({ loaded: 0, truncated: false });
    expect(conn.stats.loads).toBe(0);
    expect(conn.stats.roundTrips).toBe(1);
    await conn.close();
  });

  it("loads the closure of the root map too, and of an object in the middle of a cycle", async () => {
    const { db } = await setup();
    const conn = fresh(db);
    const root = conn.root();
    conn.resetStats();
    // conn.root() loaded the root map: the closure loads the tree below it.
    expect(await conn.loadClosure(root)).toEqual({ loaded: TOTAL, truncated: false });
    expect(conn.stats.roundTrips).toBe(1);
    const again = fresh(db);
    const leaf = nodeAt(treeOf(again), 4, 2);
    again.resetStats();
    // From a level-2 node the cycles (peer -> parent, list -> T) reach the whole tree.
    expect(await again.loadClosure(leaf)).toEqual({ loaded: TOTAL - 2, truncated: false });
    again.resetStats();
    expect(walk(treeOf(again)).objects.size).toBe(TOTAL);
    expect(again.stats.roundTrips).toBe(0);
    await conn.close();
    await again.close();
  });

  it("two overlapping closures of one connection load each object once", async () => {
    const { db } = await setup();
    const conn = fresh(db);
    const t = treeOf(conn);
    const a0 = nodeAt(t, 0); // loads T; T.0 stays a ghost
    conn.resetStats();
    const [r1, r2] = await Promise.all([conn.loadClosure(t), conn.loadClosure(a0)]);
    expect(r1.loaded + r2.loaded).toBe(TOTAL - 1);
    expect(conn.stats.loads).toBe(TOTAL - 1);
    expect(conn.stats.roundTrips).toBe(2);
    conn.resetStats();
    expect(walk(t).sum).toBe(VALUE_SUM);
    expect(conn.stats.roundTrips).toBe(0);
    await conn.close();
  });

  // --- 2. objects already held are not sent again ------------------------------------------

  for (const variant of name === "server" ? ["default", "no client cache"] : ["default"]) {
    it(`sends only the objects the connection does not hold yet (${variant})`, async () => {
      const { db } = await setup(variant === "default" ? {} : { clientCacheBytes: 0 });
      const full = fresh(db);
      const ft = treeOf(full);
      full.resetStats();
      await full.loadClosure(ft);
      const fullBytes = full.stats.bytesRead;
      await full.close();

      const conn = fresh(db);
      const t = treeOf(conn);
      conn.resetStats();
      // Part of the graph: T, its first two children and their subtrees of nodes.
      void t.label;
      for (const a of t.children.slice(0, 2)) for (const b of a.children) for (const c of b.children) void c.label;
      const part = conn.stats.loads;
      const partBytes = conn.stats.bytesRead;
      expect(part).toBe(1 + 2 + 2 * L2 + 2 * L2 * L3);

      conn.resetStats();
      const result = await conn.loadClosure(t);
      expect(result).toEqual({ loaded: TOTAL - part, truncated: false });
      expect(conn.stats.loads).toBe(TOTAL - part);
      expect(conn.stats.roundTrips).toBe(1);
      expect(conn.stats.bytesRead).toBe(fullBytes - partBytes);
      conn.resetStats();
      expect(walk(t).sum).toBe(VALUE_SUM);
      expect(conn.stats.roundTrips).toBe(0);
      await conn.close();
    });
  }

  it("does not send objects changed (not yet committed) in this transaction, and keeps their changes", async () => {
    const { db } = await setup();
    const conn = fresh(db);
    const t = treeOf(conn);
    const a1 = nodeAt(t, 1);
    a1.value = -1000; // T and T.1 loaded, T.1 changed
    expect(stateOf(a1)).toBe("changed");
    conn.resetStats();
    const result = await conn.loadClosure(t);
    expect(result).toEqual({ loaded: TOTAL - 2, truncated: false });
    expect(stateOf(a1)).toBe("changed");
    expect(a1.value).toBe(-1000);
    expect(walk(t).sum).toBe(VALUE_SUM - level1Value(1) - 1000);
    await conn.commit();
    const other = fresh(db);
    expect(nodeAt(treeOf(other), 1).value).toBe(-1000);
    await conn.close();
    await other.close();
  });

  // --- 3. limits ----------------------------------------------------------------------------

  it("maxObjects and maxBytes cut the closure breadth-first", async () => {
    const { db, dbUrl } = await setup();
    // Record sizes, measured through another client (so this DB's record cache stays cold).
    const mdb = await otherClient(db, dbUrl);
    const m = fresh(mdb);
    const mt = treeOf(m);
    m.resetStats();
    void mt.label;
    const bytesT = m.stats.bytesRead;
    for (const a of mt.children) void a.label;
    const bytesLevel1 = m.stats.bytesRead;
    expect(bytesLevel1).toBeGreaterThan(bytesT);
    await m.close();

    const expectLevel1Only = (t: Node, loadedChildren: number) => {
      expect(stateOf(t)).toBe("saved");
      const states = t.children.map((a) => stateOf(a));
      expect(states.filter((s) => s === "saved").length).toBe(loadedChildren);
      expect(states.filter((s) => s === "ghost").length).toBe(L1 - loadedChildren);
      for (const a of t.children) {
        if (stateOf(a) !== "saved") continue;
        expect(stateOf(a.bag!)).toBe("ghost");
        for (const b of a.children) expect(stateOf(b)).toBe("ghost");
      }
    };

    // On the server each connection gets its own client, so that the DB's record cache is
    // cold: this tests the server's walk; a warm client cache is tested further down.
    const cold = async (): Promise<Connection> => fresh(name === "server" ? await track(openDB(dbUrl)) : db);
    const c1 = await cold();
    const t1 = treeOf(c1);
    c1.resetStats();
    expect(await c1.loadClosure(t1, { maxObjects: 1 + L1 })).toEqual({ loaded: 1 + L1, truncated: true });
    expect(c1.stats.loads).toBe(1 + L1);
    expectLevel1Only(t1, L1);
    // The rest follows on a second closure, which skips what is held.
    expect(await c1.loadClosure(t1)).toEqual({ loaded: TOTAL - 1 - L1, truncated: false });
    expect(walk(t1).sum).toBe(VALUE_SUM);

    const c2 = await cold();
    const t2 = treeOf(c2);
    expect(await c2.loadClosure(t2, { maxObjects: 1 })).toEqual({ loaded: 1, truncated: true });
    expectLevel1Only(t2, 0);

    const c3 = await cold();
    const t3 = treeOf(c3);
    c3.resetStats();
    expect(await c3.loadClosure(t3, { maxBytes: bytesLevel1 })).toEqual({ loaded: 1 + L1, truncated: true });
    expect(c3.stats.bytesRead).toBe(bytesLevel1);
    expectLevel1Only(t3, L1);

    const c4 = await cold();
    const t4 = treeOf(c4);
    c4.resetStats();
    const r4 = await c4.loadClosure(t4, { maxBytes: bytesLevel1 - 1 });
    expect(r4).toEqual({ loaded: L1, truncated: true });
    expect(c4.stats.bytesRead).toBeLessThan(bytesLevel1);
    expectLevel1Only(t4, L1 - 1);

    // A limit the whole closure fits in exactly is not a cut; one less is.
    const c5 = await cold();
    expect(await c5.loadClosure(treeOf(c5), { maxObjects: TOTAL })).toEqual({ loaded: TOTAL, truncated: false });
    const c6 = await cold();
    expect(await c6.loadClosure(treeOf(c6), { maxObjects: TOTAL - 1 })).toEqual({ loaded: TOTAL - 1, truncated: true });
    // A root larger than maxBytes: nothing is loaded.
    const c7 = await cold();
    const t7 = treeOf(c7);
    expect(await c7.loadClosure(t7, { maxBytes: bytesT - 1 })).toEqual({ loaded: 0, truncated: true });
    expect(stateOf(t7)).toBe("ghost");
    for (const c of [c1, c2, c3, c4, c5, c6, c7]) await c.close();
  });

  it("limits default to the connection's cacheSize", async () => {
    const { db } = await setup();
    const conn = fresh(db, { cacheSize: 20 });
    const t = treeOf(conn);
    conn.resetStats();
    expect(await conn.loadClosure(t)).toEqual({ loaded: 20, truncated: true });
    expect(stateOf(t)).toBe("saved");
    await conn.close();
  });

  it("rejects bad limits with RangeError and stays usable", async () => {
    const { db } = await setup();
    const conn = fresh(db);
    const t = treeOf(conn);
    for (const bad of [0, -1, 1.5, "x", Number.NaN, Number.POSITIVE_INFINITY, -Number.POSITIVE_INFINITY, [7]]) {
      await expect(conn.loadClosure(t, { maxObjects: bad as number }), `maxObjects ${String(bad)}`).rejects.toThrow(RangeError);
    }
    for (const bad of [0, -1, 0.5, "x", Number.NaN, "100"]) {
      await expect(conn.loadClosure(t, { maxBytes: bad as number }), `maxBytes ${String(bad)}`).rejects.toThrow(RangeError);
    }
    expect(stateOf(t)).toBe("ghost");
    expect(await conn.loadClosure(t)).toEqual({ loaded: TOTAL, truncated: false });
    await db.transact((root) => ((root.get("tree") as Node).value = 77));
    conn.abort();
    expect(t.value).toBe(77);
    await conn.close();
  });

  // Limits the wire cannot carry as they are (fractions, Infinity, >= 2^53) mean the same as their clamped integers (a regression test: the server once closed the connection).
  it("limits the client accepts do not break the connection (maxBytes 1.5, Infinity, 2**60; maxObjects 2**53)", async () => {
    const { db } = await setup();
    const conn = fresh(db);
    const t = treeOf(conn);
    const failures: string[] = [];
    for (const limits of [{ maxBytes: 1.5 }, { maxBytes: Number.POSITIVE_INFINITY }, { maxBytes: 2 ** 60 }, { maxObjects: 2 ** 53 }]) {
      const outcome = await conn.loadClosure(t, limits).then(
        (r) => r,
        (e: unknown) => e,
      );
      // A clean RangeError before anything is sent, or a result; never a dropped connection.
      if (outcome instanceof Error && !(outcome instanceof RangeError)) failures.push(`${Object.entries(limits).map(([k, v]) => `${k} ${v}`).join()}: ${outcome.message}`);
      if (!(outcome instanceof Error)) {
        expect(outcome).toEqual(limits.maxBytes === 1.5 ? { loaded: 0, truncated: true } : { loaded: TOTAL, truncated: false });
        conn.abort();
        conn.cacheMinimize(); // back to ghosts for the next limit
      }
    }
    expect(failures).toEqual([]);
    await conn.close();
  });

  // --- 4. snapshot consistency ---------------------------------------------------------------

  it("reads the closure at the connection's snapshot, and the new state after abort", async () => {
    const { db, dbUrl } = await setup();
    const a = fresh(db);
    const t = treeOf(a);
    void t.label; // a's snapshot is fixed; it holds the root and T
    const wdb = await otherClient(db, dbUrl);
    let written = 0;
    await wdb.transact((root) => {
      const wt = root.get("tree") as Node;
      // Deep changes: every leaf under T.5.* (value + 1000), a new child under T.5.5,
      // a new entry in T.0's map.
      for (const b of nodeAt(wt, 5).children) for (const c of b.children) c.value += 1000;
      written += L2 * L3;
      nodeAt(wt, 5, 5).children.push(new Node("new.1", 5000), new Node("new.2", 6000));
      written += 1 + 2;
      (nodeAt(wt, 0).bag as PersistentMap<string, Node>).set("z", new Node("new.3", 7000));
      written += 1 + 1;
    });
    const expectedNew = VALUE_SUM + L2 * L3 * 1000 + 5000 + 6000 + 7000;

    a.resetStats();
    const r1 = await a.loadClosure(t);
    expect(r1).toEqual({ loaded: TOTAL - 1, truncated: false });
    const old = walk(t);
    expect(old.objects.size).toBe(TOTAL);
    expect(old.sum).toBe(VALUE_SUM);
    expect(old.nodes.has("new.1")).toBe(false);
    expect(nodeAt(t, 5, 5).children.length).toBe(L3);
    expect((nodeAt(t, 0).bag as PersistentMap<string, Node>).has("z")).toBe(false);
    expect(a.stats.roundTrips).toBe(1);

    if (wdb !== db) await db.lastTid(); // another client: make sure its invalidations arrived
    a.abort();
    a.resetStats();
    const r2 = await a.loadClosure(t);
    // Only what the other transaction wrote is loaded again (the rest is still held).
    expect(r2).toEqual({ loaded: written, truncated: false });
    expect(a.stats.roundTrips).toBe(1);
    a.resetStats();
    const now = walk(t);
    expect(a.stats.roundTrips).toBe(0);
    expect(now.objects.size).toBe(TOTAL + 3);
    expect(now.sum).toBe(expectedNew);
    expect(now.nodes.get("new.3")!.value).toBe(7000);
    await a.close();
  });

  it("a historical view's closure holds the states as of its tid", async () => {
    const { db } = await setup();
    const before = await db.lastTid();
    await db.transact((root) => {
      const t = root.get("tree") as Node;
      nodeAt(t, 2, 2, 2).value = -5;
      nodeAt(t, 2, 2).children.push(new Node("later", 9999));
    });
    const past = db.open({ at: before });
    const t = treeOf(past);
    past.resetStats();
    expect(await past.loadClosure(t)).toEqual({ loaded: TOTAL, truncated: false });
    expect(past.stats.roundTrips).toBe(1);
    const seen = walk(t);
    expect(past.stats.roundTrips).toBe(1);
    expect(seen.sum).toBe(VALUE_SUM);
    expect(seen.nodes.has("later")).toBe(false);
    const now = fresh(db);
    const nt = treeOf(now);
    expect(await now.loadClosure(nt)).toEqual({ loaded: TOTAL + 1, truncated: false });
    expect(nodeAt(nt, 2, 2, 2).value).toBe(-5);
    // The newer object does not exist in the past.
    expect(() => past.get(oidOf(nodeAt(nt, 2, 2, L3))!)).toThrow(ObjectNotFoundError);
    await past.close();
    await now.close();
  });

  // --- 5. new, foreign and dangling --------------------------------------------------------

  it("loadClosure of a new object loads nothing; of another connection's object, of a non-persistent value, or on a closed connection throws", async () => {
    const { db } = await setup();
    const conn = fresh(db);
    const fresh1 = new Node("new", 1);
    fresh1.children.push(new Node("new child", 2));
    conn.root().set("pending", fresh1); // reachable, still new until commit (loads the root)
    conn.resetStats();
    expect(await conn.loadClosure(fresh1)).toEqual({ loaded: 0, truncated: false });
    expect(await conn.loadClosure(fresh1.children[0]!)).toEqual({ loaded: 0, truncated: false });
    expect(await conn.loadClosure(fresh1)).toEqual({ loaded: 0, truncated: false });
    expect(conn.stats.loads).toBe(0);

    const other = fresh(db);
    const foreign = treeOf(other);
    await expect(conn.loadClosure(foreign)).rejects.toThrow(TransactionError);
    await expect(conn.loadClosure(foreign)).rejects.toMatchObject({ code: "foreign-object" });
    expect(stateOf(foreign)).toBe("ghost");
    await expect(conn.loadClosure({} as Persistent)).rejects.toThrow(TypeError);
    await conn.commit();
    expect(await conn.loadClosure(fresh1)).toEqual({ loaded: 0, truncated: false }); // committed and held
    const t = treeOf(conn);
    await conn.close();
    await expect(conn.loadClosure(t)).rejects.toMatchObject({ code: "closed" });
    await other.close();
  });

  it("a dangling reference does not fail the closure; the dangling object itself cannot be loaded", async () => {
    const { db } = await setup();
    await db.transact((root) => root.set("holder", new Node("holder", 1)));
    const c = fresh(db);
    const holder = c.root().get("holder") as Node;
    const [missingOid, danglerOid] = await db.storage.newOids(2);
    const p1 = new Node();
    const p2 = new Node();
    const enc = encodeState("closure.Node", { label: "dangler", value: 2, children: [p1, p2], peer: null, bag: null }, () => {});
    const oids = new Map<Persistent, number>([
      [p1, missingOid!],
      [p2, oidOf(holder)!],
    ]);
    const data = writeEnvelope({
      className: "closure.Node",
      classVersion: 0,
      refOids: enc.refs.map((r) => oids.get(r)!),
      refPaths: enc.refPaths,
      refClasses: enc.refs.map(() => "closure.Node"),
      state: enc.state,
      shared: enc.shared,
    });
    await db.storage.finish({ records: [{ oid: danglerOid!, serial: 0, data }], readCurrent: [] });
    await c.close();
    await db.transact((root, conn) => root.set("dangler", conn.get(danglerOid!)));

    const r = fresh(db);
    const d = r.root().get("dangler") as Node;
    expect(stateOf(d)).toBe("ghost");
    r.resetStats();
    expect(await r.loadClosure(d)).toEqual({ loaded: 2, truncated: false });
    expect(r.stats.roundTrips).toBe(1);
    expect(d.label).toBe("dangler");
    const [gone, kept] = d.children as [Node, Node];
    expect(kept.label).toBe("holder");
    expect(stateOf(gone)).toBe("ghost");
    expect(oidOf(gone)).toBe(missingOid);
    await expect(r.loadClosure(gone)).rejects.toThrow(ObjectNotFoundError);
    await expect(r.prefetch([gone])).rejects.toThrow(ObjectNotFoundError);
    expect(() => gone.label).toThrow(ObjectNotFoundError);
    await r.close();
  });

  // --- 6. prefetch --------------------------------------------------------------------------

  it("prefetch loads N ghosts in one round trip and skips loaded, new and duplicate objects", async () => {
    const { db } = await setup();
    const conn = fresh(db);
    const t = treeOf(conn);
    void t.label;
    conn.resetStats();
    expect(await conn.prefetch(t.children)).toBe(L1);
    expect(conn.stats).toMatchObject({ roundTrips: 1, loads: L1 });
    for (const a of t.children) expect(stateOf(a)).toBe("saved");

    const level2 = t.children.flatMap((a) => a.children);
    expect(level2.length).toBe(L1 * L2);
    conn.resetStats();
    const n = await conn.prefetch([...level2, ...level2.slice(0, 10), t, ...t.children, new Node("new"), level2[0]!]);
    expect(n).toBe(L1 * L2);
    expect(conn.stats.roundTrips).toBe(1);
    expect(conn.stats.loads).toBe(L1 * L2);
    conn.resetStats();
    let sum = 0;
    for (const b of level2) sum += b.value + b.label.length + (b.peer === null ? 0 : 1) + b.children.length;
    expect(sum).toBeGreaterThan(0);
    expect(conn.stats.roundTrips).toBe(0);
    expect(conn.stats.loads).toBe(0);

    // A generator works too; nothing left to load costs no round trip.
    conn.resetStats();
    expect(await conn.prefetch((function* () { yield t; yield* t.children; })())).toBe(0);
    expect(await conn.prefetch([])).toBe(0);
    expect(conn.stats.roundTrips).toBe(0);

    const other = fresh(db);
    const ghost = nodeAt(treeOf(other), 0); // loads T in `other`; its child stays a ghost
    const mine = level2[0]!.children[0]!;
    await expect(conn.prefetch([mine, ghost])).rejects.toMatchObject({ code: "foreign-object" });
    await expect(conn.prefetch([ghost])).rejects.toThrow(TransactionError);
    expect(stateOf(mine)).toBe("ghost");
    await expect(conn.prefetch([1 as unknown as Persistent])).rejects.toThrow(TypeError);
    await other.close();
    await conn.close();
    await expect(conn.prefetch([mine])).rejects.toMatchObject({ code: "closed" });
  });

  it("prefetch reads at the connection's snapshot", async () => {
    const { db, dbUrl } = await setup();
    const a = fresh(db);
    const t = treeOf(a);
    void t.label;
    const wdb = await otherClient(db, dbUrl);
    await wdb.transact((root) => {
      for (const x of (root.get("tree") as Node).children) x.value += 100;
    });
    expect(await a.prefetch(t.children)).toBe(L1);
    expect(t.children.map((x) => x.value)).toEqual(Array.from({ length: L1 }, (_, i) => level1Value(i)));
    if (wdb !== db) await db.lastTid();
    a.abort();
    a.resetStats();
    expect(await a.prefetch(t.children)).toBe(L1);
    expect(a.stats.roundTrips).toBe(1);
    expect(t.children.map((x) => x.value)).toEqual(Array.from({ length: L1 }, (_, i) => 100 + level1Value(i)));
    await a.close();
  });
});

// --- 7. the client record cache (server only) ---------------------------------------------------

const onServer = storages.some((s) => s.name === "server");
const cacheInfo = (db: DB) => (db.storage as ClientStorage).cacheInfo;

describe.runIf(onServer)("client record cache (server storage)", () => {
  async function setupServer(options = {}): Promise<{ db: DB; dbUrl: string }> {
    const dbUrl = serverUrl();
    const db = await track(openDB(dbUrl, options));
    await db.transact((root) => buildTree(root));
    return { db, dbUrl };
  }

  it("a second connection's cold read of what the first loaded costs no server request", async () => {
    const { db } = await setupServer();
    const c1 = fresh(db);
    expect(walk(treeOf(c1)).objects.size).toBe(TOTAL);
    const info1 = cacheInfo(db);
    expect(info1.entries).toBeGreaterThanOrEqual(TOTAL);
    expect(info1.bytes).toBeGreaterThan(0);

    const c2 = fresh(db);
    const before = cacheInfo(db);
    c2.resetStats();
    const seen = walk(treeOf(c2));
    expect(seen.sum).toBe(VALUE_SUM);
    expect(c2.stats.loads).toBe(TOTAL + 1); // the root map too
    const after = cacheInfo(db);
    expect(after.misses - before.misses).toBe(0);
    expect(after.hits - before.hits).toBe(TOTAL + 1);

    // A closure served from the cache: the server skips what the client cache holds.
    const c3 = fresh(db);
    const t3 = treeOf(c3);
    const b3 = cacheInfo(db);
    expect(await c3.loadClosure(t3)).toEqual({ loaded: TOTAL, truncated: false });
    const a3 = cacheInfo(db);
    expect(a3.hits - b3.hits).toBe(TOTAL);
    expect(a3.misses - b3.misses).toBe(0);
    expect(walk(t3).sum).toBe(VALUE_SUM);

    // Prefetch from the cache as well.
    const c4 = fresh(db);
    const t4 = treeOf(c4);
    void t4.label;
    const b4 = cacheInfo(db);
    expect(await c4.prefetch(t4.children)).toBe(L1);
    const a4 = cacheInfo(db);
    expect(a4.hits - b4.hits).toBe(L1);
    expect(a4.misses - b4.misses).toBe(0);
    for (const c of [c1, c2, c3, c4]) await c.close();
  });

  it("never serves a cached record another client has changed since", async () => {
    const { db, dbUrl } = await setupServer();
    const c1 = fresh(db);
    expect(walk(treeOf(c1)).sum).toBe(VALUE_SUM);
    // A connection whose snapshot predates the change, which has not loaded T.3.3.* yet.
    const old = fresh(db);
    void treeOf(old).label;

    const other = await track(openDB(dbUrl));
    await other.transact((root) => {
      const t = root.get("tree") as Node;
      nodeAt(t, 4, 4, 4).value = -1;
      nodeAt(t, 3, 3, 3).value = -2;
      nodeAt(t, 3, 3, 1).label = "renamed";
    });
    const changedAt = await db.lastTid(); // the invalidations have arrived
    expect(cacheInfo(db).knownTid).toBe(changedAt);
    expect(changedAt).toBe(await other.lastTid());

    // A new connection: the changed records are read from the server, the rest from the cache.
    const c2 = fresh(db);
    const before = cacheInfo(db);
    const seen = walk(treeOf(c2));
    const after = cacheInfo(db);
    expect(seen.nodes.get("T.4.4.4")!.value).toBe(-1);
    expect(seen.nodes.get("T.3.3.3")!.value).toBe(-2);
    expect(seen.nodes.has("renamed")).toBe(true);
    expect(after.misses - before.misses).toBe(3);
    expect(after.hits - before.hits).toBe(TOTAL + 1 - 3);

    // The old snapshot still reads the old revisions, and loading them does not put them
    // back in the cache for newer snapshots.
    const ot = treeOf(old);
    expect(nodeAt(ot, 3, 3, 3).value).not.toBe(-2);
    expect(nodeAt(ot, 3, 3, 1).label).toBe("T.3.3.1");
    expect(nodeAt(ot, 4, 4, 4).value).not.toBe(-1);
    const c3 = fresh(db);
    expect(nodeAt(treeOf(c3), 3, 3, 3).value).toBe(-2);
    expect(nodeAt(treeOf(c3), 4, 4, 4).value).toBe(-1);
    // A closure too.
    const c4 = fresh(db);
    const t4 = treeOf(c4);
    expect(await c4.loadClosure(t4)).toEqual({ loaded: TOTAL, truncated: false });
    expect(nodeAt(t4, 3, 3, 1).label).toBe("renamed");
    expect(nodeAt(t4, 4, 4, 4).value).toBe(-1);

    // c1 held the old state: after abort it sees the new one.
    c1.abort();
    expect(nodeAt(treeOf(c1), 3, 3, 3).value).toBe(-2);
    for (const c of [c1, old, c2, c3, c4]) await c.close();
  });

  // The client cache's records count against the limits in breadth-first order, like any other (regression test).
  it("limits hold when the closure's records come from the client cache", async () => {
    const { db } = await setupServer();
    const warm = fresh(db);
    expect(walk(treeOf(warm)).objects.size).toBe(TOTAL);
    const conn = fresh(db);
    const t = treeOf(conn);
    conn.resetStats();
    const result = await conn.loadClosure(t, { maxObjects: 1 + L1 });
    expect(conn.stats.loads).toBeLessThanOrEqual(1 + L1);
    expect(result).toEqual({ loaded: 1 + L1, truncated: true });
    for (const a of t.children) expect(stateOf(a)).toBe("saved");
    for (const a of t.children) for (const b of a.children) expect(stateOf(b)).toBe("ghost");
    await conn.close();
    await warm.close();
  });

  it("with clientCacheBytes: 0 nothing is cached", async () => {
    const { db } = await setupServer({ clientCacheBytes: 0 });
    const c1 = fresh(db);
    expect(walk(treeOf(c1)).sum).toBe(VALUE_SUM);
    expect(cacheInfo(db)).toMatchObject({ entries: 0, bytes: 0 });
    const c2 = fresh(db);
    const before = cacheInfo(db);
    c2.resetStats();
    expect(walk(treeOf(c2)).sum).toBe(VALUE_SUM);
    const after = cacheInfo(db);
    expect(after.hits).toBe(before.hits);
    expect(after.misses - before.misses).toBe(c2.stats.loads);
    expect(after).toMatchObject({ entries: 0, bytes: 0 });
    const c3 = fresh(db);
    expect(await c3.loadClosure(treeOf(c3))).toEqual({ loaded: TOTAL, truncated: false });
    expect(cacheInfo(db)).toMatchObject({ entries: 0, bytes: 0 });
    for (const c of [c1, c2, c3]) await c.close();
  });

  it("a small clientCacheBytes bounds the cache", async () => {
    const limit = 4096;
    const { db } = await setupServer({ clientCacheBytes: limit });
    const c1 = fresh(db);
    const seen1 = walk(treeOf(c1));
    expect(seen1.sum).toBe(VALUE_SUM);
    const info = cacheInfo(db);
    expect(info.bytes).toBeLessThanOrEqual(limit);
    expect(info.entries).toBeGreaterThan(0);
    expect(info.entries).toBeLessThan(TOTAL);
    // The objects read last are the ones kept: another connection gets them from the cache.
    const last = [...seen1.objects].slice(-5).map((o) => oidOf(o)!);
    const c2 = fresh(db);
    const before = cacheInfo(db);
    for (const oid of last) expect(stateOf(c2.get(oid))).toBe("saved");
    const after = cacheInfo(db);
    expect(after.hits - before.hits).toBe(5);
    expect(after.misses - before.misses).toBe(0);
    // A cold read of everything stays within the bound.
    expect(walk(treeOf(c2)).sum).toBe(VALUE_SUM);
    expect(cacheInfo(db).bytes).toBeLessThanOrEqual(limit);
    const c3 = fresh(db);
    await c3.loadClosure(treeOf(c3));
    expect(cacheInfo(db).bytes).toBeLessThanOrEqual(limit);
    for (const c of [c1, c2, c3]) await c.close();
  });

  // Records the server skipped because the client cache had them are taken from it before new records could evict them (regression test).
  it("a closure is complete when storing its records evicts the cached ones the server skipped", async () => {
    const { db } = await setupServer({ clientCacheBytes: 4096 });
    const c1 = fresh(db);
    expect(walk(treeOf(c1)).sum).toBe(VALUE_SUM);
    expect(cacheInfo(db).entries).toBeGreaterThan(0);
    const c2 = fresh(db);
    const t = treeOf(c2);
    expect(await c2.loadClosure(t)).toEqual({ loaded: TOTAL, truncated: false });
    c2.resetStats();
    expect(walk(t).sum).toBe(VALUE_SUM);
    expect(c2.stats.roundTrips).toBe(0);
    await c1.close();
    await c2.close();
  });
});

// --- 8. the persistent client cache (server only) -------------------------------------------

describe.runIf(onServer)("persistent client cache (clientCachePath)", () => {
  const dirs: string[] = [];
  const cacheFile = (): string => {
    const d = mkdtempSync(join(tmpdir(), "amber-cc-"));
    dirs.push(d);
    return join(d, "sub", "cache.bin");
  };
  afterAll(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  /** Open with the cache file; a fresh connection walks the tree: values and cache figures. */
  async function coldRead(dbUrl: string, clientCachePath: string) {
    const db = await track(openDB(dbUrl, { clientCachePath }));
    const restored = cacheInfo(db).entries;
    const conn = fresh(db);
    const before = cacheInfo(db);
    conn.resetStats();
    const seen = walk(treeOf(conn));
    const after = cacheInfo(db);
    const loads = conn.stats.loads;
    await conn.close();
    return { db, seen, restored, loads, hits: after.hits - before.hits, misses: after.misses - before.misses };
  }

  async function setupWarm(): Promise<{ dbUrl: string; path: string }> {
    const dbUrl = serverUrl();
    const path = cacheFile();
    const db = await track(openDB(dbUrl, { clientCachePath: path }));
    await db.transact((root) => buildTree(root));
    const conn = fresh(db);
    expect(walk(treeOf(conn)).sum).toBe(VALUE_SUM);
    expect(cacheInfo(db).entries).toBeGreaterThanOrEqual(TOTAL);
    expect(existsSync(path)).toBe(false);
    await db.close();
    expect(statSync(path).size).toBeGreaterThan(TOTAL * 10);
    return { dbUrl, path };
  }

  it("a reopened client reads from the saved cache; changes made while it was closed are read anew", async () => {
    const { dbUrl, path } = await setupWarm();

    const r1 = await coldRead(dbUrl, path);
    expect(r1.restored).toBeGreaterThanOrEqual(TOTAL);
    expect(r1.seen.sum).toBe(VALUE_SUM);
    expect(r1.loads).toBe(TOTAL + 1);
    expect(r1.hits).toBe(TOTAL + 1);
    expect(r1.misses).toBe(0);
    await r1.db.close();

    // Another client changes objects while this one is closed.
    const other = await track(openDB(dbUrl));
    await other.transact((root) => {
      const t = root.get("tree") as Node;
      nodeAt(t, 1, 1, 1).value = -100;
      nodeAt(t, 5, 0, 4).label = "changed";
      nodeAt(t, 2, 2).children.push(new Node("added", 0));
    });
    await other.close();

    const r2 = await coldRead(dbUrl, path);
    expect(r2.seen.nodes.get("T.1.1.1")!.value).toBe(-100);
    expect(r2.seen.nodes.has("changed")).toBe(true);
    expect(r2.seen.nodes.has("T.5.0.4")).toBe(false);
    expect(r2.seen.nodes.get("added")).toBeDefined();
    expect(r2.seen.objects.size).toBe(TOTAL + 1);
    // T.1.1.1, T.5.0.4, T.2.2 (changed) and the added node come from the server, the rest from the file.
    expect(r2.loads).toBe(TOTAL + 2);
    expect(r2.misses).toBe(4);
    expect(r2.hits).toBe(TOTAL + 2 - 4);
    await r2.db.close();
  });

  it("a changed object's closure after reopening is not served from the stale file", async () => {
    const { dbUrl, path } = await setupWarm();
    const other = await track(openDB(dbUrl));
    await other.transact((root) => {
      nodeAt(root.get("tree") as Node, 0, 0, 0).value = -7;
    });
    const db = await track(openDB(dbUrl, { clientCachePath: path }));
    const conn = fresh(db);
    const t = treeOf(conn);
    expect(await conn.loadClosure(t)).toEqual({ loaded: TOTAL, truncated: false });
    expect(nodeAt(t, 0, 0, 0).value).toBe(-7);
    expect(walk(t).sum).toBe(VALUE_SUM - 3 - 7); // T.0.0.0 had value 3
    await conn.close();
  });

  it("a damaged cache file (random bytes, truncated) is only a cold start", async () => {
    const { dbUrl, path } = await setupWarm();
    const good = readFileSync(path);
    for (const damage of ["random", "truncated", "empty"] as const) {
      if (damage === "random") writeFileSync(path, randomBytes(good.length));
      else if (damage === "truncated") {
        writeFileSync(path, good);
        truncateSync(path, Math.floor(good.length / 2));
      } else writeFileSync(path, Buffer.alloc(0));
      const r = await coldRead(dbUrl, path);
      expect(r.restored, damage).toBeLessThanOrEqual(1); // at most the root, loaded by DB.open
      expect(r.seen.sum, damage).toBe(VALUE_SUM);
      expect(r.seen.objects.size, damage).toBe(TOTAL);
      expect(r.misses, damage).toBeGreaterThanOrEqual(TOTAL);
      await r.db.close(); // writes a good file again
      const again = await coldRead(dbUrl, path);
      expect(again.restored, damage).toBeGreaterThanOrEqual(TOTAL);
      expect(again.misses, damage).toBe(0);
      await again.db.close();
    }
  });

  // A saved cache file is a hint only: a damaged record in it is not restored (regression test).
  it("a cache file with a damaged record is not served", async () => {
    const { dbUrl, path } = await setupWarm();
    // Find a leaf's record in the file (the stored bytes, as the storage returns them).
    const db = await track(openDB(dbUrl));
    const conn = fresh(db);
    const leaf = nodeAt(treeOf(conn), 3, 2, 1);
    const [rec] = await db.storage.load([oidOf(leaf)!], await db.lastTid());
    await conn.close();
    await db.close();
    const file = readFileSync(path);
    const at = file.indexOf(Buffer.from(rec!.data));
    expect(at).toBeGreaterThan(0);
    const pos = at + Math.floor(rec!.data.length / 2);
    file[pos] = file[pos]! ^ 0x55;
    writeFileSync(path, file);

    // Read it after reopening, and again after closing (which saves the cache) and reopening.
    const reads: unknown[] = [];
    for (let round = 0; round < 2; round++) {
      const reopened = await track(openDB(dbUrl, { clientCachePath: path }));
      const c = fresh(reopened);
      try {
        reads.push(nodeAt(treeOf(c), 3, 2, 1).label);
      } catch (err) {
        reads.push(`${(err as Error).name}: ${(err as Error).message}`);
      }
      await c.close();
      await reopened.close();
    }
    expect(reads).toEqual(["T.3.2.1", "T.3.2.1"]);
  });

  // Every record a closure installs had its checksum checked, also those served from the client cache (regression test).
  it("a closure never installs a damaged record from the client cache silently", async () => {
    const { dbUrl, path } = await setupWarm();
    const db = await track(openDB(dbUrl));
    const conn = fresh(db);
    const leaf = nodeAt(treeOf(conn), 3, 2, 1);
    const [rec] = await db.storage.load([oidOf(leaf)!], await db.lastTid());
    await conn.close();
    await db.close();
    const file = readFileSync(path);
    const at = file.indexOf(Buffer.from(rec!.data));
    expect(at).toBeGreaterThan(0);
    const label = Buffer.from(rec!.data).indexOf(Buffer.from("T.3.2.1"));
    expect(label).toBeGreaterThan(0);
    file[at + label + 6] = "9".charCodeAt(0);
    writeFileSync(path, file);

    const reopened = await track(openDB(dbUrl, { clientCachePath: path }));
    const c = fresh(reopened);
    const t = treeOf(c);
    const outcome = await c.loadClosure(t).then(
      (r) => r,
      (e: unknown) => e,
    );
    // A checksum error would be acceptable; a silently wrong value is not.
    if (!(outcome instanceof Error)) {
      const read = (() => {
        try {
          return nodeAt(t, 3, 2, 1).label;
        } catch (err) {
          return err;
        }
      })();
      if (typeof read === "string") expect(read).toBe("T.3.2.1");
      expect(walk(t).nodes.has("T.3.2.9")).toBe(false);
    }
    await c.close();
  });

  for (const order of ["newer", "older"] as const) {
    it(`a cache file of another (${order}) database is not used`, async () => {
      const otherUrl = serverUrl();
      const seed = async () => {
        const d = await track(openDB(otherUrl));
        await d.transact((root) => root.set("which", "the other one"));
        await d.close();
      };
      if (order === "older") await seed(); // its tids are older than the cache file's
      const { path } = await setupWarm();
      if (order === "newer") await seed();

      const db = await track(openDB(otherUrl, { clientCachePath: path }));
      expect(cacheInfo(db).entries).toBeLessThanOrEqual(1); // at most its own root, loaded by DB.open
      const conn = fresh(db);
      expect(conn.root().get("which")).toBe("the other one");
      expect(conn.root().has("tree")).toBe(false);
      expect([...conn.root().keys()]).toEqual(["which"]);
      await db.transact((root) => root.set("more", 1));
      conn.abort();
      expect([...conn.root().keys()]).toEqual(["which", "more"]);
      await conn.close();
    });
  }

  // Malformed entries of a saved cache file are left out; DB.open still works (regression test).
  it("a cache file with malformed entries is only a cold start", async () => {
    const { dbUrl, path } = await setupWarm();
    const good = readFileSync(path);
    const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });
    const saved = packr.unpack(good) as { format: number; storageId: string; tid: number; records: unknown[] };
    expect(saved.records.length).toBeGreaterThanOrEqual(TOTAL);
    const variants: Array<[string, unknown[]]> = [
      ["a number instead of an entry", [5, ...saved.records]],
      ["null entry", [null, ...saved.records]],
      ["short entry", [[1], ...saved.records]],
      ["string data", [[(saved.records[0] as unknown[])[0], (saved.records[0] as unknown[])[1], "not bytes"], ...saved.records.slice(1)]],
    ];
    const failures: string[] = [];
    for (const [what, records] of variants) {
      writeFileSync(path, packr.pack({ ...saved, records }));
      try {
        const r = await coldRead(dbUrl, path);
        if (r.seen.sum !== VALUE_SUM || r.seen.objects.size !== TOTAL) failures.push(`${what}: wrong values`);
        await r.db.close();
      } catch (err) {
        failures.push(`${what}: ${(err as Error).message}`);
      }
    }
    expect(failures).toEqual([]);
  });
});
