/**
 * The record envelope: the bytes a storage keeps for one revision of one object.
 *
 * Layout (varint = unsigned LEB128):
 *
 *   offset  size  field
 *   0       1     magic 0xAD
 *   1       1     format version (4; format 3 is read too, see below)
 *   2       4     header length H (big-endian)
 *   6       H     header:
 *                   varint classVersion
 *                   u8     flags: bit 0, state written in structured-clone mode;
 *                          bits 1-2, how loading plans treat the references (FanOut):
 *                          0 = ordinary fields, 1 = a collection's items (a plan step
 *                          through the collection gives them), 2 = pieces of a collection
 *                          (a BTree's nodes and buckets: walked through, not items)
 *                   varint S, then S strings (varint byte length, UTF-8); string 0 is the
 *                          class name, the others are the reference paths and class names
 *                   varint R, then R references: varint oid, varint path string index,
 *                          varint class string index
 *   6+H     ...   state: MessagePack with amberdb's extensions (see codec/state.ts)
 *   end-4   4     CRC-32 of every byte before it, little-endian
 *
 * The header is a plain documented format (no MessagePack extensions, no application
 * classes) so that a storage, a server or a tool can read the class name and walk the
 * references without the application's code. `refPaths[i]` is the top-level property (or
 * collection slot) of the state that holds reference `i`; `refClasses[i]` is the stored
 * class name of the object it points at, so a reader can make a ghost of the right class
 * without loading it. Repeated strings are stored once. Format 3 had no fan-out bits: its
 * records get them from the class name, for amberdb's own collections (LEGACY_FAN_OUT).
 *
 * The checksum makes damaged bytes fail loudly (a flipped bit inside a string would
 * otherwise decode as a different string). Stored little-endian at the end, it lets a
 * reader check the whole record with one CRC over all of it: the CRC-32 of a message
 * followed by its own CRC is always 0x2144DF1C.
 */
import { crc32 } from "node:zlib";
import { StorageError } from "../errors.ts";
import type { Oid } from "../ids.ts";

const MAGIC = 0xad;
const FORMAT = 4;
/** The previous format, still read: the same layout without the fan-out bits. */
const FORMAT_3 = 3;

/** How loading plans treat a record's references (flags bits 1-2). */
export const FanOut = {
  /** Ordinary fields: a plan step follows the references under the step's property. */
  NONE: 0,
  /** A collection: its references are its items (a step through it gives them). */
  ITEMS: 1,
  /** A piece of a collection (BTree node, bucket): walked through, its references are items or pieces. */
  PIECES: 2,
} as const;

/** Format 3 records: the fan-out of amberdb's own collections, by class name. */
const LEGACY_FAN_OUT: Record<string, number> = {
  "amber.PersistentList": FanOut.ITEMS,
  "amber.PersistentSet": FanOut.ITEMS,
  "amber.PersistentMap": FanOut.ITEMS,
  "amber.BTree": FanOut.ITEMS,
  "amber.BTreeNode": FanOut.PIECES,
  "amber.BTreeBucket": FanOut.PIECES,
};
const FIXED = 6;
const TRAILER = 4;
/** The CRC-32 of any envelope (checksum included) whose bytes are intact. */
export const CRC_RESIDUE = 0x2144df1c;

export interface Envelope {
  className: string;
  classVersion: number;
  refOids: Oid[];
  refPaths: string[];
  refClasses: string[];
  /** The state holds shared or cyclic containers (decode in structured-clone mode). */
  shared: boolean;
  /** How loading plans treat the references (FanOut). */
  fanOut: number;
  /** The state bytes (a view into the envelope). */
  readonly state: Uint8Array;
}

/** A parsed envelope: the state is located by offsets; `state` makes a view on demand. */
export class ParsedEnvelope implements Envelope {
  constructor(
    readonly className: string,
    readonly classVersion: number,
    readonly refOids: Oid[],
    readonly refPaths: string[],
    readonly refClasses: string[],
    readonly shared: boolean,
    /** The whole record. */
    readonly data: Uint8Array,
    readonly stateStart: number,
    readonly stateEnd: number,
    readonly fanOut: number = FanOut.NONE,
  ) {}
  get state(): Uint8Array {
    return this.data.subarray(this.stateStart, this.stateEnd);
  }
}

