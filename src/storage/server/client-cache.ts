/**
 * The client storage's record cache and invalidation log, shared by every connection of
 * one DB (they share its storage). Bounded in bytes; optionally saved to a file when the
 * storage closes so that a restarted client starts warm.
 *
 * Invariants (why it never serves stale data):
 * - `known` is the newest tid the server has told this client about; every entry is the
 *   revision of its oid current at `known`. An INVALIDATE for tid T drops the entries of
 *   the oids T changed (and T's changes arrive before any snapshot >= T is used).
 * - So an entry with serial <= at is the revision at snapshot `at` for every at <= known:
 *   nothing changed the object in (serial, known].
 * - A record loaded from the server at snapshot `at` is the revision at `at`; it is current
 *   at `known` only if no invalidation in (at, known] named it. The log answers that for
 *   `at >= logStart`; older loads are not cached.
 * - Every record kept had its checksum checked, so records served from here need no check.
 * - Records may be views into the reply frame they came in (a closure's records are not
 *   copied one by one); a frame stays in memory while any of its records is cached. They
 *   are cached together and evicted together (LRU), so this costs little in practice.
 * - The log (tid, oids) also answers `changesSince` without a round trip. It is pruned to
 *   a bounded number of oids; a `since` older than what it holds gets "everything may
 *   have changed" (`oids: null`), which the interface allows.
 */
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { Packr } from "msgpackr";
import { crc32 } from "node:zlib";
import { CRC_RESIDUE, recordRefs } from "../../codec/record.ts";
import type { Changes, Oid, StoredRecord, Tid } from "../storage.ts";
import { makeDirectories } from "../make-directories.ts";

/** Oids kept in the invalidation log before the oldest transactions are dropped. */
const LOG_MAX_OIDS = 1_000_000;
const FILE_FORMAT = 1;

interface Entry {
  serial: Tid;
  data: Uint8Array;
}

const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

export class ClientCache {
  readonly maxBytes: number;
  /** Insertion order is recency order (a hit moves the entry to the end). */
  #entries = new Map<Oid, Entry>();
  #bytes = 0;
  #known: Tid = 0;
  #logStart: Tid = 0;
  #log: Array<{ tid: Tid; oids: Oid[] }> = [];
  #logOids = 0;
  /** For each oid in the log, the newest tid that changed it. */
  #lastChange = new Map<Oid, Tid>();
  hits = 0;
  misses = 0;

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  get known(): Tid {
    return this.#known;
  }

  get size(): number {
    return this.#entries.size;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** Start over at `tid` (a new server session with a different database, or the first). */
  reset(tid: Tid): void {
    this.#entries.clear();
    this.#bytes = 0;
    this.#resetLog(tid);
  }

  #resetLog(tid: Tid): void {
    this.#log = [];
    this.#logOids = 0;
    this.#lastChange.clear();
    this.#known = tid;
    this.#logStart = tid;
  }

