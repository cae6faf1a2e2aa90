/**
 * Evaluating a loading plan where the records are: the storage side of `plan.realize()`.
 * Used by the local storages and by the storage server, which has no application classes:
 * a step `follow(prop)` takes, from each record of its source group, the references whose
 * stored path (codec/record.ts: the top-level property holding them) is `prop`.
 *
 * Collections fan out: a reference to a record marked as a collection (its envelope's
 * fan-out bits, codec/record.ts: the collection classes mark their records) stands for the
 * objects the collection holds, so `follow("subscribers")` on a Bug whose `subscribers` is a
 * PersistentList gives the people, and through a BTree every value in it (records marked as
 * pieces, its interior nodes and buckets, are walked through). No class name is known here.
 *
 * Every record is read at one snapshot; every record returned had its checksum checked.
 * Records of oids in `have` are read (to follow their references) but not returned; a
 * record in `cached` with a matching serial is returned as a marker (see closure.ts).
 *
 * @internal
 */
import { FanOut, readEnvelope } from "../codec/record.ts";
import { StorageError } from "../errors.ts";
import type { Oid, PlanOptions, PlanResult, PlanStep, StoredRecord } from "./storage.ts";


interface Header {
  className: string;
  fanOut: number;
  refOids: Oid[];
  refPaths: string[];
  refClasses: string[];
}

export interface PlanWalk extends PlanResult {
  /** Reached oids whose records were not returned because the caller holds them. */
  held: Oid[];
}

/** Check the shape of a plan: a list of steps, each naming only earlier groups. */
export function checkPlan(steps: unknown): asserts steps is PlanStep[] {
  if (!Array.isArray(steps) || steps.length === 0) throw new TypeError("a plan is a non-empty array of steps");
  steps.forEach((step: PlanStep, i) => {
    const earlier = (g: unknown) => Number.isInteger(g) && (g as number) >= 0 && (g as number) < i;
    if (typeof step !== "object" || step === null) throw new TypeError(`plan step ${i} is not an object`);
    if (step.from !== undefined) {
      if (!Array.isArray(step.from) || !step.from.every((o) => Number.isSafeInteger(o) && o >= 0)) {
        throw new TypeError(`plan step ${i}: from must be a list of oids`);
      }
    } else if (step.follow !== undefined) {
      if (!earlier(step.follow)) throw new TypeError(`plan step ${i}: follow must name an earlier step, got ${String(step.follow)}`);
      if (typeof step.prop !== "string" || step.prop.length === 0) throw new TypeError(`plan step ${i}: prop must be a property name`);
    } else if (step.union !== undefined) {
      if (!Array.isArray(step.union) || !step.union.every(earlier)) throw new TypeError(`plan step ${i}: union must name earlier steps`);
    } else throw new TypeError(`plan step ${i} has no from, follow or union`);
  });
}

/**
 * Evaluate `steps`. `load` reads one record at the plan's snapshot (null when it does not
 * exist there). With `emit`, records are handed over as they are read (and `load` may lend
 * its bytes until its next call); otherwise they are collected in `records`.
 */
export function walkPlan(
  load: (oid: Oid) => StoredRecord | null,
  steps: readonly PlanStep[],
  options: PlanOptions = {},
  emit?: (rec: StoredRecord, cachedCopy: boolean) => void,
  cached?: ReadonlyMap<Oid, number>,
): PlanWalk {
  checkPlan(steps);
  const maxBytes = options.maxBytes ?? Number.MAX_SAFE_INTEGER;
  const have = options.have === undefined || options.have.length === 0 ? null : new Set(options.have);
  const headers = new Map<Oid, Header | null>();
  const records: StoredRecord[] = [];
  const held: Oid[] = [];
  const missing: Array<{ oid: Oid; path: string }> = [];
  let bytes = 0;

  const visit = (oid: Oid): Header | null => {
    const known = headers.get(oid);
    if (known !== undefined) return known;
    const rec = load(oid);
    if (rec === null) {
      headers.set(oid, null);
      return null;
    }
    const env = readEnvelope(rec.data, oid);
    const h: Header = { className: env.className, fanOut: env.fanOut, refOids: env.refOids, refPaths: env.refPaths, refClasses: env.refClasses };
    headers.set(oid, h);
    if (have !== null && have.has(oid)) held.push(oid);
    else {
      bytes += rec.data.length;
      if (bytes > maxBytes) {
        throw new StorageError(`the plan loads more than ${maxBytes} bytes of records; split it or realize it in parts`, { code: "too-large" });
      }
      if (emit === undefined) records.push(rec);
      else emit(rec, cached !== undefined && cached.get(oid) === rec.serial);
    }
    return h;
  };

  const groups: Oid[][] = [];
  for (const step of steps) {
    const out: Oid[] = [];
    const seen = new Set<Oid>();
    const add = (oid: Oid, path: string): void => {
      if (seen.has(oid)) return;
      seen.add(oid);
      if (visit(oid) === null) missing.push({ oid, path });
      else out.push(oid);
    };
    if (step.from !== undefined) {
      for (const oid of step.from) add(oid, `#${oid}`);
    } else if (step.follow !== undefined) {
      for (const src of groups[step.follow]!) {
        const h = visit(src);
        if (h === null) continue;
        for (let j = 0; j < h.refOids.length; j++) {
          if (h.refPaths[j] !== step.prop) continue;
          const path = `${h.className}#${src}.${step.prop}`;
          const target = h.refOids[j]!;
          if (visit(target)?.fanOut === FanOut.ITEMS) fanOut(target, path, add, visit, missing);
          else add(target, path);
        }
      }
    } else {
      for (const g of step.union!) for (const oid of groups[g]!) add(oid, `#${oid}`);
    }
    groups.push(out);
  }
  return { records, groups, missing, held };
}

/** Add the items of collection `coll` (walking a BTree's nodes and buckets). */
function fanOut(
  coll: Oid,
  path: string,
  add: (oid: Oid, path: string) => void,
  visit: (oid: Oid) => Header | null,
  missing: Array<{ oid: Oid; path: string }>,
): void {
  const pending = [coll];
  const walked = new Set<Oid>(pending);
  for (let i = 0; i < pending.length; i++) {
    const h = visit(pending[i]!);
    if (h === null) {
      missing.push({ oid: pending[i]!, path });
      continue;
    }
    for (let j = 0; j < h.refOids.length; j++) {
      const ref = h.refOids[j]!;
      if (visit(ref)?.fanOut === FanOut.PIECES) {
        if (!walked.has(ref)) {
          walked.add(ref);
          pending.push(ref);
        }
      } else add(ref, `${path}[…]`);
    }
  }
}
