/**
 * Counter: a number that many transactions can add to at once. Concurrent `add`s never
 * conflict: at commit, a conflicting counter is resolved as committed + (mine - original),
 * so every transaction's additions land (the conflict-resolution hook of SPEC §5).
 *
 * Stored state (the property name is part of the stored format; keep it):
 *
 *   class name     state
 *   -------------  -----------------
 *   amber.Counter  { value: number }
 */
import { registerClass } from "../persistent/class-registry.ts";
import { JSON_FORM } from "../persistent/json.ts";
import { Persistent } from "../persistent/persistent.ts";
import { CLEAR_STATE, GET_STATE, HOLDS_CONTAINERS, SET_STATE, changedSlot, setSlot } from "../persistent/slots.ts";

const VALUE: unique symbol = Symbol("amber.counter");

export class Counter extends Persistent {
  declare [VALUE]: number;

  constructor(initial = 0) {
    super();
    setSlot(this, VALUE, checkNumber(initial, "Counter initial value"));
  }

  /** The current value (this transaction's view, including its own additions). */
  get value(): number {
    return this[VALUE];
  }

  /**
   * Add `n` (may be negative); returns the value as this transaction sees it now (its
   * snapshot plus its own additions). Not a sequence: concurrent transactions that add to
   * the same counter can see the same value, and all their additions land when they commit
   * (they merge instead of conflicting). For unique numbers, use an object per number or a
   * BTree keyed by something unique.
   */
  add(n = 1): number {
    checkNumber(n, "Counter.add");
    const v = this[VALUE]; // loads a ghost before it is marked changed
    if (n === 0) return v;
    changedSlot(this);
    return (this[VALUE] = v + n);
  }

  override valueOf(): number {
    return this[VALUE];
  }
  toJSON(): number {
    return this[VALUE];
  }
  /** @internal */
  [JSON_FORM](): unknown {
    return this[VALUE];
  }

  /** Concurrent additions merge: the committed value plus what this transaction added. */
  static resolveConflict(original: Record<string, unknown>, committed: Record<string, unknown>, mine: Record<string, unknown>) {
    const [o, c, m] = [original.value, committed.value, mine.value];
    if (typeof o !== "number" || typeof c !== "number" || typeof m !== "number") return undefined;
    return { value: c + (m - o) };
  }

  /** @internal */
  [GET_STATE](): Record<string, unknown> {
    return { value: this[VALUE] };
  }
  /** @internal */
  [SET_STATE](state: Record<string, unknown>): void {
    setSlot(this, VALUE, typeof state.value === "number" ? state.value : 0);
  }
  /** @internal */
  [CLEAR_STATE](): void {
    delete (this as Partial<this>)[VALUE];
  }
  /** @internal */
  [HOLDS_CONTAINERS](): boolean {
    return false;
  }
}

function checkNumber(n: unknown, what: string): number {
  if (typeof n !== "number" || !Number.isFinite(n)) {
    throw new TypeError(`${what} takes a finite number, got ${typeof n === "number" ? String(n) : typeof n}`);
  }
  return n;
}

registerClass(Counter, "amber.Counter");
