#!/usr/bin/env node
/**
 * The layering check (DESIGN.md "Layers" and the layering paragraph under "Target layout"):
 * fails on an import cycle between modules of src/, on an import that crosses the layers the
 * wrong way, and on an allow-list entry that no longer matches anything. `npm test` runs it
 * (test/layers.test.ts); by hand:  node scripts/check-layers.mjs
 *
 * The layers, bottom up (each may import its own layer and the ones listed for it):
 *
 *   ids          nothing of ours
 *   errors       ids
 *   persistent   ids, errors
 *   codec        ids, errors, persistent
 *   collections  ids, errors, persistent, codec
 *   loading,     ids, errors, persistent, codec, collections; they reach the connection
 *   snapshot,    through small host interfaces. Type-only imports (`import type`) of the
 *   bigarray     connection, and of the storage interface (storage/storage.ts: a plan
 *                compiles to the PlanSteps a storage walks), are allowed.
 *   storage      ids, errors, codec/record.ts (the record envelope) and storage/**: never
 *                persistent classes, the connection or collections. Inside storage/server/,
 *                the client side (client-*) and the server side (the other files) share only
 *                protocol.ts; both may use the storage-level modules (storage/*.ts).
 *   connection   everything below it
 *   cli, testing the public API: index.ts (and testing/index.ts, the `amberdb/testing` entry);
 *                `amberdb` and `amberdb/testing` specifiers count as those files. testing
 *                also exports the storage contract suite (storage/contract.ts).
 *   index.ts     anything (it is the public surface)
 *
 * An import is a static `import`/`export … from`, a side-effect `import "…"`, a dynamic
 * `import("…")` or a worker script `new URL("…", import.meta.url)`. It is type-only only when
 * written `import type` / `export type` (the project compiles with verbatimModuleSyntax, so
 * `import { type X }` still loads the module). Cycles count every import, type-only ones
 * included. Unit tests (*.test.ts) are not modules of the layers and are not checked.
 *
 * No dependency: TypeScript 7 (the native compiler this project uses) has no JavaScript
 * API for tools such as dependency-cruiser to parse with, and the import forms above are
 * few; comments are removed before the imports are read, so examples in doc comments do
 * not count.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join, posix, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Today's crossings, each allowed until the work named in its reason moves it. The check
 * fails when an entry no longer matches an import: delete the entry then. Pairs are paths
 * under src/.
 */
export const ALLOWED = [
  // cli and testing reach past the public API: `amber serve` needs the StorageServer, which
  // index.ts does not export (an `amberdb/server` entry, or an export, would end this one);
  // amberdb/testing reads the connections' round-trip accounting.
  { from: "cli/serve.ts", to: "storage/server/storage-server.ts", reason: "StorageServer is not in the public API; moves with the packaging (an entry point for the server)" },
  { from: "testing/index.ts", to: "connection/connection.ts", reason: "moves in the connection renovation (round-trip accounting behind a small exported interface)" },
];

/** Allowed cycles, as the sorted list of their modules joined by " ". None today. */
export const ALLOWED_CYCLES = [];

const BELOW_CONNECTION = ["ids", "errors", "persistent", "codec", "collections", "loading", "snapshot", "bigarray", "storage"];
const BESIDE_COLLECTIONS = {
  runtime: ["ids", "errors", "persistent", "codec", "collections"],
  types: ["connection", "storage/storage.ts"],
};

/** What each layer may import besides itself: layer names, or file paths under src/. */
export const RULES = {
  ids: { runtime: [] },
  errors: { runtime: ["ids"] },
  persistent: { runtime: ["ids", "errors"] },
  codec: { runtime: ["ids", "errors", "persistent"] },
  collections: { runtime: ["ids", "errors", "persistent", "codec"] },
  loading: BESIDE_COLLECTIONS,
  snapshot: BESIDE_COLLECTIONS,
  bigarray: BESIDE_COLLECTIONS,
  storage: { runtime: ["ids", "errors", "codec/record.ts"] },
  connection: { runtime: BELOW_CONNECTION },
  cli: { runtime: ["index.ts", "testing/index.ts"] },
  // amberdb/testing also exports the storage contract suite, a test of the storage layer.
  testing: { runtime: ["index.ts", "storage/contract.ts"] },
  index: { runtime: ["*"] },
};

