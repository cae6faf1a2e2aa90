/**
 * Load test of the storage server: one real `amber serve` over an embedded store (durable
 * commits), 100 accounts and a transfer log (BTree), and 8 client processes making random
 * transfers, each in its own db.transact, for AMBER_LOAD_MS (default 30 s). Afterwards a
 * fresh client checks that money was neither created nor destroyed, that every commit a
 * client saw return is in the log and nothing else is, that replaying the log gives every
 * balance (each transfer applied exactly once), and that conflicts happened and were retried.
 * The second test pins down why some clients starve under this load (db.transact's retry
 * reads a snapshot as old as its backoff).
 *
 *   AMBER_LOAD_MS=5000 npx vitest run test/server-load.test.ts     (a short run)
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { BTree, DB, PersistentList } from "../src/index.ts";
import { Account, Transfer, accounts, transferLog, type ClientResult } from "./fixtures/bank-model.ts";
import { serverUrl } from "./helpers.ts";
import { Tally } from "./model.ts";
import { startServer, type ServerProcess } from "./server-process.ts";

const DURATION_MS = Number(process.env.AMBER_LOAD_MS ?? 30_000);
const CLIENTS = Number(process.env.AMBER_LOAD_CLIENTS ?? 8);
const ACCOUNTS = 100;
const INITIAL = 1_000;
const REPO = fileURLToPath(new URL("..", import.meta.url));
const CLIENT_SCRIPT = fileURLToPath(new URL("./fixtures/transfer-client.ts", import.meta.url));

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

interface Client {
  id: number;
  child: ChildProcess;
  resultPath: string;
  stdout: () => string;
  stderr: () => string;
  ready: Promise<void>;
  exited: Promise<number | null>;
}

function startClient(url: string, id: number, dir: string): Client {
  const resultPath = join(dir, `client-${id}.json`);
  const child = spawn(process.execPath, ["--import", "tsx", CLIENT_SCRIPT, url, String(id), resultPath, String(DURATION_MS)], {
    cwd: REPO,
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code, signal) => resolve(code ?? (signal === null ? null : -1))));
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
      if (/^ready$/m.test(stdout)) resolve();
    });
    void exited.then((code) => reject(new Error(`client ${id} exited with ${code} before it was ready: ${stderr}`)));
  });
  ready.catch(() => undefined); // observed by the test; avoid an unhandled rejection after it
  child.stdin!.on("error", () => undefined); // a client that died: its exit code tells
  return { id, child, resultPath, stdout: () => stdout, stderr: () => stderr, ready, exited };
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took more than ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

describe("storage server under load", () => {
  it(
    `${CLIENTS} client processes making random transfers for ${DURATION_MS} ms lose, duplicate and invent nothing`,
    async () => {
      const dir = mkdtempSync(join(tmpdir(), "amber-load-"));
      dirs.push(dir);
      let server: ServerProcess | undefined;
      const clients: Client[] = [];
      try {
        server = await startServer(join(dir, "db")); // durable commits (no --durability)
        const url = server.url;

        // Setup: 100 accounts and an empty transfer log.
        const setup = await DB.open(url);
        await setup.transact((root) => {
          const list = new PersistentList<Account>();
          for (let i = 0; i < ACCOUNTS; i++) list.push(new Account(`acct${i}`, INITIAL));
          root.set("accounts", list);
          root.set("transfers", new BTree<string, Transfer>());
        });
        await setup.close();

        for (let i = 0; i < CLIENTS; i++) clients.push(startClient(url, i, dir));
        await withTimeout(Promise.all(clients.map((c) => c.ready)), 60_000, "starting the clients");
        const started = Date.now();
        for (const c of clients) c.child.stdin!.end("go\n");
        const codes = await withTimeout(Promise.all(clients.map((c) => c.exited)), DURATION_MS + 60_000, "the load").catch((err: Error) => {
          const state = clients.map((c) => `client ${c.id} (exit ${c.child.exitCode}): stdout ${JSON.stringify(c.stdout())} stderr ${JSON.stringify(c.stderr())}`);
          throw new Error(`${err.message}\n${state.join("\n")}\nserver log:\n${server!.log().slice(-5000)}`);
        });
        const wallMs = Date.now() - started;
        codes.forEach((code, i) => expect(code, `client ${i} exit code; stderr: ${clients[i]!.stderr()}`).toBe(0));

        const results = clients.map((c) => JSON.parse(readFileSync(c.resultPath, "utf8")) as ClientResult);
        const total = (f: (r: ClientResult) => number) => results.reduce((n, r) => n + f(r), 0);
        const committed = total((r) => r.committed);
        const retries = total((r) => r.retries);
        const declined = total((r) => r.declined);
        const gaveUp = total((r) => r.gaveUp);
        const maxAttempts = Math.max(...results.map((r) => r.maxAttempts));
        const loadMs = Math.max(...results.map((r) => r.elapsedMs));
        console.log(
          `server load: ${CLIENTS} clients, ${loadMs} ms (wall ${wallMs} ms), ${committed} transfers committed ` +
            `(${((committed * 1000) / loadMs).toFixed(1)} commits/s), ${declined} declined, ${retries} conflict retries ` +
            `(${(retries / Math.max(1, committed + declined + gaveUp)).toFixed(3)} per transfer, at most ${maxAttempts} attempts for one), ` +
            `${gaveUp} gave up`,
        );
        for (const r of results) {
          console.log(`  client ${r.client}: ${r.committed} committed, ${r.declined} declined, ${r.retries} retries, ${r.gaveUp} gave up, ${r.errors.length} errors`);
        }

        // No client failed: no error, and no give-up after 50 retries (soft, so that the
        // consistency checks below still run: a transfer that gave up committed nothing).
        expect(results.flatMap((r) => r.errors)).toEqual([]);
        // (Each retry reads a snapshot taken after its backoff; see the next test.)
        expect.soft(gaveUp, "transfers that gave up after 50 retries").toBe(0);
        // The load was real and contended: commits from every client, and conflicts retried.
        for (const r of results) expect.soft(r.committed, `client ${r.client} committed`).toBeGreaterThan(0);
        expect(retries).toBeGreaterThan(0);

        // Check everything with a fresh client.
        const check = await DB.open(url);
        try {
          const conn = check.open({ cacheSize: 1_000_000 });
          const root = conn.root();
          const list = accounts(root);
          expect(list.length).toBe(ACCOUNTS);
          const balances = list.toArray().map((a) => a.balance);
          const log = transferLog(root);
          log.check();
          const logged = new Map<string, Transfer>(log.entries());

          // Money is conserved, and no transfer overdrew an account.
          expect(balances.reduce((a, b) => a + b, 0)).toBe(ACCOUNTS * INITIAL);
          expect(balances.filter((b) => b < 0)).toEqual([]);

          // Every commit a client saw return is in the log, exactly as the client made it.
          const seen = new Map<string, [number, number, number, number]>();
          for (const r of results) for (const [id, from, to, amount] of r.transfers) seen.set(id, [from, to, amount, r.client]);
          expect(seen.size).toBe(committed); // ids are unique
          const lost = [...seen.keys()].filter((id) => !logged.has(id));
          expect(lost, "commits that returned but are not in the log").toEqual([]);
          const altered = [...seen].filter(([id, [from, to, amount, client]]) => {
            const t = logged.get(id)!;
            return !(t instanceof Transfer) || t.from !== from || t.to !== to || t.amount !== amount || t.client !== client;
          });
          expect(altered, "log entries that differ from what the client committed").toEqual([]);
          // ...and nothing else is (transfers whose outcome a client could not know are excluded).
          const unknown = new Set(results.flatMap((r) => r.unknownIds));
          const phantoms = [...logged.keys()].filter((id) => !seen.has(id) && !unknown.has(id));
          expect(phantoms, "log entries no client saw commit").toEqual([]);

          // Replaying the log gives every balance: each transfer was applied exactly once.
          const replayed = new Array<number>(ACCOUNTS).fill(INITIAL);
          for (const t of logged.values()) {
            replayed[t.from]! -= t.amount;
            replayed[t.to]! += t.amount;
          }
          expect(balances).toEqual(replayed);
          await conn.close();
        } finally {
          await check.close();
        }

        // The server stayed healthy: no protocol error, and it shuts down cleanly.
        const log = server.log();
        expect(log, "server log").not.toMatch(/ProtocolError/);
        const code = await server.stop();
        expect(code, `server exit code; log: ${server.log()}`).toBe(0);
      } finally {
        for (const c of clients) {
          if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill("SIGKILL");
        }
        await Promise.all(clients.map((c) => c.exited));
        await server?.stop();
      }
    },
    DURATION_MS + 90_000,
  );

  it("a retry of db.transact reads what was committed during its backoff", async () => {
    const url = serverUrl();
    const a = await DB.open(url);
    const b = await DB.open(url);
    try {
      await a.transact((root) => root.set("t", new Tally()));
      const bump = () => b.transact((root) => void (root.get("t") as Tally).n++);
      const seen: number[] = [];
      let during: Promise<void> | undefined;
      await a.transact(
        async (root) => {
          const t = root.get("t") as Tally;
          seen.push(t.n);
          if (seen.length === 1) {
            await bump(); // n = 1: this attempt conflicts
            // n = 2, committed 20 ms later, while `a` waits out its backoff (250 ms: 1000 x
            // (0.5 to 1.5), capped at 250)
            during = new Promise((resolve) => setTimeout(resolve, 20)).then(bump);
            // A handler at once: `await during` comes only after a.transact returns (and not at
            // all if it throws, when the finally closes b under it).
            during.catch(() => undefined);
          }
          t.n += 100;
        },
        { backoffMs: 1000, retries: 5 },
      );
      await during;
      expect(seen[0]).toBe(0);
      // The retry's snapshot begins after the backoff, so it sees n = 2 at once (before the
      // fix it began before the wait, read n = 1, and conflicted again).
      expect(seen, "n read by each attempt").toEqual([0, 2]);
      const conn = a.open({ cacheSize: 10 });
      expect((conn.root().get("t") as Tally).n).toBe(102);
      await conn.close();
    } finally {
      await a.close();
      await b.close();
    }
  });
});
