/**
 * The state codec: an object's state (a plain object of its fields) to MessagePack bytes
 * and back. Data only: decoding never runs code from the bytes; classes come from the
 * registry by name.
 *
 * Bytes are written by msgpackr in structured-clone mode (shared references and cycles
 * among the record's plain values survive), with four extensions:
 *
 *   type  payload                     meaning
 *   1     index into the refs table   a reference to a persistent object (the envelope's
 *                                     header holds its oid, class and property path)
 *   2     [className, fields]         an instance of a registered value class
 *   3     nil                         negative zero (MessagePack integers cannot hold it)
 *   5     [k1, v1, k2, v2, ...]       a Map (in plain mode, see below)
 *
 * Two writers: states whose walk found a container reached twice (shared or cyclic) are
 * written in msgpackr's structured-clone mode, which needs its "records" encoding of
 * objects; every other state is written as plain MessagePack maps, which decode about
 * three times faster, with Maps boxed as extension 5 so they are not confused with plain
 * objects. The envelope header records which writer was used.
 * A value of an unknown class is kept as `BrokenValue` and written back unchanged (as 2).
 *
 * Before packing, `encodeState` walks the state once: it validates every value (a function,
 * symbol, WeakMap or unregistered class instance raises a TypeError naming the property
 * path, e.g. `Customer.orders[3].callback: functions cannot be stored`), collects the
 * persistent references with the top-level property that holds each, and notes whether the
 * state holds mutable containers (which the connection then compares by re-encoding).
 */
import { addExtension, Packr } from "msgpackr";
import { isPersistent, Persistent } from "../persistent/persistent.ts";
import { classByName, infoOfClass } from "../persistent/class-registry.ts";

/** A value of a class that is not registered in this process, kept as it was stored. */
export class BrokenValue {
  constructor(
    /** The stored class name. */
    readonly className: string,
    /** The stored fields, readable. */
    readonly fields: Record<string, unknown>,
  ) {}
}

class NegativeZero {}
const NEG_ZERO = new NegativeZero();

/** A Map on its way into plain mode (extension 5). */
class MapBox {
  constructor(readonly map: Map<unknown, unknown>) {}
}

export interface EncodedState {
  state: Uint8Array;
  /** The bytes need the structured-clone reader (shared or cyclic containers). */
  shared: boolean;
  /** Referenced persistent objects; `refPaths[i]` is the property holding `refs[i]`. */
  refs: Persistent[];
  refPaths: string[];
  /** The state holds arrays, objects, Maps, Sets, Dates, typed arrays or value objects. */
  containers: boolean;
}

interface EncodeContext {
  refs: Persistent[];
  refPaths: string[];
  firstIndex: Map<Persistent, number>;
  pathsOf: Map<Persistent, string[]>;
  containers: boolean;
  negZero: boolean;
  maps: boolean;
  shared: boolean;
  seen: Set<object>;
  valueArrays: Map<object, unknown[]>;
  owner: string;
  stack: Array<string | number>;
  checkRef: (p: Persistent, path: () => string) => void;
}

/** The context of the walk in progress (encodeState is not re-entrant). */
let walking: EncodeContext | null = null;
/** The path of the value being walked, for messages (one function, not a closure per call). */
const currentPath = (): string => (walking === null ? "" : pathString(walking));

let encoding: EncodeContext | null = null;
let decodingRefs: readonly Persistent[] | null = null;

const cloningPackr = new Packr({ structuredClone: true, mapsAsObjects: false, moreTypes: true });
const plainPackr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: true });

addExtension({
  Class: NegativeZero,
  type: 3,
  write: () => null,
  read: () => -0,
});

addExtension({
  Class: MapBox,
  type: 5,
  write(box: MapBox) {
    const flat: unknown[] = [];
    for (const [k, v] of box.map) flat.push(k, v);
    return flat;
  },
  read(flat: unknown[]) {
    const map = new Map<unknown, unknown>();
    for (let i = 0; i < flat.length; i += 2) map.set(flat[i], flat[i + 1]);
    return map;
  },
});

let persistentExtensionAdded = false;
const valueExtensions = new Set<Function>();

function ensureExtensions(): void {
  if (persistentExtensionAdded) return;
  persistentExtensionAdded = true;
  addExtension({
    // Persistent references: the payload is an index into the record's refs table.
    Class: Persistent,
    type: 1,
    write(obj: Persistent) {
      const index = encoding?.firstIndex.get(obj);
      if (index === undefined) throw new Error("internal: persistent reference not collected before packing");
      return index;
    },
    read(index: number) {
      const ref = decodingRefs?.[index];
      if (ref === undefined) {
        throw new Error(`reference index ${index} outside the refs table of ${decodingRefs?.length ?? 0}`);
      }
      return ref;
    },
  });
  addExtension({
    Class: BrokenValue,
    type: 2,
    write: (v: BrokenValue) => valueArray(v, () => [v.className, v.fields]),
    read: readValue,
  });
}

