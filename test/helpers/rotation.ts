// Helpers for certificate-rotation tests: what a peer sees (served serial per handshake), what an
// upstream sees through the forward proxy, the writers that rotate a cert directory, and a sidecar
// started where inotify is unavailable.
import { open, rename, writeFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import type { TLSSocket } from 'node:tls';
import type { TlsServerReply } from './apps.js';
import { proxyRequest, runCommand } from './clients.js';
import { fetchMetrics, metricValue as sampleValue } from './identity.js';
import { normalizeSerial } from './pki.js';
import { startSidecar, type Address, type LogLine, type Sidecar } from './sidecar.js';

export interface PeerCredentials {
  /** Client chain and key presented to the sidecar. */
  cert: string;
  key: string;
  /** Bundle that verifies the sidecar's certificate. */
  ca: string;
}

export interface HandshakeOutcome {
  status: number;
  /** Normalised serial of the leaf the server presented on this connection. */
  servedSerial: string;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
export { sleep };

/**
 * One GET over a fresh, fully verified mTLS connection: the status and the serial of the leaf the
 * server presented. Rejects when the handshake or the request fails.
 */
export function handshake(address: Address, peer: PeerCredentials, path = '/rotation-probe', timeoutMs = 5000): Promise<HandshakeOutcome> {
  return new Promise((resolve, reject) => {
    const request = httpsRequest({
      host: address.host,
      port: address.port,
      path,
      agent: false,
      cert: peer.cert,
      key: peer.key,
      ca: peer.ca,
      servername: 'localhost',
      rejectUnauthorized: true,
    });
    const timer = setTimeout(() => request.destroy(new Error(`handshake to ${address.port} timed out after ${timeoutMs} ms`)), timeoutMs);
    request.on('response', (response) => {
      const served = (response.socket as TLSSocket).getPeerCertificate();
      response.resume();
      response.on('end', () => {
        clearTimeout(timer);
        resolve({ status: response.statusCode ?? 0, servedSerial: normalizeSerial(served.serialNumber ?? '') });
      });
    });
    request.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    request.end();
  });
}

/** Handshakes until the server presents `serial`; resolves with the milliseconds it took. */
export async function waitForServedSerial(address: Address, peer: PeerCredentials, serial: string, timeoutMs = 5000): Promise<number> {
  const started = Date.now();
  const wanted = normalizeSerial(serial);
  let last = '';
  while (Date.now() - started < timeoutMs) {
    try {
      const outcome = await handshake(address, peer);
      last = `${outcome.status} ${outcome.servedSerial}`;
      if (outcome.servedSerial === wanted) return Date.now() - started;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(25);
  }
  throw new Error(`the server at ${address.port} did not present serial ${wanted} within ${timeoutMs} ms (last: ${last})`);
}

/** The client-certificate serial a TLS upstream saw, for one request through the sidecar's forward proxy. */
export async function upstreamSawSerial(proxy: Address, upstreamPort: number, path = '/who'): Promise<string> {
  const response = await proxyRequest({ proxy, target: `http://localhost:${upstreamPort}${path}` });
  if (response.status !== 200) throw new Error(`forward proxy to upstream ${upstreamPort} answered ${response.status}: ${response.text}`);
  return normalizeSerial(response.json<TlsServerReply>().clientSerial ?? '');
}

/**
 * Continuous fresh-connection handshakes against `address` until stopped: every served serial in
 * order, and every failure. For "a half-written set is never served".
 */
export function startHandshakeProbe(address: Address, peer: PeerCredentials, pauseMs = 20): { stop(): Promise<{ serials: string[]; failures: string[] }> } {
  const serials: string[] = [];
  const failures: string[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      try {
        const outcome = await handshake(address, peer);
        if (outcome.status !== 200) failures.push(`status ${outcome.status}`);
        serials.push(outcome.servedSerial);
      } catch (error) {
        failures.push((error as Error).message);
      }
      await sleep(pauseMs);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { serials, failures };
    },
  };
}

/** Distinct values in order of first appearance, collapsing runs: [a,a,b,b,a] -> [a,b,a]. */
export function runsOf(values: string[]): string[] {
  return values.filter((value, index) => index === 0 || values[index - 1] !== value);
}

/**
 * Truncate-and-write in place, as spiffe-helper and many scripts do: the file is truncated, half
 * of the text is written, then after `halfPauseMs` the rest. Readers in between see half a PEM.
 */
export async function rewriteInPlace(path: string, text: string, halfPauseMs = 0): Promise<void> {
  const handle = await open(path, 'w');
  try {
    const bytes = Buffer.from(text);
    const half = Math.floor(bytes.length / 2);
    await handle.write(bytes.subarray(0, half));
    if (halfPauseMs > 0) {
      await handle.sync();
      await sleep(halfPauseMs);
    }
    await handle.write(bytes.subarray(half));
  } finally {
    await handle.close();
  }
}

/** Replaces one file atomically (write a sibling, rename over): readers see old or new, never half. */
export async function replaceFile(path: string, text: string): Promise<void> {
  const temporary = `${path}.tmp-${process.pid}-${Date.now()}`;
  await writeFile(temporary, text, { mode: 0o600 });
  await rename(temporary, path);
}

/** Matches the "certificates loaded" line for `serial`. */
export const loadedLine = (serial: string) => (line: LogLine) =>
  line.msg === 'certificates loaded' && normalizeSerial(String(line.serial ?? '')) === normalizeSerial(serial);

/**
 * Resolves with the first line matching `predicate` logged after the first `afterIndex` lines
 * (pass `sidecar.logs().length` taken before the change): rotations cycle through the same
 * certificates, so an earlier identical line must not count.
 */
export async function waitForNextLog(sidecar: Sidecar, predicate: (line: LogLine) => boolean, afterIndex: number, timeoutMs = 5000): Promise<LogLine> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    const found = sidecar.logs().slice(afterIndex).find(predicate);
    if (found) return found;
    await sleep(15);
  }
  throw new Error(`no matching log line within ${timeoutMs} ms; output so far:\n${sidecar.output().slice(-4000)}`);
}

