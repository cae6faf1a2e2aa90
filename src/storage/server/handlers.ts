/**
 * The storage server's command handlers, one per command of protocol.ts (HELLO aside: it
 * comes before a database is chosen, served-client.ts answers it).
 *
 * A handler parses the whole request synchronously, so a malformed one throws (a
 * ProtocolError) before anything runs and the requests pipelined behind it never run
 * either; then it does the work and returns the reply frame, or a promise of it when the
 * work is asynchronous. An error other than a ProtocolError becomes an ERROR reply.
 */
import { StorageError } from "../../errors.ts";
import { closureLimits, walkClosure } from "../closure.ts";
import { checkPlan, walkPlan } from "../plan-walk.ts";
import type { CommitRequest, StoredRecord, TransactionInfo } from "../storage.ts";
import type { Hosted } from "./hosted.ts";
import { CLIENT_MAX_FRAME, Cmd, COMMIT_ID_KEY, FrameWriter, Reply, type Command, type FrameReader } from "./protocol.ts";

/** What a handler may use of the client that sent the request. */
export interface ClientContext {
  readonly hosted: Hosted;
  /** This connection's voted transactions, by vote id (forgotten with the connection). */
  readonly voted: Map<number, CommitRequest>;
  /** The connection is gone (a vote that completes now is not kept). */
  readonly closed: boolean;
}

export type Handler = (r: FrameReader, client: ClientContext) => Buffer | Promise<Buffer>;

const ok = (r: FrameReader, capacity?: number) => new FrameWriter(r.id, Reply.OK, capacity);

