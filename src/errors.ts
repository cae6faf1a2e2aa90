/**
 * The few error classes amberdb raises. Each carries data (oids, class names, serials),
 * a stable string `code`, and a message that says what was expected and what was found.
 */
import type { Oid, Tid } from "./ids.ts";

export class AmberError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** One object of a failed commit: what this transaction read and what is committed now. */
export interface ConflictDetail {
  oid: Oid;
  className: string;
  /** The serial this transaction read (0 for an object it created). */
  readSerial: Tid;
  /** The serial committed by the other transaction. */
  committedSerial: Tid;
  /** True when the object was only read (`readCurrent`), not written. */
  readOnly: boolean;
}

/** A commit failed because another transaction committed a change to an object this one used. */
export class ConflictError extends AmberError {
  readonly conflicts: ConflictDetail[];
  constructor(conflicts: ConflictDetail[], options?: { cause?: unknown; attempts?: number }) {
    const shown = conflicts.slice(0, 5).map(
      (c) =>
        `${c.className}#${c.oid} (${c.readOnly ? "read" : "changed"} at serial ${c.readSerial}, ` +
        `committed since at serial ${c.committedSerial})`,
    );
    const more = conflicts.length > 5 ? ` and ${conflicts.length - 5} more` : "";
    // The message does not repeat the class name: printing the error shows "ConflictError: " already.
    const tries = options?.attempts ? `gave up after ${options.attempts} attempts: ` : "";
    super("conflict", `${tries}another transaction committed changes to ${shown.join(", ")}${more}`, options);
    this.conflicts = conflicts;
  }
  get oids(): Oid[] {
    return this.conflicts.map((c) => c.oid);
  }
  get classNames(): string[] {
    return this.conflicts.map((c) => c.className);
  }
  get serials(): Array<{ oid: Oid; read: Tid; committed: Tid }> {
    return this.conflicts.map((c) => ({ oid: c.oid, read: c.readSerial, committed: c.committedSerial }));
  }
}

/** The storage failed, found damaged data, or was used wrongly (closed, wrong path). */
export class StorageError extends AmberError {
  readonly oid: Oid | undefined;
  constructor(message: string, options?: { oid?: Oid; cause?: unknown; code?: string }) {
    super(options?.code ?? "storage", message, options);
    this.oid = options?.oid;
  }
}

/** A reference points at an object that the storage does not hold (at this snapshot). */
export class ObjectNotFoundError extends StorageError {
  constructor(oid: Oid, detail = "") {
    super(`object ${oid} does not exist in the storage${detail}`, { oid, code: "not-found" });
  }
}

/** A connection or transaction was used wrongly: closed, foreign objects, commit in flight. */
export class TransactionError extends AmberError {
  constructor(message: string, code = "transaction") {
    super(code, message);
  }
}

/** A ghost was touched in strict mode without a plan or prefetch that loaded it. */
export class NotLoadedError extends AmberError {
  readonly oid: Oid;
  readonly className: string;
  constructor(oid: Oid, className: string, message: string) {
    super("not-loaded", message);
    this.oid = oid;
    this.className = className;
  }
}

/** A malformed or unexpected message on the wire. */
export class ProtocolError extends AmberError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("protocol", message, options);
  }
}