  /** The cached revision of `oid` at snapshot `at` (<= known), or undefined. */
  get(oid: Oid, at: Tid): Entry | undefined {
    const e = this.#entries.get(oid);
    if (e === undefined || e.serial > at || at > this.#known) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.#entries.delete(oid);
    this.#entries.set(oid, e);
    return e;
  }

  /** (oid, serial) of cached revisions valid at `at`, at most `limit`, leaving out `skip`. */
  validAt(at: Tid, limit: number, skip: ReadonlySet<Oid> | null): Array<[Oid, Tid]> {
    const out: Array<[Oid, Tid]> = [];
    if (at > this.#known) return out;
    for (const [oid, e] of this.#entries) {
      if (out.length >= limit) break;
      if (e.serial <= at && (skip === null || !skip.has(oid))) out.push([oid, e.serial]);
    }
    return out;
  }

  /**
   * Keep `rec`, loaded at snapshot `at`, if it is still current. With `copy` false its
   * bytes are kept as they are (a view into a reply frame that nobody writes to).
   */
  put(rec: StoredRecord, at: Tid, copy = true, verified = false): void {
    if (this.maxBytes <= 0 || rec.data.length > this.maxBytes / 4) return;
    // Only records whose checksum holds are kept (closure records were checked by the walk).
    if (!verified && crc32(rec.data) !== CRC_RESIDUE) return;
    if (at < this.#logStart || at > this.#known) return;
    if (at < this.#known) {
      const changed = this.#lastChange.get(rec.oid);
      if (changed !== undefined && changed > at) return;
    }
    this.#store(rec.oid, rec.serial, copy ? Uint8Array.prototype.slice.call(rec.data) : rec.data);
  }

  #store(oid: Oid, serial: Tid, data: Uint8Array): void {
    const old = this.#entries.get(oid);
    if (old !== undefined) {
      this.#bytes -= old.data.length;
      this.#entries.delete(oid);
    }
    this.#entries.set(oid, { serial, data });
    this.#bytes += data.length;
    if (this.#bytes > this.maxBytes) {
      for (const [o, e] of this.#entries) {
        if (this.#bytes <= this.maxBytes * 0.9) break;
        this.#entries.delete(o);
        this.#bytes -= e.data.length;
      }
    }
  }

  /** Apply what the server said changed up to `changes.tid`. */
  invalidate(changes: Changes): void {
    if (changes.oids === null) {
      this.reset(Math.max(changes.tid, this.#known));
      return;
    }
    const tid = Math.max(changes.tid, this.#known);
    for (const oid of changes.oids) {
      const e = this.#entries.get(oid);
      if (e !== undefined) {
        this.#entries.delete(oid);
        this.#bytes -= e.data.length;
      }
      this.#lastChange.set(oid, tid);
    }
    if (changes.tid <= this.#known) return; // nothing new to log (its entries are dropped above)
    this.#log.push({ tid, oids: changes.oids });
    this.#logOids += changes.oids.length;
    this.#known = tid;
    while (this.#logOids > LOG_MAX_OIDS && this.#log.length > 1) {
      const old = this.#log.shift()!;
      this.#logOids -= old.oids.length;
      this.#logStart = old.tid;
      for (const oid of old.oids) if (this.#lastChange.get(oid) === old.tid) this.#lastChange.delete(oid);
    }
  }

  /** Oids changed after `since`, from the log; `null` when the log no longer reaches back. */
  changesSince(since: Tid): Changes {
    if (since >= this.#known) return { tid: this.#known, oids: [] };
    if (since < this.#logStart) return { tid: this.#known, oids: null };
    const oids = new Set<Oid>();
    for (let i = this.#log.length - 1; i >= 0 && this.#log[i]!.tid > since; i--) for (const oid of this.#log[i]!.oids) oids.add(oid);
    return { tid: this.#known, oids: [...oids] };
  }

  /** Write the cache to `path` (atomically: a reader sees the old file or the new one). */
  save(path: string, storageId: string): void {
    const records: Array<[Oid, Tid, Uint8Array]> = [];
    for (const [oid, e] of this.#entries) records.push([oid, e.serial, e.data]);
    makeDirectories(dirname(path)); // not mkdirSync's recursive mode: it can loop forever (see there)
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, packr.pack({ format: FILE_FORMAT, storageId, tid: this.#known, records }));
    renameSync(tmp, path);
  }

  /**
   * The saved cache at `path`, if it belongs to `storageId` (null: any): its records and the tid they
   * were current at. `undefined` when there is none or it cannot be used.
   */
  static read(path: string, storageId: string | null): { tid: Tid; records: unknown[] } | undefined {
    let bytes: Buffer;
    try {
      bytes = readFileSync(path);
    } catch {
      return undefined;
    }
    try {
      const v = packr.unpack(bytes) as { format?: number; storageId?: string; tid?: number; records?: unknown[] };
      if (v.format !== FILE_FORMAT || (storageId !== null && v.storageId !== storageId) || !Number.isSafeInteger(v.tid) || !Array.isArray(v.records)) return undefined;
      return { tid: v.tid as Tid, records: v.records };
    } catch {
      return undefined; // a damaged cache file is only a cold start
    }
  }

  /**
   * Fill the (just reset) cache from a saved one, leaving out `changed`: the oids written
   * since it was saved, up to `known`. What remains is current at `known`.
   */
  restore(records: unknown[], changed: ReadonlySet<Oid>): void {
    for (const entry of records) {
      // A saved file is only a hint: anything malformed or damaged is left out.
      if (!Array.isArray(entry) || entry.length !== 3) continue;
      const [oid, serial, data] = entry as [unknown, unknown, unknown];
      if (!Number.isSafeInteger(oid) || !Number.isSafeInteger(serial) || !(data instanceof Uint8Array)) continue;
      if (changed.has(oid as Oid) || (serial as Tid) <= 0 || (serial as Tid) > this.#known) continue;
      if (this.#bytes + data.length > this.maxBytes) continue;
      try {
        recordRefs(data, oid as Oid); // checks the checksum and the header
      } catch {
        continue;
      }
      this.#store(oid as Oid, serial as Tid, data);
    }
  }
}
