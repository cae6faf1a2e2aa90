/**
 * PersistentMap: a Map that is one persistent object. Keys and values are any storable
 * values (references to persistent objects included). Changes through its methods are
 * tracked; in-place changes of a nested value are found at commit like any nested change.
 * With `{ mergeKeys: true }`, concurrent changes to different keys can merge (conflict
 * resolution, see SPEC section 5).
 */
import { registerClass } from "./class-registry.ts";
import { Persistent } from "./persistent.ts";
import { CLEAR_STATE, GET_STATE, HOLDS_CONTAINERS, SET_STATE, changedSlot, handedSlot, isContainer, setSlot, FAN_OUT, ITEMS } from "./slots.ts";
import { isMergeableKey, sameValue, type State } from "./conflict-hooks.ts";
import { JSON_FORM, toJSONValue } from "./json.ts";

const DATA: unique symbol = Symbol("amber.map");
const ABSENT = Symbol("absent");
const MERGE: unique symbol = Symbol("amber.mergeKeys");

export interface PersistentMapOptions {
  /** Let concurrent transactions that change different keys both commit. */
  mergeKeys?: boolean;
}

export class PersistentMap<K = unknown, V = unknown> extends Persistent implements Iterable<[K, V]> {
  declare [DATA]: Map<K, V>;
  declare [MERGE]: boolean;

  constructor(entries?: Iterable<readonly [K, V]> | null, options: PersistentMapOptions = {}) {
    super();
    setSlot(this, DATA, new Map(entries ?? []));
    setSlot(this, MERGE, options.mergeKeys === true);
  }

  /** Whether this map merges concurrent changes to different keys. */
  get mergeKeys(): boolean {
    return this[MERGE] === true;
  }
  get size(): number {
    return this[DATA].size;
  }
  get(key: K): V | undefined {
    return contents(this).get(key);
  }
  has(key: K): boolean {
    return this[DATA].has(key);
  }
  set(key: K, value: V): this {
    const data = this[DATA];
    if (data.has(key) && Object.is(data.get(key), value)) return this;
    changedSlot(this);
    data.set(key, value);
    return this;
  }
  delete(key: K): boolean {
    const data = this[DATA];
    if (!data.has(key)) return false;
    changedSlot(this);
    return data.delete(key);
  }
  clear(): void {
    const data = this[DATA];
    if (data.size === 0) return;
    changedSlot(this);
    data.clear();
  }
  keys(): IterableIterator<K> {
    return contents(this).keys();
  }
  values(): IterableIterator<V> {
    return contents(this).values();
  }
  entries(): IterableIterator<[K, V]> {
    return contents(this).entries();
  }
  forEach(fn: (value: V, key: K, map: this) => void): void {
    for (const [k, v] of contents(this)) fn(v, k, this);
  }
  [Symbol.iterator](): IterableIterator<[K, V]> {
    return contents(this).entries();
  }
  /** The entries as `[key, value]` pairs (see json.ts: nothing is loaded). */
  toJSON(): Array<[K, V]> {
    return toJSONValue(this) as Array<[K, V]>;
  }
  /** @internal */
  [JSON_FORM](): unknown {
    return [...contents(this)];
  }

  /**
   * With `mergeKeys`, concurrent changes to different keys merge (and both sides making
   * the same change to a key); two different changes to one key keep the conflict. Keys
   * must be primitives or persistent objects; maps without `mergeKeys` keep every conflict.
   */
  static mergesConflicts(state: State): boolean {
    return state.mergeKeys === true;
  }

  static resolveConflict(original: State, committed: State, mine: State): State | undefined {
    if (original.mergeKeys !== true || committed.mergeKeys !== true || mine.mergeKeys !== true) return undefined;
    const [o, c, m] = [original.data, committed.data, mine.data];
    if (!(o instanceof Map) || !(c instanceof Map) || !(m instanceof Map)) return undefined;
    for (const s of [o, c, m]) for (const k of s.keys()) if (!isMergeableKey(k)) return undefined;
    const data = new Map(c);
    const keys = new Set([...o.keys(), ...m.keys()]);
    for (const k of keys) {
      const mo = o.has(k) ? o.get(k) : ABSENT;
      const mm = m.has(k) ? m.get(k) : ABSENT;
      if (sameValue(mo, mm)) continue; // not changed by this transaction
      const mc = c.has(k) ? c.get(k) : ABSENT;
      if (sameValue(mc, mm)) continue; // the same change committed
      if (!sameValue(mc, mo)) return undefined; // changed differently by both
      if (mm === ABSENT) data.delete(k);
      else data.set(k, mm);
    }
    return { data, mergeKeys: true };
  }

  /** @internal */
  [GET_STATE](): Record<string, unknown> {
    return this[MERGE] ? { data: this[DATA], mergeKeys: true } : { data: this[DATA] };
  }
  /** @internal */
  [SET_STATE](state: Record<string, unknown>): void {
    setSlot(this, DATA, state.data instanceof Map ? state.data : new Map());
    setSlot(this, MERGE, state.mergeKeys === true);
  }
  /** @internal */
  [CLEAR_STATE](): void {
    delete (this as Partial<this>)[MERGE];
    delete (this as Partial<this>)[DATA];
  }
  /** @internal */
  [HOLDS_CONTAINERS](): boolean {
    for (const [k, v] of this[DATA]) if (isContainer(k) || isContainer(v)) return true;
    return false;
  }
}

/** The map's entries, about to be handed out: nested values are then compared at commit. */
function contents<K, V>(map: PersistentMap<K, V>): Map<K, V> {
  const data = map[DATA];
  handedSlot(map);
  return data;
}


Object.defineProperty(PersistentMap, FAN_OUT, { value: 1 }); // plans step through to the items
Object.defineProperty(PersistentMap.prototype, ITEMS, {
  value: function items(this: PersistentMap): Iterable<unknown> {
    return this.values();
  },
});
registerClass(PersistentMap, "amber.PersistentMap");
