/**
 * Is commit access to one embedded store shared fairly between processes? N equal writer
 * processes (default 6) commit small transactions in a loop for a few seconds; each one's
 * share of all commits is printed against its fair share (1/N). Modes: see
 * test/fixtures/fair-writer.ts ("shared", the hot spot, is where a writer can starve).
 *
 *   tsx bench/commit-fairness.ts [--writers 6] [--ms 4000] [--mode own|shared|counter|storage|race]
 *                                [--durability durable|relaxed]
 */
import { measureFairness, type FairnessMode } from "../test/fixtures/commit-fairness.ts";

const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
};
const writers = Number(arg("--writers", "6"));
const ms = Number(arg("--ms", "4000"));
const mode = arg("--mode", "shared") as FairnessMode;
const durability = arg("--durability", "durable") as "durable" | "relaxed";

const r = await measureFairness({ writers, ms, mode, durability });
const total = r.commits.reduce((a, b) => a + b, 0);
const pct = (c: number) => `${((c / Math.max(total, 1)) * 100).toFixed(1)}%`;
console.log(
  `| ${mode} | ${durability} | ${writers} | ${ms / 1000} s | ${total} | ${Math.round(total / (ms / 1000))}/s | ` +
    `${r.commits.map(pct).join(" ")} | ${pct(Math.max(...r.commits))} | ${Math.min(...r.ofFairShare).toFixed(2)} | ${r.gaveUp.reduce((a, b) => a + b, 0)} |`,
);
