import { afterEach, describe, expect, inject, it } from "vitest";
import { storageContract } from "../contract.ts";
import { ClientStorage } from "./client-storage.ts";

let n = 0;
const fresh = () => ClientStorage.open(`${inject("amberServer")}/contract${process.pid}_${++n}`);

storageContract("server (client storage against a real amber serve process)", fresh, { describe, it, expect, afterEach }, {
  reopen: (closed) => ClientStorage.open(closed.url),
  openAgain: (first) => ClientStorage.open(first.url),
  skip: {
    resolveInFinish: "remote: the server has no application classes; a conflict at finish goes back to the client, which votes again",
    planMaxBytes: "a gap: the LOAD_PLAN request does not carry maxBytes (the server applies its frame limit only)",
  },
});
