/**
 * Persistent objects: the life cycle, ghosts and change tracking.
 *
 * A loaded persistent object keeps its fields as own, enumerable accessor properties (one
 * shared getter/setter pair per class and field, see fields.ts) whose values live in a plain
 * object held by the object's bookkeeping (`Meta.values`). `Object.keys`, spread, JSON and
 * test-framework equality see the fields; reads and writes cost a little more than on a plain
 * object; and every assignment is seen when it happens. Bookkeeping lives in a private field
 * (`#m`, a `Meta`), out of the user's property namespace.
 *
 * States (`stateOf`) and transitions:
 *
 *   state    Meta                          how it gets there                 leaves by
 *   -------  ----------------------------  --------------------------------  ------------------------
 *   new      no connection; the fields     `new C()` by the application      a commit that reaches it
 *            are plain data properties                                       -> saved
 *   ghost    GHOST, no record              a reference decoded from a        any touch -> saved (load)
 *                                          record; eviction; invalidation
 *   saved    SAVED (values installed), or  load; commit; a "soft" ghost      an assignment or a
 *            GHOST with its record kept    is re-installed from its kept     collection change ->
 *            ("soft": installed again from record on the next touch,       changed; eviction or
 *            the kept bytes on touch)      without I/O                       invalidation -> ghost
 *   changed  CHANGED                       assignment (setter), a new        commit -> saved;
 *                                          property, a collection method,    abort -> saved (the
 *                                          `markChanged`; a nested change    record is installed
 *                                          found at commit                   again)
 *
 * What a transaction touched is all its boundaries look at (never the whole cache):
 * - the setter of a field, a new property (caught at the end of the prototype chain) and a
 *   collection's changing methods put the object on its connection's changed list;
 * - a getter (or a collection's reading method) that hands out a nested mutable value
 *   (array, plain object, Map, Set, Date, typed array, value-class instance) puts the object
 *   on the connection's handed-out list; at commit such objects are encoded once and
 *   compared with their stored bytes, so in-place changes are found without `markChanged`.
 *   At the end of the transaction such objects are marked STALE_CONTAINERS: a nested value
 *   handed out belongs to the transaction that read it, and before the object hands one out
 *   again (or changes) its nested values are replaced by fresh copies from its record.
 * - `delete` of a field of a stored object is refused at once: its accessor is not
 *   configurable, so strict-mode code gets a TypeError (fields added in the current
 *   transaction may be deleted until it commits).
 *
 * Ghosts are caught without a per-object Proxy: a ghost has the accessors of its class's
 * known fields, whose getter loads it, and the prototype chain of every persistent class ends
 * in one Proxy (`chainEnd`), reached only when a property is not found on the object or its
 * class prototypes, which loads a ghost and retries.
 *
 * Each object belongs to one checkout of its connection (`Meta.token`): when the connection
 * is closed (returned to its pool), its objects become stale, and changing one throws a
 * TransactionError ("stale-object"); the next checkout gets its own instances.
 */
import type { Oid, Tid } from "../ids.ts";
import { defineOwn } from "./data-props.ts";

export type ObjectState = "new" | "ghost" | "saved" | "changed";

/** @internal Life-cycle codes kept in `Meta.state`. */
export const NEW = 0;
/** @internal */
export const GHOST = 1;
/** @internal */
export const SAVED = 2;
/** @internal */
export const CHANGED = 3;
/**
 * @internal Changed, and part of a commit in flight: the field setters' fast path takes only
 * CHANGED objects, so writes to these take the slow path, which refuses them.
 */
export const LOCKED = 4;

/**
 * @internal One checkout of a connection. `ok` is true while the objects of that checkout
 * may be changed without further checks (open, no commit in flight, not historical): the
 * setters' fast path reads only this flag.
 */
export interface Token {
  ok: boolean;
}

/** @internal The token of objects that belong to no connection. */
export const NO_TOKEN: Token = { ok: false };

/** @internal What a persistent object needs from the connection that holds it. */
export interface Jar {
  /** The public connection (what `connectionOf` returns). */
  readonly owner: object;
  /** Load the ghost `obj` (or install a soft ghost's kept record); throws if not possible. */
  activate(obj: Persistent, meta: Meta): void;
  /** Throws when the object may not be changed now (stale, commit in flight, read-only). */
  checkWrite(obj: Persistent, meta: Meta): void;
  /** Does the loaded object differ from its stored state? */
  isDirty(obj: Persistent, meta: Meta): boolean;
  /** A loaded object was changed (SAVED -> CHANGED). */
  changed(obj: Persistent, meta: Meta): void;
  /** A loaded object handed out a nested mutable value: compare it at commit. */
  handedOut(obj: Persistent, meta: Meta): void;
  /** Replace the nested values of a loaded object by fresh copies from its record. */
  refreshContainers(obj: Persistent, meta: Meta): void;
  /**
   * Per-transaction notes kept by objects for conflict resolution (a BTree's log of the
   * keys it changed), keyed by the object; emptied when the transaction ends.
   */
  transactionNotes(): Map<object, unknown>;
}

