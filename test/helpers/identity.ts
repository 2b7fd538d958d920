// Helpers for identity, allow-list, XFCC and permissive-mode tests: leaves with arbitrary subjects
// (minted by the openssl CLI), what openssl says about a certificate, the admin /metrics and
// /peers reports, and a stand-in for a Kubernetes Service in front of server replicas.
import { connect as netConnect, createServer, type Socket } from 'node:net';
import { listenLoopback } from './apps.js';
import { plainRequest } from './clients.js';
import { issueLeafWithExtensions } from './cert-usage.js';
import { openssl, type CertificateAuthority, type Leaf } from './pki.js';
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
export function issueLeafWithSubject(issuer: CertificateAuthority, options: SubjectLeafOptions): Promise<Leaf> {
  const sans = [
    ...(options.dns ?? []).map((name) => `DNS:${name}`),
    ...(options.uris ?? []).map((uri) => `URI:${uri}`),
    ...(options.ips ?? []).map((ip) => `IP:${ip}`),
  ];
  return issueLeafWithExtensions(issuer, {
    cn: 'subject',
    subject: options.subject,
    keyType: 'ec',
    extensions: ['keyUsage = critical, digitalSignature', 'extendedKeyUsage = serverAuth, clientAuth', ...(sans.length > 0 ? [`subjectAltName = ${sans.join(', ')}`] : [])],
  });
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

// ---- admin endpoints ----

export async function fetchMetrics(sidecar: Pick<Sidecar, 'admin'>): Promise<string> {
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
  windowSeconds: number;
  summary: Record<'mtls' | 'tls' | 'plaintext', number>;
  complete: boolean;
  strictSafe: boolean;
  verdict: string;
  peers: PeerEntry[];
}

/** GET /peers, or /peers?window=WINDOW; throws unless the answer is 200. */
export async function fetchPeers(sidecar: Sidecar, window?: string): Promise<PeersReport> {
  const path = window === undefined ? '/peers' : `/peers?window=${encodeURIComponent(window)}`;
  const response = await plainRequest({ host: sidecar.admin.host, port: sidecar.admin.port, path });
  if (response.status !== 200) throw new Error(`${path} answered ${response.status}: ${response.text}`);
  return response.json<PeersReport>();
}

// ---- a Service in front of server replicas ----

export interface ServiceStandIn {
  /** Where callers connect: 127.0.0.1 and a port of its own (the Service's cluster IP and port). */
  readonly address: Address;
  /** Sends new connections to `endpoint`; established ones stay where they are, as with kube-proxy. */
  route(endpoint: Address): void;
  close(): Promise<void>;
}

/**
 * A stand-in for a Kubernetes Service (kube-proxy): an L4 forwarder that connects each new
 * connection to the current endpoint from the caller's own source address (kube-proxy keeps the
 * pod IP), and pipes bytes both ways, half-close included. TLS passes through untouched.
 */
export async function startServiceStandIn(endpoint: Address): Promise<ServiceStandIn> {
  let current = endpoint;
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (client) => {
    const upstream = netConnect({ host: current.host, port: current.port, localAddress: client.remoteAddress, allowHalfOpen: true });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
    }
    // An error or close on either side (a reset included) ends both, as a NAT'd connection would.
    const cut = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', cut);
    upstream.on('error', cut);
    client.once('close', cut);
    upstream.once('close', cut);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  const port = await listenLoopback(server);
  return {
    address: { host: '127.0.0.1', port },
    route(next) {
      current = next;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
