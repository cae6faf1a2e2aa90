import { describe, expect, it } from "vitest";
import { readEnvelope, recordRefs, writeEnvelope } from "./record.ts";
import { StorageError } from "../errors.ts";

const sample = {
  className: "shop.Customer",
  classVersion: 2,
  refOids: [5, 9],
  refPaths: ["orders", "friend"],
  refClasses: ["amber.PersistentList", "shop.Customer"],
  shared: true,
  state: new Uint8Array([0x81, 0xa1, 0x61, 0x01]),
};

describe("record envelope", () => {
  it("round-trips header and state", () => {
    const data = writeEnvelope(sample);
    const env = readEnvelope(data, 3);
    const { className, classVersion, refOids, refPaths, refClasses, shared } = env;
    expect({ className, classVersion, refOids, refPaths, refClasses, shared, state: [...env.state] }).toEqual({
      ...sample,
      state: [...sample.state],
    });
    expect(recordRefs(data)).toEqual([5, 9]);
  });

  it("detects any flipped byte and names the oid", () => {
    const data = writeEnvelope(sample);
    for (let i = 0; i < data.length; i++) {
      const bad = Uint8Array.from(data);
      bad[i] = bad[i]! ^ 0x10;
      expect(() => readEnvelope(bad, 42), `byte ${i}`).toThrow(StorageError);
      try {
        readEnvelope(bad, 42);
      } catch (err) {
        expect((err as StorageError).oid).toBe(42);
        expect((err as Error).message).toMatch(/object 42 is damaged/);
      }
    }
    const badSum = Uint8Array.from(data);
    badSum[badSum.length - 1] = badSum[badSum.length - 1]! ^ 1; // the stored checksum itself
    expect(() => readEnvelope(badSum, 1)).toThrow(/checksum mismatch/);
  });

  it("rejects truncated records", () => {
    const data = writeEnvelope(sample);
    expect(() => readEnvelope(data.subarray(0, 5), 7)).toThrow(/shorter than/);
    expect(() => readEnvelope(data.subarray(0, data.length - 1), 7)).toThrow(StorageError);
  });
});
