/**
 * Loading many objects at once (SPEC §3): `prefetch` (one round trip for the ghosts among
 * some objects, or a loading plan's short form), `loadClosure` (an object and everything it
 * reaches, walked by the storage), and realizing a loading plan (loading/plan.ts), all
 * installed through the object loader.
 */
import { readEnvelope } from "../codec/record.ts";
import { ObjectNotFoundError, TransactionError } from "../errors.ts";
import { Plan, type Group, type PlanHost } from "../loading/plan.ts";
import { NEW, isPersistent, metaOf, needsLoad, type Persistent } from "../persistent/persistent.ts";
import { ITEMS } from "../persistent/slots.ts";
import type { Oid, PlanStep } from "../storage/storage.ts";
import { Phase } from "./phase.ts";
import { assertOpen, checkSession, noteLoad, notFound, own, type Core } from "./core.ts";
import { install, objectFor } from "./object-loader.ts";

/** The plan host of a connection: what loading/plan.ts asks of it. */
export function planHost(c: Core): PlanHost {
  return {
    oidForPlan: (obj) => oidForPlan(c, obj),
    realizePlan: (steps, labels, starts) => realizePlan(c, steps, labels, starts),
  };
}

/**
 * Load every ghost among `objects` in one round trip (objects already loaded, new or
 * of no connection are skipped). Returns how many were loaded. With `paths` (dotted
 * property paths such as `"reporter.branding"`), the short form of a loading plan:
 * `objects` and everything the paths reach, in one round trip.
 */
export async function prefetch(c: Core, objects: Iterable<Persistent>, paths?: readonly string[]): Promise<number> {
  assertOpen(c, "prefetch");
  if (paths !== undefined) return prefetchPaths(c, objects, paths);
  const ghosts: Persistent[] = [];
  const seen = new Set<Oid>();
  for (const obj of objects) {
    const m = own(c, obj, "prefetch");
    if (needsLoad(m) && !seen.has(m.oid)) {
      seen.add(m.oid);
      ghosts.push(obj);
    }
  }
  if (ghosts.length === 0) return 0;
  const oids = ghosts.map((g) => metaOf(g).oid);
  c.stats.roundTrips++;
  const txn = c.txn;
  const records = await c.storage.load(oids, c.tid);
  // The transaction ended (commit, abort) while the load was in flight: its records
  // belong to the old snapshot. The objects stay ghosts and load when touched.
  if (txn !== c.txn || c.phase === Phase.CLOSED) return 0;
  checkSession(c);
  let loaded = 0;
  records.forEach((rec, i) => {
    const obj = ghosts[i]!;
    const m = metaOf(obj);
    if (rec === null) throw notFound(c, m.oid, m.className);
    if (!needsLoad(m)) return; // loaded meanwhile (an upgrade hook, another prefetch)
    c.stats.loads++;
    noteLoad(m.className);
    c.stats.bytesRead += rec.data.length;
    install(c, obj, m, rec, readEnvelope(rec.data, rec.oid), false);
    loaded++;
  });
  return loaded;
}

/**
 * Load `obj` and every object reachable from it, in one round trip (on a remote storage
 * the server walks the stored references), as of this transaction's snapshot. Objects
 * this connection has loaded already are walked through but not sent again. Stops at
 * `maxObjects` records (default: the connection's cacheSize) or `maxBytes` of record
 * data (default: its cacheBytes). Returns what it loaded and whether a limit cut it short.
 */
export async function loadClosure(c: Core, obj: Persistent, options: { maxObjects?: number; maxBytes?: number } = {}): Promise<{ loaded: number; truncated: boolean }> {
  assertOpen(c, "loadClosure");
  const m = own(c, obj, "loadClosure");
  if (m.state === NEW || m.oid < 0) return { loaded: 0, truncated: false };
  const have: Oid[] = [];
  for (const [, meta] of c.cache.loadedObjects()) if (meta.state !== NEW) have.push(meta.oid);
  c.stats.roundTrips++;
  const txn = c.txn;
  const result = await c.storage.loadClosure(m.oid, c.tid, {
    maxObjects: options.maxObjects ?? c.cache.cacheSize,
    maxBytes: options.maxBytes ?? c.cache.cacheBytes,
    have,
  });
  if (txn !== c.txn || c.phase === Phase.CLOSED) return { loaded: 0, truncated: result.truncated }; // see prefetch
  checkSession(c);
  if (result.missing.includes(m.oid)) throw notFound(c, m.oid, m.className);
  let loaded = 0;
  // Parse every envelope first: making ghosts for the references of the first records
  // must not evict records of the same closure before they are installed.
  for (const rec of result.records) {
    const env = readEnvelope(rec.data, rec.oid, true); // checked by the walk that found it (closure.ts)
    const target = objectFor(c, rec.oid, env.className);
    const tm = metaOf(target);
    if (!needsLoad(tm)) continue;
    c.stats.loads++;
    noteLoad(env.className);
    c.stats.bytesRead += rec.data.length;
    install(c, target, tm, rec, env, false);
    loaded++;
  }
  return { loaded, truncated: result.truncated };
}

export async function prefetchPaths(c: Core, objects: Iterable<Persistent>, paths: readonly string[]): Promise<number> {
  if (!Array.isArray(paths) || !paths.every((p) => typeof p === "string" && p.length > 0)) {
    throw new TypeError('prefetch(objects, paths): paths must be property paths such as ["reporter.branding"]');
  }
  const plan = new Plan(planHost(c));
  const root = plan.from(objects);
  const byPrefix = new Map<string, Group>();
  for (const path of paths) {
    let group: Group = root;
    let prefix = "";
    for (const prop of path.split(".")) {
      if (prop === "") throw new TypeError(`prefetch(): empty step in path ${JSON.stringify(path)}`);
      prefix += `.${prop}`;
      let next = byPrefix.get(prefix);
      if (next === undefined) {
        next = (group as Group<never>).follow(prop as never) as Group;
        byPrefix.set(prefix, next);
      }
      group = next;
    }
  }
  const before = c.stats.loads;
  await plan.realize();
  return c.stats.loads - before;
}

