/**
 * Loading plans (SPEC §3): groups declared with plan.from / follow / union, realized in one
 * round trip, then touched with no I/O; fan-out through collections; the short form
 * conn.prefetch(objects, paths); the amberdb/testing helpers; errors; strict mode; and, on
 * the storage server, what is sent and which snapshot is read. Scenarios run on every
 * storage of `storages` unless noted.
 */
import { Worker } from "node:worker_threads";
import { afterAll, describe, expect, it } from "vitest";
import {
  BTree,
  type Connection,
  type DB,
  Group,
  NotLoadedError,
  ObjectNotFoundError,
  Persistent,
  PersistentList,
  PersistentMap,
  PersistentSet,
  type Plan,
  TransactionError,
  oidOf,
  persistent,
  stateOf,
} from "../src/index.ts";
import { countRoundTrips, expectConstantRoundTrips, expectRoundTrips } from "amberdb/testing"; // the package entry, as applications import it
import { writeEnvelope } from "../src/codec/record.ts";
import { encodeState } from "../src/codec/state.ts";
import { cleanupDirs, fresh, openDB, serverUrl, storages } from "./helpers.ts";

@persistent("plans.Branding")
class Branding extends Persistent {
  icon = "";
}

@persistent("plans.Person")
class Person extends Persistent {
  name = "";
  age = 0;
  branding: Branding | null = null;
  describe(): string {
    return `${this.name}(${this.branding?.icon ?? "-"})`;
  }
}

@persistent("plans.Bug")
class Bug extends Persistent {
  id = 0;
  title = "";
  reporter: Person | null = null;
  assignee: Person | null = null;
  subscribers: Person[] = [];
}

@persistent("plans.Team")
class Team extends Persistent {
  name = "";
  list = new PersistentList<Person>();
  set = new PersistentSet<Person>();
  map = new PersistentMap<string, Person>();
  tree = new BTree<number, Person>({ bucketSize: 4, nodeSize: 4 });
  array: Person[] = [];
  bugs = new PersistentList<Bug>();
  byPerson = new PersistentMap<Person, Bug>();
}

afterAll(cleanupDirs);

function person(name: string, icon: string): Person {
  const p = new Person();
  p.name = name;
  p.branding = Object.assign(new Branding(), { icon });
  return p;
}

function bug(id: number, reporter: Person | null, assignee: Person | null, subscribers: Person[]): Bug {
  return Object.assign(new Bug(), { id, title: `bug ${id}`, reporter, assignee, subscribers });
}

/**
 * The bug page: 4 bugs, 5 people (p0..p4, icons i0..i4), shared:
 *   bug 0: reporter p0, assignee p1, subscribers [p2, p0]
 *   bug 1: reporter p0, no assignee, subscribers [p3]
 *   bug 2: reporter p3, assignee p1, subscribers []
 *   bug 3: reporter p4, assignee p2, subscribers [p4, p1, p2]
 */
async function setupPage(url: string, options = {}): Promise<DB> {
  const db = await openDB(url, options);
  await db.transact((root) => {
    const p = [0, 1, 2, 3, 4].map((i) => person(`p${i}`, `i${i}`));
    root.set("page", [
      bug(0, p[0]!, p[1]!, [p[2]!, p[0]!]),
      bug(1, p[0]!, null, [p[3]!]),
      bug(2, p[3]!, p[1]!, []),
      bug(3, p[4]!, p[2]!, [p[4]!, p[1]!, p[2]!]),
    ]);
  });
  return db;
}

const EXPECTED_PAGE = ["0 p0(i0) p1(i1) [p2(i2),p0(i0)]", "1 p0(i0) - [p3(i3)]", "2 p3(i3) p1(i1) []", "3 p4(i4) p2(i2) [p4(i4),p1(i1),p2(i2)]"].join("\n");

function render(bugs: Iterable<Bug>): string {
  const out: string[] = [];
  for (const b of bugs) {
    out.push(`${b.id} ${b.reporter!.describe()} ${b.assignee?.describe() ?? "-"} [${b.subscribers.map((s) => s.describe()).join(",")}]`);
  }
  return out.join("\n");
}

/** The page's bugs as ghosts (loads the root only). */
const pageOf = (conn: Connection): Bug[] => conn.root().get("page") as Bug[];

/** The plan of the bug page: bugs -> reporter, assignee, subscribers -> branding. */
function pagePlan(conn: Connection, page: Bug[]) {
  const plan = conn.plan();
  const bugs = plan.from(page);
  const reporters = bugs.follow("reporter");
  const assignees = bugs.follow("assignee");
  const subscribers = bugs.follow("subscribers");
  const people = reporters.union(assignees, subscribers);
  const brandings = people.follow("branding");
  return { plan, bugs, reporters, assignees, subscribers, people, brandings };
}

const names = (g: Iterable<Person>): string[] => [...g].map((p) => p.name);

async function expectRejects(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected the promise to reject");
}

function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected the call to throw");
}

/**
 * A bug whose reporter is an oid that does not exist (written through db.storage, past the
 * connection's checks), stored under root["dangler"]. Returns its oid and the missing one.
 */
