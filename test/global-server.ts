/**
 * Vitest global setup: one real `amber serve` process for the whole run, serving a fresh
 * named database per test (`amber://127.0.0.1:<port>/<name>`, each an embedded store
 * under a temporary directory). Tests that need to stop or kill a server start their own.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestProject } from "vitest/node";
import { startServer } from "./server-process.ts";

declare module "vitest" {
  export interface ProvidedContext {
    amberServer: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const dir = mkdtempSync(join(tmpdir(), "amber-served-"));
  const server = await startServer(join(dir, "{name}"), ["--durability", "relaxed"]);
  project.provide("amberServer", server.url);
  return async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  };
}
