/**
 * The amberdb wire protocol, spoken between `amber serve` (storage-server.ts) and the
 * client storage (client-storage.ts). Both sides import this module; the client's socket
 * worker (client-worker.mjs) knows only the frame length prefix below.
 *
 * FRAMES. Every message is one frame:
 *
 *   offset  size  field
 *   0       4     length L of the rest of the frame (big-endian u32, 5 <= L <= maxFrame)
 *   4       4     request id (big-endian u32): chosen by the client, echoed by the reply;
 *                 0 for messages the server pushes on its own
 *   8       1     kind: a command (client to server) or a reply/push kind (server to client)
 *   9       L-5   payload, laid out per kind (below)
 *
 * A client may send many requests before the first reply arrives (pipelining); replies
 * carry the request id and may come in any order. The first frame of a connection must
 * be HELLO; the server reads nothing else before the token is checked, and until then
 * accepts frames of at most PRE_AUTH_MAX_FRAME bytes. The first frame the
 * server sends is the reply to HELLO (OK or ERROR, with HELLO's request id) or a push
 * (CLOSING, request id 0); a client that receives anything else first (bytes that are not
 * such a frame: an HTTP server's "HTTP/1.1 400 ...", whose first four bytes read as a
 * length of 1213486160) reports that the address does not speak the amber protocol.
 *
 * PAYLOAD TYPES. u8, u32 (big-endian), num (f64 little-endian: oids and tids are integers
 * below 2^53, so a double holds them exactly), bytes (u32 length, then the bytes; length
 * 0xFFFFFFFF means null), msgpack (bytes holding one MessagePack value), and lists
 * (u32 count, then the items).
 *
 *   command         payload                                         reply payload (OK)
 *   HELLO           msgpack {version, token?, database, since?,     msgpack HelloReply
 *                   create?}
 *   LAST_TID        -                                               num tid
 *   LOAD            num at, list of num oid                         records
 *   LOAD_CLOSURE    num at, num oid, num maxObjects, num maxBytes,  records, list of num held,
 *                   list of num have, list of (num oid, num serial) u8 truncated, list of num missing
 *                   cached
 *
 *     The server walks the references breadth-first. `have` records are walked through,
 *     not sent, not counted. A `cached` record whose serial matches is counted against the
 *     limits in its place but sent without its bytes (data null): the client has them.
 *   LOAD_PLAN       num at, msgpack PlanStep[], list of num have,   records (as LOAD_CLOSURE),
 *                   list of (num oid, num serial) cached            u32 n, n lists of num (the
 *                                                                   groups), msgpack missing
 *   LOAD_BEFORE     num oid, num before                             records (one)
 *   HISTORY         num oid, num limit (0: no limit)                records
 *   NEW_OIDS        u32 count                                       list of num oid
 *   VOTE            u32 voteId, request                             conflicts
 *   FINISH          u32 voteId                                      num tid
 *   COMMIT          request (vote and finish in one)                num tid
 *   ABORT           u32 voteId                                      -
 *   CHANGES_SINCE   num since                                       changes
 *   TRANSACTIONS    num since, num limit (0: no limit)              msgpack TransactionInfo[]
 *   UNDO            num tid                                         num tid
 *   COMMIT_STATUS   msgpack commitId, num since                     u8 outcome, num tid
 *
 *     What became of the commit carrying `commitId` (below), sent when the client knew the
 *     database up to tid `since`: COMMITTED (with its tid), NOT_COMMITTED (and the server
 *     makes sure it never will be: a FINISH or COMMIT with that id is refused from now on),
 *     or UNKNOWN (the transaction log no longer reaches back to `since`). Answered in commit
 *     order, after every commit the server had received before it.
 *
 *   records    list of (num oid, num serial, bytes data); serial 0 stands for null
 *   request    list of (num oid, num serial, bytes data), list of (num oid, num serial),
 *              msgpack meta (or nil)
 *   conflicts  list of (num oid, num readSerial, num committedSerial, u8 readOnly,
 *              bytes committedData)
 *   changes    num tid, u8 all (1: everything may have changed), list of num oid
 *
 *   ERROR (reply)        msgpack {type, message, code, oid?, conflicts?}
 *   INVALIDATE (push)    changes: the oids written by transactions up to tid, sent to every
 *                        client after each commit, before the committer's own reply
 *   CLOSING (push)       msgpack {reason}: the server is shutting down
 *
 * COMMIT IDS. A client puts a unique id in the metadata of each transaction it votes or
 * commits, under the key COMMIT_ID_KEY ("amber.commitId"), so that after losing the
 * connection during a commit it can ask COMMIT_STATUS. The storage keeps it with the
 * transaction (the server removes the key from TRANSACTIONS replies); the server also
 * remembers the ids of the recent commits it made, and a repeated id is never committed
 * twice.
 *
 * A frame that breaks these rules (too long, too short, truncated, an unknown kind, a
 * payload that does not parse) is a `ProtocolError`: the receiver logs it and closes
 * that one connection.
 */
