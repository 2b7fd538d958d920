// Helpers for operability tests: the /metrics scrape read by a real Prometheus text parser,
// misbehaving peers (a TLS upstream or an app that accepts and never answers, a TLS server that
// refuses our client certificate at a chosen TLS version or accepts only chosen ciphers), an
// upstream that records each TLS connection it accepts (pooling), a raw TLS client that reports
// its own source port (so a "TLS handshake failed" line can be matched to the exact connection),
// the CLI run behind a launcher (another user), and what the openssl CLI says about a certificate.
import { spawn } from 'node:child_process';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type SecureVersion, type TLSSocket } from 'node:tls';
import parsePrometheusTextFormat, { type PrometheusFamily } from 'parse-prometheus-text-format';
import { closeServer, listenLoopback } from './apps.js';
import { plainRequest, runCommand, type CommandResult } from './clients.js';
import { openssl } from './pki.js';
import { CLI_PATH, REPO_ROOT, type Address, type LogLine, type Sidecar } from './sidecar.js';

export type { PrometheusFamily };

/** The whole /metrics scrape, parsed by parse-prometheus-text-format (throws on malformed text). */
export async function scrape(admin: Address): Promise<{ text: string; families: PrometheusFamily[] }> {
  const response = await plainRequest({ ...admin, path: '/metrics' });
  if (response.status !== 200) throw new Error(`/metrics answered ${response.status}: ${response.text}`);
  return { text: response.text, families: parsePrometheusTextFormat(response.text) };
}

export function family(families: PrometheusFamily[], name: string): PrometheusFamily | undefined {
  return families.find((candidate) => candidate.name === name);
}

/**
 * Sum of the samples of counter/gauge `name` whose labels include every pair of `labels`; 0 when
 * there is none (a labelled counter is only exported once it has been incremented).
 */
export function sampleValue(families: PrometheusFamily[], name: string, labels: Record<string, string> = {}): number {
  const found = family(families, name);
  if (!found) return 0;
  let total = 0;
  for (const sample of found.metrics) {
    if (sample.value === undefined) continue;
    if (Object.entries(labels).every(([key, value]) => sample.labels?.[key] === value)) total += Number(sample.value);
  }
  return total;
}

/** One sample value from a fresh scrape. */
export async function scrapeValue(admin: Address, name: string, labels: Record<string, string> = {}): Promise<number> {
  return sampleValue((await scrape(admin)).families, name, labels);
}

// ---- peers that misbehave ----

export interface HangingServer {
  readonly port: number;
  /** Requests received (and never answered). */
  readonly received: string[];
  close(): Promise<void>;
}

function hangingHandler(received: string[]) {
  return (request: { url?: string }) => {
    received.push(request.url ?? '');
  };
}

/** A plain HTTP app that accepts requests and never answers them. */
export async function startHangingApp(): Promise<HangingServer> {
  const received: string[] = [];
  const server = createHttpServer(hangingHandler(received));
  const port = await listenLoopback(server);
  return { port, received, close: () => closeServer(server) };
}

/** An HTTPS upstream that completes the handshake, reads the request and never answers. */
export async function startHangingTlsServer(options: { certPem: string; keyPem: string }): Promise<HangingServer> {
  const received: string[] = [];
  const server = createHttpsServer({ cert: options.certPem, key: options.keyPem }, hangingHandler(received));
  const port = await listenLoopback(server);
  return { port, received, close: () => closeServer(server) };
}

export interface ClientCertCheckingServer {
  readonly port: number;
  /** Requests that got through (none expected when our certificate is refused). */
  readonly received: string[];
  /** Handshake errors the server saw, as node reports them. */
  readonly handshakeErrors: string[];
  close(): Promise<void>;
}

/**
 * An HTTPS upstream that requires a client certificate issued by `ca`, speaking at most
 * `maxVersion`. With TLS 1.2 it refuses a foreign client certificate inside the handshake; with
 * TLS 1.3 the client's handshake is already complete when the refusal (an alert) arrives.
 */
export async function startClientCertCheckingServer(options: { certPem: string; keyPem: string; ca: string; maxVersion: SecureVersion }): Promise<ClientCertCheckingServer> {
  const received: string[] = [];
  const handshakeErrors: string[] = [];
  const server = createHttpsServer(
    { cert: options.certPem, key: options.keyPem, ca: options.ca, requestCert: true, rejectUnauthorized: true, maxVersion: options.maxVersion },
    (request, response) => {
      received.push(request.url ?? '');
      response.end('accepted');
    },
  );
  server.on('tlsClientError', (error) => handshakeErrors.push(error.message));
  const port = await listenLoopback(server);
  return { port, received, handshakeErrors, close: () => closeServer(server) };
}

