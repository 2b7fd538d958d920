/**
 * Development PKI: a throwaway CA and short-lived service certificates, for trying the sidecar
 * locally and for the demo. Certificates are built with node-forge; the RSA key pairs come from
 * node:crypto because forge's pure-JS key generation takes seconds per key.
 *
 * Not a production CA: no revocation, no policy, the CA key sits in a file.
 */
import { createPrivateKey, generateKeyPairSync, type KeyObject, randomBytes, X509Certificate } from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import { basename, join } from 'node:path';
import forge from 'node-forge';

export interface PemPair {
  certPem: string;
  keyPem: string;
}

export interface IssuedCert extends PemPair {
  /** Set when the validity asked for outlived the CA: the certificate then ends when the CA does. */
  cappedAtCaExpiry?: Date;
}

export interface DevCAOptions {
  commonName?: string;
  /** Validity in days from now; default 365. */
  days?: number;
}

export interface DevCertOptions {
  /** Subject common name. */
  name: string;
  dns?: string[];
  /** URI SANs, each `spiffe://<trust-domain>/<path>`. */
  spiffe?: string[];
  /** IPv4 or IPv6 addresses. */
  ips?: string[];
  /** Validity in days from now; default 30 (short-lived, like a mesh workload certificate). */
  days?: number;
  /** Start of validity; default five minutes ago so a peer whose clock lags still accepts it. */
  notBefore?: Date;
  /** Include extKeyUsage clientAuth; default true. */
  client?: boolean;
  /** Include extKeyUsage serverAuth; default true. */
  server?: boolean;
}

/** A caller-supplied option is invalid; `option` names it as the CLI spells it. */
export class InvalidCertOptionError extends Error {
  readonly option: string;
  constructor(option: string, message: string) {
    super(`${option}: ${message}`);
    this.name = 'InvalidCertOptionError';
    this.option = option;
  }
}

export const DEFAULT_CA_NAME = 'mtls-sidecar dev CA';

/**
 * The default CA name with a random suffix: two dev CAs with one name make every "signed by an
 * unknown authority" message useless ("issued by CN=mtls-sidecar dev CA, our bundle holds CN=mtls-sidecar dev CA").
 */
export function uniqueDevCaName(): string {
  return `${DEFAULT_CA_NAME} ${randomBytes(3).toString('hex')}`;
}
export const DEFAULT_CA_DAYS = 365;
export const DEFAULT_LEAF_DAYS = 30;
const CLOCK_SKEW_MS = 5 * 60 * 1000;
const DAY_MS = 24 * 60 * 60 * 1000;

const CA_CERT_FILE = 'ca.crt';
const CA_KEY_FILE = 'ca.key';
const SERVICE_CERT_FILE = 'tls.crt';
const SERVICE_KEY_FILE = 'tls.key';

/** The files `writeServiceDir` writes into its directory (the Kubernetes TLS secret layout). */
export const SERVICE_DIR_FILES = { cert: SERVICE_CERT_FILE, key: SERVICE_KEY_FILE, ca: CA_CERT_FILE } as const;