import { ConflictError, ProtocolError, StorageError, type ConflictDetail } from "../../errors.ts";
import type { Tid } from "../storage.ts";
import { FrameWriter, type FrameReader } from "./protocol-frames.ts";

export { FrameReader, FrameSplitter, FrameWriter, HEADER, packValue } from "./protocol-frames.ts";

/** 2: commit ids and COMMIT_STATUS. */
export const PROTOCOL_VERSION = 2;
/** Default largest frame a server accepts (the client accepts up to CLIENT_MAX_FRAME). */
export const DEFAULT_MAX_FRAME = 64 * 1024 * 1024;
export const CLIENT_MAX_FRAME = 1024 * 1024 * 1024;
/** The largest frame a server reads before the client has authenticated (HELLO). */
export const PRE_AUTH_MAX_FRAME = 16 * 1024;
/** The transaction metadata key that carries a commit's id (see COMMIT IDS). */
export const COMMIT_ID_KEY = "amber.commitId";
export const DEFAULT_PORT = 7700;

export const Cmd = {
  HELLO: 1,
  LAST_TID: 2,
  LOAD: 3,
  LOAD_CLOSURE: 4,
  LOAD_BEFORE: 5,
  HISTORY: 6,
  NEW_OIDS: 7,
  VOTE: 8,
  FINISH: 9,
  COMMIT: 10,
  ABORT: 11,
  CHANGES_SINCE: 12,
  TRANSACTIONS: 13,
  UNDO: 14,
  LOAD_PLAN: 15,
  COMMIT_STATUS: 16,
} as const;
export type Command = (typeof Cmd)[keyof typeof Cmd];

export const Reply = {
  OK: 128,
  ERROR: 129,
  INVALIDATE: 130,
  CLOSING: 131,
} as const;

/** The answer to COMMIT_STATUS. */
export const CommitOutcome = {
  NOT_COMMITTED: 0,
  COMMITTED: 1,
  UNKNOWN: 2,
} as const;

const commandNames = new Map<number, string>(Object.entries(Cmd).map(([k, v]) => [v, k]));
/** The name of a command kind, for messages; undefined for an unknown kind. */
export function commandName(kind: number): string | undefined {
  return commandNames.get(kind);
}

export interface Hello {
  version: number;
  token?: string;
  /** The database name: the path of the amber:// URL without its leading slash. */
  database: string;
  /** The client knows the database up to this tid: send what changed since (reconnecting, or a saved cache). */
  since?: Tid;
  /**
   * false: a database that does not exist yet is not created for this client (the HELLO
   * fails with code "not-found"). Default true. Only matters for `{name}` stores.
   */
  create?: boolean;
}

export interface HelloReply {
  version: number;
  /** Identifies the stored database; a client that sees it change drops its cache. */
  storageId: string;
  /** Every client has been told of every commit up to this tid. */
  tid: Tid;
  history: boolean;
  maxFrame: number;
  /** When HELLO gave `since`: the oids written in (since, tid] (null: cannot tell). */
  changes?: { tid: Tid; oids: number[] | null };
}

/** An error reply: the error turned into data the other side rebuilds with `decodeError`. */
export function encodeError(id: number, err: unknown): Buffer {
  const e = err as { name?: string; message?: string; code?: string; oid?: number; conflicts?: ConflictDetail[] };
  const type =
    err instanceof ConflictError
      ? "ConflictError"
      : err instanceof StorageError
        ? "StorageError"
        : err instanceof ProtocolError
          ? "ProtocolError"
          : err instanceof TypeError
            ? "TypeError"
            : err instanceof RangeError
              ? "RangeError"
              : "Error";
  return new FrameWriter(id, Reply.ERROR)
    .msgpack({
      type,
      message: String(e?.message ?? err),
      code: typeof e?.code === "string" ? e.code : undefined,
      oid: typeof e?.oid === "number" ? e.oid : undefined,
      conflicts: err instanceof ConflictError ? err.conflicts : undefined,
    })
    .finish();
}

export function decodeError(r: FrameReader, server: string): Error {
  const v = r.msgpack() as { type?: string; message?: string; code?: string; oid?: number; conflicts?: ConflictDetail[] } | undefined;
  const message = typeof v?.message === "string" ? v.message : "unknown error";
  switch (v?.type) {
    case "ConflictError":
      return new ConflictError(Array.isArray(v.conflicts) ? v.conflicts : []);
    case "StorageError":
      return new StorageError(message, {
        code: v.code ?? "storage",
        ...(typeof v.oid === "number" ? { oid: v.oid } : {}),
      });
    case "TypeError":
      return new TypeError(message);
    case "RangeError":
      return new RangeError(message);
    case "ProtocolError":
      return new ProtocolError(`${server} refused a request: ${message}`);
    default:
      return new StorageError(`${server}: ${message}`, { code: v?.code ?? "server" });
  }
}
