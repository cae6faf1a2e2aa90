/**
 * Between a persistent object and its record: taking the state out of an object (for a
 * commit or a dirty check), putting a decoded state into a ghost, and deciding whether a
 * loaded object differs from what was loaded.
 */
import { encodeState, type EncodedState } from "../codec/state.ts";
import {
  clearState,
  hasCustomState,
  installState,
  ownState,
  CLEAR_STATE,
  GET_STATE,
  SET_STATE,
  type Meta,
  type Persistent,
} from "../persistent/persistent.ts";
import { persistentInfo, type ClassInfo } from "../persistent/class-registry.ts";

export interface ObjectSnapshot extends EncodedState {
  info: ClassInfo;
  /** The values encoded (the plain state object), kept as the new `orig`. */
  values: Record<string, unknown>;
}

/** The object's state as a plain object of values (not a copy of nested containers). */
export function stateValues(obj: Persistent): Record<string, unknown> {
  return hasCustomState(obj) ? obj[GET_STATE]() : ownState(obj);
}

/** Encode an object's current state; `checkRef` vets each referenced persistent object. */
export function snapshotObject(
  obj: Persistent,
  checkRef: (p: Persistent, path: () => string) => void,
): ObjectSnapshot {
  const info = persistentInfo(obj);
  const values = stateValues(obj);
  const snap = encodeState(info.cls.name || info.name, values, checkRef) as ObjectSnapshot;
  snap.info = info;
  snap.values = values;
  return snap;
}

/** Put a decoded state into a ghost (or an object being reloaded). */
export function putState(obj: Persistent, state: Record<string, unknown>): void {
  if (hasCustomState(obj)) obj[SET_STATE](state);
  else installState(obj, state);
}

/** Take the state out of a loaded object (it becomes a ghost). */
export function dropState(obj: Persistent): void {
  if (hasCustomState(obj)) obj[CLEAR_STATE]();
  else clearState(obj);
}

/** Does any top-level value hold a nested container (anything but primitives and refs)? */
export function holdsContainers(state: Record<string, unknown>, isRef: (v: object) => boolean): boolean {
  for (const k in state) {
    const v = state[k];
    if (typeof v === "object" && v !== null && !isRef(v)) return true;
  }
  return false;
}

/**
 * Has the loaded object changed since `meta.orig` / `meta.bytes` were taken? Top-level
 * values are compared by identity (cheap, and enough for primitives and references);
 * when the state holds nested containers, the state is encoded again and compared with the
 * stored bytes and references.
 */
export function differs(obj: Persistent, meta: Meta, deep = true): boolean {
  if (!hasCustomState(obj)) {
    const orig = meta.orig;
    if (orig === null) return true;
    const keys = Object.keys(obj);
    if (keys.length !== meta.origKeys) return true;
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i]!;
      if (!Object.hasOwn(orig, k) || !Object.is((obj as unknown as Record<string, unknown>)[k], orig[k])) return true;
    }
  }
  if (!meta.containers || !deep) return false;
  const snap = snapshotObject(obj, acceptAnyRef);
  const bytes = meta.bytes;
  if (bytes === null || !sameBytes(snap.state, bytes)) return true;
  const refs = meta.refs;
  if (refs === null || refs.length !== snap.refs.length) return true;
  for (let i = 0; i < refs.length; i++) if (refs[i] !== snap.refs[i]) return true;
  return false;
}

function acceptAnyRef(): void {}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}
