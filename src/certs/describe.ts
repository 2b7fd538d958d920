/**
 * Human- and machine-readable summaries of certificates, shared by /certs, `check` and `probe`.
 */
import type { X509Certificate } from 'node:crypto';
import { certIdentity, rfc2253 } from './identity.js';
import { validityOf } from './load.js';

export interface CertSummary {
  subject: string;
  issuer: string;
  sans: { dns: string[]; uri: string[]; ip: string[] };
  serial: string;
  notBefore: string;
  notAfter: string;
  sha256: string;
  isCA: boolean;
}

export function describeCertificate(cert: X509Certificate): CertSummary {
  const identity = certIdentity(cert);
  const { notBefore, notAfter } = validityOf(cert);
  return {
    subject: identity.subject,
    issuer: rfc2253(cert.issuer),
    sans: { dns: identity.dns, uri: identity.uris, ip: identity.ips },
    serial: cert.serialNumber,
    notBefore: notBefore.toISOString(),
    notAfter: notAfter.toISOString(),
    sha256: identity.sha256,
    isCA: cert.ca,
  };
}

/** "expires in 3d 4h" / "expired 2h ago". */
export function expiresIn(notAfter: Date, now = new Date()): string {
  const ms = notAfter.getTime() - now.getTime();
  const abs = Math.abs(ms);
  const days = Math.floor(abs / 86_400_000);
  const hours = Math.floor((abs % 86_400_000) / 3_600_000);
  const minutes = Math.floor((abs % 3_600_000) / 60_000);
  const span = days > 0 ? `${days}d ${hours}h` : hours > 0 ? `${hours}h ${minutes}m` : `${minutes}m`;
  return ms >= 0 ? `expires in ${span}` : `expired ${span} ago`;
}

export function sanList(summary: CertSummary): string {
  const parts = [...summary.sans.dns.map((name) => `DNS:${name}`), ...summary.sans.ip.map((ip) => `IP:${ip}`), ...summary.sans.uri.map((uri) => `URI:${uri}`)];
  return parts.length ? parts.join(', ') : '(none)';
}
