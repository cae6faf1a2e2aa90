/**
 * The wire protocol as an inverse pair: every frame kind of the table at the top of
 * protocol.ts, written with FrameWriter and read back with FrameReader (after a trip
 * through FrameSplitter in small chunks), with representative values: nulls, empty lists,
 * the largest oids and tids, metadata and none. Errors go through encodeError/decodeError.
 */
import { describe, expect, it } from "vitest";
import { ConflictError, ProtocolError, StorageError, type ConflictDetail } from "../../errors.ts";
import type { Changes, CommitRequest, PlanStep, StorageConflict, StoredRecord, TransactionInfo } from "../storage.ts";
import {
  CLIENT_MAX_FRAME,
  Cmd,
  FrameReader,
  FrameSplitter,
  FrameWriter,
  HEADER,
  PROTOCOL_VERSION,
  Reply,
  commandName,
  decodeError,
  encodeError,
  type Hello,
  type HelloReply,
} from "./protocol.ts";

const MAX = Number.MAX_SAFE_INTEGER;
const bytes = (...b: number[]) => new Uint8Array(b);
const rec = (oid: number, serial: number, data: Uint8Array): StoredRecord => ({ oid, serial, data });
const plain = (v: Uint8Array | null) => (v === null ? null : [...v]);
const plainRecords = (list: ReadonlyArray<{ oid: number; serial: number; data: Uint8Array | null } | null>) =>
  list.map((r) => (r === null ? null : { oid: r.oid, serial: r.serial, data: plain(r.data) }));

/** Every frame through a splitter fed `chunk` bytes at a time: the frames come out whole. */
function transmit(frames: Buffer[], chunk: number): FrameReader[] {
  const stream = Buffer.concat(frames);
  const splitter = new FrameSplitter(CLIENT_MAX_FRAME);
  const out: Buffer[] = [];
  for (let i = 0; i < stream.length; i += chunk) out.push(...splitter.push(stream.subarray(i, i + chunk)));
  expect(splitter.pending).toBe(0);
  return out.map((f) => new FrameReader(f));
}

/** One frame, written and read back (in chunks of 3 bytes). */
function roundTrip(id: number, kind: number, write: (w: FrameWriter) => void): FrameReader {
  const w = new FrameWriter(id, kind, 1); // capacity 1: every write grows the buffer
  write(w);
  const [r] = transmit([Buffer.from(w.finish())], 3);
  expect(r!.id).toBe(id);
  expect(r!.kind).toBe(kind);
  return r!;
}

const records: Array<StoredRecord | null> = [rec(1, 10, bytes(1, 2, 3)), null, rec(MAX, MAX, bytes()), rec(0, 1, new Uint8Array(300).fill(7))];
const request: CommitRequest = {
  records: [rec(5, 0, bytes(9)), rec(6, 42, bytes(0xc1, 0xff))],
  readCurrent: [{ oid: 7, serial: 41 }],
  meta: { user: "ann", note: "ünïcode ✓" },
};

