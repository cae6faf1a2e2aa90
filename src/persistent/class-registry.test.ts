/**
 * The class registry: stored names, kinds, versions and aliases, and the TypeErrors that
 * name what is ambiguous (the refusal of two classes under one name is also in
 * test/objects.test.ts, through the public API).
 */
import { describe, expect, it } from "vitest";
import {
  classByName,
  infoOfClass,
  persistent,
  persistentInfo,
  registerAlias,
  registerClass,
  serializable,
} from "./class-registry.ts";
import { Persistent } from "./persistent.ts";

describe("registerClass", () => {
  it("registers a Persistent subclass as persistent and any other class as a value class", () => {
    class Doc extends Persistent {}
    class Money {}
    registerClass(Doc, "unit.reg.Doc", { version: 2 });
    registerClass(Money, "unit.reg.Money");
    expect(classByName("unit.reg.Doc")).toEqual({ name: "unit.reg.Doc", cls: Doc, kind: "persistent", version: 2 });
    expect(infoOfClass(Money)).toEqual({ name: "unit.reg.Money", cls: Money, kind: "value", version: 0 });
    expect(persistentInfo(new Doc()).name).toBe("unit.reg.Doc");
  });

  it("names a persistent class by its stored name in V8's messages (Symbol.toStringTag)", () => {
    class Tagged extends Persistent {}
    class Own extends Persistent {
      get [Symbol.toStringTag]() {
        return "mine";
      }
    }
    registerClass(Tagged, "unit.reg.Tagged");
    registerClass(Own, "unit.reg.Own");
    expect(Object.prototype.toString.call(new Tagged())).toBe("[object unit.reg.Tagged]");
    expect(Object.prototype.toString.call(new Own())).toBe("[object mine]");
  });

  it("allows the same registration again (a module loaded twice)", () => {
    class Again extends Persistent {}
    registerClass(Again, "unit.reg.Again");
    expect(() => registerClass(Again, "unit.reg.Again")).not.toThrow();
    expect(classByName("unit.reg.Again")?.cls).toBe(Again);
  });

  it("refuses what is not a class, an empty name and a version that is not a count", () => {
    class C extends Persistent {}
    expect(() => registerClass({} as never, "unit.reg.x")).toThrow(/expects a class, got an instance of Object/);
    expect(() => registerClass(C, "")).toThrow(/registerClass\(C\) needs a non-empty stored name, got string/);
    expect(() => registerClass(C, 7 as never)).toThrow(/non-empty stored name, got number 7/);
    for (const version of [-1, 1.5, NaN]) {
      expect(() => registerClass(C, "unit.reg.C", { version })).toThrow(/version must be a non-negative integer/);
    }
    expect(classByName("unit.reg.C")).toBeUndefined();
  });

  it("refuses a second class under a name, and a second name for a class", () => {
    class First extends Persistent {}
    class Second extends Persistent {}
    registerClass(First, "unit.reg.First");
    expect(() => registerClass(Second, "unit.reg.First")).toThrow(
      'cannot register class Second as "unit.reg.First": that name is already registered to class First',
    );
    expect(() => registerClass(First, "unit.reg.Renamed")).toThrow(
      'class First is already registered as "unit.reg.First"; cannot register it again as "unit.reg.Renamed"',
    );
    expect(classByName("unit.reg.Renamed")).toBeUndefined();
  });
});

describe("registerAlias", () => {
  it("loads an old name as the class, which keeps its own name", () => {
    class Current extends Persistent {}
    registerClass(Current, "unit.alias.Current");
    registerAlias("unit.alias.Old", Current);
    expect(classByName("unit.alias.Old")).toBe(classByName("unit.alias.Current"));
    expect(infoOfClass(Current)?.name).toBe("unit.alias.Current");
    expect(() => registerAlias("unit.alias.Old", Current)).not.toThrow();
  });

  it("refuses an unregistered class and a name taken by another class", () => {
    class Unregistered extends Persistent {}
    class Taken extends Persistent {}
    class Other extends Persistent {}
    registerClass(Taken, "unit.alias.Taken");
    registerClass(Other, "unit.alias.Other");
    expect(() => registerAlias("unit.alias.X", Unregistered)).toThrow(/class Unregistered is not registered; register it first/);
    expect(() => registerAlias("unit.alias.Taken", Other)).toThrow(/already registered to class Taken/);
  });
});

describe("decorators", () => {
  it("@persistent and @serializable register with options", () => {
    @persistent("unit.dec.Page", { version: 3 })
    class Page extends Persistent {}
    @serializable("unit.dec.Point")
    class Point {
      x = 0;
    }
    expect(infoOfClass(Page)).toMatchObject({ name: "unit.dec.Page", kind: "persistent", version: 3 });
    expect(infoOfClass(Point)).toMatchObject({ name: "unit.dec.Point", kind: "value" });
  });

  it("refuse the wrong kind of class", () => {
    class Plain {}
    class Stored extends Persistent {}
    expect(() => persistent("unit.dec.Plain")(Plain as never, {} as never)).toThrow(/class Plain must extend Persistent/);
    expect(() => serializable("unit.dec.Stored")(Stored as never, {} as never)).toThrow(/extends Persistent; use @persistent/);
  });
});

describe("persistentInfo", () => {
  it("names an unregistered class and how to register it", () => {
    class Loose extends Persistent {}
    expect(() => persistentInfo(new Loose())).toThrow(
      'class Loose is not registered: persistent classes need @persistent("name") or registerClass(Loose, "name")',
    );
  });

  it("finds the class through the prototype, not an own field named constructor", () => {
    class Shadowed extends Persistent {}
    registerClass(Shadowed, "unit.info.Shadowed");
    const obj = new Shadowed();
    Object.defineProperty(obj, "constructor", { value: Object, enumerable: true });
    expect(persistentInfo(obj).name).toBe("unit.info.Shadowed");
  });
});
