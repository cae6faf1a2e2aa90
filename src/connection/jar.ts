/**
 * What persistent objects call back (`Jar`, persistent/persistent.ts): loading a ghost,
 * checking that a change is allowed now, noting a change or a nested value handed out, and
 * the connection's comparisons. The connection's internals (`Core`) with these methods.
 */
import { readEnvelope } from "../codec/record.ts";
import { decodeState } from "../codec/state.ts";
import { TransactionError } from "../errors.ts";
import { notLoaded } from "../loading/strict.ts";
import { CHANGED, LOCKED, SAVED, isPersistent, type Meta, type Persistent } from "../persistent/persistent.ts";
import { STALE_CONTAINERS, hasCustomState } from "../persistent/slots.ts";
import { applyDefaults } from "./class-defaults.ts";
import { Core, stale } from "./core.ts";
import { acceptAnyRef, evict, install, installKept, installStale, loadOne, refsOf } from "./object-loader.ts";
import { sameAsStored, snapshotObject } from "./object-state.ts";
import { Phase } from "./phase.ts";

export class ConnectionJar extends Core {
  override readonly evictCb = (obj: Persistent, meta: Meta): boolean => evict(this, obj, meta);
  override readonly evictFlatCb = (obj: Persistent, meta: Meta): boolean => !meta.handed && evict(this, obj, meta);

  override activate(obj: Persistent, meta: Meta): void {
    if (meta.token !== this.token || this.phase === Phase.CLOSED) {
      if (meta.record === null) throw stale(this, meta, "read");
      installStale(this, obj, meta);
      return;
    }
    if (meta.record !== null) {
      installKept(this, obj, meta); // a soft ghost: its record is here, no storage call
      return;
    }
    if (this.strict && !this.installingPlan && this.phase !== Phase.REPLAYING) throw notLoaded(meta, this.planGroups);
    const rec = loadOne(this, meta.oid, meta.className);
    install(this, obj, meta, rec, readEnvelope(rec.data, rec.oid));
  }

  override checkWrite(obj: Persistent, meta: Meta): void {
    if (meta.token !== this.token || this.phase === Phase.CLOSED) throw stale(this, meta, "change");
    if (this.phase === Phase.COMMITTING) {
      throw new TransactionError(
        `cannot change ${meta.className}#${meta.oid} while a commit of its connection is in flight; ` +
          `await the commit first (changes now would belong to no transaction)`,
        "in-flight",
      );
    }
    if (this.at !== undefined) {
      throw new TransactionError(`cannot change ${meta.className}#${meta.oid}: this is a read-only historical view`, "read-only");
    }
  }

  override isDirty(obj: Persistent, meta: Meta): boolean {
    if (meta.state === CHANGED || meta.state === LOCKED) return true;
    if (meta.state !== SAVED || !meta.handed || meta.token !== this.token) return false;
    try {
      return !sameAsStored(meta, snapshotObject(obj, meta, acceptAnyRef));
    } catch {
      return true; // holds something that cannot be stored: certainly not the stored state
    }
  }

  /**
   * Nested values of `obj` may have been handed out in an earlier transaction:
   * install fresh copies from its record (its other values are the stored ones already).
   */
  override refreshContainers(obj: Persistent, meta: Meta): void {
    meta.watch = meta.containers ? 1 : 0;
    const values = meta.values;
    const data = meta.record;
    if (values === null || data === null || meta.token !== this.token || hasCustomState(obj)) return;
    const env = readEnvelope(data, meta.oid, true);
    const state = decodeState(env.data, refsOf(this, env, meta), env.shared, env.stateStart, env.stateEnd);
    applyDefaults(Object.getPrototypeOf(obj) as object, state, Object.keys(state));
    for (const k of Object.keys(state)) {
      const v = state[k];
      if (typeof v === "object" && v !== null && !isPersistent(v)) values[k] = v;
    }
  }

  /** A loaded object handed out a nested mutable value (see persistent.ts). */
  override handedOut(obj: Persistent, meta: Meta): void {
    if (meta.handed || meta.token !== this.token) return;
    meta.handed = true;
    this.handedList.push(obj);
  }


  override changed(obj: Persistent, meta: Meta): void {
    if (meta.state === SAVED) {
      if (meta.watch === STALE_CONTAINERS) this.refreshContainers(obj, meta);
      meta.state = CHANGED;
      this.changedList.push(obj);
      this.cache.touch(obj, meta);
    }
  }
}
