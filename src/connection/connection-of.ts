import type { Connection } from "./connection.ts";
import { jarOf, type Persistent } from "../persistent/persistent.ts";

/** The connection holding `obj`, or `undefined` while it is new (not yet committed). */
export function connectionOf(obj: Persistent): Connection | undefined {
  return jarOf(obj)?.owner as Connection | undefined;
}