export interface ConnectionCountingServer {
  readonly port: number;
  /** One entry per TLS connection accepted, in order: its SNI (null without) and the paths it carried. */
  readonly connections: Array<{ servername: string | null; paths: string[] }>;
  close(): Promise<void>;
}

/** An HTTPS upstream (keep-alive; answers every request 200) that records each TLS connection it accepts. */
export async function startConnectionCountingTlsServer(options: { certPem: string; keyPem: string }): Promise<ConnectionCountingServer> {
  const connections: ConnectionCountingServer['connections'] = [];
  const indexOf = new WeakMap<TLSSocket, number>();
  const server = createHttpsServer({ cert: options.certPem, key: options.keyPem }, (request, response) => {
    const index = indexOf.get(request.socket as TLSSocket);
    if (index !== undefined) connections[index]!.paths.push(request.url ?? '');
    response.end(JSON.stringify({ connection: index ?? null }));
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    indexOf.set(socket, connections.length);
    connections.push({ servername: (socket as TLSSocket & { servername?: string | false }).servername || null, paths: [] });
  });
  const port = await listenLoopback(server);
  return { port, connections, close: () => closeServer(server) };
}

// ---- the CLI behind a launcher ----

/** `node dist/cli.js ...args` behind `launcher` (e.g. `setpriv --reuid=…`), to completion, without SIDECAR_* variables. */
export function runCliAs(launcher: string[], args: string[], timeoutMs = 15000): Promise<CommandResult> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('SIDECAR_')));
  const [file, ...rest] = [...launcher, process.execPath, CLI_PATH, ...args];
  return runCommand(file!, rest, { env, timeoutMs, cwd: REPO_ROOT });
}

// ---- a TLS client that knows its own address ----

export interface TlsAttempt {
  /** The client's source port, to match the server's "peer" field. */
  localPort: number | undefined;
  /** Whether the client's side of the handshake completed. */
  handshakeCompleted: boolean;
  /** The first error the client saw (code or message), if any. */
  error: string | undefined;
  /** Everything the server sent back after the handshake. */
  response: string;
}

/**
 * Connects with TLS (optionally presenting `cert`/`key`), sends one HTTP/1.1 GET and reads until
 * the server closes. Never rejects: the outcome is described.
 */
export function tlsAttempt(options: Address & { ca: string; cert?: string; key?: string; timeoutMs?: number }): Promise<TlsAttempt> {
  const outcome: TlsAttempt = { localPort: undefined, handshakeCompleted: false, error: undefined, response: '' };
  const socket = tlsConnect({
    host: options.host,
    port: options.port,
    ca: options.ca,
    cert: options.cert,
    key: options.key,
    servername: 'localhost',
    rejectUnauthorized: true,
  });
  socket.once('secureConnect', () => {
    outcome.handshakeCompleted = true;
  });
  return observeAttempt(socket, outcome, {
    sendOn: 'secureConnect',
    request: 'GET /handshake-attempt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n',
    timeoutMs: options.timeoutMs ?? 5000,
  });
}

/**
 * Records the source port once connected, writes `request` on `sendOn` and collects the answer
 * until the server closes, an error (kept as its code) or `timeoutMs`. Never rejects.
 */
function observeAttempt<Outcome extends { localPort: number | undefined; response: string; error: string | undefined }>(
  socket: Socket,
  outcome: Outcome,
  options: { sendOn: 'connect' | 'secureConnect'; request: string; timeoutMs: number },
): Promise<Outcome> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(() => {
      outcome.error ??= `no outcome within ${options.timeoutMs} ms`;
      done();
    }, options.timeoutMs);
    socket.once('connect', () => {
      outcome.localPort = socket.localPort;
    });
    socket.once(options.sendOn, () => socket.write(options.request));
    socket.on('data', (chunk: Buffer) => {
      outcome.response += chunk.toString('utf8');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      outcome.error ??= error.code ?? error.message;
      done();
    });
    socket.once('close', done);
  });
}

// ---- log lines ----

/** The "TLS handshake failed" line with `reason` (and, when given, from source port `peerPort`). */
export function handshakeFailedLine(reason: string, peerPort?: number) {
  return (line: LogLine): boolean =>
    line.msg === 'TLS handshake failed' && line.reason === reason && (peerPort === undefined || String(line.peer ?? '').endsWith(`:${peerPort}`));
}

/** The "forwarding failed" line naming catalog code `code`. */
export function forwardingFailedLine(code: string, direction: 'inbound' | 'outbound', upstreamPort?: number) {
  return (line: LogLine): boolean =>
    line.msg === 'forwarding failed' &&
    line.error === code &&
    line.direction === direction &&
    (upstreamPort === undefined || String(line.upstream ?? '').endsWith(`:${upstreamPort}`));
}

