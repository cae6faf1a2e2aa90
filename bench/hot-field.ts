/**
 * Hot access cost: reading and writing fields of loaded persistent objects against the same
 * accesses on plain objects of the same shape. Each variant runs in its own process (the
 * persistent classes have a Proxy at the end of their prototype chain, and a Proxy in one
 * process must not slow the other variant); the parent prints both and the ratio.
 * `tsx bench/hot-field.ts`
 */
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { DB } from "../src/index.ts";
import { Item as HotItem, fillItem as fill } from "./model.ts";

const N = 10_000;
const ROUNDS = 400;

class PlainItem {
  i = 0;
  s = "";
  f = 0;
  l: number[] = [];
  ref: PlainItem | null = null;
}

interface Shape {
  i: number;
  s: string;
  f: number;
  l: number[];
  ref: unknown;
}

function read(a: Shape[]): number {
  let x = 0;
  for (let k = 0; k < a.length; k++) {
    const o = a[k]!;
    x += o.i + o.s.length + o.f + o.l[2]!;
    if (o.ref === undefined) x++;
  }
  return x;
}

function write(a: Shape[]): number {
  for (let k = 0; k < a.length; k++) {
    const o = a[k]!;
    o.i = k;
    o.f = k * 0.5;
  }
  return a.length;
}

function best(a: Shape[], fn: (a: Shape[]) => number): number {
  let bestNs = Infinity;
  let sink = 0;
  for (let r = 0; r < ROUNDS; r++) {
    const t = process.hrtime.bigint();
    sink += fn(a);
    const ns = Number(process.hrtime.bigint() - t);
    if (ns < bestNs) bestNs = ns;
  }
  if (sink === -1) console.log(sink);
  return bestNs / N;
}

async function variant(kind: string): Promise<{ read: number; write: number }> {
  if (kind === "plain") {
    const a = Array.from({ length: N }, (_, i) => fill(new PlainItem(), i));
    a.forEach((o, i) => (o.ref = a[(i + 1) % N]!));
    return { read: best(a, read), write: best(a, write) };
  }
  const db = await DB.open("memory:");
  await db.transact((root) => {
    const a = Array.from({ length: N }, (_, i) => fill(new HotItem(), i));
    a.forEach((o, i) => (o.ref = a[(i + 1) % N]!));
    root.set("items", a);
  });
  const conn = db.open({ cacheSize: 2 * N });
  const items = conn.root().get("items") as HotItem[];
  read(items); // load every object: from here on they are hot
  return { read: best(items, read), write: best(items, write) };
}

const kind = process.argv[2];
if (kind === "plain" || kind === "persistent") {
  process.stdout.write(JSON.stringify(await variant(kind)));
} else {
  // V8 does not always settle on the same hidden classes and code for the same program, so
  // each variant runs in 5 processes (interleaved) and the medians are compared.
  const self = fileURLToPath(import.meta.url);
  const run = (k: string) =>
    JSON.parse(execFileSync(process.execPath, ["--import", "tsx", self, k], { encoding: "utf8" })) as { read: number; write: number };
  const runs: Record<string, Array<{ read: number; write: number }>> = { plain: [], persistent: [] };
  for (let i = 0; i < 5; i++) for (const k of ["plain", "persistent"]) runs[k]!.push(run(k));
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const pick = (k: string) => ({ read: med(runs[k]!.map((r) => r.read)), write: med(runs[k]!.map((r) => r.write)) });
  const plain = pick("plain");
  const pers = pick("persistent");
  console.error("persistent reads, ns/object, per process:", runs.persistent!.map((r) => r.read.toFixed(1)).join(" "));
  const perObj = (ns: number) => `${ns.toFixed(2)} ns/object (${(1e9 / ns / 1e6).toFixed(1)}M objects/s)`;
  console.log("| access (5 fields read, 2 written per object) | plain object | loaded persistent object | ratio |");
  console.log("|---|---|---|---|");
  console.log(`| read  | ${perObj(plain.read)} | ${perObj(pers.read)} | ${(pers.read / plain.read).toFixed(2)}x |`);
  console.log(`| write | ${perObj(plain.write)} | ${perObj(pers.write)} | ${(pers.write / plain.write).toFixed(2)}x |`);
}
