/**
 * The object loader: one install path for every way a record reaches an object (a touch of
 * a ghost, `conn.get`, batch loads, closures, plans, a soft ghost's kept record, a stale
 * object read after its checkout ended), the ghosts made for the references of a record,
 * new instances for a new checkout, and the way back: eviction, soft ghosts, invalidation.
 */
import { readEnvelope, type ParsedEnvelope } from "../codec/record.ts";
import { decodeState, encodeState } from "../codec/state.ts";
import { NotLoadedError, StorageError } from "../errors.ts";
import { BrokenObject, keepOriginal } from "../persistent/broken-object.ts";
import { classByName } from "../persistent/class-registry.ts";
import { dropAddedFields, giveAccessors } from "../persistent/fields.ts";
import { CHANGED, GHOST, NEW, SAVED, Meta, makeGhost, metaOf, type Persistent } from "../persistent/persistent.ts";
import { STALE_CONTAINERS, hasCustomState } from "../persistent/slots.ts";
import type { Oid, StoredRecord } from "../storage/storage.ts";
import { applyDefaults } from "./class-defaults.ts";
import { mergesConflicts, resolverOf } from "../persistent/conflict-hooks.ts";
import { checkSession, noteLoad, notFound, type Core } from "./core.ts";
import { dropState, holdsContainers, putState } from "./object-state.ts";

/**
 * Load one record for a ghost. The data may be lent by the storage (valid until its next
 * call): `#install` decodes it at once and copies the little it keeps.
 */
export function loadOne(c: Core, oid: Oid, className: string): StoredRecord {
  const s = c.storage;
  if (s.loadOneSync !== undefined) {
    const sent = s.remoteRequests;
    const rec = s.loadOneSync(oid, c.tid, true);
    // A remote storage says how many requests the load sent: none for a record from its cache.
    c.stats.roundTrips += sent === undefined ? 1 : (s.remoteRequests ?? sent) - sent;
    if (s.session !== c.session) checkSession(c);
    if (rec === null) throw notFound(c, oid, className);
    c.stats.loads++;
    noteLoad(className);
    c.stats.bytesRead += rec.data.length;
    return rec;
  }
  const load = s.loadSync;
  if (load === undefined) {
    throw new NotLoadedError(
      oid,
      className,
      `${className}#${oid} is not loaded and ${c.storage.url} cannot load synchronously; ` +
        `load it first with await conn.prefetch([...])`,
    );
  }
  c.stats.roundTrips++;
  const rec = load.call(c.storage, [oid], c.tid)[0];
  checkSession(c);
  if (rec === null || rec === undefined) throw notFound(c, oid, className);
  c.stats.loads++;
  noteLoad(className);
  c.stats.bytesRead += rec.data.length;
  return rec;
}

/** The object for `oid`: the one this connection holds, or a new ghost of the stored class. */
export function objectFor(c: Core, oid: Oid, className: string, viaMeta: Meta | null = null, viaPath = ""): Persistent {
  const known = c.cache.get(oid);
  if (known !== undefined) {
    const km = metaOf(known);
    if (km.token !== c.token) return reinstance(c, known, km);
    if (km.state !== GHOST) c.stats.cacheHits++;
    return known;
  }
  const meta = new Meta();
  meta.jar = c;
  meta.token = c.token;
  meta.oid = oid;
  meta.className = className;
  meta.viaMeta = viaMeta;
  meta.viaPath = viaPath;
  const obj = ghostOf(c, className, meta);
  c.cache.add(oid, obj);
  return obj;
}

/** A ghost of the stored class `className` (with the accessors of its fields). */
export function ghostOf(c: Core, className: string, meta: Meta): Persistent {
  const info = classByName(className);
  const cls = info !== undefined && info.kind === "persistent" ? info.cls : BrokenObject;
  const obj = makeGhost(cls, meta);
  if (cls !== BrokenObject && !hasCustomState(obj)) giveAccessors(obj, meta);
  return obj;
}

/**
 * The object for an oid whose cached instance belongs to an earlier checkout of this
 * connection (stale): a new instance for this checkout, which takes over the record the
 * old one holds (a soft ghost, installed on first touch without a storage call). The
 * old instance keeps what it holds for reading; changing it throws.
 */
