/**
 * Profiles one phase of the shootout workload in isolation (CPU profile via the inspector,
 * only while the phase runs) and prints the functions with the most self and total time.
 *   tsx bench/tools/profile-phase.ts cold|add|hot [--storage embedded|memory:]
 */
import { Session } from "node:inspector/promises";
import { BTree } from "../../src/index.ts";
import { argValue, makeTarget } from "../lib.ts";
import { Item, fillItem } from "../model.ts";
const N = 10_000;
const which = process.argv[2] ?? "cold";
const target = makeTarget(argValue("--storage", "embedded"));
const session = new Session();
session.connect();
await session.post("Profiler.enable");

async function build(): Promise<void> {
  const db = await target.open();
  const conn = db.open({ cacheSize: 100_000 });
  const tree = new BTree<number, Item>();
  const items: Item[] = [];
  for (let i = 0; i < N; i++) {
    const it = fillItem(new Item(), i);
    items.push(it);
    tree.set(i, it);
  }
  items.forEach((it, i) => (it.ref = items[(i + 1) % N]!));
  conn.root().set("items", tree);
  await conn.commit();
  await db.close();
}

const profiles: any[] = [];
for (let run = 0; run < 8; run++) {
  if (which === "add" || run === 0) {
    if (which === "add") await session.post("Profiler.start");
    const t = performance.now();
    await build();
    if (which === "add") profiles.push((await session.post("Profiler.stop")).profile);
    if (which === "add") console.log("add ms", (performance.now() - t).toFixed(1));
    if (which === "add") continue;
  }
  const db = await target.open();
  const conn = db.open({ cacheSize: 100_000 });
  const tree = conn.root().get("items") as BTree<number, Item>;
  if (which === "hot") for (const it of tree.values()) void it.i;
  await session.post("Profiler.start");
  const t = performance.now();
  let x = 0;
  for (const item of tree.values()) x += item.i + item.s.length + item.f + item.l[2]! + (item.ref === null ? 1 : 0);
  const ms = performance.now() - t;
  profiles.push((await session.post("Profiler.stop")).profile);
  console.log(which, "ms", ms.toFixed(2), x > 0 ? "" : "!");
  await db.close();
}

const self = new Map<string, number>();
const total = new Map<string, number>();
for (const p of profiles.slice(2)) {
  const byId = new Map<number, any>(p.nodes.map((n: any) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  p.samples.forEach((id: number, i: number) => {
    const dt = p.timeDeltas[i] ?? 0;
    const seen = new Set<string>();
    for (let cur: number | undefined = id, first = true; cur !== undefined; cur = parent.get(cur), first = false) {
      const f = byId.get(cur).callFrame;
      const k = `${f.functionName || "(anon)"} ${String(f.url).split("/").slice(-2).join("/")}:${f.lineNumber + 1}`;
      if (first) self.set(k, (self.get(k) ?? 0) + dt);
      if (!seen.has(k)) total.set(k, (total.get(k) ?? 0) + dt);
      seen.add(k);
    }
  });
}
const show = (m: Map<string, number>, title: string) => {
  console.log(`\n${title} (ms over ${profiles.length - 2} runs)`);
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, 22)) console.log((v / 1000).toFixed(1).padStart(8), k);
};
show(self, "self");
show(total, "total");
await target.dispose();
