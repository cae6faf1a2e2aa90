/**
 * Argument checks shared by the storages. A storage validates at its public boundary, then
 * hands plain, trusted values to its implementation (DESIGN habit 5). Wrong types raise
 * `TypeError`, values out of range `RangeError`; each message names the argument, what was
 * expected and what was found.
 *
 * @internal
 */
import type { CommitRequest, Oid, Tid } from "./storage.ts";

function describe(value: unknown): string {
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value;
}

function checkNonNegativeInteger(value: unknown, what: string): void {
  if (typeof value !== "number") throw new TypeError(`${what} must be a number, got ${describe(value)}`);
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${what} must be a non-negative safe integer, got ${describe(value)}`);
  }
}

/** An oid: a non-negative safe integer (0 is the root). */
export function checkOid(oid: unknown, what = "oid"): asserts oid is Oid {
  checkNonNegativeInteger(oid, what);
}

/** A tid or serial: a non-negative safe integer (0 means "before the first transaction"). */
export function checkTid(tid: unknown, what = "tid"): asserts tid is Tid {
  checkNonNegativeInteger(tid, what);
}

export function checkOids(oids: unknown): asserts oids is readonly Oid[] {
  if (!Array.isArray(oids)) throw new TypeError(`oids must be an array of oids, got ${describe(oids)}`);
  for (let i = 0; i < oids.length; i++) checkOid(oids[i], `oids[${i}]`);
}

/** A count of things to hand out or return: a positive safe integer. */
/** The most oids one `newOids` call hands out. */
export const MAX_NEW_OIDS = 1_000_000;

export function checkCount(count: unknown, what: string): asserts count is number {
  if (typeof count !== "number") throw new TypeError(`${what} must be a number, got ${describe(count)}`);
  if (!Number.isSafeInteger(count) || count < 1 || count > MAX_NEW_OIDS) {
    throw new RangeError(`${what} must be a positive integer of at most ${MAX_NEW_OIDS}, got ${describe(count)}`);
  }
}

/** An optional result limit: undefined (no limit), Infinity, or a positive integer. */
export function checkLimit(limit: unknown): number {
  if (limit === undefined || limit === Infinity) return Infinity;
  checkCount(limit, "limit");
  return limit;
}

/**
 * A commit request: records with valid oids and serials and `Uint8Array` data, no oid written
 * twice, valid `readCurrent` entries, and string metadata.
 */
export function checkCommitRequest(request: unknown): asserts request is CommitRequest {
  if (typeof request !== "object" || request === null) {
    throw new TypeError(`commit request must be an object, got ${describe(request)}`);
  }
  const { records, readCurrent, meta } = request as Partial<CommitRequest>;
  if (!Array.isArray(records)) throw new TypeError(`request.records must be an array, got ${describe(records)}`);
  const seen = new Set<Oid>();
  for (let i = 0; i < records.length; i++) {
    const r: unknown = records[i];
    if (typeof r !== "object" || r === null) throw new TypeError(`request.records[${i}] must be a record, got ${describe(r)}`);
    const { oid, serial, data } = r as Partial<CommitRequest["records"][number]>;
    checkOid(oid, `request.records[${i}].oid`);
    checkTid(serial, `request.records[${i}].serial`);
    if (!(data instanceof Uint8Array)) {
      throw new TypeError(`request.records[${i}].data must be a Uint8Array, got ${describe(data)}`);
    }
    if (seen.has(oid)) throw new RangeError(`request.records writes object ${oid} twice (records[${i}])`);
    seen.add(oid);
  }
  if (!Array.isArray(readCurrent)) {
    throw new TypeError(`request.readCurrent must be an array, got ${describe(readCurrent)}`);
  }
  for (let i = 0; i < readCurrent.length; i++) {
    const e: unknown = readCurrent[i];
    if (typeof e !== "object" || e === null) {
      throw new TypeError(`request.readCurrent[${i}] must be { oid, serial }, got ${describe(e)}`);
    }
    checkOid((e as { oid?: unknown }).oid, `request.readCurrent[${i}].oid`);
    checkTid((e as { serial?: unknown }).serial, `request.readCurrent[${i}].serial`);
  }
  if (meta !== undefined) {
    if (typeof meta !== "object" || meta === null || Array.isArray(meta)) {
      throw new TypeError(`request.meta must be an object of strings, got ${describe(meta)}`);
    }
    for (const [key, value] of Object.entries(meta)) {
      if (typeof value !== "string") throw new TypeError(`request.meta.${key} must be a string, got ${describe(value)}`);
    }
  }
}
