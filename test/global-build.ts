/**
 * Vitest global setup, run before the others: build dist/ when it is missing or older than
 * src/ (scripts/build.mjs --if-stale). `bin/amber.mjs` runs the compiled CLI, so every
 * `amber` process a test starts (the shared server of global-server.ts among them) runs
 * the code under test, and test/package.test.ts packs it. Type errors do not stop the build
 * here (`npm test` type-checks first anyway).
 */
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";

export default function setup(): void {
  execFileSync(process.execPath, [fileURLToPath(new URL("../scripts/build.mjs", import.meta.url)), "--if-stale", "--lenient"], {
    stdio: "inherit",
  });
}
