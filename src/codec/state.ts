/**
 * The state codec: an object's state (a plain object of its fields) to MessagePack bytes
 * and back. Data only: decoding never runs code from the bytes; classes come from the
 * registry by name.
 *
 * Bytes are written by msgpackr (with `moreTypes` for Date, RegExp, Set, BigInt and typed
 * arrays) and the extensions of ours listed in extensions.ts (types 1 and 2, which need
 * the record being encoded or decoded, are registered here).
 *
 * Two writers: states whose walk found a container reached twice (shared or cyclic) are
 * written in msgpackr's structured-clone mode, which needs its "records" encoding of
 * objects; every other state is written as plain MessagePack maps, which decode about
 * three times faster, with Maps boxed as extension 5 so they are not confused with plain
 * objects. The envelope header records which writer was used.
 * A value of an unknown class is kept as `BrokenValue` and written back unchanged (as 2).
 * Shared references and cycles among the record's plain values survive (structured clone);
 * a property named `__proto__` is refused (decoders would rename or drop it).
 *
 * Before packing, `encodeState` walks the state once: it validates every value (a function,
 * symbol, WeakMap or unregistered class instance raises a TypeError naming the property
 * path, e.g. `Customer.orders[3].callback: functions cannot be stored`), collects the
 * persistent references with the top-level property that holds each, and notes whether the
 * state holds mutable containers (which the connection then compares by re-encoding).
 */
import { addExtension, Packr } from "msgpackr";
import { BrokenValue, BufferBox, MapBox, NEG_ZERO } from "./extensions.ts";

export { BrokenValue };
import { isPersistent, Persistent } from "../persistent/persistent.ts";
import { classByName, infoOfClass } from "../persistent/class-registry.ts";
import { BrokenObject } from "../persistent/broken-object.ts";

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
  /** Built once a record has many references; until then the arrays are searched. */
  firstIndex: Map<Persistent, number> | null;
  pathsOf: Map<Persistent, string[]> | null;
  containers: boolean;
  negZero: boolean;
  maps: boolean;
  buffers: boolean;
  shared: boolean;
  /** The first container met, then a Set once there is a second (most states have one). */
  first: object | null;
  seen: Set<object> | null;
  valueArrays: Map<object, unknown[]> | null;
  owner: string;
  /** The path being walked; null on the fast path (errors walk again to name the path). */
  stack: Array<string | number> | null;
  checkRef: (p: Persistent, path: () => string) => void;
}

/** Thrown on the fast path when a message needs the path: encodeState walks again with one. */
const NEEDS_PATH = Symbol("needs path");

/** The context of the walk in progress (encodeState is not re-entrant). */
let walking: EncodeContext | null = null;
/** The path of the value being walked, for messages (one function, not a closure per call). */
const currentPath = (): string => {
  if (walking === null) return "";
  if (walking.stack === null) throw NEEDS_PATH;
  return pathString(walking);
};

let encoding: EncodeContext | null = null;
let decodingRefs: readonly unknown[] | null = null;

// copyBuffers: decoded binary values never alias the record bytes, which may be memory a
// storage only lends for the duration of the decode.
const cloningPackr = new Packr({ structuredClone: true, mapsAsObjects: false, moreTypes: true, copyBuffers: true });
const plainPackr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: true, copyBuffers: true });

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
      const index = encoding === null ? -1 : refIndexOf(encoding, obj);
      if (index < 0) throw new Error("internal: persistent reference not collected before packing");
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
    write: (v: BrokenValue) => valueArray(v, v.className, v.fields),
    read: readValue,
  });
}