/** Resolves with the exit code, or rejects when the process is still running after `timeoutMs`. */
export async function exitWithin(sidecar: Sidecar, timeoutMs: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`still running ${timeoutMs} ms later; output:\n${sidecar.output().slice(-3000)}`)), timeoutMs);
  });
  try {
    return (await Promise.race([sidecar.exited, timeout])).code;
  } finally {
    clearTimeout(timer);
  }
}

// ---- what openssl says ----

/** notAfter of a certificate in unix seconds, from `openssl x509 -enddate`. */
export async function opensslNotAfterSeconds(certPem: string): Promise<number> {
  const line = (await openssl(['x509', '-noout', '-enddate'], { input: certPem })).trim();
  return Math.floor(Date.parse(line.replace(/^notAfter=/, '')) / 1000);
}

/** notBefore and notAfter as ISO strings, from `openssl x509 -startdate -enddate`. */
export async function opensslValidity(certPem: string): Promise<{ notBefore: string; notAfter: string }> {
  const text = await openssl(['x509', '-noout', '-startdate', '-enddate'], { input: certPem });
  const field = (name: string) => new Date(Date.parse(new RegExp(`${name}=(.*)`).exec(text)![1]!)).toISOString();
  return { notBefore: field('notBefore'), notAfter: field('notAfter') };
}

/** The subjectAltName entries as `openssl x509 -ext subjectAltName` prints them ("DNS:localhost", "IP Address:127.0.0.1", "URI:…"). */
export async function opensslSanEntries(certPem: string): Promise<string[]> {
  const text = await openssl(['x509', '-noout', '-ext', 'subjectAltName'], { input: certPem });
  return text.split('\n').slice(1).join(',').split(',').map((entry) => entry.trim()).filter(Boolean);
}

/**
 * A ClientHello from `openssl s_client` with the given protocol/cipher options (an old or weak
 * client). `refusedLocally` is set when this openssl will not even send it.
 */
export async function opensslClientAttempt(address: Address, options: string[]): Promise<{ output: string; refusedLocally: string | undefined }> {
  const result = await runCommand('openssl', ['s_client', '-connect', `${address.host}:${address.port}`, ...options, '-servername', 'localhost'], { timeoutMs: 10000 });
  const output = `${result.stdout}\n${result.stderr}`;
  const local = /no protocols available|unknown option|Option unknown|wrong version number.*ssl_cipher|no ciphers available|no cipher match/i.exec(output);
  return { output, refusedLocally: local ? `openssl s_client ${options.join(' ')} refuses to connect here: ${local[0]}` : undefined };
}

/** A TLS 1.1-only client (security level 0, which OpenSSL 3 needs to offer TLS 1.1 at all). */
export function opensslTls11Attempt(address: Address): ReturnType<typeof opensslClientAttempt> {
  return opensslClientAttempt(address, ['-tls1_1', '-cipher', 'DEFAULT:@SECLEVEL=0']);
}

/** Plain HTTP sent to a (TLS) port; reports the source port and whatever came back. */
export function plaintextAttempt(address: Address, timeoutMs = 5000): Promise<{ localPort: number | undefined; response: string; error: string | undefined }> {
  return observeAttempt(netConnect({ host: address.host, port: address.port }), { localPort: undefined, response: '', error: undefined }, {
    sendOn: 'connect',
    request: 'GET /plaintext-attempt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n',
    timeoutMs,
  });
}

export interface OpensslServer {
  readonly port: number;
  /** Everything s_server printed, for failure messages. */
  output(): string;
  close(): Promise<void>;
}

/**
 * `openssl s_server -www` limited to one TLS version. With `caPath` it requires a client
 * certificate that verifies against it (`-Verify 1`): unlike node's server, OpenSSL refuses a bad
 * client certificate with an alert (unknown_ca), as nginx, Envoy and most OpenSSL-based servers do.
 * `cipher` limits the TLS 1.2 suites it accepts (e.g. CBC only).
 */
export async function startOpensslServer(options: { certPath: string; keyPath: string; caPath?: string; version: 'tls1_2' | 'tls1_3'; cipher?: string }): Promise<OpensslServer> {
  const verify = options.caPath ? ['-CAfile', options.caPath, '-Verify', '1', '-verify_return_error'] : [];
  const cipher = options.cipher ? ['-cipher', options.cipher] : [];
  const child = spawn('openssl', ['s_server', '-accept', '127.0.0.1:0', '-cert', options.certPath, '-key', options.keyPath, ...verify, ...cipher, '-www', `-${options.version}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`openssl s_server did not start:\n${text}`)), 5000);
    const onData = (chunk: Buffer) => {
      text += chunk.toString('utf8');
      const match = /ACCEPT 127\.0\.0\.1:(\d+)/.exec(text);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`openssl s_server exited (${code}):\n${text}`));
    });
  });
  return {
    port,
    output: () => text,
    close: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) {
          resolve();
          return;
        }
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}
