/**
 * Opening an embedded store's LMDB environment and its named databases (layout.ts), and
 * lmdb-js itself, loaded by the first `LmdbStorage.open`: importing amberdb loads no native
 * code, and a program that only uses `memory:` or a server never loads it.
 *
 * @internal
 */
import type { Database, RootDatabase } from "lmdb";
import { StorageError } from "../../errors.ts";
import type { Oid, Tid } from "../storage.ts";
import * as L from "./layout.ts";

type Lmdb = typeof import("lmdb");
let lmdb: Lmdb | undefined;

/**
 * The commit flags (from lmdb-js's TransactionFlags) and lmdb-js's ABORT, set by `loadLmdb`
 * before any store is opened (only open stores read them). "durable": LMDB flushes the data
 * and then the meta page before the write transaction returns; "relaxed" adds
 * NO_SYNC_FLUSH (see lmdb-storage.ts on durability).
 */
export const flags = { DURABLE: 0, RELAXED: 0, ABORT: {} as Lmdb["ABORT"] };

export async function loadLmdb(): Promise<Lmdb> {
  if (lmdb === undefined) {
    const m = await import("lmdb");
    flags.DURABLE = m.TransactionFlags.ABORTABLE | m.TransactionFlags.SYNCHRONOUS_COMMIT;
    flags.RELAXED = flags.DURABLE | m.TransactionFlags.NO_SYNC_FLUSH;
    flags.ABORT = m.ABORT;
    lmdb = m;
  }
  return lmdb;
}

type Bytes = Database<Buffer, string | number | L.HistoryKey>;

export interface Databases {
  id: string;
  meta: Database<Buffer, string>;
  current: Database<Buffer, Oid>;
  history: Database<Buffer, L.HistoryKey>;
  txns: Database<Buffer, Tid>;
}

/** Open the environment in directory `path` (which store-path.ts prepared). */
export async function openEnvironment(path: string, readOnly: boolean): Promise<RootDatabase> {
  const { open } = await loadLmdb();
  try {
    // Every process must open one environment with the same flags (see layout.ts).
    return open(path, { noSubdir: false, readOnly, overlappingSync: process.platform !== "win32", maxDbs: 8 });
  } catch (err) {
    throw new StorageError(`cannot open the LMDB environment in ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Open the named databases. A store carries the marker in "meta"; an environment without
 * it is some other program's LMDB data, unless it is empty (a new store, or the creation
 * of one that was interrupted): then, when `create` allows, the databases and the marker
 * are created, the marker last, so that a store with a marker is complete.
 */
export function openDatabases(root: RootDatabase, path: string, create: boolean): Databases {
  const openOne = (name: string, mustExist: boolean): Bytes | undefined => {
    try {
      // `create` is a runtime option of lmdb-js's openDB that its types do not declare.
      return root.openDB<Buffer, string>(name, { encoding: "binary", create: !mustExist } as { encoding: "binary" });
    } catch (err) {
      if (mustExist && /not found/i.test((err as Error).message)) return undefined;
      throw new StorageError(`cannot open database "${name}" in ${path}: ${(err as Error).message}`, { cause: err });
    }
  };
  const notAStore = (): StorageError =>
    new StorageError(`${path} is not an amberdb store: it holds an LMDB environment without the amberdb marker`, {
      code: "not-a-store",
    });
  let meta = openOne(L.DB_META, true);
  if (meta === undefined) {
    if (!create || root.getKeysCount() > 0) throw notAStore();
    meta = openOne(L.DB_META, false)!;
  }
  let marker = meta.getBinary(L.KEY_MARKER);
  if (marker === undefined) {
    if (!create || meta.getKeysCount() > 0) throw notAStore();
    for (const name of [L.DB_CURRENT, L.DB_HISTORY, L.DB_TXNS]) openOne(name, false);
    const m = meta;
    root.transactionSync(() => {
      if (m.getBinary(L.KEY_MARKER) === undefined) m.putSync(L.KEY_MARKER, L.encodeMarker());
    }, flags.DURABLE);
    marker = meta.getBinary(L.KEY_MARKER)!;
  }
  const found = L.decodeMarker(marker);
  if (typeof found === "string") {
    throw new StorageError(`${path} is not a readable amberdb store: found ${found}`, { code: "not-a-store" });
  }
  if (found.format !== L.FORMAT) {
    throw new StorageError(`${path} is an amberdb store of format ${found.format}; this version reads format ${L.FORMAT}`, {
      code: "format",
    });
  }
  const [current, history, txns] = [L.DB_CURRENT, L.DB_HISTORY, L.DB_TXNS].map((name) => {
    const db = openOne(name, true);
    if (db === undefined) {
      throw new StorageError(`${path} is a damaged amberdb store: its database "${name}" is missing`, { code: "corrupt" });
    }
    return db;
  });
  return {
    id: L.storeId(found),
    meta: meta as Database<Buffer, string>,
    current: current as Database<Buffer, Oid>,
    history: history as Database<Buffer, L.HistoryKey>,
    txns: txns as Database<Buffer, Tid>,
  };
}
