// Helpers for the hardening tests: scripted apps (node http and raw TCP) that misbehave on purpose,
// a WebSocket app, and process resource probes (open file descriptors, RSS) read from /proc. The
// raw TLS/TCP client that writes exact bytes is in raw.ts.
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { closeServer, listenLoopback } from './apps.js';
import type { LogLine, Sidecar } from './sidecar.js';

export interface ScriptedApp {
  readonly url: string;
  readonly port: number;
  /** Every request the app saw (method + url + headers), in order. */
  readonly requests: Array<{ method: string; url: string; headers: IncomingMessage['headers']; rawHeaders: string[] }>;
  /** Sockets the app currently holds open. */
  openSockets(): number;
  close(): Promise<void>;
}

/** A node http app on 127.0.0.1:0 whose behaviour is the test's `handler`. */
export async function startScriptedApp(handler: (request: IncomingMessage, response: ServerResponse) => void, options: { maxHeaderSize?: number } = {}): Promise<ScriptedApp> {
  const requests: ScriptedApp['requests'] = [];
  const sockets = new Set<Socket>();
  const server: Server = createHttpServer({ maxHeaderSize: options.maxHeaderSize, requestTimeout: 0, headersTimeout: 0 }, (request, response) => {
    requests.push({ method: request.method ?? '', url: request.url ?? '', headers: request.headers, rawHeaders: request.rawHeaders });
    handler(request, response);
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  const port = await listenLoopback(server);
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    openSockets: () => sockets.size,
    close: () => closeServer(server),
  };
}

export interface RawApp {
  readonly url: string;
  readonly port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** Everything received, per connection. */
  readonly received: string[];
  openSockets(): number;
  close(): Promise<void>;
}

/** A raw TCP app: `onConnection` gets each socket and the text received so far on it. */
export async function startRawApp(onData: (socket: Socket, received: string) => void): Promise<RawApp> {
  const received: string[] = [];
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server: NetServer = createNetServer((socket) => {
    const index = accepted;
    accepted += 1;
    received[index] = '';
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      received[index] += chunk.toString('latin1');
      onData(socket, received[index]!);
    });
  });
  const port = await listenLoopback(server);
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get accepted() {
      return accepted;
    },
    received,
    openSockets: () => sockets.size,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Number of open file descriptors of process `pid` (Linux /proc). */
export async function openFds(pid: number): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length;
}

/** Resident set size of process `pid` in KiB (Linux /proc). */
export async function rssKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? NaN);
}

/** Polls `probe` until `accept` holds or `timeoutMs` passes; returns the last value. */
export async function pollUntil<T>(probe: () => Promise<T> | T, accept: (value: T) => boolean, timeoutMs: number, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let value = await probe();
  while (!accept(value) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
    value = await probe();
  }
  return value;
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Access-log lines (`"msg":"request"`) of the given direction. */
export function requestLogs(sidecar: Sidecar, direction: 'inbound' | 'outbound' = 'inbound'): LogLine[] {
  return sidecar.logs().filter((line) => line.msg === 'request' && line.direction === direction);
}

/** The value of one Prometheus sample from the admin /metrics text, or 0 when absent. */
export async function metricValue(sidecar: Sidecar, name: string, labels: Record<string, string>): Promise<number> {
  const response = await fetch(`http://${sidecar.admin.host}:${sidecar.admin.port}/metrics`);
  const text = await response.text();
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const match = /^[^{ ]+(?:\{([^}]*)\})? (\S+)/.exec(line);
    if (!match) continue;
    const present = Object.fromEntries([...(match[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((pair) => [pair[1], pair[2]]));
    if (Object.entries(labels).every(([key, value]) => present[key] === value)) return Number(match[2]);
  }
  return 0;
}

const websocketGuid = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2). */
export function websocketAccept(key: string): string {
  return createHash('sha1').update(key + websocketGuid).digest('base64');
}

/** One WebSocket text frame (payload < 126 bytes); clients must mask (RFC 6455 §5.3). */
export function websocketFrame(text: string, masked: boolean): Buffer {
  const payload = Buffer.from(text);
  if (payload.length >= 126) throw new Error('websocketFrame: payload must be under 126 bytes');
  if (!masked) return Buffer.concat([Buffer.from([0x81, payload.length]), payload]);
  const mask = randomBytes(4);
  const body = Buffer.from(payload.map((byte, index) => byte ^ mask[index % 4]!));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, body]);
}

/** Text payloads of the complete small frames at the start of `data`; `rest` is what is left. */
export function parseWebsocketFrames(data: Buffer): { texts: string[]; rest: Buffer } {
  const texts: string[] = [];
  let offset = 0;
  while (data.length - offset >= 2) {
    const masked = (data[offset + 1]! & 0x80) !== 0;
    const length = data[offset + 1]! & 0x7f;
    const header = 2 + (masked ? 4 : 0);
    if (length >= 126 || data.length - offset < header + length) break;
    const mask = masked ? data.subarray(offset + 2, offset + 6) : undefined;
    const payload = Buffer.from(data.subarray(offset + header, offset + header + length));
    if (mask) for (let index = 0; index < payload.length; index += 1) payload[index]! ^= mask[index % 4]!;
    texts.push(payload.toString('utf8'));
    offset += header + length;
  }
  return { texts, rest: data.subarray(offset) };
}

export interface WebsocketApp {
  readonly url: string;
  /** Connections the app currently holds open. */
  openSockets(): number;
  /** Destroys every open app-side socket (the app dying mid-session). */
  killSessions(): void;
  close(): Promise<void>;
}

/**
 * A minimal WebSocket app on raw sockets: `GET /ws` upgrades, greets with "welcome" and echoes
 * every text frame as "echo:<text>"; any other path answers 404 and closes.
 */
export async function startWebsocketApp(): Promise<WebsocketApp> {
  const live = new Set<Socket>();
  const server = createNetServer((socket) => {
    live.add(socket);
    socket.once('close', () => live.delete(socket));
    socket.on('error', () => undefined);
    let upgraded = false;
    let buffer: Buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      if (!upgraded) {
        const text = buffer.toString('latin1');
        const end = text.indexOf('\r\n\r\n');
        if (end < 0) return;
        const key = /^sec-websocket-key:\s*(\S+)/im.exec(text.slice(0, end))?.[1];
        if (!text.startsWith('GET /ws ') || !key) {
          socket.end('HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found');
          return;
        }
        upgraded = true;
        socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${websocketAccept(key)}\r\n\r\n`);
        socket.write(websocketFrame('welcome', false));
        buffer = buffer.subarray(end + 4);
      }
      const { texts, rest } = parseWebsocketFrames(buffer);
      buffer = rest;
      for (const text of texts) socket.write(websocketFrame(`echo:${text}`, false));
    });
  });
  const port = await listenLoopback(server);
  return {
    url: `http://127.0.0.1:${port}`,
    openSockets: () => live.size,
    killSessions() {
      for (const socket of live) socket.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of live) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