/** The layer of a module (path under src/, with forward slashes), or undefined. */
export function layerOf(file) {
  if (file === "ids.ts") return "ids";
  if (file === "errors.ts") return "errors";
  if (file === "index.ts") return "index";
  const top = file.split("/")[0];
  return top in RULES && file.includes("/") ? top : undefined;
}

/** The side of storage/server/ a module is on: "protocol", "client", "server", or undefined. */
export function serverSideOf(file) {
  if (!file.startsWith("storage/server/")) return undefined;
  const name = file.slice("storage/server/".length);
  if (name.startsWith("protocol")) return "protocol";
  return name.startsWith("client-") ? "client" : "server";
}

function allows(entries, target) {
  return entries.some((e) => e === "*" || e === target || e === layerOf(target));
}

/** Why importing `to` from `from` crosses the layers, or undefined when it may. */
export function crossing(from, to, typeOnly) {
  const a = layerOf(from);
  const b = layerOf(to);
  if (a === undefined) return `${from} is in no layer (add its folder to RULES in scripts/check-layers.mjs)`;
  if (b === undefined) return `${to} is in no layer (add its folder to RULES in scripts/check-layers.mjs)`;
  if (a === b) {
    const sa = serverSideOf(from);
    const sb = serverSideOf(to);
    if (sa && sb && sa !== sb && sa !== "protocol" && sb !== "protocol") {
      return `the ${sa} side of the storage server imports the ${sb} side (they share only protocol.ts)`;
    }
    return undefined;
  }
  const rule = RULES[a];
  if (allows(rule.runtime, to)) return undefined;
  if (typeOnly && rule.types && allows(rule.types, to)) return undefined;
  const may = [...rule.runtime, ...(rule.types ?? []).map((t) => `${t} (types)`)];
  return `${a} imports ${b}${typeOnly ? " (type-only)" : ""}; ${a} may import ${may.length ? may.join(", ") : "nothing of ours"}`;
}

/**
 * The source with comments blanked (newlines kept), string and template literals kept, and
 * regular expression literals kept, so that only real code is searched for imports.
 */
export function stripComments(src) {
  let out = "";
  let i = 0;
  const n = src.length;
  let last = ""; // the last significant character written, to tell a regex from a division
  while (i < n) {
    const c = src[i];
    const d = src[i + 1];
    if (c === "/" && d === "/") {
      while (i < n && src[i] !== "\n") i++;
      continue;
    }
    if (c === "/" && d === "*") {
      const end = src.indexOf("*/", i + 2);
      const stop = end < 0 ? n : end + 2;
      out += src.slice(i, stop).replace(/[^\n]/g, " ");
      i = stop;
      continue;
    }
    if (c === '"' || c === "'" || c === "`") {
      let j = i + 1;
      while (j < n && src[j] !== c) {
        if (src[j] === "\\") j++;
        else if (c !== "`" && src[j] === "\n") break;
        j++;
      }
      out += src.slice(i, j + 1);
      i = j + 1;
      last = c;
      continue;
    }
    if (c === "/" && (last === "" || "(,=:[!&|?{};+-*%<>~^".includes(last) || /\b(return|typeof|case|in|of|void|yield|await)$/.test(out))) {
      let j = i + 1;
      let inClass = false;
      while (j < n && src[j] !== "\n") {
        if (src[j] === "\\") j++;
        else if (src[j] === "[") inClass = true;
        else if (src[j] === "]") inClass = false;
        else if (src[j] === "/" && !inClass) break;
        j++;
      }
      out += src.slice(i, j + 1);
      i = j + 1;
      last = "/";
      continue;
    }
    out += c;
    if (!/\s/.test(c)) last = c;
    i++;
  }
  return out;
}

/** The imports of one module's source: `{ specifier, typeOnly }` each. */
export function importsOf(src) {
  const code = stripComments(src);
  const found = [];
  const statement = /^[ \t]*(?:import|export)\s+(type\s+)?(?:[\w$*{}\s,]+?\s+from\s*)?["']([^"'\n]+)["']/gm;
  for (const m of code.matchAll(statement)) found.push({ specifier: m[2], typeOnly: m[1] !== undefined });
  for (const m of code.matchAll(/\bimport\s*\(\s*["']([^"'\n]+)["']\s*\)/g)) found.push({ specifier: m[1], typeOnly: false });
  for (const m of code.matchAll(/\bnew\s+URL\(\s*["'](\.{1,2}\/[^"'\n]+)["']\s*,\s*import\.meta\.url\s*\)/g)) {
    found.push({ specifier: m[1], typeOnly: false });
  }
  return found;
}

