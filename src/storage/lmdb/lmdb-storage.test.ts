/**
 * The embedded storage: the shared contract (durable and relaxed), then what only it has:
 * paths, several instances and processes on one store, and damaged data.
 */
import { execFile, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { open } from "lmdb";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { readEnvelope } from "../../codec/record.ts";
import { ConflictError, StorageError } from "../../errors.ts";
import { fakeRecord, labelOf, storageContract } from "../contract.ts";
import type { Oid, Tid } from "../storage.ts";
import { LmdbStorage } from "./lmdb-storage.ts";

const dirs: string[] = [];
/** A path that does not exist yet, inside a fresh temporary directory removed after the run. */
function tempPath(name = "store"): string {
  const dir = mkdtempSync(join(tmpdir(), "amber-lmdb-"));
  dirs.push(dir);
  return join(dir, name);
}
afterAll(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const vitest = { describe, it, expect, afterEach };
storageContract("lmdb", () => LmdbStorage.open(tempPath()), vitest, {
  reopen: (s) => LmdbStorage.open(s.url),
  openAgain: (s) => LmdbStorage.open(s.url),
});
storageContract("lmdb relaxed", () => LmdbStorage.open(tempPath(), { durability: "relaxed" }), vitest, {
  reopen: (s) => LmdbStorage.open(s.url, { durability: "relaxed" }),
  openAgain: (s) => LmdbStorage.open(s.url, { durability: "relaxed" }),
});

const create = (s: LmdbStorage, oid: Oid, label: string, serial: Tid = 0) =>
  s.finish({ records: [{ oid, serial, data: fakeRecord(label) }], readCurrent: [] });

async function failure(promise: Promise<unknown>): Promise<StorageError> {
  const err = await promise.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(StorageError);
  return err as StorageError;
}

describe("LmdbStorage paths", () => {
  it("creates a missing directory (even one named like a file) holding only LMDB's files", async () => {
    const path = join(tempPath("parent"), "nested", "shop.amber");
    const s = await LmdbStorage.open(path);
    await s.close();
    expect(readdirSync(path).sort()).toEqual(["data.mdb", "lock.mdb"]);
    const again = await LmdbStorage.open(path, { create: false });
    expect(await again.lastTid()).toBe(0);
    await again.close();
  });

  it("refuses a regular file, saying so", async () => {
    const path = tempPath("file.bin");
    writeFileSync(path, "twelve bytes");
    const err = await failure(LmdbStorage.open(path));
    expect(err.message).toBe(`${path} is not an amberdb store: it is a regular file of 12 bytes`);
    expect(err.code).toBe("not-a-store");
  });

  it("refuses a directory of other files, listing them, and writes nothing there", async () => {
    const path = tempPath("docs");
    mkdirSync(join(path, "bar"), { recursive: true });
    writeFileSync(join(path, "foo.txt"), "hello");
    const err = await failure(LmdbStorage.open(path));
    expect(err.message).toBe(`${path} is not an amberdb store: it is a directory that contains bar, foo.txt and no data.mdb`);
    expect(readdirSync(path).sort()).toEqual(["bar", "foo.txt"]);
  });

  it("refuses an LMDB environment without the amberdb marker", async () => {
    const path = tempPath("other-lmdb");
    const foreign = open(path, { noSubdir: false });
    await foreign.put("someone", "else");
    await foreign.close();
    const err = await failure(LmdbStorage.open(path));
    expect(err.message).toBe(`${path} is not an amberdb store: it holds an LMDB environment without the amberdb marker`);
  });

  it("completes a store whose creation was interrupted (an empty environment)", async () => {
    const path = tempPath("interrupted");
    const empty = open(path, { noSubdir: false });
    empty.openDB("meta", { encoding: "binary" }); // created before the marker, as LmdbStorage does
    await empty.close();
    const s = await LmdbStorage.open(path);
    expect(await s.lastTid()).toBe(0);
    expect(await create(s, 1, "x")).toBeGreaterThan(0);
    await s.close();
  });

  it("with create: false, refuses a missing path or an empty directory and creates nothing", async () => {
    const missing = tempPath("missing");
    const err = await failure(LmdbStorage.open(missing, { create: false }));
    expect(err.message).toContain(missing);
    expect(err.message).toContain("nothing exists at that path");
    expect(err.code).toBe("not-found");
    expect(existsSync(missing)).toBe(false);
    mkdirSync(missing);
    expect((await failure(LmdbStorage.open(missing, { create: false }))).message).toContain("empty directory");
    expect(readdirSync(missing)).toEqual([]);
  });

  it("opens read-only: loads work, writes raise StorageError 'read-only'", async () => {
    const path = tempPath();
    const w = await LmdbStorage.open(path);
    const tid = await create(w, 1, "x");
    const r = await LmdbStorage.open(path, { readOnly: true });
    expect(labelOf((await r.load([1], tid))[0])).toBe("x");
    expect((await failure(create(r, 2, "y"))).code).toBe("read-only");
    expect((await failure(r.newOids(1))).code).toBe("read-only");
    const t2 = await create(w, 1, "x2", tid);
    expect(await r.lastTid()).toBe(t2);
    await r.close();
    await w.close();
    expect((await failure(LmdbStorage.open(tempPath(), { readOnly: true }))).code).toBe("not-found");
  });

  it("rejects bad options", async () => {
    await expect(LmdbStorage.open("")).rejects.toThrow(TypeError);
    await expect(LmdbStorage.open(tempPath(), { durability: "fast" as "relaxed" })).rejects.toThrow(/durability/);
  });
});

describe("several LmdbStorage instances on one store in one process", () => {
  it("each sees the other's commit at once, even inside one event-loop turn, and conflicts", async () => {
    const path = tempPath();
    const a = await LmdbStorage.open(path);
    const b = await LmdbStorage.open(path);
    const t1 = await create(a, 1, "a1");
    expect(await b.lastTid()).toBe(t1);
    expect(labelOf(b.loadSync([1], t1)[0])).toBe("a1"); // b now reads through a cached snapshot
    const t2 = await create(a, 1, "a2", t1); // no macrotask in between: b's snapshot is stale
    expect(b.changesSinceSync(t1)).toEqual({ tid: t2, oids: [1] });
    expect(labelOf(b.loadSync([1], t2)[0])).toBe("a2");
    expect(await b.vote({ records: [{ oid: 1, serial: t1, data: fakeRecord("b") }], readCurrent: [] })).toMatchObject([
      { oid: 1, readSerial: t1, committedSerial: t2 },
    ]);
    const err = await create(b, 1, "b", t1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConflictError);
    expect((err as ConflictError).classNames).toEqual(["T"]);
    const t3 = await create(b, 1, "b", t2);
    expect(a.changesSinceSync(t2)).toEqual({ tid: t3, oids: [1] });
    await a.close();
    await b.close();
  });

  it("never hands out one oid twice", async () => {
    const path = tempPath();
    const a = await LmdbStorage.open(path);
    const b = await LmdbStorage.open(path);
    const all: Oid[] = [];
    for (let i = 0; i < 6; i++) all.push(...a.newOidsSync(700), ...b.newOidsSync(300), ...(await a.newOids(1)));
    expect(new Set(all).size).toBe(all.length);
    await a.close();
    expect((await b.newOids(2)).every((oid) => !all.includes(oid))).toBe(true);
    await b.close();
  });
});

describe("another process on the same store", () => {
  const fixture = join(import.meta.dirname, "../../../test/fixtures/lmdb-commit.ts");
  const args = (path: string, oid: Oid, serial: Tid, label: string) =>
    ["--import", "tsx", fixture, path, "commit", String(oid), String(serial), label];
  const run = promisify(execFile);
  const parse = (stdout: string) => JSON.parse(stdout) as { tid: Tid; oids: Oid[] };

  it("a commit by another process is seen at once (same event-loop turn) and conflicts with this one", async () => {
    const path = tempPath();
    const s = await LmdbStorage.open(path);
    const mine = s.newOidsSync(2);
    const t1 = await create(s, mine[0]!, "parent");
    expect(labelOf(s.loadSync([mine[0]!], t1)[0])).toBe("parent"); // pins lmdb-js's read snapshot
    // spawnSync blocks this event loop, so no lmdb-js read-transaction renewal can run.
    const child = spawnSync(process.execPath, args(path, mine[0]!, t1, "child"), { encoding: "utf8" });
    expect(child.stderr).toBe("");
    const { tid: t2, oids: childOids } = parse(child.stdout);
    expect(t2).toBeGreaterThan(t1);
    expect(s.changesSinceSync(t1)).toEqual({ tid: t2, oids: [mine[0]] });
    expect(labelOf(s.loadSync([mine[0]!], t2)[0])).toBe("child");
    const err = await create(s, mine[0]!, "parent again", t1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConflictError);
    expect((err as ConflictError).serials).toEqual([{ oid: mine[0], read: t1, committed: t2 }]);
    const later = await s.newOids(2000);
    for (const oid of [...mine, ...later]) expect(childOids).not.toContain(oid);
    await s.close();
  });

  it("concurrent committers in two processes: exactly one of two conflicting commits wins", async () => {
    const path = tempPath();
    const s = await LmdbStorage.open(path);
    const t1 = await create(s, 1, "start");
    const children = await Promise.allSettled(
      ["p", "q", "r"].map((label) => run(process.execPath, args(path, 1, t1, label)).then((r) => parse(r.stdout))),
    );
    const won = children.filter((c) => c.status === "fulfilled");
    expect(won).toHaveLength(1);
    const rejected = children.filter((c): c is PromiseRejectedResult => c.status === "rejected");
    for (const r of rejected) expect(String((r.reason as { stderr?: string }).stderr)).toContain("ConflictError");
    const t2 = (won[0] as PromiseFulfilledResult<{ tid: Tid }>).value.tid;
    expect(await s.changesSince(t1)).toEqual({ tid: t2, oids: [1] });
    expect((await s.history(1)).map((r) => r.serial)).toEqual([t2, t1]);
    await s.close();
  }, 60_000);

  it("loses no update when three processes and this one increment one object concurrently", async () => {
    const path = tempPath();
    const s = await LmdbStorage.open(path);
    await create(s, 1, "0");
    const increments = 40;
    const children = [0, 1, 2].map(() =>
      run(process.execPath, ["--import", "tsx", fixture, path, "increment", "1", String(increments)]),
    );
    // A handler at once: a child failing while this process still commits must not be an
    // unhandled rejection (Promise.all below still rejects with its error).
    for (const child of children) child.catch(() => undefined);
    for (let i = 0; i < increments; ) {
      const [record] = s.loadSync([1], await s.lastTid());
      const n = Number(labelOf(record));
      try {
        await create(s, 1, String(n + 1), record!.serial);
        i++;
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    await Promise.all(children);
    const last = await s.lastTid();
    expect(labelOf((await s.load([1], last))[0])).toBe(String(4 * increments));
    expect(await s.history(1)).toHaveLength(4 * increments + 1);
    await s.close();
  }, 120_000);
});

describe("records of 16 MiB and more (lmdb-js hands them out as views of the map, not Buffers)", () => {
  it("load, loadOneSync, history, loadBefore, conflicts and undo all read them", async () => {
    const s = await LmdbStorage.open(tempPath());
    const [big] = s.newOidsSync(1);
    const label = (c: string) => c.repeat(17 << 20);
    const t1 = await s.finish({ records: [{ oid: big!, serial: 0, data: fakeRecord(label("a")) }], readCurrent: [] });
    const t2 = await s.finish({ records: [{ oid: big!, serial: t1, data: fakeRecord(label("b")) }], readCurrent: [] });
    const first = (r: { data: Uint8Array } | null | undefined) => (r ? labelOf({ oid: big!, serial: 0, data: r.data })!.slice(0, 3) : null);
    expect(first((await s.load([big!], t2))[0])).toBe("bbb");
    expect(first((await s.load([big!], t1))[0])).toBe("aaa");
    expect(first(s.loadOneSync(big!, t2, true))).toBe("bbb");
    expect(first(s.loadOneSync(big!, t2, false))).toBe("bbb");
    expect((await s.history(big!)).map((r) => [r.serial, first(r)])).toEqual([[t2, "bbb"], [t1, "aaa"]]);
    expect(first(await s.loadBefore(big!, t2))).toBe("aaa");
    const [conflict] = await s.vote({ records: [{ oid: big!, serial: t1, data: fakeRecord("x") }], readCurrent: [] });
    expect([conflict!.committedSerial, first({ data: conflict!.committedData! })]).toEqual([t2, "bbb"]);
    const u = await s.undo(t2);
    expect(first((await s.load([big!], u))[0])).toBe("aaa");
    await s.close();
  }, 60_000);
});

describe("lending (loadOneSync with borrow)", () => {
  it("a lent record too big for lmdb-js's read buffer (a view of the map) does not change when others rewrite it", async () => {
    const path = tempPath();
    const s = await LmdbStorage.open(path);
    const other = await LmdbStorage.open(path);
    const [big] = s.newOidsSync(1);
    const huge = (c: string) => fakeRecord(c.repeat(17 << 20)); // lmdb-js maps values of 16 MiB and more
    let tid = await s.finish({ records: [{ oid: big!, serial: 0, data: huge("a") }], readCurrent: [] });
    const lent = s.loadOneSync(big!, tid, true)!;
    const copy = Buffer.from(lent.data);
    // lmdb-js lets its read snapshot go on a timer; then rewrites may reuse the pages.
    await new Promise((resolve) => setTimeout(resolve, 20));
    for (const c of ["b", "c", "d"]) {
      tid = await other.finish({ records: [{ oid: big!, serial: tid, data: huge(c) }], readCurrent: [] });
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    expect(Buffer.compare(Buffer.from(lent.data), copy)).toBe(0); // not toEqual: a 17 MiB diff
    await other.close();
    await s.close();
  }, 60_000);
});

describe("damaged data", () => {
  /**
   * Rewrite object `oid`'s stored value behind the storage's back, with it closed: open the
   * store directory with the raw lmdb package (`noSubdir: false`), its named database
   * "current" with binary values (keys are oids, values an 8-byte serial then the record
   * envelope: see layout.ts), and put changed bytes under the oid.
   */
  async function tamper(path: string, oid: Oid, change: (stored: Buffer) => Buffer): Promise<void> {
    const raw = open(path, { noSubdir: false });
    const current = raw.openDB<Buffer, Oid>("current", { encoding: "binary" });
    current.putSync(oid, change(Buffer.from(current.getBinary(oid)!)));
    await raw.close();
  }

  it("a flipped byte in a record fails its checksum: StorageError naming the oid", async () => {
    const path = tempPath();
    let s = await LmdbStorage.open(path);
    const tid = await create(s, 7, "precious");
    await s.close();
    await tamper(path, 7, (stored) => {
      stored[stored.length - 2]! ^= 0x20; // inside the state bytes, after the 8-byte serial prefix
      return stored;
    });
    s = await LmdbStorage.open(path);
    const [record] = await s.load([7], tid);
    expect(record!.serial).toBe(tid);
    let err: unknown;
    try {
      readEnvelope(record!.data, 7);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).oid).toBe(7);
    expect((err as StorageError).message).toMatch(/object 7 is damaged: checksum mismatch/);
    await s.close();
  });

  it("unreadable framing (truncated value, zero serial) raises StorageError naming the oid", async () => {
    const path = tempPath();
    let s = await LmdbStorage.open(path);
    const tid = await create(s, 3, "a");
    await create(s, 4, "b");
    await s.close();
    await tamper(path, 3, () => Buffer.from([1, 2, 3]));
    await tamper(path, 4, (stored) => stored.fill(0, 0, 8));
    s = await LmdbStorage.open(path);
    const short = await failure(s.load([3], tid));
    expect(short).toMatchObject({ oid: 3, code: "corrupt" });
    expect(short.message).toBe("record of object 3 is damaged: 3 bytes, shorter than its 8-byte serial");
    expect(() => s.loadSync([1, 4], tid)).toThrow(/object 4 is damaged: serial 0 is not a valid tid/);
    expect((await failure(s.history(4))).oid).toBe(4);
    expect((await failure(s.vote({ records: [{ oid: 3, serial: tid, data: fakeRecord("c") }], readCurrent: [] }))).oid).toBe(3);
    await s.close();
  });
});
