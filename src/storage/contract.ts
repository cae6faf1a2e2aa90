/**
 * The contract every storage passes: one suite, run by each storage's test file with a
 * factory for fresh, empty storages, and exported from `amberdb/testing` for the authors of
 * other storages. Every operation of the interface (storage.ts, its call protocol
 * included) is exercised through its public API only. A storage that cannot do something
 * declares it in `options.skip` with the reason, so an opt-out is visible in the test report
 * rather than silent.
 *
 * The test framework is a parameter, so amberdb depends on none: pass your runner's
 * `describe`, `it`, `expect` and `afterEach` (Vitest's or Jest's as they are).
 *
 *   import { afterEach, describe, expect, it } from "vitest";
 *   import { storageContract } from "amberdb/testing";
 *   storageContract("mine", () => MyStorage.open(tempPath()), { describe, it, expect, afterEach }, {
 *     reopen: (closed) => MyStorage.open(closed.url),      // persistence tests
 *     openAgain: (first) => MyStorage.open(first.url),     // several instances on one store
 *     skip: { undo: "keeps no history" },
 *   });
 *
 * The parts: contract-basics.ts, contract-commits.ts, contract-loads.ts,
 * contract-history.ts; what they share is in contract-kit.ts.
 */
import { basicCases } from "./contract-basics.ts";
import { commitCases } from "./contract-commits.ts";
import { historyCases } from "./contract-history.ts";
import type { ContractContext, ContractOptions, TestFramework } from "./contract-kit.ts";
import { request } from "./contract-kit.ts";
import { loadCases } from "./contract-loads.ts";
import type { Oid, Storage, Tid } from "./storage.ts";

export { fakeRecord, labelOf } from "./contract-kit.ts";
export type { ContractOptions, ContractPart, Matchers, TestFramework } from "./contract-kit.ts";

/**
 * Declare the contract suite for the storage `open` makes (a fresh, empty one per call;
 * each is closed after its test).
 */
export function storageContract(
  name: string,
  open: () => Promise<Storage>,
  framework: TestFramework,
  options: ContractOptions = {},
): void {
  if (typeof open !== "function") throw new TypeError("storageContract: open must be a function that makes a fresh storage");
  for (const key of ["describe", "it", "expect", "afterEach"] as const) {
    if (typeof framework?.[key] !== "function") {
      throw new TypeError(`storageContract: the test framework needs ${key} (pass { describe, it, expect, afterEach })`);
    }
  }
  const { describe, afterEach } = framework;
  const opened: Storage[] = [];
  const track = (s: Storage): Storage => {
    opened.push(s);
    return s;
  };
  const context: ContractContext = {
    t: framework,
    options,
    track,
    fresh: async () => track(await open()),
    async create(s: Storage, ...labels: string[]): Promise<{ oids: Oid[]; tid: Tid }> {
      const oids = await s.newOids(labels.length);
      const tid = await s.finish(request(oids.map((oid, i) => [oid, 0, labels[i]!])));
      return { oids, tid };
    },
    part(title, skipReason, body) {
      if (skipReason === undefined) describe(title, body);
      else if (describe.skip !== undefined) describe.skip(`${title} (skipped: ${skipReason})`, body);
      else describe(`${title} (skipped: ${skipReason})`, () => {});
    },
  };

  describe(`storage contract: ${name}`, () => {
    afterEach(async () => {
      for (const s of opened.splice(0).reverse()) await s.close();
    });
    basicCases(context);
    commitCases(context);
    loadCases(context);
    historyCases(context);
  });
}
