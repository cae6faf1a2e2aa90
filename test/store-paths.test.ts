/**
 * Opening an embedded store at a path that cannot hold one fails at once, naming the path
 * and what is wrong with it, and creates nothing: a path under /proc or /sys (where Node's
 * recursive mkdir used to spin at 100% CPU forever), under a regular file, through a
 * dangling symbolic link, in a read-only directory. `DB.open` creates a missing store by
 * default; `{ create: false }` refuses instead. Opens that could hang run in a child
 * process that is killed if it does not finish (the test then fails, naming the hang).
 */
import { execFile } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { DB, StorageError } from "../src/index.ts";
import { cleanupDirs, serverUrl, tempDir } from "./helpers.ts";
import { startServer } from "./server-process.ts";

afterAll(cleanupDirs);

type Outcome = { opened: true } | { error: { name: string; code: string; message: string } };

/** DB.open(path, options) in a child process; a child still running after 30 s is killed and reported. */
function openInChild(path: string, options: object = {}): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ["--import", "tsx", "test/fixtures/open-store.ts", path, JSON.stringify(options)],
      { timeout: 30_000, killSignal: "SIGKILL" },
      (err, stdout, stderr) => {
        if (err !== null && (err as { killed?: boolean }).killed) {
          reject(new Error(`HANG: opening and closing ${path} did not finish; the child was killed (${stderr})`));
        } else if (err !== null) reject(new Error(`the child failed: ${err.message}\n${stderr}`));
        else resolve(JSON.parse(stdout.trim()) as Outcome);
      },
    );
  });
}

async function refused(path: string, options: object = {}): Promise<{ name: string; code: string; message: string }> {
  const outcome = await openInChild(path, options);
  if (!("error" in outcome)) throw new Error(`DB.open(${JSON.stringify(path)}) succeeded; expected a refusal`);
  expect(outcome.error.name).toBe("StorageError");
  return outcome.error;
}

describe("opening a path that cannot hold a store", () => {
  it("under /proc: fails at once naming the path (it used to spin forever in mkdir)", async () => {
    const e = await refused("/proc/amber-test-store");
    expect(e.code).toBe("cannot-create");
    expect(e.message).toBe(
      "cannot create the amberdb store /proc/amber-test-store: /proc does not let a directory be made in it " +
        "(mkdir says ENOENT; /proc, /sys and other virtual file systems do this)",
    );
    const deep = await refused("/proc/amber-test-store/a/b");
    expect(deep.message).toMatch(/^cannot create the amberdb store \/proc\/amber-test-store\/a\/b: \/proc does not let a directory be made/);
  });

  it("under /sys: fails naming the path and the system's refusal", async () => {
    const e = await refused("/sys/amber-test-store/x");
    expect(e.code).toBe("cannot-create");
    expect(e.message).toMatch(/^cannot create the amberdb store \/sys\/amber-test-store\/x: (EPERM|EACCES|EROFS|ENOENT|\/sys does not let)/);
  });

  it("a server client whose clientCachePath is under /proc: db.close() returns (saving the cache fails quietly)", async () => {
    // Saving the record cache at close made its directory with the same recursive mkdir.
    const outcome = await openInChild(serverUrl(), { clientCachePath: "/proc/amber-test/cache.bin" });
    expect(outcome).toEqual({ opened: true });
  });

  it("under a regular file: names the file that is in the way", async () => {
    const file = `${tempDir()}.txt`;
    writeFileSync(file, "not a directory");
    for (const path of [join(file, "store"), join(file, "a", "b")]) {
      const e = await refused(path);
      expect(e.message).toBe(`cannot open ${path}: ${file} is a regular file of 15 bytes, so nothing can be under it`);
    }
  });

  it("through a dangling symbolic link: names the link and its missing target, creates nothing", async () => {
    const base = dirname(tempDir());
    const link = join(base, "dangling");
    symlinkSync(join(base, "nowhere"), link);
    const e = await refused(join(link, "store"));
    expect(e.code).toBe("cannot-create");
    expect(e.message).toBe(`cannot create the amberdb store ${join(link, "store")}: ${link} is a symbolic link to ${join(base, "nowhere")}, which does not exist`);
    const direct = await refused(link);
    expect(direct.message).toContain(`${link} is a symbolic link to ${join(base, "nowhere")}, which does not exist`);
    expect(existsSync(join(base, "nowhere"))).toBe(false);
  });

  // As root, permissions do not stop mkdir: this case can only be seen as another user.
  it.skipIf(process.getuid?.() === 0)("in a read-only directory: names the path and the permission error", async () => {
    const ro = tempDir();
    mkdirSync(ro);
    chmodSync(ro, 0o555);
    try {
      const e = await refused(join(ro, "store"));
      expect(e.message).toMatch(new RegExp(`^cannot create the amberdb store ${join(ro, "store").replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}: EACCES`));
    } finally {
      chmodSync(ro, 0o755);
    }
  });
});

