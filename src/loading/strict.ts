/**
 * Strict mode's messages: touching a ghost that no plan loaded throws `NotLoadedError`
 * naming the object, the property path that reached it, and the plan step that would have
 * loaded it (the group the referring object was realized in, when there is one).
 */
import { NotLoadedError } from "../errors.ts";
import type { Meta } from "../persistent/persistent.ts";

/** The strict-mode error for touching the ghost of `meta`. */
export function notLoaded(meta: Meta, planGroups: WeakMap<Meta, string>): NotLoadedError {
  const steps: string[] = [];
  let m = meta;
  while (m.viaMeta !== null && steps.length < 3) {
    steps.unshift(m.viaPath);
    m = m.viaMeta;
  }
  const more = m.viaMeta !== null ? "…" : "";
  const path = steps.length === 0 ? "" : ` (reached as ${more}${m.className}#${m.oid}.${steps.join(".")})`;
  const parent = meta.viaMeta;
  const group = parent === null ? undefined : planGroups.get(parent);
  const step =
    parent === null
      ? ""
      : group !== undefined
        ? `; the plan step ${group}.follow(${JSON.stringify(meta.viaPath)}) would have loaded it`
        : `; a plan step .follow(${JSON.stringify(meta.viaPath)}) on a group holding ${parent.className}#${parent.oid} would have loaded it`;
  return new NotLoadedError(
    meta.oid,
    meta.className,
    `${meta.className}#${meta.oid}${path} is not loaded, and strict mode forbids loading on touch${step} ` +
      `(load beforehand with a loading plan, conn.prefetch or conn.loadClosure, or set conn.strict = false)`,
  );
}