/** What `writeEnvelope` takes: an envelope; `shared` and `fanOut` default to false and NONE. */
export type EnvelopeInput = Omit<Envelope, "shared" | "fanOut"> & { shared?: boolean; fanOut?: number };

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
  const total = FIXED + size + e.state.length + TRAILER;
  const out = Buffer.allocUnsafe(total);
  out[0] = MAGIC;
  out[1] = FORMAT;
  out.writeUInt32BE(size, 2);
  let pos = writeVarint(out, FIXED, e.classVersion);
  out[pos++] = (e.shared ? 1 : 0) | (((e.fanOut ?? FanOut.NONE) & 3) << 1);
  pos = writeVarint(out, pos, strings.length);
  for (const b of strings) {
    pos = writeVarint(out, pos, b.length);
    out.set(b, pos);
    pos += b.length;
  }
  pos = writeVarint(out, pos, n);
  for (const v of refs) pos = writeVarint(out, pos, v);
  out.set(e.state, pos);
  out.writeUInt32LE(crc32(out.subarray(0, total - TRAILER)), total - TRAILER);
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
/**
 * Parse an envelope, checking its checksum unless `verified` says that was done already
 * on these very bytes (a closure's records were checked by the walk that found them).
 */
export function readEnvelope(data: Uint8Array, oid?: Oid, verified = false): ParsedEnvelope {
  const len = data.length;
  if (len < FIXED + TRAILER) damaged(oid, `${len} bytes, shorter than an envelope's ${FIXED + TRAILER} fixed bytes`);
  if (data[0] !== MAGIC) damaged(oid, `expected magic byte 0xad, found 0x${(data[0] ?? 0).toString(16)}`);
  const format = data[1];
  if (format !== FORMAT && format !== FORMAT_3) {
    damaged(oid, `record format ${format} is not one this version of amberdb reads (formats ${FORMAT_3} and ${FORMAT})`);
  }
  if (!verified && crc32(data) !== CRC_RESIDUE) damaged(oid, "checksum mismatch");
  const hlen = ((data[2]! << 24) | (data[3]! << 16) | (data[4]! << 8) | data[5]!) >>> 0;
  const end = FIXED + hlen;
  if (end > len - TRAILER) damaged(oid, `header length ${hlen} runs past the end`);
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
  const fanOut = format === FORMAT ? (flags >> 1) & 3 : (LEGACY_FAN_OUT[strings[0]!] ?? FanOut.NONE);
  return new ParsedEnvelope(strings[0]!, classVersion, refOids, refPaths, refClasses, (flags & 1) === 1, data, end, len - TRAILER, fanOut);
}

/**
 * The oids a record refers to, for storages that walk the graph: the checksum and header
 * are checked as by `readEnvelope`, but no strings are decoded.
 */
export function recordRefs(data: Uint8Array, oid?: Oid): Oid[] {
  const len = data.length;
  if (len < FIXED + TRAILER || data[0] !== MAGIC || (data[1] !== FORMAT && data[1] !== FORMAT_3)) return readEnvelope(data, oid).refOids; // raises
  if (crc32(data) !== CRC_RESIDUE) damaged(oid, "checksum mismatch");
  const hlen = ((data[2]! << 24) | (data[3]! << 16) | (data[4]! << 8) | data[5]!) >>> 0;
  const end = FIXED + hlen;
  if (end > len - TRAILER) damaged(oid, `header length ${hlen} runs past the end`);
  const r = { pos: FIXED, data, end };
  readVarint(r, oid);
  r.pos++; // flags
  const nStrings = readVarint(r, oid);
  if (nStrings < 1 || nStrings > hlen) damaged(oid, `bad string count ${nStrings}`);
  for (let i = 0; i < nStrings; i++) {
    const n = readVarint(r, oid);
    r.pos += n;
    if (r.pos > end) damaged(oid, "string runs past the header");
  }
  const nRefs = readVarint(r, oid);
  if (nRefs > hlen) damaged(oid, `bad reference count ${nRefs}`);
  const refOids: Oid[] = new Array(nRefs);
  for (let i = 0; i < nRefs; i++) {
    refOids[i] = readVarint(r, oid);
    const p = readVarint(r, oid);
    const c = readVarint(r, oid);
    if (p >= nStrings || c >= nStrings) damaged(oid, "reference names a missing string");
  }
  if (r.pos !== end) damaged(oid, "header length does not match its contents");
  return refOids;
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

/**
 * Recently decoded short strings, by a hash of their bytes. The same class and property
 * names come back in record after record; returning the same string object each time
 * saves building it and lets Map lookups by it use its cached hash.
 */
const recent: Array<string | undefined> = new Array(512);

function utf8(data: Uint8Array, start: number, end: number): string {
  const n = end - start;
  if (n > 40) return decoder.decode(data.subarray(start, end));
  let h = n;
  for (let i = start; i < end; i++) h = (Math.imul(h, 31) + data[i]!) | 0;
  const slot = (h >>> 0) % 512;
  const cached = recent[slot];
  if (cached !== undefined && cached.length === n && sameAscii(cached, data, start)) return cached;
  let s = "";
  for (let i = start; i < end; i++) {
    const c = data[i]!;
    if (c >= 128) return decoder.decode(data.subarray(start, end));
    s += String.fromCharCode(c);
  }
  recent[slot] = s;
  return s;
}

function sameAscii(s: string, data: Uint8Array, start: number): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) !== data[start + i]) return false;
  return true;
}
