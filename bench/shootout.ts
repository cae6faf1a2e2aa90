/**
 * Workload a (shootout), as BENCH.md describes: add, update, cold, warm, hot over 10,000
 * Items in a BTree keyed by int.  `tsx bench/shootout.ts --storage memory:|embedded|server`
 * cold+prefetch: the Items are ghosts (buckets loaded before the timer), one prefetch, reads.
 * cold+closure: one loadClosure of the tree, then the reads.
 */
import { BTree } from "../src/index.ts";
import { argValue, labelOf, makeTarget, phase, report, type Phase } from "./lib.ts";
import { Item, fillItem } from "./model.ts";

const N = 10_000;
const RUNS = Number(argValue("--runs", "3"));
// One run first whose figures are dropped: it measures V8 compiling the code, not amberdb.
const WARMUP = Number(argValue("--warmup", "1"));
const storage = argValue("--storage", "memory:");

function readAll(tree: BTree<number, Item>): number {
  let x = 0;
  for (const item of tree.values()) {
    x += item.i + item.s.length + item.f + item.l[2]!;
    if (item.ref === null) x++;
  }
  return x;
}

const results: Record<string, Phase[]> = { add: [], update: [], cold: [], warm: [], hot: [], "cold+prefetch": [], "cold+closure": [] };
for (let run = 0; run < WARMUP + RUNS; run++) {
  if (run === WARMUP) for (const k of Object.keys(results)) results[k] = [];
  const target = makeTarget(storage);
  let db = await target.open();
  let conn = db.open({ cacheSize: 100_000 });
  results.add!.push(
    await phase(conn, N, async () => {
      const tree = new BTree<number, Item>();
      const items: Item[] = [];
      for (let i = 0; i < N; i++) {
        const it = fillItem(new Item(), i);
        items.push(it);
        tree.set(i, it);
      }
      for (let i = 0; i < N; i++) items[i]!.ref = items[(i + 1) % N]!;
      conn.root().set("items", tree);
      await conn.commit();
    }),
  );
  results.update!.push(
    await phase(conn, N, async () => {
      for (const item of (conn.root().get("items") as BTree<number, Item>).values()) {
        item.i += 1;
        item.f += 1;
        item.s = `ITEM-${String(item.i).padStart(15, "0")}`;
      }
      await conn.commit();
    }),
  );
  await conn.close();
  await db.close();
  db = await target.open(); // a new DB object: empty caches
  conn = db.open({ cacheSize: 100_000 });
  const tree = () => conn.root().get("items") as BTree<number, Item>;
  results.cold!.push(await phase(conn, N, () => readAll(tree())));
  conn.cacheMinimize();
  results.warm!.push(await phase(conn, N, () => readAll(tree())));
  const hot: Phase[] = [];
  for (let r = 0; r < 20; r++) hot.push(await phase(conn, N, () => readAll(tree())));
  results.hot!.push(hot.sort((a, b) => a.ms - b.ms)[0]!);
  await conn.close();
  await db.close();
  // cold+prefetch: a new DB object; the tree's buckets are loaded before the timer, so the
  // 10,000 Items are ghosts; one prefetch of them, then the same reads.
  db = await target.open();
  conn = db.open({ cacheSize: 100_000 });
  const ghosts = [...tree().values()];
  results["cold+prefetch"]!.push(
    await phase(conn, N, async () => {
      await conn.prefetch(ghosts);
      return readAll(tree());
    }),
  );
  await conn.close();
  await db.close();
  // cold+closure: a new DB object; one loadClosure of the tree (buckets and Items), then the reads.
  db = await target.open();
  conn = db.open({ cacheSize: 100_000 });
  results["cold+closure"]!.push(
    await phase(conn, N, async () => {
      await conn.loadClosure(tree());
      return readAll(tree());
    }),
  );
  await conn.close();
  await db.close();
  await target.dispose();
}
report("a shootout", labelOf(storage), results);
