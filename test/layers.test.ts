/**
 * The layering of src/ (DESIGN.md "Layers"): no import cycles, no import that crosses the
 * layers the wrong way beyond the commented allow-list in scripts/check-layers.mjs, and no
 * allow-list entry that outlived its crossing. Below, the checker itself on small trees.
 */
import { describe, expect, it } from "vitest";
import { ALLOWED, checkLayers, checkSources, importsOf } from "../scripts/check-layers.mjs";

describe("layers of src/", () => {
  it("has no cycle, no new crossing and no stale allowance", () => {
    const report = checkLayers();
    expect(report.violations, "imports that cross the layers (DESIGN.md): move the code, or (rarely) allow it with a reason").toEqual([]);
    expect(report.cycles, "import cycles").toEqual([]);
    expect(report.stale, "allow-list entries that match no import any more: delete them from scripts/check-layers.mjs").toEqual([]);
    expect(report.unresolved).toEqual([]);
  });

  it("gives every allowance a reason", () => {
    for (const entry of ALLOWED) expect(entry.reason.length).toBeGreaterThan(10);
  });
});

describe("the layering check", () => {
  const tree = (files: Record<string, string>) => new Map(Object.entries(files));

  it("refuses an import up the layers and names both ends", () => {
    const report = checkSources(
      tree({
        "ids.ts": "export type Oid = number;",
        "persistent/persistent.ts": 'import type { Oid } from "../ids.ts";',
        "codec/state.ts": 'import { Persistent } from "../persistent/persistent.ts";',
        "persistent/fields.ts": 'import { encode } from "../codec/state.ts";',
      }),
      [],
    );
    expect(report.violations).toHaveLength(1);
    expect(report.violations[0]).toMatch(/^persistent\/fields\.ts -> codec\/state\.ts: persistent imports codec/);
  });

  it("finds a cycle inside one layer, type-only imports included", () => {
    const report = checkSources(
      tree({
        "persistent/a.ts": 'import { b } from "./b.ts";',
        "persistent/b.ts": 'import type { C } from "./c.ts";',
        "persistent/c.ts": 'export { a } from "./a.ts";',
        "persistent/d.ts": 'import { a } from "./a.ts";',
      }),
      [],
    );
    expect(report.violations).toEqual([]);
    expect(report.cycles).toEqual(["persistent/a.ts persistent/b.ts persistent/c.ts"]);
  });

  it("lets loading/ name the connection's types but not load it", () => {
    const files = {
      "connection/connection.ts": "export class Connection {}",
      "loading/plan.ts": 'import type { Connection } from "../connection/connection.ts";',
    };
    expect(checkSources(tree(files), []).violations).toEqual([]);
    files["loading/plan.ts"] = 'import { type Connection } from "../connection/connection.ts";';
    expect(checkSources(tree(files), []).violations).toHaveLength(1);
  });

  it("keeps storages below the codec's envelope and the two server sides apart", () => {
    const report = checkSources(
      tree({
        "codec/record.ts": "",
        "codec/state.ts": "",
        "storage/storage.ts": 'import { readEnvelope } from "../codec/record.ts";',
        "storage/memory-storage.ts": 'import { decodeState } from "../codec/state.ts";',
        "storage/server/protocol.ts": 'import type { Tid } from "../storage.ts";',
        "storage/server/client-storage.ts": 'import "./protocol.ts";\nimport { x } from "./storage-server.ts";',
        "storage/server/storage-server.ts": 'import * as P from "./protocol.ts";\nimport "../storage.ts";',
      }),
      [],
    );
    expect(report.violations.map((v) => v.split(":")[0])).toEqual([
      "storage/memory-storage.ts -> codec/state.ts",
      "storage/server/client-storage.ts -> storage/server/storage-server.ts",
    ]);
  });

  it("holds cli and testing to the public API, package name included", () => {
    const report = checkSources(
      tree({
        "index.ts": 'export { DB } from "./connection/db.ts";',
        "connection/db.ts": "",
        "cli/info.ts": 'import { DB } from "amberdb";',
        "cli/serve.ts": 'import { DB } from "../connection/db.ts";',
      }),
      [],
    );
    expect(report.violations.map((v) => v.split(":")[0])).toEqual(["cli/serve.ts -> connection/db.ts"]);
  });

  it("reports allowances that match nothing, and honours the others", () => {
    const report = checkSources(
      tree({ "errors.ts": "", "ids.ts": 'import "./errors.ts";' }),
      [
        { from: "ids.ts", to: "errors.ts", reason: "a test" },
        { from: "errors.ts", to: "ids.ts", reason: "gone" },
      ],
    );
    expect(report.violations).toEqual([]);
    expect(report.stale).toEqual(["errors.ts -> ids.ts"]);
  });

  it("reads imports of every form and ignores comments and strings", () => {
    const src = [
      "/** Example:",
      ' import { DB } from "../connection/db.ts";',
      " */",
      '// import "./commented.ts";',
      'import type { A } from "./a.ts";',
      "import {",
      "  b,",
      "  type C,",
      '} from "./b.ts";',
      'export * from "./c.ts";',
      'export type { D } from "./d.ts";',
      'import "./side-effect.ts";',
      'const re = /import x from "y"/;',
      'const s = "import z from \'./z.ts\'";',
      'const m = await import("./dynamic.ts");',
      'new Worker(new URL("./worker.mjs", import.meta.url));',
    ].join("\n");
    expect(importsOf(src)).toEqual([
      { specifier: "./a.ts", typeOnly: true },
      { specifier: "./b.ts", typeOnly: false },
      { specifier: "./c.ts", typeOnly: false },
      { specifier: "./d.ts", typeOnly: true },
      { specifier: "./side-effect.ts", typeOnly: false },
      { specifier: "./dynamic.ts", typeOnly: false },
      { specifier: "./worker.mjs", typeOnly: false },
    ]);
  });
});
