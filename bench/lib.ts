/** Shared helpers for the benchmark scripts: storages, timing, medians, result lines. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DB, MemoryStorage, type Connection, type Storage } from "../src/index.ts";

export interface Target {
  /** The storage URL as given ("memory:" or "embedded" or a path). */
  label: string;
  /** Open a DB on the same data again (a "new DB object"). */
  open(): Promise<DB>;
  /** Close for good and delete files. */
  dispose(): Promise<void>;
}

export function labelOf(kind: string): string {
  if (kind === "memory:" || kind === "memory") return "memory:";
  if (kind === "server") return "server (loopback, embedded durable)";
  return kind === "embedded" ? "embedded (LMDB, durable)" : kind;
}

let server: Promise<Served> | undefined;
type Served = Awaited<ReturnType<typeof import("../test/server-process.ts").startServer>>;
let served = 0;

/**
 * One `amber serve` process per benchmark process, serving durable embedded stores (one
 * database name per run) from a temporary directory; stopped when the benchmark ends.
 */
function sharedServer(): Promise<Served> {
  server ??= (async () => {
    const { startServer } = await import("../test/server-process.ts");
    const dir = mkdtempSync(join(tmpdir(), "amber-bench-served-"));
    const srv = await startServer(join(dir, "{name}"));
    // The server must not keep the benchmark alive: once the script is done, "exit"
    // below stops it (its pipes and process handle are not waited for).
    srv.child.unref();
    for (const stream of [srv.child.stdout, srv.child.stderr]) (stream as unknown as { unref?: () => void } | null)?.unref?.();
    process.once("beforeExit", () => {
      void srv.stop().then(() => rmSync(dir, { recursive: true, force: true }));
    });
    // Also when the benchmark exits another way (an error, process.exit): never leave it running.
    process.once("exit", () => {
      if (srv.child.exitCode === null) srv.child.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    });
    return srv;
  })();
  return server;
}

/** A fresh, empty database for one run. `embedded` = a temp directory, durable commits. */
export function makeTarget(kind: string): Target {
  if (kind === "server") {
    const name = `run${++served}`;
    return {
      label: labelOf(kind),
      open: async () => DB.open(`${(await sharedServer()).url}/${name}`),
      dispose: async () => {},
    };
  }
  if (kind === "memory:" || kind === "memory") {
    const storage = new MemoryStorage();
    // A view of the storage whose close() keeps the data, so a "new DB object" sees it.
    const keep = { url: storage.url, id: storage.id, capabilities: storage.capabilities } as Record<PropertyKey, unknown>;
    // Every method along the prototype chain (the storages share a base class).
    for (let proto = Object.getPrototypeOf(storage); proto !== null && proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
      for (const k of Object.getOwnPropertyNames(proto)) {
        const v = (storage as unknown as Record<string, unknown>)[k];
        if (typeof v === "function" && k !== "constructor" && !(k in keep)) keep[k] = v.bind(storage);
      }
    }
    keep.close = async () => {};
    keep[Symbol.asyncDispose] = async () => {};
    return {
      label: "memory:",
      open: () => DB.open(keep as unknown as Storage),
      dispose: () => storage.close(),
    };
  }
  const dir = kind === "embedded" ? mkdtempSync(join(tmpdir(), "amber-bench-")) : kind;
  const path = kind === "embedded" ? join(dir, "db") : kind;
  return {
    label: labelOf(kind),
    open: () => DB.open(path, { durability: "durable" }),
    dispose: async () => {
      if (kind === "embedded") rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function now(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export interface Phase {
  ms: number;
  objects: number;
  roundTrips: number;
  loads: number;
}

/** Time `fn`, counting the connection's round trips and loads during it. */
export async function phase(conn: Connection, objects: number, fn: () => unknown): Promise<Phase> {
  conn.resetStats();
  const t0 = now();
  await fn();
  const ms = now() - t0;
  return { ms, objects, roundTrips: conn.stats.roundTrips, loads: conn.stats.loads };
}

export function report(workload: string, storage: string, results: Record<string, Phase[]>): void {
  if (process.env.AMBER_BENCH_VERBOSE) {
    for (const [name, runs] of Object.entries(results)) console.error(name, runs.map((r) => r.ms.toFixed(1)).join(" "));
  }
  const rows: string[] = [];
  for (const [name, runs] of Object.entries(results)) {
    const ms = median(runs.map((r) => r.ms));
    const last = runs[runs.length - 1]!;
    const perSec = last.objects / (ms / 1000);
    rows.push(
      `| ${workload} | ${storage} | ${name} | ${ms.toFixed(2)} | ${fmt(perSec)} | ${last.roundTrips} | ${last.loads} |`,
    );
  }
  console.log(rows.join("\n"));
}

export function fmt(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return n.toFixed(0);
}

export function header(): void {
  console.log("| workload | storage | phase | median ms | objects/s | round trips | loads |");
  console.log("|---|---|---|---|---|---|---|");
}

export function argValue(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

export { rmSync };
