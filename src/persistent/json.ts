/**
 * `JSON.stringify` of persistent objects, without I/O.
 *
 * The object given to `JSON.stringify` (or reached first) is written with its fields;
 * persistent objects it refers to are nested when they are loaded, and appear as
 * `{ "$ref": oid, "$class": name }` when they are ghosts (loading them would be I/O) or were
 * written already in this call (shared objects and cycles). Typed arrays become arrays of
 * numbers. Collections write their contents (a map its entries, a list and a set their items,
 * a counter its value, a BTree its entries when all of its buckets are loaded).
 */
import { GHOST, Persistent, isPersistent, metaOf } from "./persistent.ts";
import { hasCustomState } from "./slots.ts";

/**
 * @internal Collections: the plain form of their contents (entries, items, a number), or
 * NOT_LOADED when writing it would load something.
 */
export const JSON_FORM: unique symbol = Symbol("amber.jsonForm");
/** @internal */
export const NOT_LOADED: unique symbol = Symbol("amber.notLoaded");

interface HasJsonForm {
  [JSON_FORM](): unknown;
}

/** @internal The JSON form of `root` and what it reaches without loading anything. */
export function toJSONValue(root: Persistent): unknown {
  const emitted = new Set<Persistent>();
  const reference = (p: Persistent): unknown => {
    const m = metaOf(p);
    return { $ref: m.oid < 0 ? null : m.oid, $class: m.className !== "" ? m.className : p.constructor.name };
  };
  const convert = (v: unknown): unknown => {
    if (typeof v !== "object" || v === null) return v;
    if (isPersistent(v)) return object(v);
    if (Array.isArray(v)) return v.map(convert);
    if (ArrayBuffer.isView(v)) return v instanceof DataView ? {} : Array.from(v as unknown as ArrayLike<number | bigint>, jsonNumber);
    if (v instanceof Date || v instanceof Map || v instanceof Set || v instanceof RegExp) return v;
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v)) out[k] = convert((v as Record<string, unknown>)[k]);
    return out;
  };
  const object = (p: Persistent): unknown => {
    const m = metaOf(p);
    if (emitted.has(p) || (m.state === GHOST && m.record === null)) return reference(p);
    emitted.add(p);
    if (hasCustomState(p)) {
      const form = typeof (p as unknown as Partial<HasJsonForm>)[JSON_FORM] === "function" ? (p as unknown as HasJsonForm)[JSON_FORM]() : undefined;
      return form === NOT_LOADED ? reference(p) : convert(form);
    }
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(p)) out[k] = convert((p as unknown as Record<string, unknown>)[k]);
    return out;
  };
  return object(root);
}

function jsonNumber(x: number | bigint): number | string {
  return typeof x === "bigint" ? x.toString() : x;
}

Object.defineProperty(Persistent.prototype, "toJSON", {
  value: function toJSON(this: Persistent): unknown {
    return toJSONValue(this);
  },
  writable: true,
  configurable: true,
});
