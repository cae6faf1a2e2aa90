/** Input checks and tid allocation shared by the storages. */
import type { CommitRequest, Tid } from "./storage.ts";

/** A count of oids to reserve: a positive integer. */
export function checkCount(count: number): void {
  if (!Number.isInteger(count) || count < 1 || count > 1_000_000) {
    throw new RangeError(`newOids(count): count must be an integer from 1 to 1,000,000, got ${String(count)}`);
  }
}

/** A commit request: records with non-negative integer oids and serials and byte data, no oid twice. */
export function checkRequest(request: CommitRequest): void {
  if (request === null || typeof request !== "object" || !Array.isArray(request.records) || !Array.isArray(request.readCurrent)) {
    throw new TypeError("commit request must have records and readCurrent arrays");
  }
  const seen = new Set<number>();
  for (const r of request.records) {
    if (!Number.isSafeInteger(r.oid) || r.oid < 0) throw new TypeError(`commit request: bad oid ${String(r.oid)}`);
    if (!Number.isSafeInteger(r.serial) || r.serial < 0) throw new TypeError(`commit request: bad serial ${String(r.serial)} for oid ${r.oid}`);
    if (!(r.data instanceof Uint8Array)) throw new TypeError(`commit request: data of oid ${r.oid} is not a Uint8Array`);
    if (seen.has(r.oid)) throw new TypeError(`commit request: oid ${r.oid} appears twice`);
    seen.add(r.oid);
  }
  for (const r of request.readCurrent) {
    if (!Number.isSafeInteger(r.oid) || r.oid < 0) throw new TypeError(`commit request: bad readCurrent oid ${String(r.oid)}`);
  }
}

/** The next tid: greater than `last`, and the clock in microseconds when that is larger. */
export function nextTid(last: Tid): Tid {
  return Math.max(last + 1, Date.now() * 1000);
}
