#!/usr/bin/env node
/**
 * Adds lock-file entries for optional, platform-specific packages that `npm install` left
 * out because the registry mirror this project is developed against lacks their exact
 * versions (e.g. msgpackr-extract and rollup binaries for other operating systems).
 * Without them `npm ci` refuses the lock file as out of sync with package.json.
 * Each entry records the version the parent asks for, with os/cpu/libc taken from the
 * package name, so npm skips it on other platforms exactly as it would with full metadata.
 *
 * Run after `npm install` changes package-lock.json:  node scripts/complete-lockfile.mjs
 */
import { readFileSync, writeFileSync } from "node:fs";

const path = new URL("../package-lock.json", import.meta.url);
const lock = JSON.parse(readFileSync(path, "utf8"));
const packages = lock.packages;
const OS = ["darwin", "win32", "linux", "android", "freebsd", "openbsd", "openharmony", "sunos", "aix"];
const CPU = ["arm64", "x64", "arm", "ia32", "loong64", "ppc64", "riscv64", "s390x"];

let added = 0;
for (const [key, pkg] of Object.entries(packages)) {
  for (const [name, version] of Object.entries(pkg.optionalDependencies ?? {})) {
    const entry = `node_modules/${name}`;
    const nested = `${key}/node_modules/${name}`;
    if (packages[entry] || packages[nested]) continue;
    const parts = name.split("/").pop().split("-");
    const os = OS.find((o) => parts.includes(o));
    const cpu = CPU.find((c) => parts.includes(c));
    if (!os || !cpu) continue; // not a platform binary: leave it to npm
    const libc = parts.includes("musl") ? ["musl"] : parts.includes("gnu") && os === "linux" ? ["glibc"] : undefined;
    packages[entry] = { version, cpu: [cpu], ...(libc ? { libc } : {}), dev: pkg.dev, optional: true, os: [os] };
    if (!pkg.dev) delete packages[entry].dev;
    added++;
  }
}
writeFileSync(path, JSON.stringify(lock, null, 2) + "\n");
console.log(`added ${added} platform-specific optional entries to package-lock.json`);
