// Helpers for the hardening tests: scripted apps (node http and raw TCP) that misbehave on purpose,
// a WebSocket app (in this process or a child to kill), process resource probes (open file
// descriptors, RSS) read from /proc, and a sidecar run as an unprivileged user. The raw TLS/TCP
// client that writes exact bytes is in raw.ts.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import { access, chmod, cp, mkdtemp, readdir, readFile } from 'node:fs/promises';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { createInterface } from 'node:readline';
import { closeServer, listenLoopback } from './apps.js';
import { runCommand } from './clients.js';
import { fetchMetrics, metricValue as sampleValue } from './identity.js';
import { REPO_ROOT, startSidecar, type LogLine, type Sidecar } from './sidecar.js';

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

/** The value of one Prometheus sample from the sidecar's admin /metrics, or 0 when absent. */
export async function metricValue(sidecar: Sidecar, name: string, labels: Record<string, string>): Promise<number> {
  return sampleValue(await fetchMetrics(sidecar), name, labels);
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
  /**
   * Ends every open app-side socket (the app dying mid-session): `close` sends a FIN, as the
   * kernel does for an exiting process; `reset` an RST, as when it dies with unread data.
   */
  killSessions(how?: 'close' | 'reset'): void;
  close(): Promise<void>;
}

/** The 404 the WebSocket app answers to an upgrade of any path but /ws. */
export const websocketAppNotFound = { status: 404, body: 'not found' } as const;

/**
 * A minimal WebSocket app on raw sockets: `GET /ws` upgrades, greets with "welcome" and echoes
 * every text frame as "echo:<text>"; `/not-a-socket-keep-alive` answers 404 and keeps the
 * connection open (only the proxy can close it); `/stream` answers 200 with a chunked body that
 * never ends (a chunk every 50 ms); any other path answers 404 and closes.
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
        const notFound = `HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: ${websocketAppNotFound.body.length}\r\n`;
        if (text.startsWith('GET /not-a-socket-keep-alive ')) {
          socket.write(`${notFound}\r\n${websocketAppNotFound.body}`);
          buffer = buffer.subarray(end + 4);
          return;
        }
        if (text.startsWith('GET /stream ')) {
          socket.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n');
          const timer = setInterval(() => socket.write('5\r\ntick\n\r\n'), 50);
          socket.once('close', () => clearInterval(timer));
          buffer = Buffer.alloc(0);
          return;
        }
        if (!text.startsWith('GET /ws ') || !key) {
          socket.end(`${notFound}Connection: close\r\n\r\n${websocketAppNotFound.body}`);
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
    killSessions(how = 'close') {
      for (const socket of live) {
        if (how === 'reset') socket.resetAndDestroy();
        else socket.destroy();
      }
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of live) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

export interface WebsocketAppProcess {
  readonly url: string;
  readonly pid: number;
  /** SIGKILL: the process dies at once and the kernel closes its sockets. */
  kill(): Promise<void>;
}

/**
 * `startWebsocketApp` in a child process of its own, so a test can kill the app for real. The
 * child imports this very module (through tsx) and prints its URL.
 */
