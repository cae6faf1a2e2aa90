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
  CommitOutcome,
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
const bareRequest: CommitRequest = { records: [rec(1, 2, bytes(3))], readCurrent: [] };
const plainRequest = (req: CommitRequest) => ({ ...req, records: plainRecords(req.records) });

/** One payload: how it is written, how it is read back, and what reading it gives. */
interface Case {
  write: (w: FrameWriter) => void;
  read: (r: FrameReader) => unknown;
  expected: unknown;
}

const nothing: Case = { write: () => {}, read: () => null, expected: null };
const tid = (t: number): Case => ({ write: (w) => w.num(t), read: (r) => r.id53("tid"), expected: t });
const recordsCase = (list: Array<StoredRecord | null>): Case => ({
  write: (w) => w.records(list),
  read: (r) => plainRecords(r.records()),
  expected: plainRecords(list),
});

/**
 * Every command (the request payload, left) and its OK reply (right), as the table at the top
 * of protocol.ts lays them out. Keyed by command name: a new command does not compile until
 * its frames are here.
 */
const COMMANDS: Record<keyof typeof Cmd, { request: Case[]; reply: Case[] }> = {
  HELLO: {
    request: [
      { version: PROTOCOL_VERSION, token: "secret", database: "shop", since: 123, create: false } satisfies Hello,
      { version: PROTOCOL_VERSION, database: "" } satisfies Hello,
    ].map((hello) => ({ write: (w) => w.msgpack(hello), read: (r) => r.msgpack(), expected: hello })),
    reply: (() => {
      const base: HelloReply = { version: PROTOCOL_VERSION, storageId: "abc-123", tid: MAX, history: true, maxFrame: 64 << 20 };
      return [base, { ...base, changes: { tid: 9, oids: [1, 2] } }, { ...base, history: false, changes: { tid: 9, oids: null } }];
    })().map((reply) => ({ write: (w) => w.msgpack(reply), read: (r) => r.msgpack(), expected: reply })),
  },
  LAST_TID: { request: [nothing], reply: [tid(1_700_000_000_000_000)] },
  LOAD: {
    request: [[], [0, 1, MAX, ...Array.from({ length: 100 }, (_, i) => i * 1000)]].map((oids) => ({
      write: (w) => w.num(MAX).nums(oids),
      read: (r) => [r.id53("tid"), r.nums()],
      expected: [MAX, oids],
    })),
    reply: [recordsCase(records), recordsCase([]), {
      // a null record: serial 0, or data null
      write: (w) => w.u32(2).record(null).num(4).num(5).bytes(null),
      read: (r) => r.records(),
      expected: [null, null],
    }],
  },
  LOAD_CLOSURE: {
    request: [{
      write: (w) => w.num(77).num(0).num(1000).num(0).nums([8, 9]).pairs([[3, 30], [MAX, 1]]),
      read: (r) => [r.id53("tid"), r.id53("oid"), r.id53("maxObjects"), r.id53("maxBytes"), r.nums(), [...r.pairs("cached records")]],
      expected: [77, 0, 1000, 0, [8, 9], [[3, 30], [MAX, 1]]],
    }],
    // records (a cached one without its bytes), held, truncated, missing
    reply: [true, false].map((truncated) => ({
      write: (w) => w.u32(2).num(1).num(2).bytes(bytes(5, 6)).num(3).num(4).bytes(null).nums([8]).u8(truncated ? 1 : 0).nums([MAX]),
      read: (r) => [plainRecords(r.closureRecords()), r.nums(), r.u8() === 1, r.nums()],
      expected: [[{ oid: 1, serial: 2, data: [5, 6] }, { oid: 3, serial: 4, data: null }], [8], truncated, [MAX]],
    })),
  },
  LOAD_PLAN: {
    request: [{
      write: (w) => w.num(5).msgpack([{ from: [0, 4] }, { follow: 0, prop: "orders" }, { follow: 1 }, { union: [1, 2] }] satisfies PlanStep[]).nums([]).pairs([]),
      read: (r) => [r.id53("tid"), r.msgpack(), r.nums(), r.pairs("cached records").size],
      expected: [5, [{ from: [0, 4] }, { follow: 0, prop: "orders" }, { follow: 1 }, { union: [1, 2] }], [], 0],
    }],
    // records streamed with a count patched in afterwards, the groups, missing
    reply: [{
      write: (w) => {
        const countAt = w.position;
        w.u32(0);
        w.record(rec(1, 1, bytes(1))).num(2).num(2).bytes(null);
        w.patchU32(countAt, 2);
        w.u32(3).nums([0]).nums([1, 2, 3]).nums([]);
        w.msgpack([{ oid: 9, path: "root.orders[2]" }]);
      },
      read: (r) => [plainRecords(r.closureRecords()), Array.from({ length: r.u32() }, () => r.nums()), r.msgpack()],
      expected: [[{ oid: 1, serial: 1, data: [1] }, { oid: 2, serial: 2, data: null }], [[0], [1, 2, 3], []], [{ oid: 9, path: "root.orders[2]" }]],
    }],
  },
  LOAD_BEFORE: {
    request: [{ write: (w) => w.num(12).num(99), read: (r) => [r.id53("oid"), r.id53("tid")], expected: [12, 99] }],
    reply: [recordsCase([rec(12, 98, bytes(1))]), recordsCase([null])],
  },
  HISTORY: {
    request: [0, 10].map((limit) => ({ write: (w) => w.num(12).num(limit), read: (r) => [r.id53("oid"), r.id53("limit")], expected: [12, limit] })),
    reply: [recordsCase([rec(12, 3, bytes(3)), rec(12, 2, bytes(2)), rec(12, 1, bytes())])],
  },
  NEW_OIDS: {
    request: [{ write: (w) => w.u32(100), read: (r) => r.u32(), expected: 100 }],
    reply: [{ write: (w) => w.nums([10, 11, 12]), read: (r) => r.nums(), expected: [10, 11, 12] }],
  },
  VOTE: {
    request: [request, bareRequest].map((req) => ({
      write: (w) => w.u32(17).request(req),
      read: (r) => [r.u32(), plainRequest(r.request())], // no `meta` key when none was sent
      expected: [17, plainRequest(req)],
    })),
    reply: (() => {
      const conflicts: StorageConflict[] = [
        { oid: 1, readSerial: 2, committedSerial: 3, readOnly: false, committedData: bytes(4, 5) },
        { oid: MAX, readSerial: 0, committedSerial: MAX, readOnly: true, committedData: null },
      ];
      const plainConflicts = (list: StorageConflict[]) => list.map((c) => ({ ...c, committedData: plain(c.committedData) }));
      return [conflicts, []].map((list) => ({ write: (w) => w.conflicts(list), read: (r) => plainConflicts(r.conflicts()), expected: plainConflicts(list) }));
    })(),
  },
  FINISH: { request: [{ write: (w) => w.u32(0xfffffffe), read: (r) => r.u32(), expected: 0xfffffffe }], reply: [tid(MAX)] },
  COMMIT: {
    request: [request, bareRequest].map((req) => ({ write: (w) => w.request(req), read: (r) => plainRequest(r.request()), expected: plainRequest(req) })),
    reply: [tid(42)],
  },
  ABORT: { request: [{ write: (w) => w.u32(0), read: (r) => r.u32(), expected: 0 }], reply: [nothing] },
  CHANGES_SINCE: {
    request: [tid(0)],
    reply: ([{ tid: 9, oids: [1, 2, MAX] }, { tid: 9, oids: [] }, { tid: MAX, oids: null }] as Changes[]).map((c) => ({
      write: (w) => w.changes(c),
      read: (r) => r.changes(),
      expected: c,
    })),
  },
  TRANSACTIONS: {
    request: [{ write: (w) => w.num(MAX).num(10), read: (r) => [r.id53("tid"), r.id53("limit")], expected: [MAX, 10] }],
    reply: [[{ tid: 5, oids: [0, 1], meta: {} }, { tid: MAX, oids: [], meta: { user: "bob" } }] satisfies TransactionInfo[], []].map((infos) => ({
      write: (w) => w.msgpack(infos),
      read: (r) => r.msgpack(),
      expected: infos,
    })),
  },
  UNDO: { request: [tid(4321)], reply: [tid(4322)] },
  COMMIT_STATUS: {
    request: [{ write: (w) => w.msgpack("5b1c-commit/17").num(MAX), read: (r) => [r.msgpack(), r.id53("tid")], expected: ["5b1c-commit/17", MAX] }],
    reply: [
      [CommitOutcome.COMMITTED, MAX],
      [CommitOutcome.NOT_COMMITTED, 0],
      [CommitOutcome.UNKNOWN, 0],
    ].map(([outcome, t]) => ({ write: (w: FrameWriter) => w.u8(outcome!).num(t!), read: (r: FrameReader) => [r.u8(), r.id53("tid")], expected: [outcome, t] })),
  },
};

describe("protocol frames: every command and its OK reply", () => {
  for (const [name, { request: requests, reply: replies }] of Object.entries(COMMANDS)) {
    const kind = Cmd[name as keyof typeof Cmd];
    it(name, () => {
      expect(commandName(kind)).toBe(name);
      for (const [i, c] of requests.entries()) {
        const r = roundTrip(i + 1, kind, c.write);
        expect(c.read(r), `${name} request ${i}`).toEqual(c.expected);
        r.end();
      }
      for (const [i, c] of replies.entries()) {
        const r = roundTrip(i + 1, Reply.OK, c.write);
        expect(c.read(r), `${name} reply ${i}`).toEqual(c.expected);
        r.end();
      }
    });
  }

  it("names no other kind", () => {
    expect(commandName(Reply.OK)).toBeUndefined();
    expect(commandName(0)).toBeUndefined();
  });
});

describe("protocol frames: pushes", () => {
  it("INVALIDATE: changes, listed or all, with request id 0", () => {
    for (const c of COMMANDS.CHANGES_SINCE.reply) {
      const r = roundTrip(0, Reply.INVALIDATE, c.write);
      expect(c.read(r)).toEqual(c.expected);
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
