// Helpers for the certificate-usage tests: leaves with the exact keyUsage / extendedKeyUsage /
// subjectAltName lines an issuer may get wrong (minted by the openssl CLI), what openssl says a
// certificate may be used for, and bytes that are not TLS sent to a TLS port.
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { describeCertificate, freshDir, openssl, type CertificateAuthority, type KeyType, type Leaf } from './pki.js';
import type { Address } from './sidecar.js';

export interface UsageLeafOptions {
  cn: string;
  /** openssl `-subj` form; default `/CN=<cn>`. */
  subject?: string;
  keyType?: Exclude<KeyType, 'ed25519'>;
  /** openssl extension lines besides basicConstraints and the key identifiers, e.g. `keyUsage = critical, keyEncipherment`. */
  extensions: string[];
}

/**
 * A leaf signed by `issuer` with `openssl x509 -req` and exactly `extensions`. pki.ts's `issueLeaf`
 * always writes a correct keyUsage; these tests need the wrong ones.
 */
export async function issueLeafWithExtensions(issuer: CertificateAuthority, options: UsageLeafOptions): Promise<Leaf> {
  const keyType = options.keyType ?? 'rsa';
  const dir = await freshDir(`leaf-usage-${options.cn}`);
  const [keyPath, csrPath, certPath, extPath] = ['key.pem', 'request.csr', 'cert.pem', 'ext.cnf'].map((name) => join(dir, name)) as [string, string, string, string];
  await openssl(keyType === 'rsa' ? ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', keyPath] : ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', keyPath]);
  const lines = ['[ cert_ext ]', 'basicConstraints = critical, CA:FALSE', ...options.extensions, 'subjectKeyIdentifier = hash', 'authorityKeyIdentifier = keyid:always', ''];
  await writeFile(extPath, lines.join('\n'));
  await openssl(['req', '-new', '-key', keyPath, '-subj', options.subject ?? `/CN=${options.cn}`, '-out', csrPath]);
  await openssl([
    'x509', '-req', '-in', csrPath, '-CA', issuer.certPath, '-CAkey', issuer.keyPath,
    '-set_serial', `0x${randomBytes(12).toString('hex')}`, '-days', '30',
    '-extfile', extPath, '-extensions', 'cert_ext', '-sha256', '-out', certPath,
  ]);
  const certPem = await readFile(certPath, 'utf8');
  const keyPem = await readFile(keyPath, 'utf8');
  const { serial, sha256, subject } = await describeCertificate(certPem);
  const intermediates = issuer.chainPem === issuer.rootPem ? '' : issuer.chainPem.slice(0, issuer.chainPem.length - issuer.rootPem.length);
  return { dir, certPath, keyPath, certPem, keyPem, serial, sha256, subject, keyType, chainPem: certPem + intermediates, rootPem: issuer.rootPem };
}

/** openssl's display names -> the RFC 5280 names the product prints. */
const opensslUsageNames: Record<string, string> = {
  'Digital Signature': 'digitalSignature',
  'Non Repudiation': 'nonRepudiation',
  'Key Encipherment': 'keyEncipherment',
  'Data Encipherment': 'dataEncipherment',
  'Key Agreement': 'keyAgreement',
  'Certificate Sign': 'keyCertSign',
  'CRL Sign': 'cRLSign',
  'TLS Web Server Authentication': 'serverAuth',
  'TLS Web Client Authentication': 'clientAuth',
  'Code Signing': 'codeSigning',
  'E-mail Protection': 'emailProtection',
};

/** keyUsage and extendedKeyUsage as `openssl x509 -ext` prints them (null: no such extension). */
export async function opensslUsage(certPem: string): Promise<{ keyUsage: string[] | null; extendedKeyUsage: string[] | null }> {
  const entries = async (extension: string): Promise<string[] | null> => {
    const text = await openssl(['x509', '-noout', '-ext', extension], { input: certPem });
    // Nothing, or "No extensions in certificate", when the certificate lacks that extension.
    if (!text.startsWith('X509v3')) return null;
    return text.split('\n').slice(1).join(',').split(',').map((entry) => entry.trim()).filter(Boolean).map((entry) => opensslUsageNames[entry] ?? entry);
  };
  return { keyUsage: await entries('keyUsage'), extendedKeyUsage: await entries('extendedKeyUsage') };
}

/**
 * Sends `bytes` to a TCP port and waits until the server closes: what an SSH client or a port
 * scanner does to a TLS listener. Resolves with the client's source port (the server logs it);
 * `localAddress` (127.0.0.2, …) makes a distinct caller for the server's per-address log limit.
 */
export function sendRawBytes(address: Address, bytes: Buffer | string, options: { localAddress?: string; timeoutMs?: number } = {}): Promise<{ localPort: number | undefined; closedByServer: boolean }> {
  const timeoutMs = options.timeoutMs ?? 5000;
  return new Promise((resolve) => {
    const socket = netConnect({ host: address.host, port: address.port, localAddress: options.localAddress });
    let localPort: number | undefined;
    const finish = (closedByServer: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ localPort, closedByServer });
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    socket.once('connect', () => {
      localPort = socket.localPort;
      socket.write(bytes);
    });
    socket.on('data', () => {});
    socket.once('error', () => finish(true));
    socket.once('close', () => finish(true));
  });
}
