/**
 * Transaction boundaries: a transaction begins when the connection is opened (or taken from
 * its pool) and after each commit or abort. Beginning applies invalidations (objects other
 * transactions changed become ghosts), moves to the newest snapshot and trims the cache;
 * ending forgets the transaction's lists. Both cost what the transaction touched (and what
 * others changed), never what the cache holds.
 */
import { dropAddedFields } from "../persistent/fields.ts";
import { CHANGED, SAVED, metaOf } from "../persistent/persistent.ts";
import type { Changes, Tid } from "../storage/storage.ts";
import { Phase } from "./phase.ts";
import type { Core } from "./core.ts";
import { ghostify, holdOver, soften } from "./object-loader.ts";

/** Begin a new transaction: apply invalidations, move to the newest snapshot, trim the cache. */
export function begin(c: Core, committedTid?: Tid): void {
  c.txn++;
  c.notes = null;
  for (const obj of c.staleKept.splice(0)) {
    const meta = metaOf(obj);
    if ((meta.record !== null || meta.state === CHANGED) && meta.serial !== committedTid) ghostify(c, obj, meta);
  }
  c.doomed = null;
  if (c.phase === Phase.DOOMED) c.phase = Phase.ACTIVE;
  if (c.cache.overBudget()) c.cache.shrink(c.evictCb);
  const s = c.storage;
  if (c.at !== undefined) {
    c.session = s.session;
    return;
  }
  if (s.changesSinceSync === undefined) {
    c.session = s.session;
    return;
  }
  const changes = s.changesSinceSync(c.tid, committedTid);
  if (changes.local !== true) c.stats.roundTrips++;
  if (c.session !== s.session) {
    // The storage reconnected since this connection's last transaction (possibly to
    // another database, whose tids need not be comparable): drop every loaded object
    // and take the storage's snapshot as it is.
    c.session = s.session;
    invalidate(c, { tid: changes.tid, oids: null }, undefined, true);
    return;
  }
  invalidate(c, changes, committedTid);
}

export function invalidate(c: Core, changes: Changes, committedTid?: Tid, reset = false): void {
  if (changes.oids === null) {
    for (const [obj, meta] of c.cache.loadedObjects()) if (meta.serial !== committedTid) ghostify(c, obj, meta);
  } else {
    for (const oid of changes.oids) {
      const obj = c.cache.get(oid);
      if (obj === undefined) continue;
      const meta = metaOf(obj);
      if ((meta.record !== null || meta.state === CHANGED) && meta.serial !== committedTid) ghostify(c, obj, meta);
    }
  }
  c.tid = reset ? changes.tid : Math.max(c.tid, changes.tid);
  c.host.noteTid(c.tid);
}

/** Every changed object holds its stored state again; the transaction's lists are emptied. */
export function discardChanges(c: Core): void {
  for (const obj of c.changedList) {
    const m = metaOf(obj);
    if (m.state !== CHANGED || m.token !== c.token) continue;
    dropAddedFields(obj, m);
    if (m.record !== null) soften(c, obj, m);
    else if (m.oid >= 0 && c.cache.get(m.oid) === obj) ghostify(c, obj, m);
  }
  c.readCurrent.clear();
  endTransaction(c);
}

/**
 * Forget this transaction's lists. Objects that handed out nested values become soft
 * ghosts: the values handed out belong to this transaction, and the next read of the
 * object installs fresh ones from its record (no storage call).
 */
export function endTransaction(c: Core): void {
  for (const obj of c.handedList) {
    const m = metaOf(obj);
    if (m.handed && m.token === c.token && m.state === SAVED) holdOver(c, obj, m);
    m.handed = false;
  }
  c.handedList = [];
  c.changedList = [];
  c.changedInPlace.clear();
}

/** The transaction is over (committed, or had nothing to write): begin the next one. */
export function finishTransaction(c: Core, committedTid?: Tid): void {
  c.phase = Phase.ACTIVE;
  c.token.ok = c.at === undefined;
  c.readCurrent.clear();
  endTransaction(c);
  begin(c, committedTid);
}
