/**
 * The amberdb wire protocol, spoken between `amber serve` (storage-server.ts) and the
 * client storage (client-storage.ts). Both sides import this module; the client's socket
 * worker (client-worker.mjs) knows only the frame length prefix below.
 *
 * FRAMES. Every message is one frame:
 *
 *   offset  size  field
 *   0       4     length L of the rest of the frame (big-endian u32, 5 <= L <= maxFrame)
 *   4       4     request id (big-endian u32): chosen by the client, echoed by the reply;
 *                 0 for messages the server pushes on its own
 *   8       1     kind: a command (client to server) or a reply/push kind (server to client)
 *   9       L-5   payload, laid out per kind (below)
 *
 * A client may send many requests before the first reply arrives (pipelining); replies
 * carry the request id and may come in any order. The first frame of a connection must
 * be HELLO; the server reads nothing else before the token is checked. The first frame the
 * server sends is the reply to HELLO (OK or ERROR, with HELLO's request id) or a push
 * (CLOSING, request id 0); a client that receives anything else first (bytes that are not
 * such a frame: an HTTP server's "HTTP/1.1 400 ...", whose first four bytes read as a
 * length of 1213486160) reports that the address does not speak the amber protocol.
 *
 * PAYLOAD TYPES. u8, u32 (big-endian), num (f64 little-endian: oids and tids are integers
 * below 2^53, so a double holds them exactly), bytes (u32 length, then the bytes; length
 * 0xFFFFFFFF means null), msgpack (bytes holding one MessagePack value), and lists
 * (u32 count, then the items).
 *
 *   command         payload                                         reply payload (OK)
 *   HELLO           msgpack {version, token?, database, since?,     msgpack HelloReply
 *                   create?}
 *   LAST_TID        -                                               num tid
 *   LOAD            num at, list of num oid                         records
 *   LOAD_CLOSURE    num at, num oid, num maxObjects, num maxBytes,  records, list of num held,
 *                   list of num have, list of (num oid, num serial) u8 truncated, list of num missing
 *                   cached
 *
 *     The server walks the references breadth-first. `have` records are walked through,
 *     not sent, not counted. A `cached` record whose serial matches is counted against the
 *     limits in its place but sent without its bytes (data null): the client has them.
 *   LOAD_PLAN       num at, msgpack PlanStep[], list of num have,   records (as LOAD_CLOSURE),
 *                   list of (num oid, num serial) cached            u32 n, n lists of num (the
 *                                                                   groups), msgpack missing
 *   LOAD_BEFORE     num oid, num before                             records (one)
 *   HISTORY         num oid, num limit (0: no limit)                records
 *   NEW_OIDS        u32 count                                       list of num oid
 *   VOTE            u32 voteId, request                             conflicts
 *   FINISH          u32 voteId                                      num tid
 *   COMMIT          request (vote and finish in one)                num tid
 *   ABORT           u32 voteId                                      -
 *   CHANGES_SINCE   num since                                       changes
 *   TRANSACTIONS    num since, num limit (0: no limit)              msgpack TransactionInfo[]
 *   UNDO            num tid                                         num tid
 *
 *   records    list of (num oid, num serial, bytes data); serial 0 stands for null
 *   request    list of (num oid, num serial, bytes data), list of (num oid, num serial),
 *              msgpack meta (or nil)
 *   conflicts  list of (num oid, num readSerial, num committedSerial, u8 readOnly,
 *              bytes committedData)
 *   changes    num tid, u8 all (1: everything may have changed), list of num oid
 *
 *   ERROR (reply)        msgpack {type, message, code, oid?, conflicts?}
 *   INVALIDATE (push)    changes: the oids written by transactions up to tid, sent to every
 *                        client after each commit, before the committer's own reply
 *   CLOSING (push)       msgpack {reason}: the server is shutting down
 *
 * A frame that breaks these rules (too long, too short, truncated, an unknown kind, a
 * payload that does not parse) is a `ProtocolError`: the receiver logs it and closes
 * that one connection.
 */
import { C1, Packr } from "msgpackr";
import { ConflictError, ProtocolError, StorageError, type ConflictDetail } from "../../errors.ts";
import type { Changes, CommitRequest, StorageConflict, StoredRecord, Tid } from "../storage.ts";

