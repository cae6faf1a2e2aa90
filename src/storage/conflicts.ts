/**
 * Turning the conflicts a storage found into the `ConflictError` that `finish` and `undo`
 * raise. Shared by the storages that check serials themselves.
 *
 * @internal
 */
import { readEnvelope } from "../codec/record.ts";
import { ConflictError } from "../errors.ts";
import type { StorageConflict } from "./storage.ts";

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