async function addDanglingBug(db: DB): Promise<{ danglerOid: number; missingOid: number }> {
  const [missingOid, danglerOid] = await db.storage.newOids(2);
  const ghost = new Person();
  const enc = encodeState("plans.Bug", { id: 99, title: "dangler", reporter: ghost, assignee: null, subscribers: [] }, () => {});
  const data = writeEnvelope({
    className: "plans.Bug",
    classVersion: 0,
    refOids: enc.refs.map(() => missingOid!),
    refPaths: enc.refPaths,
    refClasses: enc.refs.map(() => "plans.Person"),
    state: enc.state,
    shared: enc.shared,
  });
  await db.storage.finish({ records: [{ oid: danglerOid!, serial: 0, data }], readCurrent: [] });
  await db.transact((root, conn) => root.set("dangler", conn.get(danglerOid!)));
  return { danglerOid: danglerOid!, missingOid: missingOid! };
}

for (const { name, url } of storages) {
  describe(`loading plans on '${name}'`, () => {
    // --- 1. the bug page -------------------------------------------------------------------

    it("the bug page: realize is one round trip, rendering afterwards touches no storage", async () => {
      const db = await setupPage(url());
      try {
        const conn = fresh(db);
        const page = pageOf(conn);
        expect(page.every((b) => stateOf(b) === "ghost")).toBe(true);
        const g = pagePlan(conn, page);
        await expectRoundTrips(1, () => g.plan.realize());
        expect(conn.stats.loads).toBe(1 + 4 + 5 + 5); // root, bugs, people, brandings
        const before = { ...conn.stats };
        expect(render(g.bugs)).toBe(EXPECTED_PAGE);
        for (const b of g.brandings) expect(b.icon).toMatch(/^i\d$/);
        expect(conn.stats.roundTrips).toBe(before.roundTrips);
        expect(conn.stats.loads).toBe(before.loads);
        expect(conn.stats.bytesRead).toBe(before.bytesRead);
        await conn.close();
      } finally {
        await db.close();
      }
    });

    it("groups iterate in the order objects were first reached, each object once", async () => {
      const db = await setupPage(url());
      try {
        const conn = fresh(db);
        const page = pageOf(conn);
        const g = pagePlan(conn, page);
        await g.plan.realize();
        expect([...g.bugs]).toEqual(page);
        expect(g.bugs.toArray().map((b) => b.id)).toEqual([0, 1, 2, 3]);
        // p0 reports two bugs: once in the group.
        expect(names(g.reporters)).toEqual(["p0", "p3", "p4"]);
        expect(names(g.assignees)).toEqual(["p1", "p2"]); // bug 1's null assignee is skipped
        expect(names(g.subscribers)).toEqual(["p2", "p0", "p3", "p4", "p1"]);
        expect(names(g.people)).toEqual(["p0", "p3", "p4", "p1", "p2"]);
        expect(g.people.size).toBe(5);
        expect([...g.brandings].map((b) => b.icon)).toEqual(["i0", "i3", "i4", "i1", "i2"]);
        // Members are the connection's objects (identity), not copies.
        expect(g.reporters.toArray()[0]).toBe(page[0]!.reporter);
        expect(g.brandings.toArray()[1]).toBe(page[2]!.reporter!.branding);
        // Iterating again gives the same order; toArray is a copy.
        expect(names(g.people)).toEqual(["p0", "p3", "p4", "p1", "p2"]);
        g.people.toArray().pop();
        expect(g.people.size).toBe(5);

        // The same object given twice to from(): once in the group.
        const plan2 = conn.plan();
        const twice = plan2.from([page[1]!, page[0]!, page[1]!]);
        const rep2 = twice.follow("reporter");
        await plan2.realize();
        expect(twice.toArray().map((b) => b.id)).toEqual([1, 0]);
        expect(names(rep2)).toEqual(["p0"]);
        await conn.close();
      } finally {
        await db.close();
      }
    });

    // --- 2. fan-out through collections -----------------------------------------------------

    it("fans out through PersistentList, PersistentSet, PersistentMap values, a BTree and a plain array", async () => {
      const db = await openDB(url());
      const TREE = 2000;
      try {
        await db.transact((root) => {
          const team = new Team();
          team.name = "t";
          const ps = Array.from({ length: 12 }, (_, i) => person(`m${i}`, `mi${i}`));
          team.list.push(ps[3]!, ps[1]!, ps[3]!, ps[2]!); // a repeated item: once in the group
          for (const i of [5, 4, 6]) team.set.add(ps[i]!);
          team.map.set("x", ps[8]!);
          team.map.set("y", ps[7]!);
          team.map.set("z", ps[8]!);
          team.array = [ps[10]!, ps[9]!, ps[10]!, ps[11]!];
          // Inserted in a scrambled order; iterated in key order.
          for (let k = 0; k < TREE; k++) {
            const key = (k * 7919) % TREE;
            team.tree.set(key, Object.assign(new Person(), { name: `tree${key}`, age: key }));
          }
          root.set("team", team);
        });
        const conn = fresh(db);
        const team = conn.root().get("team") as Team;
        const plan = conn.plan();
        const teams = plan.from([team]);
        const list = teams.follow("list");
        const set = teams.follow("set");
        const map = teams.follow("map");
        const tree: Group<Person> = teams.follow("tree");
        const array = teams.follow("array");
        const listBrandings = list.follow("branding");
        const counted = await countRoundTrips(() => plan.realize());
        expect(counted.roundTrips).toBe(1);
        // Several buckets and interior nodes were walked (and loaded: iterating needs them).
        expect(counted.loadsByClass["amber.BTreeBucket"]).toBeGreaterThanOrEqual(TREE / 4);
        expect(counted.loadsByClass["amber.BTreeNode"]).toBeGreaterThan(1);
        expect(counted.loadsByClass["plans.Team"]).toBe(1);

        expect(names(list)).toEqual(["m3", "m1", "m2"]);
        expect(names(set)).toEqual(["m5", "m4", "m6"]);
        expect(names(map)).toEqual(["m8", "m7"]);
        expect(names(array)).toEqual(["m10", "m9", "m11"]);
        expect([...listBrandings].map((b) => b.icon)).toEqual(["mi3", "mi1", "mi2"]);
        expect(tree.size).toBe(TREE);
        expect(tree.toArray().map((p) => p.age)).toEqual(Array.from({ length: TREE }, (_, i) => i));

        // Everything is in memory: the collections and their items, with no I/O.
        const before = { ...conn.stats };
        expect(team.list.length).toBe(4);
        expect([...team.list].map((p) => p.describe())).toEqual(["m3(mi3)", "m1(mi1)", "m3(mi3)", "m2(mi2)"]);
        expect([...team.set].map((p) => p.name)).toEqual(["m5", "m4", "m6"]);
        expect([...team.map.values()].map((p) => p.name)).toEqual(["m8", "m7", "m8"]);
        expect(team.array.map((p) => p.name)).toEqual(["m10", "m9", "m10", "m11"]);
        let sum = 0;
        let n = 0;
        for (const [k, p] of team.tree) {
          expect(p.name).toBe(`tree${k}`);
          sum += p.age;
          n++;
        }
        expect(n).toBe(TREE);
        expect(sum).toBe((TREE * (TREE - 1)) / 2);
        expect(team.tree.get(1234)!.age).toBe(1234);
        expect(conn.stats.roundTrips).toBe(before.roundTrips);
        expect(conn.stats.loads).toBe(before.loads);
        await conn.close();
      } finally {
        await db.close();
      }
    });

    it("nested: through a PersistentList of bugs, then properties of the items", async () => {
      const db = await openDB(url());
      try {
        await db.transact((root) => {
          const team = new Team();
          const a = person("a", "ia");
          const b = person("b", "ib");
          team.bugs.push(bug(1, a, b, [b]), bug(2, b, null, [a]), bug(3, a, a, []));
          root.set("team", team);
        });
        const conn = fresh(db);
        const team = conn.root().get("team") as Team;
        const plan = conn.plan();
        const bugs = plan.from([team]).follow("bugs");
        const reporters = bugs.follow("reporter");
        const subs = bugs.follow("subscribers");
        const brandings = reporters.union(subs).follow("branding");
        await expectRoundTrips(1, () => plan.realize());
        expect(bugs.toArray().map((x) => x.id)).toEqual([1, 2, 3]);
        expect(names(reporters)).toEqual(["a", "b"]);
        expect(names(subs)).toEqual(["b", "a"]);
        expect([...brandings].map((x) => x.icon)).toEqual(["ia", "ib"]);
        await expectRoundTrips(0, () => {
          expect(render(team.bugs)).toBe(["1 a(ia) b(ib) [b(ib)]", "2 b(ib) - [a(ia)]", "3 a(ia) a(ia) []"].join("\n"));
        });
        await conn.close();
      } finally {
        await db.close();
      }
    });

    // Regression test: a bug this test found is fixed (see the commit that added it).
    it("a PersistentMap with persistent keys: only its values are followed", async () => {
      const db = await openDB(url());
      try {
        await db.transact((root) => {
          const team = new Team();
          const a = person("a", "ia");
          const b = person("b", "ib");
          team.byPerson.set(a, bug(1, a, null, []));
          team.byPerson.set(b, bug(2, b, null, []));
          root.set("team", team);
        });
        const conn = fresh(db);
        const team = conn.root().get("team") as Team;
        const plan = conn.plan();
        const bugs = plan.from([team]).follow("byPerson");
        await plan.realize();
        expect(bugs.toArray().map((x) => x.constructor.name)).toEqual(["Bug", "Bug"]);
        expect(bugs.toArray().map((x) => x.id)).toEqual([1, 2]);
        await conn.close();
      } finally {
        await db.close();
      }
    });

    // --- 3. constant round trips -----------------------------------------------------------

    it("expectConstantRoundTrips: a page of 10, 50 or 200 bugs costs the same with a plan; the naive render fails it", async () => {
      // No client cache: it would answer the naive render's loads from the planned runs'
      // records (no round trips), and the naive render would no longer grow.
      const db = await openDB(url(), { clientCacheBytes: 0 });
      const opened: Connection[] = [];
      try {
        // 200 bugs, each with its own reporter, assignee and subscriber (and the reporter
        // subscribed too), each person with a branding: 7 objects per bug.
        await db.transact((root) => {
          const bugs: Bug[] = [];
          for (let i = 0; i < 200; i++) {
            const r = person(`r${i}`, `ri${i}`);
            bugs.push(bug(i, r, person(`a${i}`, `ai${i}`), [person(`s${i}`, `si${i}`), r]));
          }
          root.set("bugs", bugs);
        });
        const cold = (size: number) => {
          const conn = fresh(db); // a new connection: empty cache
          opened.push(conn);
          return { conn, page: (conn.root().get("bugs") as Bug[]).slice(0, size) };
        };
        const planned = await expectConstantRoundTrips(
          cold,
          async ({ conn, page }) => {
            const { plan, bugs } = pagePlan(conn, page);
            await plan.realize();
            return render(bugs);
          },
          [10, 50, 200],
        );
        expect(planned).toBe(1);

        const err = await expectRejects(expectConstantRoundTrips(cold, ({ page }) => render(page), [10, 50, 200]));
        expect(err.message).toContain("round trips grow with the data:");
        expect(err.message).toContain("size 10: 70 round trips, 70 loads (");
        expect(err.message).toContain("size 50: 350 round trips, 350 loads (");
        expect(err.message).toContain("size 200: 1400 round trips, 1400 loads (");
        expect(err.message).toMatch(/size 10: [^\n]*plans\.Person 30/);
        expect(err.message).toMatch(/size 10: [^\n]*plans\.Branding 30/);
        expect(err.message).toMatch(/size 10: [^\n]*plans\.Bug 10/);
        expect(err.message).toContain("extra loads at size 200 against size 10: ");
        const extra = err.message.split("extra loads at size 200 against size 10: ")[1]!;
        expect(extra).toContain("plans.Bug +190");
        expect(extra).toContain("plans.Person +570");
        expect(extra).toContain("plans.Branding +570");
      } finally {
        for (const c of opened) await c.close();
        await db.close();
      }
    });

    it("expectRoundTrips: its failure shows expected and got, and the loads by class", async () => {
      const db = await setupPage(url());
      try {
        const conn = fresh(db);
        const page = pageOf(conn);
        // Bug 2 naively: the bug, p3, i3, p1, i1.
        const err = await expectRejects(expectRoundTrips(1, () => render([page[2]!])));
        expect(err.message).toMatch(/^expected 1 round trip, got 5 \(5 objects loaded: /);
        expect(err.message).toContain("plans.Person 2");
        expect(err.message).toContain("plans.Branding 2");
        expect(err.message).toContain("plans.Bug 1");
        // And the plural form, on a count that is wrong the other way.
        const g = pagePlan(conn, page);
        const err2 = await expectRejects(expectRoundTrips(2, () => g.plan.realize()));
        expect(err2.message).toMatch(/^expected 2 round trips, got 1 \(/);
        await conn.close();
      } finally {
        await db.close();
      }
    });

    // --- 4. prefetch(objects, paths) --------------------------------------------------------

    it("prefetch(objects, paths): one round trip, then no I/O along those paths", async () => {
      const db = await setupPage(url());
      try {
        const conn = fresh(db);
        const page = pageOf(conn);
        const loaded = await expectRoundTrips(1, () => conn.prefetch(page, ["reporter.branding", "subscribers.branding", "assignee"]));
        // 4 bugs, people p0, p3, p4 (reporters), p2, p1 (subscribers); brandings of those
        // five (every assignee is a subscriber of some bug here).
        expect(loaded).toBe(4 + 5 + 5);
        await expectRoundTrips(0, () => {
          const seen = page.map((b) => [
            b.reporter!.branding!.icon,
            b.subscribers.map((s) => s.branding!.icon).join(","),
            b.assignee?.name ?? "-",
          ]);
          expect(seen).toEqual([
            ["i0", "i2,i0", "p1"],
            ["i0", "i3", "-"],
            ["i3", "", "p1"],
            ["i4", "i4,i1,i2", "p2"],
          ]);
        });
        // A second call on loaded objects: still one round trip, nothing new loaded.
        expect(await expectRoundTrips(1, () => conn.prefetch(page, ["reporter.branding"]))).toBe(0);
        await conn.close();
      } finally {
        await db.close();
      }
    });

    it("prefetch(objects, paths): an assignee's branding is not on the paths (strict mode shows it)", async () => {
      const db = await openDB(url());
      try {
        await db.transact((root) => {
          root.set("page", [bug(0, person("r", "ir"), person("a", "ia"), [person("s", "is")])]);
        });
        const conn = fresh(db);
        const page = pageOf(conn);
        expect(await conn.prefetch(page, ["reporter.branding", "subscribers.branding", "assignee"])).toBe(6);
        conn.strict = true;
        expect(page[0]!.assignee!.name).toBe("a");
        expect(page[0]!.reporter!.branding!.icon).toBe("ir");
        expect(() => page[0]!.assignee!.branding!.icon).toThrow(NotLoadedError);
        await expect(conn.prefetch(page, ["reporter..branding"])).rejects.toThrow(TypeError);
        await expect(conn.prefetch(page, [""])).rejects.toThrow(TypeError);
        await conn.close();
      } finally {
        await db.close();
      }
    });

    // --- 5. errors --------------------------------------------------------------------------

    it("a group cannot be read before realize; a plan realizes once and takes no steps afterwards", async () => {
      const db = await setupPage(url());
      try {
        const conn = fresh(db);
        const page = pageOf(conn);
        const plan = conn.plan();
        const bugs = plan.from(page);
        const reporters = bugs.follow("reporter");
        const label = 'from(4 objects).follow("reporter")';
        expect(reporters.label).toBe(label);
        for (const read of [() => [...reporters], () => reporters.size, () => reporters.toArray(), () => bugs.size]) {
          const e = thrown(read);
          expect(e).toBeInstanceOf(TransactionError);
          expect(e.message).toMatch(/is not realized yet/);
        }
        expect(thrown(() => [...reporters]).message).toContain(`the group ${label} is not realized yet`);
        expect(thrown(() => bugs.size).message).toContain("the group from(4 objects) is not realized yet");
        // Nothing was loaded by the failed reads.
        expect(page.every((b) => stateOf(b) === "ghost")).toBe(true);

        await plan.realize();
        expect(reporters.size).toBe(3);
        const again = await expectRejects(plan.realize());
        expect(again).toBeInstanceOf(TransactionError);
        expect(again.message).toMatch(/realized already/);
        expect(() => bugs.follow("assignee")).toThrow(/realized already/);
        expect(() => bugs.union(reporters as unknown as Group<Bug>)).toThrow(/realized already/);
        expect(() => plan.from(page)).toThrow(/realized already/);
        expect(reporters.size).toBe(3); // still readable

        // An empty plan, an empty property name, a union across plans.
        await expect(conn.plan().realize()).rejects.toThrow(TypeError);
        expect(() => conn.plan().from(page).follow("" as never)).toThrow(TypeError);
        const other = conn.plan().from(page);
        expect(() => conn.plan().from(page).union(other)).toThrow(TypeError);
        expect(() => conn.plan().from(42 as unknown as Bug[])).toThrow(TypeError);
        await conn.close();
      } finally {
        await db.close();
      }
    });

    it("following a property that holds a string or a number: TypeError naming class#oid, property and plan step", async () => {
      const db = await setupPage(url());
      try {
        const conn = fresh(db);
        const page = pageOf(conn);
        const p1 = conn.plan();
        p1.from(page).follow("title");
        const e1 = await expectRejects(p1.realize());
        expect(e1).toBeInstanceOf(TypeError);
        expect(e1.message).toBe(`realize(): plans.Bug#${oidOf(page[0]!)}.title holds a string, not a reference (plan step from(4 objects).follow("title"))`);

        const p2 = conn.plan();
        p2.from(page).follow("reporter").follow("age");
        const e2 = await expectRejects(p2.realize());
        expect(e2).toBeInstanceOf(TypeError);
        expect(e2.message).toBe(
          `realize(): plans.Person#${oidOf(page[0]!.reporter!)}.age holds a number, not a reference ` +
            `(plan step from(4 objects).follow("reporter").follow("age"))`,
        );
        await conn.close();
      } finally {
        await db.close();
      }
    });

    it("a property missing on some members of a mixed group: TypeError naming the object; null references are fine", async () => {
      const db = await setupPage(url());
      try {
        const conn = fresh(db);
        const page = pageOf(conn);
        const plan = conn.plan();
        const bugs = plan.from(page);
        const mixed = bugs.union(bugs.follow("reporter").follow("branding"));
        (mixed as unknown as Group<Bug>).follow("reporter");
        const e = await expectRejects(plan.realize());
        expect(e).toBeInstanceOf(TypeError);
        const firstBranding = page[0]!.reporter!.branding!; // loaded by the plan
        expect(e.message).toMatch(new RegExp(`^realize\\(\\): plans\\.Branding#${oidOf(firstBranding)} has no property "reporter" \\(plan step `));
        expect(e.message).toContain('.union(from(4 objects).follow("reporter").follow("branding")).follow("reporter"))');

        // Null references (bug 1 has no assignee) are skipped.
        const ok = conn.plan();
        const assignees = ok.from([page[1]!]).follow("assignee");
        const brand = assignees.follow("branding");
        await ok.realize();
        expect(assignees.size).toBe(0);
        expect(brand.size).toBe(0);
        await conn.close();
      } finally {
        await db.close();
      }
    });

    it("a dangling reference: realize throws ObjectNotFoundError naming the path", async () => {
      const db = await setupPage(url());
      try {
        const { danglerOid, missingOid } = await addDanglingBug(db);
        const conn = fresh(db);
        const d = conn.root().get("dangler") as Bug;
        const plan = conn.plan();
        plan.from([d]).follow("reporter");
        const e = await expectRejects(plan.realize());
        expect(e).toBeInstanceOf(ObjectNotFoundError);
        expect(e.message).toContain(`object ${missingOid} does not exist`);
        expect(e.message).toContain(`reached as plans.Bug#${danglerOid}.reporter`);
        // A plan that does not go through the dangling reference is fine.
        const ok = conn.plan();
        const g = ok.from([d]);
        await ok.realize();
        expect(g.toArray()[0]!.title).toBe("dangler");
        await conn.close();
      } finally {
        await db.close();
      }
    });

    it("plan.from with objects of another connection throws; so does realize on a closed connection", async () => {
      const db = await setupPage(url());
      try {
        const conn = fresh(db);
        const other = fresh(db);
        const foreign = pageOf(other);
        const e = thrown(() => conn.plan().from(foreign));
        expect(e).toBeInstanceOf(TransactionError);
        expect((e as TransactionError).code).toBe("foreign-object");
        expect(e.message).toContain(`plans.Bug#${oidOf(foreign[0]!)} belongs to another connection`);
        expect(() => conn.plan().from([{} as Persistent])).toThrow(TypeError);
        await expect(conn.prefetch(foreign, ["reporter"])).rejects.toThrow(TransactionError);

        const page = pageOf(conn);
        const plan = conn.plan();
        plan.from(page).follow("reporter");
        await conn.close();
        await expect(plan.realize()).rejects.toMatchObject({ code: "closed" });
        expect(() => conn.plan()).toThrow(TransactionError);
        await other.close();
      } finally {
        await db.close();
      }
    });

    it("a plan whose transaction ended (abort) while realize was in flight rejects with TransactionError", async () => {
      const db = await setupPage(url());
      try {
        const conn = fresh(db);
        const page = pageOf(conn);
        const { plan, bugs } = pagePlan(conn, page);
        const pending = plan.realize();
        conn.abort();
        const e = await expectRejects(pending);
        expect(e).toBeInstanceOf(TransactionError);
        expect((e as TransactionError).code).toBe("in-flight");
        expect(() => bugs.size).toThrow(/not realized/);
        // A new plan in the new transaction works.
        const g = pagePlan(conn, pageOf(conn));
        await g.plan.realize();
        expect(render(g.bugs)).toBe(EXPECTED_PAGE);
        await conn.close();
      } finally {
        await db.close();
      }
    });

    // --- beyond the brief: the cache, and this transaction's own changes -------------------

    // Regression test: a bug this test found is fixed (see the commit that added it).
    it("a plan larger than the cache: realize is still one round trip, and works in strict mode", async () => {
      const db = await openDB(url());
      try {
        await db.transact((root) => {
          root.set("many", Array.from({ length: 200 }, (_, i) => bug(i, person(`r${i}`, `ri${i}`), null, [])));
        });
        for (const strict of [true, false]) {
          const conn = db.open({ cacheSize: 50 });
          const many = conn.root().get("many") as Bug[];
          conn.strict = strict;
          const plan = conn.plan();
          const reporters = plan.from(many).follow("reporter");
          reporters.follow("branding");
          const counted = await countRoundTrips(() => plan.realize());
          expect(counted.roundTrips).toBe(1);
          expect(reporters.size).toBe(200);
          await conn.close();
        }
      } finally {
        await db.close();
      }
    });

    // Regression test: a bug this test found is fixed (see the commit that added it).
    it("a reference changed in this transaction (not committed) is followed as changed", async () => {
      const db = await setupPage(url());
      try {
        const conn = fresh(db);
        const page = pageOf(conn);
        await conn.prefetch([page[1]!]);
        const p4 = page[3]!.reporter!; // (loads bug 3 on touch); p4 itself stays a ghost
        page[1]!.reporter = p4; // was p0
        expect(stateOf(p4)).toBe("ghost");
        const plan = conn.plan();
        const reporters = plan.from([page[1]!]).follow("reporter");
        await plan.realize();
        expect(reporters.toArray()).toEqual([p4]);
        conn.strict = true;
        expect(page[1]!.reporter!.name).toBe("p4");
        await conn.close();
      } finally {
        await db.close();
      }
    });

    // Regression test: a bug this test found is fixed (see the commit that added it).
    it("a new object in plan.from() is a member and its references are followed", async () => {
      const db = await setupPage(url());
      try {
        const conn = fresh(db);
        const page = pageOf(conn);
        await conn.prefetch([page[0]!]);
        const p0 = page[0]!.reporter!;
        const draft = bug(9, p0, null, []);
        conn.root().set("draft", draft);
        const plan = conn.plan();
        const drafts = plan.from([draft]);
        const reporters = drafts.follow("reporter");
        await plan.realize();
        expect(drafts.toArray()).toEqual([draft]);
        expect(reporters.toArray()).toEqual([p0]);
        expect(stateOf(p0)).toBe("saved");
        await conn.close();
      } finally {
        await db.close();
      }
    });

    // --- 6. strict mode ---------------------------------------------------------------------

    it("strict mode: everything in the plan can be touched; one step further names the plan step that would load it", async () => {
      const db = await setupPage(url(), { strict: true });
      try {
        const conn = db.open({ cacheSize: 10_000, strict: true });
        expect(conn.strict).toBe(true);
        await conn.prefetch([conn.root()]);
        const page = pageOf(conn);
        const plan = conn.plan();
        const bugs = plan.from(page);
        const people = bugs.follow("reporter").union(bugs.follow("assignee"), bugs.follow("subscribers"));
        await plan.realize();
        const before = { ...conn.stats };
        const seen = [...bugs].map((b) => `${b.id} ${b.title} ${b.reporter!.name} ${b.assignee?.name ?? "-"} ${b.subscribers.map((s) => s.name).join(",")}`);
        expect(seen).toEqual(["0 bug 0 p0 p1 p2,p0", "1 bug 1 p0 - p3", "2 bug 2 p3 p1 ", "3 bug 3 p4 p2 p4,p1,p2"]);
        expect(names(people)).toEqual(["p0", "p3", "p4", "p1", "p2"]);
        expect(conn.stats.loads).toBe(before.loads);

        const p0 = page[0]!.reporter!;
        const branding = p0.branding!; // a ghost: the reference is in memory, its state is not
        expect(stateOf(branding)).toBe("ghost");
        const e = thrown(() => branding.icon);
        expect(e).toBeInstanceOf(NotLoadedError);
        const nl = e as NotLoadedError;
        expect(nl.className).toBe("plans.Branding");
        expect(nl.oid).toBe(oidOf(branding));
        expect(nl.message).toContain(`plans.Branding#${oidOf(branding)} (reached as amber.PersistentMap#0.data.reporter.branding) is not loaded`);
        expect(nl.message).toContain(
          'the plan step from(4 objects).follow("reporter").union(from(4 objects).follow("assignee"), ' +
            'from(4 objects).follow("subscribers")).follow("branding") would have loaded it',
        );
        // Adding that step loads it.
        const more = conn.plan();
        more.from(people).follow("branding");
        await more.realize();
        expect(branding.icon).toBe("i0");
        await conn.close();
      } finally {
        await db.close();
      }
    });

    it("strict mode set on the connection: a realized prefetch path, then one step past it", async () => {
      const db = await setupPage(url());
      try {
        const conn = fresh(db);
        const page = pageOf(conn);
        conn.strict = true;
        await conn.prefetch(page, ["assignee"]);
        const assignee = page[0]!.assignee!;
        expect(assignee.name).toBe("p1");
        const e = thrown(() => assignee.branding!.icon);
        expect(e).toBeInstanceOf(NotLoadedError);
        expect(e.message).toContain(`plans.Branding#${oidOf(assignee.branding!)}`);
        expect(e.message).toContain('.follow("assignee").follow("branding") would have loaded it');
        // A reporter was not on any path: the bug's step is named.
        const e2 = thrown(() => page[0]!.reporter!.name);
        expect(e2).toBeInstanceOf(NotLoadedError);
        expect(e2.message).toContain(`plans.Person#${oidOf(page[0]!.reporter!)}`);
        expect(e2.message).toContain('the plan step from(4 objects).follow("reporter") would have loaded it');
        await conn.close();
      } finally {
        await db.close();
      }
    });
  });
}

// --- 7. server only -------------------------------------------------------------------------------

/**
 * A TCP forwarder in front of the storage server that counts the bytes the server sends.
 * It runs in a worker thread: a synchronous load on the client blocks the main thread, so a
 * forwarder on the main thread's event loop would deadlock it.
 */
const PROXY = `
const { createServer, connect } = require("node:net");
const { parentPort, workerData } = require("node:worker_threads");
const counter = new Int32Array(workerData.counter);
const server = createServer((client) => {
  const upstream = connect(workerData.port, workerData.host);
  upstream.on("data", (d) => Atomics.add(counter, 0, d.length));
  client.pipe(upstream);
  upstream.pipe(client);
  const end = () => { client.destroy(); upstream.destroy(); };
  for (const s of [client, upstream]) { s.on("error", end); s.on("close", end); }
});
server.listen(0, "127.0.0.1", () => parentPort.postMessage(server.address().port));
parentPort.on("message", () => process.exit(0));
`;

async function countingProxy(target: string): Promise<{ url: string; received: () => number; close: () => Promise<void> }> {
  const u = new URL(target.replace(/^amber:/, "http:"));
  const counter = new SharedArrayBuffer(4);
  const worker = new Worker(PROXY, { eval: true, workerData: { host: u.hostname, port: Number(u.port), counter } });
  const port = await new Promise<number>((resolve, reject) => {
    worker.once("message", resolve);
    worker.once("error", reject);
  });
  const count = new Int32Array(counter);
  return {
    url: `amber://127.0.0.1:${port}${u.pathname}`,
    received: () => Atomics.load(count, 0),
    close: async () => {
      await worker.terminate();
    },
  };
}

const onServer = storages.some((s) => s.name === "server");

describe.runIf(onServer)("loading plans on the storage server", () => {
  it("objects the connection already holds are not sent again", async () => {
    const dbUrl = serverUrl();
    const setup = await openDB(dbUrl);
    await setup.transact((root) => {
      const bugs: Bug[] = [];
      for (let i = 0; i < 50; i++) {
        const r = person(`r${i}`, `ri${i}`);
        bugs.push(bug(i, r, person(`a${i}`, `ai${i}`), [person(`s${i}`, `si${i}`), r]));
      }
      root.set("page", bugs);
    });
    await setup.close();
    const proxy = await countingProxy(dbUrl);
    // No client record cache: every record the plan needs comes over the wire.
    const db = await openDB(proxy.url, { clientCacheBytes: 0 });
    try {
      const conn = fresh(db);
      const page = pageOf(conn);
      conn.resetStats();
      let wire = proxy.received();
      await pagePlan(conn, page).plan.realize();
      const first = { wire: proxy.received() - wire, ...conn.stats };
      expect(first.roundTrips).toBe(1);
      expect(first.loads).toBe(50 * 7);
      expect(first.wire).toBeGreaterThanOrEqual(first.bytesRead);

      // The same plan again in the same transaction: nothing new is loaded or sent.
      conn.resetStats();
      wire = proxy.received();
      const g = pagePlan(conn, page);
      await g.plan.realize();
      const second = proxy.received() - wire;
      expect(conn.stats.roundTrips).toBe(1);
      expect(conn.stats.loads).toBe(0);
      expect(conn.stats.bytesRead).toBe(0);
      // The reply holds the group lists, none of the records (whose bytes alone are
      // first.bytesRead; the rest of the first reply is framing and the same group lists).
      expect(second).toBeLessThan(first.wire - first.bytesRead);
      expect(second).toBeLessThan(first.bytesRead / 4);
      expect(g.brandings.size).toBe(150);

      // A plan reaching further than what is held: only the new objects are sent.
      const c2 = fresh(db);
      const page2 = pageOf(c2);
      const pre = c2.plan();
      pre.from(page2).follow("reporter");
      c2.resetStats();
      await pre.realize(); // bugs and reporters held
      const heldBytes = c2.stats.bytesRead;
      expect(c2.stats.loads).toBe(100);
      c2.resetStats();
      wire = proxy.received();
      await pagePlan(c2, page2).plan.realize();
      expect(c2.stats.loads).toBe(50 * 7 - 50 - 50);
      expect(c2.stats.bytesRead).toBe(first.bytesRead - heldBytes);
      expect(proxy.received() - wire).toBeLessThanOrEqual(first.wire - heldBytes);
      await c2.close();
      await conn.close();
    } finally {
      await db.close();
      await proxy.close();
    }
  });

  for (const writer of ["another client", "another connection of the same DB"]) {
    it(`the plan reads the connection's snapshot: a change committed by ${writer} shows only after abort`, async () => {
      const dbUrl = serverUrl();
      const db = await setupPage(dbUrl);
      const otherDb = writer === "another client" ? await openDB(dbUrl) : db;
      try {
        const conn = fresh(db);
        const page = pageOf(conn); // the snapshot is taken; only the root is loaded
        await otherDb.transact((root) => {
          const bugs = root.get("page") as Bug[];
          bugs[0]!.reporter!.name = "renamed";
          bugs[0]!.reporter!.branding!.icon = "new-icon";
          bugs[2]!.subscribers.push(bugs[3]!.reporter!);
        });
        await db.lastTid(); // the invalidations have arrived
        const g = pagePlan(conn, page);
        await g.plan.realize();
        expect(render(g.bugs)).toBe(EXPECTED_PAGE);
        expect(names(g.subscribers)).toEqual(["p2", "p0", "p3", "p4", "p1"]);

        conn.abort();
        const g2 = pagePlan(conn, pageOf(conn));
        await g2.plan.realize();
        await expectRoundTrips(0, () => {
          expect(render(g2.bugs).split("\n")[0]).toBe("0 renamed(new-icon) p1(i1) [p2(i2),renamed(new-icon)]");
          expect(render(g2.bugs).split("\n")[2]).toBe("2 p3(i3) p1(i1) [p4(i4)]");
        });
        await conn.close();
      } finally {
        if (otherDb !== db) await otherDb.close();
        await db.close();
      }
    });
  }
});

// --- 8. typing ----------------------------------------------------------------------------------

describe("typing of plans (checked by tsc)", () => {
  it("follow() is typed by the property and the collection it goes through", async () => {
    const db = await setupPage("memory:");
    try {
      const conn = fresh(db);
      const page = pageOf(conn);
      const plan: Plan = conn.plan();
      const bugs: Group<Bug> = plan.from(page);
      const reporters: Group<Person> = bugs.follow("reporter");
      const subscribers: Group<Person> = bugs.follow("subscribers"); // through an array
      const brandings: Group<Branding> = reporters.union(subscribers).follow("branding");
      const mixed: Group<Bug | Person> = bugs.union(reporters);
      await plan.realize();
      expect(brandings.size).toBe(5);
      expect(mixed.size).toBe(7);

      // Checked on groups of a plan not realized yet (whose groups are empty at run time).
      const unrealized = conn.plan();
      const teams = unrealized.from([new Team()]); // a new object: a member too
      const fromList: Group<Person> = teams.follow("list");
      const fromSet: Group<Person> = teams.follow("set");
      const fromMap: Group<Person> = teams.follow("map");
      // Through a BTree: a group of its values (a regression test: it once typed as the tree).
      const fromTree: Group<Person> = teams.follow("tree");
      const fromArray: Group<Person> = teams.follow("array");
      const fromBugs: Group<Bug> = teams.follow("bugs");
      const byPerson: Group<Bug> = teams.follow("byPerson"); // a map's values
      // @ts-expect-error: Bug has no property "notAProperty"
      fromBugs.follow("notAProperty");
      // @ts-expect-error: methods cannot be followed
      fromList.follow("describe");
      // @ts-expect-error: follow("reporter") gives Group<Person>, not Group<Branding>
      const wrong: Group<Branding> = fromBugs.follow("reporter");
      // @ts-expect-error: a Person has no "reporter" (the group is Group<Person>)
      fromBugs.follow("reporter").follow("reporter");
      expect([fromList, fromSet, fromMap, fromTree, fromArray, byPerson, wrong].every((g) => g instanceof Group)).toBe(true);
      await unrealized.realize();
      expect(teams.size).toBe(1);
      await conn.close();
    } finally {
      await db.close();
    }
  });
});
