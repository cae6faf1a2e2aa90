/**
 * Field accessors: how a stored persistent object sees every assignment.
 *
 * Each persistent class (its prototype) has one getter/setter pair per field name, generated
 * once with the name as a constant (so V8 keeps one inline cache per class and field), and a
 * field set: the names its objects get accessors for, in order (the fields a constructed
 * instance declares, then names met in records or assignments). A ghost gets the accessors
 * of its class's field set when it is made; a loaded object keeps its values in
 * `Meta.values`. The accessors are own, enumerable and not configurable: `Object.keys`,
 * spread, JSON and test equality see the fields, and `delete` is refused (a TypeError in
 * strict-mode code) instead of being lost. A field added to a loaded object gets a
 * configurable accessor until its transaction commits (so abort can take it away again).
 *
 *   getter: values loaded -> the value; a nested mutable value is reported once per
 *           transaction (handedField); a ghost or soft ghost -> activate, then the value
 *   setter: the object CHANGED -> store the value (writes to objects changed already in this
 *           transaction cost a load of the state and a store); otherwise the slow path
 *           checks that it may change now (not stale, no commit in flight, not a read-only
 *           view: objects of a commit in flight are LOCKED), loads a ghost, stores the
 *           value and reports the first change of the transaction
 */
import { CHANGED, Persistent, learnKeys, metaOf, compileWithMeta, setAddField, type FieldSet, type Meta } from "./persistent.ts";
import { handedField } from "./slots.ts";

interface Pair {
  get(this: Persistent): unknown;
  set(this: Persistent, value: unknown): void;
}

class Fields implements FieldSet {
  readonly has: Set<string>;
  readonly define: (obj: object) => void;
  constructor(
    readonly keys: readonly string[],
    pairs: Pair[],
  ) {
    this.has = new Set(keys);
    const descs = pairs.map((p) => ({ get: p.get, set: p.set, enumerable: true, configurable: false }));
    const body = keys.map((k, i) => `dp(o, ${JSON.stringify(k)}, D[${i}]);`).join("\n");
    this.define = new Function("dp", "D", `return function define(o) {\n${body}\n}`)(Object.defineProperty, descs) as (
      obj: object,
    ) => void;
  }
}

interface ClassFields {
  /** The fields an instance made by the constructor has: every object gets these. */
  declared: Fields;
  /** Field sets with extra names (fields only some objects have), by their extra names. */
  withExtras: Map<string, Fields>;
  pairs: Map<string, Pair>;
  /** The own state of one instance made by the class's constructor (null if it throws). */
  sample: Record<string, unknown> | null;
  /** The keys of the last state installed and the field set they need. */
  lastKeys: readonly string[];
  lastFields: Fields;
}

const classes = new WeakMap<object, ClassFields>();

/**
 * The accessors' slow paths (ghosts, stale objects, commits in flight) are called through
 * these wrappers, whose generated bodies are too large for TurboFan to inline (its limit is
 * 460 bytes of bytecode): a slow path that was hot while objects loaded would otherwise be
 * inlined into every field accessor, making the accessors too large to inline into the
 * application's loops, and hot reads three times slower (bench/hot-field.ts).
 */
function outOfLine<F extends (...args: never[]) => unknown>(fn: F): F {
  const filler = Array.from({ length: 80 }, (_, i) => `sink.v${i % 8} = a + ${i};`).join("\n");
  return new Function(
    "fn",
    "sink",
    `return function outOfLine(a, b, c, d) {
      if (a === sink) {
${filler}
      }
      return fn(a, b, c, d);
    };`,
  )(fn, {}) as F;
}

const slowGet = outOfLine(slowGetImpl);
const slowSet = outOfLine(slowSetImpl);
/** Once per object and transaction (the first nested value handed out): out of line too. */
const handedOutOfLine = outOfLine(handedField);