describe("protocol frames: commands", () => {
  it("HELLO with every field, and with the required ones only", () => {
    const full: Hello = { version: PROTOCOL_VERSION, token: "secret", database: "shop", since: 123, create: false };
    for (const hello of [full, { version: PROTOCOL_VERSION, database: "" }]) {
      const r = roundTrip(1, Cmd.HELLO, (w) => w.msgpack(hello));
      expect(r.msgpack()).toEqual(hello);
      r.end();
    }
  });

  it("LAST_TID (no payload)", () => {
    roundTrip(2, Cmd.LAST_TID, () => {}).end();
  });

  it("LOAD: a tid and oids (none, and many)", () => {
    for (const oids of [[], [0, 1, MAX, ...Array.from({ length: 100 }, (_, i) => i * 1000)]]) {
      const r = roundTrip(3, Cmd.LOAD, (w) => w.num(MAX).nums(oids));
      expect(r.id53("tid")).toBe(MAX);
      expect(r.nums()).toEqual(oids);
      r.end();
    }
  });

  it("LOAD_CLOSURE: snapshot, start, limits, have, cached pairs", () => {
    const cached: Array<[number, number]> = [[3, 30], [MAX, 1]];
    const r = roundTrip(4, Cmd.LOAD_CLOSURE, (w) => w.num(77).num(0).num(1000).num(0).nums([8, 9]).pairs(cached));
    expect([r.id53("tid"), r.id53("oid"), r.id53("maxObjects"), r.id53("maxBytes")]).toEqual([77, 0, 1000, 0]);
    expect(r.nums()).toEqual([8, 9]);
    expect([...r.pairs("cached records")]).toEqual(cached);
    r.end();
  });

  it("LOAD_PLAN: steps as msgpack, have, cached", () => {
    const steps: PlanStep[] = [{ from: [0, 4] }, { follow: 0, prop: "orders" }, { follow: 1 }, { union: [1, 2] }];
    const r = roundTrip(15, Cmd.LOAD_PLAN, (w) => w.num(5).msgpack(steps).nums([]).pairs([]));
    expect(r.id53("tid")).toBe(5);
    expect(r.msgpack()).toEqual(steps);
    expect(r.nums()).toEqual([]);
    expect(r.pairs("cached records").size).toBe(0);
    r.end();
  });

  it("LOAD_BEFORE, HISTORY, CHANGES_SINCE, TRANSACTIONS, UNDO: numbers", () => {
    const cases: Array<[number, number[]]> = [
      [Cmd.LOAD_BEFORE, [12, 99]],
      [Cmd.HISTORY, [12, 0]],
      [Cmd.CHANGES_SINCE, [0]],
      [Cmd.TRANSACTIONS, [MAX, 10]],
      [Cmd.UNDO, [4321]],
    ];
    for (const [kind, values] of cases) {
      const r = roundTrip(kind, kind, (w) => values.forEach((v) => w.num(v)));
      expect(values.map(() => r.id53(commandName(kind)!))).toEqual(values);
      r.end();
    }
  });

  it("NEW_OIDS, FINISH, ABORT: a u32", () => {
    for (const [kind, v] of [[Cmd.NEW_OIDS, 100], [Cmd.FINISH, 0xfffffffe], [Cmd.ABORT, 0]] as const) {
      const r = roundTrip(kind, kind, (w) => w.u32(v));
      expect(r.u32()).toBe(v);
      r.end();
    }
  });

  it("VOTE and COMMIT: a request, with metadata and without", () => {
    const bare: CommitRequest = { records: [rec(1, 2, bytes(3))], readCurrent: [] };
    for (const req of [request, bare]) {
      const vote = roundTrip(8, Cmd.VOTE, (w) => w.u32(17).request(req));
      expect(vote.u32()).toBe(17);
      const got = vote.request();
      vote.end();
      expect({ ...got, records: plainRecords(got.records) }).toEqual({ ...req, records: plainRecords(req.records) });
      expect("meta" in got).toBe("meta" in req);

      const commit = roundTrip(10, Cmd.COMMIT, (w) => w.request(req));
      expect(plainRecords(commit.request().records)).toEqual(plainRecords(req.records));
      commit.end();
    }
  });

  it("names every command and no other kind", () => {
    for (const [name, kind] of Object.entries(Cmd)) expect(commandName(kind)).toBe(name);
    expect(commandName(Reply.OK)).toBeUndefined();
    expect(commandName(0)).toBeUndefined();
  });
});

