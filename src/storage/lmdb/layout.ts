/**
 * The on-disk layout of the embedded storage: one LMDB environment in a directory.
 *
 * The directory holds LMDB's own two files, `data.mdb` and `lock.mdb`, and nothing else.
 * It is always opened as a directory (`noSubdir: false`, even for a name like `shop.amber`)
 * and with lmdb-js's default `overlappingSync` on every platform but Windows: every process
 * must open one environment with the same flags, because overlapping sync changes how
 * LMDB lays out and picks its meta pages.
 *
 * Four named databases. Keys use lmdb-js's default ordered-binary key encoding (numbers
 * sort numerically, arrays element by element), so range scans over tids and over one
 * object's serials work. Every value is raw bytes (`encoding: "binary"`) laid out here:
 *
 *   database   key                  value
 *   "meta"     "amberdb"            MARKER: MessagePack { format: 1, created: ISO date,
 *                                   id: random UUID (stores made before it had none) }
 *              "lastTid"            U64: the newest committed tid (absent: 0)
 *              "nextOid"            U64: every oid below it was handed out or written
 *                                   (absent: 1; oid 0 is the root and never handed out)
 *              "logStart"           U64: "txns" holds every transaction with tid >
 *                                   logStart (absent: 0, the whole log; pack raises it)
 *   "current"  oid                  REVISION: the newest revision of the object
 *   "history"  [oid, serial]        REVISION: every older revision, the same bytes it had
 *                                   in "current" (a commit moves them over unchanged)
 *   "txns"     tid                  TXN: MessagePack [oids: number[], meta: {string: string}]
 *
 *   U64       8 bytes, big-endian unsigned (tids and oids stay below 2^53)
 *   REVISION  offset 0, 8 bytes: serial (U64, > 0) · offset 8: the record envelope
 *             (codec/record.ts), opaque here
 *
 * Invariants, each kept by doing all of a commit's reads and writes in one LMDB write
 * transaction (LMDB allows one writer at a time across all processes):
 * - "current"[oid].serial is the tid of the transaction that last wrote oid, and every
 *   "history"[oid, s] has s smaller than it; so a load at snapshot `at` >= that serial is a
 *   single get, and an older snapshot is one reverse range step in "history".
 * - "txns" has one entry per committed tid in (logStart, lastTid], listing the oids it wrote.
 * - "nextOid" exceeds every oid in "current": a commit writing a new object raises it.
 *
 * @internal
 */
import { randomUUID } from "node:crypto";
import { Packr } from "msgpackr";
import { StorageError } from "../../errors.ts";
import type { Oid, Tid } from "../storage.ts";

export const FORMAT = 1;
export const DB_META = "meta";
export const DB_CURRENT = "current";
export const DB_HISTORY = "history";
export const DB_TXNS = "txns";

export const KEY_MARKER = "amberdb";
export const KEY_LAST_TID = "lastTid";
export const KEY_NEXT_OID = "nextOid";
export const KEY_LOG_START = "logStart";

/** The key of revision `serial` of `oid` in "history". */
export type HistoryKey = [Oid, Tid];

const SERIAL_BYTES = 8;
const TWO_32 = 2 ** 32;
/** The high word of a U64 below 2^53. */
const MAX_HIGH = 2 ** 21 - 1;

const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

function corrupt(message: string, oid?: Oid): StorageError {
  return new StorageError(message, oid === undefined ? { code: "corrupt" } : { oid, code: "corrupt" });
}

export function encodeU64(value: number): Buffer {
  const out = Buffer.allocUnsafe(8);
  out.writeUInt32BE(Math.floor(value / TWO_32), 0);
  out.writeUInt32BE(value % TWO_32, 4);
  return out;
}

/** Read a U64 meta value; `fallback` when the key is absent. */
export function decodeU64(bytes: Uint8Array | undefined, key: string, fallback: number): number {
  if (bytes === undefined) return fallback;
  if (bytes.length !== 8) throw corrupt(`meta value "${key}" is damaged: ${bytes.length} bytes, expected 8`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, 8);
  const high = view.getUint32(0);
  if (high > MAX_HIGH) throw corrupt(`meta value "${key}" is damaged: ${high} * 2^32 exceeds 2^53`);
  return high * TWO_32 + view.getUint32(4);
}