/** @internal The accessors an object has (see fields.ts). */
export interface FieldSet {
  readonly keys: readonly string[];
}

/** @internal Bookkeeping for one persistent object. */
export class Meta {
  /**
   * The object. The three values the field accessors read on every access (`values`,
   * `watch`, `state`) live in private fields of the object itself, one hop closer than the
   * Meta (a Meta is large, and reading it cost a cache miss per access on big caches); these
   * accessors reach them, and hold them until the object is made.
   */
  obj: Persistent | null = null;
  #values: Record<string, unknown> | null = null;
  #watch = 0;
  #state: number = NEW;
  /** The field values of a loaded object with field accessors (null otherwise). */
  get values(): Record<string, unknown> | null {
    return this.obj === null ? this.#values : hot.values(this.obj);
  }
  set values(v: Record<string, unknown> | null) {
    if (this.obj === null) this.#values = v;
    else hot.setValues(this.obj, v);
  }
  /** 1 while the state holds nested mutable values none of which was handed out yet. */
  get watch(): number {
    return this.obj === null ? this.#watch : hot.watch(this.obj);
  }
  set watch(v: number) {
    if (this.obj === null) this.#watch = v;
    else hot.setWatch(this.obj, v);
  }
  /** The life-cycle code (NEW, GHOST, SAVED, CHANGED, LOCKED). */
  get state(): number {
    return this.obj === null ? this.#state : hot.state(this.obj);
  }
  set state(v: number) {
    if (this.obj === null) this.#state = v;
    else hot.setState(this.obj, v);
  }
  /** @internal The object is made: it holds the hot values from now on. */
  bind(obj: Persistent): void {
    this.obj = obj;
    hot.setValues(obj, this.#values);
    hot.setWatch(obj, this.#watch);
    hot.setState(obj, this.#state);
  }
  token: Token = NO_TOKEN;
  jar: Jar | null = null;
  oid: Oid = -1;
  /**
   * Starts as a non-integer so that V8 gives the field a double representation from the
   * start: tids are beyond small integers, and changing the representation later would
   * deprecate the hidden class of every Meta, which the field accessors read on each access.
   */
  serial: Tid = 0.5;
  /** On the connection's handed-out list of this transaction. */
  handed = false;
  /** The loaded state holds nested mutable values. */
  containers = false;
  /** The stored class name (also for objects of unknown classes). */
  className = "";
  /** The record as loaded or last committed (our own bytes), kept while loaded or soft. */
  record: Uint8Array | null = null;
  /** The state bytes that count as unchanged (within `record`, or encoded with defaults). */
  bytes: Uint8Array | null = null;
  /** The referenced objects as loaded or last committed, in refs-table order. */
  refs: Persistent[] | null = null;
  /** The field accessors this object has (null: none yet). */
  fields: FieldSet | null = null;
  /** Fields added in this transaction (configurable accessors until commit). */
  added: string[] | null = null;
  /** Estimated bytes held by the loaded state (the record size). */
  size = 0;
  /**
   * The object whose loaded state first referred to this one, and the property (or
   * collection slot) holding the reference: the path in strict-mode messages.
   */
  viaMeta: Meta | null = null;
  viaPath = "";
  /** The connection cache's LRU list of objects holding records (see object-cache.ts). */
  lruPrev: Meta | null = null;
  lruNext: Meta | null = null;
  lruObj: Persistent | null = null;

  constructor() {
    this.serial = 0;
  }
}

let metaOfImpl: (obj: Persistent) => Meta;
/** Readers and writers of the hot private fields, defined in Persistent's class body. */
const hot = {} as {
  values(obj: Persistent): Record<string, unknown> | null;
  watch(obj: Persistent): number;
  state(obj: Persistent): number;
  setValues(obj: Persistent, v: Record<string, unknown> | null): void;
  setWatch(obj: Persistent, v: number): void;
  setState(obj: Persistent, v: number): void;
};
let compileImpl: (source: string) => unknown;
let hasMetaImpl: (obj: object) => boolean;
let makeGhostImpl: (cls: Function, meta: Meta) => Persistent;

/** The base class of every persistent class. */
export class Persistent {
  #m: Meta;
  // The hot bookkeeping, read by the field accessors on every access (see Meta).
  #v: Record<string, unknown> | null = null;
  #w = 0;
  #s: number = NEW;

  constructor() {
    const m = pendingMeta ?? new Meta();
    pendingMeta = null;
    this.#m = m;
    m.bind(this);
  }

  static {
    metaOfImpl = (obj) => obj.#m;
    hot.values = (obj) => obj.#v;
    hot.watch = (obj) => obj.#w;
    hot.state = (obj) => obj.#s;
    hot.setValues = (obj, v) => {
      obj.#v = v;
    };
    hot.setWatch = (obj, v) => {
      obj.#w = v;
    };
    hot.setState = (obj, v) => {
      obj.#s = v;
    };
    hasMetaImpl = (obj) => #m in obj;
    makeGhostImpl = (cls, meta) => {
      pendingMeta = meta;
      return Reflect.construct(Persistent, [], cls) as Persistent;
    };
    // Direct eval inside the class body: the compiled code may read `#m` itself. The field
    // accessors are compiled here, one function per class and field, so that each has inline
    // caches of its own (a shared reader of `#m` sees every persistent class and goes
    // megamorphic, which made field reads five times slower).
    compileImpl = (source: string): unknown => eval(source);
  }
}

let pendingMeta: Meta | null = null;

/** @internal The bookkeeping of a persistent object. */
export function metaOf(obj: Persistent): Meta {
  return metaOfImpl(obj);
}

/**
 * @internal Compile `source` (an expression) where the private field `#m` is in scope, for
 * the generated field accessors (fields.ts). Give each a distinct source text: compiled
 * functions of the same text would share their feedback.
 */
export function compileWithMeta(source: string): unknown {
  return compileImpl(source);
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
  if (meta.state !== SAVED) meta.state = GHOST;
  return makeGhostImpl(cls, meta);
}

/** @internal Does a ghost need its record from the storage (not a soft ghost)? */
export function needsLoad(meta: Meta): boolean {
  return meta.state === GHOST && meta.record === null;
}

// ---------------------------------------------------------------------------------------
// Hooks by which fields.ts adds the accessors of a new property (kept here so that the
// Proxy below needs no import of fields.ts, which imports this module).

let addFieldImpl: ((obj: Persistent, meta: Meta, key: string, value: unknown) => void) | null = null;

/** @internal fields.ts registers how a new property of a loaded object is added. */
export function setAddField(fn: (obj: Persistent, meta: Meta, key: string, value: unknown) => void): void {
  addFieldImpl = fn;
}

/** Reached when `key` is not an own property of a persistent object. */
function missingGet(obj: object, key: PropertyKey): unknown {
  if (hasMetaImpl(obj)) {
    const m = metaOfImpl(obj as Persistent);
    if (m.state === GHOST && m.jar !== null) {
      m.jar.activate(obj as Persistent, m);
      if (Object.hasOwn(obj, key)) return (obj as Record<PropertyKey, unknown>)[key];
    }
  }
  return undefined;
}

/** An assignment to a property the object does not have (yet). */
function missingSet(obj: object, key: PropertyKey, value: unknown): void {
  if (hasMetaImpl(obj)) {
    const p = obj as Persistent;
    const m = metaOfImpl(p);
    const jar = m.jar;
    if (jar !== null && m.state !== NEW) {
      jar.checkWrite(p, m);
      if (m.state === GHOST) jar.activate(p, m);
      if (Object.hasOwn(obj, key)) {
        (obj as Record<PropertyKey, unknown>)[key] = value;
        return;
      }
      if (m.values !== null && typeof key === "string" && addFieldImpl !== null) {
        addFieldImpl(p, m, key, value);
        return;
      }
    }
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
 * @internal Give the class prototype `proto` an accessor pair for each field name not yet
 * known, unless the name is already found on the chain (a method, a user accessor, an
 * Object.prototype member), which must never be shadowed. A constructor's `this.x = v` then
 * never reaches the Proxy.
 */
export function learnKeys(proto: object, keys: readonly string[]): void {
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

const chainEnd = new Proxy(Object.prototype, {
  get(target, key, receiver) {
    // `await`/promise resolution probe `then`: answer without loading (a class that stores
    // a `then` field has an accessor for it and never gets here).
    if (key === "then") return undefined;
    if (typeof receiver === "object" && receiver !== null && hasMetaImpl(receiver)) {
      const m = metaOfImpl(receiver as Persistent);
      if (m.state === GHOST && m.jar !== null) {
        m.jar.activate(receiver as Persistent, m);
        return Reflect.get(receiver as object, key, receiver);
      }
    }
    return Reflect.get(target, key, receiver);
  },
  set(target, key, value, receiver) {
    if (typeof receiver === "object" && receiver !== null && hasMetaImpl(receiver)) {
      if (typeof key === "string" && metaOfImpl(receiver as Persistent).state === NEW) {
        learnKeys(Object.getPrototypeOf(receiver) as object, [key]);
      }
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
      return m.record === null ? "ghost" : "saved";
    case CHANGED:
    case LOCKED:
      return "changed";
    default:
      return m.jar !== null && m.jar.isDirty(obj, m) ? "changed" : "saved";
  }
}

/** The connection holding the object, or `undefined` while it is new. */
export function jarOf(obj: Persistent): Jar | undefined {
  return meta(obj, "connectionOf").jar ?? undefined;
}

/**
 * Mark a loaded object changed, for changes amberdb cannot see. A ghost is loaded first.
 */
export function markChanged(obj: Persistent): void {
  const m = meta(obj, "markChanged");
  const jar = m.jar;
  if (jar === null) return;
  jar.checkWrite(obj, m);
  if (m.state === GHOST) jar.activate(obj, m);
  jar.changed(obj, m);
}
