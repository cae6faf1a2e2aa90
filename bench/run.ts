/**
 * Runs the benchmark workloads, each in its own process.
 *   npm run bench                                   all workloads on memory:, embedded and server
 *   npm run bench -- shootout --storage embedded    one workload on one storage
 */
import { execFileSync } from "node:child_process";
import { header } from "./lib.ts";

// `table`: the script prints rows of its own table, not the shared phase table.
const workloads: Record<string, { script: string; nodeArgs?: string[]; perStorage: boolean; table?: boolean }> = {
  shootout: { script: "bench/shootout.ts", perStorage: true },
  closure: { script: "bench/closure.ts", perStorage: true },
  n_plus_1: { script: "bench/n-plus-1.ts", perStorage: true },
  "hot-field": { script: "bench/hot-field.ts", perStorage: false },
  boundaries: { script: "bench/boundaries.ts", perStorage: false, table: true },
  memory: { script: "bench/memory.ts", nodeArgs: ["--expose-gc"], perStorage: true },
  conflicts: { script: "bench/conflicts.ts", perStorage: true, table: true },
  btree: { script: "bench/btree.ts", perStorage: true, table: true },
  "btree-writers": { script: "bench/btree-writers.ts", perStorage: true, table: true },
  "commit-fairness": { script: "bench/commit-fairness.ts", perStorage: false, table: true },
};

const args = process.argv.slice(2);
const si = args.indexOf("--storage");
const storages = si >= 0 ? [args[si + 1]!] : ["memory:", "embedded", "server"];
const names = args.filter((a, i) => !a.startsWith("--") && (si < 0 || i !== si + 1));
const chosen = names.length > 0 ? names : Object.keys(workloads);
for (const name of chosen) if (!(name in workloads)) throw new Error(`unknown workload ${name}; known: ${Object.keys(workloads).join(", ")}`);

console.log(`# amberdb benchmarks, ${new Date().toISOString().slice(0, 10)}, node ${process.version}\n`);
let printedHeader = false;
for (const name of chosen) {
  const w = workloads[name]!;
  for (const storage of w.perStorage ? storages : [""]) {
    if (w.perStorage && name !== "memory" && !w.table && !printedHeader) {
      header();
      printedHeader = true;
    }
    const out = execFileSync(
      process.execPath,
      [...(w.nodeArgs ?? []), "--import", "tsx", w.script, ...(storage ? ["--storage", storage] : [])],
      { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] },
    );
    process.stdout.write(out);
    if (!w.perStorage || name === "memory" || w.table) printedHeader = false;
  }
}