export function createDevCA(opts: DevCAOptions = {}): PemPair {
  const commonName = opts.commonName ?? uniqueDevCaName();
  requireName('--name', commonName);
  const days = validDays(opts.days ?? DEFAULT_CA_DAYS);
  const keys = generateRsaKeys();

  const now = Date.now();
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = randomSerialHex();
  cert.validity.notBefore = new Date(now - CLOCK_SKEW_MS);
  cert.validity.notAfter = new Date(now + days * DAY_MS);
  const subject = [{ name: 'commonName', value: commonName }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(keys.privateKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem: keys.privateKeyPem };
}

export function issueDevCert(ca: PemPair, opts: DevCertOptions): IssuedCert {
  requireName('--name', opts.name);
  const dns = (opts.dns ?? []).map((name) => validDnsName(name));
  const spiffe = (opts.spiffe ?? []).map((id) => validSpiffeId(id));
  const ips = (opts.ips ?? []).map((ip) => validIp(ip));
  const days = validDays(opts.days ?? DEFAULT_LEAF_DAYS);
  const client = opts.client ?? true;
  const server = opts.server ?? true;
  if (!client && !server) {
    throw new InvalidCertOptionError('client/server', 'a certificate must allow client or server use (or both)');
  }

  const caCert = forge.pki.certificateFromPem(ca.certPem);
  const caKey = forge.pki.privateKeyFromPem(ca.keyPem);

  // "--days 30" means 30 days from now; the skew allowance only moves the start back.
  const now = Date.now();
  const notBefore = opts.notBefore ?? new Date(now - CLOCK_SKEW_MS);
  const requestedNotAfter = opts.notBefore ? new Date(notBefore.getTime() + days * DAY_MS) : new Date(now + days * DAY_MS);
  const caNotAfter = caCert.validity.notAfter;
  if (caNotAfter.getTime() <= now) {
    throw new Error(`the CA certificate expired at ${caNotAfter.toISOString()}; create a new CA with "mtls-sidecar certs init"`);
  }
  // After the CA check: a CA that cannot issue anything is the first thing to fix.
  if (dns.length + spiffe.length + ips.length === 0) {
    throw new InvalidCertOptionError(
      '--dns/--ip/--spiffe',
      `none given; give at least one, e.g. --dns ${validDnsNameOr(opts.name, 'NAME')} --spiffe spiffe://TRUST-DOMAIN/PATH: callers check the name they dial against the certificate's DNS/IP SANs and identify it by its SPIFFE ID, so a certificate without any SAN fails every connection (upstream_name_mismatch)`,
    );
  }
  const keys = generateRsaKeys();
  // Verifiers refuse a chain once its CA has expired, so validity past it would only mislead.
  const capped = requestedNotAfter > caNotAfter;
  const notAfter = capped ? caNotAfter : requestedNotAfter;
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = randomSerialHex();
  cert.validity.notBefore = notBefore;
  cert.validity.notAfter = notAfter;
  cert.setSubject([{ name: 'commonName', value: opts.name }]);
  cert.setIssuer(caCert.subject.attributes);

  const altNames = [
    ...dns.map((value) => ({ type: 2, value })),
    ...spiffe.map((value) => ({ type: 6, value })),
    ...ips.map((ip) => ({ type: 7, ip })),
  ];
  const extensions: object[] = [
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: server, clientAuth: client },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: authorityKeyId(caCert) },
  ];
  if (altNames.length > 0) {
    // RFC 5280: the SAN extension is critical when the subject DN is empty; ours never is.
    extensions.push({ name: 'subjectAltName', altNames });
  }
  cert.setExtensions(extensions);
  cert.sign(caKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem: keys.privateKeyPem, ...(capped ? { cappedAtCaExpiry: caNotAfter } : {}) };
}

/** Writes DIR/ca.crt and DIR/ca.key (mode 0600), creating DIR if needed. */
export async function writeCaDir(dir: string, ca: PemPair): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, CA_CERT_FILE), ca.certPem, 0o644);
  await writeFileAtomic(join(dir, CA_KEY_FILE), ca.keyPem, 0o600);
}

/** Reads a CA written by `writeCaDir` and checks it can sign: a CA certificate with its RSA key. */
export async function readCaDir(dir: string): Promise<PemPair> {
  const certPath = join(dir, CA_CERT_FILE);
  const keyPath = join(dir, CA_KEY_FILE);
  const certPem = await readCaFile(certPath, dir);
  const keyPem = await readCaFile(keyPath, dir);

  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (error) {
    throw new Error(`${certPath} is not a PEM certificate (${errorMessage(error)})`);
  }
  if (!cert.ca) {
    throw new Error(`${certPath} is not a CA certificate (basicConstraints cA is not true)`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (error) {
    throw new Error(`${keyPath} is not a PEM private key (${errorMessage(error)})`);
  }
  if (key.asymmetricKeyType !== 'rsa') {
    throw new Error(`${keyPath} is a ${String(key.asymmetricKeyType)} key; the dev CA signs with node-forge, which needs RSA`);
  }
  if (!cert.checkPrivateKey(key)) {
    throw new Error(`${keyPath} does not belong to the certificate in ${certPath}`);
  }
  return { certPem, keyPem };
}

async function readCaFile(path: string, dir: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error(`${path} not found; create a CA first with "mtls-sidecar certs init --out ${dir}"`);
    }
    throw new Error(`cannot read ${path}: ${errorMessage(error)}`);
  }
}