/** PlanHost: the oid of a plan's starting object (null for a new one). */
export function oidForPlan(c: Core, obj: Persistent): number | null {
  const m = own(c, obj, "plan.from");
  return m.state === NEW || m.oid < 0 ? null : m.oid;
}

/**
 * PlanHost. The storage evaluates the plan over the stored records in one call
 * and everything it reached is installed; then the groups are worked out here, from the
 * objects themselves, so that changes this transaction made and has not committed count
 * (objects they reach that are not loaded yet cost one more round trip per step, only
 * then). Eviction waits until the plan is installed: a plan may exceed the cache.
 */
export async function realizePlan(c: Core, steps: PlanStep[], labels: string[], starts: Array<Persistent[] | null>): Promise<Persistent[][]> {
  assertOpen(c, "realize");
  const have: Oid[] = [];
  for (const [, meta] of c.cache.loadedObjects()) if (meta.state !== NEW) have.push(meta.oid);
  c.stats.roundTrips++;
  const txn = c.txn;
  const result = await c.storage.loadPlan(steps, c.tid, { have });
  const ended = () => {
    if (txn !== c.txn || c.phase === Phase.CLOSED) {
      throw new TransactionError("realize(): the transaction ended (commit or abort) while the plan was loading; realize a new plan", "in-flight");
    }
  };
  ended();
  checkSession(c);
  c.installingPlan = true; // nothing is evicted, and strict mode is off, until the plan is installed
  try {
    for (const rec of result.records) {
      const env = readEnvelope(rec.data, rec.oid, true); // checked by the walk (plan-walk.ts)
      const target = objectFor(c, rec.oid, env.className);
      const tm = metaOf(target);
      if (!needsLoad(tm)) continue;
      c.stats.loads++;
      c.stats.bytesRead += rec.data.length;
      noteLoad(env.className);
      install(c, target, tm, rec, env, false);
    }
    const dangling = result.missing[0];
    if (dangling !== undefined) {
      throw new ObjectNotFoundError(dangling.oid, ` at snapshot ${c.tid}: a dangling reference, reached as ${dangling.path}`);
    }
    const groups: Persistent[][] = [];
    for (let i = 0; i < steps.length; i++) {
      const step = steps[i]!;
      const out = new Set<Persistent>();
      if (step.union !== undefined) {
        for (const g of step.union) for (const obj of groups[g]!) out.add(obj);
      } else if (step.follow !== undefined) {
        const sources = groups[step.follow]!;
        await loadGhosts(c, sources);
        ended();
        for (const obj of sources) {
          checkFollowed(obj, step.prop!, labels[i]!);
          for (const item of itemsOf((obj as unknown as Record<string, unknown>)[step.prop!])) out.add(item);
        }
      } else {
        for (const obj of starts[i] ?? []) out.add(obj);
      }
      groups.push([...out]);
    }
    // The last groups' members are loaded too (their own references are not followed).
    for (const g of groups) await loadGhosts(c, g);
    ended();
    groups.forEach((g, i) => {
      for (const obj of g) c.planGroups.set(metaOf(obj), labels[i]!);
    });
    return groups;
  } finally {
    c.installingPlan = false;
  }
}

/** Load the ghosts among `objects` in one round trip, if there are any. */
export async function loadGhosts(c: Core, objects: Persistent[]): Promise<void> {
  const ghosts = objects.filter((o) => needsLoad(metaOf(o)));
  if (ghosts.length > 0) await prefetch(c, ghosts);
}

/**
 * After realize: `obj`, a member of a group followed through `prop`, must have that
 * property, holding references (a persistent object, a collection or container of them,
 * or null), not other data.
 */
function checkFollowed(obj: Persistent, prop: string, label: string): void {
  const m = metaOf(obj);
  const where = `${m.className}#${m.oid}`;
  if (!(prop in obj)) throw new TypeError(`realize(): ${where} has no property ${JSON.stringify(prop)} (plan step ${label})`);
  const v = (obj as unknown as Record<string, unknown>)[prop];
  if (v === null || v === undefined || isPersistent(v) || v instanceof Map || v instanceof Set) return;
  if (Array.isArray(v) && v.every((x) => x === null || x === undefined || isPersistent(x))) return;
  const what = Array.isArray(v) ? "an array of non-references" : typeof v === "object" ? "a plain object" : `a ${typeof v}`;
  throw new TypeError(`realize(): ${where}.${prop} holds ${what}, not a reference (plan step ${label})`);
}
/** The persistent objects a followed property yields: itself, or a collection's items. */
function itemsOf(v: unknown): Persistent[] {
  if (v === null || v === undefined) return [];
  let items: Iterable<unknown>;
  const collection = (v as { [ITEMS]?: () => Iterable<unknown> })[ITEMS];
  if (typeof collection === "function") items = collection.call(v);
  else if (isPersistent(v)) return [v];
  else if (Array.isArray(v)) items = v;
  else if (v instanceof Map) items = v.values();
  else if (v instanceof Set) items = v;
  else return [];
  const out: Persistent[] = [];
  for (const x of items) if (isPersistent(x)) out.push(x);
  return out;
}