import { describe, expect, it } from "vitest";
import { decodeState, encodeState, BrokenValue } from "./state.ts";
import { registerClass } from "../persistent/class-registry.ts";
import { Persistent } from "../persistent/persistent.ts";

class Money {
  constructor(
    public amount = 0,
    public currency = "EUR",
  ) {}
  total(): string {
    return `${this.amount} ${this.currency}`;
  }
}
registerClass(Money, "test.codec.Money");

class Node extends Persistent {
  name = "";
}
registerClass(Node, "test.codec.Node");

function roundTrip(state: Record<string, unknown>): Record<string, unknown> {
  const enc = encodeState("T", state, () => {});
  return decodeState(enc.state, enc.refs, enc.shared);
}

describe("state codec", () => {
  it("round-trips every stored value type of SPEC section 1", () => {
    const state = {
      nul: null,
      undef: undefined,
      t: true,
      f: false,
      int: 42,
      neg: -7,
      float: 1.25,
      nan: NaN,
      inf: Infinity,
      ninf: -Infinity,
      negZero: -0,
      big: 2 ** 53 - 1,
      str: "héllo ✓",
      bigint: 12345678901234567890123n,
      smallBigint: 5n,
      date: new Date(1_700_000_000_123),
      re: /ab+c/gi,
      u8: new Uint8Array([1, 2, 3]),
      buf: Buffer.from("xyz"),
      f64: new Float64Array([1.5, -2.5]),
      i32: new Int32Array([-1, 2]),
      u16: new Uint16Array([65535]),
      obj: { a: 1, nested: { b: [1, 2, { c: "d" }] } },
      arr: [1, "two", [3]],
      map: new Map<unknown, unknown>([
        ["k", 1],
        [2, { x: 1 }],
      ]),
      set: new Set([1, "a"]),
    };
    const back = roundTrip(state);
    expect(back).toEqual(state);
    expect(Object.is(back.negZero, -0)).toBe(true);
    expect(typeof back.bigint).toBe("bigint");
    expect(typeof back.smallBigint).toBe("bigint");
    expect(back.map).toBeInstanceOf(Map);
    expect(back.set).toBeInstanceOf(Set);
    expect(back.f64).toBeInstanceOf(Float64Array);
    expect(back.date).toBeInstanceOf(Date);
    expect((back.re as RegExp).flags).toBe("gi");
    expect(Buffer.isBuffer(back.buf) || back.buf instanceof Uint8Array).toBe(true);
  });

  it("keeps -0 inside nested containers", () => {
    const back = roundTrip({ a: [0, -0, { z: -0 }] }) as { a: [number, number, { z: number }] };
    expect(Object.is(back.a[0], 0)).toBe(true);
    expect(Object.is(back.a[1], -0)).toBe(true);
    expect(Object.is(back.a[2].z, -0)).toBe(true);
  });

  it("preserves shared references and cycles among plain values", () => {
    const shared = { x: 1 };
    const cyc: Record<string, unknown> = { name: "c" };
    cyc.self = cyc;
    expect(encodeState("T", { a: { x: 1 }, b: [1] }, () => {}).shared).toBe(false);
    expect(encodeState("T", { a: shared, b: shared }, () => {}).shared).toBe(true);
    const back = roundTrip({ a: shared, b: [shared], m: new Map([["s", shared]]), cyc }) as any;
    expect(back.a).toBe(back.b[0]);
    expect(back.m.get("s")).toBe(back.a);
    expect(back.cyc.self).toBe(back.cyc);
  });

  it("restores registered value classes with their prototype, shared", () => {
    const m = new Money(5, "USD");
    const back = roundTrip({ price: m, again: m, list: [new Money(1)] }) as any;
    expect(back.price).toBeInstanceOf(Money);
    expect(back.price.total()).toBe("5 USD");
    expect(back.again).toBe(back.price);
    expect(back.list[0]).toBeInstanceOf(Money);
  });

  it("collects references with the top-level property that holds them", () => {
    const a = new Node();
    const b = new Node();
    const enc = encodeState("T", { first: a, many: [b, a], byKey: new Map([["k", b]]) }, () => {});
    expect(enc.refs).toEqual([a, b, a, b]);
    expect(enc.refPaths).toEqual(["first", "many", "many", "byKey"]);
    const back = decodeState(enc.state, enc.refs, enc.shared) as any;
    expect(back.first).toBe(a);
    expect(back.many[0]).toBe(b);
    expect(back.many[1]).toBe(a);
    expect(back.byKey.get("k")).toBe(b);
  });

  it("notes whether a state holds nested containers", () => {
    expect(encodeState("T", { a: 1, s: "x", r: new Node() }, () => {}).containers).toBe(false);
    expect(encodeState("T", { a: [1] }, () => {}).containers).toBe(true);
  });

  it("refuses functions, symbols, weak collections and unregistered classes, naming the path", () => {
    class Unregistered {}
    expect(() => encodeState("Customer", { orders: [1, 2, 3, { callback: () => 1 }] }, () => {})).toThrow(
      new TypeError("Customer.orders[3].callback: functions cannot be stored"),
    );
    expect(() => encodeState("Customer", { tag: Symbol("x") }, () => {})).toThrow(/Customer\.tag: symbols cannot be stored/);
    expect(() => encodeState("C", { w: new WeakMap() }, () => {})).toThrow(/C\.w: WeakMap cannot be stored/);
    expect(() => encodeState("C", { deep: { "odd key": new Unregistered() } }, () => {})).toThrow(
      /C\.deep\["odd key"\]: instances of class Unregistered cannot be stored: it is not registered/,
    );
    expect(() => encodeState("C", { m: new Map([["k", () => 1]]) }, () => {})).toThrow(/C\.m\[Map key "k"\]: functions/);
  });

  it("keeps values of unknown classes as BrokenValue and writes them back byte-for-byte", () => {
    class Temp {
      a = 1;
      b = [1, 2];
    }
    registerClass(Temp, "test.codec.TempThatWillBeUnknown");
    const original = encodeState("T", { v: new Temp() }, () => {}).state;
    // Simulate a process that does not know the class: decode with a renamed registration.
    const renamed = Buffer.from(original).toString("latin1").replace("test.codec.TempThatWillBeUnknown", "test.codec.TempThatWillBeUnknowX");
    const bytes = Buffer.from(renamed, "latin1");
    const back = decodeState(bytes, [], false) as { v: BrokenValue };
    expect(back.v).toBeInstanceOf(BrokenValue);
    expect(back.v.className).toBe("test.codec.TempThatWillBeUnknowX");
    expect(back.v.fields).toEqual({ a: 1, b: [1, 2] });
    const again = encodeState("T", back, () => {}).state;
    expect(Buffer.compare(Buffer.from(again), bytes)).toBe(0);
  });
});
