/**
 * What collections implement and call (their contents live in a symbol-keyed slot rather
 * than in fields), and the bookkeeping of nested values handed out: a getter or a reading
 * method that hands one out notes its object, to be compared at commit.
 */
import { CHANGED, GHOST, Persistent, isPersistent, metaOf, type Meta } from "./persistent.ts";
import { defineOwn } from "./data-props.ts";

// Collections keep their contents in a symbol-keyed slot rather than in fields; they
// implement these hooks, report their changes with `changedSlot` and the nested values they
// hand out with `handedSlot`.

/** @internal Returns the state to store (a plain object). */
export const GET_STATE: unique symbol = Symbol("amber.getState");
/** @internal Installs a loaded state (the object is a ghost). */
export const SET_STATE: unique symbol = Symbol("amber.setState");
/** @internal Drops the state (the object becomes a ghost). */
export const CLEAR_STATE: unique symbol = Symbol("amber.clearState");
/**
 * @internal Does the installed state hold nested mutable values that the collection hands
 * out (its contents, not its own arrays and maps)? Such collections are compared at commit
 * when they handed one out.
 */
export const HOLDS_CONTAINERS: unique symbol = Symbol("amber.holdsContainers");

/** @internal */
export interface CustomState {
  [GET_STATE](): Record<string, unknown>;
  [SET_STATE](state: Record<string, unknown>): void;
  [CLEAR_STATE](): void;
  [HOLDS_CONTAINERS](): boolean;
}

// Defined (as undefined) on Persistent.prototype so that looking them up on any persistent
// object stops there and never reaches the Proxy at the end of the chain (which would load
// a ghost). Collections override them on their own prototypes.
for (const key of [GET_STATE, SET_STATE, CLEAR_STATE, HOLDS_CONTAINERS]) {
  Object.defineProperty(Persistent.prototype, key, { value: undefined, writable: true, configurable: true });
}

/** @internal Does the object's class keep its state in a slot (collections)? */
export function hasCustomState(obj: object): obj is CustomState {
  return typeof (obj as Partial<CustomState>)[GET_STATE] === "function";
}

/** @internal Define an own property without passing through setters or the Proxy. */
export function setSlot(obj: object, key: PropertyKey, value: unknown): void {
  defineOwn(obj, key, value);
}

/**
 * @internal A collection is about to change its contents: check that it may change now, load
 * it if it is a ghost, and mark it changed. The caller reads its slot after this call (a
 * slot read before it may belong to a state that loading replaced).
 */
export function changedSlot(obj: Persistent): void {
  const m = metaOf(obj);
  const jar = m.jar;
  if (jar === null) return;
  if (m.token.ok !== true || m.state === GHOST) {
    jar.checkWrite(obj, m);
    if (m.state === GHOST) jar.activate(obj, m);
  }
  if (m.state !== CHANGED) jar.changed(obj, m);
}

/**
 * @internal A collection is handing out (or letting the caller reach) its nested values:
 * if they include mutable ones, compare the collection at commit. The caller has read its
 * slot first.
 */
export function handedSlot(obj: Persistent): void {
  const m = metaOf(obj);
  if (m.watch !== 0) {
    m.watch = 0;
    if (m.jar !== null) m.jar.handedOut(obj, m);
  }
}

/**
 * @internal The getter of field `key` is handing out `value`: if it is a nested mutable
 * value, note the object (compared at commit); if the object's nested values were held over
 * from an earlier transaction (watch 2), fresh ones are installed first and that is returned.
 */
export function handedField(obj: Persistent, m: Meta, value: object, key: string): unknown {
  if (isPersistent(value)) return value;
  const jar = m.jar;
  if (jar === null) {
    m.watch = 0;
    return value;
  }
  if (m.watch === STALE_CONTAINERS) jar.refreshContainers(obj, m);
  m.watch = 0;
  jar.handedOut(obj, m);
  return m.values === null ? value : m.values[key];
}

/**
 * @internal `Meta.watch` of an object whose nested values may have been handed out in an
 * earlier transaction: they are replaced by fresh copies (from its record) before one is
 * handed out or the object changes.
 */
export const STALE_CONTAINERS = 2;

/** @internal A nested mutable value: an object that is not a persistent object. */
export function isContainer(v: unknown): boolean {
  return typeof v === "object" && v !== null && !isPersistent(v);
}

/**
 * @internal A static property of collection classes: how loading plans treat the references
 * of their records (the envelope's fan-out bits, codec/record.ts `FanOut`): 1 = the
 * collection's items, 2 = pieces of a collection walked through (BTree nodes and buckets).
 * Storages and servers read it from the record, with no class at hand.
 */
export const FAN_OUT: unique symbol = Symbol("amber.fanOut");

/**
 * @internal Collections: their items, for a loading plan's step through the collection
 * (the connection's side of the FAN_OUT marking).
 */
export const ITEMS: unique symbol = Symbol("amber.items");
// Found on Persistent.prototype for every other object, so looking it up never reaches the
// Proxy at the end of the chain (which would load a ghost).
Object.defineProperty(Persistent.prototype, ITEMS, { value: undefined, writable: true, configurable: true });
