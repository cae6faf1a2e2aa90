import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  AmberError,
  ConflictError,
  ERROR_CODES,
  NotLoadedError,
  ObjectNotFoundError,
  ProtocolError,
  StorageError,
  TransactionError,
  isErrorCode,
} from "./errors.ts";

const SRC = new URL(".", import.meta.url).pathname;

function sources(dir = SRC): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : /(?<!\.test)\.ts$/.test(e.name) ? [join(dir, e.name)] : [],
  );
}

describe("error codes", () => {
  it("lists each code once", () => {
    expect(new Set(ERROR_CODES).size).toBe(ERROR_CODES.length);
    expect(ERROR_CODES.every(isErrorCode)).toBe(true);
    expect(isErrorCode("ENOENT")).toBe(false);
    expect(isErrorCode("toString")).toBe(false);
  });

  it("documents every code in the README table, and no other", () => {
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    const section = readme.slice(readme.indexOf("## Errors"), readme.indexOf("\n## ", readme.indexOf("## Errors") + 1));
    const documented = [...section.matchAll(/^\| `([a-z-]+)` \|/gm)].map((m) => m[1]);
    expect(documented).toEqual([...ERROR_CODES]);
  });

  it("uses only listed codes in src/ (StorageError takes codes read from the wire as strings)", () => {
    const unknown: string[] = [];
    for (const file of sources()) {
      const text = readFileSync(file, "utf8");
      for (const m of text.matchAll(/\bcode:\s*"([^"]*)"/g)) if (!isErrorCode(m[1])) unknown.push(`${file}: ${m[1]}`);
    }
    expect(unknown).toEqual([]);
  });

  it("gives each class its code", () => {
    const conflict = new ConflictError([{ oid: 1, className: "C", readSerial: 1, committedSerial: 2, readOnly: false }]);
    expect(conflict.code).toBe("conflict");
    expect(new NotLoadedError(1, "C", "not loaded").code).toBe("not-loaded");
    expect(new ProtocolError("garbage").code).toBe("protocol");
    expect(new ObjectNotFoundError(7).code).toBe("not-found");
    expect(new ObjectNotFoundError(7).oid).toBe(7);
    expect(new TransactionError("wrong").code).toBe("transaction");
    expect(new TransactionError("closed", "closed").code).toBe("closed");
    expect(new StorageError("failed").code).toBe("storage");
    expect(new StorageError("gone", { code: "disconnected" }).code).toBe("disconnected");
    for (const e of [conflict, new StorageError("x"), new TransactionError("y")]) {
      expect(e).toBeInstanceOf(AmberError);
      expect(e.name).toBe(e.constructor.name);
    }
  });

  it("turns a code outside the list (from a server) into \"server\", keeping the message and cause", () => {
    const cause = new Error("ENOENT: no such file");
    const e = new StorageError("server: ENOENT: no such file", { code: "ENOENT", cause, oid: 3 });
    expect(e.code).toBe("server");
    expect(e.message).toContain("ENOENT");
    expect(e.cause).toBe(cause);
    expect(e.oid).toBe(3);
  });
});
