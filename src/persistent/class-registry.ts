/**
 * The class registry: stable stored names for persistent classes and value classes.
 *
 * A stored record names its class by the registered name, never by the TypeScript class
 * name, so renaming a class in code does not orphan its data. `registerAlias` maps names
 * that were used before; a class's `version` and its static `upgrade(state, storedVersion)`
 * migrate states written by older code.
 */
import { Persistent, describe } from "./persistent.ts";

export type ClassKind = "persistent" | "value";

/** A function that turns an old stored state into the current shape. */
export type UpgradeHook = (state: Record<string, unknown>, storedVersion: number) => Record<string, unknown>;

export interface ClassInfo {
  /** The stored name. */
  readonly name: string;
  readonly cls: Function;
  readonly kind: ClassKind;
  /** The current state version (stored with each record). */
  readonly version: number;
}

export interface RegisterOptions {
  /** Current version of the stored state (default 0); see the static `upgrade` hook. */
  version?: number;
}

const byName = new Map<string, ClassInfo>();
const byClass = new Map<Function, ClassInfo>();

/**
 * Register `cls` under the stable stored `name`. Subclasses of `Persistent` become
 * persistent classes (their own records); other classes become value classes (stored
 * inside their owner's record and restored with their prototype).
 * Registering the same class again under the same name is allowed (module reloads);
 * anything else that would make a name or a class ambiguous throws a `TypeError`.
 */
export function registerClass(cls: Function, name: string, options: RegisterOptions = {}): void {
  if (typeof cls !== "function" || typeof cls.prototype !== "object") {
    throw new TypeError(`registerClass() expects a class, got ${describe(cls)}`);
  }
  if (typeof name !== "string" || name.length === 0) {
    throw new TypeError(`registerClass(${cls.name}) needs a non-empty stored name, got ${describe(name)}`);
  }
  const version = options.version ?? 0;
  if (!Number.isInteger(version) || version < 0) {
    throw new TypeError(`class ${cls.name}: version must be a non-negative integer, got ${String(version)}`);
  }
  const kind: ClassKind = cls.prototype instanceof Persistent ? "persistent" : "value";
  const existing = byName.get(name);
  if (existing !== undefined && existing.cls !== cls) {
    throw new TypeError(
      `cannot register class ${cls.name} as "${name}": that name is already registered to class ${existing.cls.name}`,
    );
  }
  const previous = byClass.get(cls);
  if (previous !== undefined && previous.name !== name) {
    throw new TypeError(
      `class ${cls.name} is already registered as "${previous.name}"; cannot register it again as "${name}"`,
    );
  }
  const info: ClassInfo = { name, cls, kind, version };
  // Messages V8 writes about an object (a refused `delete` of a stored field) then name it.
  if (kind === "persistent" && !Object.hasOwn(cls.prototype, Symbol.toStringTag)) {
    Object.defineProperty(cls.prototype, Symbol.toStringTag, { value: name, configurable: true });
  }
  byName.set(name, info);
  byClass.set(cls, info);
}

/** Load records stored under `oldName` as instances of `cls` (written back under its name). */
export function registerAlias(oldName: string, cls: Function): void {
  const info = byClass.get(cls);
  if (info === undefined) {
    throw new TypeError(`registerAlias("${oldName}"): class ${cls.name} is not registered; register it first`);
  }
  const existing = byName.get(oldName);
  if (existing !== undefined && existing.cls !== cls) {
    throw new TypeError(
      `registerAlias("${oldName}", ${cls.name}): that name is already registered to class ${existing.cls.name}`,
    );
  }
  byName.set(oldName, info);
}

/** `@persistent("shop.Customer")`: register a `Persistent` subclass under a stored name. */
export function persistent(name: string, options?: RegisterOptions) {
  return function <C extends abstract new (...args: any[]) => Persistent>(cls: C, _ctx: ClassDecoratorContext<C>): void {
    if (!(cls.prototype instanceof Persistent)) {
      throw new TypeError(`@persistent("${name}"): class ${cls.name} must extend Persistent`);
    }
    registerClass(cls, name, options);
  };
}

/** `@serializable("shop.Money")`: register a value class stored inside its owner's record. */
export function serializable(name: string, options?: RegisterOptions) {
  return function <C extends abstract new (...args: any[]) => object>(cls: C, _ctx: ClassDecoratorContext<C>): void {
    if (cls.prototype instanceof Persistent) {
      throw new TypeError(`@serializable("${name}"): class ${cls.name} extends Persistent; use @persistent`);
    }
    registerClass(cls, name, options);
  };
}

/** @internal */
export function classByName(name: string): ClassInfo | undefined {
  return byName.get(name);
}

/** @internal */
export function infoOfClass(cls: Function): ClassInfo | undefined {
  return byClass.get(cls);
}

/** @internal The registration of a persistent object's class, or a TypeError naming it. */
export function persistentInfo(obj: Persistent): ClassInfo {
  // The prototype's constructor: an own field named "constructor" must not hide the class.
  const cls = (Object.getPrototypeOf(obj) as { constructor: Function }).constructor;
  const info = byClass.get(cls);
  if (info === undefined || info.kind !== "persistent") {
    throw new TypeError(
      `class ${cls.name} is not registered: persistent classes need @persistent("name") or registerClass(${cls.name}, "name")`,
    );
  }
  return info;
}
