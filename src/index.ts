/**
 * amberdb: the public surface (SPEC.md). Everything not exported here is internal.
 */
export { DB, type DBOptions, type TransactOptions, type HistoryEntry } from "./connection/db.ts";
export { Group, Plan, type FollowableKeys, type Followed } from "./loading/plan.ts";
export { Connection, type ConnectionOptions, type ConnectionStats } from "./connection/connection.ts";
export {
  Persistent,
  isPersistent,
  markChanged,
  oidOf,
  serialOf,
  stateOf,
  type ObjectState,
} from "./persistent/persistent.ts";
export { connectionOf } from "./connection/connection-of.ts";
import "./persistent/json.ts"; // Persistent.prototype.toJSON
export {
  persistent,
  serializable,
  registerClass,
  registerAlias,
  type RegisterOptions,
  type UpgradeHook,
} from "./persistent/class-registry.ts";
export { PersistentMap, type PersistentMapOptions } from "./persistent/persistent-map.ts";
export { PersistentList } from "./persistent/persistent-list.ts";
export { PersistentSet } from "./persistent/persistent-set.ts";
export { Counter } from "./collections/counter.ts";
export { PersistentRef, type State, type ConflictResolver } from "./persistent/conflict-hooks.ts";
export { BTree, type BTreeKey, type BTreeOptions, type BTreeRangeOptions } from "./collections/btree.ts";
export { BrokenObject } from "./persistent/broken-object.ts";
export { BrokenValue } from "./codec/state.ts";
export {
  AmberError,
  ConflictError,
  NotLoadedError,
  ObjectNotFoundError,
  ProtocolError,
  StorageError,
  TransactionError,
  type ConflictDetail,
  type ErrorCode,
} from "./errors.ts";
export type {
  Oid,
  Tid,
  Storage,
  SyncAccess,
  SyncStorage,
  StorageCapabilities,
  StoredRecord,
  RecordToStore,
  CommitRequest,
  StorageConflict,
  ResolveInCommit,
  Changes,
  TransactionInfo,
  ClosureOptions,
  ClosureResult,
  PlanStep,
  PlanOptions,
  PlanResult,
} from "./storage/storage.ts";
export { ROOT_OID, checkStorage, hasSyncAccess } from "./storage/storage.ts";
export { MemoryStorage } from "./storage/memory-storage.ts";
export { LmdbStorage } from "./storage/lmdb/lmdb-storage.ts";
export { openStorage, type StorageOptions } from "./storage/open-storage.ts";