function valueArray(v: object, make: () => unknown[]): unknown[] {
  // Hand msgpackr the same array for the same instance, so structured clone keeps it shared.
  const ctx = encoding!;
  let arr = ctx.valueArrays.get(v);
  if (arr === undefined) {
    arr = make();
    ctx.valueArrays.set(v, arr);
  }
  return arr;
}

function readValue(data: unknown): object {
  const [name, fields] = data as [string, Record<string, unknown>];
  const info = classByName(name);
  if (info === undefined || info.kind !== "value") return new BrokenValue(name, fields);
  const obj = Object.create(info.cls.prototype as object) as Record<string, unknown>;
  Object.assign(obj, fields);
  return obj;
}

function ensureValueExtension(cls: Function, name: string): void {
  if (valueExtensions.has(cls)) return;
  valueExtensions.add(cls);
  addExtension({
    Class: cls as new () => object,
    type: 2,
    write: (v: object) => valueArray(v, () => [name, { ...v }]),
    read: readValue,
  });
}

/**
 * Encode `state` (the fields of an object of class `owner`). `checkRef` is called once per
 * referenced persistent object; it may throw to refuse the reference (foreign connection).
 */
export function encodeState(
  owner: string,
  state: Record<string, unknown>,
  checkRef: (p: Persistent, path: () => string) => void,
): EncodedState {
  ensureExtensions();
  // The collections are reused across calls (cleared in `finally`): encodeState is not
  // re-entrant, and allocating them per record was a measurable share of commit time.
  const ctx: EncodeContext = {
    refs: [],
    refPaths: [],
    firstIndex: reusable.firstIndex,
    pathsOf: reusable.pathsOf,
    containers: false,
    negZero: false,
    maps: false,
    shared: false,
    seen: reusable.seen,
    valueArrays: reusable.valueArrays,
    owner,
    stack: reusable.stack,
    checkRef,
  };
  walking = ctx;
  try {
    for (const key of Object.keys(state)) {
      ctx.stack.push(key);
      walk(ctx, state[key], key);
      ctx.stack.pop();
    }
    return pack(ctx, state);
  } finally {
    walking = null;
    reusable.firstIndex.clear();
    reusable.pathsOf.clear();
    reusable.seen.clear();
    reusable.valueArrays.clear();
    reusable.stack.length = 0;
  }
}

const reusable = {
  firstIndex: new Map<Persistent, number>(),
  pathsOf: new Map<Persistent, string[]>(),
  seen: new Set<object>(),
  valueArrays: new Map<object, unknown[]>(),
  stack: [] as Array<string | number>,
};

function pack(ctx: EncodeContext, state: Record<string, unknown>): EncodedState {
  const boxMaps = !ctx.shared && ctx.maps;
  const value = ctx.negZero || boxMaps ? replaceSpecial(state, new Map(), boxMaps) : state;
  encoding = ctx;
  try {
    const packr = ctx.shared ? cloningPackr : plainPackr;
    return { state: packr.pack(value), shared: ctx.shared, refs: ctx.refs, refPaths: ctx.refPaths, containers: ctx.containers };
  } finally {
    encoding = null;
  }
}

/**
 * Decode state bytes; `refs[i]` is the object for entry `i` of the record's refs table.
 * `shared` says the bytes were written in structured-clone mode (the envelope records it).
 */
export function decodeState(bytes: Uint8Array, refs: readonly Persistent[], shared = true): Record<string, unknown> {
  ensureExtensions();
  const previous = decodingRefs;
  decodingRefs = refs;
  try {
    const value: unknown = (shared ? cloningPackr : plainPackr).unpack(bytes);
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new TypeError(`state is not an object (found ${Array.isArray(value) ? "array" : typeof value})`);
    }
    return value as Record<string, unknown>;
  } finally {
    decodingRefs = previous;
  }
}

function pathString(ctx: EncodeContext): string {
  let s = ctx.owner;
  for (const part of ctx.stack) {
    if (typeof part === "number") s += `[${part}]`;
    else if (part.startsWith("\u0000")) s += part.slice(1);
    else s += /^[A-Za-z_$][\w$]*$/.test(part) ? `.${part}` : `[${JSON.stringify(part)}]`;
  }
  return s;
}

function fail(ctx: EncodeContext, what: string): never {
  throw new TypeError(`${pathString(ctx)}: ${what}`);
}