export const PROTOCOL_VERSION = 1;
/** Bytes before the payload: length, request id, kind. */
export const HEADER = 9;
/** Default largest frame a server accepts (the client accepts up to CLIENT_MAX_FRAME). */
export const DEFAULT_MAX_FRAME = 64 * 1024 * 1024;
export const CLIENT_MAX_FRAME = 1024 * 1024 * 1024;
export const DEFAULT_PORT = 7700;
const NULL_LENGTH = 0xffffffff;

export const Cmd = {
  HELLO: 1,
  LAST_TID: 2,
  LOAD: 3,
  LOAD_CLOSURE: 4,
  LOAD_BEFORE: 5,
  HISTORY: 6,
  NEW_OIDS: 7,
  VOTE: 8,
  FINISH: 9,
  COMMIT: 10,
  ABORT: 11,
  CHANGES_SINCE: 12,
  TRANSACTIONS: 13,
  UNDO: 14,
  LOAD_PLAN: 15,
} as const;
export type Command = (typeof Cmd)[keyof typeof Cmd];

export const Reply = {
  OK: 128,
  ERROR: 129,
  INVALIDATE: 130,
  CLOSING: 131,
} as const;

const commandNames = new Map<number, string>(Object.entries(Cmd).map(([k, v]) => [v, k]));
/** The name of a command kind, for messages; undefined for an unknown kind. */
export function commandName(kind: number): string | undefined {
  return commandNames.get(kind);
}

export interface Hello {
  version: number;
  token?: string;
  /** The database name: the path of the amber:// URL without its leading slash. */
  database: string;
  /** The client knows the database up to this tid: send what changed since (reconnecting, or a saved cache). */
  since?: Tid;
  /**
   * false: a database that does not exist yet is not created for this client (the HELLO
   * fails with code "not-found"). Default true. Only matters for `{name}` stores.
   */
  create?: boolean;
}

export interface HelloReply {
  version: number;
  /** Identifies the stored database; a client that sees it change drops its cache. */
  storageId: string;
  /** Every client has been told of every commit up to this tid. */
  tid: Tid;
  history: boolean;
  maxFrame: number;
  /** When HELLO gave `since`: the oids written in (since, tid] (null: cannot tell). */
  changes?: { tid: Tid; oids: number[] | null };
}

/**
 * The error for a peer whose first bytes are not an amber reply (see FRAMES above):
 * `address` (host:port) does not speak the amber protocol; says what was expected and what
 * came instead (`problem`, and the first bytes `head`, shown as text when they are text).
 */
export function notAmberError(address: string, url: string, head: Uint8Array, problem: string): ProtocolError {
  const kind = serverKind(head);
  return new ProtocolError(
    `${address} does not speak the amber protocol: expected the reply to HELLO (a frame: length 5 to ` +
      `${CLIENT_MAX_FRAME}, request id, reply kind ${Reply.OK} to ${Reply.CLOSING}), found ${problem}; ` +
      `the first bytes were ${showBytes(head)}${kind === "" ? "" : ` (${kind})`}. ` +
      `Check that ${url} is the address of an amber serve process`,
  );
}

/** Bytes for a message: a quoted string when they are mostly printable text, else hex. */
function showBytes(head: Uint8Array): string {
  const shown = head.subarray(0, 48);
  let printable = 0;
  for (const b of shown) if ((b >= 0x20 && b < 0x7f) || b === 0x0a || b === 0x0d || b === 0x09) printable++;
  const more = head.length > shown.length ? "..." : "";
  if (shown.length > 0 && printable >= shown.length * 0.9) return `${JSON.stringify(Buffer.from(shown).toString("latin1"))}${more}`;
  return `${Buffer.from(shown).toString("hex").replace(/(..)(?!$)/g, "$1 ")}${more} (hex)`;
}

/** What kind of server sent `head`, when its first bytes give it away ("" if they don't). */
function serverKind(head: Uint8Array): string {
  const text = Buffer.from(head.subarray(0, 16)).toString("latin1");
  if (/^HTTP\/\d/.test(text)) return "an HTTP server";
  if (text.startsWith("SSH-")) return "an SSH server";
  // A TLS record (alert or handshake) of version 3.x: a TLS server answering plain bytes.
  if ((head[0] === 0x15 || head[0] === 0x16) && head[1] === 0x03) return "a TLS server: connect with the tls option";
  return "";
}

