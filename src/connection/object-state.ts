/**
 * Between a persistent object and its record: taking the state out of an object (for a
 * commit or a comparison), putting a decoded state into a ghost, dropping it again, and
 * deciding whether an object that handed out nested values still matches its stored bytes.
 *
 * Three kinds of objects keep their state differently:
 * - collections (custom state): a symbol-keyed slot, through GET_STATE / SET_STATE;
 * - BrokenObjects: plain data properties, never compared (written back byte for byte);
 * - every other persistent object: field accessors backed by `Meta.values` (fields.ts),
 *   except while new, when its fields are the plain data properties its constructor made.
 */
import { encodeState, type EncodedState } from "../codec/state.ts";
import { BrokenObject } from "../persistent/broken-object.ts";
import { fieldValues, installFields } from "../persistent/fields.ts";
import { NEW, isPersistent, type Meta, type Persistent } from "../persistent/persistent.ts";
import { hasCustomState, CLEAR_STATE, GET_STATE, HOLDS_CONTAINERS, SET_STATE } from "../persistent/slots.ts";
import { clearState, installData, ownState } from "../persistent/data-props.ts";
import { persistentInfo, type ClassInfo } from "../persistent/class-registry.ts";

export interface ObjectSnapshot extends EncodedState {
  info: ClassInfo;
  /** The values encoded (the plain state object), kept as the new backing values. */
  values: Record<string, unknown>;
}

/** The object's state as a plain object of values (not a copy of nested containers). */
export function stateValues(obj: Persistent, meta: Meta): Record<string, unknown> {
  if (hasCustomState(obj)) return obj[GET_STATE]();
  if (meta.state === NEW || meta.values === null) return ownState(obj);
  return fieldValues(obj, meta);
}

/** Encode an object's current state; `checkRef` vets each referenced persistent object. */
export function snapshotObject(
  obj: Persistent,
  meta: Meta,
  checkRef: (p: Persistent, path: () => string) => void,
): ObjectSnapshot {
  const info = persistentInfo(obj);
  const values = stateValues(obj, meta);
  const snap = encodeState(info.cls.name || info.name, values, checkRef) as ObjectSnapshot;
  snap.info = info;
  snap.values = values;
  return snap;
}

/** Put a decoded state into a ghost (or an object being restored). */
export function putState(obj: Persistent, meta: Meta, state: Record<string, unknown>): void {
  if (hasCustomState(obj)) obj[SET_STATE](state);
  else if (obj instanceof BrokenObject) installData(obj, state);
  else installFields(obj, meta, state);
}

/** Take the state out of a loaded object (it becomes a ghost, soft or not). */
export function dropState(obj: Persistent, meta: Meta): void {
  if (hasCustomState(obj)) obj[CLEAR_STATE]();
  else if (obj instanceof BrokenObject) clearState(obj);
  meta.values = null;
}

/** Does the installed state hold nested mutable values the application can reach? */
export function holdsContainers(obj: Persistent, state: Record<string, unknown>): boolean {
  if (hasCustomState(obj)) return typeof obj[HOLDS_CONTAINERS] === "function" && obj[HOLDS_CONTAINERS]();
  if (obj instanceof BrokenObject) return false;
  for (const k in state) {
    const v = state[k];
    if (typeof v === "object" && v !== null && !isPersistent(v)) return true;
  }
  return false;
}

/** Is `snap` (the object encoded now) what `meta` holds as stored (bytes and references)? */
export function sameAsStored(meta: Meta, snap: EncodedState): boolean {
  const bytes = meta.bytes;
  if (bytes === null || !sameBytes(snap.state, bytes)) return false;
  const refs = meta.refs;
  if (refs === null || refs.length !== snap.refs.length) return false;
  for (let i = 0; i < refs.length; i++) if (refs[i] !== snap.refs[i]) return false;
  return true;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}
