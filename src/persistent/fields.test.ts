/**
 * Field accessors (fields.ts) against a stand-in for the connection (a Jar that counts its
 * calls): ghosts load on first touch, the first write of a transaction is reported once,
 * nested values handed out are reported, stored fields cannot be deleted, and fields added
 * in a transaction stay deletable until it commits (and go away when it aborts).
 */
import { describe, expect, it } from "vitest";
import {
  declaredState,
  dropAddedFields,
  fieldValues,
  giveAccessors,
  installFields,
  keepAddedFields,
} from "./fields.ts";
import { CHANGED, GHOST, Meta, Persistent, SAVED, makeGhost, metaOf, stateOf, type Jar } from "./persistent.ts";

class Item extends Persistent {
  name = "item";
  count = 0;
  tags: string[] = [];
}

class NeedsArgument extends Persistent {
  label: string;
  constructor(label: string) {
    super();
    if (typeof label !== "string") throw new TypeError("label required");
    this.label = label;
  }
}

/** A Jar whose ghosts load `records[oid]`, and which counts what the accessors report. */
function standIn(records: Record<number, Record<string, unknown>>) {
  const calls = { activate: 0, checkWrite: 0, changed: 0, handedOut: 0 };
  const jar: Jar = {
    owner: {},
    activate(obj, m) {
      calls.activate++;
      installFields(obj, m, structuredClone(records[m.oid]!));
      m.state = SAVED;
      m.watch = 1;
    },
    checkWrite(_obj, m) {
      calls.checkWrite++;
      if (m.className === "read-only") throw new Error("read-only view");
    },
    isDirty: () => false,
    changed(_obj, m) {
      calls.changed++;
      m.state = CHANGED;
    },
    handedOut() {
      calls.handedOut++;
    },
    refreshContainers() {},
    transactionNotes: () => new Map(),
  };
  const ghost = <T extends Persistent>(cls: new (...args: never[]) => T, oid: number, className = "t.Item"): T => {
    const m = new Meta();
    m.jar = jar;
    m.oid = oid;
    m.className = className;
    const obj = makeGhost(cls, m) as T;
    giveAccessors(obj, m);
    return obj;
  };
  return { jar, calls, ghost };
}

describe("field accessors", () => {
  it("give a ghost its class's declared fields without loading it", () => {
    const { calls, ghost } = standIn({ 1: { name: "a", count: 1, tags: [] } });
    const obj = ghost(Item, 1);
    expect(Object.keys(obj)).toEqual(["name", "count", "tags"]);
    expect(stateOf(obj)).toBe("ghost");
    expect(calls.activate).toBe(0);
    expect(obj.count).toBe(1);
    expect(calls.activate).toBe(1);
    expect(stateOf(obj)).toBe("saved");
    expect(obj.name).toBe("a");
    expect(calls.activate).toBe(1);
  });

  it("are own, enumerable, shared per class and field, and seen by spread and JSON", () => {
    const { ghost } = standIn({ 1: { name: "a", count: 1, tags: ["x"] }, 2: { name: "b", count: 2, tags: [] } });
    const a = ghost(Item, 1);
    const b = ghost(Item, 2);
    const da = Object.getOwnPropertyDescriptor(a, "count")!;
    const db = Object.getOwnPropertyDescriptor(b, "count")!;
    expect(da.enumerable).toBe(true);
    expect(da.configurable).toBe(false);
    expect(da.get).toBe(db.get);
    expect(da.set).toBe(db.set);
    expect({ ...a }).toEqual({ name: "a", count: 1, tags: ["x"] });
    expect(JSON.parse(JSON.stringify(b))).toMatchObject({ name: "b", count: 2, tags: [] });
  });

  it("report the first write of a transaction once, after checking that it may change", () => {
    const { calls, ghost } = standIn({ 1: { name: "a", count: 1, tags: [] } });
    const obj = ghost(Item, 1);
    obj.count = 2; // a ghost: loaded, checked, reported
    expect([calls.activate, calls.checkWrite, calls.changed]).toEqual([1, 1, 1]);
    expect(metaOf(obj).state).toBe(CHANGED);
    obj.count = 3;
    obj.name = "b";
    expect([calls.checkWrite, calls.changed]).toEqual([1, 1]); // the fast path
    expect(metaOf(obj).values).toEqual({ name: "b", count: 3, tags: [] });
  });

  it("refuse a write the connection refuses, and change nothing", () => {
    const { ghost } = standIn({ 1: { name: "a", count: 1, tags: [] } });
    const obj = ghost(Item, 1, "read-only");
    expect(obj.count).toBe(1);
    expect(() => {
      obj.count = 5;
    }).toThrow("read-only view");
    expect(obj.count).toBe(1);
    expect(metaOf(obj).state).toBe(SAVED);
  });

  it("report a nested mutable value handed out, not a primitive", () => {
    const { calls, ghost } = standIn({ 1: { name: "a", count: 1, tags: ["x"] } });
    const obj = ghost(Item, 1);
    void obj.name;
    void obj.count;
    expect(calls.handedOut).toBe(0);
    obj.tags.push("y");
    expect(calls.handedOut).toBe(1);
    void obj.tags; // once per transaction (watch is 0 now)
    expect(calls.handedOut).toBe(1);
    expect(metaOf(obj).values!.tags).toEqual(["x", "y"]);
  });

  it("refuse to delete a stored field", () => {
    const { ghost } = standIn({ 1: { name: "a", count: 1, tags: [] } });
    const obj = ghost(Item, 1) as unknown as Record<string, unknown>;
    expect(() => delete obj.count).toThrow(TypeError);
    expect(obj.count).toBe(1);
  });

  it("give fields a record has beyond the declared ones to that object only", () => {
    const { ghost } = standIn({ 1: { name: "a", count: 1, tags: [], color: "red" }, 2: { name: "b", count: 2, tags: [] } });
    const a = ghost(Item, 1);
    const b = ghost(Item, 2);
    void a.name;
    void b.name;
    expect(Object.keys(a)).toEqual(["name", "count", "tags", "color"]);
    expect(Object.keys(b)).toEqual(["name", "count", "tags"]);
    expect((a as unknown as { color: string }).color).toBe("red");
    expect(Object.hasOwn(b, "color")).toBe(false);
  });
});

