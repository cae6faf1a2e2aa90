/**
 * An amber:// client pointed at something that is not an amber server: DB.open fails with a
 * ProtocolError saying that host:port does not speak the amber protocol, what was expected
 * and what came instead, rather than a broken frame length. Real servers on 127.0.0.1.
 */
import http from "node:http";
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { DB, ProtocolError } from "../src/index.ts";
import { openDB, serverUrl } from "./helpers.ts";

const servers: net.Server[] = [];
const sockets = new Set<net.Socket>();
afterEach(async () => {
  for (const s of sockets) s.destroy();
  sockets.clear();
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
});

/** Listen on 127.0.0.1, a free port; the test's connections are closed after it. */
async function listen(server: net.Server): Promise<number> {
  servers.push(server);
  server.on("connection", (socket: net.Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as net.AddressInfo).port;
}

async function openFails(url: string): Promise<ProtocolError> {
  const err = await DB.open(url, { connectTimeoutMs: 10_000 }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(ProtocolError);
  return err as ProtocolError;
}

describe("a client pointed at a port that is not an amber server", () => {
  it("an HTTP server: names host:port, the expected HELLO reply and the HTTP reply found", async () => {
    let requests = 0;
    const port = await listen(http.createServer((_req, res) => void (requests++, res.end("hello"))));
    const err = await openFails(`amber://127.0.0.1:${port}/shop`);
    expect(err.code).toBe("protocol");
    expect(err.message).toMatch(new RegExp(`^127\\.0\\.0\\.1:${port} does not speak the amber protocol: expected the reply to HELLO`));
    expect(err.message).toContain('"HTTP/1.1 400 Bad Request');
    expect(err.message).toContain("(an HTTP server)");
    expect(err.message).toContain(`amber://127.0.0.1:${port}/shop`);
    expect(err.message).not.toContain("\n");
    expect(requests).toBe(0); // the HTTP server saw no valid request either
  });

  it("a server that writes a few bytes of text and hangs up", async () => {
    const port = await listen(net.createServer((socket) => socket.resume().end("NO\n")));
    const err = await openFails(`amber://127.0.0.1:${port}`);
    expect(err.message).toMatch(new RegExp(`^127\\.0\\.0\\.1:${port} does not speak the amber protocol`));
    expect(err.message).toContain("found 3 bytes, less than a whole frame, and then the connection was closed");
    expect(err.message).toContain('"NO\\n"');
  });

  it("a server whose first frame has a plausible length but is no reply to HELLO", async () => {
    // length 10, request id 1, kind 7 (a command, not a reply), then junk
    const port = await listen(net.createServer((socket) => socket.resume().write(Buffer.from([0, 0, 0, 10, 0, 0, 0, 1, 7, 1, 2, 3, 4, 5]))));
    const err = await openFails(`amber://127.0.0.1:${port}`);
    expect(err.message).toMatch(new RegExp(`^127\\.0\\.0\\.1:${port} does not speak the amber protocol`));
    expect(err.message).toContain("found a frame of kind 7");
    expect(err.message).toContain("00 00 00 0a 00 00 00 01 07 01 02 03 04 05 (hex)");
  });

  it("a server that answers with a well-formed OK frame whose payload is not a HELLO reply", async () => {
    const port = await listen(
      net.createServer((socket) => {
        socket.once("data", (hello) => {
          const id = hello.readUInt32BE(4);
          const payload = Buffer.from([0, 0, 0, 1, 0xc0]); // bytes of length 1 holding msgpack nil
          const frame = Buffer.alloc(9 + payload.length);
          frame.writeUInt32BE(5 + payload.length, 0);
          frame.writeUInt32BE(id, 4);
          frame[8] = 128;
          payload.copy(frame, 9);
          socket.write(frame);
        });
      }),
    );
    const err = await openFails(`amber://127.0.0.1:${port}`);
    expect(err.message).toBe(
      `127.0.0.1:${port} does not speak the amber protocol: expected the reply to HELLO to hold {version, storageId, tid, history, maxFrame}, found null`,
    );
  });

  it("the start of an amber reply cut short by a hang-up is a lost connection, not a foreign server", async () => {
    const port = await listen(
      net.createServer((socket) => {
        socket.once("data", (hello) => {
          const start = Buffer.alloc(9);
          start.writeUInt32BE(100, 0); // promises 100 bytes
          start.writeUInt32BE(hello.readUInt32BE(4), 4);
          start[8] = 128;
          socket.end(start);
        });
      }),
    );
    const err = await DB.open(`amber://127.0.0.1:${port}`).catch((e: unknown) => e);
    expect(err).not.toBeInstanceOf(ProtocolError);
    expect((err as { code?: string }).code).toBe("disconnected");
    expect((err as Error).message).toMatch(/lost the connection to amber:\/\/127\.0\.0\.1:\d+: the server closed the connection/);
  });

  it("a real amber server still opens", async () => {
    const db = await openDB(serverUrl());
    expect(await db.lastTid()).toBeGreaterThan(0);
    await db.close();
  });
});
