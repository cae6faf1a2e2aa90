/**
 * Concurrent adds to one Counter always merge, also over a storage server, where other
 * commits can land between a commit's vote and its finish: client processes adding without
 * retries see no ConflictError, and no addition is lost.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { Counter, DB } from "../src/index.ts";
import { serverUrl } from "./helpers.ts";

const run = promisify(execFile);

describe("a Counter under contention", () => {
  it("6 client processes of a server add without retries: every add merges", async () => {
    const url = serverUrl();
    const db = await DB.open(url);
    await db.transact((root) => root.set("counter", new Counter()));
    const procs = 6;
    const adds = 80;
    const outs = await Promise.all(
      Array.from({ length: procs }, () => run(process.execPath, ["--import", "tsx", "test/fixtures/count-up.ts", url, String(adds)])),
    );
    const conflicts = outs.map((o) => (JSON.parse(o.stdout) as { conflicts: number }).conflicts);
    expect(conflicts).toEqual(new Array(procs).fill(0));
    const conn = db.open();
    expect((conn.root().get("counter") as Counter).value).toBe(procs * adds);
    await conn.close();
    await db.close();
  });
});
