/**
 * Concurrent writers on one big BTree (issue 5): a tree of 1,000,000 keys is built, then 4
 * writer processes insert random distinct keys into it for 30 s, committing after each few
 * keys. Reports commits/s, how many conflicts merged, and the share of commits that still
 * failed with ConflictError (target < 1%; under ZODB's rules a bucket split, or two
 * changes to one bucket of a tree with several buckets at its top, would conflict).
 *
 * `tsx bench/btree-writers.ts --storage embedded|server [--writers 4] [--ms 30000]
 *  [--keys 1000000] [--per-commit 1]`
 */
import { spawn } from "node:child_process";
import { BTree } from "../src/index.ts";
import { argValue, fmt, labelOf, makeTarget } from "./lib.ts";

const storage = argValue("--storage", "embedded");
const WRITERS = Number(argValue("--writers", "4"));
if (WRITERS > 15) throw new RangeError("at most 15 writers");
const MS = Number(argValue("--ms", "30000"));
const KEYS = Number(argValue("--keys", "1000000"));
const PER_COMMIT = Number(argValue("--per-commit", "1"));
const KEY_SPACE = KEYS * 16; // the built keys are multiples of 16: writers' keys are new

const target = makeTarget(storage);
const db = await target.open();
const t0 = performance.now();
{
  const conn = db.open({ cacheSize: 100_000 });
  const tree = new BTree<number, number>();
  conn.root().set("tree", tree);
  for (let i = 0; i < KEYS; i++) {
    tree.set(i * 16, -1);
    if ((i + 1) % 100_000 === 0) await conn.commit();
  }
  await conn.commit();
  await conn.close();
}
const buildMs = performance.now() - t0;
const url = (db.storage as { url: string }).url;
const children = Array.from({ length: WRITERS }, (_, i) =>
  spawn(
    process.execPath,
    ["--import", "tsx", "bench/fixtures/btree-writer.ts", url, String(i), String(WRITERS), String(MS), String(PER_COMMIT), String(KEY_SPACE)],
    { stdio: ["pipe", "pipe", "inherit"] },
  ),
);
const outputs = children.map(
  (c) =>
    new Promise<string>((resolve) => {
      let out = "";
      c.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
      c.once("exit", () => resolve(out.trim().split("\n").pop()!));
    }),
);
await Promise.all(children.map((c) => new Promise<void>((resolve) => c.stdout!.once("data", () => resolve()))));
for (const c of children) c.stdin!.end("go\n");
let commits = 0;
let resolved = 0;
let failed = 0;
let inserted = 0;
let lost = 0;
for (const line of await Promise.all(outputs)) {
  const r = JSON.parse(line) as { commits: number; resolved: number; failed: number; keys: number; lost: number };
  lost += r.lost;
  commits += r.commits;
  resolved += r.resolved;
  failed += r.failed;
  inserted += r.keys;
}
const conn = db.open({ cacheSize: 100_000 });
const tree = conn.root().get("tree") as BTree<number, number>;
tree.check();
const size = tree.size;
await conn.close();
const attempts = commits + failed;
console.log(
  `| ${WRITERS} writers x ${MS / 1000} s into a ${fmt(KEYS)}-key BTree, ${PER_COMMIT} key(s)/commit | ${labelOf(storage)} | ` +
    `${fmt(commits / (MS / 1000))} commits/s | ${resolved} conflicts merged | ${failed} of ${attempts} commits failed ` +
    `(${((100 * failed) / Math.max(1, attempts)).toFixed(2)}%) | ${lost} committed keys missing | size ${size} = ${KEYS} + ${inserted}: ${size === KEYS + inserted ? "exact" : "WRONG"}; check() ok | build ${(buildMs / 1000).toFixed(1)} s |`,
);
await db.close();
await target.dispose();
if (size !== KEYS + inserted || lost > 0) process.exitCode = 1;
