/**
 * The socket half of the client storage (client-storage.ts), in a worker thread.
 *
 * It owns the TCP/TLS socket and does nothing but move frames: frames from the main
 * thread go to the socket as they are; bytes from the socket are cut into whole frames
 * (by the length prefix of protocol.ts) and posted to the main thread, in the order the
 * server sent them. After every post it bumps `signal[0]` and wakes any `Atomics.wait`
 * on it: that is how the main thread can block on a reply (a ghost touched in
 * synchronous code) while this thread keeps reading the socket.
 *
 * Plain JavaScript on purpose: a worker does not inherit the TypeScript loader of the
 * process that starts it.
 *
 * Messages from the main thread:  {type: "connect"} | {type: "send", frames} | {type: "close-socket"}
 *                                 | {type: "close"}
 * Messages to the main thread:    {type: "connected"} | {type: "frames", frames}
 *                                 | {type: "disconnected", error, pending}
 */
import net from "node:net";
import tls from "node:tls";
import { workerData } from "node:worker_threads";

const { port, signal, host, portNumber, tlsOptions, maxFrame, connectTimeoutMs } = workerData;

/** @type {net.Socket | null} */
let socket = null;
/** @type {Buffer[]} */
let chunks = [];
let buffered = 0;

function post(message, transfer) {
  port.postMessage(message, transfer);
  Atomics.add(signal, 0, 1);
  Atomics.notify(signal, 0);
}

function connect() {
  if (socket !== null) {
    post({ type: "connected" });
    return;
  }
  chunks = [];
  buffered = 0;
  let lastError = null;
  let connected = false;
  const s = tlsOptions ? tls.connect({ host, port: portNumber, ...tlsOptions }) : net.connect({ host, port: portNumber });
  socket = s;
  s.setNoDelay(true);
  s.setTimeout(connectTimeoutMs, () => {
    if (!connected) s.destroy(new Error(`no connection within ${connectTimeoutMs} ms`));
  });
  s.once(tlsOptions ? "secureConnect" : "connect", () => {
    connected = true;
    s.setTimeout(0);
    post({ type: "connected" });
  });
  s.on("data", (chunk) => {
    if (socket !== s) return;
    try {
      const frames = split(chunk);
      if (frames.length > 0) post({ type: "frames", frames }, frames);
    } catch (err) {
      lastError = err;
      s.destroy();
    }
  });
  s.on("error", (err) => {
    lastError = err;
  });
  s.once("close", () => {
    // A socket the main thread already dropped ("close-socket") says nothing more.
    if (socket !== s) return;
    socket = null;
    post({ type: "disconnected", error: lastError === null ? "the server closed the connection" : String(lastError.message), pending: buffered });
  });
}

/** Whole frames completed by `chunk`, each copied into its own transferable ArrayBuffer. */
function split(chunk) {
  chunks.push(chunk);
  buffered += chunk.length;
  const frames = [];
  while (buffered >= 4) {
    if (chunks[0].length < 4) chunks = [Buffer.concat(chunks, buffered)];
    const length = chunks[0].readUInt32BE(0);
    if (length < 5 || length > maxFrame) throw new Error(`the server sent a frame length of ${length} (allowed: 5 to ${maxFrame})`);
    if (buffered < length + 4) break;
    const all = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, buffered);
    const frame = new Uint8Array(length + 4);
    frame.set(all.subarray(0, length + 4));
    frames.push(frame.buffer);
    const rest = all.subarray(length + 4);
    chunks = rest.length > 0 ? [rest] : [];
    buffered = rest.length;
  }
  return frames;
}

port.on("message", (message) => {
  switch (message.type) {
    case "connect":
      connect();
      break;
    case "send":
      // Frames sent while disconnected are dropped: the main thread fails their requests
      // when it learns of the disconnection.
      if (socket !== null) for (const f of message.frames) socket.write(new Uint8Array(f));
      break;
    case "close-socket":
      if (socket !== null) {
        const s = socket;
        socket = null; // a "connect" from now on makes a new socket
        s.destroy();
      }
      break;
    case "close":
      if (socket !== null) socket.destroy();
      port.close();
      break;
  }
});
