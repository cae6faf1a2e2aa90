/**
 * Strict mode (SPEC §3): touching a ghost that nothing loaded beforehand throws
 * NotLoadedError naming the class, the oid and the property path that reached it, on every
 * storage, including the storage server (where loading on touch is a network round trip).
 */
import { afterAll, describe, expect, it } from "vitest";
import { DB, NotLoadedError, Persistent, oidOf, persistent, type Connection } from "../src/index.ts";
import { cleanupDirs, openDB, storages } from "./helpers.ts";

@persistent("strict.Branding")
class Branding extends Persistent {
  icon = "";
}

@persistent("strict.Person")
class Person extends Persistent {
  name = "";
  branding: Branding | null = null;
}

@persistent("strict.Bug")
class Bug extends Persistent {
  id = 0;
  reporter: Person | null = null;
  subscribers: Person[] = [];
}

afterAll(cleanupDirs);

async function setup(url: string, options = {}): Promise<DB> {
  const db = await openDB(url, options);
  await db.transact((root) => {
    const bugs: Bug[] = [];
    for (let i = 0; i < 3; i++) {
      const b = new Bug();
      b.id = 10 + i;
      const p = new Person();
      p.name = `p${i}`;
      p.branding = Object.assign(new Branding(), { icon: `icon${i}` });
      b.reporter = p;
      b.subscribers = [p];
      bugs.push(b);
    }
    root.set("bugs", bugs);
  });
  return db;
}

const bugsOf = (conn: Connection): Bug[] => conn.root().get("bugs") as Bug[];

for (const { name, url } of storages) {
  describe(`strict mode on '${name}'`, () => {
    it("a ghost touched without being loaded throws NotLoadedError naming class, oid and path", async () => {
      const db = await setup(url());
      try {
        const conn = db.open({ cacheSize: 1000 });
        const bugs = bugsOf(conn); // loaded before strict mode is on
        conn.strict = true;
        const bug = bugs[1]!;
        let err: unknown;
        try {
          void bug.id;
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(NotLoadedError);
        const e = err as NotLoadedError;
        expect(e.code).toBe("not-loaded");
        expect(e.className).toBe("strict.Bug");
        expect(e.oid).toBe(oidOf(bug));
        // (A PersistentMap holds its entries in its "data" property: that is the path stored.)
        expect(e.message).toMatch(new RegExp(`^strict\\.Bug#${oidOf(bug)} \\(reached as amber\\.PersistentMap#0\\.data\\) is not loaded`));
        // Loaded explicitly, it can be read; what it refers to is still a ghost.
        conn.resetStats();
        await conn.prefetch(bugs);
        expect(conn.stats.roundTrips).toBe(1);
        expect(bug.id).toBe(11);
        const person = bug.reporter!;
        expect(() => person.name).toThrow(new RegExp(`strict\\.Person#${oidOf(person)} \\(reached as amber\\.PersistentMap#0\\.data\\.reporter\\)`));
        await conn.prefetch([person]);
        expect(() => person.branding!.icon).toThrow(
          new RegExp(`strict\\.Branding#\\d+ \\(reached as amber\\.PersistentMap#0\\.data\\.reporter\\.branding\\) is not loaded`),
        );
        // Nothing was loaded behind the application's back.
        expect(conn.stats.loads).toBe(4);
        await conn.close();
      } finally {
        await db.close();
      }
    });

    it("after loadClosure everything reachable can be touched with no I/O; strict = false loads on touch again", async () => {
      const db = await setup(url());
      try {
        const conn = db.open({ strict: true });
        expect(conn.strict).toBe(true);
        const root = conn.root();
        // conn.root() loads the root explicitly, also in strict mode; what it refers to is not.
        expect(() => (root.get("bugs") as Bug[])[0]!.id).toThrow(NotLoadedError);
        await conn.loadClosure(root);
        conn.resetStats();
        const icons = bugsOf(conn).map((b) => `${b.id}:${b.reporter!.name}:${b.subscribers[0]!.branding!.icon}`);
        expect(icons).toEqual(["10:p0:icon0", "11:p1:icon1", "12:p2:icon2"]);
        expect(conn.stats.roundTrips).toBe(0);
        expect(conn.stats.loads).toBe(0);
        // A change by another connection: the next transaction's invalidated objects are ghosts again.
        await db.transact((r) => {
          ((r.get("bugs") as Bug[])[0]!.reporter!).name = "changed";
        }, {});
        conn.abort();
        const first = bugsOf(conn)[0]!;
        expect(() => first.reporter!.name).toThrow(NotLoadedError);
        conn.strict = false;
        expect(first.reporter!.name).toBe("changed");
        expect(() => {
          conn.strict = "yes" as unknown as boolean;
        }).toThrow(TypeError);
        await conn.close();
        const plain = db.open();
        expect(plain.strict).toBe(false);
        await plain.close();
      } finally {
        await db.close();
      }
    });

    it("objects loaded before and new objects are unaffected; DB.open({ strict }) applies to every connection", async () => {
      const db = await setup(url());
      try {
        const conn = db.open({ cacheSize: 1000 });
        const root = conn.root();
        const bugs = root.get("bugs") as Bug[];
        conn.strict = true;
        expect(bugs).toHaveLength(3);
        const p = new Person();
        p.name = "new";
        root.set("extra", p);
        expect(p.name).toBe("new");
        await conn.commit();
        expect(p.name).toBe("new"); // committed in this connection: still loaded
        await conn.close();
      } finally {
        await db.close();
      }
      const sdb = await openDB(url().startsWith("memory:") ? "memory:" : url(), { strict: true });
      try {
        await sdb.transact((root) => root.set("x", new Bug())); // strict mode: root() is usable
        const c = sdb.open({ cacheSize: 100 }); // a new, empty cache: everything but the root is a ghost
        expect(c.strict).toBe(true);
        expect(() => (c.root().get("x") as Bug).id).toThrow(NotLoadedError);
        await c.close();
        const again = sdb.open(); // pooled: the DB's setting again, even after a change
        expect(again.strict).toBe(true);
        again.strict = false;
        await again.close();
        expect(sdb.open().strict).toBe(true);
      } finally {
        await sdb.close();
      }
    });
  });
}
