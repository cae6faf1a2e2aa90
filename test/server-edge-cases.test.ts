/**
 * The storage server and its client at their edges: timeouts and reconnection, a server
 * that comes back with another database, prefetch and loadClosure spanning abort(), frame
 * size limits, database names, and the memory a reply frame pins. Each test pins a bug found
 * in a review of the server (src/storage/server/*, closure.ts, Connection.prefetch and
 * loadClosure), fixed since.
 *
 * Real `amber serve` processes only (test/server-process.ts); every resource is released
 * in afterEach.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { AmberError, DB, Persistent, StorageError, persistent } from "../src/index.ts";
import { metaOf } from "../src/persistent/persistent.ts";
import { ClientStorage } from "../src/storage/server/client-storage.ts";
import { Cmd, FrameWriter, HEADER, PROTOCOL_VERSION, Reply } from "../src/storage/server/protocol.ts";
import { startServer, type ServerProcess } from "./server-process.ts";
import { sleep, until, within } from "./helpers.ts";

@persistent("serverEdge.Box")
class Box extends Persistent {
  value = 0;
  blob = "";
  constructor(value = 0, blob = "") {
    super();
    this.value = value;
    this.blob = blob;
  }
}

@persistent("serverEdge.Tagged")
class Tagged extends Persistent {
  tags: string[] = ["a"];
}

const servers: ServerProcess[] = [];
const dbs: DB[] = [];
const storages: ClientStorage[] = [];
const sockets: Socket[] = [];
const dirs: string[] = [];

afterEach(async () => {
  for (const s of servers) if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill("SIGCONT");
  for (const s of sockets.splice(0)) s.destroy();
  for (const db of dbs.splice(0)) await db.close().catch(() => undefined);
  for (const s of storages.splice(0)) await s.close().catch(() => undefined);
  for (const s of servers.splice(0)) await s.stop();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), "amber-server-edge-"));
  dirs.push(d);
  return d;
}

async function serve(storage: string, args: string[] = [], port = 0): Promise<ServerProcess> {
  const s = await startServer(storage, args, port);
  servers.push(s);
  return s;
}

async function client(url: string, options: Parameters<typeof DB.open>[1] = {}): Promise<DB> {
  const db = await DB.open(url, options);
  dbs.push(db);
  return db;
}

const outcome = <T>(p: Promise<T>): Promise<{ ok: T } | { err: unknown }> => p.then((ok) => ({ ok }), (err: unknown) => ({ err }));

// --- a bare protocol socket -----------------------------------------------------------------

function frame(id: number, kind: number, write?: (w: FrameWriter) => void): Buffer {
  const w = new FrameWriter(id, kind);
  write?.(w);
  return Buffer.from(w.finish());
}

async function rawHello(port: number, database: string): Promise<{ kind: number; closed: boolean }> {
  const s = await new Promise<Socket>((resolve, reject) => {
    const sock = netConnect({ host: "127.0.0.1", port });
    sockets.push(sock);
    sock.once("error", reject);
    sock.once("connect", () => resolve(sock));
  });
  const data: Buffer[] = [];
  let closed = false;
  s.on("data", (d: Buffer) => data.push(d));
  s.on("error", () => undefined);
  s.once("close", () => (closed = true));
  s.write(frame(1, Cmd.HELLO, (w) => w.msgpack({ version: PROTOCOL_VERSION, database })));
  await until(() => Buffer.concat(data).length >= HEADER || closed, "a reply to HELLO");
  const all = Buffer.concat(data);
  return { kind: all.length >= HEADER ? all[8]! : -1, closed };
}

// ==========================================================================================

describe("storage server and client: edge cases", () => {
  it("an async request to a server that stopped answering times out (requestTimeoutMs)", async () => {
    const server = await serve("memory:");
    const storage = await ClientStorage.open(server.url, { requestTimeoutMs: 300 });
    storages.push(storage);
    await storage.lastTid();
    server.child.kill("SIGSTOP");
    const r = await outcome(within(storage.load([0], 0), 4000, "storage.load() with requestTimeoutMs 300"));
    expect("err" in r && r.err).toBeInstanceOf(StorageError);
    expect(String("err" in r ? r.err : r.ok)).not.toMatch(/HANG/);
  }, 30_000);

  it("after a synchronous request timed out, the next call reconnects (server answering again)", async () => {
    const server = await serve("memory:");
    const storage = await ClientStorage.open(server.url, { requestTimeoutMs: 300 });
    storages.push(storage);
    await storage.lastTid();
    server.child.kill("SIGSTOP");
    expect(() => storage.loadSync([0], 0)).toThrow(/no answer .* within 300 ms/);
    server.child.kill("SIGCONT");
    const r = await outcome(within(storage.lastTid(), 5000, "lastTid() after the timeout"));
    expect("err" in r ? String(r.err) : "ok").toBe("ok");
  }, 30_000);

  it("DB.open against a server that accepts TCP but never answers HELLO gives up", async () => {
    const server = await serve("memory:");
    server.child.kill("SIGSTOP");
    const opening = DB.open(server.url, { connectTimeoutMs: 300, requestTimeoutMs: 300 });
    const r = await outcome(within(opening, 4000, "DB.open() with connect/request timeouts of 300 ms"));
    if ("ok" in r) dbs.push(r.ok);
    else {
      // Let the hung open finish after the test so its worker does not leak.
      void opening.then((db) => dbs.push(db), () => undefined);
    }
    expect(String("err" in r ? r.err : "opened")).not.toMatch(/HANG/);
    expect("err" in r && r.err).toBeInstanceOf(StorageError);
  }, 30_000);

  it("close() while a call is reconnecting settles that call", async () => {
    const server = await serve("memory:");
    const storage = await ClientStorage.open(server.url);
    storages.push(storage);
    await storage.lastTid();
    const session = storage.session;
    await server.kill();
    await until(() => storage.session !== session, "the client noticing the server is gone");
    // reconnecting: waits for the worker's answer. The handler is attached before close(), which
    // may reject the call while it runs (a rejection with no handler yet is reported as unhandled).
    const call = outcome(within(storage.lastTid(), 3000, "lastTid() pending across close()"));
    await storage.close();
    const r = await call;
    expect(String("err" in r ? r.err : r.ok)).not.toMatch(/HANG/);
    expect("err" in r && (r.err as StorageError).code).toBe("closed");
  }, 30_000);

  it("after the server comes back with a different database, every connection drops the old database's objects", async () => {
    const dir2 = join(tempDir(), "db2");
    // The other database: made first, so its tids are smaller (tids come from the clock).
    {
      const s0 = await serve(dir2, ["--durability", "relaxed"]);
      const db0 = await client(s0.url);
      await db0.transact((root) => {
        root.set("x", 2);
      });
      await db0.close();
      await s0.stop();
    }
    await sleep(5);
    const s1 = await serve(join(tempDir(), "db1"), ["--durability", "relaxed"]);
    const db = await client(s1.url);
    await db.transact((root) => {
      root.set("x", 1);
    });
    const a = db.open({ cacheSize: 1000 });
    const b = db.open({ cacheSize: 1000 });
    expect(a.root().get("x")).toBe(1);
    expect(b.root().get("x")).toBe(1);
    const storage = db.storage as ClientStorage;
    const session = storage.session;
    await s1.stop();
    await until(() => storage.session !== session, "the client noticing the server is gone");
    await serve(dir2, ["--durability", "relaxed"], s1.port);

    // The client refuses to go on with a different database at the same address (its
    // objects, cache and tids belong to the old one): every connection drops what it held
    // and reads fail with a clear error instead of showing the old database's values.
    a.abort(); // tries to reconnect: a different storageId
    expect(() => a.root().get("x")).toThrow(expect.objectContaining({ code: "database-changed" }));
    b.abort();
    expect(() => b.root().get("x"), "b must not show the old database's root").toThrow(expect.objectContaining({ code: "database-changed" }));
    const fresh = await client(s1.url);
    expect(fresh.open({ cacheSize: 10 }).root().get("x"), "a new DB.open sees the new database").toBe(2);
  }, 60_000);

  it("a prefetch that spans abort() does not install the old snapshot's records into the new transaction", async () => {
    const server = await serve("memory:");
    const db = await client(server.url);
    await db.transact((root) => {
      root.set("box", new Box(1));
    });
    const conn = db.open({ cacheSize: 1000 });
    const box = conn.root().get("box") as Box; // a ghost, at the snapshot where value = 1
    const other = await client(server.url);
    await other.transact((root) => {
      (root.get("box") as Box).value = 2;
    });
    const pending = conn.prefetch([box]); // asks for box at the old snapshot
    conn.abort(); // new snapshot: box.value is 2 there
    await pending;
    expect(box.value, "the new transaction reads box at its own snapshot").toBe(2);
  }, 30_000);

  // Same defect through loadClosure (connection.ts loadClosure()).
  it("a loadClosure that spans abort() does not install the old snapshot's records into the new transaction", async () => {
    const server = await serve("memory:");
    const db = await client(server.url);
    await db.transact((root) => {
      root.set("box", new Box(1));
    });
    const conn = db.open({ cacheSize: 1000 });
    const box = conn.root().get("box") as Box;
    const other = await client(server.url);
    await other.transact((root) => {
      (root.get("box") as Box).value = 2;
    });
    const pending = conn.loadClosure(box);
    conn.abort();
    await pending;
    expect(box.value, "the new transaction reads box at its own snapshot").toBe(2);
  }, 30_000);

  it("loadClosure works on a server started with a small --max-frame", async () => {
    const server = await serve("memory:", ["--max-frame", "65536"]);
    const db = await client(server.url);
    await db.transact((root) => {
      for (let i = 0; i < 5; i++) root.set(`b${i}`, new Box(i));
    });
    const conn = db.open({ cacheSize: 1000 });
    const r = await outcome(conn.loadClosure(conn.root()));
    expect("err" in r ? String(r.err) : "ok").toBe("ok");
  }, 30_000);

  it("a request larger than the server's max frame fails cleanly, without dropping the connection for everyone", async () => {
    const server = await serve("memory:", ["--max-frame", "65536"]);
    const db = await client(server.url);
    await db.transact((root) => {
      root.set("small", new Box(1));
    });
    const bystander = db.open({ cacheSize: 1000 });
    expect((bystander.root().get("small") as Box).value).toBe(1);
    const storage = db.storage as ClientStorage;
    const session = storage.session;
    const r = await outcome(
      db.transact(
        (root) => {
          root.set("big", new Box(2, "x".repeat(100_000)));
        },
        { retries: 1 },
      ),
    );
    expect("err" in r).toBe(true);
    const err = (r as { err: unknown }).err;
    expect(err instanceof AmberError ? err.code : String(err), String(err)).not.toMatch(/disconnected|commit-unknown/);
    expect(storage.session, "the oversized request did not cost every connection its session").toBe(session);
  }, 30_000);

  it("the database names '.' and '..' are refused in {name} mode", async () => {
    const base = tempDir();
    const stores = join(base, "stores");
    mkdirSync(stores);
    const server = await serve(join(stores, "{name}"), ["--durability", "relaxed"]);
    const dot = await rawHello(server.port, ".");
    expect(dot.kind, "HELLO for database '.' is refused").toBe(Reply.ERROR);
    expect(existsSync(join(stores, "data.mdb")), "no store was created in the stores directory itself").toBe(false);
  }, 30_000);

  it("prefetch: a small loaded object does not pin the whole reply frame in memory", async () => {
    const server = await serve("memory:");
    const db = await client(server.url, { clientCacheBytes: 0 });
    const blob = "x".repeat(1_000_000);
    await db.transact((root) => {
      for (let i = 0; i < 20; i++) root.set(`big${i}`, new Box(i, blob));
      root.set("small", new Tagged());
    });
    // A small object cache: while the prefetch installs, the big (flat) objects are evicted again.
    const conn = db.open({ cacheSize: 3 });
    const root = conn.root();
    const bigs = Array.from({ length: 20 }, (_, i) => root.get(`big${i}`) as Box);
    const small = root.get("small") as Tagged;
    expect(await conn.prefetch([...bigs, small])).toBe(21);
    expect(small.tags).toEqual(["a"]);
    const info = conn.cacheInfo;
    expect(info.loaded, "only a few objects stay loaded").toBeLessThanOrEqual(4);
    expect(info.bytes, "the connection accounts for about one big record").toBeLessThan(3_000_000);
    // What `small` keeps to compare its nested array at commit: its state bytes, as a view
    // into the ~20 MB reply frame of the whole prefetch (white-box: the Meta is internal).
    const kept = metaOf(small).bytes;
    expect(kept).not.toBeNull();
    expect(kept!.length).toBeLessThan(200);
    expect(kept!.buffer.byteLength, `memory pinned by a ${kept!.length}-byte state (the connection accounts for ${info.bytes} bytes in all)`).toBeLessThan(1_000_000);
    expect(bigs.length).toBe(20); // keep the ghosts referenced until here
  }, 60_000);
});