describe("DB.open and the create option (embedded store)", () => {
  it("creates a missing store, parents included, by default", async () => {
    const path = join(tempDir(), "a", "b");
    const db = await DB.open(path, { durability: "relaxed" });
    await db.transact((root) => root.set("k", 1));
    await db.close();
    expect(readdirSync(path)).toContain("data.mdb");
  });

  it("{ create: false } refuses a missing path, an empty directory and a path under /proc, creating nothing", async () => {
    const missing = join(tempDir(), "store");
    const err = await DB.open(missing, { create: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).code).toBe("not-found");
    expect((err as Error).message).toBe(`cannot open ${missing}: no amberdb store there (nothing exists at that path, and create is false)`);
    expect(existsSync(dirname(missing))).toBe(false);

    const empty = tempDir();
    mkdirSync(empty);
    await expect(DB.open(empty, { create: false })).rejects.toThrow(`cannot open ${empty}: it is an empty directory, not an amberdb store (and create is false)`);
    expect(readdirSync(empty)).toEqual([]);

    await expect(DB.open("/proc/amber-test-store", { create: false })).rejects.toThrow(/^cannot open \/proc\/amber-test-store: no amberdb store there/);
  });

  it("{ create: false } opens an existing store", async () => {
    const path = tempDir();
    const db = await DB.open(path, { durability: "relaxed" });
    await db.transact((root) => root.set("k", 1));
    await db.close();
    const again = await DB.open(path, { create: false });
    expect(again.open().root().get("k")).toBe(1);
    await again.close();
  });

  it("over a server with one store per name, { create: false } refuses a missing name and the server creates nothing", async () => {
    const dir = tempDir();
    mkdirSync(dir);
    const server = await startServer(join(dir, "{name}"), ["--durability", "relaxed"]);
    try {
      const err = await DB.open(`${server.url}/absent`, { create: false }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StorageError);
      expect((err as StorageError).code).toBe("not-found");
      expect((err as Error).message).toBe(
        `cannot open ${join(dir, "absent")}: no amberdb store there (nothing exists at that path, and create is false)`,
      );
      expect(readdirSync(dir)).toEqual([]);

      // By default the server creates it; then { create: false } finds it.
      const made = await DB.open(`${server.url}/present`);
      await made.transact((root) => root.set("k", 1));
      await made.close();
      expect(readdirSync(dir)).toEqual(["present"]);
      const again = await DB.open(`${server.url}/present`, { create: false });
      expect(again.open().root().get("k")).toBe(1);
      await again.close();
    } finally {
      await server.stop();
    }
  });

  it("over a server of memory stores, { create: false } refuses a name not opened yet, and finds one that is", async () => {
    const server = await startServer("memory:{name}");
    try {
      const err = await DB.open(`${server.url}/absent`, { create: false }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StorageError);
      expect((err as StorageError).code).toBe("not-found");
      expect((err as Error).message).toBe('this server has no database named "absent" yet (and create is false)');
      const made = await DB.open(`${server.url}/present`);
      await made.transact((root) => root.set("k", 1));
      const again = await DB.open(`${server.url}/present`, { create: false });
      expect(again.open().root().get("k")).toBe(1);
      await again.close();
      await made.close();
    } finally {
      await server.stop();
    }
  });
});
