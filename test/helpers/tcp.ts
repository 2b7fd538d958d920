// Helpers for TCP mode (--protocol tcp): a raw TCP app whose behaviour per connection is chosen by
// the first line the client sends, and clients that speak raw bytes over plaintext TCP or mTLS
// with half-close, reading everything until the far side's FIN (or a reset).
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { listenLoopback } from './apps.js';
import type { Leaf } from './pki.js';
import type { Address } from './sidecar.js';

/**
 * What the app does with a connection, chosen by its first line:
 * - `echo`: sends back every following byte; ends its side after the client's FIN.
 * - `summary`: reads until the client's FIN, waits 200 ms, then answers `{"bytes":N,"sha256":"…"}` and ends.
 * - `ends-first`: answers `app-bye\n` and ends its side at once, while still reading the client.
 * - `source N`: sends N random bytes as fast as backpressure allows, then ends.
 * - `reset`: resets the connection (TCP RST) at once.
 * - `split`: answers every chunk in two writes 2 ms apart, `a` then `b` (what a database or gRPC
 *   server does when a reply is several messages); the app itself never waits for an ACK (noDelay).
 * Any other first line is echoed together with the rest (so stray clients see their own bytes).
 */
export type TcpAppMode = 'echo' | 'summary' | 'ends-first' | 'source' | 'reset' | 'split' | 'unknown';

/** What the app saw on one connection. */
export interface TcpAppConnection {
  mode: TcpAppMode | undefined;
  /** Bytes received after the mode line. */
  received: Buffer[];
  receivedLength: number;
  /** sha256 hex of the bytes after the mode line, complete once `ended`. */
  receivedSha256: string | undefined;
  /** sha256 hex of what `source` sent, once it finished. */
  sentSha256: string | undefined;
  /** The client's FIN arrived. */
  ended: boolean;
  closed: boolean;
}

export interface TcpApp {
  readonly port: number;
  /** `tcp://127.0.0.1:PORT` — the value for `--app` with `--protocol tcp`. */
  readonly url: string;
  /** Every connection the app accepted, in order. */
  readonly connections: TcpAppConnection[];
  close(): Promise<void>;
}

const SUMMARY_DELAY_MS = 200;
const SPLIT_GAP_MS = 2;

export async function startTcpApp(): Promise<TcpApp> {
  const connections: TcpAppConnection[] = [];
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
    sockets.add(socket);
    const record: TcpAppConnection = { mode: undefined, received: [], receivedLength: 0, receivedSha256: undefined, sentSha256: undefined, ended: false, closed: false };
    connections.push(record);
    const hash = createHash('sha256');
    let head = Buffer.alloc(0);
    const receive = (chunk: Buffer) => {
      record.received.push(chunk);
      record.receivedLength += chunk.length;
      hash.update(chunk);
      if (record.mode === 'echo' || record.mode === 'unknown') {
        if (!socket.write(chunk)) {
          socket.pause();
          socket.once('drain', () => socket.resume());
        }
      }
      if (record.mode === 'split') {
        socket.write('a');
        setTimeout(() => socket.write('b'), SPLIT_GAP_MS);
      }
    };
    socket.on('error', () => {});
    socket.on('close', () => {
      record.closed = true;
      sockets.delete(socket);
    });
    socket.on('end', () => {
      record.ended = true;
      record.receivedSha256 = hash.digest('hex');
      if (record.mode === 'summary') {
        setTimeout(() => socket.end(JSON.stringify({ bytes: record.receivedLength, sha256: record.receivedSha256 })), SUMMARY_DELAY_MS);
      } else if (record.mode !== 'ends-first' && record.mode !== 'source') {
        socket.end();
      }
    });
    socket.on('data', (chunk: Buffer) => {
      if (record.mode !== undefined) {
        receive(chunk);
        return;
      }
      head = Buffer.concat([head, chunk]);
      const newline = head.indexOf(0x0a);
      if (newline < 0 && head.length < 256) return;
      const line = newline < 0 ? '' : head.subarray(0, newline).toString('latin1');
      const [word, argument] = line.split(' ');
      const known = ['echo', 'summary', 'ends-first', 'source', 'reset', 'split'] as const;
      record.mode = (known as readonly string[]).includes(word ?? '') ? (word as TcpAppMode) : 'unknown';
      const rest = record.mode === 'unknown' ? head : head.subarray(newline + 1);
      head = Buffer.alloc(0);
      if (record.mode === 'reset') {
        socket.resetAndDestroy();
        return;
      }
      if (record.mode === 'ends-first') socket.end('app-bye\n');
      if (record.mode === 'source') void source(socket, Number(argument), record);
      if (rest.length > 0) receive(rest);
    });
  });
  return listenTcpApp(server, sockets, connections);
}

