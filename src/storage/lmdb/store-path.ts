/**
 * What is at the path an embedded store is opened on, decided before LMDB touches it, so
 * that opening a wrong path never creates files inside someone else's directory.
 *
 * @internal
 */
import { readdirSync, statSync, type Stats } from "node:fs";
import { StorageError } from "../../errors.ts";
import { makeDirectories, notUnderDirectory } from "../make-directories.ts";

/** LMDB's files in a store directory. A directory holding only these (or nothing) is ours to use. */
const DATA_FILE = "data.mdb";
const LMDB_FILES = new Set([DATA_FILE, "lock.mdb"]);

function kindOf(stats: Stats): string {
  if (stats.isFile()) return `a regular file of ${stats.size} bytes`;
  if (stats.isSocket()) return "a socket";
  if (stats.isFIFO()) return "a named pipe";
  if (stats.isCharacterDevice() || stats.isBlockDevice()) return "a device";
  return "not a directory";
}

function listed(names: string[]): string {
  const shown = names.slice(0, 5).join(", ");
  return names.length > 5 ? `${shown} and ${names.length - 5} more` : shown;
}

/**
 * Check that `path` is a directory that is empty or holds an LMDB environment (whose marker
 * the caller then checks), creating it when it is missing and `create` allows it.
 * Raises `StorageError` naming the path and saying what was found there.
 */
export function preparePath(path: string, create: boolean): void {
  let stats: Stats;
  try {
    stats = statSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOTDIR") {
      throw new StorageError(`cannot open ${path}: ${notUnderDirectory(path, err).message}`, { cause: err, code: "not-found" });
    }
    if (code !== "ENOENT") {
      throw new StorageError(`cannot open ${path}: ${(err as Error).message}`, { cause: err });
    }
    if (!create) {
      throw new StorageError(`cannot open ${path}: no amberdb store there (nothing exists at that path, and create is false)`, {
        code: "not-found",
      });
    }
    try {
      makeDirectories(path);
    } catch (mkdirErr) {
      throw new StorageError(`cannot create the amberdb store ${path}: ${(mkdirErr as Error).message}`, {
        cause: mkdirErr,
        code: "cannot-create",
      });
    }
    return;
  }
  if (!stats.isDirectory()) {
    throw new StorageError(`${path} is not an amberdb store: it is ${kindOf(stats)}`, { code: "not-a-store" });
  }
  const names = readdirSync(path).sort();
  if (names.includes(DATA_FILE)) return;
  const foreign = names.filter((n) => !LMDB_FILES.has(n));
  if (foreign.length > 0) {
    const found = `a directory that contains ${listed(foreign)} and no ${DATA_FILE}`;
    throw new StorageError(`${path} is not an amberdb store: it is ${found}`, { code: "not-a-store" });
  }
  if (!create) {
    throw new StorageError(`cannot open ${path}: it is an empty directory, not an amberdb store (and create is false)`, {
      code: "not-found",
    });
  }
}

