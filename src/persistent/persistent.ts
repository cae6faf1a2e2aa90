/**
 * Persistent objects: the life cycle, ghosts and change detection.
 *
 * A persistent object keeps its fields as ordinary own data properties, so a loaded object
 * reads and writes at the speed of a plain object and `Object.keys`, spread, JSON and
 * test-framework equality see its fields. Bookkeeping lives in a private field (`#m`, a
 * `Meta`), out of the user's property namespace.
 *
 * States (`stateOf`) and transitions:
 *
 *   state    own properties        how it gets there                   leaves by
 *   -------  --------------------  ----------------------------------  -------------------------
 *   new      the fields            `new C()` by the application        a commit that reaches it -> saved
 *   ghost    none                  a reference decoded from a record;  any touch -> saved (load)
 *                                  eviction; invalidation; abort
 *   saved    the stored state      load; commit                        a change -> changed;
 *                                                                      eviction/invalidation -> ghost
 *   changed  the changed state     assignment, delete, nested change,  commit -> saved; abort -> ghost
 *                                  `markChanged`
 *
 * Ghosts are caught without a per-object Proxy: the prototype chain of every persistent
 * class ends in one Proxy (`chainEnd`), reached only when a property is not found on the
 * object or its class prototypes. Its traps load a ghost and retry. For field names seen
 * before, each class prototype also gets a small accessor pair, so that a ghost's known
 * fields and a constructor's `this.x = v` never pay for the Proxy.
 *
 * Changes are found by dirty checking (the connection compares each loaded object with the
 * snapshot taken when it was loaded: by identity for top-level values, by re-encoding for
 * nested containers), so assignments, deletes and in-place mutations of nested arrays,
 * objects, Maps and Sets are all seen, no later than commit, and immediately by `stateOf`.
 */
import type { Oid, Tid } from "../storage/storage.ts";

export type ObjectState = "new" | "ghost" | "saved" | "changed";

/** @internal Life-cycle codes kept in `Meta.state`. */
export const NEW = 0;
/** @internal */
export const GHOST = 1;
/** @internal */
export const SAVED = 2;
/** @internal */
export const CHANGED = 3;

/** @internal What a persistent object needs from the connection that holds it. */
export interface Jar {
  /** Load the ghost `obj` and install its state; throws if that is not possible. */
  activate(obj: Persistent, meta: Meta): void;
  /** Throws when the object may not be changed now (closed, commit in flight). */
  checkWrite(obj: Persistent, meta: Meta): void;
  /** Does the loaded object differ from its stored state? */
  isDirty(obj: Persistent, meta: Meta): boolean;
  /** `markChanged` was called on a loaded object. */
  changed(obj: Persistent, meta: Meta): void;
  /**
   * Per-transaction notes kept by objects for conflict resolution (a BTree's log of the
   * keys it changed), keyed by the object; emptied when the transaction ends.
   */
  transactionNotes(): Map<object, unknown>;
}

/** @internal Bookkeeping for one persistent object. */
export class Meta {
  jar: Jar | null = null;
  oid: Oid = -1;
  serial: Tid = 0;
  state: number = NEW;
  /** The stored class name (also for objects of unknown classes). */
  className = "";
  /** The state as loaded or last committed: the values of the own properties then. */
  orig: Record<string, unknown> | null = null;
  /** Number of keys of `orig`. */
  origKeys = 0;
  /** The state bytes as loaded or last committed, for comparing nested containers. */
  bytes: Uint8Array | null = null;
  /** The referenced objects as loaded or last committed, in refs-table order. */
  refs: Persistent[] | null = null;
  /** The state holds nested mutable values (arrays, objects, Maps, Sets, Dates...). */
  containers = false;
  /** Estimated bytes held by the loaded state (the record size). */
  size = 0;
  /**
   * The object whose loaded state first referred to this one, and the property (or
   * collection slot) holding the reference: the path in strict-mode messages.
   */
  viaMeta: Meta | null = null;
  viaPath = "";
  /** The connection cache's LRU list of loaded objects (see object-cache.ts). */
  lruPrev: Meta | null = null;
  lruNext: Meta | null = null;
  lruObj: Persistent | null = null;
}

