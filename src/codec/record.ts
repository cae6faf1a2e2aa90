/**
 * The record envelope: the bytes a storage keeps for one revision of one object.
 *
 * Layout (fixed-size integers big-endian; varint = unsigned LEB128):
 *
 *   offset  size  field
 *   0       1     magic 0xAD
 *   1       1     format version (2)
 *   2       4     CRC-32 of every byte from offset 6 to the end
 *   6       4     header length H
 *   10      H     header:
 *                   varint classVersion
 *                   u8     flags (bit 0: state written in structured-clone mode)
 *                   varint S, then S strings (varint byte length, UTF-8); string 0 is the
 *                          class name, the others are the reference paths and class names
 *                   varint R, then R references: varint oid, varint path string index,
 *                          varint class string index
 *   10+H    ...   state: MessagePack with amberdb's extensions (see codec/state.ts)
 *
 * The header is a plain documented format (no MessagePack extensions, no application
 * classes) so that a storage, a server or a tool can read the class name and walk the
 * references without the application's code. `refPaths[i]` is the top-level property (or
 * collection slot) of the state that holds reference `i`; `refClasses[i]` is the stored
 * class name of the object it points at, so a reader can make a ghost of the right class
 * without loading it. Repeated strings are stored once.
 *
 * The checksum makes damaged bytes fail loudly (a flipped bit inside a string would
 * otherwise decode as a different string).
 */
import { crc32 } from "node:zlib";
import { StorageError } from "../errors.ts";
import type { Oid } from "../storage/storage.ts";

const MAGIC = 0xad;
const FORMAT = 2;
const FIXED = 10;

export interface Envelope {
  className: string;
  classVersion: number;
  refOids: Oid[];
  refPaths: string[];
  refClasses: string[];
  /** The state holds shared or cyclic containers (decode in structured-clone mode). */
  shared: boolean;
  /** The state bytes (a view into the envelope). */
  state: Uint8Array;
}

/** What `writeEnvelope` takes: an envelope; `shared` defaults to false. */
export type EnvelopeInput = Omit<Envelope, "shared"> & { shared?: boolean };

/** Build the envelope bytes. Inverse of `readEnvelope`. */
export function writeEnvelope(e: EnvelopeInput): Uint8Array {
  // Records have few distinct strings (class names, property names): a linear search
  // de-duplicates them faster than a Map, and their UTF-8 bytes are cached.
  const strings: Uint8Array[] = [utf8Bytes(e.className)];
  const names: string[] = [e.className];
  const n = e.refOids.length;
  const refs: number[] = new Array(n * 3);
  for (let i = 0; i < n; i++) {
    refs[3 * i] = e.refOids[i]!;
    refs[3 * i + 1] = internString(names, strings, e.refPaths[i] ?? "");
    refs[3 * i + 2] = internString(names, strings, e.refClasses[i] ?? "?");
  }
  let size = varintSize(e.classVersion) + 1 + varintSize(strings.length) + varintSize(n);
  for (const b of strings) size += varintSize(b.length) + b.length;
  for (const v of refs) size += varintSize(v);
  const out = Buffer.allocUnsafe(FIXED + size + e.state.length);
  out[0] = MAGIC;
  out[1] = FORMAT;
  out.writeUInt32BE(size, 6);
  let pos = writeVarint(out, FIXED, e.classVersion);
  out[pos++] = e.shared ? 1 : 0;
  pos = writeVarint(out, pos, strings.length);
  for (const b of strings) {
    pos = writeVarint(out, pos, b.length);
    out.set(b, pos);
    pos += b.length;
  }
  pos = writeVarint(out, pos, n);
  for (const v of refs) pos = writeVarint(out, pos, v);
  out.set(e.state, pos);
  out.writeUInt32BE(crc32(out.subarray(6)), 2);
  return out;
}

function internString(names: string[], strings: Uint8Array[], s: string): number {
  for (let i = 0; i < names.length; i++) if (names[i] === s) return i;
  names.push(s);
  strings.push(utf8Bytes(s));
  return names.length - 1;
}

const utf8Cache = new Map<string, Uint8Array>();

function utf8Bytes(s: string): Uint8Array {
  let b = utf8Cache.get(s);
  if (b === undefined) {
    b = Buffer.from(s, "utf8");
    if (utf8Cache.size < 10_000) utf8Cache.set(s, b);
  }
  return b;
}