function walk(ctx: EncodeContext, v: unknown, top: string): void {
  switch (typeof v) {
    case "number":
      if (v === 0 && 1 / v < 0) ctx.negZero = true;
      return;
    case "string":
    case "boolean":
    case "undefined":
    case "bigint":
      return;
    case "function":
      fail(ctx, "functions cannot be stored");
    case "symbol":
      fail(ctx, "symbols cannot be stored");
  }
  if (v === null) return;
  const obj = v as object;
  if (isPersistent(obj)) {
    addRef(ctx, obj, top);
    return;
  }
  if (ctx.seen.has(obj)) {
    ctx.shared = true;
    return;
  }
  ctx.seen.add(obj);
  ctx.containers = true;
  if (Array.isArray(obj)) {
    for (let i = 0; i < obj.length; i++) {
      ctx.stack.push(i);
      walk(ctx, obj[i], top);
      ctx.stack.pop();
    }
    return;
  }
  const proto = Object.getPrototypeOf(obj) as object | null;
  if (proto === Object.prototype || proto === null) {
    walkFields(ctx, obj as Record<string, unknown>, top);
    return;
  }
  if (obj instanceof Map) {
    ctx.maps = true;
    for (const [k, val] of obj) {
      ctx.stack.push(`\u0000[Map key ${typeof k === "string" ? JSON.stringify(k) : String(k)}]`);
      walk(ctx, k, top);
      walk(ctx, val, top);
      ctx.stack.pop();
    }
    return;
  }
  if (obj instanceof Set) {
    let i = 0;
    for (const member of obj) {
      ctx.stack.push(`\u0000[Set member ${i++}]`);
      walk(ctx, member, top);
      ctx.stack.pop();
    }
    return;
  }
  if (obj instanceof Date || obj instanceof RegExp) return;
  if (ArrayBuffer.isView(obj)) {
    if (obj instanceof DataView) fail(ctx, "DataView cannot be stored; store its bytes as a Uint8Array");
    return;
  }
  if (obj instanceof BrokenValue) return;
  const cls = (obj as { constructor?: Function }).constructor;
  const info = typeof cls === "function" ? infoOfClass(cls) : undefined;
  if (info !== undefined && info.kind === "value" && Object.getPrototypeOf(obj) === cls!.prototype) {
    ensureValueExtension(cls!, info.name);
    walkFields(ctx, obj as Record<string, unknown>, top);
    return;
  }
  if (obj instanceof WeakMap || obj instanceof WeakSet || obj instanceof WeakRef) {
    fail(ctx, `${cls?.name ?? "weak collection"} cannot be stored`);
  }
  if (obj instanceof Promise) fail(ctx, "promises cannot be stored");
  if (obj instanceof ArrayBuffer || obj instanceof SharedArrayBuffer) {
    fail(ctx, "ArrayBuffer cannot be stored; store a Uint8Array view of it");
  }
  fail(
    ctx,
    `instances of class ${cls?.name || "(anonymous)"} cannot be stored: it is not registered ` +
      `(use @serializable("name") for a value class, or extend Persistent and use @persistent("name"))`,
  );
}

function walkFields(ctx: EncodeContext, obj: Record<string, unknown>, top: string): void {
  for (const key of Object.keys(obj)) {
    ctx.stack.push(key);
    walk(ctx, obj[key], top);
    ctx.stack.pop();
  }
}

function addRef(ctx: EncodeContext, obj: Persistent, path: string): void {
  let paths = ctx.pathsOf.get(obj);
  if (paths === undefined) {
    ctx.checkRef(obj, currentPath);
    paths = [];
    ctx.pathsOf.set(obj, paths);
    ctx.firstIndex.set(obj, ctx.refs.length);
  }
  if (paths.includes(path)) return;
  paths.push(path);
  ctx.refs.push(obj);
  ctx.refPaths.push(path);
}

/**
 * A copy of `v` with every -0 replaced by its marker and, when `boxMaps`, every Map by a
 * MapBox (only made when the walk saw one of them; the application's values are untouched).
 */
function replaceSpecial(v: unknown, copies: Map<object, unknown>, boxMaps: boolean): any {
  if (typeof v === "number") return v === 0 && 1 / v < 0 ? NEG_ZERO : v;
  if (typeof v !== "object" || v === null || isPersistent(v)) return v;
  const done = copies.get(v);
  if (done !== undefined) return done;
  if (Array.isArray(v)) {
    const out: unknown[] = [];
    copies.set(v, out);
    for (const item of v) out.push(replaceSpecial(item, copies, boxMaps));
    return out;
  }
  if (v instanceof Map) {
    const out = new Map();
    const result = boxMaps ? new MapBox(out) : out;
    copies.set(v, result);
    for (const [k, val] of v) out.set(replaceSpecial(k, copies, boxMaps), replaceSpecial(val, copies, boxMaps));
    return result;
  }
  if (v instanceof Set) {
    const out = new Set();
    copies.set(v, out);
    for (const member of v) out.add(replaceSpecial(member, copies, boxMaps));
    return out;
  }
  if (v instanceof Date || v instanceof RegExp || ArrayBuffer.isView(v) || v instanceof BrokenValue) return v;
  const out = Object.create(Object.getPrototypeOf(v) as object) as Record<string, unknown>;
  copies.set(v, out);
  for (const key of Object.keys(v)) out[key] = replaceSpecial((v as Record<string, unknown>)[key], copies, boxMaps);
  return out;
}