export async function startWebsocketAppProcess(): Promise<WebsocketAppProcess> {
  const script = `const { startWebsocketApp } = await import(${JSON.stringify(import.meta.url)}); console.log((await startWebsocketApp()).url);`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  process.once('exit', () => child.kill('SIGKILL'));
  const exited = once(child, 'exit');
  const [line] = await Promise.race([
    once(createInterface({ input: child.stdout! }), 'line') as Promise<[string]>,
    exited.then(() => {
      throw new Error('the WebSocket app process exited before printing its URL');
    }),
  ]);
  return {
    url: line.trim(),
    pid: child.pid!,
    async kill() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

// ---- a sidecar that is not root ----

/** The unprivileged user the sidecar runs as when the tests run as root: nobody/nogroup. */
export const UNPRIVILEGED_ID = 65534;

const runningAsRoot = process.getuid?.() === 0;
const repoDir = REPO_ROOT.replace(/\/$/, '');

/**
 * Why `startUnprivilegedSidecar` cannot run here, or undefined. Tests run as root (CI does) start
 * the sidecar as uid 65534 with setpriv (util-linux), because root ignores permission bits.
 */
export async function unprivilegedUnavailable(): Promise<string | undefined> {
  if (!runningAsRoot) return undefined;
  const probe = await runCommand('setpriv', ['--version']);
  return probe.code === 0 ? undefined : `setpriv (util-linux) is needed to run the sidecar as uid ${UNPRIVILEGED_ID}: root bypasses file permissions`;
}

/** Directories of the production dependencies (Node's resolution from the repo root), as image-layout.sh installs them. */
async function productionPackageDirs(): Promise<string[]> {
  const found = new Set<string>();
  const resolve = async (from: string, name: string): Promise<string | undefined> => {
    for (let dir = from; dir.startsWith(repoDir); dir = dirname(dir)) {
      const candidate = join(dir, 'node_modules', name);
      if (await access(join(candidate, 'package.json')).then(() => true, () => false)) return candidate;
      if (dir === dirname(dir)) break;
    }
    return undefined;
  };
  const visit = async (dir: string): Promise<void> => {
    const manifest = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as Record<string, Record<string, string> | undefined>;
    const required = Object.keys(manifest.dependencies ?? {});
    const optional = [...Object.keys(manifest.optionalDependencies ?? {}), ...Object.keys(manifest.peerDependencies ?? {})];
    for (const name of [...required, ...optional]) {
      const packageDir = await resolve(dir, name);
      if (!packageDir) {
        if (required.includes(name)) throw new Error(`production dependency ${name} of ${dir} is not installed (npm ci)`);
        continue;
      }
      if (found.has(packageDir)) continue;
      found.add(packageDir);
      await visit(packageDir);
    }
  };
  await visit(repoDir);
  return [...found];
}

let unprivilegedLayout: Promise<string> | undefined;

/**
 * A copy of dist/ and the production node_modules in a fresh directory every user can read (the
 * checkout itself may live under a 0700 home directory), removed when this process exits.
 */
function unprivilegedInstall(): Promise<string> {
  unprivilegedLayout ??= (async () => {
    const root = await mkdtemp(join(tmpdir(), 'sidecar-unprivileged-'));
    process.once('exit', () => rmSync(root, { recursive: true, force: true }));
    await cp(join(repoDir, 'package.json'), join(root, 'package.json'));
    await cp(join(repoDir, 'dist'), join(root, 'dist'), { recursive: true });
    for (const dir of await productionPackageDirs()) await cp(dir, join(root, relative(repoDir, dir)), { recursive: true, dereference: true });
    await runCommand('chmod', ['-R', 'a+rX,go-w', root]);
    return root;
  })();
  return unprivilegedLayout;
}

/** A fresh directory the unprivileged user can reach and list (0755, outside the 0700 scratch root), removed on exit. */
export async function unprivilegedReachableDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sidecar-reachable-'));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  await chmod(dir, 0o755);
  return dir;
}

/**
 * The sidecar as an unprivileged user: as root, uid/gid 65534 through setpriv, from a copy of the
 * build it can read, with a copy of `certDir` owned by root and readable by its group (0750/0640,
 * as a Kubernetes secret volume with fsGroup, and as deploy/image-layout.sh does). Not root: the
 * sidecar runs as this user, as `startSidecar` would.
 */
export async function startUnprivilegedSidecar(certDir: string, args: string[]): Promise<Sidecar> {
  if (!runningAsRoot) return startSidecar(['--cert-dir', certDir, ...args]);
  const unavailable = await unprivilegedUnavailable();
  if (unavailable) throw new Error(unavailable);
  const install = await unprivilegedInstall();
  const certs = await mkdtemp(join(install, 'certs-'));
  await cp(certDir, certs, { recursive: true, dereference: true });
  for (const command of [['chgrp', '-R', String(UNPRIVILEGED_ID), certs], ['chmod', '-R', 'u=rwX,g=rX,o=', certs]]) {
    const result = await runCommand(command[0]!, command.slice(1));
    if (result.code !== 0) throw new Error(`${command.join(' ')} failed: ${result.stderr}`);
  }
  // startSidecar appends `node <repo>/dist/cli.js run ...args`; the shell swaps in the copy's cli.js
  // and execs, so the pid is node's and signals reach the sidecar.
  const launcher = [
    'setpriv', `--reuid=${UNPRIVILEGED_ID}`, `--regid=${UNPRIVILEGED_ID}`, '--clear-groups', '--',
    'sh', '-c', 'cli=$1 node=$2; shift 3; cd / && exec "$node" "$cli" "$@"', 'unprivileged-sidecar', join(install, 'dist', 'cli.js'),
  ];
  return startSidecar(['--cert-dir', certs, ...args], { launcher });
}

/**
 * Median milliseconds of `rounds` exchanges on one connection: `send` writes a request, the
 * exchange ends when `complete` holds for what arrived since. A hop that leaves Nagle's algorithm
 * on holds the second write of a two-part answer until the first is acknowledged, and the receiver
 * delays that ACK by 40 ms or more (Linux's minimum): the median shows it.
 */
export async function medianExchangeMs(socket: Socket, send: () => void, complete: (seen: string) => boolean, rounds = 15): Promise<number> {
  const times: number[] = [];
  for (let round = 0; round < rounds; round += 1) {
    const started = process.hrtime.bigint();
    await new Promise<void>((resolve, reject) => {
      let seen = '';
      const onData = (chunk: Buffer) => {
        seen += chunk.toString('latin1');
        if (!complete(seen)) return;
        socket.off('data', onData);
        resolve();
      };
      socket.on('data', onData);
      socket.once('close', () => reject(new Error(`closed before the answer: ${seen}`)));
      send();
    });
    times.push(Number(process.hrtime.bigint() - started) / 1e6);
    await sleep(5);
  }
  socket.destroy();
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

/** Well under the 40 ms a delayed ACK adds, well over a loopback round trip on a loaded machine. */
export const NO_DELAYED_ACK_STALL_MS = 20;