const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });
export const packValue = (value: unknown): Uint8Array => packr.pack(value);

/** Builds one frame. `finish()` fills in the length and returns the bytes. */
export class FrameWriter {
  #buf: Buffer;
  #pos = HEADER;

  constructor(id: number, kind: number, capacity = 256) {
    this.#buf = Buffer.allocUnsafe(Math.max(capacity, 64));
    this.#buf.writeUInt32BE(id, 4);
    this.#buf[8] = kind;
  }

  #room(n: number): void {
    if (this.#pos + n <= this.#buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, this.#pos + n));
    this.#buf.copy(next, 0, 0, this.#pos);
    this.#buf = next;
  }

  u8(v: number): this {
    this.#room(1);
    this.#buf[this.#pos++] = v;
    return this;
  }

  u32(v: number): this {
    this.#room(4);
    this.#buf.writeUInt32BE(v, this.#pos);
    this.#pos += 4;
    return this;
  }

  num(v: number): this {
    this.#room(8);
    this.#buf.writeDoubleLE(v, this.#pos);
    this.#pos += 8;
    return this;
  }

  bytes(v: Uint8Array | null): this {
    if (v === null) return this.u32(NULL_LENGTH);
    this.u32(v.length);
    this.#room(v.length);
    this.#buf.set(v, this.#pos);
    this.#pos += v.length;
    return this;
  }

  msgpack(v: unknown): this {
    return this.bytes(packValue(v));
  }

  nums(list: readonly number[]): this {
    this.u32(list.length);
    this.#room(8 * list.length);
    for (const v of list) {
      this.#buf.writeDoubleLE(v, this.#pos);
      this.#pos += 8;
    }
    return this;
  }

  records(list: ReadonlyArray<StoredRecord | null>): this {
    this.u32(list.length);
    for (const r of list) this.record(r);
    return this;
  }

  /** One item of a records list (the caller writes the count). */
  record(r: StoredRecord | null): this {
    if (r === null) return this.num(0).num(0).u32(0);
    return this.num(r.oid).num(r.serial).bytes(r.data);
  }

  /** Where the next byte goes (for `patchU32`). */
  get position(): number {
    return this.#pos;
  }

  /** Overwrite a u32 written earlier at `at`. */
  patchU32(at: number, v: number): this {
    this.#buf.writeUInt32BE(v, at);
    return this;
  }

  request(req: CommitRequest): this {
    this.u32(req.records.length);
    for (const r of req.records) this.num(r.oid).num(r.serial).bytes(r.data);
    this.u32(req.readCurrent.length);
    for (const r of req.readCurrent) this.num(r.oid).num(r.serial);
    return this.bytes(req.meta === undefined ? null : packValue(req.meta));
  }

  conflicts(list: readonly StorageConflict[]): this {
    this.u32(list.length);
    for (const c of list) this.num(c.oid).num(c.readSerial).num(c.committedSerial).u8(c.readOnly ? 1 : 0).bytes(c.committedData);
    return this;
  }

  /** A list of (oid, serial) pairs. */
  pairs(list: ReadonlyArray<readonly [number, number]>): this {
    this.u32(list.length);
    this.#room(16 * list.length);
    for (const [a, b] of list) {
      this.#buf.writeDoubleLE(a, this.#pos);
      this.#buf.writeDoubleLE(b, this.#pos + 8);
      this.#pos += 16;
    }
    return this;
  }

  changes(c: Changes): this {
    this.num(c.tid).u8(c.oids === null ? 1 : 0);
    return this.nums(c.oids ?? []);
  }

  /** The finished frame (a view of the writer's buffer: send it before writing more). */
  finish(): Buffer {
    this.#buf.writeUInt32BE(this.#pos - 4, 0);
    return this.#buf.subarray(0, this.#pos);
  }
}

/** msgpackr decodes the reserved byte 0xC1 into a marker object instead of failing. */
function containsC1(v: unknown, depth = 0): boolean {
  if (v === C1) return true;
  if (typeof v !== "object" || v === null || depth > 32 || ArrayBuffer.isView(v)) return false;
  for (const x of Array.isArray(v) ? v : Object.values(v)) if (containsC1(x, depth + 1)) return true;
  return false;
}

