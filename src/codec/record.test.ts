import { describe, expect, it } from "vitest";
import { crc32 } from "node:zlib";
import { FanOut, readEnvelope, recordRefs, writeEnvelope } from "./record.ts";
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

describe("record formats", () => {
  /** `data` rewritten as format 3 (no fan-out bits), checksum recomputed. */
  function asFormat3(data: Uint8Array): Uint8Array {
    const out = Buffer.from(data);
    out[1] = 3;
    const hlen = out.readUInt32BE(2);
    let pos = 6;
    while (out[pos]! & 0x80) pos++; // classVersion varint
    pos++;
    out[pos] = out[pos]! & 1; // flags: the shared bit only
    void hlen;
    out.writeUInt32LE(crc32(out.subarray(0, out.length - 4)), out.length - 4);
    return out;
  }

  it("writes and reads the fan-out bits (how loading plans treat the references)", () => {
    for (const fanOut of [FanOut.NONE, FanOut.ITEMS, FanOut.PIECES]) {
      const env = readEnvelope(writeEnvelope({ ...sample, fanOut }));
      expect(env.fanOut).toBe(fanOut);
      expect(env.shared).toBe(true);
    }
  });

  it("reads format 3 records, taking the fan-out of amberdb's collections from the class name", () => {
    const list = asFormat3(writeEnvelope({ ...sample, className: "amber.PersistentList", fanOut: FanOut.ITEMS }));
    const bucket = asFormat3(writeEnvelope({ ...sample, className: "amber.BTreeBucket", fanOut: FanOut.PIECES }));
    const plain = asFormat3(writeEnvelope({ ...sample, fanOut: FanOut.ITEMS }));
    expect(readEnvelope(list).fanOut).toBe(FanOut.ITEMS);
    expect(readEnvelope(bucket).fanOut).toBe(FanOut.PIECES);
    expect(readEnvelope(plain).fanOut).toBe(FanOut.NONE);
    expect(recordRefs(list)).toEqual([5, 9]);
  });

  it("refuses other formats with a clear error naming the formats it reads", () => {
    const data = Buffer.from(writeEnvelope(sample));
    data[1] = 9;
    expect(() => readEnvelope(data, 7)).toThrow(StorageError);
    expect(() => readEnvelope(data, 7)).toThrow(/record format 9 .*formats 3 and 4/);
  });
});