const SELF = { amberdb: "index.ts", "amberdb/testing": "testing/index.ts" };

/**
 * Reads the import graph of `sources` (a Map from paths under src/ to their text) and
 * returns what breaks the rules: `violations` (not in the allow-list), `cycles` (not
 * allowed), `stale` allow-list entries, and `unresolved` relative imports.
 */
export function checkSources(sources, allowed = ALLOWED, allowedCycles = ALLOWED_CYCLES) {
  const edges = new Map(); // from -> Map(to -> typeOnly for every import of it)
  const unresolved = [];
  for (const [file, src] of sources) {
    const targets = new Map();
    edges.set(file, targets);
    for (const { specifier, typeOnly } of importsOf(src)) {
      let to = SELF[specifier];
      if (to === undefined) {
        if (!specifier.startsWith(".")) continue; // a package or a node: built-in
        to = posix.normalize(posix.join(posix.dirname(file), specifier));
        if (!sources.has(to)) {
          unresolved.push(`${file} imports ${specifier}, not a module under src/`);
          continue;
        }
      }
      targets.set(to, (targets.get(to) ?? true) && typeOnly);
    }
  }

  const used = new Set();
  const violations = [];
  for (const [from, targets] of edges) {
    for (const [to, typeOnly] of targets) {
      const why = crossing(from, to, typeOnly);
      if (why === undefined) continue;
      const entry = allowed.find((e) => e.from === from && e.to === to);
      if (entry) used.add(entry);
      else violations.push(`${from} -> ${to}: ${why}`);
    }
  }
  const stale = allowed.filter((e) => !used.has(e)).map((e) => `${e.from} -> ${e.to}`);

  const cycles = stronglyConnected(edges)
    .filter((c) => c.length > 1 || edges.get(c[0])?.has(c[0]))
    .map((c) => c.sort().join(" "))
    .filter((c) => !allowedCycles.includes(c));

  return { violations, cycles, stale, unresolved };
}

/** Tarjan's strongly connected components of the graph. */
function stronglyConnected(edges) {
  let index = 0;
  const indexOf = new Map();
  const low = new Map();
  const stack = [];
  const onStack = new Set();
  const components = [];
  const visit = (v) => {
    indexOf.set(v, index);
    low.set(v, index);
    index++;
    stack.push(v);
    onStack.add(v);
    for (const w of edges.get(v)?.keys() ?? []) {
      if (!indexOf.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v), indexOf.get(w)));
      }
    }
    if (low.get(v) === indexOf.get(v)) {
      const component = [];
      let w;
      do {
        w = stack.pop();
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      components.push(component);
    }
  };
  for (const v of edges.keys()) if (!indexOf.has(v)) visit(v);
  return components;
}

/** The modules of a source directory (unit tests left out), keyed by path under it. */
export function readSources(srcDir) {
  const sources = new Map();
  const walk = (dir) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (/\.(ts|mts|mjs|js)$/.test(name) && !/\.test\.[mc]?[tj]s$/.test(name) && !name.endsWith(".d.ts")) {
        sources.set(relative(srcDir, path).split(sep).join("/"), readFileSync(path, "utf8"));
      }
    }
  };
  walk(srcDir);
  return sources;
}

export const SRC = fileURLToPath(new URL("../src", import.meta.url));

/** The check of this repository's src/. */
export function checkLayers(srcDir = SRC) {
  if (!existsSync(srcDir)) throw new Error(`no source directory at ${srcDir}`);
  return checkSources(readSources(srcDir));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { violations, cycles, stale, unresolved } = checkLayers();
  const report = [
    ...violations.map((v) => `layer crossing: ${v}`),
    ...cycles.map((c) => `import cycle: ${c}`),
    ...stale.map((s) => `allow-list entry matches no import any more (delete it): ${s}`),
    ...unresolved.map((u) => `unresolved import: ${u}`),
  ];
  for (const line of report) console.error(line);
  if (report.length > 0) process.exit(1);
  console.log(`layers ok: ${readSources(SRC).size} modules, ${ALLOWED.length} allowed crossings (scripts/check-layers.mjs)`);
}
