/**
 * Object and transaction identifiers, shared by every layer (this module imports nothing).
 *
 * An oid names one persistent object for the life of the store. A tid names one committed
 * transaction: positive integers, strictly increasing with each commit (the embedded storages
 * derive them from the clock in microseconds, so a tid also says when). A record's serial is
 * the tid of the transaction that wrote it; tid 0 means "before the first transaction".
 */

export type Oid = number;
export type Tid = number;

/** The oid of the root object (a PersistentMap), created by the first connection. */
export const ROOT_OID: Oid = 0;