function valueArray(v: object, name: string, fields: object): unknown[] {
  // Hand msgpackr the same array for the same instance, so structured clone keeps it shared.
  const ctx = encoding!;
  ctx.valueArrays ??= new Map();
  let arr = ctx.valueArrays.get(v);
  if (arr === undefined) {
    arr = [name, fields === v ? { ...v } : fields];
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
    write: (v: object) => valueArray(v, name, v),
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
  try {
    return walkAndPack(owner, state, checkRef, null);
  } catch (err) {
    if (err !== NEEDS_PATH) throw err;
    // Walk again, keeping the path this time, to raise the error with the path in it.
    return walkAndPack(owner, state, checkRef, []);
  }
}

function walkAndPack(
  owner: string,
  state: Record<string, unknown>,
  checkRef: (p: Persistent, path: () => string) => void,
  stack: Array<string | number> | null,
): EncodedState {
  const ctx: EncodeContext = {
    refs: [],
    refPaths: [],
    firstIndex: null,
    pathsOf: null,
    containers: false,
    negZero: false,
    maps: false,
    buffers: false,
    shared: false,
    first: null,
    seen: null,
    valueArrays: null,
    owner,
    stack,
    checkRef,
  };
  walking = ctx;
  try {
    for (const key in state) {
      if (stack !== null) stack.push(key);
      walk(ctx, state[key], key);
      if (stack !== null) stack.pop();
    }
    return pack(ctx, state);
  } finally {
    walking = null;
  }
}

function pack(ctx: EncodeContext, state: Record<string, unknown>): EncodedState {
  const boxMaps = !ctx.shared && ctx.maps;
  const value = ctx.negZero || boxMaps || ctx.buffers ? replaceSpecial(state, new Map(), boxMaps) : state;
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
export function decodeState(
  bytes: Uint8Array,
  refs: readonly unknown[],
  shared = true,
  start = 0,
  end = bytes.length,
): Record<string, unknown> {
  ensureExtensions();
  const previous = decodingRefs;
  decodingRefs = refs;
  try {
    const value: unknown = (shared ? cloningPackr : plainPackr).unpack(bytes as Buffer, { start, end } as never);
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
  for (const part of ctx.stack ?? []) {
    if (typeof part === "number") s += `[${part}]`;
    else if (part.startsWith("\u0000")) s += part.slice(1);
    else s += /^[A-Za-z_$][\w$]*$/.test(part) ? `.${part}` : `[${JSON.stringify(part)}]`;
  }
  return s;
}

function fail(ctx: EncodeContext, what: string): never {
  if (ctx.stack === null) throw NEEDS_PATH;
  throw new TypeError(`${pathString(ctx)}: ${what}`);
}

/** Has the walk met this container before (shared or cyclic)? Notes it if not. */
function seenBefore(ctx: EncodeContext, obj: object): boolean {
  if (ctx.first === null) {
    ctx.first = obj;
    return false;
  }
  if (ctx.first === obj) return true;
  const seen = (ctx.seen ??= new Set());
  if (seen.has(obj)) return true;
  seen.add(obj);
  return false;
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
  if (seenBefore(ctx, obj)) {
    ctx.shared = true;
    return;
  }
  ctx.containers = true;
  const stack = ctx.stack;
  if (Array.isArray(obj)) {
    for (let i = 0; i < obj.length; i++) {
      const item: unknown = obj[i];
      if (typeof item === "number" && item !== 0) continue; // the common case, skipped quickly
      if (stack !== null) stack.push(i);
      walk(ctx, item, top);
      if (stack !== null) stack.pop();
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
      if (stack !== null) stack.push(`\u0000[Map key ${typeof k === "string" ? JSON.stringify(k) : String(k)}]`);
      walk(ctx, k, top);
      walk(ctx, val, top);
      if (stack !== null) stack.pop();
    }
    return;
  }
  if (obj instanceof Set) {
    let i = 0;
    for (const member of obj) {
      if (stack !== null) stack.push(`\u0000[Set member ${i}]`);
      i++;
      walk(ctx, member, top);
      if (stack !== null) stack.pop();
    }
    return;
  }
  if (obj instanceof Date || obj instanceof RegExp) return;
  if (ArrayBuffer.isView(obj)) {
    if (obj instanceof DataView) fail(ctx, "DataView cannot be stored; store its bytes as a Uint8Array");
    if (Buffer.isBuffer(obj)) ctx.buffers = true;
    return;
  }
  if (obj instanceof BrokenValue) return;
  const cls = (proto as { constructor?: Function } | null)?.constructor;
  const info = typeof cls === "function" ? infoOfClass(cls) : undefined;
  if (info !== undefined && info.kind === "value" && proto === cls!.prototype) {
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
  const stack = ctx.stack;
  for (const key of Object.keys(obj)) {
    // Decoders rename or drop it (it would set the prototype): refuse it rather than lose it.
    if (key === "__proto__") fail(ctx, 'a property named "__proto__" cannot be stored (use a Map for arbitrary keys)');
    if (stack !== null) stack.push(key);
    walk(ctx, obj[key], top);
    if (stack !== null) stack.pop();
  }
}

/** Records with few references search the arrays; past this many they get Maps. */
const INDEX_AT = 16;

function addRef(ctx: EncodeContext, obj: Persistent, path: string): void {
  const refs = ctx.refs;
  if (ctx.pathsOf === null) {
    let known = false;
    for (let i = 0; i < refs.length; i++) {
      if (refs[i] === obj) {
        if (ctx.refPaths[i] === path) return;
        known = true;
      }
    }
    if (!known) vetRef(ctx, obj);
    refs.push(obj);
    ctx.refPaths.push(path);
    if (refs.length > INDEX_AT) buildIndex(ctx);
    return;
  }
  let paths = ctx.pathsOf.get(obj);
  if (paths === undefined) {
    vetRef(ctx, obj);
    paths = [];
    ctx.pathsOf.set(obj, paths);
    ctx.firstIndex!.set(obj, refs.length);
  } else if (paths.includes(path)) {
    return;
  }
  paths.push(path);
  refs.push(obj);
  ctx.refPaths.push(path);
}

/**
 * Let the caller vet a reference met for the first time in this record (`checkRef`). When
 * it refuses one whose class is not a registered persistent class, the refusal names the
 * property path, like that of an unregistered value class. The class is only looked at
 * then: encodings that are mere comparisons (whose `checkRef` accepts anything) never
 * throw for it, and the common case costs nothing.
 */
function vetRef(ctx: EncodeContext, obj: Persistent): void {
  try {
    ctx.checkRef(obj, currentPath);
  } catch (err) {
    if (err === NEEDS_PATH) throw err;
    const cls = (Object.getPrototypeOf(obj) as { constructor?: Function } | null)?.constructor;
    const info = typeof cls === "function" ? infoOfClass(cls) : undefined;
    if ((info !== undefined && info.kind === "persistent") || obj instanceof BrokenObject) throw err;
    const name = cls?.name || "(anonymous)";
    fail(ctx, `class ${name} is not registered: persistent classes need @persistent("name") or registerClass(${name}, "name")`);
  }
}

function buildIndex(ctx: EncodeContext): void {
  const firstIndex = new Map<Persistent, number>();
  const pathsOf = new Map<Persistent, string[]>();
  ctx.refs.forEach((r, i) => {
    if (!firstIndex.has(r)) firstIndex.set(r, i);
    let paths = pathsOf.get(r);
    if (paths === undefined) pathsOf.set(r, (paths = []));
    paths.push(ctx.refPaths[i]!);
  });
  ctx.firstIndex = firstIndex;
  ctx.pathsOf = pathsOf;
}

function refIndexOf(ctx: EncodeContext, obj: Persistent): number {
  return ctx.firstIndex === null ? ctx.refs.indexOf(obj) : (ctx.firstIndex.get(obj) ?? -1);
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
  if (Buffer.isBuffer(v)) {
    const box = new BufferBox(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
    copies.set(v, box);
    return box;
  }
  if (v instanceof Date || v instanceof RegExp || ArrayBuffer.isView(v) || v instanceof BrokenValue) return v;
  const out = Object.create(Object.getPrototypeOf(v) as object) as Record<string, unknown>;
  copies.set(v, out);
  for (const key of Object.keys(v)) out[key] = replaceSpecial((v as Record<string, unknown>)[key], copies, boxMaps);
  return out;
}