/** Every command but HELLO: a new command does not compile without its handler. */
export const handlers: Readonly<Record<Exclude<Command, typeof Cmd.HELLO>, Handler>> = {
  [Cmd.LAST_TID]: (r, { hosted }) => {
    r.end();
    // After every invalidation sent before the request: a commit reported elsewhere is seen.
    return hosted.poll().then(() => ok(r).num(hosted.lastBroadcast).finish());
  },

  [Cmd.LOAD]: (r, { hosted }) => {
    const at = r.id53("tid");
    const oids = r.nums();
    r.end();
    const s = hosted.storage;
    const loadOne = s.loadOneSync;
    if (loadOne === undefined) {
      return s.load(oids, at).then((records) => ok(r, 64 + records.reduce((n, rec) => n + 24 + (rec?.data.length ?? 0), 0)).records(records).finish());
    }
    // Borrowed bytes go straight into the reply: no copy per record.
    const w = ok(r, 64 + 128 * oids.length).u32(oids.length);
    for (const oid of oids) w.record(loadOne.call(s, oid, at, true));
    return w.finish();
  },

  [Cmd.LOAD_CLOSURE]: (r, { hosted }) => {
    const at = r.id53("tid");
    const oid = r.id53("oid");
    const maxObjects = r.id53("maxObjects");
    // Replies are bounded by what a client accepts, not by the server's request limit.
    const maxBytes = Math.min(r.id53("maxBytes"), CLIENT_MAX_FRAME / 2);
    const have = r.nums();
    const cached = r.pairs("cached records");
    r.end();
    const options = { maxObjects, maxBytes, have };
    closureLimits(options);
    const s = hosted.storage;
    const loadOne = s.loadOneSync;
    if (loadOne === undefined) {
      return s.loadClosure(oid, at, options).then((walk) => ok(r).records(walk.records).nums([]).u8(walk.truncated ? 1 : 0).nums(walk.missing).finish());
    }
    const w = ok(r, 64 * 1024);
    const stream = recordStream(w);
    const walk = walkClosure((o) => loadOne.call(s, o, at, true), oid, options, stream.emit, cached);
    stream.end();
    return w.nums(walk.held).u8(walk.truncated ? 1 : 0).nums(walk.missing).finish();
  },

  [Cmd.LOAD_PLAN]: (r, { hosted }) => {
    const at = r.id53("tid");
    const steps = r.msgpack();
    const have = r.nums();
    const cached = r.pairs("cached records");
    r.end();
    checkPlan(steps);
    const options = { have, maxBytes: CLIENT_MAX_FRAME / 2 };
    const s = hosted.storage;
    const loadOne = s.loadOneSync;
    if (loadOne === undefined) {
      return s.loadPlan(steps, at, options).then((p) => {
        const w = ok(r).records(p.records).u32(p.groups.length);
        for (const g of p.groups) w.nums(g);
        return w.msgpack(p.missing).finish();
      });
    }
    const w = ok(r, 64 * 1024);
    const stream = recordStream(w);
    const walk = walkPlan((o) => loadOne.call(s, o, at, true), steps, options, stream.emit, cached);
    stream.end().u32(walk.groups.length);
    for (const g of walk.groups) w.nums(g);
    return w.msgpack(walk.missing).finish();
  },

  [Cmd.LOAD_BEFORE]: (r, { hosted }) => {
    const oid = r.id53("oid");
    const before = r.id53("tid");
    r.end();
    return hosted.storage.loadBefore(oid, before).then((rec) => ok(r).records([rec]).finish());
  },

  [Cmd.HISTORY]: (r, { hosted }) => {
    const oid = r.id53("oid");
    const limit = r.id53("limit");
    r.end();
    return hosted.storage.history(oid, limit === 0 ? undefined : limit).then((recs) => ok(r).records(recs).finish());
  },

  [Cmd.NEW_OIDS]: (r, { hosted }) => {
    const count = r.u32();
    r.end();
    return hosted.storage.newOids(count).then((oids) => ok(r).nums(oids).finish());
  },

  [Cmd.VOTE]: (r, client) => {
    const voteId = r.u32();
    const request = r.request();
    r.end();
    return client.hosted.storage.vote(request).then((conflicts) => {
      if (conflicts.length === 0 && !client.closed) client.voted.set(voteId, request);
      return ok(r).conflicts(conflicts).finish();
    });
  },

  [Cmd.FINISH]: (r, client) => {
    const voteId = r.u32();
    r.end();
    const request = client.voted.get(voteId);
    if (request === undefined) throw new StorageError(`no voted transaction ${voteId} on this connection`, { code: "no-vote" });
    client.voted.delete(voteId);
    return client.hosted.commit(request).then((tid) => ok(r).num(tid).finish());
  },

  [Cmd.COMMIT]: (r, { hosted }) => {
    const request = r.request();
    r.end();
    return hosted.commit(request).then((tid) => ok(r).num(tid).finish());
  },

  [Cmd.ABORT]: (r, client) => {
    const voteId = r.u32();
    r.end();
    const request = client.voted.get(voteId);
    client.voted.delete(voteId);
    return (request === undefined ? Promise.resolve() : client.hosted.storage.abort(request)).then(() => ok(r).finish());
  },

  [Cmd.CHANGES_SINCE]: (r, { hosted }) => {
    const since = r.id53("tid");
    r.end();
    return hosted.storage.changesSince(since).then((changes) => ok(r).changes(changes).finish());
  },

  [Cmd.TRANSACTIONS]: (r, { hosted }) => {
    const since = r.id53("tid");
    const limit = r.id53("limit");
    r.end();
    return hosted.storage.transactions(since, limit === 0 ? undefined : limit).then((txns) => ok(r).msgpack(txns.map(withoutCommitId)).finish());
  },

  [Cmd.UNDO]: (r, { hosted }) => {
    const tid = r.id53("tid");
    r.end();
    return hosted.serialize(async () => {
      const t = await hosted.storage.undo(tid);
      await hosted.broadcast();
      return ok(r).num(t).finish();
    });
  },

  [Cmd.COMMIT_STATUS]: (r, { hosted }) => {
    const id = r.msgpack();
    const since = r.id53("tid");
    r.end();
    if (typeof id !== "string" || id.length === 0) throw new StorageError("COMMIT_STATUS needs a commit id (a string)", { code: "storage" });
    return hosted.commitStatus(id, since).then(({ outcome, tid }) => ok(r).u8(outcome).num(tid).finish());
  },
};

/** A transaction as clients see it: the commit id is the protocol's, not the application's. */
function withoutCommitId(t: TransactionInfo): TransactionInfo {
  if (!(COMMIT_ID_KEY in t.meta)) return t;
  const { [COMMIT_ID_KEY]: _id, ...meta } = t.meta;
  return { ...t, meta };
}

/**
 * Records written into a reply as a walk finds them (borrowed bytes, no copy): a count,
 * patched in by `end()`, then each record; one the client holds a copy of is sent as its
 * oid and serial with no bytes.
 */
function recordStream(w: FrameWriter): { emit: (rec: StoredRecord, cachedCopy: boolean) => void; end: () => FrameWriter } {
  const countAt = w.position;
  w.u32(0);
  let count = 0;
  return {
    emit(rec, cachedCopy) {
      if (cachedCopy) w.num(rec.oid).num(rec.serial).bytes(null);
      else w.record(rec);
      count++;
    },
    end: () => w.patchU32(countAt, count),
  };
}
