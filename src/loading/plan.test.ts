/**
 * Plans against a stand-in host (the connection's side of PlanHost): the steps and labels a
 * plan builds, the objects `from` hands over, the TypeErrors of a wrong declaration, and
 * the TransactionErrors of a group read before realize or a plan used after it. The
 * end-to-end behaviour (one round trip, fan-out, strict mode) is in test/plans.test.ts.
 */
import { describe, expect, expectTypeOf, it } from "vitest";
import { TransactionError } from "../errors.ts";
import { PersistentList } from "../persistent/persistent-list.ts";
import { Persistent } from "../persistent/persistent.ts";
import type { PlanStep } from "../storage/storage.ts";
import { Group, Plan, type PlanHost } from "./plan.ts";

class Person extends Persistent {
  name = "";
}
class Bug extends Persistent {
  title = "";
  reporter: Person | null = null;
  subscribers = new PersistentList<Person>();
  notes: Person[] = [];
  describe(): string {
    return this.title;
  }
}

/** A host that records the plan it is asked to realize and answers `answer`. */
function standIn(oids: Map<Persistent, number>, answer: (steps: PlanStep[]) => Persistent[][] = (s) => s.map(() => [])) {
  const asked: Array<{ steps: PlanStep[]; labels: string[]; starts: Array<Persistent[] | null> }> = [];
  const host: PlanHost = {
    oidForPlan: (obj) => oids.get(obj) ?? null,
    async realizePlan(steps, labels, starts) {
      asked.push({ steps: structuredClone(steps), labels, starts });
      return answer(steps);
    },
  };
  return { host, asked };
}

function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error("did not throw");
}

describe("building a plan", () => {
  it("turns from, follow and union into steps with labels, one group per step", async () => {
    const [a, b, fresh] = [new Bug(), new Bug(), new Bug()];
    const { host, asked } = standIn(new Map([[a, 10], [b, 11]]));
    const plan = new Plan(host);
    const bugs = plan.from([a, b, fresh]);
    const reporters = bugs.follow("reporter");
    const subscribers = bugs.follow("subscribers");
    const people = reporters.union(subscribers);
    expect([bugs.index, reporters.index, subscribers.index, people.index]).toEqual([0, 1, 2, 3]);
    expect(people.label).toBe('from(3 objects).follow("reporter").union(from(3 objects).follow("subscribers"))');
    await plan.realize();
    expect(asked).toHaveLength(1);
    expect(asked[0]!.steps).toEqual([
      { from: [10, 11] }, // a new object has no oid: it is handed over in `starts`
      { follow: 0, prop: "reporter" },
      { follow: 0, prop: "subscribers" },
      { union: [1, 2] },
    ]);
    expect(asked[0]!.labels).toEqual([bugs.label, reporters.label, subscribers.label, people.label]);
    expect(asked[0]!.starts).toEqual([[a, b, fresh], null, null, null]);
  });

  it("labels one object in the singular", () => {
    const plan = new Plan(standIn(new Map()).host);
    expect(plan.from([new Bug()]).label).toBe("from(1 object)");
    expect(plan.from(new Set<Bug>()).label).toBe("from(0 objects)");
  });

  it("refuses a wrong declaration with a TypeError", async () => {
    const plan = new Plan(standIn(new Map()).host);
    const other = new Plan(standIn(new Map()).host);
    const bugs = plan.from([new Bug()]);
    expect(() => plan.from(null as never)).toThrow("plan.from() expects an iterable of persistent objects");
    expect(() => plan.from(42 as never)).toThrow(TypeError);
    expect(() => bugs.follow("" as never)).toThrow("follow() expects a property name, got ");
    expect(() => bugs.follow(Symbol("x") as never)).toThrow(/follow\(\) expects a property name, got Symbol\(x\)/);
    expect(() => bugs.union(other.from([new Bug()]))).toThrow("union() expects groups of the same plan");
    expect(() => bugs.union({} as never)).toThrow(TypeError);
    await expect(new Plan(standIn(new Map()).host).realize()).rejects.toThrow(
      "realize(): the plan has no groups (start with plan.from(objects))",
    );
  });

  it("types follow() by the property and what it goes through", () => {
    const bugs = new Plan(standIn(new Map()).host).from([new Bug()]);
    expectTypeOf(bugs).toEqualTypeOf<Group<Bug>>();
    expectTypeOf(bugs.follow("reporter")).toEqualTypeOf<Group<Person>>();
    expectTypeOf(bugs.follow("subscribers")).toEqualTypeOf<Group<Person>>();
    expectTypeOf(bugs.follow("notes")).toEqualTypeOf<Group<Person>>();
    expectTypeOf(bugs.follow("reporter").union(bugs)).toEqualTypeOf<Group<Person | Bug>>();
    // @ts-expect-error: methods cannot be followed
    bugs.follow("describe");
    // @ts-expect-error: Bug has no such property
    bugs.follow("assignee");
  });
});

describe("realizing a plan", () => {
  it("gives each group its members, in the host's order; toArray is a copy", async () => {
    const [a, b] = [new Bug(), new Bug()];
    const [p, q] = [new Person(), new Person()];
    const plan = new Plan(standIn(new Map([[a, 1], [b, 2]]), () => [[b, a], [q, p]]).host);
    const bugs = plan.from([a, b]);
    const reporters = bugs.follow("reporter");
    await plan.realize();
    expect([...bugs]).toEqual([b, a]);
    expect(bugs.size).toBe(2);
    const copy = reporters.toArray();
    expect(copy).toEqual([q, p]);
    copy.pop();
    expect(reporters.size).toBe(2);
  });

  it("a group read before realize throws TransactionError \"not-realized\" naming it", () => {
    const plan = new Plan(standIn(new Map()).host);
    const reporters = plan.from([new Bug(), new Bug()]).follow("reporter");
    for (const read of [() => [...reporters], () => reporters.size, () => reporters.toArray()]) {
      const e = thrown(read);
      expect(e).toBeInstanceOf(TransactionError);
      expect((e as TransactionError).code).toBe("not-realized");
      expect(e.message).toBe(
        'the group from(2 objects).follow("reporter") is not realized yet: call await plan.realize() before iterating it',
      );
    }
  });

  it("a realized plan takes no more steps and does not realize again: TransactionError \"realized\"", async () => {
    const plan = new Plan(standIn(new Map()).host);
    const bugs = plan.from([new Bug()]);
    await plan.realize();
    const e = thrown(() => bugs.follow("reporter"));
    expect(e).toBeInstanceOf(TransactionError);
    expect((e as TransactionError).code).toBe("realized");
    expect(() => plan.from([])).toThrow(/realized already: make a new one with conn\.plan\(\)/);
    expect(() => bugs.union(bugs)).toThrow(/realized already/);
    await expect(plan.realize()).rejects.toMatchObject({ code: "realized" });
  });

  it("a realize that fails leaves the groups unrealized and the plan spent", async () => {
    const host: PlanHost = {
      oidForPlan: () => 1,
      realizePlan: () => Promise.reject(new Error("storage down")),
    };
    const plan = new Plan(host);
    const bugs = plan.from([new Bug()]);
    await expect(plan.realize()).rejects.toThrow("storage down");
    expect(() => bugs.size).toThrow(/not realized yet/);
    await expect(plan.realize()).rejects.toMatchObject({ code: "realized" });
  });
});