/** Reads one frame's payload; every read checks bounds and raises ProtocolError. */
export class FrameReader {
  readonly id: number;
  readonly kind: number;
  #view: DataView;
  #bytes: Uint8Array;
  #pos = HEADER;

  /** `frame` is a whole frame, length prefix included. */
  constructor(frame: Uint8Array) {
    if (frame.length < HEADER) throw new ProtocolError(`frame of ${frame.length} bytes is shorter than its ${HEADER}-byte header`);
    this.#bytes = frame;
    this.#view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
    this.id = this.#view.getUint32(4);
    this.kind = frame[8]!;
  }

  get remaining(): number {
    return this.#bytes.length - this.#pos;
  }

  #need(n: number, what: string): void {
    if (this.#pos + n > this.#bytes.length) {
      throw new ProtocolError(`truncated payload: ${what} needs ${n} bytes at offset ${this.#pos}, frame has ${this.#bytes.length}`);
    }
  }

  u8(): number {
    this.#need(1, "u8");
    return this.#bytes[this.#pos++]!;
  }

  u32(): number {
    this.#need(4, "u32");
    const v = this.#view.getUint32(this.#pos);
    this.#pos += 4;
    return v;
  }

  num(): number {
    this.#need(8, "number");
    const v = this.#view.getFloat64(this.#pos, true);
    this.#pos += 8;
    return v;
  }

  /** An oid or tid: a non-negative safe integer. */
  id53(what: string): number {
    const v = this.num();
    if (!Number.isSafeInteger(v) || v < 0) throw new ProtocolError(`${what} must be a non-negative integer, got ${v}`);
    return v;
  }

  /** A view into the frame (no copy). */
  bytes(): Uint8Array | null {
    const n = this.u32();
    if (n === NULL_LENGTH) return null;
    this.#need(n, "bytes");
    const v = this.#bytes.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    return v;
  }

  msgpack(): unknown {
    const b = this.bytes();
    if (b === null) return undefined;
    let v: unknown;
    try {
      v = packr.unpack(b);
    } catch (err) {
      throw new ProtocolError(`payload is not valid MessagePack: ${(err as Error).message}`, { cause: err });
    }
    if (containsC1(v)) throw new ProtocolError("payload holds the MessagePack byte 0xC1, which is never used");
    return v;
  }

  #count(itemBytes: number, what: string): number {
    const n = this.u32();
    if (n * itemBytes > this.remaining) throw new ProtocolError(`truncated payload: ${n} ${what} cannot fit in ${this.remaining} bytes`);
    return n;
  }

  nums(what = "oid"): number[] {
    const n = this.#count(8, `${what}s`);
    const out: number[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.id53(what);
    return out;
  }

  records(): Array<StoredRecord | null> {
    const n = this.#count(20, "records");
    const out: Array<StoredRecord | null> = new Array(n);
    for (let i = 0; i < n; i++) {
      const oid = this.id53("oid");
      const serial = this.id53("serial");
      const data = this.bytes();
      out[i] = serial === 0 || data === null ? null : { oid, serial, data };
    }
    return out;
  }

  /** A closure reply's records: `data` null marks one the client said it has cached. */
  closureRecords(): Array<{ oid: number; serial: number; data: Uint8Array | null }> {
    const n = this.#count(20, "records");
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = { oid: this.id53("oid"), serial: this.id53("serial"), data: this.bytes() };
    return out;
  }

  pairs(what: string): Map<number, number> {
    const n = this.#count(16, what);
    const out = new Map<number, number>();
    for (let i = 0; i < n; i++) out.set(this.id53("oid"), this.id53("serial"));
    return out;
  }

  request(): CommitRequest {
    const n = this.#count(20, "records");
    const records = new Array(n);
    for (let i = 0; i < n; i++) {
      const oid = this.id53("oid");
      const serial = this.id53("serial");
      const data = this.bytes();
      if (data === null) throw new ProtocolError(`record ${oid} of a commit has no data`);
      records[i] = { oid, serial, data };
    }
    const m = this.#count(16, "readCurrent entries");
    const readCurrent = new Array(m);
    for (let i = 0; i < m; i++) readCurrent[i] = { oid: this.id53("oid"), serial: this.id53("serial") };
    const meta = this.msgpack();
    if (meta !== undefined && (typeof meta !== "object" || meta === null || Array.isArray(meta))) {
      throw new ProtocolError("transaction metadata must be a map");
    }
    return meta === undefined ? { records, readCurrent } : { records, readCurrent, meta: meta as Record<string, string> };
  }

  conflicts(): StorageConflict[] {
    const n = this.#count(29, "conflicts");
    const out: StorageConflict[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const oid = this.id53("oid");
      const readSerial = this.id53("serial");
      const committedSerial = this.id53("serial");
      const readOnly = this.u8() === 1;
      out[i] = { oid, readSerial, committedSerial, readOnly, committedData: this.bytes() };
    }
    return out;
  }

  changes(): Changes {
    const tid = this.id53("tid");
    const all = this.u8() === 1;
    const oids = this.nums();
    return { tid, oids: all ? null : oids };
  }

  /** The payload must be used up: trailing bytes mean the two sides disagree on the layout. */
  end(): void {
    if (this.remaining !== 0) throw new ProtocolError(`${this.remaining} unexpected bytes after the payload of kind ${this.kind}`);
  }
}

