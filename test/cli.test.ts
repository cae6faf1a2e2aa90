/**
 * The command line and the demo, run as real processes: `amber info`, `--help`, the
 * one-line error and exit code on failure, and `npm run demo`'s application.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { DB } from "../src/index.ts";
import { cleanupDirs, tempDir } from "./helpers.ts";
import { startServer } from "./server-process.ts";

afterAll(cleanupDirs);
const run = promisify(execFile);

async function amber(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ["bin/amber.mjs", ...args]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe("amber command line", () => {
  it("info shows the last transaction and the root's keys", async () => {
    const path = tempDir();
    const db = await DB.open(path);
    await db.transact((root) => {
      root.set("customers", 1);
      root.set("orders", 2);
    });
    const tid = await db.lastTid();
    await db.close();
    const out = await amber("info", path);
    expect(out.code).toBe(0);
    expect(out.stdout).toContain(`last tid      ${tid}`);
    expect(out.stdout).toMatch(/root keys     customers, orders/);
    const json = await amber("info", path, "--json");
    expect(JSON.parse(json.stdout)).toMatchObject({ lastTid: tid, rootKeys: ["customers", "orders"], history: true });
  });

  it("fails with a one-line error and exit code 1 for a path that is not a store", async () => {
    const file = `${tempDir()}.txt`;
    writeFileSync(file, "hello");
    const out = await amber("info", file);
    expect(out.code).toBe(1);
    expect(out.stderr.trim().split("\n")).toHaveLength(1);
    expect(out.stderr).toMatch(/^amber: .*not an amberdb store/);
  });

  it("info never creates a store: a missing path fails naming it, and nothing is made", async () => {
    const missing = join(tempDir(), "shop");
    const out = await amber("info", missing);
    expect(out.code).toBe(1);
    expect(out.stderr).toBe(`amber: cannot open ${missing}: no amberdb store there (nothing exists at that path, and create is false)\n`);
    expect(existsSync(dirname(missing))).toBe(false);

    const empty = tempDir();
    mkdirSync(empty);
    const onEmpty = await amber("info", empty);
    expect(onEmpty.code).toBe(1);
    expect(onEmpty.stderr).toMatch(/it is an empty directory, not an amberdb store/);
    expect(readdirSync(empty)).toEqual([]);

    const proc = await amber("info", "/proc/amber-cli-test");
    expect(proc.code).toBe(1);
    expect(proc.stderr).toMatch(/^amber: cannot open \/proc\/amber-cli-test: no amberdb store there/);
  });

  it("info on a server never makes it create a database", async () => {
    const dir = tempDir();
    mkdirSync(dir);
    const server = await startServer(join(dir, "{name}"), ["--durability", "relaxed"]);
    try {
      const out = await amber("info", `${server.url}/absent`);
      expect(out.code).toBe(1);
      expect(out.stderr).toBe(`amber: cannot open ${join(dir, "absent")}: no amberdb store there (nothing exists at that path, and create is false)\n`);
      expect(readdirSync(dir)).toEqual([]);
    } finally {
      await server.stop();
    }
  });

  it("info on a port that is not an amber server says so in one line", async () => {
    const web = http.createServer((_req, res) => res.end("a web page"));
    await new Promise<void>((resolve) => web.listen(0, "127.0.0.1", resolve));
    const { port } = web.address() as AddressInfo;
    try {
      const out = await amber("info", `amber://127.0.0.1:${port}`);
      expect(out.code).toBe(1);
      expect(out.stderr.trim().split("\n")).toHaveLength(1);
      expect(out.stderr).toMatch(new RegExp(`^amber: 127\\.0\\.0\\.1:${port} does not speak the amber protocol: expected the reply to HELLO`));
      expect(out.stderr).toContain("(an HTTP server)");
    } finally {
      web.closeAllConnections();
      await new Promise((resolve) => web.close(resolve));
    }
  });

  it("has --help for the program and each command", async () => {
    const top = await amber("--help");
    expect(top.code).toBe(0);
    expect(top.stdout).toMatch(/Usage: amber/);
    expect(top.stdout).toMatch(/info/);
    const info = await amber("info", "--help");
    expect(info.stdout).toMatch(/Usage: amber info \[options\] <storage>/);
  });
});

describe("the demo (npm run demo)", () => {
  it("stores a graph, reads it in a second process, shows a conflict and retries it", async () => {
    const path = tempDir();
    const { stdout } = await run(process.execPath, ["--import", "tsx", "demo/demo.ts"], {
      env: { ...process.env, AMBER_DEMO_PATH: path },
    });
    expect(stdout).toMatch(/\[reader pid \d+\] sees 2 books/);
    expect(stdout).toMatch(/commit refused: ConflictError: .*demo\.Book#\d+/);
    expect(stdout).toMatch(/now has 14 copies/);
    const db = await DB.open(path);
    expect((db.open().root().get("books") as Array<{ copies: number }>)[0]!.copies).toBe(14);
    await db.close();
  }, 60_000);
});
