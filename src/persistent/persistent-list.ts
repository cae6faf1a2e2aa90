/**
 * PersistentList: an array-like list that is one persistent object. Elements are read with
 * `at(i)` / `get(i)` and written with `set(i, v)` and the usual mutating methods (`push`,
 * `pop`, `splice`...), which track the change; non-mutating array methods return plain
 * arrays. For very long collections prefer a BTree (one bucket rewritten per change).
 */
import { registerClass } from "./class-registry.ts";
import { JSON_FORM, toJSONValue } from "./json.ts";
import { Persistent } from "./persistent.ts";
import { CLEAR_STATE, GET_STATE, HOLDS_CONTAINERS, SET_STATE, changedSlot, handedSlot, isContainer, setSlot, FAN_OUT, ITEMS } from "./slots.ts";

const DATA: unique symbol = Symbol("amber.list");

export class PersistentList<T = unknown> extends Persistent implements Iterable<T> {
  declare [DATA]: T[];

  constructor(items?: Iterable<T> | null) {
    super();
    setSlot(this, DATA, items ? [...items] : []);
  }

  get length(): number {
    return this[DATA].length;
  }
  /** The item at `index` (negative counts from the end), like `Array.prototype.at`. */
  at(index: number): T | undefined {
    return items(this).at(index);
  }
  get(index: number): T | undefined {
    return items(this)[index];
  }
  set(index: number, value: T): void {
    if (!Number.isInteger(index) || index < 0) throw new RangeError(`PersistentList.set: index must be a non-negative integer, got ${index}`);
    changedSlot(this);
    this[DATA][index] = value;
  }
  push(...items: T[]): number {
    changedSlot(this);
    return this[DATA].push(...items);
  }
  pop(): T | undefined {
    if (this[DATA].length === 0) return undefined;
    changedSlot(this);
    return this[DATA].pop();
  }
  shift(): T | undefined {
    if (this[DATA].length === 0) return undefined;
    changedSlot(this);
    return this[DATA].shift();
  }
  unshift(...items: T[]): number {
    changedSlot(this);
    return this[DATA].unshift(...items);
  }
  splice(start: number, deleteCount?: number, ...items: T[]): T[] {
    changedSlot(this);
    return deleteCount === undefined ? this[DATA].splice(start) : this[DATA].splice(start, deleteCount, ...items);
  }
  reverse(): this {
    changedSlot(this);
    this[DATA].reverse();
    return this;
  }
  sort(compare?: (a: T, b: T) => number): this {
    changedSlot(this);
    this[DATA].sort(compare);
    return this;
  }
  indexOf(item: T, from?: number): number {
    return items(this).indexOf(item, from);
  }
  includes(item: T): boolean {
    return items(this).includes(item);
  }
  find(fn: (item: T, index: number) => boolean): T | undefined {
    return items(this).find(fn);
  }
  findIndex(fn: (item: T, index: number) => boolean): number {
    return items(this).findIndex(fn);
  }
  filter(fn: (item: T, index: number) => boolean): T[] {
    return items(this).filter(fn);
  }
  map<U>(fn: (item: T, index: number) => U): U[] {
    return items(this).map(fn);
  }
  forEach(fn: (item: T, index: number) => void): void {
    items(this).forEach(fn);
  }
  some(fn: (item: T, index: number) => boolean): boolean {
    return items(this).some(fn);
  }
  every(fn: (item: T, index: number) => boolean): boolean {
    return items(this).every(fn);
  }
  slice(start?: number, end?: number): T[] {
    return items(this).slice(start, end);
  }
  /** A plain array copy of the items. */
  toArray(): T[] {
    return [...items(this)];
  }
  [Symbol.iterator](): IterableIterator<T> {
    return items(this).values();
  }
  /** The items (see json.ts: nothing is loaded). */
  toJSON(): T[] {
    return toJSONValue(this) as T[];
  }
  /** @internal */
  [JSON_FORM](): unknown {
    return [...items(this)];
  }

  /** @internal */
  [GET_STATE](): Record<string, unknown> {
    return { items: this[DATA] };
  }
  /** @internal */
  [SET_STATE](state: Record<string, unknown>): void {
    setSlot(this, DATA, Array.isArray(state.items) ? state.items : []);
  }
  /** @internal */
  [CLEAR_STATE](): void {
    delete (this as Partial<this>)[DATA];
  }
  /** @internal */
  [HOLDS_CONTAINERS](): boolean {
    return this[DATA].some(isContainer);
  }
}

Object.defineProperty(PersistentList, FAN_OUT, { value: 1 }); // plans step through to the items
Object.defineProperty(PersistentList.prototype, ITEMS, {
  value: function items(this: PersistentList): Iterable<unknown> {
    return this[Symbol.iterator]();
  },
});
registerClass(PersistentList, "amber.PersistentList");

/** The list's items, about to be handed out: nested values are then compared at commit. */
function items<T>(list: PersistentList<T>): T[] {
  const data = list[DATA];
  handedSlot(list);
  return data;
}
