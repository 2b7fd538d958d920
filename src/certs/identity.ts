/**
 * Identity carried by a certificate: SPIFFE URI SANs, DNS and IP SANs, subject CN/OU, and the
 * subject as an RFC 2253 string (what Envoy puts in XFCC `Subject=`).
 */
import { createHash, type X509Certificate } from 'node:crypto';

export interface CertIdentity {
  uris: string[];
  dns: string[];
  ips: string[];
  commonName: string | undefined;
  organizationalUnits: string[];
  /** RFC 2253 order (most specific first), as `openssl x509 -nameopt RFC2253` prints it. */
  subject: string;
  serial: string;
  /** Lowercase hex SHA-256 of the certificate DER. */
  sha256: string;
}

/**
 * Splits Node's `subjectAltName` string ("DNS:a, URI:spiffe://x, IP Address:1.2.3.4"). Node quotes
 * a value as a JSON string when it holds a comma or quote, so a plain split on ", " would let a
 * crafted SAN inject a second entry.
 */
export function parseSubjectAltName(text: string | undefined): Array<{ type: string; value: string }> {
  const entries: Array<{ type: string; value: string }> = [];
  if (!text) return entries;
  let index = 0;
  while (index < text.length) {
    const colon = text.indexOf(':', index);
    if (colon < 0) break;
    const type = text.slice(index, colon);
    let value: string;
    let next: number;
    if (text[colon + 1] === '"') {
      let end = colon + 2;
      while (end < text.length && text[end] !== '"') end += text[end] === '\\' ? 2 : 1;
      value = JSON.parse(text.slice(colon + 1, end + 1)) as string;
      next = text.indexOf(', ', end + 1);
    } else {
      next = text.indexOf(', ', colon + 1);
      value = text.slice(colon + 1, next < 0 ? text.length : next);
    }
    entries.push({ type, value });
    if (next < 0) break;
    index = next + 2;
  }
  return entries;
}

/** Node's one-RDN-per-line name (certificate order) as RFC 2253 (most specific first). */
export function rfc2253(name: string): string {
  return name.split('\n').filter(Boolean).reverse().join(',');
}

/** Node prints the subject one RDN per line, in certificate order, each already RFC 2253-escaped. */
function subjectLines(cert: X509Certificate): string[] {
  return cert.subject.split('\n').filter((line) => line !== '');
}

function attribute(lines: string[], name: string): string[] {
  return lines.filter((line) => line.startsWith(`${name}=`)).map((line) => line.slice(name.length + 1).replace(/\\(.)/g, '$1'));
}

export function certIdentity(cert: X509Certificate): CertIdentity {
  const sans = parseSubjectAltName(cert.subjectAltName);
  const lines = subjectLines(cert);
  return {
    uris: sans.filter((san) => san.type === 'URI').map((san) => san.value),
    dns: sans.filter((san) => san.type === 'DNS').map((san) => san.value),
    ips: sans.filter((san) => san.type === 'IP Address').map((san) => san.value),
    commonName: attribute(lines, 'CN').at(-1),
    organizationalUnits: attribute(lines, 'OU'),
    subject: rfc2253(cert.subject),
    serial: cert.serialNumber,
    sha256: createHash('sha256').update(cert.raw).digest('hex'),
  };
}

/** The SPIFFE ID of a certificate, if it has exactly one `spiffe://` URI SAN. */
export function spiffeIdOf(identity: CertIdentity): string | undefined {
  const ids = identity.uris.filter((uri) => uri.startsWith('spiffe://'));
  return ids.length === 1 ? ids[0] : undefined;
}

/** One short name for logs and /peers: the SPIFFE ID, else the first DNS SAN, else the CN. */
export function displayName(identity: CertIdentity): string {
  return spiffeIdOf(identity) ?? identity.uris[0] ?? identity.dns[0] ?? (identity.commonName ? `CN=${identity.commonName}` : identity.subject);
}

const spiffeIdSyntax = /^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._-]+)+$/;

/**
 * A SPIFFE ID as the SPIFFE spec allows it: lowercase trust domain, a non-empty path of segments of
 * letters, digits, `.`, `-`, `_`, none of them `.` or `..`, no trailing slash, no percent-encoding,
 * query or fragment. A URI SAN that is not one (`spiffe://mesh.local/ns/shop/../admin`) is no
 * identity: it never matches an allow pattern or a trust domain.
 */
export function isSpiffeId(uri: string): boolean {
  return spiffeIdSyntax.test(uri) && !uri.slice('spiffe://'.length).split('/').some((segment) => segment === '.' || segment === '..');
}

/** A valid SPIFFE ID in `trustDomain`. */
export function inTrustDomain(uri: string, trustDomain: string): boolean {
  return uri.startsWith(`spiffe://${trustDomain}/`) && isSpiffeId(uri);
}