describe("protocol frames: replies and pushes", () => {
  it("OK to HELLO: a HelloReply, with changes known, unknown, or not asked for", () => {
    const base: HelloReply = { version: PROTOCOL_VERSION, storageId: "abc-123", tid: MAX, history: true, maxFrame: 64 << 20 };
    for (const reply of [base, { ...base, changes: { tid: 9, oids: [1, 2] } }, { ...base, history: false, changes: { tid: 9, oids: null } }]) {
      const r = roundTrip(1, Reply.OK, (w) => w.msgpack(reply));
      expect(r.msgpack()).toEqual(reply);
      r.end();
    }
  });

  it("OK with a tid (LAST_TID, FINISH, COMMIT, UNDO) and OK with nothing (ABORT)", () => {
    const r = roundTrip(2, Reply.OK, (w) => w.num(1_700_000_000_000_000));
    expect(r.id53("tid")).toBe(1_700_000_000_000_000);
    r.end();
    roundTrip(11, Reply.OK, () => {}).end();
  });

  it("OK with records (LOAD, LOAD_BEFORE, HISTORY): serial 0 and null data read as null", () => {
    const r = roundTrip(3, Reply.OK, (w) => w.records(records));
    expect(plainRecords(r.records())).toEqual(plainRecords(records));
    r.end();
    const one = roundTrip(5, Reply.OK, (w) => w.u32(2).record(null).num(4).num(5).bytes(null));
    expect(one.records()).toEqual([null, null]);
    one.end();
  });

  it("OK to LOAD_CLOSURE: records (cached ones without bytes), held, truncated, missing", () => {
    const entries = [{ oid: 1, serial: 2, data: bytes(5, 6) }, { oid: 3, serial: 4, data: null }];
    for (const truncated of [true, false]) {
      const r = roundTrip(4, Reply.OK, (w) => {
        w.u32(entries.length);
        for (const e of entries) w.num(e.oid).num(e.serial).bytes(e.data);
        w.nums([8]).u8(truncated ? 1 : 0).nums([MAX]);
      });
      expect(plainRecords(r.closureRecords())).toEqual(plainRecords(entries));
      expect(r.nums()).toEqual([8]);
      expect(r.u8() === 1).toBe(truncated);
      expect(r.nums()).toEqual([MAX]);
      r.end();
    }
  });

  it("OK to LOAD_PLAN: records streamed with a patched count, groups, missing", () => {
    const groups = [[0], [1, 2, 3], []];
    const missing = [{ oid: 9, path: "root.orders[2]" }];
    const r = roundTrip(15, Reply.OK, (w) => {
      const countAt = w.position;
      w.u32(0);
      w.record(rec(1, 1, bytes(1))).num(2).num(2).bytes(null);
      w.patchU32(countAt, 2);
      w.u32(groups.length);
      for (const g of groups) w.nums(g);
      w.msgpack(missing);
    });
    expect(plainRecords(r.closureRecords())).toEqual([{ oid: 1, serial: 1, data: [1] }, { oid: 2, serial: 2, data: null }]);
    const n = r.u32();
    expect(Array.from({ length: n }, () => r.nums())).toEqual(groups);
    expect(r.msgpack()).toEqual(missing);
    r.end();
  });

  it("OK to NEW_OIDS: oids; OK to TRANSACTIONS: TransactionInfo[]", () => {
    const a = roundTrip(7, Reply.OK, (w) => w.nums([10, 11, 12]));
    expect(a.nums()).toEqual([10, 11, 12]);
    a.end();
    const infos: TransactionInfo[] = [{ tid: 5, oids: [0, 1], meta: {} }, { tid: MAX, oids: [], meta: { user: "bob" } }];
    const b = roundTrip(13, Reply.OK, (w) => w.msgpack(infos));
    expect(b.msgpack()).toEqual(infos);
    b.end();
  });

  it("OK to VOTE: conflicts, with and without committed data", () => {
    const conflicts: StorageConflict[] = [
      { oid: 1, readSerial: 2, committedSerial: 3, readOnly: false, committedData: bytes(4, 5) },
      { oid: MAX, readSerial: 0, committedSerial: MAX, readOnly: true, committedData: null },
    ];
    for (const list of [conflicts, []]) {
      const r = roundTrip(8, Reply.OK, (w) => w.conflicts(list));
      const got = r.conflicts();
      r.end();
      expect(got.map((c) => ({ ...c, committedData: plain(c.committedData) }))).toEqual(
        list.map((c) => ({ ...c, committedData: plain(c.committedData) })),
      );
    }
  });

  it("OK to CHANGES_SINCE and INVALIDATE: changes, listed or all", () => {
    for (const changes of [{ tid: 9, oids: [1, 2, MAX] }, { tid: 9, oids: [] }, { tid: MAX, oids: null }] as Changes[]) {
      const r = roundTrip(0, Reply.INVALIDATE, (w) => w.changes(changes));
      expect(r.changes()).toEqual(changes);
      r.end();
    }
  });

  it("CLOSING: a reason", () => {
    const r = roundTrip(0, Reply.CLOSING, (w) => w.msgpack({ reason: "shutting down" }));
    expect(r.msgpack()).toEqual({ reason: "shutting down" });
    r.end();
  });
});

