/**
 * Human- and machine-readable summaries of certificates, shared by /certs, `check` and `probe`,
 * and what a leaf lacks for a sidecar's two roles (TLS server inbound, TLS client outbound).
 */
import type { X509Certificate } from 'node:crypto';
import { CertError } from '../errors.js';
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
  /** keyUsage bit names; null when the extension is absent (any use). */
  keyUsage: string[] | null;
  /** extendedKeyUsage names (an OID when unnamed); null when the extension is absent (any purpose). */
  extendedKeyUsage: string[] | null;
}

export function describeCertificate(cert: X509Certificate): CertSummary {
  const identity = certIdentity(cert);
  const { notBefore, notAfter } = validityOf(cert);
  const usage = certUsage(cert);
  return {
    subject: identity.subject,
    issuer: rfc2253(cert.issuer),
    sans: { dns: identity.dns, uri: identity.uris, ip: identity.ips },
    serial: cert.serialNumber,
    notBefore: notBefore.toISOString(),
    notAfter: notAfter.toISOString(),
    sha256: identity.sha256,
    isCA: cert.ca,
    keyUsage: usage.keyUsage ?? null,
    extendedKeyUsage: usage.extendedKeyUsage ?? null,
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

/** "serverAuth, clientAuth; keyUsage digitalSignature" / "any purpose (no extendedKeyUsage); …". */
export function usageList(summary: CertSummary): string {
  const extended = summary.extendedKeyUsage ? summary.extendedKeyUsage.join(', ') || '(empty extendedKeyUsage)' : 'any purpose (no extendedKeyUsage)';
  const key = summary.keyUsage ? `keyUsage ${summary.keyUsage.join(', ') || '(empty)'}` : 'no keyUsage';
  return `${extended}; ${key}`;
}

const extendedKeyUsageNames: Readonly<Record<string, string>> = {
  '1.3.6.1.5.5.7.3.1': 'serverAuth',
  '1.3.6.1.5.5.7.3.2': 'clientAuth',
  '1.3.6.1.5.5.7.3.3': 'codeSigning',
  '1.3.6.1.5.5.7.3.4': 'emailProtection',
  '1.3.6.1.5.5.7.3.8': 'timeStamping',
  '1.3.6.1.5.5.7.3.9': 'OCSPSigning',
  '2.5.29.37.0': 'anyExtendedKeyUsage',
};

/** RFC 5280 §4.2.1.3, in bit order. */
const keyUsageBits = ['digitalSignature', 'nonRepudiation', 'keyEncipherment', 'dataEncipherment', 'keyAgreement', 'keyCertSign', 'cRLSign', 'encipherOnly', 'decipherOnly'] as const;

/** What a certificate may be used for; undefined: that extension is absent, so any use is allowed. */
function certUsage(cert: X509Certificate): { keyUsage: string[] | undefined; extendedKeyUsage: string[] | undefined } {
  // Node 20 names the extendedKeyUsage OIDs `keyUsage`; later versions add `extKeyUsage`.
  const oids = (cert as X509Certificate & { extKeyUsage?: string[] }).extKeyUsage ?? cert.keyUsage;
  return { keyUsage: keyUsageOf(cert), extendedKeyUsage: oids?.map((oid) => extendedKeyUsageNames[oid] ?? oid) };
}

/**
 * Why peers will refuse a leaf that loads and verifies: a sidecar is the TLS server of its callers
 * and the TLS client of its upstreams, so its certificate must allow both (OpenSSL, and so Node,
 * nginx and Envoy's BoringSSL, refuse it otherwise: INVALID_PURPOSE), sign the ECDHE handshakes
 * (digitalSignature), and name itself (callers verify the SANs, not the CN).
 * `run` loads such a set and warns; `check` reports each as a problem.
 */
export function leafUsageProblems(leaf: X509Certificate, file: string): CertError[] {
  const problems: CertError[] = [];
  const { keyUsage, extendedKeyUsage } = certUsage(leaf);
  if (extendedKeyUsage) {
    const lacksServer = !extendedKeyUsage.includes('serverAuth');
    const lacksClient = !extendedKeyUsage.includes('clientAuth');
    const refusedBy = [
      ...(lacksServer ? ['callers refuse it when they connect to this sidecar (inbound)'] : []),
      ...(lacksClient ? ['peers refuse it when this sidecar calls them (outbound mTLS)'] : []),
    ];
    if (refusedBy.length > 0) {
      const lacks = [...(lacksServer ? ['serverAuth'] : []), ...(lacksClient ? ['clientAuth'] : [])].join(' and ');
      const has = extendedKeyUsage.join(', ') || 'empty';
      problems.push(new CertError('cert_usage_missing', file, `its extendedKeyUsage (${has}) lacks ${lacks}: ${refusedBy.join(', and ')}; OpenSSL's reason: INVALID_PURPOSE`));
    }
  }
  if (keyUsage && !keyUsage.includes('digitalSignature')) {
    const has = keyUsage.join(', ') || 'empty';
    problems.push(new CertError('cert_usage_missing', file, `its keyUsage (${has}) lacks digitalSignature, which every handshake the sidecar allows (ECDHE) needs: peers refuse it in both directions`));
  }
  const identity = certIdentity(leaf);
  if (identity.dns.length + identity.ips.length + identity.uris.length === 0) {
    problems.push(new CertError('cert_no_san', file, `"${identity.subject}" has no subjectAltName (no DNS, IP or URI SAN): callers cannot verify its name (upstream_name_mismatch) and it carries no SPIFFE identity`));
  }
  return problems;
}

// ---- keyUsage, read from the DER: node:crypto parses the certificate but does not expose its bits ----

/** id-ce-keyUsage (2.5.29.15) as DER OID content bytes. */
const keyUsageOid = Buffer.from([0x55, 0x1d, 0x0f]);

const derTag = { sequence: 0x30, oid: 0x06, octetString: 0x04, bitString: 0x03, extensions: 0xa3 } as const;

interface Tlv {
  tag: number;
  /** Offset of the content. */
  start: number;
  /** Offset just past the content. */
  end: number;
}

function tlvAt(der: Buffer, offset: number, limit = der.length): Tlv {
  const tag = der[offset];
  let length = der[offset + 1];
  if (tag === undefined || length === undefined) throw new Error('truncated DER');
  let start = offset + 2;
  if (length & 0x80) {
    const lengthBytes = length & 0x7f;
    if (lengthBytes === 0 || lengthBytes > 4) throw new Error('unsupported DER length');
    length = 0;
    for (let index = 0; index < lengthBytes; index += 1) length = length * 256 + (der[start + index] ?? 0);
    start += lengthBytes;
  }
  const end = start + length;
  if (end > limit) throw new Error('truncated DER');
  return { tag, start, end };
}

function childrenOf(der: Buffer, parent: Tlv): Tlv[] {
  const children: Tlv[] = [];
  for (let offset = parent.start; offset < parent.end; ) {
    const child = tlvAt(der, offset, parent.end);
    children.push(child);
    offset = child.end;
  }
  return children;
}

/** The keyUsage bits set, or undefined when the certificate has no keyUsage extension. */
function keyUsageOf(cert: X509Certificate): string[] | undefined {
  const der = cert.raw;
  // Certificate ::= SEQUENCE { tbsCertificate, ... }; tbsCertificate holds extensions as [3] EXPLICIT.
  const [tbs] = childrenOf(der, tlvAt(der, 0));
  const wrapper = tbs ? childrenOf(der, tbs).find((field) => field.tag === derTag.extensions) : undefined;
  const [extensions] = wrapper ? childrenOf(der, wrapper) : [];
  if (!extensions || extensions.tag !== derTag.sequence) return undefined;
  for (const extension of childrenOf(der, extensions)) {
    // Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
    const fields = childrenOf(der, extension);
    const id = fields[0];
    const value = fields.at(-1);
    if (id?.tag !== derTag.oid || !der.subarray(id.start, id.end).equals(keyUsageOid)) continue;
    // OpenSSL parses the certificate's structure up front but an extension's value only when used:
    // a value that is not a BIT STRING allows nothing (OpenSSL then refuses every purpose).
    let bits: Tlv | undefined;
    try {
      bits = value?.tag === derTag.octetString ? tlvAt(der, value.start, value.end) : undefined;
    } catch {
      bits = undefined;
    }
    if (bits?.tag !== derTag.bitString || bits.end <= bits.start) return [];
    // The first content byte counts the unused bits of the last byte; named bits start at the top bit.
    const bytes = der.subarray(bits.start + 1, bits.end);
    return keyUsageBits.filter((_name, bit) => ((bytes[bit >> 3] ?? 0) & (0x80 >> (bit & 7))) !== 0);
  }
  return undefined;
}
