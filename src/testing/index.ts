/**
 * `amberdb/testing`: assertions about round trips, for tests that guard against "death by
 * round trips" (SPEC §3). They count over every connection of the process, so they work
 * whichever connection the code under test uses (don't call `conn.resetStats()` inside).
 *
 *   await expectRoundTrips(1, () => plan.realize());
 *   await expectConstantRoundTrips(
 *     (size) => makePageOf(size),                 // build: data of this size, cold
 *     (page) => renderPage(page),                 // run: the code under test
 *     [10, 100, 1000],
 *   );                                            // fails if the count grows with size
 *
 * Failure messages show the counts and the loads by class.
 *
 * Transaction boundaries count too. Every transaction begins by asking the storage what
 * changed (the storage contract's `changesSince`): one round trip on a local storage, and
 * on a server with the default `serverSync: true` (a LAST_TID request); none on a server
 * with `serverSync: false`, and none for the begin right after a server connection's own
 * commit. A transaction begins when a connection is opened or taken from the pool, at
 * `abort()` and after a commit; `conn.close()` (and `await using` leaving its block) begins
 * none and counts nothing (the next checkout begins its own transaction). A read-only
 * `db.transact(fn)` counts two besides its loads (open, the empty commit).
 */
import { accounting } from "../connection/connection.ts";

/**
 * The storage contract suite (src/storage/contract.ts): every storage passes it; run it on
 * yours with your test framework's describe/it/expect/afterEach.
 */
export { storageContract, fakeRecord, labelOf } from "../storage/contract.ts";
export type { ContractOptions, ContractPart, Matchers, TestFramework } from "../storage/contract.ts";

export interface RoundTripCount {
  roundTrips: number;
  loads: number;
  /** Objects loaded, by stored class name. */
  loadsByClass: Record<string, number>;
}

function totals(): { roundTrips: number; loads: number } {
  let roundTrips = 0;
  let loads = 0;
  for (const ref of accounting.live) {
    const conn = ref.deref();
    if (conn === undefined) {
      accounting.live.delete(ref);
      continue;
    }
    roundTrips += conn.stats.roundTrips;
    loads += conn.stats.loads;
  }
  return { roundTrips, loads };
}

/** Run `fn` and count the storage round trips and loads of every connection meanwhile. */
export async function countRoundTrips<T>(fn: () => T | Promise<T>): Promise<RoundTripCount & { result: T }> {
  const outer = accounting.byClass;
  const byClass = new Map<string, number>();
  accounting.byClass = byClass;
  const before = totals();
  let result: T;
  try {
    result = await fn();
  } finally {
    accounting.byClass = outer;
    if (outer !== null) for (const [k, v] of byClass) outer.set(k, (outer.get(k) ?? 0) + v);
  }
  const after = totals();
  return {
    result,
    roundTrips: after.roundTrips - before.roundTrips,
    loads: after.loads - before.loads,
    loadsByClass: Object.fromEntries([...byClass].sort((a, b) => b[1] - a[1])),
  };
}

const byClassText = (c: Record<string, number>): string => {
  const entries = Object.entries(c);
  return entries.length === 0 ? "none" : entries.map(([k, v]) => `${k} ${v}`).join(", ");
};

/** Assert that `fn` makes exactly `n` round trips; returns what `fn` returned. */
export async function expectRoundTrips<T>(n: number, fn: () => T | Promise<T>): Promise<T> {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`expectRoundTrips: n must be a non-negative integer, got ${String(n)}`);
  const c = await countRoundTrips(fn);
  if (c.roundTrips !== n) {
    throw new Error(`expected ${n} round trip${n === 1 ? "" : "s"}, got ${c.roundTrips} (${c.loads} objects loaded: ${byClassText(c.loadsByClass)})`);
  }
  return c.result;
}

/**
 * Assert that `run` makes the same number of round trips for every size: `build(size)`
 * makes the data (and whatever `run` needs) for one size, then `run` is counted. Returns
 * the count. The idea of Launchpad's `record_two_runs`.
 */
export async function expectConstantRoundTrips<C>(
  build: (size: number) => C | Promise<C>,
  run: (context: C) => unknown,
  sizes: readonly number[],
): Promise<number> {
  if (!Array.isArray(sizes) || sizes.length < 2) throw new RangeError("expectConstantRoundTrips needs at least two sizes");
  const counts: Array<{ size: number } & RoundTripCount> = [];
  for (const size of sizes) {
    const context = await build(size);
    const c = await countRoundTrips(() => run(context));
    counts.push({ size, roundTrips: c.roundTrips, loads: c.loads, loadsByClass: c.loadsByClass });
  }
  const first = counts[0]!;
  if (counts.every((c) => c.roundTrips === first.roundTrips)) return first.roundTrips;
  const lines = counts.map((c) => `  size ${c.size}: ${c.roundTrips} round trips, ${c.loads} loads (${byClassText(c.loadsByClass)})`);
  const worst = counts.reduce((a, b) => (b.roundTrips > a.roundTrips ? b : a));
  const extra = Object.entries(worst.loadsByClass)
    .map(([k, v]) => [k, v - (first.loadsByClass[k] ?? 0)] as const)
    .filter(([, d]) => d > 0)
    .map(([k, d]) => `${k} +${d}`);
  throw new Error(
    `round trips grow with the data:\n${lines.join("\n")}\n` +
      `extra loads at size ${worst.size} against size ${first.size}: ${extra.length === 0 ? "none" : extra.join(", ")}`,
  );
}