function slowGetImpl(obj: Persistent, key: string): unknown {
  const m = metaOf(obj);
  if (m.values === null) {
    const jar = m.jar;
    if (jar === null) return undefined;
    jar.activate(obj, m);
    if (m.values === null) return undefined;
  }
  const v = m.values[key];
  if (m.watch !== 0 && typeof v === "object" && v !== null) return handedField(obj, m, v, key);
  return v;
}

function slowSetImpl(obj: Persistent, key: string, value: unknown): void {
  const m = metaOf(obj);
  const jar = m.jar;
  if (jar === null) {
    if (m.values !== null) m.values[key] = value;
    return;
  }
  jar.checkWrite(obj, m);
  if (m.values === null) jar.activate(obj, m);
  // First, so that nested values held over from an earlier transaction are replaced by
  // fresh ones before this value is stored (Jar.changed).
  if (m.state !== CHANGED) jar.changed(obj, m);
  m.values![key] = value;
}

function changed(obj: Persistent, m: Meta): void {
  m.jar!.changed(obj, m);
}

let pairSerial = 0;

function makePair(key: string): Pair {
  const k = JSON.stringify(key);
  // Compiled where `#m` is in scope, with a distinct source per pair (the serial): functions
  // compiled from one text would share their feedback, and their inline caches would see
  // every class (megamorphic reads of `#m` made field reads five times slower).
  const source = `(function (slowGet, slowSet, handedField, changed) {
    // field accessor pair ${++pairSerial}
    return {
      get() {
        const s = this.#v;
        if (s === null) return slowGet(this, ${k});
        const v = s[${k}];
        if (typeof v === "object" && v !== null && this.#w !== 0) return handedField(this, this.#m, v, ${k});
        return v;
      },
      set(v) {
        if (this.#s === ${CHANGED}) { this.#v[${k}] = v; return; }
        slowSet(this, ${k}, v);
      },
    };
  })`;
  return (compileWithMeta(source) as (...fns: unknown[]) => Pair)(slowGet, slowSet, handedOutOfLine, changed);
}

function pairOf(cf: ClassFields, key: string): Pair {
  return pairFrom(cf.pairs, key);
}

/** The fields of the class whose prototype is `proto`, learning the declared ones first. */
function classFields(proto: object): ClassFields {
  let cf = classes.get(proto);
  if (cf === undefined) {
    let sample: Record<string, unknown> | null = null;
    try {
      const cls = (proto as { constructor: new () => object }).constructor;
      const inst = new cls();
      sample = {};
      for (const k of Object.keys(inst)) sample[k] = (inst as Record<string, unknown>)[k];
    } catch {
      sample = null; // a constructor that needs arguments: no declared fields, no defaults
    }
    const keys = sample === null ? [] : Object.keys(sample).filter(usable);
    const pairs = new Map<string, Pair>();
    const declared = new Fields(keys, keys.map((k) => pairFrom(pairs, k)));
    cf = { declared, withExtras: new Map(), pairs, sample, lastKeys: keys, lastFields: declared };
    classes.set(proto, cf);
    learnKeys(proto, keys);
  }
  return cf;
}

function pairFrom(pairs: Map<string, Pair>, key: string): Pair {
  let p = pairs.get(key);
  if (p === undefined) {
    p = makePair(key);
    pairs.set(key, p);
  }
  return p;
}

/** The declared fields plus `extras` (names the class does not declare), shared per name list. */
function fieldsWith(cf: ClassFields, extras: readonly string[]): Fields {
  if (extras.length === 0) return cf.declared;
  const id = extras.join("\u0000");
  let f = cf.withExtras.get(id);
  if (f === undefined) {
    const all = [...cf.declared.keys, ...extras];
    f = new Fields(all, all.map((k) => pairOf(cf, k)));
    cf.withExtras.set(id, f);
  }
  return f;
}

