/**
 * What a transaction boundary costs in round trips, as `expectRoundTrips` counts them (and
 * as README and amberdb/testing document it):
 *
 * - Beginning a transaction asks the storage what changed (`changesSince`, the storage
 *   contract's rule): one round trip on every storage, a LAST_TID request on a server with
 *   the default `serverSync`, none on a server with `serverSync: false`.
 * - A transaction begins when a connection is opened (or taken from the pool), after
 *   `abort()` and after a commit; `close()` only discards changes and counts nothing (the
 *   next checkout begins its own transaction).
 * - On a server, the transaction that begins right after the connection's own commit costs
 *   nothing: the commit's reply came after every earlier invalidation.
 */
import { afterAll, describe, expect, it } from "vitest";
import { type DB } from "../src/index.ts";
import { countRoundTrips, expectRoundTrips } from "../src/testing/index.ts";
import { cleanupDirs, openDB, serverUrl, storages } from "./helpers.ts";

afterAll(cleanupDirs);

const cases = [
  ...storages.map((s) => ({ name: s.name, url: s.url, serverSync: undefined as boolean | undefined, begin: 1 })),
  ...storages.filter((s) => s.name === "server").map((s) => ({ name: "server, serverSync: false", url: s.url, serverSync: false, begin: 0 })),
];

describe.each(cases)("round trips of transaction boundaries on $name", ({ url, serverSync, begin }) => {
  async function setup(): Promise<DB> {
    const db = await openDB(url(), serverSync === undefined ? {} : { serverSync });
    await db.transact((root) => root.set("k", 1));
    return db;
  }

  it("close() counts no round trip (it discards changes; the next checkout begins)", async () => {
    const db = await setup();
    const conn = db.open();
    expect(conn.root().get("k")).toBe(1);
    await expectRoundTrips(0, () => conn.close());
    // The same for a connection opened with options of its own (not pooled, dropped at close).
    const own = db.open({ cacheSize: 50 });
    expect(own.root().get("k")).toBe(1);
    await expectRoundTrips(0, () => own.close());
    // Taken from the pool again, it begins a transaction.
    await expectRoundTrips(begin, () => db.open());
    // A connection already closed costs nothing.
    await expectRoundTrips(0, () => conn.close());
    await db.close();
  });

  it(`opening a connection, abort() and a commit with nothing to write each count ${begin}`, async () => {
    const db = await setup();
    const conn = await expectRoundTrips(begin, () => db.open());
    await expectRoundTrips(begin, () => conn.abort());
    await expectRoundTrips(begin, () => conn.commit());
    await conn.close();
    await db.close();
  });

  it("a transact that only reads costs its begin and its empty commit, and its loads", async () => {
    const db = await setup();
    const c = await countRoundTrips(() => db.transact((root) => root.get("k")));
    // db.open(): begin; the root, cached by the pooled connection, needs no load; the empty
    // commit begins again; close() begins nothing.
    expect(c.roundTrips).toBe(2 * begin);
    await db.close();
  });
});

describe("on a server, the begin after the connection's own commit costs nothing", () => {
  it("a commit costs the same round trips with serverSync on and off", async () => {
    const counts: number[] = [];
    for (const serverSync of [true, false]) {
      const db = await openDB(serverUrl(), { serverSync });
      await db.transact((root) => root.set("k", 1));
      const conn = db.open();
      conn.root().set("k", 2);
      counts.push((await countRoundTrips(() => conn.commit())).roundTrips);
      // ... while a begin without a commit before it costs one more with serverSync on.
      counts.push((await countRoundTrips(() => conn.abort())).roundTrips);
      await conn.close();
      await db.close();
    }
    const [commitSync, abortSync, commitNoSync, abortNoSync] = counts;
    expect(commitSync).toBe(commitNoSync);
    expect(abortSync).toBe(1);
    expect(abortNoSync).toBe(0);
  });
});
