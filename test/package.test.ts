/**
 * The published package (SPEC §10), as applications get it: dist/ (built by
 * global-build.ts) imported by plain Node.js, and the tarball of `npm pack` installed from
 * it into a fresh project (with its dependencies and TypeScript 5.9 from the registry), run
 * from a plain `.mjs` script and from TypeScript with standard decorators compiled by that
 * tsc, with no TypeScript loader anywhere.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { afterAll, describe, expect, inject, it } from "vitest";

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL("..", import.meta.url));
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
const scratch = (): string => {
  const d = mkdtempSync(join(tmpdir(), "amber-package-"));
  dirs.push(d);
  return d;
};

/**
 * The environment of a child process of an application: without the `npm_*` variables of
 * the `npm test` that may have started this run (a child npm would take them as its
 * configuration) and without NODE_OPTIONS (no loader may sneak in).
 */
function plainEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k) && k !== "NODE_OPTIONS") env[k] = v;
  return env;
}

async function node(args: string[], cwd: string): Promise<string> {
  const { stdout } = await run(process.execPath, args, { cwd, env: plainEnv(), maxBuffer: 16 << 20 });
  return stdout;
}

/**
 * A module that reports, at each step, whether lmdb-js's native binding is loaded (the
 * shared objects of the process, from its diagnostic report) and how many worker threads
 * run (the client storage's socket lives in one). Importing amberdb must start neither.
 */
const PROBE = `
const probe = () => {
  const r = process.report.getReport();
  return { lmdb: r.sharedObjects.some((s) => /lmdb/i.test(s)), workers: r.workers.length };
};
`;

describe("dist/ (the compiled package)", () => {
  it("importing it loads neither LMDB nor the client's worker until a storage needs them", async () => {
    const dir = scratch();
    const script = join(dir, "lazy.mjs");
    writeFileSync(
      script,
      `${PROBE}
const [index, testing, server, path] = process.argv.slice(2);
const steps = {};
const amber = await import(index);
await import(testing);
steps.imported = probe();
const mem = await amber.DB.open("memory:");
await mem.transact((root) => root.set("n", 1));
await mem.close();
steps.memory = probe();
const remote = await amber.DB.open(server);
await remote.transact((root) => root.set("n", 2));
steps.server = probe();
await remote.close();
const local = await amber.DB.open(path);
await local.transact((root) => root.set("n", 3));
steps.embedded = probe();
await local.close();
console.log(JSON.stringify(steps));
`,
    );
    const out = await node(
      [
        script,
        pathToFileURL(join(ROOT, "dist/index.js")).href,
        pathToFileURL(join(ROOT, "dist/testing/index.js")).href,
        `${inject("amberServer")}/package_lazy_${process.pid}`,
        join(dir, "store"),
      ],
      dir,
    );
    expect(JSON.parse(out)).toEqual({
      imported: { lmdb: false, workers: 0 },
      memory: { lmdb: false, workers: 0 },
      server: { lmdb: false, workers: 1 }, // the probe sees the worker: it would have seen one at import
      embedded: { lmdb: true, workers: 0 }, // and it sees the binding once a store is opened
    });
  });

  it("keeps the field accessors working (compiled by a direct eval inside Persistent's static block)", async () => {
    const dir = scratch();
    const script = join(dir, "fields.mjs");
    writeFileSync(
      script,
      `const { DB, Persistent, registerClass, stateOf } = await import(process.argv[2]);
class Item extends Persistent {
  label = "";
  count = 0;
}
registerClass(Item, "pkg.Item");
const db = await DB.open("memory:");
await db.transact((root) => {
  const item = new Item();
  item.label = "tea";
  root.set("item", item);
});
const conn = db.open({ cacheSize: 10 });
conn.cacheMinimize();
const item = conn.root().get("item");
const before = stateOf(item);
const read = [item.label, item.count];
item.count += 2;
const after = stateOf(item);
await conn.commit();
console.log(JSON.stringify({ before, read, after, keys: Object.keys(item), committed: await db.transact((root) => root.get("item").count) }));
await db.close();
`,
    );
    const out = await node([script, pathToFileURL(join(ROOT, "dist/index.js")).href], dir);
    expect(JSON.parse(out)).toEqual({ before: "ghost", read: ["tea", 0], after: "changed", keys: ["label", "count"], committed: 2 });
  });
});

