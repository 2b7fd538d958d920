// Helpers for identity, allow-list, XFCC and permissive-mode tests: leaves with arbitrary subjects
// (minted by the openssl CLI), what openssl says about a certificate, the admin /metrics and /peers
// reports, raw HTTP over TLS (so the test controls every header byte and its casing), and requests
// from a chosen loopback source address.
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import type { EchoReply } from './apps.js';
import { plainRequest } from './clients.js';
import { describeCertificate, freshDir, openssl, type CertificateAuthority, type Leaf } from './pki.js';
import type { Address, Sidecar } from './sidecar.js';

export interface SubjectLeafOptions {
  /** openssl `-subj` form, most significant RDN first: `/O=Acme, Inc/OU=Payments/CN=client`. */
  subject: string;
  dns?: string[];
  uris?: string[];
  ips?: string[];
}

/**
 * A client+server leaf (EC P-256) with an arbitrary subject, signed by `issuer` with
 * `openssl x509 -req`. pki.ts's `issueLeaf` only writes `/CN=…` subjects; identity tests need O,
 * OU and awkward characters.
 */
export async function issueLeafWithSubject(issuer: CertificateAuthority, options: SubjectLeafOptions): Promise<Leaf> {
  const dir = await freshDir('leaf-subject');
  const keyPath = join(dir, 'key.pem');
  const csrPath = join(dir, 'request.csr');
  const certPath = join(dir, 'cert.pem');
  const extPath = join(dir, 'ext.cnf');
  await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', keyPath]);
  const sans = [
    ...(options.dns ?? []).map((name) => `DNS:${name}`),
    ...(options.uris ?? []).map((uri) => `URI:${uri}`),
    ...(options.ips ?? []).map((ip) => `IP:${ip}`),
  ];
  await writeFile(
    extPath,
    [
      '[ cert_ext ]',
      'basicConstraints = critical, CA:FALSE',
      'keyUsage = critical, digitalSignature',
      'extendedKeyUsage = serverAuth, clientAuth',
      ...(sans.length > 0 ? [`subjectAltName = ${sans.join(', ')}`] : []),
      'subjectKeyIdentifier = hash',
      'authorityKeyIdentifier = keyid:always',
      '',
    ].join('\n'),
  );
  await openssl(['req', '-new', '-key', keyPath, '-subj', options.subject, '-out', csrPath]);
  await openssl([
    'x509', '-req', '-in', csrPath, '-CA', issuer.certPath, '-CAkey', issuer.keyPath,
    '-set_serial', `0x${randomBytes(12).toString('hex')}`, '-days', '30',
    '-extfile', extPath, '-extensions', 'cert_ext', '-sha256', '-out', certPath,
  ]);
  const certPem = await readFile(certPath, 'utf8');
  const keyPem = await readFile(keyPath, 'utf8');
  const { serial, sha256, subject } = await describeCertificate(certPem);
  const intermediates = issuer.chainPem === issuer.rootPem ? '' : issuer.chainPem.slice(0, issuer.chainPem.length - issuer.rootPem.length);
  return { dir, certPath, keyPath, certPem, keyPem, serial, sha256, subject, keyType: 'ec', chainPem: certPem + intermediates, rootPem: issuer.rootPem };
}

/** The subjectAltName entries of a certificate as `openssl x509 -noout -ext subjectAltName` prints them, in order. */
export async function opensslSans(certPem: string): Promise<Array<{ type: string; value: string }>> {
  const text = await openssl(['x509', '-noout', '-ext', 'subjectAltName'], { input: certPem });
  const body = text.split('\n').slice(1).join(' ').trim();
  if (body === '') return [];
  return body.split(/,\s*/).map((entry) => {
    const colon = entry.indexOf(':');
    return { type: entry.slice(0, colon), value: entry.slice(colon + 1) };
  });
}

/** Values of header `name` as the app received them (every copy, from the raw header list). */
export function headerCopies(reply: Pick<EchoReply, 'rawHeaders'>, name: string): string[] {
  const copies: string[] = [];
  for (let index = 0; index < reply.rawHeaders.length; index += 2) {
    if (reply.rawHeaders[index]?.toLowerCase() === name.toLowerCase()) copies.push(reply.rawHeaders[index + 1] ?? '');
  }
  return copies;
}

// ---- admin endpoints ----

export async function fetchMetrics(sidecar: Sidecar): Promise<string> {
  const response = await plainRequest({ host: sidecar.admin.host, port: sidecar.admin.port, path: '/metrics' });
  if (response.status !== 200) throw new Error(`/metrics answered ${response.status}: ${response.text}`);
  return response.text;
}

/**
 * The value of sample `name` whose labels include every pair of `labels` (summed over the matching
 * samples), or 0 when there is none: a counter that was never incremented is often not exported.
 */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!match || match[1] !== name) continue;
    const present = new Map<string, string>();
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) present.set(pair[1]!, pair[2]!);
    if (Object.entries(labels).every(([key, value]) => present.get(key) === value)) total += Number(match[3]);
  }
  return total;
}

export interface PeerEntry {
  address: string;
  identity: string;
  tls: string;
  requests: number;
  lastSeen?: string;
  [field: string]: unknown;
}

