/**
 * The socket half of the client storage (client-storage.ts), in a worker thread: the
 * worker of its request/response channel (../remote/rpc-channel.ts, whose message
 * contract this follows; the channel adds `port` and `signal` to the worker data).
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
 *                                 | {type: "disconnected", error, pending, foreign?}
 *
 * Until the first whole frame of a socket has arrived, the peer has not yet shown that it
 * speaks the amber protocol: that first frame must be a reply (kind 128 to 131) to the
 * first frame written on the socket (HELLO) or a push (request id 0). When the first bytes
 * break that rule (an HTTP server answering "HTTP/1.1 400", whose first four bytes read as
 * an absurd frame length), or the peer closes after sending less than a frame, the socket
 * is closed and "disconnected" carries `foreign: {head, problem}`: the first bytes received
 * (at most 64) and what was wrong with them, so the main thread can say that the address
 * does not speak the amber protocol instead of reporting a broken frame.
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
/** Has the current socket delivered a whole frame yet? (see the module comment) */
let framed = false;
/** The request id of the first frame written on the current socket (HELLO), or -1. */
let helloId = -1;
/** The first bytes received on the current socket, until it has delivered a frame. */
let head = Buffer.alloc(0);
const HEAD_BYTES = 64;
/** Reply kinds a server sends (protocol.ts Reply: OK, ERROR, INVALIDATE, CLOSING). */
const FIRST_REPLY_KINDS = new Set([128, 129, 130, 131]);

class ForeignPeer extends Error {}

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
  framed = false;
  helloId = -1;
  head = Buffer.alloc(0);
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
    if (!framed && head.length < HEAD_BYTES) head = Buffer.concat([head, chunk.subarray(0, HEAD_BYTES - head.length)]);
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
    let foreign;
    if (lastError instanceof ForeignPeer) foreign = { head: new Uint8Array(head), problem: lastError.message };
    else if (!framed && head.length > 0 && !plausibleStart(head)) {
      foreign = { head: new Uint8Array(head), problem: `${buffered} byte${buffered === 1 ? "" : "s"}, less than a whole frame, and then the connection was closed` };
    }
    post({
      type: "disconnected",
      error: lastError === null ? "the server closed the connection" : String(lastError.message),
      pending: buffered,
      ...(foreign === undefined ? {} : { foreign }),
    });
  });
}

/** Whole frames completed by `chunk`, each copied into its own transferable ArrayBuffer. */
function split(chunk) {
  chunks.push(chunk);
  buffered += chunk.length;
  const frames = [];
  while (buffered >= 4) {
    if (chunks[0].length < (framed ? 4 : 9)) chunks = [Buffer.concat(chunks, buffered)];
    const length = chunks[0].readUInt32BE(0);
    if (!framed) checkFirstFrame(chunks[0], length);
    if (length < 5 || length > maxFrame) throw new Error(`the server sent a frame length of ${length} (allowed: 5 to ${maxFrame})`);
    if (buffered < length + 4) break;
    const all = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, buffered);
    const frame = new Uint8Array(length + 4);
    frame.set(all.subarray(0, length + 4));
    frames.push(frame.buffer);
    framed = true;
    const rest = all.subarray(length + 4);
    chunks = rest.length > 0 ? [rest] : [];
    buffered = rest.length;
  }
  return frames;
}

/** Throw ForeignPeer if the start of the first frame (`bytes`, 4 or more) is not an amber reply to HELLO. */
function checkFirstFrame(bytes, length) {
  if (length < 5 || length > maxFrame) throw new ForeignPeer(`a frame length of ${length}`);
  if (bytes.length < 9) return; // the header is not complete yet
  const id = bytes.readUInt32BE(4);
  const kind = bytes[8];
  if (!FIRST_REPLY_KINDS.has(kind)) throw new ForeignPeer(`a frame of kind ${kind} (a reply is of kind 128 to 131)`);
  if (id !== 0 && id !== helloId) throw new ForeignPeer(`a reply to request ${id} (HELLO was request ${helloId})`);
}

/**
 * Could `bytes` (fewer than a whole frame) be the start of an amber reply to HELLO? A
 * connection that closes after such bytes is a broken amber connection, not a foreign peer.
 */
function plausibleStart(bytes) {
  // The least length these bytes can start (missing low bytes taken as 0).
  let length = 0;
  for (let i = 0; i < 4; i++) length = length * 256 + (i < bytes.length ? bytes[i] : 0);
  if (length > maxFrame || (bytes.length >= 4 && length < 5)) return false;
  if (bytes.length < 9) return true;
  try {
    checkFirstFrame(bytes, length);
    return true;
  } catch {
    return false;
  }
}

port.on("message", (message) => {
  switch (message.type) {
    case "connect":
      connect();
      break;
    case "send":
      // Frames sent while disconnected are dropped: the main thread fails their requests
      // when it learns of the disconnection.
      if (socket !== null) {
        for (const f of message.frames) {
          const bytes = new Uint8Array(f);
          if (helloId === -1 && bytes.length >= 8) helloId = new DataView(f).getUint32(4);
          socket.write(bytes);
        }
      }
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
