/**
 * Bounded memory: traverse 200,000 stored objects with `cacheSize: 10000` and report the
 * heap growth after a full GC (target: under 100 MiB). Needs --expose-gc:
 * `node --expose-gc --import tsx bench/memory.ts [--storage embedded|memory:]`
 */
import { PersistentList, Persistent, persistent } from "../src/index.ts";
import { argValue, labelOf, makeTarget, now } from "./lib.ts";

@persistent("bench.MemItem")
class MemItem extends Persistent {
  i = 0;
  name = "";
  payload = "";
  tags: string[] = [];
}

const TOTAL = Number(argValue("--objects", "200000"));
const CHUNK = 1000;
const storage = argValue("--storage", "embedded");
const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) throw new Error("run with node --expose-gc");
const heap = (): number => {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
};

const target = makeTarget(storage);
let db = await target.open();
{
  const conn = db.open({ cacheSize: 10_000 });
  const chunks = new PersistentList<PersistentList<MemItem>>();
  conn.root().set("chunks", chunks);
  for (let c = 0; c < TOTAL / CHUNK; c++) {
    const list = new PersistentList<MemItem>();
    for (let i = 0; i < CHUNK; i++) {
      const it = new MemItem();
      it.i = c * CHUNK + i;
      it.name = `item ${it.i}`;
      it.payload = "p".repeat(100);
      it.tags = ["a", "b"];
      list.push(it);
    }
    chunks.push(list);
    if ((c + 1) % 20 === 0) {
      await conn.commit();
      conn.cacheMinimize();
    }
  }
  await conn.commit();
  await conn.close();
}
await db.close();

db = await target.open();
const conn = db.open({ cacheSize: 10_000 });
await new Promise((r) => setImmediate(r));
const before = heap();
const t0 = now();
let count = 0;
let sum = 0;
let peak = 0;
// V8 keeps the target of every WeakRef made or dereferenced during a synchronous job alive
// until the job ends, so evicted ghosts are only collectable once the traversal yields:
// `--yield-every N` awaits the event loop every N objects (0 = one synchronous traversal).
const yieldEvery = Number(argValue("--yield-every", "0"));
// Objects holding nested containers (these items have a `tags` array) are evicted at
// transaction boundaries or by cacheGC(); a long read-only traversal calls it now and then.
const gcEvery = Number(argValue("--gc-every", "10000"));
for (const list of conn.root().get("chunks") as PersistentList<PersistentList<MemItem>>) {
  for (const it of list) {
    sum += it.i + it.name.length + it.payload.length + it.tags.length;
    count++;
    if (gcEvery > 0 && count % gcEvery === 0) conn.cacheGC();
    if (count % 10_000 === 0) {
      peak = Math.max(peak, process.memoryUsage().heapUsed);
      if (yieldEvery > 0 && count % yieldEvery === 0) await new Promise((r) => setImmediate(r));
    }
  }
}
const ms = now() - t0;
const loadedAtEnd = conn.cacheInfo.loaded;
conn.abort(); // the read-only transaction ends: the cache is trimmed to cacheSize
const peakLoaded = conn.cacheInfo.loaded;
await new Promise((r) => setImmediate(r)); // end the job, then collect
const after = heap();
if (count !== TOTAL) throw new Error(`traversed ${count}, expected ${TOTAL}`);
console.log(
  `| memory | ${labelOf(storage)} | traverse ${TOTAL.toLocaleString("en")} objects, cacheSize 10,000 | ` +
    `${ms.toFixed(0)} ms | ${gcEvery > 0 ? `cacheGC() every ${gcEvery}` : "no cacheGC"}, ` +
    `${yieldEvery > 0 ? `yielding every ${yieldEvery}` : "one synchronous pass"} | ` +
    `loaded before / after the transaction ended ${loadedAtEnd} / ${peakLoaded} | ` +
    `heap growth after GC ${((after - before) / 2 ** 20).toFixed(1)} MiB | peak during ${((peak - before) / 2 ** 20).toFixed(1)} MiB (no forced GC) | ` +
    `known ${conn.cacheInfo.known} |`,
);
if (sum < 0) console.log(sum);
await conn.close();
await db.close();
await target.dispose();