/** REVISION bytes for `data` written by transaction `serial`. */
export function encodeRevision(serial: Tid, data: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(SERIAL_BYTES + data.length);
  out.writeUInt32BE(Math.floor(serial / TWO_32), 0);
  out.writeUInt32BE(serial % TWO_32, 4);
  out.set(data, SERIAL_BYTES);
  return out;
}

/**
 * The serial of a REVISION. `bytes` may be lmdb-js's reusable read buffer, whose `length`
 * is the value's length, or (for a value of 16 MiB or more) a plain Uint8Array view of the
 * memory map, not a Buffer; raises `StorageError` naming `oid` when the framing is damaged.
 */
export function revisionSerial(bytes: Uint8Array, oid: Oid): Tid {
  const length = bytes.length;
  if (length < SERIAL_BYTES) {
    throw corrupt(`record of object ${oid} is damaged: ${length} bytes, shorter than its ${SERIAL_BYTES}-byte serial`, oid);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, SERIAL_BYTES);
  const high = view.getUint32(0);
  const serial = high * TWO_32 + view.getUint32(4);
  if (high > MAX_HIGH || serial === 0) {
    throw corrupt(`record of object ${oid} is damaged: serial ${serial} is not a valid tid`, oid);
  }
  return serial;
}

/** A copy of the envelope bytes of a REVISION (the read buffer is reused by the next read). */
export function revisionData(bytes: Uint8Array): Uint8Array {
  // One copy, no intermediate view (the buffer lmdb-js lends is reused by the next read).
  return Uint8Array.prototype.slice.call(bytes, SERIAL_BYTES, bytes.length);
}

/** The record inside a REVISION without copying: valid only as long as `bytes` is. */
export function revisionView(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes.buffer, bytes.byteOffset + SERIAL_BYTES, bytes.length - SERIAL_BYTES);
}

/** A copy of a whole REVISION, to move it into "history" unchanged. */
export function copyRevision(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.subarray(0, bytes.length));
}

export interface LoggedTransaction {
  oids: Oid[];
  meta: Record<string, string>;
}

export function encodeTxn(oids: readonly Oid[], meta: Record<string, string>): Buffer {
  return packr.pack([oids, meta]);
}

export function decodeTxn(bytes: Uint8Array, tid: Tid): LoggedTransaction {
  let value: unknown;
  try {
    value = packr.unpack(bytes.subarray(0, bytes.length));
  } catch (err) {
    throw corrupt(`transaction log entry ${tid} is damaged: ${(err as Error).message}`);
  }
  if (!Array.isArray(value) || !Array.isArray(value[0]) || typeof value[1] !== "object" || value[1] === null) {
    throw corrupt(`transaction log entry ${tid} is damaged: expected [oids, meta]`);
  }
  return { oids: value[0] as Oid[], meta: value[1] as Record<string, string> };
}

export interface Marker {
  format: number;
  created: string;
  /** Identifies the store (its copies keep it); absent in stores made before it existed. */
  id?: string;
}

/** The store's identity: its marker id, or for older stores the creation time. */
export function storeId(marker: Marker): string {
  return marker.id ?? `created:${marker.created}`;
}

export function encodeMarker(): Buffer {
  return packr.pack({ format: FORMAT, created: new Date().toISOString(), id: randomUUID() } satisfies Marker);
}

/** The marker, or a description of what is there instead (for the error message). */
export function decodeMarker(bytes: Uint8Array): Marker | string {
  try {
    const value: unknown = packr.unpack(bytes.subarray(0, bytes.length));
    if (typeof value === "object" && value !== null && typeof (value as Marker).format === "number") {
      return value as Marker;
    }
    return "an amberdb marker without a format number";
  } catch {
    return `an unreadable amberdb marker of ${bytes.length} bytes`;
  }
}
