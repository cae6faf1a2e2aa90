/**
 * What one round trip to a storage server costs, against the floor of this machine: a
 * raw TCP ping-pong of 16 bytes between two Node processes on loopback (same run).
 * Rows: raw TCP; an async load of one record; a synchronous load of one record (a ghost
 * touched in plain code: worker thread + Atomics.wait); an async LAST_TID.
 * `tsx bench/round-trip.ts [--n 2000]`
 */
import { spawn } from "node:child_process";
import net from "node:net";
import { ClientStorage } from "../src/storage/server/client-storage.ts";
import { startServer } from "../test/server-process.ts";
import { argValue, median, now } from "./lib.ts";

const N = Number(argValue("--n", "2000"));
const server = await startServer("memory:");
const echo = spawn(
  process.execPath,
  ["-e", "require('net').createServer(s=>{s.setNoDelay(true);s.on('data',d=>s.write(d))}).listen(0,'127.0.0.1',function(){console.log(this.address().port)})"],
  { stdio: ["ignore", "pipe", "inherit"] },
);
try {
  const port = await new Promise<number>((resolve) => echo.stdout!.once("data", (d) => resolve(Number(String(d)))));
  const sock = net.connect(port, "127.0.0.1");
  sock.setNoDelay(true);
  await new Promise((resolve) => sock.once("connect", resolve));
  const s = await ClientStorage.open(server.url, { clientCacheBytes: 0 });
  const at = await s.lastTid();
  const rows: Record<string, number[]> = { "raw TCP ping (baseline)": [], "async load, 1 record": [], "sync load, 1 record (ghost touch)": [], "async LAST_TID": [] };
  for (let round = 0; round < 4; round++) {
    const timed = async (name: string, fn: (i: number) => unknown) => {
      const t0 = now();
      for (let i = 0; i < N; i++) await fn(i);
      if (round > 0) rows[name]!.push(((now() - t0) * 1000) / N);
    };
    await timed("raw TCP ping (baseline)", () => {
      const p = new Promise((resolve) => sock.once("data", resolve));
      sock.write(Buffer.alloc(16));
      return p;
    });
    await timed("async load, 1 record", (i) => s.load([1 + i], at));
    await timed("sync load, 1 record (ghost touch)", (i) => s.loadSync([1 + i], at));
    await timed("async LAST_TID", () => s.lastTid());
  }
  const base = median(rows["raw TCP ping (baseline)"]!);
  console.log("| round trip | µs (median of 3 × " + N + ") | × raw TCP |");
  console.log("|---|---|---|");
  for (const [name, xs] of Object.entries(rows)) console.log(`| ${name} | ${median(xs).toFixed(1)} | ${(median(xs) / base).toFixed(2)} |`);
  sock.destroy();
  await s.close();
} finally {
  echo.kill();
  await server.stop();
}
