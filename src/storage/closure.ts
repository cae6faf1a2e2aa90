/**
 * Walking the stored graph from one object: the closure `loadClosure` returns. Used by the
 * local storages and by the storage server, which has no application classes: references
 * are read from each record's envelope header (codec/record.ts), never from the state.
 *
 * Every record returned had its checksum checked here (`recordRefs`).
 *
 * Breadth-first from the root, so a closure cut short by a limit holds the objects
 * nearest the root. Every object is read at the same snapshot `at`; an object that does
 * not exist there (a dangling reference) is listed in `missing`, not loaded.
 *
 * @internal
 */
import { recordRefs } from "../codec/record.ts";
import type { ClosureOptions, ClosureResult, Oid, StoredRecord, Tid } from "./storage.ts";

export interface ClosureWalk extends ClosureResult {
  /** Reached oids whose records were not returned because the caller holds them. */
  held: Oid[];
}

/** Validate closure options; the limits default to unbounded. */
export function closureLimits(options: ClosureOptions = {}): { maxObjects: number; maxBytes: number } {
  const maxObjects = options.maxObjects ?? Number.MAX_SAFE_INTEGER;
  const maxBytes = options.maxBytes ?? Number.MAX_SAFE_INTEGER;
  if (!(Number.isInteger(maxObjects) && maxObjects >= 1)) throw new RangeError(`maxObjects must be a positive integer, got ${String(maxObjects)}`);
  if (!(typeof maxBytes === "number" && maxBytes >= 1)) throw new RangeError(`maxBytes must be a positive number, got ${String(maxBytes)}`);
  return { maxObjects, maxBytes };
}

/**
 * The closure of `root` at `at`. `load` reads one record (null when it does not exist at
 * `at`); records of oids in `have` are read, to walk through them, but not returned.
 * The walk stops before the record that would pass `maxObjects` or `maxBytes`.
 *
 * With `emit`, each record to return is handed to it at once instead of being collected
 * (`records` stays empty): `load` may then lend its bytes, valid until its next call.
 * `cached` (oid to serial) names records the caller has elsewhere (a client's record
 * cache): when the revision found has that serial it is still counted against the limits,
 * in its place, but handed to `emit` with `cachedCopy` true so only a marker is sent.
 */
export function walkClosure(
  load: (oid: Oid) => StoredRecord | null,
  root: Oid,
  options: ClosureOptions = {},
  emit?: (rec: StoredRecord, cachedCopy: boolean) => void,
  cached?: ReadonlyMap<Oid, number>,
): ClosureWalk {
  const { maxObjects, maxBytes } = closureLimits(options);
  const have = options.have === undefined || options.have.length === 0 ? null : new Set(options.have);
  const seen = new Set<Oid>([root]);
  const queue: Oid[] = [root];
  const records: StoredRecord[] = [];
  const held: Oid[] = [];
  const missing: Oid[] = [];
  let count = 0;
  let bytes = 0;
  let truncated = false;
  for (let i = 0; i < queue.length; i++) {
    const oid = queue[i]!;
    const rec = load(oid);
    if (rec === null) {
      missing.push(oid);
      continue;
    }
    const refs = recordRefs(rec.data, oid);
    if (have !== null && have.has(oid)) held.push(oid);
    else {
      if (count + 1 > maxObjects || bytes + rec.data.length > maxBytes) {
        truncated = true;
        break;
      }
      count++;
      bytes += rec.data.length;
      if (emit === undefined) records.push(rec);
      else emit(rec, cached !== undefined && cached.get(oid) === rec.serial);
    }
    for (const ref of refs) {
      if (!seen.has(ref)) {
        seen.add(ref);
        queue.push(ref);
      }
    }
  }
  return { records, held, missing, truncated };
}

/** `loadClosure` for a storage that answers synchronously. */
export function closureOf(
  loadOne: (oid: Oid, at: Tid) => StoredRecord | null,
  root: Oid,
  at: Tid,
  options?: ClosureOptions,
): ClosureResult {
  const { records, missing, truncated } = walkClosure((oid) => loadOne(oid, at), root, options);
  return { records, missing, truncated };
}