export function reinstance(c: Core, old: Persistent, om: Meta): Persistent {
  const meta = new Meta();
  meta.jar = c;
  meta.token = c.token;
  meta.oid = om.oid;
  meta.className = om.className;
  const kept = om.record !== null && om.state !== NEW && om.state !== CHANGED;
  if (kept) {
    meta.record = om.record;
    meta.serial = om.serial;
    meta.size = om.size;
  }
  const obj = ghostOf(c, om.className, meta);
  c.cache.unload(old, om);
  c.cache.add(meta.oid, obj);
  if (kept) c.cache.touch(obj, meta);
  return obj;
}

/**
 * Decode `rec` into the ghost `obj`. With `lent` (the default), `rec.data` is the
 * storage's memory: the record is copied (an object keeps its record while loaded, to
 * restore, compare and reinstall its state without a storage call).
 */
export function install(c: Core, obj: Persistent, meta: Meta, rec: StoredRecord, env: ParsedEnvelope, lent = true): void {
  const refs = refsOf(c, env, meta);
  let state: Record<string, unknown>;
  try {
    state = decodeState(env.data, refs, env.shared, env.stateStart, env.stateEnd);
  } catch (err) {
    throw new StorageError(`record of object ${rec.oid} (${env.className}) cannot be decoded: ${(err as Error).message}`, {
      oid: rec.oid,
      cause: err,
      code: "corrupt",
    });
  }
  // Our own copy of the record, unless it is ours already (a kept record, a batch reply
  // that is not much larger than the record).
  const data = rec.data;
  const own = data === meta.record ? data : lent || data.buffer.byteLength > 2 * data.byteLength ? copyBytes(data) : data;
  let bytes: Uint8Array | null = own.subarray(env.stateStart, env.stateEnd);
  let upgraded = false;
  const info = classByName(env.className);
  const broken = obj instanceof BrokenObject;
  if (broken) keepOriginal(obj, own);
  else if (info !== undefined && info.version > env.classVersion) {
    const upgrade = (info.cls as { upgrade?: unknown }).upgrade;
    if (typeof upgrade === "function") {
      state = upgrade.call(info.cls, state, env.classVersion) as Record<string, unknown>;
      upgraded = true;
    }
  }
  // The hook's "original" (upgraded, like the committed state, before the hook sees it).
  if (resolverOf(obj.constructor) !== undefined) {
    if (keepsOriginal(obj, state)) c.originals.set(meta, { bytes, shared: env.shared, version: env.classVersion });
    else c.originals.delete(meta); // a PersistentMap that stopped merging keys
  }
  const fields = !broken && !hasCustomState(obj);
  // Fields the class declares and the record lacks read as the declared defaults; what is
  // unchanged is then the state with them.
  if (fields && applyDefaults(Object.getPrototypeOf(obj) as object, state, Object.keys(state)) && !upgraded) {
    bytes = encodeState(env.className, state, acceptAnyRef).state;
  }
  putState(obj, meta, state);
  meta.serial = rec.serial;
  meta.className = env.className;
  meta.record = own;
  meta.bytes = bytes;
  meta.refs = refs;
  meta.containers = holdsContainers(obj, state);
  meta.watch = meta.containers ? 1 : 0;
  meta.handed = false;
  meta.state = SAVED;
  if (upgraded) c.changed(obj, meta);
  c.cache.resize(meta, own.length);
  c.cache.touch(obj, meta);
  if (!c.installingPlan && c.cache.overBudget()) c.cache.shrink(c.evictFlatCb, obj, 16);
}

/**
 * Reading a stale soft ghost (its checkout ended): its kept record is installed for
 * reading only. References in it are the objects of the same ended checkout when this
 * connection still holds them, else ghosts of that checkout, which cannot be loaded.
 */
