/**
 * Frames and payload types of the amber wire protocol, as protocol.ts documents them
 * (FRAMES and PAYLOAD TYPES there): FrameWriter builds a frame, FrameReader reads one with
 * every read bounds-checked (a violation is a ProtocolError), FrameSplitter cuts a byte
 * stream into frames. protocol.ts re-exports them; import them from there.
 */
import { C1, Packr } from "msgpackr";
import { ProtocolError } from "../../errors.ts";
import type { Changes, CommitRequest, StorageConflict, StoredRecord } from "../storage.ts";

/** Bytes before the payload: length, request id, kind. */
export const HEADER = 9;
const NULL_LENGTH = 0xffffffff;

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
 * Splits a byte stream into frames: `push` returns the whole frames completed by a chunk;
 * or `append` the chunks and take the frames one at a time with `next` (a server does, to
 * change `maxFrame` between frames: it raises it once the client has authenticated). A
 * length outside [5, maxFrame] raises ProtocolError before any of the frame is buffered.
 */
export class FrameSplitter {
  #chunks: Buffer[] = [];
  #buffered = 0;
  maxFrame: number;
  /** Said in the error for a frame over the limit (what the limit is for). */
  limitReason = "";

  constructor(maxFrame: number) {
    this.maxFrame = maxFrame;
  }

  /** Bytes received and not yet taken as frames (a truncated frame if the stream ends now). */
  get pending(): number {
    return this.#buffered;
  }

  push(chunk: Buffer): Buffer[] {
    this.append(chunk);
    const frames: Buffer[] = [];
    for (let f = this.next(); f !== undefined; f = this.next()) frames.push(f);
    return frames;
  }

  append(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
  }

  /** The next whole frame, or undefined until more bytes arrive. */
  next(): Buffer | undefined {
    if (this.#buffered < 4) return undefined;
    const head = this.#chunks[0]!.length >= 4 ? this.#chunks[0]! : this.#merge();
    const length = head.readUInt32BE(0);
    if (length < HEADER - 4 || length > this.maxFrame) {
      throw new ProtocolError(`frame length ${length} is outside the allowed range [${HEADER - 4}, ${this.maxFrame}]${this.limitReason}`);
    }
    if (this.#buffered < length + 4) return undefined;
    const all = this.#chunks.length === 1 ? this.#chunks[0]! : this.#merge();
    const frame = all.subarray(0, length + 4);
    const rest = all.subarray(length + 4);
    this.#chunks = rest.length > 0 ? [rest] : [];
    this.#buffered = rest.length;
    return frame;
  }

  /** Forget what is buffered. */
  clear(): void {
    this.#chunks = [];
    this.#buffered = 0;
  }

  #merge(): Buffer {
    const all = Buffer.concat(this.#chunks, this.#buffered);
    this.#chunks = [all];
    return all;
  }
}
