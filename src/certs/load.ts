/**
 * Loads a certificate directory into a validated CertSet (SPEC §3). Parsing and validation use
 * node:crypto only. A set is returned only when all of it is valid together; otherwise a CertError
 * names the file, the problem and the fix.
 */
import { createHash, createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { CertError, keyParseError } from '../errors.js';
import type { CertDirConfig } from '../config.js';
import { certIdentity, rfc2253, type CertIdentity } from './identity.js';

export interface Layout {
  name: 'kubernetes' | 'generic' | 'spiffe-helper' | 'istio' | 'custom';
  cert: string;
  key: string;
  ca: string;
}

/** Recognised layouts, first match wins. */
export const layouts: readonly Layout[] = [
  { name: 'kubernetes', cert: 'tls.crt', key: 'tls.key', ca: 'ca.crt' },
  { name: 'generic', cert: 'cert.pem', key: 'key.pem', ca: 'ca.pem' },
  { name: 'spiffe-helper', cert: 'svid.pem', key: 'svid_key.pem', ca: 'svid_bundle.pem' },
  { name: 'istio', cert: 'cert-chain.pem', key: 'key.pem', ca: 'root-cert.pem' },
];

export interface CertFiles {
  layout: Layout['name'];
  cert: string;
  key: string;
  ca: string;
  passphrase: string | undefined;
}

/** A validated certificate set: what listeners and agents are built from. */
export interface CertSet {
  files: CertFiles;
  /** Leaf first, then intermediates: every certificate here is sent to peers. */
  chain: X509Certificate[];
  leaf: X509Certificate;
  bundle: X509Certificate[];
  chainPem: string;
  /** Unencrypted PKCS#8 PEM of the private key. Never logged. */
  keyPem: string;
  bundlePem: string;
  identity: CertIdentity;
  /** sha256 over the three files' bytes: equal hashes are the same set, not a rotation. */
  contentHash: string;
  notBefore: Date;
  notAfter: Date;
}

export interface RawCertFiles {
  files: CertFiles;
  certText: Buffer;
  keyText: Buffer;
  caText: Buffer;
  contentHash: string;
}

/** Whether a path exists (any kind of file). */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

function resolveIn(dir: string, file: string): string {
  return isAbsolute(file) ? file : join(dir, file);
}

/**
 * Which files make up the set: flags first, else the first layout all three of whose files exist,
 * else the first whose chain file exists (so the missing ones are named). A stray file of another
 * layout (an empty `tls.crt` next to a spiffe-helper set) does not hide a complete set.
 */
export async function resolveCertFiles(config: CertDirConfig): Promise<CertFiles> {
  const dirStat = await stat(config.dir).catch(() => undefined);
  if (!dirStat?.isDirectory()) throw new CertError('cert_dir_missing', config.dir);
  let detected: Layout | undefined;
  let partial: Layout | undefined;
  for (const layout of layouts) {
    const present = await Promise.all([layout.cert, layout.key, layout.ca].map((name) => pathExists(join(config.dir, name))));
    if (present.every(Boolean)) {
      detected = layout;
      break;
    }
    if (present[0]) partial ??= layout;
  }
  detected ??= partial;
  const overridden = config.certFile !== undefined || config.keyFile !== undefined || config.caFile !== undefined;
  if (!detected && !(config.certFile && config.keyFile && config.caFile)) {
    if (!overridden) throw new CertError('no_layout', config.dir);
  }
  const base = detected ?? layouts[0]!;
  let passphrase: string | undefined;
  if (config.keyPassphraseFile) {
    const path = resolveIn(config.dir, config.keyPassphraseFile);
    passphrase = (await readCertFile(path)).toString('utf8').replace(/\r?\n$/, '');
  }
  return {
    layout: overridden ? 'custom' : base.name,
    cert: resolveIn(config.dir, config.certFile ?? base.cert),
    key: resolveIn(config.dir, config.keyFile ?? base.key),
    ca: resolveIn(config.dir, config.caFile ?? base.ca),
    passphrase,
  };
}

/** Reads one file of the set; missing, unreadable and empty files are CertErrors naming it. */
export async function readCertFile(path: string): Promise<Buffer> {
  try {
    const content = await readFile(path);
    if (content.length === 0) throw new CertError('file_empty', path);
    return content;
  } catch (error) {
    if (error instanceof CertError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new CertError('file_missing', path);
    throw new CertError('file_unreadable', path, unreadableDetail(code, (error as Error).message));
  }
}

/** Why a file cannot be read, in words (an errno alone tells an operator little). */
function unreadableDetail(code: string | undefined, message: string): string {
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return `permission denied for uid ${process.getuid?.() ?? '?'} (${code}): the secret volume needs a mode or fsGroup that lets the sidecar's user read it`;
    case 'EISDIR':
      return 'it is a directory, not a file (EISDIR)';
    default:
      return code ? `${code}: ${message}` : message;
  }
}

/** Reads the three files' bytes (no validation) and hashes them. */
export async function readCertFiles(config: CertDirConfig): Promise<RawCertFiles> {
  const files = await resolveCertFiles(config);
  const [certText, keyText, caText] = await Promise.all([readCertFile(files.cert), readCertFile(files.key), readCertFile(files.ca)]);
  const hash = createHash('sha256');
  for (const part of [certText, keyText, caText, Buffer.from(files.passphrase ?? '')]) {
    hash.update(String(part.length)).update(':').update(part);
  }
  return { files, certText, keyText, caText, contentHash: hash.digest('hex') };
}

const pemCertificate = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;

/** Splits a PEM file into certificates; a truncated or corrupt block is an error, not skipped. */
export function parseCertificates(text: string, file: string): X509Certificate[] {
  const begins = text.match(/-----BEGIN CERTIFICATE-----/g)?.length ?? 0;
  const blocks = text.match(pemCertificate) ?? [];
  if (begins === 0) throw new CertError('cert_parse_error', file, 'no PEM certificate block found');
  if (blocks.length !== begins) throw new CertError('cert_parse_error', file, `${begins - blocks.length} certificate block(s) are truncated`);
  return blocks.map((block, index) => {
    try {
      return new X509Certificate(block);
    } catch (error) {
      throw new CertError('cert_parse_error', file, `certificate #${index + 1} does not parse (${(error as Error).message})`);
    }
  });
}

/** PKCS#8 `ENCRYPTED PRIVATE KEY`, or a traditional (PKCS#1/SEC1) key with an encryption header. */
const encryptedKeyPem = /-----BEGIN ENCRYPTED PRIVATE KEY-----|^Proc-Type:\s*4,ENCRYPTED/m;

export function parsePrivateKey(text: Buffer, file: string, passphrase: string | undefined): KeyObject {
  try {
    return createPrivateKey({ key: text, format: 'pem', ...(passphrase === undefined ? {} : { passphrase }) });
  } catch {
    // Told apart by the PEM itself, not OpenSSL's error text: a wrong passphrase can also end in a
    // decoding error when the garbage it decrypts to happens to be padded correctly.
    if (!encryptedKeyPem.test(text.toString('latin1'))) throw keyParseError(file, 'not_a_key');
    throw keyParseError(file, passphrase === undefined ? 'passphrase_missing' : 'passphrase_wrong');
  }
}

export function validityOf(cert: X509Certificate): { notBefore: Date; notAfter: Date } {
  return { notBefore: new Date(cert.validFrom), notAfter: new Date(cert.validTo) };
}

function isSameCertificate(a: X509Certificate, b: X509Certificate): boolean {
  return a.fingerprint256 === b.fingerprint256;
}

/** Whether `parent` issued `child`: names (and key identifiers) match and the signature verifies. */
export function issuedBy(child: X509Certificate, parent: X509Certificate): boolean {
  return child.checkIssued(parent) && child.verify(parent.publicKey);
}

export function isSelfSigned(cert: X509Certificate): boolean {
  return issuedBy(cert, cert);
}

/**
 * Walks from the leaf through the chain's intermediates to a certificate in the bundle, checking
 * each signature and validity window. Returns the path (leaf first, anchor last).
 *
 * Where the walk stops short of the bundle it says why, as far as the files can tell: a
 * certificate whose issuer is nowhere (not in the chain, not in the bundle) is `chain_incomplete`
 * (that issuer may be a missing intermediate or a root missing from the bundle: the fix names
 * both); a chain that ends at a self-signed certificate outside the bundle, or at a certificate
 * whose named issuer is present but did not sign it, is `chain_untrusted`.
 */
export function verifyChain(chain: X509Certificate[], bundle: X509Certificate[], now: Date, files: { cert: string; ca: string }): X509Certificate[] {
  const [leaf, ...intermediates] = chain;
  if (!leaf) throw new CertError('cert_parse_error', files.cert, 'no certificate');
  const path: X509Certificate[] = [];
  let current = leaf;
  for (let depth = 0; depth < 10; depth += 1) {
    checkValidity(current, now, depth === 0 ? files.cert : `${files.cert} (chain certificate ${depth + 1})`);
    path.push(current);
    if (bundle.some((root) => isSameCertificate(root, current))) return path;
    const anchor = bundle.find((root) => issuedBy(current, root));
    if (anchor) {
      checkValidity(anchor, now, `${files.ca} (root ${rfc2253(anchor.subject)})`);
      path.push(anchor);
      return path;
    }
    const next = intermediates.find((candidate) => !isSameCertificate(candidate, current) && issuedBy(current, candidate));
    if (!next) throw chainEnd(current, [...intermediates, ...bundle], files);
    current = next;
  }
  throw new CertError('chain_untrusted', files.cert, 'the chain is longer than 10 certificates');
}

/** Why the walk cannot go on from `current` (nothing in the chain or the bundle issued it). */
function chainEnd(current: X509Certificate, known: X509Certificate[], files: { cert: string; ca: string }): CertError {
  const subject = rfc2253(current.subject);
  const issuer = rfc2253(current.issuer);
  if (isSelfSigned(current)) {
    return new CertError('chain_untrusted', files.cert, `the chain ends at the self-signed "${subject}", which is not in ${files.ca}`);
  }
  const sameName = known.find((candidate) => !isSameCertificate(candidate, current) && candidate.subject === current.issuer);
  if (sameName) {
    return new CertError('chain_untrusted', files.cert, `"${subject}" names "${issuer}" as its issuer, but the certificate of that name in the chain or in ${files.ca} did not sign it (a different key: a re-issued CA?)`);
  }
  return new CertError('chain_incomplete', files.cert, `"${subject}" was issued by "${issuer}", which is neither in the chain file nor in ${files.ca}`);
}

function checkValidity(cert: X509Certificate, now: Date, file: string): void {
  const { notBefore, notAfter } = validityOf(cert);
  if (now < notBefore) throw new CertError('cert_not_yet_valid', file, `valid from ${notBefore.toISOString()}`);
  if (now > notAfter) throw new CertError('cert_expired', file, `expired at ${notAfter.toISOString()}`);
}

/**
 * The key does not belong to the chain's first certificate. When it belongs to a later one, the
 * chain file is in the wrong order (intermediate first): chain_out_of_order rather than blaming the key.
 */
export function keyMismatch(files: { cert: string; key: string }, leaf: X509Certificate, chain: X509Certificate[] = [leaf], key?: KeyObject): CertError {
  const owner = key ? chain.findIndex((cert, index) => index > 0 && cert.checkPrivateKey(key)) : -1;
  if (owner > 0) {
    return new CertError('chain_out_of_order', files.cert, `the key (${files.key}) belongs to certificate ${owner + 1} (${chain[owner]!.subject.replace(/\n/g, ', ')}), not to the first (serial ${leaf.serialNumber})`);
  }
  return new CertError('key_mismatch', files.key, `it does not match the certificate in ${files.cert} (serial ${leaf.serialNumber})`);
}

/** Validates raw files into a CertSet, or throws the first CertError found. */
export function validateCertFiles(raw: RawCertFiles, now = new Date()): CertSet {
  const { files } = raw;
  const chain = parseCertificates(raw.certText.toString('utf8'), files.cert);
  const bundle = parseCertificates(raw.caText.toString('utf8'), files.ca);
  if (bundle.length === 0) throw new CertError('bundle_empty', files.ca);
  const key = parsePrivateKey(raw.keyText, files.key, files.passphrase);
  const leaf = chain[0]!;
  if (!leaf.checkPrivateKey(key)) throw keyMismatch(files, leaf, chain, key);
  verifyChain(chain, bundle, now, files);
  const { notBefore, notAfter } = validityOf(leaf);
  return {
    files,
    chain,
    leaf,
    bundle,
    chainPem: chain.map((cert) => cert.toString()).join(''),
    keyPem: key.export({ type: 'pkcs8', format: 'pem' }).toString(),
    bundlePem: bundle.map((cert) => cert.toString()).join(''),
    identity: certIdentity(leaf),
    contentHash: raw.contentHash,
    notBefore,
    notAfter,
  };
}

/** Reads and validates the directory in one step (start-up, `check`). */
export async function loadCertDir(config: CertDirConfig, now = new Date()): Promise<CertSet> {
  return validateCertFiles(await readCertFiles(config), now);
}
