/**
 * Plain data properties: a new object's fields, BrokenObjects' fields and collections' slots,
 * defined without ever passing through setters or the Proxy at the end of the prototype
 * chain (persistent.ts).
 */
// Plain data properties: new objects, BrokenObjects and collection slots, defined without
// ever passing through setters or the Proxy.

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
    const fields = keys.map((k, i) => (isIdentifier(k) ? `${k} = cur.${k};` : `[K[${i}]] = cur[K[${i}]];`)).join("\n");
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

/** @internal A plain identifier that is safe as a generated class field or property name. */
export function isIdentifier(k: string): boolean {
  return /^[A-Za-z_$][\w$]*$/.test(k) && k !== "constructor" && k !== "prototype" && k !== "__proto__";
}

/** @internal Install `state` as own data properties (BrokenObjects). */
export function installData(obj: object, state: Record<string, unknown>): void {
  definerFor(Object.keys(state))(obj, state);
}

/**
 * @internal Remove every own enumerable property, newest first. Deleting the most recently
 * added property lets V8 return to the previous hidden class, so the object stays in fast
 * mode.
 */
export function clearState(obj: object): void {
  const keys = Object.keys(obj);
  for (let i = keys.length - 1; i >= 0; i--) delete (obj as Record<string, unknown>)[keys[i]!];
}

/** @internal Copy the own enumerable properties into a plain object (a new object's state). */
export function ownState(obj: object): Record<string, unknown> {
  // Spread copies own enumerable properties on V8's fast path (it can reuse the shape).
  const out: Record<string, unknown> = { ...obj };
  for (const sym of Object.getOwnPropertySymbols(out)) delete (out as Record<symbol, unknown>)[sym];
  return out;
}

const singleDefiners = new Map<PropertyKey, (target: object, value: unknown) => void>();

/** @internal Define an own data property without passing through setters or the Proxy. */
export function defineOwn(target: object, key: PropertyKey, value: unknown): void {
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
