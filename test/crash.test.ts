/**
 * Crash safety of the embedded storage: a writer process is killed with SIGKILL in the
 * middle of committing, again and again. After each kill the database must open, hold
 * every commit that had returned, and show no partial transaction.
 */
import { spawn } from "node:child_process";
import { afterAll, describe, expect, it } from "vitest";
import { DB, PersistentList } from "../src/index.ts";
import { cleanupDirs, tempDir } from "./helpers.ts";
import { Tally } from "./model.ts";

afterAll(cleanupDirs);

const KILLS = 20;

/** Run the writer until it has reported `minCommits` commits plus a random extra delay, then SIGKILL it. */
function runAndKill(path: string, minCommits: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "test/fixtures/crash-writer.ts", path], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let last = -1;
    let seen = 0;
    let buffer = "";
    let stderr = "";
    let killTimer: NodeJS.Timeout | undefined;
    child.stdout.on("data", (chunk: Buffer) => {
      buffer += chunk.toString();
      let nl: number;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        const m = /^committed (\d+)$/.exec(line);
        if (m) {
          last = Number(m[1]);
          if (++seen === minCommits) killTimer = setTimeout(() => child.kill("SIGKILL"), Math.random() * 40);
        }
      }
    });
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.on("exit", (code, signal) => {
      clearTimeout(killTimer);
      if (signal === "SIGKILL") resolve(last);
      else reject(new Error(`writer exited with ${code ?? signal} before being killed: ${stderr}`));
    });
  });
}

describe("crash safety (embedded storage)", () => {
  it(`keeps every returned commit and no partial transaction across ${KILLS} SIGKILLs`, async () => {
    const path = tempDir();
    let highest = 0;
    for (let round = 0; round < KILLS; round++) {
      const lastReported = await runAndKill(path, 1 + Math.floor(Math.random() * 20));
      const db = await DB.open(path);
      try {
        const root = db.open().root();
        const counter = root.get("counter") as number;
        const a = (root.get("a") as Tally).n;
        const b = (root.get("b") as Tally).n;
        const log = (root.get("log") as PersistentList<number>).toArray();
        // Every commit that returned is there (the kill may also have let one more finish).
        expect(counter, `round ${round}`).toBeGreaterThanOrEqual(lastReported);
        expect(counter).toBeGreaterThanOrEqual(highest);
        // No partial transaction: every object written by one transaction agrees.
        expect([a, b]).toEqual([counter, counter]);
        expect(log.at(-1)).toBe(counter);
        for (let i = 1; i < log.length; i++) expect(log[i]).toBe(log[i - 1]! + 1);
        const item = root.get(`item${counter % 200}`) as { n: number; payload: string };
        expect(item.n).toBe(counter);
        expect(item.payload.length).toBe(counter % 500);
        highest = counter;
      } finally {
        await db.close();
      }
    }
    expect(highest).toBeGreaterThan(KILLS);
  }, 180_000);
});
