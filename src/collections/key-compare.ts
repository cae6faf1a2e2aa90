/**
 * BTree keys: which values may be keys, and their total order.
 *
 * A key is a number (not NaN), a bigint, a string, a valid `Date`, or an array of keys
 * (compared element by element; a proper prefix sorts first). The order:
 *
 *   - numbers and bigints compare numerically with each other (`1` and `1n` are the same
 *     key, and so are `0` and `-0`); -Infinity and Infinity are keys;
 *   - strings compare by UTF-16 code units (the order of `<` and of `Array.prototype.sort`);
 *   - Dates compare by their time value;
 *   - across kinds: numbers/bigints < strings < Dates < arrays.
 *
 * Anything else (NaN, an invalid Date, undefined, null, booleans, symbols, functions, plain
 * or persistent objects) is not a key: `checkKey` throws a TypeError naming what it got.
 * Keys are compared often, so `compareKeys` assumes valid keys; callers check a key once
 * where it enters the tree (set, get, has, delete, range bounds).
 */
import { isPersistent } from "../persistent/persistent.ts";

/** A BTree key (see the module comment for the order). */
export type BTreeKey = number | bigint | string | Date | readonly BTreeKey[];

const NUMERIC = 0;
const STRING = 1;
const DATE = 2;
const ARRAY = 3;

function rank(key: unknown): number {
  switch (typeof key) {
    case "number":
    case "bigint":
      return NUMERIC;
    case "string":
      return STRING;
    default:
      return key instanceof Date ? DATE : ARRAY;
  }
}

/** Compare two valid keys: negative, zero (the same key) or positive. */
export function compareKeys(a: unknown, b: unknown): number {
  // The common cases first: two numbers, two strings.
  if (typeof a === "number" && typeof b === "number") return a < b ? -1 : a > b ? 1 : 0;
  if (typeof a === "string" && typeof b === "string") return a < b ? -1 : a > b ? 1 : 0;
  const ra = rank(a);
  const rb = rank(b);
  if (ra !== rb) return ra - rb;
  switch (ra) {
    case NUMERIC:
      // Mixed number/bigint comparison with < and > is exact in JavaScript.
      return (a as number) < (b as number) ? -1 : (a as number) > (b as number) ? 1 : 0;
    case DATE: {
      const ta = (a as Date).getTime();
      const tb = (b as Date).getTime();
      return ta < tb ? -1 : ta > tb ? 1 : 0;
    }
    case ARRAY: {
      const x = a as readonly unknown[];
      const y = b as readonly unknown[];
      const n = Math.min(x.length, y.length);
      for (let i = 0; i < n; i++) {
        const c = compareKeys(x[i], y[i]);
        if (c !== 0) return c;
      }
      return x.length - y.length;
    }
    default:
      return 0;
  }
}

/** Throw a TypeError unless `key` is a valid BTree key; `what` names it in the message. */
export function checkKey(key: unknown, what = "key"): void {
  const problem = keyProblem(key, "");
  if (problem !== null) {
    throw new TypeError(
      `BTree ${what} must be a number (not NaN), bigint, string, Date or an array of these; got ${problem}`,
    );
  }
}

/** What is wrong with `key` (the offending value, and where inside an array), or null. */
function keyProblem(key: unknown, at: string): string | null {
  const where = at === "" ? "" : ` at ${at}`;
  switch (typeof key) {
    case "number":
      return Number.isNaN(key) ? `NaN${where}` : null;
    case "bigint":
    case "string":
      return null;
    case "object":
      if (key === null) return `null${where}`;
      if (key instanceof Date) return Number.isNaN(key.getTime()) ? `an invalid Date${where}` : null;
      if (Array.isArray(key)) {
        for (let i = 0; i < key.length; i++) {
          const p = keyProblem(key[i], `${at}[${i}]`);
          if (p !== null) return p;
        }
        return null;
      }
      return `${describeObject(key)}${where}`;
    case "undefined":
      return `undefined${where}`;
    case "function":
      return `a function${where}`;
    case "symbol":
      return `a symbol${where}`;
    default:
      return `a ${typeof key} (${String(key)})${where}`;
  }
}

function describeObject(obj: object): string {
  if (isPersistent(obj)) return `a persistent object (${obj.constructor.name})`;
  const name = (obj.constructor as { name?: unknown } | undefined)?.name;
  if (typeof name !== "string" || name === "" || name === "Object") return "a plain object";
  return `an instance of ${name}`;
}

/**
 * A copy of a key: Dates and arrays are copied (recursively), primitives returned as they
 * are. Used both ways: a key entering the tree is stored as a copy, so that the caller
 * changing its own Date or array afterwards cannot break the order inside a bucket; and a
 * key handed out (iteration, `minKey`, `maxKey`) is a copy, so that changing it cannot
 * change the stored key.
 */
export function ownKey<K>(key: K): K {
  if (typeof key !== "object") return key;
  if (key instanceof Date) return new Date(key.getTime()) as K;
  return (key as unknown as unknown[]).map(ownKey) as K;
}
