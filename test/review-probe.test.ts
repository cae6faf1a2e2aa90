import { afterAll, describe, expect, it } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DB, Persistent, PersistentMap, PersistentList, PersistentSet, registerClass, stateOf, oidOf, markChanged, BrokenObject, ConflictError } from "../src/index.ts";
import { writeEnvelope } from "../src/codec/record.ts";
import { encodeState } from "../src/codec/state.ts";

class P extends Persistent { [k: string]: any; }
registerClass(P, "rv.probe.P");
class Sub extends P {}

const urls = [["memory", () => "memory:"], ["lmdb", () => join(mkdtempSync(join(tmpdir(), "rv-")), "db")]] as const;

describe.each(urls)("probe %s", (_n, url) => {
  const open = () => DB.open(url(), { durability: "relaxed" } as any);

  it("delete on a ghost", async () => {
    const db = await open();
    await db.transact((r) => { const p = new P(); p.a = 1; p.b = 2; r.set("p", p); });
    const c = db.open({ cacheSize: 100 });
    const p = c.root().get("p");
    console.log("state before delete", stateOf(p));
    delete p.a;
    await c.commit();
    const c2 = db.open({ cacheSize: 100 });
    console.log("after delete on ghost, a =", c2.root().get("p").a);
    await db.close();
  });

  it("constructor property", async () => {
    const db = await open();
    try {
      await db.transact((r) => { const p = new P(); p.constructor = "x"; p.toString = "y" as any; p.hasOwnProperty = 3 as any; r.set("p", p); });
      const c2 = db.open({ cacheSize: 100 });
      const p = c2.root().get("p");
      console.log("ctor round trip", p.constructor, p.toString, p.hasOwnProperty);
    } catch (e) { console.log("ctor err", (e as Error).message); }
    await db.close();
  });

  it("constructor property on saved object", async () => {
    const db = await open();
    await db.transact((r) => { const p = new P(); p.v = 1; r.set("p", p); });
    try {
      await db.transact((r) => { r.get("p").constructor = "x"; });
      const c2 = db.open({ cacheSize: 100 });
      console.log("ctor2", c2.root().get("p").constructor);
    } catch (e) { console.log("ctor2 err", (e as Error).message); }
    await db.close();
  });

  it("__proto__ key", async () => {
    const db = await open();
    try {
      await db.transact((r) => { const p = new P(); p.nested = JSON.parse('{"__proto__": 5, "x": 1}'); r.set("p", p); });
      const c2 = db.open({ cacheSize: 100 });
      const p = c2.root().get("p");
      console.log("__proto__ nested", Object.keys(p.nested), JSON.stringify(p.nested), stateOf(p));
    } catch (e) { console.log("proto err", (e as Error).message); }
    await db.close();
  });

  it("broken object with containers", async () => {
    const db = await open();
    await db.transact((r) => r.set("x", 1));
    const enc = encodeState("X", { label: "kept", n: [1, 2] }, () => {});
    const [oid] = await db.storage.newOids(1);
    const data = writeEnvelope({ className: "legacy.Gone", classVersion: 0, refOids: [], refPaths: [], refClasses: [], state: enc.state });
    await db.storage.finish({ records: [{ oid: oid!, serial: 0, data }], readCurrent: [] });
    const c = db.open({ cacheSize: 100 });
    const b = c.get(oid!);
    console.log("broken label", (b as any).label);
    try { console.log("stateOf broken", stateOf(b)); } catch (e) { console.log("stateOf err", (e as Error).message); }
    c.root().set("y", 2);
    try { await c.commit(); console.log("commit ok"); } catch (e) { console.log("commit err", (e as Error).message); }
    await db.close();
  });

  it("held nested array across eviction", async () => {
    const db = await open();
    await db.transact((r) => { for (let i = 0; i < 20; i++) { const p = new P(); p.tags = ["a"]; r.set("p" + i, p); } });
    const c = db.open({ cacheSize: 3 });
    const root = c.root();
    const p0 = root.get("p0");
    const tags = p0.tags;
    for (let i = 1; i < 20; i++) root.get("p" + i).tags.length;
    console.log("p0 state after loads", stateOf(p0));
    tags.push("b");
    await c.commit();
    const c2 = db.open({ cacheSize: 100 });
    console.log("p0 tags", c2.root().get("p0").tags);
    await db.close();
  });
});