describe("protocol frames: ERROR", () => {
  const decoded = (err: unknown): Error => {
    const [r] = transmit([encodeError(21, err)], 5);
    expect(r!.kind).toBe(Reply.ERROR);
    expect(r!.id).toBe(21);
    return decodeError(r!, "amber://h:1");
  };

  it("ConflictError keeps its conflicts", () => {
    const detail: ConflictDetail = { oid: 4, className: "shop.Order", readSerial: 1, committedSerial: 2, readOnly: false };
    const e = decoded(new ConflictError([detail]));
    expect(e).toBeInstanceOf(ConflictError);
    expect((e as ConflictError).conflicts).toEqual([detail]);
  });

  it("StorageError keeps its code and oid", () => {
    const e = decoded(new StorageError("damaged", { code: "corrupt", oid: 12 }));
    expect(e).toBeInstanceOf(StorageError);
    expect(e.message).toBe("damaged");
    expect((e as StorageError).code).toBe("corrupt");
    expect((e as StorageError).oid).toBe(12);
    expect((decoded(new StorageError("no oid")) as StorageError).oid).toBeUndefined();
  });

  it("TypeError, RangeError and ProtocolError keep their class and message", () => {
    expect(decoded(new TypeError("bad arg"))).toEqual(new TypeError("bad arg"));
    expect(decoded(new RangeError("too many"))).toEqual(new RangeError("too many"));
    const p = decoded(new ProtocolError("garbage"));
    expect(p).toBeInstanceOf(ProtocolError);
    expect(p.message).toContain("garbage");
  });

  it("any other error arrives as a StorageError \"server\" with its message", () => {
    const fsError = Object.assign(new Error("ENOENT: no such file"), { code: "ENOENT" });
    for (const err of [new Error("boom"), fsError, "a thrown string"]) {
      const e = decoded(err) as StorageError;
      expect(e).toBeInstanceOf(StorageError);
      expect(e.code).toBe("server");
      expect(e.message).toContain(String((err as Error).message ?? err));
    }
  });
});

describe("protocol frames: what the reader refuses", () => {
  it("a payload read past its end, and bytes left after it", () => {
    const frame = new FrameWriter(1, Cmd.LOAD).num(1).finish();
    const r = new FrameReader(frame);
    expect(r.num()).toBe(1);
    expect(() => r.u32()).toThrow(ProtocolError);
    const extra = new FrameReader(new FrameWriter(1, Cmd.LAST_TID).u8(0).finish());
    expect(() => extra.end()).toThrow(/1 unexpected bytes/);
    expect(() => new FrameReader(bytes(0, 0, 0, 1))).toThrow(ProtocolError);
  });

  it("a list count larger than the frame, an oid that is not an integer, the byte 0xC1", () => {
    const count = new FrameReader(new FrameWriter(1, Cmd.LOAD).u32(1000).num(1).finish());
    expect(() => count.nums()).toThrow(/cannot fit/);
    for (const bad of [-1, 1.5, NaN, 2 ** 53]) {
      expect(() => new FrameReader(new FrameWriter(1, Cmd.UNDO).num(bad).finish()).id53("tid")).toThrow(ProtocolError);
    }
    const c1 = new FrameReader(new FrameWriter(1, Cmd.HELLO).bytes(bytes(0x91, 0xc1)).finish());
    expect(() => c1.msgpack()).toThrow(/0xC1/);
  });

  it("a frame length outside [5, maxFrame], before buffering the frame", () => {
    const splitter = new FrameSplitter(1024);
    const head = Buffer.alloc(HEADER);
    head.writeUInt32BE(4, 0);
    expect(() => splitter.push(head)).toThrow(ProtocolError);
    const big = Buffer.alloc(4);
    big.writeUInt32BE(1025, 0);
    expect(() => new FrameSplitter(1024).push(big)).toThrow(/outside the allowed range/);
  });

  it("splits frames however the stream is chunked", () => {
    const frames = [
      new FrameWriter(1, Cmd.LAST_TID).finish(),
      new FrameWriter(2, Cmd.LOAD).num(3).nums([1, 2]).finish(),
      new FrameWriter(0, Reply.INVALIDATE).changes({ tid: 4, oids: [5] }).finish(),
    ].map((f) => Buffer.from(f));
    for (const chunk of [1, 2, 7, 1000]) {
      expect(transmit(frames, chunk).map((r) => [r.id, r.kind, r.remaining])).toEqual([
        [1, Cmd.LAST_TID, 0],
        [2, Cmd.LOAD, 28],
        [0, Reply.INVALIDATE, 21],
      ]);
    }
  });
});
