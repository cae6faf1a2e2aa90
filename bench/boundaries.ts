/**
 * What a transaction boundary costs as the connection's cache grows (issue: change tracking
 * that costs what a transaction touches). For 0, 1,000, 10,000 and 100,000 cached objects,
 * flat (numbers and strings) or nested (an array and a Map each), on one connection whose
 * objects were all loaded and whose nested values were handed out:
 *   commit  - change one field of one object and commit (durable on embedded)
 *   abort   - abort an empty transaction
 *   reopen  - db.open() + close() of the pooled connection (its cache kept)
 * Each figure is the median of many repetitions in one process; the ratio is against the
 * same operation with nothing cached, in the same run.
 *   tsx bench/boundaries.ts [--storage memory:|embedded] [--shape flat|nested] [--sizes 0,1000,...]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BTree, DB, Persistent, persistent } from "../src/index.ts";
import { argValue, median, now } from "./lib.ts";

@persistent("bench.FlatThing")
class FlatThing extends Persistent {
  a = 0;
  b = "";
  c = 0;
}

@persistent("bench.NestedThing")
class NestedThing extends Persistent {
  a = 0;
  list: number[] = [];
  map = new Map<string, number>();
}

@persistent("bench.Tick")
class Tick extends Persistent {
  n = 0;
}

const storages = argValue("--storage", "memory:,embedded").split(",");
const shapes = argValue("--shape", "flat,nested").split(",");
const sizes = argValue("--sizes", "0,1000,10000,100000").split(",").map(Number);

async function measure(storage: string, shape: string, n: number): Promise<{ commit: number; abort: number; reopen: number }> {
  const dir = storage === "embedded" ? mkdtempSync(join(tmpdir(), "amber-bench-")) : "";
  // Pooled connections (db.open() with the DB's options) keep every object cached.
  const db = await DB.open(storage === "embedded" ? join(dir, "db") : "memory:", { cacheSize: n + 1000, durability: "durable" });
  await db.transact((root) => root.set("tick", new Tick()));
  for (let start = 0; start < n; start += 10_000) {
    await db.transact((root) => {
      let tree = root.get("things") as BTree<number, Persistent> | undefined;
      if (tree === undefined) root.set("things", (tree = new BTree<number, Persistent>()));
      for (let i = start; i < Math.min(n, start + 10_000); i++) {
        const t = shape === "flat" ? Object.assign(new FlatThing(), { a: i, b: `thing ${i}`, c: i / 2 }) : new NestedThing();
        if (t instanceof NestedThing) {
          t.a = i;
          t.list = [i, i + 1];
          t.map.set("k", i);
        }
        tree.set(i, t);
      }
    });
  }
  const db2 = db;
  // One connection whose cache holds every object (loaded, nested values handed out).
  let conn = db2.open();
  const root = conn.root();
  const things = root.get("things") as BTree<number, FlatThing | NestedThing> | undefined;
  let x = 0;
  if (things !== undefined) {
    for (const t of things.values()) {
      x += t.a;
      if (t instanceof NestedThing) x += t.list.length + t.map.size;
    }
  }
  const tick = root.get("tick") as Tick;
  conn.abort();
  const reps = n >= 100_000 ? 25 : n >= 10_000 ? 60 : 200;
  const commits: number[] = [];
  const aborts: number[] = [];
  const reopens: number[] = [];
  for (let r = 0; r < reps; r++) {
    tick.n++;
    let t0 = now();
    await conn.commit();
    commits.push(now() - t0);
    t0 = now();
    conn.abort();
    aborts.push(now() - t0);
  }
  for (let r = 0; r < reps; r++) {
    const t0 = now();
    await conn.close();
    conn = db2.open();
    reopens.push(now() - t0);
  }
  if (x < 0) console.log(x);
  const info = conn.cacheInfo;
  if (info.loaded + 100 < n) console.error(`warning: only ${info.loaded} of ${n} objects cached`);
  await conn.close();
  await db2.close();
  if (dir !== "") rmSync(dir, { recursive: true, force: true });
  return { commit: median(commits), abort: median(aborts), reopen: median(reopens) };
}

// One unreported run first: it measures V8 compiling the code, not amberdb.
await measure(storages[0]!, shapes[0]!, 1000);
console.log("| storage | objects | cached | commit ms | ratio | abort ms | ratio | open+close ms | ratio |");
console.log("|---|---|---|---|---|---|---|---|---|");
for (const storage of storages) {
  for (const shape of shapes) {
    let base: { commit: number; abort: number; reopen: number } | undefined;
    for (const n of sizes) {
      const m = await measure(storage, shape, n);
      base ??= m;
      const r = (x: number, b: number) => `${(x / b).toFixed(2)}x`;
      console.log(
        `| ${storage} | ${shape} | ${n.toLocaleString("en")} | ${m.commit.toFixed(3)} | ${r(m.commit, base.commit)} | ` +
          `${m.abort.toFixed(4)} | ${r(m.abort, base.abort)} | ${m.reopen.toFixed(4)} | ${r(m.reopen, base.reopen)} |`,
      );
    }
  }
}
