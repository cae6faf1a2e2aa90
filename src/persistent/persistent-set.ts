/**
 * PersistentSet: a Set that is one persistent object. Members are any storable values;
 * persistent objects are members by identity.
 */
import { registerClass } from "./class-registry.ts";
import { JSON_FORM, toJSONValue } from "./json.ts";
import { Persistent } from "./persistent.ts";
import { CLEAR_STATE, GET_STATE, HOLDS_CONTAINERS, SET_STATE, changedSlot, handedSlot, isContainer, setSlot, FAN_OUT, ITEMS } from "./slots.ts";
import { isMergeableKey, type State } from "./conflict-hooks.ts";

const DATA: unique symbol = Symbol("amber.set");

export class PersistentSet<T = unknown> extends Persistent implements Iterable<T> {
  declare [DATA]: Set<T>;

  constructor(members?: Iterable<T> | null) {
    super();
    setSlot(this, DATA, new Set(members ?? []));
  }

  get size(): number {
    return this[DATA].size;
  }
  has(member: T): boolean {
    return this[DATA].has(member);
  }
  add(member: T): this {
    const data = this[DATA];
    if (data.has(member)) return this;
    changedSlot(this);
    data.add(member);
    return this;
  }
  delete(member: T): boolean {
    const data = this[DATA];
    if (!data.has(member)) return false;
    changedSlot(this);
    return data.delete(member);
  }
  clear(): void {
    const data = this[DATA];
    if (data.size === 0) return;
    changedSlot(this);
    data.clear();
  }
  values(): IterableIterator<T> {
    return members(this).values();
  }
  keys(): IterableIterator<T> {
    return members(this).values();
  }
  entries(): IterableIterator<[T, T]> {
    return members(this).entries();
  }
  forEach(fn: (member: T, same: T, set: this) => void): void {
    for (const m of members(this)) fn(m, m, this);
  }
  [Symbol.iterator](): IterableIterator<T> {
    return members(this).values();
  }
  /** The members (see json.ts: nothing is loaded). */
  toJSON(): T[] {
    return toJSONValue(this) as T[];
  }
  /** @internal */
  [JSON_FORM](): unknown {
    return [...members(this)];
  }

  /**
   * Concurrent adds and removes merge: the committed members, plus what this transaction
   * added, minus what it removed. Members that are plain containers (arrays, objects)
   * cannot be matched across transactions: such a set keeps its conflicts.
   */
  static resolveConflict(original: State, committed: State, mine: State): State | undefined {
    const [o, c, m] = [original.members, committed.members, mine.members];
    if (!(o instanceof Set) || !(c instanceof Set) || !(m instanceof Set)) return undefined;
    for (const s of [o, c, m]) for (const x of s) if (!isMergeableKey(x)) return undefined;
    const members = new Set(c);
    for (const x of m) if (!o.has(x)) members.add(x);
    for (const x of o) if (!m.has(x)) members.delete(x);
    return { members };
  }

  /** @internal */
  [GET_STATE](): Record<string, unknown> {
    return { members: this[DATA] };
  }
  /** @internal */
  [SET_STATE](state: Record<string, unknown>): void {
    setSlot(this, DATA, state.members instanceof Set ? state.members : new Set());
  }
  /** @internal */
  [CLEAR_STATE](): void {
    delete (this as Partial<this>)[DATA];
  }
  /** @internal */
  [HOLDS_CONTAINERS](): boolean {
    for (const m of this[DATA]) if (isContainer(m)) return true;
    return false;
  }
}

Object.defineProperty(PersistentSet, FAN_OUT, { value: 1 }); // plans step through to the items
Object.defineProperty(PersistentSet.prototype, ITEMS, {
  value: function items(this: PersistentSet): Iterable<unknown> {
    return this.values();
  },
});
registerClass(PersistentSet, "amber.PersistentSet");

/** The set's members, about to be handed out: nested values are then compared at commit. */
function members<T>(set: PersistentSet<T>): Set<T> {
  const data = set[DATA];
  handedSlot(set);
  return data;
}