/** "certificate reload rejected" lines so far, optionally only those with `code`. */
export function rejectedLines(sidecar: Sidecar, code?: string): LogLine[] {
  return sidecar.logs().filter((line) => line.msg === 'certificate reload rejected' && (code === undefined || line.code === code));
}

/** The value of one Prometheus sample from the admin /metrics (0 when the series is absent). */
export async function metricValue(admin: Address, name: string, labels: Record<string, string> = {}): Promise<number> {
  return sampleValue(await fetchMetrics({ admin }), name, labels);
}

// ---- a sidecar whose directory watch cannot work ----

/**
 * A `startSidecar` launcher that runs node in its own user namespace with the inotify instance
 * limit of that namespace set to 0 (`/proc/sys/user/max_inotify_instances`), so `fs.watch` fails
 * with EMFILE, as on a node whose inotify instances are exhausted. Only that process is affected:
 * the limit is per user namespace. unshare and sh exec, so the pid is node's and signals reach it.
 */
const INOTIFY_LESS_LAUNCHER = ['unshare', '--user', '--map-root-user', 'sh', '-c', 'echo 0 > /proc/sys/user/max_inotify_instances && exec "$@"', 'node-without-inotify'];

let usable: Promise<boolean> | undefined;

/** Whether the launcher works here (unprivileged user namespaces) and really takes inotify away. */
function inotifyLessLauncherWorks(): Promise<boolean> {
  const check = "try { require('fs').watch('.'); process.exit(1) } catch (e) { process.exit(e.code === 'EMFILE' ? 0 : 1) }";
  const [file, ...args] = [...INOTIFY_LESS_LAUNCHER, process.execPath, '-e', check];
  usable ??= runCommand(file!, args, { timeoutMs: 5000 }).then((result) => result.code === 0);
  return usable;
}

/** Why `startSidecarWithoutInotify` cannot run here, or undefined when it can. */
export async function inotifyLessUnavailable(): Promise<string | undefined> {
  return (await inotifyLessLauncherWorks()) ? undefined : 'unshare --user with a writable /proc/sys/user/max_inotify_instances is not available on this machine';
}

/**
 * startSidecar, but the process cannot use inotify (see INOTIFY_LESS_LAUNCHER): the directory
 * watch fails, so only the poll and SIGHUP can notice a change.
 */
export async function startSidecarWithoutInotify(args: string[]): Promise<Sidecar> {
  const unavailable = await inotifyLessUnavailable();
  if (unavailable) throw new Error(unavailable);
  return startSidecar(args, { launcher: INOTIFY_LESS_LAUNCHER });
}
