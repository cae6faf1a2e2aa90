/**
 * Workload b (closure), as BENCH.md describes: a tree of 13,800 Nodes (fan-out 8,
 * breadth-first) built and committed in one transaction, then traversed cold, warm and hot.
 * closure: cold again, `await conn.loadClosure(model)` (one round trip), then the traversal.
 * `tsx bench/closure.ts --storage memory:|embedded|server`
 */
import { Persistent, persistent } from "../src/index.ts";
import { argValue, labelOf, makeTarget, phase, report, type Phase } from "./lib.ts";

const KINDS = ["Package", "Class", "Attribute", "Operation", "Parameter", "Association", "Comment", "Constraint"];

@persistent("bench.Node")
class Node extends Persistent {
  name = "";
  kind = "";
  depth = 0;
  index = 0;
  doc = "";
  children: Node[] = [];
}

const N = 13_800;
const RUNS = Number(argValue("--runs", "3"));
// One run first whose figures are dropped: it measures V8 compiling the code, not amberdb.
const WARMUP = Number(argValue("--warmup", "1"));
const storage = argValue("--storage", "memory:");

function build(): Node {
  const nodes: Node[] = [];
  for (let i = 0; i < N; i++) {
    const n = new Node();
    n.index = i;
    n.name = `n${i}`;
    n.kind = KINDS[i % 8]!;
    n.doc = `documentation of ${n.name}`;
    nodes.push(n);
  }
  for (let i = 0; i < N; i++) {
    for (let c = 8 * i + 1; c <= 8 * i + 8 && c < N; c++) {
      nodes[i]!.children.push(nodes[c]!);
      nodes[c]!.depth = nodes[i]!.depth + 1;
    }
  }
  return nodes[0]!;
}

function traverse(node: Node): number {
  let count = 1;
  let x = node.name.length + node.kind.length + node.depth + node.index + node.doc.length;
  for (const child of node.children) count += traverse(child);
  return count + (x & 0);
}

const results: Record<string, Phase[]> = { build_commit: [], cold: [], warm: [], hot: [], closure: [] };
for (let run = 0; run < WARMUP + RUNS; run++) {
  if (run === WARMUP) for (const k of Object.keys(results)) results[k] = [];
  const target = makeTarget(storage);
  let db = await target.open();
  let conn = db.open({ cacheSize: 100_000 });
  results.build_commit!.push(
    await phase(conn, N, async () => {
      conn.root().set("model", build());
      await conn.commit();
    }),
  );
  await conn.close();
  await db.close();
  db = await target.open();
  conn = db.open({ cacheSize: 100_000 });
  let seen = 0;
  results.cold!.push(await phase(conn, N, () => (seen = traverse(conn.root().get("model") as Node))));
  if (seen !== N) throw new Error(`traversal saw ${seen} nodes, expected ${N}`);
  conn.cacheMinimize();
  results.warm!.push(await phase(conn, N, () => traverse(conn.root().get("model") as Node)));
  const hot: Phase[] = [];
  for (let r = 0; r < 20; r++) hot.push(await phase(conn, N, () => traverse(conn.root().get("model") as Node)));
  results.hot!.push(hot.sort((a, b) => a.ms - b.ms)[0]!);
  await conn.close();
  await db.close();
  // closure: cold again (a new DB object), one loadClosure of the model, then the traversal.
  db = await target.open();
  conn = db.open({ cacheSize: 100_000 });
  const model = conn.root().get("model") as Node;
  results.closure!.push(
    await phase(conn, N, async () => {
      await conn.loadClosure(model);
      seen = traverse(model);
    }),
  );
  if (seen !== N) throw new Error(`traversal after loadClosure saw ${seen} nodes, expected ${N}`);
  await conn.close();
  await db.close();
  await target.dispose();
}
report("b closure", labelOf(storage), results);
