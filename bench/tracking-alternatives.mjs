/**
 * The mechanisms considered for change tracking (docs/design-notes.md), measured on the
 * hot-field shape (5 fields: read all, write 2) with 10,000 objects, each variant in its own
 * process (a Proxy in one must not slow the others):
 *   plain     plain data properties: the baseline (and amberdb's old model: no tracking,
 *             changes found by comparing every loaded object at each boundary)
 *   own       own, enumerable, non-configurable accessors per field, one shared getter/setter
 *             pair per class and field over a values object (the model chosen)
 *   proto     the same accessors on the class prototype (Object.keys, spread, JSON and test
 *             equality would see no fields)
 *   proxy     a Proxy per object with a set trap
 * Also: "install", the cost per object of giving a fresh object its fields (loads pay it),
 * and "boundary", the old model's per-object cost of one dirty check (identity per field,
 * as a boundary paid for every cached object, nested containers excluded).
 *   node bench/tracking-alternatives.mjs
 */
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const N = 10_000;
const ROUNDS = 300;
const keys = ["i", "s", "f", "l", "ref"];

function variant(kind) {
  class Meta {
    values = null;
    state = 2;
    watch = 1;
    token = { ok: true };
  }
  let metaOf;
  class Base {
    #m;
    constructor() {
      this.#m = new Meta();
    }
    static {
      metaOf = (o) => o.#m;
    }
  }
  class Item extends Base {}
  const handOut = (o, m, v) => {
    if (!(v instanceof Base)) m.watch = 0;
  };
  const slowSet = () => {
    throw new Error("slow path");
  };
  const changed = (o, m) => {
    m.state = 3;
  };
  const descs = {};
  for (const k of keys) {
    const pair = new Function(
      "metaOf",
      "handOut",
      "slowSet",
      "changed",
      `return {
        get() { const m = metaOf(this); const s = m.values; const v = s.${k};
                if (m.watch !== 0 && typeof v === "object" && v !== null) handOut(this, m, v); return v; },
        set(v) { const m = metaOf(this); const s = m.values;
                 if (s === null || m.token.ok !== true) return slowSet(this, "${k}", v);
                 s.${k} = v; if (m.state !== 3) changed(this, m); } };`,
    )(metaOf, handOut, slowSet, changed);
    descs[k] = { get: pair.get, set: pair.set, enumerable: true, configurable: false };
  }
  const define = new Function("dp", "D", `return function (o) { ${keys.map((k) => `dp(o, "${k}", D.${k});`).join(" ")} }`)(
    Object.defineProperty,
    descs,
  );
  const state = (i) => ({ i, s: `item-${String(i).padStart(15, "0")}`, f: i * 1.5, l: [i, i + 1, i + 2], ref: null });
  let a;
  if (kind === "plain") a = Array.from({ length: N }, (_, i) => Object.assign(new Item(), state(i)));
  else if (kind === "proto") {
    for (const k of keys) Object.defineProperty(Item.prototype, k, { get: descs[k].get, set: descs[k].set, configurable: true });
    a = Array.from({ length: N }, (_, i) => {
      const o = new Item();
      metaOf(o).values = state(i);
      return o;
    });
  } else if (kind === "proxy") {
    a = Array.from({ length: N }, (_, i) => {
      let changedFlag = false;
      return new Proxy(state(i), {
        set(t, k, v) {
          t[k] = v;
          changedFlag = true;
          return true;
        },
      });
    });
  } else {
    a = Array.from({ length: N }, (_, i) => {
      const o = new Item();
      define(o);
      metaOf(o).values = state(i);
      return o;
    });
  }
  for (let i = 0; i < N; i++) a[i].ref = a[(i + 1) % N];
  const read = () => {
    let x = 0;
    for (let k = 0; k < a.length; k++) {
      const o = a[k];
      x += o.i + o.s.length + o.f + o.l[2];
      if (o.ref === undefined) x++;
    }
    return x;
  };
  const write = () => {
    for (let k = 0; k < a.length; k++) {
      const o = a[k];
      o.i = k;
      o.f = k * 0.5;
    }
    return a.length;
  };
  const best = (fn, rounds = ROUNDS) => {
    let b = Infinity;
    let sink = 0;
    for (let r = 0; r < rounds; r++) {
      const t = process.hrtime.bigint();
      sink += fn();
      b = Math.min(b, Number(process.hrtime.bigint() - t));
    }
    if (sink === -1) console.log(sink);
    return b / N;
  };
  const out = { read: best(read), write: best(write) };
  if (kind === "plain" || kind === "own") {
    const states = Array.from({ length: N }, (_, i) => state(i));
    out.install = best(() => {
      const objs = Array.from({ length: N }, () => new Item());
      for (let i = 0; i < N; i++) {
        if (kind === "plain") Object.assign(objs[i], states[i]);
        else {
          define(objs[i]);
          metaOf(objs[i]).values = states[i];
        }
      }
      return N;
    }, 30);
  }
  if (kind === "plain") {
    // One dirty check per object, as the old model did for every cached object at each boundary.
    const origs = a.map((o) => ({ ...o }));
    out.boundary = best(() => {
      let dirty = 0;
      for (let k = 0; k < a.length; k++) {
        const o = a[k];
        const orig = origs[k];
        const ks = Object.keys(o);
        for (let j = 0; j < ks.length; j++) if (!Object.is(o[ks[j]], orig[ks[j]])) { dirty++; break; }
      }
      return dirty;
    }, 50);
  }
  return out;
}

const kind = process.argv[2];
if (kind !== undefined) {
  process.stdout.write(JSON.stringify(variant(kind)));
} else {
  const self = fileURLToPath(import.meta.url);
  const runs = {};
  const kinds = ["plain", "own", "proto", "proxy"];
  for (let r = 0; r < 3; r++) for (const k of kinds) (runs[k] ??= []).push(JSON.parse(execFileSync(process.execPath, [self, k], { encoding: "utf8" })));
  const med = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
  const pick = (k, f) => (runs[k][0][f] === undefined ? undefined : med(runs[k].map((x) => x[f])));
  const plain = { read: pick("plain", "read"), write: pick("plain", "write") };
  console.log("| mechanism | read ns/object | vs plain | write ns/object | vs plain | install ns/object |");
  console.log("|---|---|---|---|---|---|");
  for (const k of kinds) {
    const rd = pick(k, "read");
    const wr = pick(k, "write");
    const ins = pick(k, "install");
    console.log(`| ${k} | ${rd.toFixed(2)} | ${(rd / plain.read).toFixed(2)}x | ${wr.toFixed(2)} | ${(wr / plain.write).toFixed(2)}x | ${ins === undefined ? "-" : ins.toFixed(0)} |`);
  }
  console.log(`\nold model, one dirty check per cached object at each boundary: ${pick("plain", "boundary").toFixed(1)} ns/object (flat objects; nested ones were re-encoded)`);
}
