/**
 * What the parts of the storage contract (contract-*.ts) share: the test framework it is
 * given, the options a storage declares, record fixtures, and the per-suite context.
 * contract.ts is the entry; see it for usage.
 *
 * The framework is passed in, not imported: amberdb does not depend on a test runner, and
 * the suite runs under vitest, jest, or anything with the same `describe`, `it`, `expect`
 * and `afterEach`. The types below name only what the suite uses.
 *
 * @internal
 */
import { FanOut, readEnvelope, writeEnvelope } from "../codec/record.ts";
import type { CommitRequest, Oid, Storage, StoredRecord, Tid } from "./storage.ts";

type Constructor = abstract new (...args: never[]) => unknown;
type ThrowExpectation = string | RegExp | Constructor | Error;

/** The matchers the suite uses (Jest's and Vitest's names and meanings). */
export interface Matchers {
  toBe(expected: unknown): void;
  toEqual(expected: unknown): void;
  toMatchObject(expected: object): void;
  toBeInstanceOf(expected: Constructor): void;
  toBeGreaterThan(expected: number): void;
  toBeGreaterThanOrEqual(expected: number): void;
  toBeLessThanOrEqual(expected: number): void;
  toHaveLength(expected: number): void;
  toContain(expected: unknown): void;
  toBeNull(): void;
  toThrow(expected?: ThrowExpectation): void;
  readonly not: Matchers;
  readonly rejects: {
    toThrow(expected?: ThrowExpectation): Promise<void>;
    toBeInstanceOf(expected: Constructor): Promise<void>;
    toMatchObject(expected: object): Promise<void>;
  };
}

/** `describe`, `it`, `expect` and `afterEach` of the test framework that runs the suite. */
export interface TestFramework {
  describe: ((name: string, body: () => void) => void) & { skip?: (name: string, body: () => void) => void };
  it: (name: string, test: () => Promise<void> | void, timeout?: number) => void;
  /** The second argument, a message shown on failure, is optional (Jest ignores it). */
  expect: (actual: unknown, message?: string) => Matchers;
  afterEach: (hook: () => Promise<void> | void) => void;
}

/** Parts of the contract a storage may opt out of, each with its reason. */
export type ContractPart = "history" | "undo" | "synchronous" | "resolveInFinish" | "planMaxBytes";

export interface ContractOptions {
  /** Open the same data again after `closed` was closed; enables the persistence tests. */
  reopen?: (closed: Storage) => Promise<Storage>;
  /**
   * Open a second instance on the same data while `first` stays open (as another process
   * would); enables the tests of several instances. A memory storage has none.
   */
  openAgain?: (first: Storage) => Promise<Storage>;
  /**
   * Opt-outs, each with its reason, shown in the test report: "history" (no old
   * revisions), "undo", "synchronous" (no SyncAccess members), "resolveInFinish" (a
   * remote storage, which cannot call `finish`'s `resolve` and raises ConflictError),
   * "planMaxBytes" (`loadPlan` does not enforce `options.maxBytes`: a known gap, not a
   * choice; say where it is to be fixed).
   */
  skip?: Partial<Record<ContractPart, string>>;
}

/** Realistic record bytes: an envelope whose state is the UTF-8 of `label`. */
export function fakeRecord(label: string, refOids: Oid[] = [], refPaths?: string[]): Uint8Array {
  return writeEnvelope({
    className: "T",
    classVersion: 0,
    refOids,
    refPaths: refPaths ?? refOids.map((_, i) => `ref${i}`),
    refClasses: refOids.map(() => "T"),
    state: new TextEncoder().encode(label),
  });
}

/** A collection record whose references are its items (plans fan out through it). */
export function fakeCollection(className: string, items: Oid[], fanOut: number = FanOut.ITEMS): Uint8Array {
  return writeEnvelope({
    className,
    classVersion: 0,
    refOids: items,
    refPaths: items.map(() => "items"),
    refClasses: items.map(() => "T"),
    state: new TextEncoder().encode(className),
    fanOut,
  });
}

/** The label of a record built by `fakeRecord`, or null for a missing one. */
export function labelOf(record: StoredRecord | null | undefined): string | null {
  if (record === null || record === undefined) return null;
  return new TextDecoder().decode(readEnvelope(record.data, record.oid).state);
}

/** A commit request from `[oid, serial read, label]` triples and `[oid, serial]` pairs. */
export function request(
  records: Array<[Oid, Tid, string]>,
  readCurrent: Array<[Oid, Tid]> = [],
  meta?: Record<string, string>,
): CommitRequest {
  return {
    records: records.map(([oid, serial, label]) => ({ oid, serial, data: fakeRecord(label) })),
    readCurrent: readCurrent.map(([oid, serial]) => ({ oid, serial })),
    ...(meta === undefined ? {} : { meta }),
  };
}

export const sorted = (oids: readonly Oid[] | null): Oid[] | null => (oids === null ? null : [...oids].sort((a, b) => a - b));

/** What a failed promise rejected with (undefined if it resolved). */
export const failureOf = (promise: Promise<unknown>): Promise<unknown> => promise.then(() => undefined, (e: unknown) => e);

/** Everything a part of the suite needs. */
export interface ContractContext {
  t: TestFramework;
  options: ContractOptions;
  /** A fresh, empty storage, closed after the test. */
  fresh(): Promise<Storage>;
  /** Track a storage opened otherwise (reopen, openAgain), closed after the test. */
  track(s: Storage): Storage;
  /** Create objects with the given labels in one transaction: their oids and its tid. */
  create(s: Storage, ...labels: string[]): Promise<{ oids: Oid[]; tid: Tid }>;
  /** `describe` a part; with a reason, report it skipped instead (the reason in its title). */
  part(title: string, skipReason: string | undefined, body: () => void): void;
}
