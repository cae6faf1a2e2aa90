/**
 * Commit access to one embedded store is shared fairly between processes: six equal writer
 * processes committing small transactions in a loop each make at least a fifth of their
 * fair share (1/6) of the commits. Counts, not timings, are asserted. The figures, and the
 * hot spot where db.transact's retries let one writer run ahead, are in bench/README.md
 * (`tsx bench/commit-fairness.ts`).
 */
import { describe, expect, it } from "vitest";
import { measureFairness, type FairnessMode } from "./fixtures/commit-fairness.ts";

const WRITERS = 6;
const MS = 2500;

describe("commit fairness between processes on one embedded store", () => {
  const cases: Array<[FairnessMode, string]> = [
    ["storage", "objects of their own, straight on LmdbStorage (LMDB's write lock is the only arbiter)"],
    ["race", "one shared object on LmdbStorage, retried at once after a conflict"],
    ["counter", "one shared Counter through DB (conflicts merge inside the commit)"],
  ];
  for (const [mode, what] of cases) {
    it(`${mode}: ${what}`, async () => {
      const r = await measureFairness({ writers: WRITERS, ms: MS, mode });
      const shares = r.ofFairShare.map((x) => x.toFixed(2)).join(", ");
      expect(Math.min(...r.commits), `commits ${r.commits.join(", ")} (of fair share: ${shares})`).toBeGreaterThan(0);
      for (const x of r.ofFairShare) expect(x, `of fair share: ${shares}`).toBeGreaterThanOrEqual(0.2);
    }, 60_000);
  }
});
