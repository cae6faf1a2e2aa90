/**
 * The steps of a commit that need no connection internals: encoding the changed objects
 * (and the new objects they reach), building the storage request, and naming conflicts.
 */
import { writeEnvelope } from "../codec/record.ts";
import { ConflictError, TransactionError, type ConflictDetail } from "../errors.ts";
import { BrokenObject, originalOf } from "../persistent/broken-object.ts";
import { persistentInfo } from "../persistent/class-registry.ts";
import { NEW, metaOf, type Jar, type Meta, type Persistent } from "../persistent/persistent.ts";
import type { CommitRequest, Oid, RecordToStore, StorageConflict, Tid } from "../storage/storage.ts";
import { snapshotObject, type ObjectSnapshot } from "./object-state.ts";

/**
 * Encode the changed objects of `work` and, transitively, the new objects they reach: each
 * new object is adopted by `jar` (pushed to `work` and `adopted`). A reference to an object
 * of another connection raises a TransactionError naming the property path. BrokenObjects
 * get `null` (their original bytes are written).
 */
export function encodeChanged(jar: Jar, work: Array<[Persistent, Meta]>, adopted: Meta[]): Array<ObjectSnapshot | null> {
  const checkRef = (p: Persistent, path: () => string): void => {
    const m = metaOf(p);
    if (m.jar === jar) return;
    if (m.jar === null) {
      persistentInfo(p);
      m.jar = jar;
      adopted.push(m);
      work.push([p, m]);
      return;
    }
    throw new TransactionError(
      `${path()} refers to ${m.className}#${m.oid}, which belongs to another connection; ` +
        `objects cannot move between connections (get it through this one with conn.get(${m.oid}))`,
      "foreign-object",
    );
  };
  const snaps: Array<ObjectSnapshot | null> = [];
  for (let i = 0; i < work.length; i++) {
    const [obj] = work[i]!;
    snaps.push(obj instanceof BrokenObject ? null : snapshotObject(obj, checkRef));
  }
  return snaps;
}

/** The storage request for `work` (oids assigned), with the read-only dependencies. */
export function buildRequest(
  work: Array<[Persistent, Meta]>,
  snaps: Array<ObjectSnapshot | null>,
  readCurrent: Iterable<Meta>,
): CommitRequest {
  // Plain loops: this runs once per written object, and closures made per record cost
  // extra where code is compiled with esbuild's keepNames (tsx).
  const records: RecordToStore[] = new Array(work.length);
  const written = new Set<Oid>();
  for (let i = 0; i < work.length; i++) {
    const [obj, meta] = work[i]!;
    const snap = snaps[i];
    let data: Uint8Array;
    if (snap === null || snap === undefined) {
      data = originalOf(obj as BrokenObject)!;
    } else {
      const n = snap.refs.length;
      const refOids: Oid[] = new Array(n);
      const refClasses: string[] = new Array(n);
      for (let j = 0; j < n; j++) {
        const r = snap.refs[j]!;
        const rm = metaOf(r);
        refOids[j] = rm.oid;
        refClasses[j] = rm.className !== "" ? rm.className : persistentInfo(r).name;
      }
      data = writeEnvelope({
        className: snap.info.name,
        classVersion: snap.info.version,
        refOids,
        refPaths: snap.refPaths,
        refClasses,
        shared: snap.shared,
        state: snap.state,
      });
    }
    records[i] = { oid: meta.oid, serial: meta.state === NEW ? 0 : meta.serial, data };
    written.add(meta.oid);
  }
  const current: Array<{ oid: Oid; serial: Tid }> = [];
  for (const m of readCurrent) if (!written.has(m.oid)) current.push({ oid: m.oid, serial: m.serial });
  return { records, readCurrent: current };
}

/** A ConflictError naming the class of each conflicting object this transaction used. */
export function conflictErrorFor(
  conflicts: StorageConflict[],
  work: Array<[Persistent, Meta]>,
  readCurrent: Iterable<Meta>,
): ConflictError {
  const names = new Map<Oid, string>();
  for (const [, m] of work) names.set(m.oid, m.className);
  for (const m of readCurrent) names.set(m.oid, m.className);
  const details: ConflictDetail[] = conflicts.map((c) => ({
    oid: c.oid,
    className: names.get(c.oid) ?? "?",
    readSerial: c.readSerial,
    committedSerial: c.committedSerial,
    readOnly: c.readOnly,
  }));
  return new ConflictError(details);
}
