import { describe, expect, it } from "vitest";
import { MemoryStorage } from "./memory-storage.ts";
import { SYNC_MEMBERS, checkStorage, hasSyncAccess, type Storage } from "./storage.ts";

/** The members of a MemoryStorage as a plain object, so that some can be taken away. */
function membersOf(s: MemoryStorage): Record<PropertyKey, unknown> {
  const out: Record<PropertyKey, unknown> = { url: s.url, id: s.id, capabilities: { ...s.capabilities } };
  for (let proto = Object.getPrototypeOf(s); proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
    for (const key of Reflect.ownKeys(proto)) {
      const value = Reflect.get(s, key);
      if (typeof value === "function" && key !== "constructor" && !(key in out)) out[key] = value.bind(s);
    }
  }
  return out;
}

const failure = (value: unknown, context?: string): TypeError => {
  try {
    checkStorage(value, context);
  } catch (err) {
    expect(err).toBeInstanceOf(TypeError);
    return err as TypeError;
  }
  throw new Error("checkStorage accepted it");
};

describe("checkStorage", () => {
  it("accepts the storages, and a complete plain object", () => {
    const s = new MemoryStorage();
    checkStorage(s);
    expect(hasSyncAccess(s)).toBe(true);
    checkStorage(membersOf(s));
  });

  it("accepts a storage without the synchronous members that says so", () => {
    const m = membersOf(new MemoryStorage());
    for (const name of SYNC_MEMBERS) delete m[name];
    m.capabilities = { synchronous: false, history: true };
    checkStorage(m);
    expect(hasSyncAccess(m as unknown as Storage)).toBe(false);
  });

  it("names every missing member in one TypeError", () => {
    const m = membersOf(new MemoryStorage("memory:x"));
    delete m.vote;
    delete m.finish;
    delete m.id;
    delete m[Symbol.asyncDispose];
    expect(failure(m, "DB.open()").message).toBe(
      'DB.open(): Object "memory:x" is not a complete Storage: missing id (a string), vote(), finish(), [Symbol.asyncDispose]()',
    );
  });

  it("refuses part of the synchronous group, naming what is there and what is not", () => {
    const m = membersOf(new MemoryStorage());
    delete m.loadOneSync;
    delete m.changesSinceSync;
    expect(failure(m).message).toContain(
      "the synchronous members come together: it has loadSync(), newOidsSync() but lacks loadOneSync(), changesSinceSync()",
    );
  });

  it("refuses capabilities that disagree with the members", () => {
    const m = membersOf(new MemoryStorage());
    m.capabilities = { synchronous: false, history: true };
    expect(failure(m).message).toContain("capabilities.synchronous is false, but it has loadSync(), loadOneSync(), newOidsSync(), changesSinceSync(): say true");
    for (const name of SYNC_MEMBERS) delete m[name];
    m.capabilities = { synchronous: true, history: "yes" };
    const message = failure(m).message;
    expect(message).toContain("capabilities.synchronous is true, but it lacks loadSync()");
    expect(message).toContain("capabilities.history must be a boolean, got string");
  });

  it("refuses what is not an object at all", () => {
    expect(failure(null).message).toBe("storage: expected a Storage object, got null");
    expect(failure("memory:", "DB.open()").message).toBe("DB.open(): expected a Storage object, got string");
    expect(failure({}).message).toMatch(/^storage: Object is not a complete Storage: missing url \(a string\), id \(a string\), capabilities/);
  });
});
