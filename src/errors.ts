/**
 * The few error classes amberdb raises. Each carries data (oids, class names, serials),
 * a stable string `code`, and a message that says what was expected and what was found.
 */
import type { Oid, Tid } from "./ids.ts";

/**
 * Every `code` an `AmberError` carries: the one published list (README "Error codes", which
 * says what each means). A code names the case, not the class: "closed" is a StorageError
 * from a closed storage and a TransactionError from a closed connection or DB. Codes are
 * stable; adding one is a change to the public API.
 */
export type ErrorCode =
  // ConflictError
  | "conflict"
  // NotLoadedError
  | "not-loaded"
  // ProtocolError (and a StorageError for a reply of an unknown kind)
  | "protocol"
  // TransactionError
  | "transaction"
  | "closed"
  | "stale-object"
  | "foreign-object"
  | "in-flight"
  | "changed-in-flight"
  | "read-only"
  | "no-history"
  | "disconnected"
  | "not-realized"
  | "realized"
  // StorageError (ObjectNotFoundError: "not-found")
  | "storage"
  | "not-found"
  | "corrupt"
  | "format"
  | "not-a-store"
  | "cannot-create"
  | "unsupported"
  | "too-large"
  | "timeout"
  | "commit-unknown"
  | "database-changed"
  | "auth"
  | "no-token"
  | "no-database"
  | "no-vote"
  | "version"
  | "server";

const CODES: Record<ErrorCode, true> = {
  conflict: true,
  "not-loaded": true,
  protocol: true,
  transaction: true,
  closed: true,
  "stale-object": true,
  "foreign-object": true,
  "in-flight": true,
  "changed-in-flight": true,
  "read-only": true,
  "no-history": true,
  disconnected: true,
  "not-realized": true,
  realized: true,
  storage: true,
  "not-found": true,
  corrupt: true,
  format: true,
  "not-a-store": true,
  "cannot-create": true,
  unsupported: true,
  "too-large": true,
  timeout: true,
  "commit-unknown": true,
  "database-changed": true,
  auth: true,
  "no-token": true,
  "no-database": true,
  "no-vote": true,
  version: true,
  server: true,
};

/** Every ErrorCode, in the order of the type. @internal */
export const ERROR_CODES: readonly ErrorCode[] = Object.keys(CODES) as ErrorCode[];

/** True for a string that is an ErrorCode (for codes read from the wire). @internal */
export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === "string" && Object.hasOwn(CODES, value);
}

export class AmberError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
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

/**
 * The storage failed, found damaged data, or was used wrongly (closed, wrong path).
 *
 * `options.code` also takes a plain string, because a client rebuilds errors from the codes a
 * server sends: one that is not an ErrorCode (a server of another version, or an error on the
 * server that is not amberdb's, such as "ENOENT") becomes "server", so `code` always holds an
 * ErrorCode. (src/errors.test.ts checks the literal codes in src/ against the list.)
 */
export class StorageError extends AmberError {
  readonly oid: Oid | undefined;
  constructor(message: string, options?: { oid?: Oid; cause?: unknown; code?: ErrorCode | (string & {}) }) {
    const code = options?.code ?? "storage";
    super(isErrorCode(code) ? code : "server", message, options);
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
  constructor(message: string, code: ErrorCode = "transaction") {
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
