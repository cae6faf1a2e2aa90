/**
 * The steps of a commit that need no connection internals: encoding the changed objects
 * (and the new objects they reach), building the storage request, and naming conflicts.
 */
import { writeEnvelope } from "../codec/record.ts";
import { ConflictError, TransactionError, type ConflictDetail } from "../errors.ts";
import { BrokenObject, originalOf } from "../persistent/broken-object.ts";
import { persistentInfo } from "../persistent/class-registry.ts";
import { CHANGED, NEW, SAVED, metaOf, type Jar, type Meta, type Persistent } from "../persistent/persistent.ts";
import { FAN_OUT } from "../persistent/slots.ts";
import type { CommitRequest, Oid, RecordToStore, StorageConflict, Tid } from "../storage/storage.ts";
import { sameAsStored, snapshotObject, type ObjectSnapshot } from "./object-state.ts";

/**
 * Encode the changed objects of `work` and, transitively, the new objects they reach: each
 * new object is adopted by `jar` (pushed to `work` and `adopted`). A reference to an object
 * of another connection raises a TransactionError naming the property path. BrokenObjects
 * get `null` (their original bytes are written).
 */
export function encodeChanged(jar: Jar, work: Array<[Persistent, Meta]>, adopted: Meta[]): Array<ObjectSnapshot | null> {
  const checkRef = adopter(jar, work, adopted);
  const snaps: Array<ObjectSnapshot | null> = [];
  for (let i = 0; i < work.length; i++) {
    const [obj, meta] = work[i]!;
    snaps.push(obj instanceof BrokenObject ? null : snapshotObject(obj, meta, checkRef));
  }
  return snaps;
}

/**
 * The reference check of a commit's encodings: a new object (of no connection) is adopted
 * by `jar` (appended to `work` and `adopted`, so it is encoded too); a reference to an
 * object of another connection raises a TransactionError naming the property path.
 */
function adopter(jar: Jar, work: Array<[Persistent, Meta]>, adopted: Meta[]): (p: Persistent, path: () => string) => void {
  const token = (jar as { token?: unknown }).token;
  return (p: Persistent, path: () => string): void => {
    const m = metaOf(p);
    if (m.jar === jar) {
      if (m.token === token || m.state === NEW) return;
      throw new TransactionError(
        `${path()} refers to ${m.className}#${m.oid} of an earlier checkout of this connection (it was closed since); ` +
          `get the object again in the current transaction (conn.get(${m.oid}))`,
        "stale-object",
      );
    }
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
        fanOut: fanOutOf(snap.info.cls),
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

/**
 * The work of one commit round: the objects this transaction changed, the objects that
 * handed out nested values and now differ from their records (each encoded once: the
 * comparison's encoding is the one written; `onChanged` is told about each), and the new
 * objects all of these reach (adopted). Returns the objects and their encodings, in order.
 */
export function collectWork(
  jar: Jar,
  changed: readonly Persistent[],
  handed: readonly Persistent[],
  adopted: Meta[],
  onChanged: (obj: Persistent, meta: Meta) => void,
): { work: Array<[Persistent, Meta]>; snaps: Array<ObjectSnapshot | null> } {
  const work: Array<[Persistent, Meta]> = [];
  const snaps: Array<ObjectSnapshot | null> = [];
  const token = (jar as { token?: unknown }).token;
  // An object can be on the list twice (changed, reloaded by a BTree replay, changed again).
  const listed = new Set<Meta>();
  for (const obj of changed) {
    const m = metaOf(obj);
    if (m.state === CHANGED && m.token === token && m.jar === jar && !listed.has(m)) {
      listed.add(m);
      work.push([obj, m]);
    }
  }
  const checkRef = adopter(jar, work, adopted);
  // Encode the changed objects first: an object reached from both lists is found once.
  for (let i = 0; i < work.length; i++) {
    const [obj, meta] = work[i]!;
    snaps[i] = obj instanceof BrokenObject ? null : snapshotObject(obj, meta, checkRef);
  }
  // New objects reached from a compared object are adopted only once it is known to be
  // written (one that reaches a new object always is), so that work and snaps stay aligned.
  const reached: Persistent[] = [];
  const deferNew = (p: Persistent, path: () => string): void => {
    if (metaOf(p).jar === null) {
      persistentInfo(p); // an unregistered class is refused here, where the codec names the path
      reached.push(p);
    } else checkRef(p, path);
  };
  for (const obj of handed) {
    const m = metaOf(obj);
    if (!m.handed || m.state !== SAVED || m.token !== token) continue;
    reached.length = 0;
    const snap = snapshotObject(obj, m, deferNew);
    if (sameAsStored(m, snap)) continue;
    onChanged(obj, m);
    work.push([obj, m]);
    snaps.push(snap);
    for (const p of reached) checkRef(p, () => "");
  }
  for (let i = snaps.length; i < work.length; i++) {
    const [obj, meta] = work[i]!;
    snaps[i] = obj instanceof BrokenObject ? null : snapshotObject(obj, meta, checkRef);
  }
  return { work, snaps };
}

/** How plans treat the references of records of `cls` (its static FAN_OUT, or none). */
function fanOutOf(cls: Function): number {
  const v = (cls as { [FAN_OUT]?: unknown })[FAN_OUT];
  return v === 1 || v === 2 ? v : 0;
}
