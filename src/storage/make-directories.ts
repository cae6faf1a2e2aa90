/**
 * `mkdir -p`, one directory at a time.
 *
 * Not `mkdirSync(path, { recursive: true })`: Node's recursive mkdir (v20, v22) takes
 * ENOENT to mean "the parent is missing", makes the parent (EEXIST: fine) and tries the
 * child again, forever, at 100% CPU and without returning, where the parent exists but
 * answers ENOENT for a new entry: /proc, a dangling symbolic link. Here each missing
 * directory is made once, and the first failure is raised.
 *
 * @internal
 */
import { lstatSync, mkdirSync, readlinkSync, statSync, type Stats } from "node:fs";
import { dirname, resolve } from "node:path";

/**
 * Make directory `path` and its missing parents. Throws an `Error` whose message says which
 * step failed and why (its `code` is the system error's, its `cause` the system error).
 */
export function makeDirectories(path: string): void {
  const missing: string[] = [];
  let dir = resolve(path);
  for (;;) {
    let stats: Stats | undefined;
    try {
      stats = statSync(dir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOTDIR") throw notUnderDirectory(dir, err);
      if (code !== "ENOENT") throw err;
    }
    if (stats !== undefined) {
      if (stats.isDirectory()) break;
      throw failure(`${dir} exists and is not a directory`, "EEXIST");
    }
    const link = danglingLink(dir);
    if (link !== undefined) throw failure(`${dir} is a symbolic link to ${link}, which does not exist`, "ENOENT");
    missing.push(dir);
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  for (let i = missing.length - 1; i >= 0; i--) {
    const dir = missing[i]!;
    try {
      mkdirSync(dir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EEXIST" && statSync(dir, { throwIfNoEntry: false })?.isDirectory()) continue; // made meanwhile by another process
      if (code === "ENOENT") {
        throw failure(
          `${dirname(dir)} does not let a directory be made in it (mkdir says ENOENT; ` +
            `/proc, /sys and other virtual file systems do this)`,
          code,
          err,
        );
      }
      throw failure((err as Error).message, code, err);
    }
  }
}

/**
 * For a stat of `path` that failed with ENOTDIR: an `Error` naming the parent of `path`
 * that is not a directory (a regular file, say), so nothing can exist under it.
 */
export function notUnderDirectory(path: string, err: unknown): Error {
  for (let dir = dirname(resolve(path)); dir !== dirname(dir); dir = dirname(dir)) {
    let stats: Stats | undefined;
    try {
      stats = statSync(dir);
    } catch {
      continue; // missing, or itself under a non-directory: look further up
    }
    if (!stats.isDirectory()) {
      const kind = stats.isFile() ? `a regular file of ${stats.size} byte${stats.size === 1 ? "" : "s"}` : "not a directory";
      return failure(`${dir} is ${kind}, so nothing can be under it`, "ENOTDIR", err);
    }
  }
  return failure((err as Error).message, "ENOTDIR", err);
}

/** Where the symbolic link at `path` points, if it is one whose target is missing. */
function danglingLink(path: string): string | undefined {
  try {
    return lstatSync(path).isSymbolicLink() ? readlinkSync(path) : undefined;
  } catch {
    return undefined;
  }
}

function failure(message: string, code: string | undefined, cause?: unknown): Error {
  const err = new Error(message, cause === undefined ? undefined : { cause }) as NodeJS.ErrnoException;
  if (code !== undefined) err.code = code;
  return err;
}
