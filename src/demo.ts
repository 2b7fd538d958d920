/**
 * `mtls-sidecar demo`: the whole mission on loopback with no set-up. Two sidecars run as real
 * child processes of this CLI; the apps are in-process HTTP code. Each step checks an observable
 * outcome and the demo exits 0 only if every step held.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, open, readlink, rename, rm, symlink } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { createDevCA, issueDevCert, type PemPair, writeServiceDir } from './certs/issue.js';

export interface DemoOptions {
  /** Receives each report line; default prints to stdout. */
  log?: (line: string) => void;
}

const TRUST_DOMAIN = 'demo.local';
const IDENTITY_A = `spiffe://${TRUST_DOMAIN}/ns/demo/sa/a`;
const IDENTITY_B = `spiffe://${TRUST_DOMAIN}/ns/demo/sa/b`;
const SERVICE_NAMES = { dns: ['localhost'], ips: ['127.0.0.1'] };

const READY_TIMEOUT_MS = 20_000;
const REQUEST_TIMEOUT_MS = 10_000;
const IMPOSTOR_TIMEOUT_MS = 5_000;
// Longer than the sidecar's default 30 s poll, so rotation is shown even if the directory watch misses.
const ROTATION_TIMEOUT_MS = 45_000;
const STOP_TIMEOUT_MS = 20_000;
const TRAFFIC_INTERVAL_MS = 25; // 40 requests per second

interface StepResult {
  ok: boolean;
  detail: string;
}

type LogRecord = Record<string, unknown> & { msg?: string };

export async function runDemo(opts: DemoOptions = {}): Promise<number> {
  const log = opts.log ?? ((line: string) => process.stdout.write(`${line}\n`));
  const results: StepResult[] = [];
  const report = (title: string, result: StepResult): boolean => {
    results.push(result);
    log(`${result.ok ? '✔' : '✘'} ${title}: ${result.detail}`);
    return result.ok;
  };

  log('mtls-sidecar demo: app A -> sidecar A ==mTLS==> sidecar B -> app B, all on 127.0.0.1');
  const workDir = await mkdtemp(join(tmpdir(), 'mtls-sidecar-demo-'));
  const sidecars: SidecarProcess[] = [];
  let appB: EchoApp | undefined;
  const onInterrupt = (): void => {
    for (const sidecar of sidecars) sidecar.terminate();
    rmSync(workDir, { recursive: true, force: true });
    process.exit(130);
  };
  process.once('SIGINT', onInterrupt);
  try {
    // 1. Certificates
    const pki = makeDemoPki();
    const dirA = join(workDir, 'a');
    const dirB = join(workDir, 'b');
    await writeServiceDir(dirA, pki.a, pki.ca.certPem);
    await writeKubernetesSecretDir(dirB, serviceFiles(pki.b, pki.ca.certPem));
    report('certificates', {
      ok: true,
      detail: `dev CA + A ${IDENTITY_A} (serial ${serialOf(pki.a)}), B ${IDENTITY_B} (serial ${serialOf(pki.b)}); impostor claiming ${IDENTITY_A} from a foreign CA`,
    });

    // 2. App B and both sidecars
    appB = await startEchoApp();
    const cliPath = fileURLToPath(new URL('./cli.js', import.meta.url));
    const sidecarB = SidecarProcess.start('sidecar B', cliPath, [
      '--cert-dir', dirB, '--inbound', '127.0.0.1:0', '--outbound', 'off', '--admin', '127.0.0.1:0',
      '--app', `http://127.0.0.1:${appB.port}`,
    ]);
    const sidecarA = SidecarProcess.start('sidecar A', cliPath, [
      '--cert-dir', dirA, '--inbound', 'off', '--outbound', '127.0.0.1:0', '--admin', '127.0.0.1:0',
    ]);
    sidecars.push(sidecarB, sidecarA);
    const [readyB, readyA] = await Promise.allSettled([sidecarB.waitReady(), sidecarA.waitReady()]);
    if (readyB.status === 'rejected' || readyA.status === 'rejected') {
      const reasons = [readyB, readyA].filter((r) => r.status === 'rejected').map((r) => errorMessage((r as PromiseRejectedResult).reason));
      report('sidecars started', { ok: false, detail: reasons.join('; ') });
      return finish(results, log);
    }
    const inboundB = portOf(readyB.value.inbound);
    const outboundA = portOf(readyA.value.outbound);
    report('sidecars started', {
      ok: true,
      detail: `B inbound ${readyB.value.inbound} -> app B 127.0.0.1:${appB.port}; A outbound proxy ${readyA.value.outbound}`,
    });

    const targetUrl = `http://localhost:${inboundB}/hello`;
    const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
    try {
      // 3. A verified call through both sidecars
      report('A -> B over mTLS', await checkIdentityCall(outboundA, targetUrl, agent));

      // 4. The impostor goes straight to B's inbound port
      report('impostor rejected', await checkImpostor(inboundB, pki, appB, sidecarB));

      // 5. Rotation while traffic flows
      report('rotation mid-traffic', await checkRotation({ outboundA, inboundB, targetUrl, agent, pki, dirB, sidecarB }));
    } finally {
      agent.destroy();
    }

    // 6. Graceful shutdown
    const exits = await Promise.all(sidecars.map(async (sidecar) => ({ name: sidecar.name, exit: await sidecar.stop() })));
    const clean = exits.every(({ exit }) => exit.code === 0);
    report('shutdown', {
      ok: clean,
      detail: exits.map(({ name, exit }) => `${name} ${exit.code === null ? `killed by ${String(exit.signal)}` : `exit ${exit.code}`}`).join(', ') +
        ' after SIGTERM',
    });
    return finish(results, log);
  } catch (error) {
    report('demo', { ok: false, detail: `stopped early: ${errorMessage(error)}` });
    return finish(results, log);
  } finally {
    process.off('SIGINT', onInterrupt);
    await Promise.all(sidecars.map((sidecar) => sidecar.stop()));
    if (appB) await appB.close();
    await rm(workDir, { recursive: true, force: true });
  }
}