export function installStale(c: Core, obj: Persistent, meta: Meta): void {
  const data = meta.record!;
  const env = readEnvelope(data, meta.oid, true);
  const refs = env.refOids.map((oid, i) => {
    const known = c.cache.get(oid);
    if (known !== undefined && metaOf(known).token === meta.token) return known;
    const m = new Meta();
    m.jar = c;
    m.token = meta.token;
    m.oid = oid;
    m.className = env.refClasses[i]!;
    return ghostOf(c, m.className, m);
  });
  putState(obj, meta, decodeState(env.data, refs, env.shared, env.stateStart, env.stateEnd));
  meta.refs = refs;
  meta.watch = 0;
  meta.state = SAVED;
}

/** Install a soft ghost's kept record again (no storage call, allowed in strict mode). */
export function installKept(c: Core, obj: Persistent, meta: Meta): void {
  const data = meta.record!;
  install(c, obj, meta, { oid: meta.oid, serial: meta.serial, data }, readEnvelope(data, meta.oid, true), false);
}

/** The objects a record refers to; new ghosts remember `parent` and the path (strict mode). */
export function refsOf(c: Core, env: ParsedEnvelope, parent: Meta | null = null): Persistent[] {
  const n = env.refOids.length;
  const refs: Persistent[] = new Array(n);
  const paths = env.refPaths;
  for (let i = 0; i < n; i++) refs[i] = objectFor(c, env.refOids[i]!, env.refClasses[i]!, parent, paths[i]!);
  return refs;
}

export function evict(c: Core, obj: Persistent, meta: Meta): boolean {
  if (meta.state === GHOST) {
    if (meta.record === null) return false;
    ghostify(c, obj, meta); // a soft ghost gives up its record
    return true;
  }
  if (meta.state !== SAVED) return false;
  if (meta.handed && c.isDirty(obj, meta)) {
    c.changed(obj, meta);
    return false;
  }
  ghostify(c, obj, meta);
  return true;
}

/**
 * The transaction that may have handed out the object's nested values ends: a field object
 * gets fresh ones from its record before it hands one out again (STALE_CONTAINERS), a
 * collection becomes a soft ghost (its state is installed again on the next touch).
 */
export function holdOver(c: Core, obj: Persistent, meta: Meta): void {
  meta.handed = false;
  if (meta.values !== null && !hasCustomState(obj)) meta.watch = STALE_CONTAINERS;
  else soften(c, obj, meta);
}

/** Drop the installed state but keep the record: the next touch installs it again. */
export function soften(c: Core, obj: Persistent, meta: Meta): void {
  dropState(obj, meta);
  meta.state = GHOST;
  meta.handed = false;
  meta.watch = 0;
}

export function ghostify(c: Core, obj: Persistent, meta: Meta): void {
  c.cache.unload(obj, meta);
  dropAddedFields(obj, meta);
  dropState(obj, meta);
  meta.state = GHOST;
  const refs = meta.refs;
  meta.record = null;
  meta.bytes = null;
  meta.refs = null;
  meta.handed = false;
  meta.watch = 0;
  // The object and the ghosts it referred to may now be unreachable: hold them weakly.
  c.cache.demote(meta.oid, obj);
  if (refs !== null) {
    for (const r of refs) {
      const rm = metaOf(r);
      if (rm.state === GHOST && rm.record === null) c.cache.demote(rm.oid, r);
    }
  }
}

/** Decode a record's state without installing it (history). */
export function decodeRecord(c: Core, rec: StoredRecord): Record<string, unknown> {
  const env = readEnvelope(rec.data, rec.oid);
  return decodeState(env.data, refsOf(c, env), env.shared, env.stateStart, env.stateEnd);
}

/**
 * A copy of a record's bytes. `Buffer.from` copies small records into Node's shared pool
 * (a few times faster than a typed-array slice); records loaded together share a slab.
 */
export function copyBytes(bytes: Uint8Array): Uint8Array {
  return Buffer.from(bytes);
}

/** For comparisons: every reference is acceptable (nothing is adopted). */
export function acceptAnyRef(): void {}

/** Keep the stored bytes an object was read at (its class resolves conflicts)? */
export function keepsOriginal(obj: Persistent, state: Record<string, unknown>): boolean {
  return mergesConflicts(obj.constructor, state);
}
