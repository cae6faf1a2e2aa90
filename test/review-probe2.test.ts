import { describe, expect, it } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DB, Persistent, PersistentMap, PersistentList, PersistentSet, registerClass, serializable, stateOf, oidOf, markChanged, ConflictError } from "../src/index.ts";

class Q extends Persistent { [k: string]: any; }
registerClass(Q, "rv.probe2.Q");
class Box { items: any[] = []; }
registerClass(Box, "rv.probe2.Box");
const urls = [["memory", () => "memory:"], ["lmdb", () => join(mkdtempSync(join(tmpdir(), "rv-")), "db")]] as const;

describe.each(urls)("probe2 %s", (_n, url) => {
  const open = () => DB.open(url(), { durability: "relaxed" } as any);
  const log = (...a: any[]) => console.log(_n, ...a);

  it("transact returning a ghost", async () => {
    const db = await open();
    await db.transact((r) => { r.set("q", new Q()); });
    await db.transact((r) => { r.set("z", 1); }); // make sure
    const c = db.open(); c.cacheMinimize(); await c.close();
    try { const q = await db.transact((r) => r.get("q")); log("transact ghost ok", stateOf(q)); } catch (e) { log("transact ghost ERR", (e as Error).message); }
    await db.close();
  });

  it("in-place Date / typed array / map value", async () => {
    const db = await open();
    await db.transact((r) => { const q = new Q(); q.d = new Date(0); q.t = new Float64Array(3); q.u = new Uint8Array(3); r.set("q", q); const m = new PersistentMap<string, number[]>(); m.set("k", [1]); r.set("m", m); });
    await db.transact((r) => { const q = r.get("q"); q.d.setTime(1000); q.t[1] = 2.5; q.u[2] = 7; r.get("m").get("k").push(2); });
    const c = db.open({ cacheSize: 10 });
    const q = c.root().get("q");
    log("date", q.d.getTime(), "t", [...q.t], "u", [...q.u], "m", c.root().get("m").get("k"));
    await db.close();
  });

  it("new objects in nested containers", async () => {
    const db = await open();
    await db.transact((r) => { r.set("q", new Q()); });
    await db.transact((r) => {
      const q = r.get("q");
      const a = new Q(); a.name = "inMap";
      const b = new Q(); b.name = "inSet";
      const box = new Box(); const c = new Q(); c.name = "inBox"; box.items.push([c]);
      const d = new Q(); d.name = "cycle"; const e = new Q(); e.name = "cycle2"; d.other = e; e.other = d; d.self = d;
      q.map = new Map([["a", a]]); q.set = new Set([b]); q.box = box; q.cyc = [d];
      const shared = new Q(); shared.name = "shared"; q.s1 = shared; r.set("s2", shared);
    });
    const c = db.open({ cacheSize: 100 });
    const q = c.root().get("q");
    log(q.map.get("a").name, [...q.set][0].name, q.box.items[0][0].name, q.cyc[0].name, q.cyc[0].other.name, q.cyc[0].other.other === q.cyc[0], q.cyc[0].self === q.cyc[0], q.box instanceof Box, q.s1 === c.root().get("s2"), q.s1.name);
    await db.close();
  });

  it("values", async () => {
    const db = await open();
    const big = "x".repeat(1 << 20);
    await db.transact((r) => { const q = new Q(); q.nz = -0; q.nan = NaN; q.big = 12345678901234567890n; q.inf = -Infinity; q.arr = [-0, NaN]; q.s = big; q.u = undefined; q.self = q; r.set("q", q);
      const m = new PersistentMap(); for (let i = 0; i < 10000; i++) { const x = new Q(); x.i = i; m.set(i, x); } r.set("m", m); });
    const c = db.open({ cacheSize: 100000 });
    const q = c.root().get("q");
    log(Object.is(q.nz, -0), Number.isNaN(q.nan), q.big, q.inf, Object.is(q.arr[0], -0), Number.isNaN(q.arr[1]), q.s.length, "u" in q, Object.hasOwn(q, "u"), q.self === q, stateOf(q));
    const m = c.root().get("m"); log(m.size, m.get(9999).i, stateOf(m));
    await db.close();
  });

  it("in-flight change to another object", async () => {
    const db = await open();
    await db.transact((r) => { const a = new Q(); a.v = 1; const b = new Q(); b.v = 1; r.set("a", a); r.set("b", b); });
    const c = db.open();
    const a = c.root().get("a"), b = c.root().get("b");
    a.v; b.v;
    a.v = 2;
    const p = c.commit();
    b.v = 99;
    let err: any = null;
    try { await p; } catch (e) { err = e; }
    log("inflight other: err", err?.message, "b state", stateOf(b));
    c.abort();
    await db.close();
  });

  it("conflict then abort then retry", async () => {
    const db = await open();
    await db.transact((r) => { const a = new Q(); a.v = [1]; r.set("a", a); });
    const c1 = db.open(), c2 = db.open();
    const a1 = c1.root().get("a"), a2 = c2.root().get("a");
    a1.v.push(2); a2.v.push(3);
    await c2.commit();
    let e: any; try { await c1.commit(); } catch (x) { e = x; }
    log("conflict", e instanceof ConflictError);
    c1.abort();
    log("after abort", stateOf(a1), a1.v);
    a1.v.push(4);
    await c1.commit();
    const c3 = db.open({cacheSize: 5});
    log("final", c3.root().get("a").v);
    await db.close();
  });

  it("historical view", async () => {
    const db = await open();
    await db.transact((r) => { r.set("a", new Q()); });
    const t1 = await db.lastTid();
    let newOid = 0;
    await db.transact((r) => { const n = new Q(); n.x = 1; r.get("a").n = n; r.set("n", n); });
    newOid = oidOf((db.open({cacheSize: 3}).root().get("n")))!;
    const h = db.open({ at: t1 });
    log("hist a.n", h.root().get("a").n, h.root().has("n"));
    try { h.get(newOid); log("hist get new oid: no error"); } catch (e) { log("hist get new", (e as Error).constructor.name); }
    await h.close();
    await db.close();
  });

  it("pool reuse", async () => {
    const db = await open();
    await db.transact((r) => { const a = new Q(); a.v = 1; r.set("a", a); });
    const c = db.open();
    c.root().get("a").v = 5;
    c.root().get("a").w = [1];
    const n = new Q(); c.root().set("n", n);
    await c.close();
    const d = db.open();
    log("same conn", d === c, d.root().get("a").v, d.root().get("a").w, d.root().has("n"));
    await d.commit();
    const e = db.open({cacheSize: 7});
    log("after commit", e.root().get("a").v);
    await e.close();
    const f = db.open();
    log("pooled conn with custom options reused", f === e);
    await db.close();
  });
});