function finish(results: StepResult[], log: (line: string) => void): number {
  const failed = results.filter((result) => !result.ok).length;
  log(failed === 0 ? `all ${results.length} steps passed` : `${failed} of ${results.length} steps failed`);
  return failed === 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// Steps

interface DemoPki {
  ca: PemPair;
  a: PemPair;
  b: PemPair;
  impostor: PemPair;
}

function makeDemoPki(): DemoPki {
  const ca = createDevCA({ commonName: 'mtls-sidecar demo CA', days: 1 });
  const foreignCa = createDevCA({ commonName: 'foreign CA', days: 1 });
  return {
    ca,
    a: issueDevCert(ca, { name: 'a', spiffe: [IDENTITY_A], ...SERVICE_NAMES, days: 1 }),
    b: issueDevCert(ca, { name: 'b', spiffe: [IDENTITY_B], ...SERVICE_NAMES, days: 1 }),
    impostor: issueDevCert(foreignCa, { name: 'a', spiffe: [IDENTITY_A], ...SERVICE_NAMES, days: 1 }),
  };
}

async function checkIdentityCall(outboundA: number, targetUrl: string, agent: http.Agent): Promise<StepResult> {
  const response = await requestViaProxy(outboundA, targetUrl, agent);
  if (response.status !== 200) {
    return { ok: false, detail: `GET ${targetUrl} via A's proxy -> ${response.status} ${response.body.slice(0, 300)}` };
  }
  const xfcc = parseEcho(response.body)?.xfcc ?? '';
  const callerSeen = xfcc.includes(`URI=${IDENTITY_A}`);
  const calleeSeen = xfcc.includes(`By=${IDENTITY_B}`);
  return {
    ok: callerSeen && calleeSeen,
    detail: callerSeen && calleeSeen
      ? `GET ${targetUrl} via A's proxy -> 200; app B saw caller URI=${IDENTITY_A} (XFCC By=${IDENTITY_B})`
      : `GET ${targetUrl} -> 200 but x-forwarded-client-cert was ${JSON.stringify(xfcc)}, expected URI=${IDENTITY_A} and By=${IDENTITY_B}`,
  };
}

async function checkImpostor(inboundB: number, pki: DemoPki, appB: EchoApp, sidecarB: SidecarProcess): Promise<StepResult> {
  const requestsBefore = appB.requests;
  const outcome = await impostorAttempt(inboundB, pki.impostor, pki.ca.certPem);
  if (outcome.response !== undefined) {
    return { ok: false, detail: `sidecar B answered the impostor: ${outcome.response}` };
  }
  if (outcome.timedOut) {
    return { ok: false, detail: `sidecar B neither completed nor closed the impostor's connection within ${IMPOSTOR_TIMEOUT_MS} ms` };
  }
  if (appB.requests !== requestsBefore) {
    return { ok: false, detail: 'app B received a request while the impostor was connected' };
  }
  const logged = await sidecarB
    .waitFor((record) => record.msg === 'TLS handshake failed', 3_000)
    .then((record) => `sidecar B logged reason ${String(record.reason)}`)
    .catch(() => 'sidecar B logged no "TLS handshake failed" line');
  return {
    ok: true,
    detail: `foreign-CA cert claiming ${IDENTITY_A} refused at the TLS handshake (client saw: ${outcome.error ?? 'connection closed'}; ${logged}); app B never saw it`,
  };
}

async function checkRotation(ctx: {
  outboundA: number;
  inboundB: number;
  targetUrl: string;
  agent: http.Agent;
  pki: DemoPki;
  dirB: string;
  sidecarB: SidecarProcess;
}): Promise<StepResult> {
  const oldSerial = serialOf(ctx.pki.b);
  const traffic = startTraffic(ctx.outboundA, ctx.targetUrl, ctx.agent);
  let newSerial = '';
  let servedSerial = '';
  let waitedMs = 0;
  try {
    await sleep(1_000);
    const renewed = issueDevCert(ctx.pki.ca, { name: 'b', spiffe: [IDENTITY_B], ...SERVICE_NAMES, days: 1 });
    newSerial = serialOf(renewed);
    const swappedAt = Date.now();
    await writeKubernetesSecretDir(ctx.dirB, serviceFiles(renewed, ctx.pki.ca.certPem));
    while (Date.now() - swappedAt < ROTATION_TIMEOUT_MS) {
      servedSerial = await probeServedSerial(ctx.inboundB, ctx.pki).catch((error: unknown) => `(probe failed: ${errorMessage(error)})`);
      if (servedSerial === newSerial) break;
      await sleep(200);
    }
    waitedMs = Date.now() - swappedAt;
    // Keep traffic flowing over the rotated certificate for a moment.
    await sleep(1_000);
  } finally {
    await traffic.stop();
  }
  const counts = `${traffic.sent} requests during rotation, ${traffic.failed} failed`;
  const failures = traffic.failed > 0 ? ` (${[...traffic.failureReasons].map(([reason, n]) => `${n}x ${reason}`).join(', ')})` : '';
  if (servedSerial !== newSerial) {
    const rejected = ctx.sidecarB.find((record) => record.msg === 'certificate reload rejected');
    const why = rejected ? `; sidecar B logged reload rejected: ${String(rejected.code)} ${String(rejected.message)}` : '';
    return {
      ok: false,
      detail: `B still served ${servedSerial || 'nothing'} ${Math.round(ROTATION_TIMEOUT_MS / 1000)} s after the ..data swap to ${newSerial}${why}; ${counts}${failures}`,
    };
  }
  return {
    ok: traffic.failed === 0 && traffic.sent > 0,
    detail: `B serial ${oldSerial} -> ${newSerial}, served on a fresh handshake ${(waitedMs / 1000).toFixed(1)} s after the ..data swap; ${counts}${failures}`,
  };
}

// ---------------------------------------------------------------------------------------------
// Clients

interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** What an HTTP_PROXY client does: absolute-form request line sent to the proxy. */
function requestViaProxy(proxyPort: number, targetUrl: string, agent: http.Agent): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const request = http.request({
      host: '127.0.0.1',
      port: proxyPort,
      method: 'GET',
      path: targetUrl,
      headers: { host: new URL(targetUrl).host },
      agent,
      timeout: REQUEST_TIMEOUT_MS,
    }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => { body += chunk; });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, body }));
      response.on('error', reject);
    });
    request.on('timeout', () => request.destroy(new Error(`no response within ${REQUEST_TIMEOUT_MS} ms`)));
    request.on('error', reject);
    request.end();
  });
}

