import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inject } from "vitest";
import { DB, type DBOptions } from "../src/index.ts";

let served = 0;
/** A fresh database on the run's storage server (see global-server.ts). */
export function serverUrl(): string {
  return `${inject("amberServer")}/t${process.pid}_${++served}`;
}

/** The storages every connection-level scenario runs on. */
export const storages: Array<{ name: string; url: () => string }> = [
  { name: "memory", url: () => "memory:" },
  { name: "embedded", url: () => tempDir() },
  { name: "server", url: serverUrl },
].filter((s) => !process.env.AMBER_TEST_STORAGES || process.env.AMBER_TEST_STORAGES.split(",").includes(s.name));

const dirs: string[] = [];
export function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), "amber-test-"));
  dirs.push(d);
  return join(d, "db");
}
export function cleanupDirs(): void {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

/** Open a DB; memory databases are shared per URL object so two DBs see one storage. */
export async function openDB(url: string, options: DBOptions = {}): Promise<DB> {
  return DB.open(url, { durability: "relaxed", ...options });
}

/** A connection with an empty cache (db.open() may hand back a pooled one with its cache). */
export function fresh(db: DB, options: { cacheSize?: number } = {}) {
  return db.open({ cacheSize: 10_000, ...options });
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Wait until `cond()` holds, polling; fails naming `what` after `ms`. */
export async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** `p`, or a rejection starting "HANG:" and naming `what` if it takes longer than `ms`. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`HANG: ${what} did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