let metaOfImpl: (obj: Persistent) => Meta;
let hasMetaImpl: (obj: object) => boolean;
let makeGhostImpl: (cls: Function, meta: Meta) => Persistent;

/** The base class of every persistent class. */
export class Persistent {
  #m: Meta;

  constructor() {
    this.#m = pendingMeta ?? new Meta();
    pendingMeta = null;
  }

  static {
    metaOfImpl = (obj) => obj.#m;
    hasMetaImpl = (obj) => #m in obj;
    makeGhostImpl = (cls, meta) => {
      pendingMeta = meta;
      return Reflect.construct(Persistent, [], cls) as Persistent;
    };
  }
}

let pendingMeta: Meta | null = null;

/** @internal The bookkeeping of a persistent object. */
export function metaOf(obj: Persistent): Meta {
  return metaOfImpl(obj);
}

/** Is `value` a persistent object (an instance of a class derived from `Persistent`)? */
export function isPersistent(value: unknown): value is Persistent {
  return typeof value === "object" && value !== null && hasMetaImpl(value);
}

/**
 * @internal Make a ghost of `cls` (a subclass of Persistent) without running its
 * constructor: the state comes from the storage when it is first touched.
 */
export function makeGhost(cls: Function, meta: Meta): Persistent {
  meta.state = GHOST;
  return makeGhostImpl(cls, meta);
}

// ---------------------------------------------------------------------------------------
// Loading state into an object and clearing it, without ever passing through the Proxy.

class Returner {
  constructor(o: object) {
    return o;
  }
}

type Definer = (target: object, state: Record<string, unknown>) => void;
const definers = new Map<string, Definer>();

/**
 * A function that defines `keys` as own data properties of a target, copying their values
 * from a state object. Class fields use define semantics (they never consult the prototype
 * chain, so never reach the Proxy) and V8 caches their shapes, which makes this several
 * times faster than `Object.defineProperty` in a loop.
 */
function definerFor(keys: string[]): Definer {
  const id = keys.join("\u0000");
  let d = definers.get(id);
  if (d === undefined) {
    // Plain identifiers become named fields (the fastest define); others stay computed.
    const named = (k: string) => /^[A-Za-z_$][\w$]*$/.test(k) && k !== "constructor" && k !== "prototype";
    const fields = keys.map((k, i) => (named(k) ? `${k} = cur.${k};` : `[K[${i}]] = cur[K[${i}]];`)).join("\n");
    d = new Function(
      "Returner",
      "K",
      `let cur; class D extends Returner { ${fields} }
       return function define(target, state) { cur = state; new D(target); cur = undefined; };`,
    )(Returner, keys) as Definer;
    definers.set(id, d);
  }
  return d;
}

interface ClassShape {
  keys: string[];
  define: Definer;
}
const shapes = new WeakMap<object, ClassShape>();

/** @internal Install `state` as the own properties of `obj` (a ghost or an emptied object). */
export function installState(obj: object, state: Record<string, unknown>): void {
  const keys = Object.keys(state);
  const proto = Object.getPrototypeOf(obj) as object;
  let shape = shapes.get(proto);
  if (shape === undefined || !sameKeys(shape.keys, keys)) {
    learnKeys(proto, keys);
    shape = { keys, define: definerFor(keys) };
    shapes.set(proto, shape);
  }
  shape.define(obj, state);
}

