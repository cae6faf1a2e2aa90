/**
 * Turning the conflicts a storage found into the `ConflictError` that `finish` and `undo`
 * raise, and the rule that decides when `undo` may restore an object. Shared by the
 * storages that check serials themselves.
 *
 * @internal
 */
import { readEnvelope } from "../codec/record.ts";
import { ConflictError } from "../errors.ts";
import type { StorageConflict, Tid } from "./storage.ts";

/**
 * The class name recorded in committed data, for the error message; "?" when there is no
 * committed record or its envelope is unreadable (a damaged record must not hide the
 * conflict behind a decoding error).
 */
function classNameOf(conflict: StorageConflict): string {
  if (conflict.committedData === null) return "?";
  try {
    return readEnvelope(conflict.committedData, conflict.oid).className;
  } catch {
    return "?";
  }
}

/** How many times `finish` lets its `resolve` callback merge before it gives up. */
export const MAX_IN_COMMIT_ROUNDS = 4;

export function conflictError(conflicts: readonly StorageConflict[]): ConflictError {
  return new ConflictError(
    conflicts.map((c) => ({
      oid: c.oid,
      className: classNameOf(c),
      readSerial: c.readSerial,
      committedSerial: c.committedSerial,
      readOnly: c.readOnly,
    })),
  );
}

/**
 * May `undo(tid)` restore an object that transaction `tid` wrote (the rule of
 * `Storage.undo`, after ZODB's FileStorage)? Yes when the object's current revision is the
 * one `tid` wrote (`currentSerial === tid`), or when its current state is byte for byte
 * the state `tid` wrote (`undoneData`): a later transaction wrote it back, typically an
 * undo of the transaction after `tid` (so undos can step back one transaction at a time),
 * or a change that left it as it was. Otherwise a later change would be lost: a conflict.
 * `undoneData` is null when the revision `tid` wrote is no longer stored.
 */
export function undoable(tid: Tid, currentSerial: Tid, currentData: Uint8Array, undoneData: Uint8Array | null): boolean {
  if (currentSerial === tid) return true;
  return undoneData !== null && sameBytes(currentData, undoneData);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
}