/** Give `obj` the accessors of `target` it lacks; its field set becomes the union. */
function defineFields(obj: object, m: Meta, cf: ClassFields, target: Fields): void {
  const have = m.fields as Fields | null;
  if (have === null) {
    target.define(obj);
    m.fields = target;
    return;
  }
  const extras: string[] = [];
  for (const k of have.keys) if (!cf.declared.has.has(k)) extras.push(k);
  for (const k of target.keys) {
    if (have.has.has(k)) continue;
    const p = pairOf(cf, k);
    Object.defineProperty(obj, k, { get: p.get, set: p.set, enumerable: true, configurable: false });
    if (!cf.declared.has.has(k)) extras.push(k);
  }
  m.fields = fieldsWith(cf, extras);
}

/** Names that get accessors: strings that are not `__proto__` (the codec refuses it). */
function usable(k: string): boolean {
  return k !== "__proto__";
}

/** @internal The own state of one freshly constructed instance of the class (its defaults). */
export function declaredState(proto: object): Record<string, unknown> | null {
  return classFields(proto).sample;
}

/** @internal Give `obj` the accessors of its class's declared fields (a ghost being made). */
export function giveAccessors(obj: Persistent, m: Meta): void {
  const cf = classFields(Object.getPrototypeOf(obj) as object);
  if (m.fields === null) {
    cf.declared.define(obj);
    m.fields = cf.declared;
  }
}

/**
 * @internal Make `values` the fields of `obj`: every key gets an accessor (names the class
 * does not declare get one on this object only). `values` becomes the object's backing store.
 */
export function installFields(obj: Persistent, m: Meta, values: Record<string, unknown>): void {
  const cf = classFields(Object.getPrototypeOf(obj) as object);
  const keys = Object.keys(values);
  if (!sameKeys(keys, cf.lastKeys)) {
    const extras = keys.filter((k) => !cf.declared.has.has(k) && usable(k));
    cf.lastFields = fieldsWith(cf, extras);
    cf.lastKeys = keys;
  }
  if (m.fields !== cf.lastFields) defineFields(obj, m, cf, cf.lastFields);
  m.values = values;
}

/** @internal Fields added in this transaction keep their accessors for good (after commit). */
export function keepAddedFields(obj: Persistent, m: Meta): void {
  const added = m.added;
  if (added === null) return;
  m.added = null;
  const kept = added.filter((k) => Object.hasOwn(obj, k));
  if (kept.length === 0) return;
  for (const k of kept) Object.defineProperty(obj, k, { configurable: false });
  const cf = classFields(Object.getPrototypeOf(obj) as object);
  const have = (m.fields as Fields | null) ?? cf.declared;
  const extras = have.keys.filter((k) => !cf.declared.has.has(k));
  for (const k of kept) if (!have.has.has(k)) extras.push(k);
  m.fields = fieldsWith(cf, extras);
}

/** @internal Fields added in this transaction are taken away again (abort). */
export function dropAddedFields(obj: Persistent, m: Meta): void {
  const added = m.added;
  if (added === null) return;
  m.added = null;
  for (const k of added) delete (obj as unknown as Record<string, unknown>)[k];
}

/**
 * @internal The state to store for a loaded object with accessors: its values, without
 * fields added and then deleted in this transaction.
 */
export function fieldValues(obj: Persistent, m: Meta): Record<string, unknown> {
  const values = m.values!;
  const added = m.added;
  if (added === null || added.every((k) => Object.hasOwn(obj, k))) return values;
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(values)) if (!added.includes(k) || Object.hasOwn(obj, k)) out[k] = values[k];
  m.values = out;
  m.added = added.filter((k) => Object.hasOwn(obj, k));
  return out;
}

function sameKeys(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// A new property assigned to a loaded object: a configurable accessor until commit.
setAddField((obj, m, key, value) => {
  if (!usable(key)) throw new TypeError(`a property named "__proto__" cannot be stored (${m.className}#${m.oid})`);
  const cf = classFields(Object.getPrototypeOf(obj) as object);
  const p = pairOf(cf, key);
  m.values![key] = value;
  Object.defineProperty(obj, key, { get: p.get, set: p.set, enumerable: true, configurable: true });
  (m.added ??= []).push(key);
  if (m.state !== CHANGED) m.jar!.changed(obj, m);
});
