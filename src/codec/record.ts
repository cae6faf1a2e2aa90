/**
 * The record envelope: the bytes a storage keeps for one revision of one object.
 *
 * Layout (all integers big-endian):
 *
 *   offset  size  field
 *   0       1     magic 0xAD
 *   1       1     format version (1)
 *   2       4     CRC-32 of every byte from offset 6 to the end
 *   6       4     header length H
 *   10      H     header: a plain MessagePack array
 *                   [className: string, classVersion: number,
 *                    refOids: number[], refPaths: string[], refClasses: string[],
 *                    flags: number]      (bit 0: state written in structured-clone mode)
 *   10+H    ...   state: MessagePack with amberdb's extensions (see codec/state.ts)
 *
 * The header is plain MessagePack (no extensions) so that a storage, a server or a tool can
 * read the class name and walk the references without the application's classes.
 * `refPaths[i]` is the top-level property (or collection slot) of the state that holds
 * reference `i`; `refClasses[i]` is the stored class name of the object it points at, so a
 * reader can make a ghost of the right class without loading it.
 *
 * The checksum makes damaged bytes fail loudly (a flipped bit inside a string would
 * otherwise decode as a different string).
 */
import { Packr } from "msgpackr";
import { StorageError } from "../errors.ts";
import type { Oid } from "../storage/storage.ts";

const MAGIC = 0xad;
const FORMAT = 1;
const FIXED = 10;

const headerPackr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

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
  const header = headerPackr.pack([e.className, e.classVersion, e.refOids, e.refPaths, e.refClasses, e.shared ? 1 : 0]);
  const out = Buffer.allocUnsafe(FIXED + header.length + e.state.length);
  out[0] = MAGIC;
  out[1] = FORMAT;
  out.writeUInt32BE(header.length, 6);
  out.set(header, FIXED);
  out.set(e.state, FIXED + header.length);
  out.writeUInt32BE(crc32(out, 6, out.length), 2);
  return out;
}

/**
 * Parse and verify the envelope. Raises `StorageError` naming `oid` when the bytes are not
 * an intact envelope (wrong magic, bad checksum, truncated header).
 */
export function readEnvelope(data: Uint8Array, oid?: Oid): Envelope {
  const fail = (what: string): never => {
    throw new StorageError(
      `record${oid === undefined ? "" : ` of object ${oid}`} is damaged: ${what}`,
      oid === undefined ? { code: "corrupt" } : { oid, code: "corrupt" },
    );
  };
  if (data.length < FIXED) fail(`${data.length} bytes, shorter than the ${FIXED}-byte envelope header`);
  if (data[0] !== MAGIC) fail(`expected magic byte 0xad, found 0x${(data[0] ?? 0).toString(16)}`);
  if (data[1] !== FORMAT) fail(`unknown record format ${data[1]}`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const stored = view.getUint32(2);
  const actual = crc32(data, 6, data.length);
  if (stored !== actual) fail(`checksum mismatch (stored ${stored.toString(16)}, computed ${actual.toString(16)})`);
  const hlen = view.getUint32(6);
  if (FIXED + hlen > data.length) fail(`header length ${hlen} runs past the end`);
  let header: unknown;
  try {
    header = headerPackr.unpack(data.subarray(FIXED, FIXED + hlen));
  } catch (err) {
    fail(`unreadable header (${(err as Error).message})`);
  }
  if (!Array.isArray(header) || header.length < 6 || typeof header[0] !== "string") fail("malformed header");
  const h = header as [string, number, Oid[], string[], string[], number];
  return {
    className: h[0],
    classVersion: h[1],
    refOids: h[2],
    refPaths: h[3],
    refClasses: h[4],
    shared: (h[5] & 1) === 1,
    state: data.subarray(FIXED + hlen),
  };
}

/** The oids a record refers to, for storages that walk the graph. */
export function recordRefs(data: Uint8Array, oid?: Oid): Oid[] {
  return readEnvelope(data, oid).refOids;
}

// CRC-32 (IEEE), table-driven: faster than zlib.crc32 for the small records we check.
const TABLE = (() => {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();

function crc32(buf: Uint8Array, start: number, end: number): number {
  let c = -1;
  for (let i = start; i < end; i++) c = TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}