/**
 * Writes the Kubernetes TLS secret layout of SPEC §3: DIR/tls.crt, DIR/tls.key (0600), DIR/ca.crt.
 * Each file is replaced by rename, so a sidecar reading the directory never sees a half-written
 * file (it may briefly see a new tls.crt with the old tls.key; its loader rejects such a mix).
 */
export async function writeServiceDir(dir: string, leaf: PemPair, caCertPem: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, SERVICE_CERT_FILE), leaf.certPem, 0o644);
  await writeFileAtomic(join(dir, SERVICE_KEY_FILE), leaf.keyPem, 0o600);
  await writeFileAtomic(join(dir, CA_CERT_FILE), caCertPem, 0o644);
}

async function writeFileAtomic(path: string, content: string, mode: number): Promise<void> {
  const temporary = join(path, '..', `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  // Created with its final mode, so a key is never readable by others, even for an instant.
  const handle = await open(temporary, 'wx', mode);
  try {
    await handle.writeFile(content);
    await handle.sync();
  } catch (error) {
    await handle.close();
    await rm(temporary, { force: true });
    throw error;
  }
  await handle.close();
  try {
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}

function generateRsaKeys(): { publicKey: forge.pki.rsa.PublicKey; privateKey: forge.pki.rsa.PrivateKey; privateKeyPem: string } {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return {
    publicKey: forge.pki.publicKeyFromPem(publicKey) as forge.pki.rsa.PublicKey,
    privateKey: forge.pki.privateKeyFromPem(privateKey) as forge.pki.rsa.PrivateKey,
    privateKeyPem: privateKey,
  };
}

/** 16 random bytes as a positive DER INTEGER: top bit clear (positive), not zero (minimal encoding). */
function randomSerialHex(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x40;
  return bytes.toString('hex');
}

function authorityKeyId(caCert: forge.pki.Certificate): string {
  const ski = caCert.getExtension('subjectKeyIdentifier') as { subjectKeyIdentifier?: string } | null;
  if (ski?.subjectKeyIdentifier) return forge.util.hexToBytes(ski.subjectKeyIdentifier);
  return caCert.generateSubjectKeyIdentifier().getBytes();
}

function requireName(option: string, name: string): void {
  if (typeof name !== 'string' || name.trim() === '') {
    throw new InvalidCertOptionError(option, 'must be a non-empty name');
  }
}

function validDays(days: number): number {
  if (!Number.isFinite(days) || days <= 0) {
    throw new InvalidCertOptionError('--days', `must be a positive number of days, got ${String(days)}`);
  }
  return days;
}

// One or more labels of letters, digits and hyphens; a leading "*." wildcard is allowed.
const DNS_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$/i;

function validDnsName(name: string): string {
  if (name.length > 253 || !DNS_NAME.test(name)) {
    throw new InvalidCertOptionError('--dns', `"${name}" is not a DNS name (letters, digits, hyphens and dots; "*." allowed as the first label)`);
  }
  return name;
}

/** `name` when it is a DNS name (the usual case: the service name), else `fallback`. */
function validDnsNameOr(name: string, fallback: string): string {
  return name.length <= 253 && DNS_NAME.test(name) ? name : fallback;
}

function validSpiffeId(id: string): string {
  const hint = 'expected spiffe://<trust-domain>/<path>, e.g. spiffe://example.org/ns/default/sa/web';
  if (!id.startsWith('spiffe://')) {
    throw new InvalidCertOptionError('--spiffe', `"${id}" does not start with spiffe:// (${hint})`);
  }
  let url: URL;
  try {
    url = new URL(id);
  } catch {
    throw new InvalidCertOptionError('--spiffe', `"${id}" is not a valid URI (${hint})`);
  }
  if (url.hostname === '' || url.port !== '' || url.username !== '' || url.search !== '' || url.hash !== '') {
    throw new InvalidCertOptionError('--spiffe', `"${id}" must have a trust domain and no port, user, query or fragment (${hint})`);
  }
  return id;
}

function validIp(ip: string): string {
  if (isIP(ip) === 0) {
    throw new InvalidCertOptionError('--ip', `"${ip}" is not an IPv4 or IPv6 address`);
  }
  return ip;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
