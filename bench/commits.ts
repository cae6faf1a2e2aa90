/**
 * Commits per second of small transactions from 4 client processes at once, each changing
 * one object of its own and committing (so they never conflict), for 5 s.
 * `tsx bench/commits.ts --storage embedded|server [--clients 4] [--ms 5000]`
 * On `embedded` the 4 processes share one LMDB store (durable commits); on `server` they
 * talk to one `amber serve` over loopback (durable embedded store behind it).
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DB } from "../src/index.ts";
import { startServer } from "../test/server-process.ts";
import { argValue, fmt, labelOf } from "./lib.ts";

const storage = argValue("--storage", "embedded");
const CLIENTS = Number(argValue("--clients", "4"));
const MS = Number(argValue("--ms", "5000"));
const dir = mkdtempSync(join(tmpdir(), "amber-bench-commits-"));
const server = storage === "server" ? await startServer(join(dir, "db")) : undefined;
const url = server?.url ?? join(dir, "db");
try {
  await (await DB.open(url)).close(); // create the store and its root once
  const children = Array.from({ length: CLIENTS }, (_, i) =>
    spawn(process.execPath, ["--import", "tsx", "bench/fixtures/commit-client.ts", url, String(i), String(MS)], { stdio: ["pipe", "pipe", "inherit"] }),
  );
  const lines = children.map(
    (c) =>
      new Promise<string[]>((resolve) => {
        let out = "";
        c.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
        c.once("exit", () => resolve(out.trim().split("\n")));
      }),
  );
  await Promise.all(
    children.map((c) => new Promise<void>((resolve) => c.stdout!.once("data", () => resolve()))),
  );
  for (const c of children) c.stdin!.end("go\n");
  const results = (await Promise.all(lines)).map((l) => JSON.parse(l[l.length - 1]!) as { commits: number; conflicts: number });
  const commits = results.reduce((n, r) => n + r.commits, 0);
  const conflicts = results.reduce((n, r) => n + r.conflicts, 0);
  console.log(
    `| small commits, ${CLIENTS} client processes | ${labelOf(storage)} | ${MS / 1000} s | ${fmt(commits / (MS / 1000))} commits/s | ${commits} commits, ${conflicts} conflicts |`,
  );
} finally {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
}