describe("fields added in a transaction", () => {
  it("are reported as a change, deletable until commit, and fixed by it", () => {
    const { calls, ghost } = standIn({ 1: { name: "a", count: 1, tags: [] } });
    const obj = ghost(Item, 1) as Item & Record<string, unknown>;
    void obj.name;
    obj.color = "red";
    const m = metaOf(obj);
    expect(calls.changed).toBe(1);
    expect(m.added).toEqual(["color"]);
    expect(Object.getOwnPropertyDescriptor(obj, "color")!.configurable).toBe(true);
    expect(fieldValues(obj, m)).toEqual({ name: "a", count: 1, tags: [], color: "red" });

    keepAddedFields(obj, m); // the commit
    expect(m.added).toBeNull();
    expect(Object.getOwnPropertyDescriptor(obj, "color")!.configurable).toBe(false);
    expect(() => delete obj.color).toThrow(TypeError);
    expect(Object.keys(obj)).toEqual(["name", "count", "tags", "color"]);
  });

  it("deleted again before commit, are left out of the stored state", () => {
    const { ghost } = standIn({ 1: { name: "a", count: 1, tags: [] } });
    const obj = ghost(Item, 1) as Item & Record<string, unknown>;
    void obj.name;
    obj.color = "red";
    obj.size = 3;
    delete obj.color;
    const m = metaOf(obj);
    expect(fieldValues(obj, m)).toEqual({ name: "a", count: 1, tags: [], size: 3 });
    expect(m.added).toEqual(["size"]);
  });

  it("go away at abort", () => {
    const { ghost } = standIn({ 1: { name: "a", count: 1, tags: [] } });
    const obj = ghost(Item, 1) as Item & Record<string, unknown>;
    void obj.name;
    obj.color = "red";
    dropAddedFields(obj, metaOf(obj));
    expect(Object.hasOwn(obj, "color")).toBe(false);
    expect(Object.keys(obj)).toEqual(["name", "count", "tags"]);
    expect(metaOf(obj).added).toBeNull();
  });

  it("cannot be named __proto__", () => {
    const { ghost } = standIn({ 1: { name: "a", count: 1, tags: [] } });
    const obj = ghost(Item, 1) as unknown as Record<string, unknown>;
    void obj.name;
    expect(() => {
      obj["__proto__"] = { polluted: true };
    }).toThrow(/__proto__/);
    expect(Object.getPrototypeOf(obj)).toBe(Item.prototype);
  });
});

describe("declared state", () => {
  it("is the own state of an instance made by the constructor", () => {
    const defaults = declaredState(Item.prototype);
    expect(defaults).toEqual({ name: "item", count: 0, tags: [] });
  });

  it("is null for a class whose constructor needs arguments (no accessors, no defaults)", () => {
    expect(declaredState(NeedsArgument.prototype)).toBeNull();
    const m = new Meta();
    m.oid = 3;
    const ghost = makeGhost(NeedsArgument, m);
    giveAccessors(ghost, m);
    expect(Object.keys(ghost)).toEqual([]);
    expect(m.state).toBe(GHOST);
  });
});
