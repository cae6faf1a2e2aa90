/**
 * BrokenObject: a persistent object whose stored class is not registered in this process.
 *
 * Its fields are readable (decoded as plain data, references as ghosts), and it is never
 * written from them: if it is written at all (after `markChanged`), the original record
 * bytes go back unchanged, so a process that lacks a class never damages its objects.
 */
import { Persistent, metaOf } from "./persistent.ts";

const originals = new WeakMap<BrokenObject, Uint8Array>();

export class BrokenObject extends Persistent {
  /** The stored class name that could not be resolved. */
  static storedClassName(obj: BrokenObject): string {
    return metaOf(obj).className;
  }
}

/** @internal Remember the record bytes a broken object was loaded from. */
export function keepOriginal(obj: BrokenObject, data: Uint8Array): void {
  originals.set(obj, data);
}

/** @internal The record bytes to write back for a broken object. */
export function originalOf(obj: BrokenObject): Uint8Array | undefined {
  return originals.get(obj);
}
