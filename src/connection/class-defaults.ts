/**
 * Schema evolution without ceremony: a field a class declares but a stored record lacks (the
 * field was added to the class after the record was written) reads as the class's declared
 * default. The defaults are learned once per class from one instance made by its
 * constructor (persistent/fields.ts): primitives apply as they are; plain containers and
 * value-class instances as a fresh copy per object (decoded from bytes encoded once); a
 * default that is or holds a persistent object (`orders = new PersistentList()`) is not
 * applied, since one object would be shared by every old record: the class's `upgrade` hook
 * is the place for it.
 */
import { decodeState, encodeState } from "../codec/state.ts";
import { declaredState } from "../persistent/fields.ts";
import { isPersistent } from "../persistent/persistent.ts";

interface Defaults {
  keys: string[];
  /** A primitive default, or bytes to decode a fresh copy from. */
  values: unknown[];
  bytes: Array<{ state: Uint8Array; shared: boolean } | null>;
  /** The keys of the last state seen and the defaults it lacked. */
  lastKeys: readonly string[];
  lastMissing: number[];
}

const cache = new WeakMap<object, Defaults | null>();

function defaultsOf(proto: object): Defaults | null {
  let d = cache.get(proto);
  if (d !== undefined) return d;
  d = null;
  const sample = declaredState(proto);
  if (sample !== null) {
    const keys: string[] = [];
    const values: unknown[] = [];
    const bytes: Defaults["bytes"] = [];
    for (const key of Object.keys(sample)) {
      const v = sample[key];
      if (typeof v !== "object" || v === null) {
        if (typeof v === "function" || typeof v === "symbol") continue;
        keys.push(key);
        values.push(v);
        bytes.push(null);
        continue;
      }
      if (isPersistent(v)) continue;
      try {
        const enc = encodeState("default", { v }, () => {
          throw new Error("holds a persistent object");
        });
        keys.push(key);
        values.push(undefined);
        bytes.push({ state: enc.state.slice(), shared: enc.shared });
      } catch {
        // Not storable, or holds a persistent object: no default for this field.
      }
    }
    if (keys.length > 0) d = { keys, values, bytes, lastKeys: [], lastMissing: [] };
  }
  cache.set(proto, d);
  return d;
}

/**
 * Give `state` (a record just decoded for an object whose prototype is `proto`, with keys
 * `keys`) the declared defaults of the fields it lacks. Returns whether any was added.
 */
export function applyDefaults(proto: object, state: Record<string, unknown>, keys: readonly string[]): boolean {
  const d = defaultsOf(proto);
  if (d === null) return false;
  let missing = d.lastMissing;
  if (!sameKeys(keys, d.lastKeys)) {
    missing = [];
    for (let i = 0; i < d.keys.length; i++) if (!Object.hasOwn(state, d.keys[i]!)) missing.push(i);
    d.lastKeys = keys;
    d.lastMissing = missing;
  }
  if (missing.length === 0) return false;
  for (const i of missing) {
    const b = d.bytes[i];
    state[d.keys[i]!] = b === null || b === undefined ? d.values[i] : decodeState(b.state, [], b.shared).v;
  }
  return true;
}

function sameKeys(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