/**
 * Splits a byte stream into frames. `push` returns the whole frames completed by a chunk;
 * a length outside [5, maxFrame] raises ProtocolError before any of the frame is buffered.
 */
export class FrameSplitter {
  #chunks: Buffer[] = [];
  #buffered = 0;
  readonly maxFrame: number;

  constructor(maxFrame: number) {
    this.maxFrame = maxFrame;
  }

  /** Bytes of a frame received only in part (a truncated frame if the stream ends now). */
  get pending(): number {
    return this.#buffered;
  }

  push(chunk: Buffer): Buffer[] {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const frames: Buffer[] = [];
    while (this.#buffered >= 4) {
      const head = this.#chunks[0]!.length >= 4 ? this.#chunks[0]! : this.#merge();
      const length = head.readUInt32BE(0);
      if (length < HEADER - 4 || length > this.maxFrame) {
        throw new ProtocolError(`frame length ${length} is outside the allowed range [${HEADER - 4}, ${this.maxFrame}]`);
      }
      if (this.#buffered < length + 4) break;
      const all = this.#chunks.length === 1 ? this.#chunks[0]! : this.#merge();
      frames.push(all.subarray(0, length + 4));
      const rest = all.subarray(length + 4);
      this.#chunks = rest.length > 0 ? [rest] : [];
      this.#buffered = rest.length;
    }
    return frames;
  }

  #merge(): Buffer {
    const all = Buffer.concat(this.#chunks, this.#buffered);
    this.#chunks = [all];
    return all;
  }
}

/** An error reply: the error turned into data the other side rebuilds with `decodeError`. */
export function encodeError(id: number, err: unknown): Buffer {
  const e = err as { name?: string; message?: string; code?: string; oid?: number; conflicts?: ConflictDetail[] };
  const type =
    err instanceof ConflictError
      ? "ConflictError"
      : err instanceof StorageError
        ? "StorageError"
        : err instanceof ProtocolError
          ? "ProtocolError"
          : err instanceof TypeError
            ? "TypeError"
            : err instanceof RangeError
              ? "RangeError"
              : "Error";
  return new FrameWriter(id, Reply.ERROR)
    .msgpack({
      type,
      message: String(e?.message ?? err),
      code: typeof e?.code === "string" ? e.code : undefined,
      oid: typeof e?.oid === "number" ? e.oid : undefined,
      conflicts: err instanceof ConflictError ? err.conflicts : undefined,
    })
    .finish();
}

export function decodeError(r: FrameReader, server: string): Error {
  const v = r.msgpack() as { type?: string; message?: string; code?: string; oid?: number; conflicts?: ConflictDetail[] } | undefined;
  const message = typeof v?.message === "string" ? v.message : "unknown error";
  switch (v?.type) {
    case "ConflictError":
      return new ConflictError(Array.isArray(v.conflicts) ? v.conflicts : []);
    case "StorageError":
      return new StorageError(message, {
        code: v.code ?? "storage",
        ...(typeof v.oid === "number" ? { oid: v.oid } : {}),
      });
    case "TypeError":
      return new TypeError(message);
    case "RangeError":
      return new RangeError(message);
    case "ProtocolError":
      return new ProtocolError(`${server} refused a request: ${message}`);
    default:
      return new StorageError(`${server}: ${message}`, { code: v?.code ?? "server" });
  }
}
