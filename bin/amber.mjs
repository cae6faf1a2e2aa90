#!/usr/bin/env node
// The `amber` command: the compiled CLI (dist/, made by `npm run build`, which `npm ci`
// and `npm pack` run), on plain Node.js.
import { existsSync } from "node:fs";

const main = new URL("../dist/cli/main.js", import.meta.url);
if (!existsSync(main)) {
  process.stderr.write("amber: dist/cli/main.js is missing: run `npm run build` in the amberdb checkout first\n");
  process.exit(1);
}
await import(main.href);