/** A new TLS connection to B's inbound (as A), one request on it; returns the serial B served. */
function probeServedSerial(inboundB: number, pki: DemoPki): Promise<string> {
  return new Promise((resolve, reject) => {
    const request = https.request({
      host: '127.0.0.1',
      port: inboundB,
      path: '/hello',
      servername: 'localhost',
      cert: pki.a.certPem,
      key: pki.a.keyPem,
      ca: pki.ca.certPem,
      agent: false,
      timeout: REQUEST_TIMEOUT_MS,
    }, (response) => {
      const serial = (response.socket as tls.TLSSocket).getPeerCertificate().serialNumber;
      response.resume();
      response.on('end', () => {
        if (response.statusCode === 200) resolve(serial);
        else reject(new Error(`status ${response.statusCode ?? 0}`));
      });
    });
    request.on('timeout', () => request.destroy(new Error('timeout')));
    request.on('error', reject);
    request.end();
  });
}

interface ImpostorOutcome {
  /** First line of any HTTP response; set only if the impostor got through. */
  response?: string;
  error?: string;
  timedOut: boolean;
}

function impostorAttempt(inboundB: number, impostor: PemPair, caCertPem: string): Promise<ImpostorOutcome> {
  return new Promise((resolve) => {
    const outcome: ImpostorOutcome = { timedOut: false };
    // The impostor trusts B's CA, so the only thing that can stop it is B checking the impostor.
    const socket = tls.connect({
      host: '127.0.0.1',
      port: inboundB,
      servername: 'localhost',
      cert: impostor.certPem,
      key: impostor.keyPem,
      ca: caCertPem,
    });
    const timer = setTimeout(() => {
      outcome.timedOut = true;
      socket.destroy();
    }, IMPOSTOR_TIMEOUT_MS);
    socket.on('secureConnect', () => {
      // With TLS 1.3 the client finishes first; B's verdict on the client cert arrives as an alert.
      socket.write('GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
    });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      outcome.response ??= chunk.split('\r\n')[0];
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      outcome.error ??= error.code && !error.message.includes(error.code) ? `${error.code} ${error.message}` : error.message;
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(outcome);
    });
  });
}

