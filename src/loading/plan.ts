/**
 * Loading plans (SPEC §3): declare, on groups of objects, what will be touched; one
 * `realize()` loads all of it (one round trip: the storage evaluates the whole plan, see
 * storage/plan-walk.ts); then touching it does no I/O.
 *
 *   const plan = conn.plan();
 *   const bugs = plan.from(page);                               // Group<Bug>
 *   const people = bugs.follow("reporter").union(bugs.follow("subscribers"));
 *   people.follow("branding");
 *   await plan.realize();
 *   for (const bug of bugs) render(bug, bug.reporter.branding); // no I/O
 *
 * A path through an array, PersistentList, PersistentSet, PersistentMap (its values) or
 * BTree (its values) fans out over the items. Groups iterate in a stable order (the order
 * objects were first reached), each object once, and only after `realize()`.
 */
import { TransactionError } from "../errors.ts";
import type { BTree } from "../collections/btree.ts";
import type { PersistentList } from "../persistent/persistent-list.ts";
import type { PersistentMap } from "../persistent/persistent-map.ts";
import type { PersistentSet } from "../persistent/persistent-set.ts";
import type { Persistent } from "../persistent/persistent.ts";
import type { PlanStep } from "../storage/storage.ts";

/** What one reference-holding property yields: collections and arrays give their items. */
type ItemOf<V> =
  V extends PersistentList<infer X>
    ? X
    : V extends PersistentSet<infer X>
      ? X
      : V extends PersistentMap<unknown, infer X>
        ? X
        : // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the key type is irrelevant here
          V extends BTree<any, infer X>
          ? X
          : V extends ReadonlyArray<infer X>
            ? X
            : V;

/** The element type a group gets by following property `K` of `T`. */
export type Followed<T, K extends keyof T> = Extract<NonNullable<ItemOf<NonNullable<T[K]>>>, Persistent>;

/** Property names of `T` that can be followed (data properties, not methods). */
export type FollowableKeys<T> = {
  [K in keyof T & string]: T[K] extends (...args: never[]) => unknown ? never : K;
}[keyof T & string];

/** @internal What a plan needs from its connection. */
export interface PlanHost {
  /**
   * Evaluate the steps in one storage call; the objects of each group, in order.
   * `starts[i]` holds the objects of a `from` step (new ones included).
   */
  realizePlan(steps: PlanStep[], labels: string[], starts: Array<Persistent[] | null>): Promise<Persistent[][]>;
  oidForPlan(obj: Persistent): number | null;
}

export class Group<T extends Persistent = Persistent> implements Iterable<T> {
  /** @internal */
  readonly index: number;
  /** How the group was declared, for messages: `from(3 objects).follow("reporter")`. */
  readonly label: string;
  readonly #plan: Plan;
  #members: T[] | null = null;

  /** @internal Use plan.from() and group.follow(). */
  constructor(plan: Plan, index: number, label: string) {
    this.#plan = plan;
    this.index = index;
    this.label = label;
  }

  /** The objects the members reference through `prop` (fanning out over collections). */
  follow<K extends FollowableKeys<T>>(prop: K): Group<Followed<T, K>> {
    if (typeof prop !== "string" || prop.length === 0) throw new TypeError(`follow() expects a property name, got ${String(prop)}`);
    return this.#plan.add({ follow: this.index, prop }, `${this.label}.follow(${JSON.stringify(prop)})`) as Group<Followed<T, K>>;
  }

  /** The members of this group and of `others` (each object once). */
  union<U extends Persistent>(...others: Array<Group<U>>): Group<T | U> {
    for (const g of others) {
      if (!(g instanceof Group) || g.#plan !== this.#plan) throw new TypeError("union() expects groups of the same plan");
    }
    const label = `${this.label}.union(${others.map((g) => g.label).join(", ")})`;
    return this.#plan.add({ union: [this.index, ...others.map((g) => g.index)] }, label) as Group<T | U>;
  }

  /** @internal */
  settle(members: T[]): void {
    this.#members = members;
  }

  #realized(): T[] {
    if (this.#members === null) {
      throw new TransactionError(`the group ${this.label} is not realized yet: call await plan.realize() before iterating it`, "not-realized");
    }
    return this.#members;
  }

  /** Number of members (after realize). */
  get size(): number {
    return this.#realized().length;
  }

  toArray(): T[] {
    return [...this.#realized()];
  }

  [Symbol.iterator](): Iterator<T> {
    return this.#realized()[Symbol.iterator]();
  }
}

export class Plan {
  readonly #host: PlanHost;
  readonly #steps: PlanStep[] = [];
  readonly #groups: Group[] = [];
  readonly #starts: Array<Persistent[] | null> = [];
  #realized = false;

  /** @internal Use conn.plan(). */
  constructor(host: PlanHost) {
    this.#host = host;
  }

  /** A group of these objects (persistent objects of the plan's connection). */
  from<T extends Persistent>(objects: Iterable<T>): Group<T> {
    if (objects === null || typeof (objects as Iterable<T>)?.[Symbol.iterator] !== "function") {
      throw new TypeError("plan.from() expects an iterable of persistent objects");
    }
    const list = [...objects];
    const oids: number[] = [];
    for (const o of list) {
      const oid = this.#host.oidForPlan(o);
      if (oid !== null) oids.push(oid);
    }
    const g = this.add({ from: oids }, `from(${list.length} object${list.length === 1 ? "" : "s"})`) as Group<T>;
    this.#starts[g.index] = list;
    return g;
  }

  /** @internal */
  add(step: PlanStep, label: string): Group {
    if (this.#realized) throw new TransactionError("this plan was realized already: make a new one with conn.plan()", "realized");
    const g = new Group(this, this.#steps.length, label);
    this.#steps.push(step);
    this.#groups.push(g);
    this.#starts.push(null);
    return g;
  }

  /** Load every group (one round trip to a remote storage); then iterate them. */
  async realize(): Promise<void> {
    if (this.#realized) throw new TransactionError("this plan was realized already: make a new one with conn.plan()", "realized");
    if (this.#steps.length === 0) throw new TypeError("realize(): the plan has no groups (start with plan.from(objects))");
    this.#realized = true;
    const members = await this.#host.realizePlan(this.#steps, this.#groups.map((g) => g.label), this.#starts);
    this.#groups.forEach((g, i) => g.settle(members[i]!));
  }
}
