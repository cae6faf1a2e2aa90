/**
 * Workload d of BENCH.md: two writers each add 1 to one shared Counter 1,000 times,
 * interleaved, committing after each add. Reports commits/s, conflicts resolved, and the
 * final value (must be exactly 2,000).
 *
 * `tsx bench/conflicts.ts --storage memory:|embedded|server [--adds 1000] [--procs]`
 * Local storages run two connections in this process, strictly interleaved (A adds, B
 * adds, A commits, B commits: every commit of B conflicts with A's and is merged). The
 * server, and any storage with `--procs`, runs two writer processes instead.
 */
import { spawn } from "node:child_process";
import { Counter, type DB } from "../src/index.ts";
import { argValue, fmt, labelOf, makeTarget } from "./lib.ts";

const storage = argValue("--storage", "embedded");
const ADDS = Number(argValue("--adds", "1000"));
const procs = process.argv.includes("--procs") || storage === "server";

const target = makeTarget(storage);
const db: DB = await target.open();
await db.transact((root) => {
  root.set("counter", new Counter());
});

let commits = 0;
let resolved = 0;
let failed = 0;
const t0 = performance.now();
if (!procs) {
  const [a, b] = [db.open(), db.open()];
  const ca = (): Counter => a.root().get("counter") as Counter;
  const cb = (): Counter => b.root().get("counter") as Counter;
  for (let i = 0; i < ADDS; i++) {
    ca().add(1);
    cb().add(1);
    await a.commit();
    await b.commit();
  }
  commits = a.stats.commits + b.stats.commits;
  resolved = a.stats.conflictsResolved + b.stats.conflictsResolved;
  await a.close();
  await b.close();
} else {
  const url = (db.storage as { url: string }).url;
  const children = [0, 1].map(() =>
    spawn(process.execPath, ["--import", "tsx", "bench/fixtures/counter-client.ts", url, String(ADDS)], {
      stdio: ["pipe", "pipe", "inherit"],
    }),
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
  const started = performance.now();
  for (const c of children) c.stdin!.end("go\n");
  for (const line of await Promise.all(outputs)) {
    const r = JSON.parse(line) as { commits: number; resolved: number; failed: number };
    commits += r.commits;
    resolved += r.resolved;
    failed += r.failed;
  }
  (t0 as number) && void started;
}
const ms = performance.now() - t0;
const check = db.open();
const value = (check.root().get("counter") as Counter).value;
await check.close();
console.log(
  `| d conflicts | ${labelOf(storage)}${procs ? ", 2 processes" : ", 2 connections"} | ${commits} commits in ${ms.toFixed(0)} ms | ` +
    `${fmt((commits / ms) * 1000)} commits/s | ${resolved} resolved, ${failed} failed | final value ${value} (expected ${2 * ADDS}) |`,
);
await db.close();
await target.dispose();
if (value !== 2 * ADDS) process.exitCode = 1;
