import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const source = (path: string): string => fileURLToPath(new URL(path, import.meta.url));

export default defineConfig({
  // Tests that import the package by name ("amberdb/testing", as applications do) get the
  // sources, the same module instances as the rest of the test (tsconfig.json's `paths`
  // does the same for the type check); test/package.test.ts tests the built package.
  resolve: {
    alias: [
      { find: /^amberdb$/, replacement: source("./src/index.ts") },
      { find: /^amberdb\/testing$/, replacement: source("./src/testing/index.ts") },
    ],
  },
  test: {
    include: ["src/**/*.test.ts", "test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // In this order: the build (when src/ is newer than dist/), then the shared server.
    globalSetup: ["./test/global-build.ts", "./test/global-server.ts"],
    reporters: ["default", "./test/summary-reporter.ts"],
  },
});
