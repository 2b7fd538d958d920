// Helpers for identity, allow-list, XFCC and permissive-mode tests: leaves with arbitrary subjects
// (minted by the openssl CLI), what openssl says about a certificate, and the admin /metrics and
// /peers reports.
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { plainRequest } from './clients.js';
import { describeCertificate, freshDir, openssl, type CertificateAuthority, type Leaf } from './pki.js';
import type { Sidecar } from './sidecar.js';

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