function sameKeys(a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * @internal Remove every own enumerable property, newest first. Deleting the most recently
 * added property lets V8 return to the previous hidden class, so the object stays in fast
 * mode and gets the same shape again when it is reloaded.
 */
export function clearState(obj: object): void {
  const keys = Object.keys(obj);
  for (let i = keys.length - 1; i >= 0; i--) delete (obj as Record<string, unknown>)[keys[i]!];
}

/** @internal Copy the own enumerable properties into a plain object (the default state). */
export function ownState(obj: object): Record<string, unknown> {
  // Spread copies own enumerable properties on V8's fast path (it can reuse the shape).
  const out: Record<string, unknown> = { ...obj };
  for (const sym of Object.getOwnPropertySymbols(out)) delete (out as Record<symbol, unknown>)[sym];
  return out;
}

// ---------------------------------------------------------------------------------------
// Field accessors on class prototypes and the Proxy at the end of the chain.

const singleDefiners = new Map<PropertyKey, (target: object, value: unknown) => void>();

function defineOwn(target: object, key: PropertyKey, value: unknown): void {
  let d = singleDefiners.get(key);
  if (d === undefined) {
    d = new Function(
      "Returner",
      "K",
      `let cur; class D extends Returner { [K] = cur; }
       return function define(target, value) { cur = value; new D(target); cur = undefined; };`,
    )(Returner, key) as (target: object, value: unknown) => void;
    singleDefiners.set(key, d);
  }
  d(target, value);
}

/** Reached when `key` is not an own property of a persistent object. */
function missingGet(obj: object, key: PropertyKey): unknown {
  if (hasMetaImpl(obj)) {
    const m = metaOfImpl(obj as Persistent);
    if (m.state === GHOST) {
      m.jar!.activate(obj as Persistent, m);
      if (Object.hasOwn(obj, key)) return (obj as Record<PropertyKey, unknown>)[key];
    }
  }
  return undefined;
}

function missingSet(obj: object, key: PropertyKey, value: unknown): void {
  if (hasMetaImpl(obj)) {
    const m = metaOfImpl(obj as Persistent);
    if (m.state === GHOST) m.jar!.activate(obj as Persistent, m);
    if (Object.hasOwn(obj, key)) {
      (obj as Record<PropertyKey, unknown>)[key] = value;
      return;
    }
    if (m.jar !== null) m.jar.checkWrite(obj as Persistent, m);
  }
  defineOwn(obj, key, value);
}

const accessors = new Map<string, PropertyDescriptor>();

function accessorFor(key: string): PropertyDescriptor {
  let d = accessors.get(key);
  if (d === undefined) {
    d = {
      get(this: object) {
        return missingGet(this, key);
      },
      set(this: object, value: unknown) {
        missingSet(this, key, value);
      },
      enumerable: false,
      configurable: true,
    };
    accessors.set(key, d);
  }
  return d;
}

const learned = new WeakMap<object, Set<string>>();

/**
 * Give the class prototype `proto` an accessor pair for each field name not yet known, unless
 * the name is already found on the chain (a method, a user accessor, an Object.prototype
 * member), which must never be shadowed.
 */
function learnKeys(proto: object, keys: readonly string[]): void {
  if (proto === Persistent.prototype || proto === null) return;
  let known = learned.get(proto);
  if (known === undefined) {
    known = new Set();
    learned.set(proto, known);
  }
  for (const key of keys) {
    if (known.has(key)) continue;
    known.add(key);
    if (!(key in proto)) Object.defineProperty(proto, key, accessorFor(key));
  }
}

/** @internal Learn the field names of a new object of a class (on first commit). */
export function learnFields(obj: object): void {
  const proto = Object.getPrototypeOf(obj) as object;
  const known = learned.get(proto);
  const keys = Object.keys(obj);
  if (known !== undefined && keys.every((k) => known.has(k))) return;
  learnKeys(proto, keys);
}

const chainEnd = new Proxy(Object.prototype, {
  get(target, key, receiver) {
    // `await`/promise resolution probe `then`: answer without loading (a class that stores
    // a `then` field has a learned accessor on its prototype and never gets here).
    if (key === "then") return undefined;
    if (typeof receiver === "object" && receiver !== null && hasMetaImpl(receiver)) {
      const m = metaOfImpl(receiver as Persistent);
      if (m.state === GHOST) {
        m.jar!.activate(receiver as Persistent, m);
        return Reflect.get(receiver as object, key, receiver);
      }
    }
    return Reflect.get(target, key, receiver);
  },
  set(target, key, value, receiver) {
    if (typeof receiver === "object" && receiver !== null && hasMetaImpl(receiver)) {
      if (typeof key === "string") learnKeys(Object.getPrototypeOf(receiver) as object, [key]);
      missingSet(receiver as object, key, value);
      return true;
    }
    return Reflect.set(target, key, value, receiver);
  },
});
Object.setPrototypeOf(Persistent.prototype, chainEnd);

// ---------------------------------------------------------------------------------------
// Public metadata functions.

function meta(obj: unknown, fn: string): Meta {
  if (!isPersistent(obj)) {
    throw new TypeError(`${fn}() expects a persistent object, got ${describe(obj)}`);
  }
  return metaOfImpl(obj);
}

/** @internal A short description of a value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "object") return `an instance of ${(value as object).constructor?.name ?? "Object"}`;
  if (typeof value === "function") return `function ${value.name || "(anonymous)"}`;
  return `${typeof value} ${String(value)}`;
}

/** The object's oid, or `undefined` while it is new (not yet committed). */
export function oidOf(obj: Persistent): Oid | undefined {
  const m = meta(obj, "oidOf");
  return m.oid < 0 ? undefined : m.oid;
}

/** The tid of the transaction that wrote the revision this object holds (0 while new). */
export function serialOf(obj: Persistent): Tid {
  return meta(obj, "serialOf").serial;
}

/** `"new" | "ghost" | "saved" | "changed"`. Checks a loaded object for unseen changes. */
export function stateOf(obj: Persistent): ObjectState {
  const m = meta(obj, "stateOf");
  switch (m.state) {
    case NEW:
      return "new";
    case GHOST:
      return "ghost";
    case CHANGED:
      return "changed";
    default:
      if (m.jar !== null && m.jar.isDirty(obj, m)) {
        m.state = CHANGED;
        return "changed";
      }
      return "saved";
  }
}

/** The connection holding the object, or `undefined` while it is new. */
export function jarOf(obj: Persistent): Jar | undefined {
  return meta(obj, "connectionOf").jar ?? undefined;
}

/**
 * Mark a loaded object changed, for changes amberdb cannot see (for example inside a
 * value it does not know how to compare). A ghost is loaded first.
 */
export function markChanged(obj: Persistent): void {
  const m = meta(obj, "markChanged");
  if (m.jar === null) return;
  if (m.state === GHOST) m.jar.activate(obj, m);
  m.jar.checkWrite(obj, m);
  m.jar.changed(obj, m);
}

// ---------------------------------------------------------------------------------------
// Collections keep their contents in a symbol-keyed slot rather than in own fields; they
// implement these three hooks and report their own changes with `changedSlot`.

/** @internal Returns the state to store (a plain object). */
export const GET_STATE: unique symbol = Symbol("amber.getState");
/** @internal Installs a loaded state (the object is a ghost). */
export const SET_STATE: unique symbol = Symbol("amber.setState");
/** @internal Drops the state (the object becomes a ghost). */
export const CLEAR_STATE: unique symbol = Symbol("amber.clearState");

/** @internal */
export interface CustomState {
  [GET_STATE](): Record<string, unknown>;
  [SET_STATE](state: Record<string, unknown>): void;
  [CLEAR_STATE](): void;
}

// Defined (as undefined) on Persistent.prototype so that looking them up on any persistent
// object stops there and never reaches the Proxy at the end of the chain (which would load
// a ghost). Collections override them on their own prototypes.
for (const key of [GET_STATE, SET_STATE, CLEAR_STATE]) {
  Object.defineProperty(Persistent.prototype, key, { value: undefined, writable: true, configurable: true });
}

/**
 * @internal A class whose every change goes through methods that call `changedSlot` (BTree
 * buckets and nodes) sets this to true on its prototype: its loaded objects are then not
 * re-encoded at commit to look for in-place changes of nested values, which for large
 * collections would dominate commit time. Values stored in such a collection are compared
 * by identity: a plain value changed in place must be set again (BTree.set writes a container
 * set again even when it is the same object).
 */
export const SELF_TRACKING: unique symbol = Symbol("amber.selfTracking");
Object.defineProperty(Persistent.prototype, SELF_TRACKING, { value: false, writable: true, configurable: true });

/** @internal */
export function isSelfTracking(obj: object): boolean {
  return (obj as { [SELF_TRACKING]?: boolean })[SELF_TRACKING] === true;
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
 * @internal A collection changed its contents: check that it may change now, and mark it
 * changed. A ghost is loaded first by the caller (reading its slot does that).
 */
export function changedSlot(obj: Persistent): void {
  const m = metaOfImpl(obj);
  if (m.jar === null) return;
  m.jar.checkWrite(obj, m);
  if (m.state !== CHANGED) m.jar.changed(obj, m);
}
