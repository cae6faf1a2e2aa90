/**
 * Conflict resolution (SPEC §5): what the connection needs to call a class's
 * `resolveConflict(original, committed, mine)` hook with three plain states, and to turn
 * the state it returns back into an object's state.
 *
 * References to persistent objects appear in the three states as `PersistentRef` values,
 * one instance per oid for the whole resolution, so two references to the same object are
 * `===` (and work as Map keys and Set members). A resolver cannot load or change other
 * objects through them. In the resolved state each `PersistentRef` becomes the
 * connection's object for that oid again.
 *
 * BTree pieces are not resolved here: their conflicts are merged by replaying the
 * transaction's key changes on the newest tree (see collections/btree-merge.ts).
 */
import { isPersistent, type Persistent } from "./persistent.ts";
import type { Oid } from "../ids.ts";

/** A state as a resolver sees it: the object's fields, references as `PersistentRef`s. */
// `any`: a hook reads and combines fields freely (`committed.n + mine.n - original.n`).
export type State = Record<string, any>;

/** `static resolveConflict` of a persistent class. `undefined` (or a throw) keeps the conflict. */
export type ConflictResolver = (original: State, committed: State, mine: State) => State | undefined;

/** A reference to a persistent object inside a state given to `resolveConflict`. */
export class PersistentRef {
  constructor(
    readonly oid: Oid,
    /** The stored class name of the referenced object. */
    readonly className: string,
  ) {
    Object.freeze(this);
  }
  toString(): string {
    return `${this.className}#${this.oid}`;
  }
}

/** The class's conflict hook, if it has one. */
export function resolverOf(cls: Function): ConflictResolver | undefined {
  const hook = (cls as { resolveConflict?: unknown }).resolveConflict;
  return typeof hook === "function" ? (hook as ConflictResolver) : undefined;
}

/**
 * Does an object of `cls` with this loaded state merge conflicts? A class with
 * `resolveConflict` may say no for some states with a static `mergesConflicts(state)` (a
 * PersistentMap merges only when made with `mergeKeys`): the connection then keeps no
 * original state for it.
 */
export function mergesConflicts(cls: Function, state: Record<string, unknown>): boolean {
  if (resolverOf(cls) === undefined) return false;
  const says = (cls as { mergesConflicts?: unknown }).mergesConflicts;
  return typeof says !== "function" || (says as (s: Record<string, unknown>) => boolean).call(cls, state) === true;
}

/** One `PersistentRef` per oid, shared by the three states of a resolution. */
export class RefTable {
  readonly #byOid = new Map<Oid, PersistentRef>();
  ref(oid: Oid, className: string): PersistentRef {
    let r = this.#byOid.get(oid);
    if (r === undefined) this.#byOid.set(oid, (r = new PersistentRef(oid, className)));
    return r;
  }
  refs(oids: readonly Oid[], classes: readonly string[]): PersistentRef[] {
    return oids.map((oid, i) => this.ref(oid, classes[i]!));
  }
}

/**
 * Replace every `PersistentRef` in `state` (nested in arrays, plain and value objects,
 * Maps and Sets) by `objectFor(ref)`, in place; returns the state. Persistent objects a
 * resolver copied in as they were are left alone.
 */
export function liveState(state: State, objectFor: (ref: PersistentRef) => Persistent): State {
  const seen = new Set<object>();
  const map = (v: unknown): unknown => {
    if (typeof v !== "object" || v === null) return v;
    if (v instanceof PersistentRef) return objectFor(v);
    if (isPersistent(v) || seen.has(v) || ArrayBuffer.isView(v) || v instanceof Date || v instanceof RegExp) return v;
    seen.add(v);
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) v[i] = map(v[i]);
    } else if (v instanceof Map) {
      const entries = [...v];
      v.clear();
      for (const [k, x] of entries) v.set(map(k), map(x));
    } else if (v instanceof Set) {
      const members = [...v];
      v.clear();
      for (const x of members) v.add(map(x));
    } else {
      const o = v as Record<string, unknown>;
      for (const k of Object.keys(o)) o[k] = map(o[k]);
    }
    return v;
  };
  return map(state) as State;
}

/**
 * Do two stored values hold the same data? Persistent objects and `PersistentRef`s by
 * identity; Dates by time; arrays, plain objects, Maps, Sets and typed arrays by contents.
 */
export function sameValue(a: unknown, b: unknown, depth = 0): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (depth > 100) return false;
  if (isPersistent(a) || isPersistent(b) || a instanceof PersistentRef || b instanceof PersistentRef) return false;
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  if (a instanceof Date) return a.getTime() === (b as Date).getTime();
  if (a instanceof RegExp) return String(a) === String(b);
  if (ArrayBuffer.isView(a)) {
    const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    const bv = b as ArrayBufferView;
    const y = new Uint8Array(bv.buffer, bv.byteOffset, bv.byteLength);
    return x.length === y.length && Buffer.compare(x, y) === 0;
  }
  if (Array.isArray(a)) {
    const y = b as unknown[];
    return a.length === y.length && a.every((x, i) => sameValue(x, y[i], depth + 1));
  }
  if (a instanceof Map) {
    const y = b as Map<unknown, unknown>;
    if (a.size !== y.size) return false;
    for (const [k, x] of a) if (!y.has(k) || !sameValue(x, y.get(k), depth + 1)) return false;
    return true;
  }
  if (a instanceof Set) {
    const y = b as Set<unknown>;
    if (a.size !== y.size) return false;
    for (const x of a) if (!y.has(x)) return false;
    return true;
  }
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  const ob = b as Record<string, unknown>;
  return ka.every((k) => Object.hasOwn(ob, k) && sameValue((a as Record<string, unknown>)[k], ob[k], depth + 1));
}

/** A Map key or Set member that compares by value across three decoded states. */
export function isMergeableKey(v: unknown): boolean {
  return typeof v !== "object" || v === null || v instanceof PersistentRef;
}
