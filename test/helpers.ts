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