describe("npm pack, installed into a new project", () => {
  it("runs from plain JavaScript and from TypeScript compiled by tsc 5.9, with no TypeScript loader", async () => {
    const dir = scratch();
    const times: string[] = [];
    const timed = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
      const t0 = performance.now();
      const result = await fn();
      times.push(`${what} ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      return result;
    };
    const started = performance.now();

    // The tarball: dist/ (already built for this run) and bin/, nothing of src/ or the tests.
    const packed = await timed("pack", () =>
      run("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", dir], { cwd: ROOT, env: plainEnv() }),
    );
    const [pack] = JSON.parse(packed.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>;
    const files = pack!.files.map((f) => f.path);
    expect(files).toEqual(
      expect.arrayContaining(["package.json", "README.md", "bin/amber.mjs", "dist/index.js", "dist/index.d.ts", "dist/testing/index.js", "dist/testing/index.d.ts", "dist/cli/main.js", "dist/storage/server/client-worker.mjs"]),
    );
    expect(files.filter((f) => !/^(dist\/|bin\/|package\.json$|README\.md$|LICENSE)/.test(f))).toEqual([]);
    expect(files.filter((f) => /\.test\.|\.ts$/.test(f) && !f.endsWith(".d.ts"))).toEqual([]);
    expect(files).not.toContain("dist/.build-time");

    const app = join(dir, "app");
    mkdirSync(join(app, "src"), { recursive: true });
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "amber-consumer", private: true, type: "module" }, null, 2));
    await timed("npm install", () =>
      run("npm", ["install", "--no-audit", "--no-fund", join(dir, pack!.filename), "typescript@~5.9.0", "@types/node@^20"], {
        cwd: app,
        env: plainEnv(),
        maxBuffer: 16 << 20,
      }),
    );
    expect(existsSync(join(app, "node_modules/amberdb/dist/index.js"))).toBe(true);
    expect(existsSync(join(app, "node_modules/tsx"))).toBe(false); // a dev dependency only

    // (a) Plain JavaScript: an embedded store in a temporary directory, and a server (the
    // client's worker is the installed package's client-worker.mjs).
    writeFileSync(
      join(app, "plain.mjs"),
      `${PROBE}
import { DB, PersistentList, stateOf } from "amberdb";
import { expectRoundTrips, storageContract } from "amberdb/testing";
const imported = probe();
const [path, server] = process.argv.slice(2);
let db = await DB.open(path);
await db.transact((root) => root.set("books", new PersistentList([{ title: "Dune", copies: 3 }])));
await db.close();
db = await DB.open(path, { create: false });
const conn = db.open();
const books = await expectRoundTrips(1, () => conn.root().get("books"));
const embedded = { first: books.at(0), state: stateOf(books) };
await conn.close();
await db.close();
const remote = await DB.open(server);
await remote.transact((root) => root.set("answer", 42n));
const answer = await remote.transact((root) => root.get("answer"));
await remote.close();
console.log(JSON.stringify({ imported, embedded, answer: String(answer), contract: typeof storageContract }));
`,
    );
    const store = join(dir, "plain-store");
    const plain = await timed("run .mjs", () => node(["plain.mjs", store, `${inject("amberServer")}/package_plain_${process.pid}`], app));
    expect(JSON.parse(plain)).toEqual({
      imported: { lmdb: false, workers: 0 },
      embedded: { first: { title: "Dune", copies: 3 }, state: "saved" },
      answer: "42",
      contract: "function", // amberdb/testing loads without vitest (not installed here)
    });

    // The installed command, on plain node.
    const info = await node([join(app, "node_modules/.bin/amber"), "info", store], app);
    expect(info).toMatch(/root keys\s+books/);

    // (b) TypeScript: standard decorators (no experimentalDecorators), nodenext, strict,
    // compiled by tsc 5.9 (checking amberdb's declarations too: no skipLibCheck) and run with node.
    writeFileSync(
      join(app, "tsconfig.json"),
      JSON.stringify(
        { compilerOptions: { module: "nodenext", target: "es2022", strict: true, rootDir: "src", outDir: "out" }, include: ["src"] },
        null,
        2,
      ),
    );
    writeFileSync(
      join(app, "src/app.ts"),
      `import { DB, Persistent, PersistentList, persistent, stateOf, type State } from "amberdb";
import { expectRoundTrips } from "amberdb/testing";

@persistent("consumer.Order")
class Order extends Persistent {
  item = "";
  quantity = 0;
}

@persistent("consumer.Customer", { version: 1 })
class Customer extends Persistent {
  name = "";
  tags: string[] = [];
  orders = new PersistentList<Order>();
  get total(): number {
    let n = 0;
    for (const o of this.orders) n += o.quantity;
    return n;
  }
  static upgrade(state: State, from: number): State {
    return from < 1 ? { ...state, orders: new PersistentList() } : state;
  }
}

const path = process.argv[2]!;
const db = await DB.open(path);
await db.transact((root) => {
  const alice = new Customer();
  alice.name = "Alice";
  const order = new Order();
  order.item = "tea";
  order.quantity = 2;
  alice.orders.push(order);
  root.set("alice", alice);
});
{
  await using conn = db.open();
  const alice = conn.root().get("alice") as Customer;
  alice.tags.push("vip");
  alice.orders.at(0)!.quantity += 1;
  await conn.commit();
}
await db.close();

const again = await DB.open(path);
await using conn = again.open();
const alice = await expectRoundTrips(1, () => conn.root().get("alice") as Customer);
const result = { name: alice.name, tags: alice.tags, total: alice.total, state: stateOf(alice), isCustomer: alice instanceof Customer };
console.log(JSON.stringify(result));
`,
    );
    const tsc = join(app, "node_modules/typescript/bin/tsc");
    expect(await node([tsc, "--version"], app)).toMatch(/^Version 5\.9\./);
    await timed("tsc 5.9", async () => {
      try {
        await node([tsc, "-p", "."], app);
      } catch (err) {
        throw new Error(`tsc failed:\n${(err as { stdout: string }).stdout}`);
      }
    });
    const typed = await timed("run compiled .ts", () => node(["out/app.js", join(dir, "typed-store")], app));
    expect(JSON.parse(typed)).toEqual({ name: "Alice", tags: ["vip"], total: 3, state: "saved", isCustomer: true });

    console.log(`package test: install and run in ${((performance.now() - started) / 1000).toFixed(1)} s (${times.join(", ")})`);
  }, 15 * 60_000);
});
