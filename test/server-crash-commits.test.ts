/**
 * A commit whose server dies under it is never lost and never applied twice. Each commit
 * carries a unique id (in its transaction metadata, kept by the store); after the
 * connection is lost the client reconnects and asks the server what became of it, and
 * `finish` returns the tid when it happened or fails with the retryable "disconnected"
 * when it did not, which `db.transact` runs again.
 *
 * Real processes: a server that kills itself just before or just after writing a chosen
 * commit (test/fixtures/crashing-server.ts), a server paused (SIGSTOP) and killed
 * (SIGKILL) while clients commit, each restarted on the same port over the same store;
 * and raw protocol sockets for the server's side of the rule (a repeated id commits once,
 * an id declared lost never commits).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { AmberError, DB, PersistentList } from "../src/index.ts";
import type { CommitRequest } from "../src/storage/storage.ts";
import { Cmd, COMMIT_ID_KEY, CommitOutcome, FrameReader, FrameWriter, HEADER, PROTOCOL_VERSION, Reply } from "../src/storage/server/protocol.ts";
import { sleep, until, within } from "./helpers.ts";
import { Tally } from "./model.ts";
import { startServer, type ServerProcess } from "./server-process.ts";

const REPO = fileURLToPath(new URL("..", import.meta.url));
const CRASHING = fileURLToPath(new URL("./fixtures/crashing-server.ts", import.meta.url));

const dirs: string[] = [];
const dbs: DB[] = [];
const servers: ServerProcess[] = [];
const children: ChildProcess[] = [];
const sockets: Socket[] = [];

afterEach(async () => {
  for (const s of servers) if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill("SIGCONT");
  for (const s of sockets.splice(0)) s.destroy();
  for (const db of dbs.splice(0)) await db.close().catch(() => undefined);
  for (const s of servers.splice(0)) await s.stop();
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function storeDir(): string {
  const d = mkdtempSync(join(tmpdir(), "amber-crash-commits-"));
  dirs.push(d);
  return join(d, "db");
}

async function serve(store: string, port = 0): Promise<ServerProcess> {
  const s = await startServer(store, [], port);
  servers.push(s);
  return s;
}

/**
 * A server that SIGKILLs itself before or after writing the first commit after `arm()`;
 * resolves once it listens.
 */
