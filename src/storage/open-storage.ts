/**
 * Open a storage from a URL: `memory:`, a filesystem path or `file:` URL (the embedded
 * LMDB storage), `amber://host:port[/name]` (a storage server). `postgres://` comes later.
 */
import { fileURLToPath } from "node:url";
import { StorageError } from "../errors.ts";
import { LmdbStorage } from "./lmdb/lmdb-storage.ts";
import { MemoryStorage } from "./memory-storage.ts";
import { ClientStorage, type ClientOptions } from "./server/client-storage.ts";
import type { Storage } from "./storage.ts";

export interface StorageOptions extends ClientOptions {
  /** "durable" (default): a returned commit is on disk. "relaxed": skip fsync. */
  durability?: "durable" | "relaxed";
  /** Create the store if missing (default true). */
  create?: boolean;
}

export async function openStorage(url: string, options: StorageOptions = {}): Promise<Storage> {
  if (typeof url !== "string" || url.length === 0) {
    throw new TypeError(`DB.open() needs a storage URL or path, got ${url === "" ? "an empty string" : typeof url}`);
  }
  if (url.startsWith("memory:")) return new MemoryStorage(url);
  if (url.startsWith("file:")) return LmdbStorage.open(fileURLToPath(url), options);
  if (url.startsWith("amber:")) return ClientStorage.open(url, options);
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(url);
  if (scheme !== null) {
    throw new StorageError(
      `cannot open ${url}: the ${scheme[1]}:// storage is not available in this version ` +
        `(supported: memory:, a directory path, file:, amber://)`,
      { code: "unsupported" },
    );
  }
  return LmdbStorage.open(url, options);
}
