import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { PersistentMap } from "../persistent/persistent-map.ts";
import { checkKey, compareKeys, ownKey, type BTreeKey } from "./key-compare.ts";

const sign = (n: number): number => Math.sign(n) + 0; // + 0: never -0

describe("compareKeys", () => {
  it("orders numbers numerically, with -0 and 0 the same key and infinities at the ends", () => {
    expect(sign(compareKeys(1, 2))).toBe(-1);
    expect(sign(compareKeys(2, 1))).toBe(1);
    expect(compareKeys(-0, 0)).toBe(0);
    expect(sign(compareKeys(-Infinity, -1e308))).toBe(-1);
    expect(sign(compareKeys(Infinity, Number.MAX_VALUE))).toBe(1);
    expect([10, 9, 1, -5, 2.5].sort(compareKeys)).toEqual([-5, 1, 2.5, 9, 10]);
  });

  it("compares bigints and numbers with each other numerically", () => {
    expect(compareKeys(1, 1n)).toBe(0);
    expect(sign(compareKeys(1.5, 2n))).toBe(-1);
    expect(sign(compareKeys(2n, 1.5))).toBe(1);
    expect(sign(compareKeys(2n ** 64n, Number.MAX_SAFE_INTEGER))).toBe(1);
    expect(sign(compareKeys(2n ** 64n, Infinity))).toBe(-1);
    expect(sign(compareKeys(-(2n ** 64n), -Infinity))).toBe(1);
    expect([3n, 1, 2n, 0.5].sort(compareKeys)).toEqual([0.5, 1, 2n, 3n]);
  });

  it("orders strings by UTF-16 code units, like the default sort", () => {
    const words = ["b", "a", "", "ab", "B", "é", "\u{1F600}", "\uFFFF"];
    expect([...words].sort(compareKeys)).toEqual([...words].sort());
  });

  it("orders Dates by time", () => {
    const a = new Date("2020-01-01");
    const b = new Date("2021-01-01");
    expect(sign(compareKeys(a, b))).toBe(-1);
    expect(compareKeys(a, new Date(a.getTime()))).toBe(0);
  });

  it("orders arrays element-wise, a proper prefix first", () => {
    expect(sign(compareKeys([1, "a"], [1, "b"]))).toBe(-1);
    expect(sign(compareKeys([1], [1, 0]))).toBe(-1);
    expect(sign(compareKeys([], [0]))).toBe(-1);
    expect(sign(compareKeys([2], [1, 9]))).toBe(1);
    expect(compareKeys([1, [2, "x"]], [1n, [2, "x"]])).toBe(0);
  });

  it("orders kinds: numbers and bigints < strings < Dates < arrays", () => {
    const keys: BTreeKey[] = [[0], new Date(0), "0", 0n, [], "", 1e300];
    expect(keys.sort(compareKeys)).toEqual([0n, 1e300, "", "0", new Date(0), [], [0]]);
  });

  const key: fc.Arbitrary<BTreeKey> = fc.letrec<{ key: BTreeKey }>((tie) => ({
    key: fc.oneof(
      { depthSize: "small" },
      fc.integer({ min: -5, max: 5 }),
      fc.double({ noNaN: true }),
      fc.bigInt({ min: -5n, max: 5n }),
      fc.string({ maxLength: 3 }),
      fc.date({ noInvalidDate: true }),
      fc.array(tie("key"), { maxLength: 3 }),
    ),
  })).key;

  it("is a total order (antisymmetric and transitive)", () => {
    fc.assert(
      fc.property(key, key, key, (a, b, c) => {
        expect(sign(compareKeys(a, b))).toBe(0 - sign(compareKeys(b, a)));
        expect(compareKeys(a, a)).toBe(0);
        if (compareKeys(a, b) <= 0 && compareKeys(b, c) <= 0) expect(compareKeys(a, c)).toBeLessThanOrEqual(0);
        if (compareKeys(a, b) === 0) expect(sign(compareKeys(a, c))).toBe(sign(compareKeys(b, c)));
      }),
      { numRuns: 2000 },
    );
  });

  it("accepts every generated key", () => {
    fc.assert(fc.property(key, (k) => checkKey(k)));
  });
});

describe("checkKey", () => {
  const bad: Array<[unknown, string]> = [
    [Number.NaN, "got NaN"],
    [undefined, "got undefined"],
    [null, "got null"],
    [true, "got a boolean (true)"],
    [{}, "got a plain object"],
    [new Map(), "got an instance of Map"],
    [Symbol("s"), "got a symbol"],
    [() => 1, "got a function"],
    [new Date(Number.NaN), "got an invalid Date"],
    [new PersistentMap(), "got a persistent object (PersistentMap)"],
    [[1, [2, false]], "got a boolean (false) at [1][1]"],
    [["a", null], "got null at [1]"],
  ];
  for (const [value, message] of bad) {
    it(`rejects ${message.slice(4)} with a TypeError naming it`, () => {
      expect(() => checkKey(value)).toThrow(TypeError);
      expect(() => checkKey(value)).toThrow(message);
    });
  }

  it("accepts numbers, bigints, strings, Dates and nested arrays of these", () => {
    for (const k of [0, -0, Infinity, -Infinity, 1n, "", "x", new Date(0), [], [1, ["a", [new Date(1), 2n]]]]) {
      expect(() => checkKey(k)).not.toThrow();
    }
  });
});

describe("ownKey", () => {
  it("copies Dates and arrays (deeply) and returns other keys as they are", () => {
    const d = new Date(5);
    const arr = [1, [d, "x"]] as const;
    const copy = ownKey(arr);
    expect(copy).toEqual(arr);
    expect(copy).not.toBe(arr);
    expect(copy[1]).not.toBe(arr[1]);
    expect(copy[1][0]).not.toBe(d);
    expect(ownKey("s")).toBe("s");
    expect(ownKey(3n)).toBe(3n);
  });
});