interface Traffic {
  readonly sent: number;
  readonly failed: number;
  readonly failureReasons: Map<string, number>;
  stop(): Promise<void>;
}

/** A→B requests at a steady rate over keep-alive; a request counts only if B saw A's identity. */
function startTraffic(outboundA: number, targetUrl: string, agent: http.Agent): Traffic {
  const inFlight = new Set<Promise<void>>();
  const failureReasons = new Map<string, number>();
  let sent = 0;
  let failed = 0;
  const fail = (reason: string): void => {
    failed += 1;
    failureReasons.set(reason, (failureReasons.get(reason) ?? 0) + 1);
  };
  const fire = (): void => {
    sent += 1;
    const request = requestViaProxy(outboundA, targetUrl, agent)
      .then((response) => {
        if (response.status !== 200) {
          fail(`${response.status} ${String(response.headers['x-sidecar-error'] ?? '')}`.trim());
        } else if (!(parseEcho(response.body)?.xfcc ?? '').includes(`URI=${IDENTITY_A}`)) {
          fail('200 without caller identity');
        }
      })
      .catch((error: unknown) => fail(errorMessage(error)))
      .finally(() => inFlight.delete(request));
    inFlight.add(request);
  };
  const timer = setInterval(fire, TRAFFIC_INTERVAL_MS);
  return {
    get sent() { return sent; },
    get failed() { return failed; },
    failureReasons,
    async stop() {
      clearInterval(timer);
      await Promise.all([...inFlight]);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// App B

interface EchoApp {
  port: number;
  readonly requests: number;
  close(): Promise<void>;
}

interface EchoReply {
  service: string;
  path: string;
  xfcc: string | null;
}

async function startEchoApp(): Promise<EchoApp> {
  let requests = 0;
  const server = http.createServer((request, response) => {
    requests += 1;
    const reply: EchoReply = {
      service: 'b',
      path: request.url ?? '',
      xfcc: typeof request.headers['x-forwarded-client-cert'] === 'string' ? request.headers['x-forwarded-client-cert'] : null,
    };
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(JSON.stringify(reply));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as AddressInfo).port,
    get requests() { return requests; },
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

function parseEcho(body: string): EchoReply | undefined {
  try {
    return JSON.parse(body) as EchoReply;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Sidecar child processes

interface ReadyListeners {
  inbound?: string;
  outbound?: string;
  admin?: string;
}

class SidecarProcess {
  readonly name: string;
  readonly #child: ChildProcess;
  readonly #records: LogRecord[] = [];
  readonly #events = new EventEmitter();
  #stderr = '';
  #exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;

  private constructor(name: string, child: ChildProcess) {
    this.name = name;
    this.#child = child;
    this.#events.setMaxListeners(0);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const record = parseJsonLine(line);
      if (record === undefined) return;
      this.#records.push(record);
      this.#events.emit('record', record);
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => { this.#stderr += chunk; });
    child.on('error', (error) => {
      this.#stderr += `cannot start: ${error.message}\n`;
    });
    child.on('exit', (code, signal) => {
      this.#exit = { code, signal };
      this.#events.emit('exit');
    });
  }

  static start(name: string, cliPath: string, args: string[]): SidecarProcess {
    // info level: the readiness line and the handshake/reload lines the demo reports are info.
    const child = spawn(process.execPath, [cliPath, 'run', ...args, '--log-level', 'info'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return new SidecarProcess(name, child);
  }

  async waitReady(): Promise<ReadyListeners> {
    const record = await this.waitFor((r) => r.msg === 'sidecar ready', READY_TIMEOUT_MS);
    const listeners = record.listeners;
    if (typeof listeners !== 'object' || listeners === null) {
      throw new Error(`${this.name}: "sidecar ready" line has no listeners field`);
    }
    return listeners as ReadyListeners;
  }

  find(predicate: (record: LogRecord) => boolean): LogRecord | undefined {
    return this.#records.find(predicate);
  }

  waitFor(predicate: (record: LogRecord) => boolean, timeoutMs: number): Promise<LogRecord> {
    const seen = this.#records.find(predicate);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        this.#events.off('record', onRecord);
        this.#events.off('exit', onExit);
      };
      const onRecord = (record: LogRecord): void => {
        if (!predicate(record)) return;
        cleanup();
        resolve(record);
      };
      const onExit = (): void => {
        cleanup();
        reject(new Error(`${this.name} exited (${this.#describeExit()})${this.#stderrTail()}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${this.name}: expected log line not seen within ${timeoutMs} ms${this.#stderrTail()}`));
      }, timeoutMs);
      this.#events.on('record', onRecord);
      this.#events.once('exit', onExit);
      if (this.#exit) onExit();
    });
  }

  /** SIGTERM without waiting, for when the demo itself is interrupted. */
  terminate(): void {
    if (!this.#exit) this.#child.kill('SIGTERM');
  }

  /** SIGTERM, then SIGKILL if it has not drained and exited in time. */
  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.#exit) {
      const exited = once(this.#events, 'exit');
      this.#child.kill('SIGTERM');
      const timer = setTimeout(() => this.#child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    }
    return this.#exit!;
  }

  #describeExit(): string {
    return this.#exit?.code !== null && this.#exit?.code !== undefined ? `code ${this.#exit.code}` : `signal ${String(this.#exit?.signal)}`;
  }

  #stderrTail(): string {
    const tail = this.#stderr.trim().split('\n').slice(-3).join(' | ');
    return tail ? `: ${tail}` : '';
  }
}

function parseJsonLine(line: string): LogRecord | undefined {
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === 'object' && value !== null ? (value as LogRecord) : undefined;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Certificate directory, written the way the kubelet updates a mounted Secret

function serviceFiles(leaf: PemPair, caCertPem: string): Map<string, string> {
  return new Map([
    ['tls.crt', leaf.certPem],
    ['tls.key', leaf.keyPem],
    ['ca.crt', caCertPem],
  ]);
}

/**
 * The kubelet's atomic writer: files go into a fresh `..<timestamp>` directory, the `..data`
 * symlink is swapped to it with one rename, and the visible names are symlinks through `..data`.
 * A reader therefore sees either the whole old set or the whole new set, never a mix.
 */
async function writeKubernetesSecretDir(dir: string, files: Map<string, string>): Promise<void> {
  await mkdir(dir, { recursive: true });
  const dataLink = join(dir, '..data');
  const previous = await readlink(dataLink).catch(() => undefined);
  const version = `..${new Date().toISOString().replace(/[-:]/g, '_').replace('T', '_').replace('Z', '')}_${process.hrtime.bigint() % 1_000_000n}`;
  await mkdir(join(dir, version));
  for (const [name, content] of files) {
    const handle = await open(join(dir, version, name), 'wx', name.endsWith('.key') ? 0o600 : 0o644);
    await handle.writeFile(content);
    await handle.close();
  }
  const temporaryLink = join(dir, '..data_tmp');
  await rm(temporaryLink, { force: true });
  await symlink(version, temporaryLink);
  await rename(temporaryLink, dataLink);
  for (const name of files.keys()) {
    await symlink(join('..data', name), join(dir, name)).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'EEXIST') throw error;
    });
  }
  if (previous !== undefined && previous !== version) {
    await rm(join(dir, previous), { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------

function serialOf(pair: PemPair): string {
  return new X509Certificate(pair.certPem).serialNumber;
}

function portOf(address: string | undefined): number {
  const port = Number(address?.slice(address.lastIndexOf(':') + 1));
  if (!address || !Number.isInteger(port) || port <= 0) {
    throw new Error(`listener address ${String(address)} has no port`);
  }
  return port;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