async function crashingServer(store: string, phase: "before" | "after") {
  const child = spawn(process.execPath, ["--import", "tsx", CRASHING, store, "0", phase], { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let stderr = "";
  let out = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
  const exited = new Promise<string | null>((resolve) => child.once("exit", (code, signal) => resolve(signal ?? String(code))));
  const url = await Promise.race([
    until(() => /listening on amber:\/\/\S+/.test(out), "the crashing server to listen", 30_000).then(() => /listening on (amber:\/\/\S+)/.exec(out)![1]!),
    exited.then((code): string => {
      throw new Error(`the crashing server exited (${code}) before listening: ${stderr}`);
    }),
  ]);
  const arm = async (): Promise<void> => {
    child.kill("SIGUSR2");
    await until(() => /^armed$/m.test(out), "the crashing server to arm", 10_000);
  };
  return { url, port: Number(new URL(url).port), exited, arm };
}

async function client(url: string): Promise<DB> {
  // Generous recovery: a restart of the server (a new Node process) takes a second or two.
  const db = await DB.open(url, { commitRecoveryMs: 30_000 });
  dbs.push(db);
  return db;
}

/** Add `id` to root.log and count it in root.n, in one db.transact; returns the attempts it took. */
async function record(db: DB, id: string, key = ""): Promise<number> {
  let attempts = 0;
  await db.transact(
    (root) => {
      attempts++;
      (root.get(`log${key}`) as PersistentList<string>).push(id);
      (root.get(`n${key}`) as Tally).n++;
    },
    { retries: 50, backoffMs: 20 },
  );
  return attempts;
}

async function setup(db: DB, keys: string[] = [""]): Promise<void> {
  await db.transact((root) => {
    for (const k of keys) {
      root.set(`log${k}`, new PersistentList<string>());
      root.set(`n${k}`, new Tally());
    }
  });
}

/** What the store holds, read by a fresh client: the log and the count. */
async function stored(url: string, key = ""): Promise<{ log: string[]; n: number }> {
  const db = await client(url);
  return db.transact((root) => ({ log: (root.get(`log${key}`) as PersistentList<string>).toArray(), n: (root.get(`n${key}`) as Tally).n }));
}

describe("a commit whose server dies under it (real processes)", () => {
  for (const phase of ["after", "before"] as const) {
    it(`the server dies ${phase} writing the commit: after a restart the commit is there exactly once`, async () => {
      const store = storeDir();
      const crashing = await crashingServer(store, phase);
      const db = await client(crashing.url);
      await setup(db);
      expect(await record(db, "first")).toBe(1);
      await crashing.arm(); // the next commit kills the server
      const second = record(db, "second");
      second.catch(() => undefined);
      expect(await within(crashing.exited, 20_000, "the server killing itself")).toBe("SIGKILL");
      await sleep(200); // the client is now trying to reach the server again
      const restarted = await serve(store, crashing.port);
      const attempts = await within(second, 40_000, "the commit in flight when the server died");
      // After writing: the server says it happened, finish returns its tid (one attempt).
      // Before writing: it says it did not; db.transact runs the transaction again.
      expect(attempts).toBe(phase === "after" ? 1 : 2);
      expect(await record(db, "third")).toBe(1);
      expect(await stored(restarted.url)).toEqual({ log: ["first", "second", "third"], n: 3 });
      expect(restarted.log()).not.toMatch(/ProtocolError/);
    }, 90_000);
  }

  it("SIGSTOP and SIGKILL while three clients commit, again and again: every commit is applied exactly once", async () => {
    const store = storeDir();
    const CLIENTS = 3;
    const KILLS = 4;
    const keys = Array.from({ length: CLIENTS }, (_, i) => String(i));
    let server = await serve(store);
    const port = server.port;
    const url = server.url;
    await setup(await client(url), keys);
    const dbsOf = await Promise.all(keys.map(() => client(url)));
    let stop = false;
    const results = keys.map(() => ({ acked: [] as string[], failed: [] as Array<{ id: string; code: string }> }));
    const loops = dbsOf.map(async (db, i) => {
      for (let seq = 1; !stop; seq++) {
        const id = `c${i}-${seq}`;
        try {
          await record(db, id, keys[i]);
          results[i]!.acked.push(id);
        } catch (err) {
          results[i]!.failed.push({ id, code: err instanceof AmberError ? err.code : String(err) });
          await sleep(50);
        }
      }
    });
    for (const loop of loops) loop.catch(() => undefined);
    const total = () => results.reduce((n, r) => n + r.acked.length, 0);
    for (let k = 0; k < KILLS; k++) {
      const before = total();
      await until(() => total() >= before + 10, "the clients to commit again", 40_000);
      await sleep(Math.random() * 30);
      // Paused, commits pile up in flight (some received, some not); then killed. By another
      // process: this one may be blocked meanwhile in a synchronous load from the paused server.
      const pause = (20 + Math.random() * 30) / 1000;
      spawn("/bin/sh", ["-c", `kill -STOP ${server.child.pid}; sleep ${pause.toFixed(3)}; kill -KILL ${server.child.pid}`], { stdio: "ignore" });
      await within(server.kill(), 20_000, "the server's death");
      servers.splice(servers.indexOf(server), 1);
      await sleep(Math.random() * 300);
      server = await serve(store, port);
    }
    const before = total();
    await until(() => total() >= before + 10, "the clients to commit after the last restart", 40_000);
    stop = true;
    await within(Promise.all(loops), 60_000, "the clients' last commits");

    for (const [i, r] of results.entries()) {
      const { log, n } = await stored(url, keys[i]);
      const context = `client ${i}: ${r.acked.length} acknowledged, failures ${JSON.stringify(r.failed)}`;
      // Only failures that say nothing was committed (never "commit-unknown").
      expect(r.failed.filter((f) => f.code !== "disconnected"), context).toEqual([]);
      // Exactly the acknowledged commits, each once, in order; nothing of a failed one.
      expect(log, context).toEqual(r.acked);
      expect(n, context).toBe(r.acked.length);
    }
  }, 180_000);
});

// --- the server's side, over raw sockets -----------------------------------------------------

class Raw {
  #data: Buffer[] = [];
  closed = false;
  private constructor(readonly socket: Socket) {
    socket.on("data", (d: Buffer) => this.#data.push(d));
    socket.on("error", () => undefined);
    socket.once("close", () => (this.closed = true));
  }

  static async open(port: number): Promise<Raw> {
    const s = await new Promise<Socket>((resolve, reject) => {
      const sock = netConnect({ host: "127.0.0.1", port });
      sockets.push(sock);
      sock.once("error", reject);
      sock.once("connect", () => resolve(sock));
    });
    const raw = new Raw(s);
    raw.send(1, Cmd.HELLO, (w) => w.msgpack({ version: PROTOCOL_VERSION, database: "" }));
    expect((await raw.reply(1)).kind).toBe(Reply.OK);
    return raw;
  }

  send(id: number, kind: number, write?: (w: FrameWriter) => void): void {
    const w = new FrameWriter(id, kind);
    write?.(w);
    this.socket.write(Buffer.from(w.finish()));
  }

  async reply(id: number): Promise<FrameReader> {
    const find = () => {
      const all = Buffer.concat(this.#data);
      for (let pos = 0; pos + HEADER <= all.length; ) {
        const len = all.readUInt32BE(pos);
        if (pos + 4 + len > all.length) break;
        if (all.readUInt32BE(pos + 4) === id) return new FrameReader(all.subarray(pos, pos + 4 + len));
        pos += 4 + len;
      }
      return undefined;
    };
    await until(() => find() !== undefined || this.closed, `the reply to request ${id}`);
    const r = find();
    if (r === undefined) throw new Error(`the connection closed without a reply to request ${id}`);
    return r;
  }
}

describe("commit ids at the server (raw protocol)", () => {
  it("a commit id committed once is never committed again; an id declared lost never commits", async () => {
    const server = await serve(storeDir());
    const db = await client(server.url);
    await setup(db);
    const storage = db.storage;
    const at = await storage.lastTid();

    // A request that rewrites the root with its own bytes: harmless, and visible as a transaction.
    const rewrite = async (id: string): Promise<CommitRequest> => {
      const now = await storage.lastTid();
      const [root] = await storage.load([0], now);
      return { records: [{ oid: 0, serial: root!.serial, data: root!.data }], readCurrent: [], meta: { [COMMIT_ID_KEY]: id, note: "raw" } };
    };
    const a = await Raw.open(server.port);
    const b = await Raw.open(server.port);

    // The same COMMIT twice (a late duplicate): one transaction, the same tid both times.
    const once = await rewrite("raw/once");
    a.send(2, Cmd.COMMIT, (w) => w.request(once));
    const first = await a.reply(2);
    expect(first.kind).toBe(Reply.OK);
    const tid = first.id53("tid");
    b.send(2, Cmd.COMMIT, (w) => w.request(once));
    const again = await b.reply(2);
    expect(again.kind, "the repeated commit is answered, not refused").toBe(Reply.OK);
    expect(again.id53("tid")).toBe(tid);
    const txns = await storage.transactions(tid - 1);
    expect(txns.map((t) => t.tid)).toEqual([tid]);
    expect(txns[0]!.meta, "the commit id is the protocol's: not shown").toEqual({ note: "raw" });
    b.send(3, Cmd.COMMIT_STATUS, (w) => w.msgpack("raw/once").num(at));
    const status = await b.reply(3);
    expect([status.u8(), status.id53("tid")]).toEqual([CommitOutcome.COMMITTED, tid]);

    // A vote whose FINISH comes only after another connection was told it did not happen.
    const lost = await rewrite("raw/lost");
    a.send(4, Cmd.VOTE, (w) => w.u32(9).request(lost));
    expect((await a.reply(4)).u32(), "no conflicts").toBe(0);
    const before = await storage.lastTid();
    b.send(5, Cmd.COMMIT_STATUS, (w) => w.msgpack("raw/lost").num(before));
    const answer = await b.reply(5);
    expect([answer.u8(), answer.id53("tid")]).toEqual([CommitOutcome.NOT_COMMITTED, 0]);
    a.send(6, Cmd.FINISH, (w) => w.u32(9));
    const refused = await a.reply(6);
    expect(refused.kind, "the late FINISH is refused").toBe(Reply.ERROR);
    expect(await storage.transactions(before)).toEqual([]);
    expect(server.log()).not.toMatch(/ProtocolError/);
  }, 60_000);
});