export interface PeersReport {
  peers: PeerEntry[];
  [field: string]: unknown;
}

export async function fetchPeers(sidecar: Sidecar): Promise<PeersReport> {
  const response = await plainRequest({ host: sidecar.admin.host, port: sidecar.admin.port, path: '/peers' });
  if (response.status !== 200) throw new Error(`/peers answered ${response.status}: ${response.text}`);
  return response.json<PeersReport>();
}

// ---- raw HTTP over TLS ----

export interface RawResponse {
  status: number;
  /** The head exactly as received. */
  head: string;
  body: string;
  /** Whether the server closes the connection within `ms` after the response (the socket is then destroyed). */
  closedWithin(ms: number): Promise<boolean>;
  /** Closes our side (for keep-alive exchanges). */
  destroy(): void;
}

/**
 * Writes `request` byte for byte over a verified TLS connection (Node's HTTP client would normalise
 * header case and merge duplicates) and resolves once one whole response has arrived: by
 * Content-Length, chunked terminator, or the server closing the connection.
 */
export function rawTlsExchange(options: Address & { cert?: string; key?: string; ca: string; request: string; timeoutMs?: number }): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: options.host, port: options.port, cert: options.cert, key: options.key, ca: options.ca, servername: 'localhost', rejectUnauthorized: true });
    const timeoutMs = options.timeoutMs ?? 10000;
    let received = Buffer.alloc(0);
    let done = false;
    let ended = false;
    const endWaiters: Array<() => void> = [];
    const timer = setTimeout(() => socket.destroy(new Error(`raw exchange timed out after ${timeoutMs} ms; received: ${received.toString('utf8').slice(0, 500)}`)), timeoutMs);
    const finish = (complete: { head: string; body: string }) => {
      done = true;
      clearTimeout(timer);
      resolve({
        status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(complete.head)?.[1] ?? 0),
        head: complete.head,
        body: complete.body,
        closedWithin: (ms) =>
          new Promise((closed) => {
            if (ended) {
              closed(true);
              return;
            }
            const wait = setTimeout(() => {
              socket.destroy();
              closed(false);
            }, ms);
            endWaiters.push(() => {
              clearTimeout(wait);
              closed(true);
            });
          }),
        destroy: () => socket.destroy(),
      });
    };
    socket.once('secureConnect', () => socket.write(options.request));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (done) return;
      const complete = completeResponse(received);
      if (complete) finish(complete);
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      if (!done) reject(error);
    });
    socket.once('end', () => {
      ended = true;
      for (const waiter of endWaiters) waiter();
      if (!done) {
        const text = received.toString('utf8');
        const split = text.indexOf('\r\n\r\n');
        finish({ head: split < 0 ? text : text.slice(0, split), body: split < 0 ? '' : text.slice(split + 4) });
      }
      socket.destroy();
    });
  });
}

/** The head and body when `data` holds one whole response framed by Content-Length or chunking. */
function completeResponse(data: Buffer): { head: string; body: string } | undefined {
  const split = data.indexOf('\r\n\r\n');
  if (split < 0) return undefined;
  const head = data.subarray(0, split).toString('utf8');
  const rest = data.subarray(split + 4);
  const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
  if (length) {
    const size = Number(length[1]);
    return rest.length >= size ? { head, body: rest.subarray(0, size).toString('utf8') } : undefined;
  }
  if (/\r\ntransfer-encoding:\s*chunked/i.test(head)) {
    const text = rest.toString('utf8');
    return /(^|\r\n)0\r\n\r\n$/.test(text) ? { head, body: dechunk(text) } : undefined;
  }
  return undefined;
}

function dechunk(body: string): string {
  let out = '';
  let rest = body;
  for (;;) {
    const lineEnd = rest.indexOf('\r\n');
    if (lineEnd < 0) return out;
    const size = parseInt(rest.slice(0, lineEnd), 16);
    if (!size) return out;
    out += rest.slice(lineEnd + 2, lineEnd + 2 + size);
    rest = rest.slice(lineEnd + 2 + size + 2);
  }
}

// ---- requests from a chosen source address ----

export interface SourcedRequestOptions extends Address {
  /** Loopback source address, e.g. 127.0.0.2, so the server sees distinct callers. */
  localAddress: string;
  path: string;
  /** Present for HTTPS; `cert`/`key` absent means TLS without a client certificate. */
  tls?: { ca: string; cert?: string; key?: string };
  timeoutMs?: number;
}

/** One GET on a fresh connection from `localAddress`; resolves with status and body. */
export function requestFrom(options: SourcedRequestOptions): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const common = { host: options.host, port: options.port, path: options.path, localAddress: options.localAddress, agent: false as const };
    const request = options.tls
      ? httpsRequest({ ...common, ca: options.tls.ca, cert: options.tls.cert, key: options.tls.key, servername: 'localhost', rejectUnauthorized: true })
      : httpRequest(common);
    const timer = setTimeout(() => request.destroy(new Error(`request ${options.path} timed out after ${options.timeoutMs ?? 5000} ms`)), options.timeoutMs ?? 5000);
    request.on('response', (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        clearTimeout(timer);
        resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') });
      });
      response.on('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
    request.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    request.end();
  });
}