/**
 * Parse and verify the envelope. Raises `StorageError` naming `oid` when the bytes are not
 * an intact envelope (wrong magic, bad checksum, truncated header).
 */
export function readEnvelope(data: Uint8Array, oid?: Oid): Envelope {
  const len = data.length;
  if (len < FIXED) damaged(oid, `${len} bytes, shorter than the ${FIXED}-byte envelope header`);
  if (data[0] !== MAGIC) damaged(oid, `expected magic byte 0xad, found 0x${(data[0] ?? 0).toString(16)}`);
  if (data[1] !== FORMAT) damaged(oid, `unknown record format ${data[1]}`);
  const stored = ((data[2]! << 24) | (data[3]! << 16) | (data[4]! << 8) | data[5]!) >>> 0;
  const actual = crc32(data.subarray(6));
  if (stored !== actual) damaged(oid, `checksum mismatch (stored ${stored.toString(16)}, computed ${actual.toString(16)})`);
  const hlen = ((data[6]! << 24) | (data[7]! << 16) | (data[8]! << 8) | data[9]!) >>> 0;
  const end = FIXED + hlen;
  if (end > len) damaged(oid, `header length ${hlen} runs past the end`);
  const r = { pos: FIXED, data, end };
  const classVersion = readVarint(r, oid);
  if (r.pos >= end) damaged(oid, "header truncated");
  const flags = data[r.pos++]!;
  const nStrings = readVarint(r, oid);
  if (nStrings < 1 || nStrings > hlen) damaged(oid, `bad string count ${nStrings}`);
  const strings: string[] = new Array(nStrings);
  for (let i = 0; i < nStrings; i++) {
    const n = readVarint(r, oid);
    if (r.pos + n > end) damaged(oid, "string runs past the header");
    strings[i] = utf8(data, r.pos, r.pos + n);
    r.pos += n;
  }
  const nRefs = readVarint(r, oid);
  if (nRefs > hlen) damaged(oid, `bad reference count ${nRefs}`);
  const refOids: Oid[] = new Array(nRefs);
  const refPaths: string[] = new Array(nRefs);
  const refClasses: string[] = new Array(nRefs);
  for (let i = 0; i < nRefs; i++) {
    refOids[i] = readVarint(r, oid);
    const p = readVarint(r, oid);
    const c = readVarint(r, oid);
    if (p >= nStrings || c >= nStrings) damaged(oid, "reference names a missing string");
    refPaths[i] = strings[p]!;
    refClasses[i] = strings[c]!;
  }
  if (r.pos !== end) damaged(oid, "header length does not match its contents");
  return { className: strings[0]!, classVersion, refOids, refPaths, refClasses, shared: (flags & 1) === 1, state: data.subarray(end) };
}

/** The oids a record refers to, for storages that walk the graph. */
export function recordRefs(data: Uint8Array, oid?: Oid): Oid[] {
  return readEnvelope(data, oid).refOids;
}

function varintSize(n: number): number {
  let size = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

function writeVarint(out: Uint8Array, pos: number, n: number): number {
  while (n >= 128) {
    out[pos++] = (n % 128) | 128;
    n = Math.floor(n / 128);
  }
  out[pos++] = n;
  return pos;
}

function damaged(oid: Oid | undefined, what: string): never {
  throw new StorageError(
    `record${oid === undefined ? "" : ` of object ${oid}`} is damaged: ${what}`,
    oid === undefined ? { code: "corrupt" } : { oid, code: "corrupt" },
  );
}

function readVarint(r: { pos: number; data: Uint8Array; end: number }, oid: Oid | undefined): number {
  let n = 0;
  let scale = 1;
  for (let i = 0; i < 8; i++) {
    if (r.pos >= r.end) damaged(oid, "header truncated");
    const b = r.data[r.pos++]!;
    n += (b & 127) * scale;
    if (b < 128) return n;
    scale *= 128;
  }
  return damaged(oid, "varint too long");
}

const decoder = new TextDecoder();

/** Short ASCII strings (class names, property names) decode without a TextDecoder call. */
function utf8(data: Uint8Array, start: number, end: number): string {
  if (end - start <= 32) {
    let s = "";
    for (let i = start; i < end; i++) {
      const c = data[i]!;
      if (c >= 128) return decoder.decode(data.subarray(start, end));
      s += String.fromCharCode(c);
    }
    return s;
  }
  return decoder.decode(data.subarray(start, end));
}
