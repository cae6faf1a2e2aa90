#!/usr/bin/env node
/**
 * `npm run build`: compile src/ to dist/ (ES modules, declarations, source maps with the
 * sources inlined) with the project's TypeScript and tsconfig.build.json, and copy the
 * files the code loads at run time that are not TypeScript (client-worker.mjs) beside the
 * compiled modules.
 *
 *   node scripts/build.mjs              build
 *   node scripts/build.mjs --if-stale   build only when dist/ is missing or older than its
 *                                       inputs (src/ without tests, the tsconfigs, this file)
 *   node scripts/build.mjs --lenient    emit despite type errors (printed as warnings): the
 *                                       tests' build (test/global-build.ts), so that a type
 *                                       error in work in progress elsewhere does not stop a
 *                                       test run; `npm test` type-checks on its own
 *
 * The output is made in a directory of its own and then swapped in for dist/, so dist/
 * never holds a half-written build or files of modules that no longer exist, and a run of
 * the tests or an `amber serve` that started from the old build keeps its files until the
 * swap. `dist/.build-time` (not published) records when the inputs were read.
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SRC = join(ROOT, "src");
const DIST = join(ROOT, "dist");
const STAMP = join(DIST, ".build-time");
/** Inputs besides src/: a change to any of them makes dist/ stale. */
const CONFIG = ["tsconfig.json", "tsconfig.build.json", "scripts/build.mjs"].map((f) => join(ROOT, f));

const isTest = (name) => /\.test\.[cm]?[jt]s$/.test(name);

/** Every file and directory under `dir` (directories too: deleting a file changes its directory's mtime). */
function* walk(dir) {
  yield dir;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* walk(path);
    else if (!isTest(entry.name)) yield path;
  }
}

/** Is dist/ missing, or older than any input? */
export function isStale() {
  let built;
  try {
    built = Number(readFileSync(STAMP, "utf8"));
  } catch {
    return true;
  }
  if (!Number.isFinite(built)) return true;
  for (const path of [...walk(SRC), ...CONFIG]) if (statSync(path).mtimeMs > built) return true;
  return false;
}

export function build({ lenient = false } = {}) {
  // Read the clock before the sources: a file changed while the build runs makes the next
  // check find dist/ stale.
  const started = Date.now() - 1;
  const out = join(ROOT, `.dist-build-${process.pid}`);
  rmSync(out, { recursive: true, force: true });
  try {
    const tsc = join(dirname(createRequire(import.meta.url).resolve("typescript/package.json")), "bin", "tsc");
    const args = [tsc, "-p", join(ROOT, "tsconfig.build.json"), "--outDir", out, ...(lenient ? ["--noEmitOnError", "false"] : [])];
    try {
      execFileSync(process.execPath, args, { cwd: ROOT, stdio: "inherit" });
    } catch (err) {
      // tsc's exit status 2: errors reported, output written.
      if (!lenient || err.status !== 2) throw new Error(`tsc failed (exit status ${err.status})`);
      console.warn("build: type errors above (ignored with --lenient: dist/ was written)");
    }
    for (const path of walk(out)) {
      // rewriteRelativeImportExtensions rewrites the JavaScript; declarations keep `.ts`
      // specifiers, which a consumer's tsc would look for in vain.
      if (path.endsWith(".d.ts")) {
        const text = readFileSync(path, "utf8");
        const fixed = text.replace(/(["'])(\.\.?\/[^"'\n]*)\.ts\1/g, "$1$2.js$1");
        if (fixed !== text) writeFileSync(path, fixed);
      }
    }
    // Files loaded at run time that tsc does not emit (the client's worker, `new URL("./client-worker.mjs", import.meta.url)`).
    let copied = 0;
    for (const path of walk(SRC)) {
      if (statSync(path).isDirectory() || path.endsWith(".ts")) continue;
      const target = join(out, relative(SRC, path));
      mkdirSync(dirname(target), { recursive: true });
      copyFileSync(path, target);
      copied++;
    }
    writeFileSync(join(out, ".build-time"), String(started));
    // Swap: a concurrent build (another test run) may have swapped its own in meanwhile;
    // then either result will do.
    const old = join(ROOT, `.dist-old-${process.pid}`);
    try {
      renameSync(DIST, old);
    } catch (err) {
      if (err.code !== "ENOENT") throw err;
    }
    try {
      renameSync(out, DIST);
    } catch (err) {
      if (err.code !== "ENOTEMPTY" && err.code !== "EEXIST") throw err;
    }
    rmSync(old, { recursive: true, force: true });
    console.log(`built dist/ (${copied} non-TypeScript file${copied === 1 ? "" : "s"} copied)`);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (!process.argv.includes("--if-stale") || isStale()) {
    try {
      build({ lenient: process.argv.includes("--lenient") });
    } catch (err) {
      console.error(`build failed: ${err.message}`);
      process.exitCode = 1;
    }
  }
}
