/**
 * Several processes on one embedded database: commits of one process are seen by another at
 * its next transaction boundary, and conflicts are detected across processes.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { ConflictError, DB } from "../src/index.ts";
import { cleanupDirs, tempDir } from "./helpers.ts";
import { Tally } from "./model.ts";

afterAll(cleanupDirs);
const run = promisify(execFile);
const increment = (path: string, count: number) =>
  run(process.execPath, ["--import", "tsx", "test/fixtures/increment.ts", path, String(count)]);

describe("several processes on one embedded database", () => {
  it("sees another process's commit at the next transaction and detects the conflict", async () => {
    const path = tempDir();
    const db = await DB.open(path);
    await db.transact((root) => root.set("tally", new Tally()));
    const conn = db.open();
    const tally = conn.root().get("tally") as Tally;
    expect(tally.n).toBe(0);
    await increment(path, 1);
    expect(tally.n).toBe(0); // still this transaction's snapshot
    tally.n = 100;
    const err = await conn.commit().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConflictError);
    expect((err as ConflictError).classNames).toEqual(["test.Tally"]);
    conn.abort();
    expect(tally.n).toBe(1);
    await db.close();
  });

  it("loses no increment when three processes and this one commit concurrently", async () => {
    const path = tempDir();
    const db = await DB.open(path);
    await db.transact((root) => root.set("tally", new Tally()));
    const children = [increment(path, 25), increment(path, 25), increment(path, 25)];
    // A handler at once: a child failing while this process still commits must not be an
    // unhandled rejection (Promise.all below still rejects with its error).
    for (const child of children) child.catch(() => undefined);
    for (let i = 0; i < 25; i++) {
      await db.transact((root) => {
        (root.get("tally") as Tally).n++;
      }, { retries: 1000, backoffMs: 1 });
    }
    await Promise.all(children);
    const conn = db.open();
    expect((conn.root().get("tally") as Tally).n).toBe(100);
    await db.close();
  }, 120_000);
});
