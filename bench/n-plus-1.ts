/**
 * Workload c (n_plus_1), as BENCH.md describes: 300 Persons with a Branding each, 1,000
 * Bugs (reporter, assignee, 5 distinct subscribers) chosen by a seeded generator, in two
 * BTrees under the root; render bugs 500..519 cold.
 * - naive: no loading hints; every ghost touched is one load.
 * - prefetch: the same page with three `conn.prefetch` calls (bugs, people, brandings).
 * - planned: a loading plan (bugs -> reporter, assignee, subscribers -> branding) realised
 *   in one round trip, then the page rendered. The page's Bug ghosts are found in the
 *   BTree before the timer (plans follow properties; they do not search a tree by key).
 * `tsx bench/n-plus-1.ts --storage memory:|embedded|server [--page 20]`
 */
import { BTree, Persistent, persistent, type Connection } from "../src/index.ts";
import { argValue, labelOf, makeTarget, phase, report, type Phase } from "./lib.ts";

@persistent("bench.Branding")
export class Branding extends Persistent {
  icon = "";
  color = "";
}

@persistent("bench.Person")
export class Person extends Persistent {
  name = "";
  email = "";
  branding: Branding | null = null;
}

@persistent("bench.Bug")
export class Bug extends Persistent {
  id = 0;
  title = "";
  status = "";
  reporter: Person | null = null;
  assignee: Person | null = null;
  subscribers: Person[] = [];
}

const RUNS = Number(argValue("--runs", "3"));
const WARMUP = Number(argValue("--warmup", "1"));
const PAGE = Number(argValue("--page", "20"));
const storage = argValue("--storage", "memory:");
const REPEATS = Number(argValue("--repeats", "10"));

/** mulberry32: a small seeded generator, so every run stores the same data. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function populate(conn: Connection): void {
  const rand = rng(42);
  const people = new BTree<number, Person>();
  const bugs = new BTree<number, Bug>();
  const persons: Person[] = [];
  for (let i = 0; i < 300; i++) {
    const p = new Person();
    p.name = `person ${i}`;
    p.email = `person${i}@example.com`;
    p.branding = Object.assign(new Branding(), { icon: `icon-${i}.png`, color: `#${(i * 4099).toString(16).padStart(6, "0").slice(0, 6)}` });
    persons.push(p);
    people.set(i, p);
  }
  const pick = () => persons[Math.floor(rand() * persons.length)]!;
  for (let i = 0; i < 1000; i++) {
    const b = new Bug();
    b.id = i;
    b.title = `bug number ${i}`;
    b.status = ["New", "Confirmed", "Triaged", "Fix Released"][i % 4]!;
    b.reporter = pick();
    b.assignee = pick();
    const subs = new Set<Person>();
    while (subs.size < 5) subs.add(pick());
    b.subscribers = [...subs];
    bugs.set(i, b);
  }
  conn.root().set("people", people);
  conn.root().set("bugs", bugs);
}

function render(bugs: Bug[]): string {
  const out: string[] = [];
  for (const b of bugs) {
    const subs = b.subscribers.map((p) => `${p.name}(${p.branding!.icon})`).join(",");
    out.push(`${b.id} ${b.title} ${b.reporter!.name} ${b.assignee!.name} ${subs}`);
  }
  return out.join("\n");
}

const pageOf = (conn: Connection): Bug[] => {
  const tree = conn.root().get("bugs") as BTree<number, Bug>;
  const page: Bug[] = [];
  for (let id = 500; id < 500 + PAGE; id++) page.push(tree.get(id)!);
  return page;
};

let expected = "";
const results: Record<string, Phase[]> = { naive: [], prefetch: [], planned: [] };

/** The page through a plan: bugs -> reporter, assignee, subscribers -> branding. */
async function planned(conn: Connection, page: Bug[]): Promise<string> {
  const plan = conn.plan();
  const bugs = plan.from(page);
  const people = bugs.follow("reporter").union(bugs.follow("assignee"), bugs.follow("subscribers"));
  people.follow("branding");
  await plan.realize();
  return render([...bugs]);
}

for (let run = 0; run < WARMUP + RUNS; run++) {
  if (run === WARMUP) for (const k of Object.keys(results)) results[k] = [];
  const target = makeTarget(storage);
  let db = await target.open();
  let conn = db.open();
  populate(conn);
  await conn.commit();
  await conn.close();
  await db.close();

  db = await target.open();
  conn = db.open();
  results.naive!.push(await phase(conn, PAGE, () => (expected = render(pageOf(conn)))));
  await conn.close();
  await db.close();

  db = await target.open();
  conn = db.open();
  let html = "";
  results.prefetch!.push(
    await phase(conn, PAGE, async () => {
      const page = pageOf(conn);
      await conn.prefetch(page);
      const people = page.flatMap((b) => [b.reporter!, b.assignee!, ...b.subscribers]);
      await conn.prefetch(people);
      await conn.prefetch(people.map((p) => p.branding!));
      html = render(page);
    }),
  );
  if (html !== expected) throw new Error("the prefetched page differs from the naive one");
  await conn.close();
  await db.close();

  // planned: REPEATS cold pages (a new DB object each time: empty object and record
  // caches), the median of them; a page is rendered many times in a process, so this
  // measures compiled code rather than the first call.
  const repeats: Phase[] = [];
  for (let r = 0; r < REPEATS; r++) {
    db = await target.open();
    conn = db.open();
    const page = pageOf(conn); // found before the timer: the plan starts from these ghosts
    repeats.push(await phase(conn, PAGE, async () => (html = await planned(conn, page))));
    if (html !== expected) throw new Error("the planned page differs from the naive one");
    await conn.close();
    await db.close();
  }
  repeats.sort((x, y) => x.ms - y.ms);
  results.planned!.push(repeats[Math.floor(REPEATS / 2)]!);
  await target.dispose();
}
report(`c n_plus_1 (page ${PAGE})`, labelOf(storage), results);