/** Listens on loopback and hands back a TCP test app: its `tcp://` URL, its connection records, and a close that cuts `sockets`. */
export async function listenTcpApp<Record>(server: Server, sockets: Set<Socket>, connections: Record[]): Promise<{ port: number; url: string; connections: Record[]; close(): Promise<void> }> {
  const port = await listenLoopback(server);
  return {
    port,
    url: `tcp://127.0.0.1:${port}`,
    connections,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

async function source(socket: Socket, total: number, record: TcpAppConnection): Promise<void> {
  const hash = createHash('sha256');
  const block = randomBytes(64 * 1024);
  let sent = 0;
  // One close listener for the whole stream (a fresh once() per drain wait would pile them up).
  const closed = once(socket, 'close');
  closed.catch(() => undefined);
  while (sent < total && !socket.destroyed) {
    const piece = block.subarray(0, Math.min(block.length, total - sent));
    // A fresh first byte per block, so a duplicated or dropped block changes the digest.
    piece[0] = sent / block.length % 256;
    hash.update(piece);
    sent += piece.length;
    if (!socket.write(Buffer.from(piece))) await Promise.race([once(socket, 'drain'), closed]);
  }
  record.sentSha256 = hash.digest('hex');
  socket.end();
}

/** The mode line the app reads first. */
export function modeLine(mode: Exclude<TcpAppMode, 'unknown'>, argument?: number): Buffer {
  return Buffer.from(argument === undefined ? `${mode}\n` : `${mode} ${argument}\n`);
}

/** A plaintext TCP connection (to an --upstream listener, or a permissive inbound), half-open allowed. */
export async function connectPlain(address: Address): Promise<Socket> {
  const socket = netConnect({ host: address.host, port: address.port, allowHalfOpen: true });
  await once(socket, 'connect');
  return socket;
}

/** An mTLS connection to an inbound listener with `leaf` as the client certificate, half-open allowed. */
export async function connectMtls(address: Address, leaf: Pick<Leaf, 'chainPem' | 'keyPem'>, ca: string, extra: ConnectionOptions = {}): Promise<TLSSocket> {
  const options: ConnectionOptions & { allowHalfOpen: boolean } = {
    host: address.host,
    port: address.port,
    cert: leaf.chainPem,
    key: leaf.keyPem,
    ca,
    servername: 'localhost',
    allowHalfOpen: true,
    ...extra,
  };
  const socket = tlsConnect(options);
  await once(socket, 'secureConnect');
  return socket;
}

/**
 * Everything a socket delivered until it closed (or `timeoutMs` passed, then it is destroyed). The
 * far side's FIN ends our side too.
 */
export interface Collected {
  data: Buffer;
  /** The far side's FIN (or TLS close_notify) arrived. */
  ended: boolean;
  /** The socket closed before the timeout. */
  closed: boolean;
  error: string | undefined;
  elapsedMs: number;
}

/** Reads `socket` until it closes; starts listening at once, so call it before writing. */
export function collect(socket: Socket, timeoutMs = 10000): Promise<Collected> {
  const started = Date.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let ended = false;
    let error: string | undefined;
    const timer = setTimeout(() => finish(false), timeoutMs);
    const finish = (closed: boolean) => {
      clearTimeout(timer);
      if (!closed) socket.destroy();
      resolve({ data: Buffer.concat(chunks), ended, closed, error, elapsedMs: Date.now() - started });
    };
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('end', () => {
      ended = true;
      // Done reading: answer the FIN as a client without half-open support would, so the socket closes.
      socket.end();
    });
    socket.on('error', (cause: NodeJS.ErrnoException) => {
      error ??= cause.code ?? cause.message;
    });
    socket.once('close', () => finish(true));
  });
}

/** Waits for `socket`'s FIN (its readable side ended) and returns what arrived before it. */
export function readUntilEnd(socket: Socket, timeoutMs = 10000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => reject(new Error(`no FIN within ${timeoutMs} ms; got ${Buffer.concat(chunks).length} bytes`)), timeoutMs);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('end', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    socket.once('close', () => {
      clearTimeout(timer);
      reject(new Error(`closed before a FIN; got ${Buffer.concat(chunks).length} bytes`));
    });
  });
}

/** The app's `summary` answer. */
export interface Summary {
  bytes: number;
  sha256: string;
}

/** What a throttled reader received. */
export interface ThrottledRead {
  length: number;
  sha256: string;
  /** The far side's FIN arrived before the timeout. */
  ended: boolean;
  elapsedMs: number;
}

/**
 * Reads `socket` no faster than `bytesPerSecond` (pausing it for the rest of each 50 ms window once
 * the window's share has arrived), so the sender is held back by TCP flow control alone.
 */
export function readThrottled(socket: Socket, bytesPerSecond: number, timeoutMs: number): Promise<ThrottledRead> {
  const started = Date.now();
  const windowMs = 50;
  const budget = (bytesPerSecond * windowMs) / 1000;
  return new Promise((resolve) => {
    const hash = createHash('sha256');
    let length = 0;
    let inWindow = 0;
    let ended = false;
    let done = false;
    const tick = setInterval(() => {
      inWindow = 0;
      if (!socket.destroyed) socket.resume();
    }, windowMs);
    const finish = () => {
      if (done) return;
      done = true;
      clearInterval(tick);
      clearTimeout(timer);
      socket.destroy();
      resolve({ length, sha256: hash.digest('hex'), ended, elapsedMs: Date.now() - started });
    };
    const timer = setTimeout(finish, timeoutMs);
    socket.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      length += chunk.length;
      inWindow += chunk.length;
      if (inWindow >= budget) socket.pause();
    });
    socket.once('end', () => {
      ended = true;
      finish();
    });
    socket.once('close', finish);
    socket.on('error', () => {});
  });
}
