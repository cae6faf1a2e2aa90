import { inject } from "vitest";
import { storageContract } from "../contract.ts";
import { ClientStorage } from "./client-storage.ts";

let n = 0;
const fresh = () => ClientStorage.open(`${inject("amberServer")}/contract${process.pid}_${++n}`);

storageContract("server (client storage against a real amber serve process)", fresh, {
  reopen: (closed) => ClientStorage.open(closed.url),
});
