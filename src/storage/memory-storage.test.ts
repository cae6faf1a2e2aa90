import { afterEach, describe, expect, it } from "vitest";
import { storageContract } from "./contract.ts";
import { MemoryStorage } from "./memory-storage.ts";

storageContract("memory", async () => new MemoryStorage(), { describe, it, expect, afterEach });

describe("MemoryStorage", () => {
  it("is addressed as memory: and answers synchronously, with history", () => {
    const s = new MemoryStorage();
    expect(s.url).toBe("memory:");
    expect(s.capabilities).toEqual({ synchronous: true, history: true });
  });

  it("derives tids from the clock in microseconds", async () => {
    const s = new MemoryStorage();
    const before = Date.now() * 1000;
    const [oid] = s.newOidsSync(1);
    const tid = await s.finish({ records: [{ oid: oid!, serial: 0, data: new Uint8Array([1]) }], readCurrent: [] });
    expect(tid).toBeGreaterThanOrEqual(before);
    expect(tid).toBeLessThanOrEqual(Date.now() * 1000 + 1);
  });

  it("hands out oids above any oid a commit wrote", async () => {
    const s = new MemoryStorage();
    await s.finish({ records: [{ oid: 500, serial: 0, data: new Uint8Array([1]) }], readCurrent: [] });
    expect((await s.newOids(1))[0]).toBeGreaterThan(500);
  });
});
