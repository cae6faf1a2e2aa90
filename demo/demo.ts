/**
 * The amberdb demo: an application on the embedded default storage.
 *
 *   npm run demo
 *
 * It creates ./data/demo, stores a small object graph, reads it back in a second process,
 * provokes a write conflict between the two processes, resolves it with a retried
 * transaction, and prints what happened at each step.
 */
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { ConflictError, DB, oidOf, serialOf, stateOf } from "../src/index.ts";
import { Author, Book, Isbn } from "./model.ts";

// AMBER_DEMO_PATH lets the tests run the demo in a temporary directory.
const path = process.env.AMBER_DEMO_PATH ?? "./data/demo";
const role = process.argv[2];

if (role === "--reader") {
  // The second process: open the same database and report what it finds.
  const db = await DB.open(path);
  const root = db.open().root();
  const books = root.get("books") as Book[];
  console.log(`   [reader pid ${process.pid}] sees ${books.length} books:`);
  for (const b of books) console.log(`     - "${b.title}" by ${b.author!.name}, ${b.isbn}, ${b.copies} copies, tags ${b.tags.join("/")}`);
  await db.close();
} else if (role === "--writer") {
  // The second process again: change a book that the first process is also changing.
  const db = await DB.open(path);
  await db.transact((root) => {
    const book = (root.get("books") as Book[])[0]!;
    book.copies += 10;
  });
  console.log(`   [writer pid ${process.pid}] added 10 copies and committed`);
  await db.close();
} else {
  rmSync(path, { recursive: true, force: true });
  const self = fileURLToPath(import.meta.url);
  const second = (arg: string) =>
    process.stdout.write(execFileSync(process.execPath, ["--import", "tsx", self, arg], { encoding: "utf8" }));

  console.log(`1. Creating an embedded database at ${path} (LMDB, durable commits)`);
  const db = await DB.open(path);

  console.log("2. Storing an object graph in one transaction");
  await db.transact((root) => {
    const ursula = Object.assign(new Author(), { name: "Ursula K. Le Guin" });
    const books = [
      Object.assign(new Book(), { title: "The Dispossessed", isbn: new Isbn("978-0061054884"), copies: 3, tags: ["sf"] }),
      Object.assign(new Book(), { title: "A Wizard of Earthsea", isbn: new Isbn("978-0547773742"), copies: 5, tags: ["fantasy"] }),
    ];
    for (const b of books) {
      b.author = ursula;
      ursula.books.push(b);
    }
    root.set("books", books);
    root.set("authors", [ursula]);
  });
  const conn = db.open();
  const first = (conn.root().get("books") as Book[])[0]!;
  console.log(`   stored "${first.title}" as oid ${oidOf(first)}, serial ${serialOf(first)}`);

  console.log("3. Reopening the database in a second process");
  second("--reader");

  console.log("4. Provoking a conflict: this process and another change the same book");
  first.copies += 1;
  console.log(`   here: copies ${first.copies - 1} -> ${first.copies} (not committed yet, state "${stateOf(first)}")`);
  second("--writer");
  try {
    await conn.commit();
    console.log("   unexpected: the commit succeeded");
  } catch (err) {
    if (!(err instanceof ConflictError)) throw err;
    console.log(`   commit refused: ${err.name}: ${err.message}`);
    conn.abort();
    console.log(`   after abort this process sees the other's value: ${first.copies} copies`);
  }

  console.log("5. Retrying the same change with db.transact (re-runs on a fresh snapshot)");
  await db.transact((root) => {
    (root.get("books") as Book[])[0]!.copies += 1;
  });
  conn.abort();
  console.log(`   committed: "${first.title}" now has ${first.copies} copies (3 + 10 by the other process + 1 here)`);
  await conn.close();
  await db.close();
  console.log(`Done. Inspect the store with: npx amber info ${path}`);
}
