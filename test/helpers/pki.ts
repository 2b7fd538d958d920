// Test PKI minted with the `openssl` CLI only, so the product's certificate parsing is checked
// against an independent implementation. Every certificate goes through `openssl ca`, because
// OpenSSL 3.0 has no other way to set explicit notBefore/notAfter dates (expired and
// not-yet-valid certificates must really be outside their validity period).
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rename, rm, symlink, unlink, writeFile, readFile, lstat } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export type KeyType = 'rsa' | 'ec' | 'ed25519';
/** pkcs8: `BEGIN PRIVATE KEY`; pkcs1: `BEGIN RSA PRIVATE KEY`; sec1: `BEGIN EC PRIVATE KEY`. */
export type KeyFormat = 'pkcs8' | 'pkcs1' | 'sec1';

export interface Issued {
  readonly dir: string;
  readonly certPath: string;
  readonly keyPath: string;
  readonly certPem: string;
  readonly keyPem: string;
  /** Uppercase hex, exactly as `openssl x509 -serial` prints it (without `serial=`). */
  readonly serial: string;
  /** sha256 hex (lowercase) of the DER encoding. */
  readonly sha256: string;
  readonly subject: string;
  readonly keyType: KeyType;
}

export interface CertificateAuthority extends Issued {
  /** This CA followed by its issuers up to the root (excluding nothing): the chain to append to leaves. */
  readonly chainPem: string;
  /** The self-signed root this CA descends from. */
  readonly rootPem: string;
}

export interface LeafOptions {
  cn: string;
  dns?: string[];
  uris?: string[];
  ips?: string[];
  keyType?: KeyType;
  keyFormat?: KeyFormat;
  /** Validity length from now (default 30 days). */
  days?: number;
  /** notAfter one day in the past. */
  expired?: boolean;
  /** notBefore one day in the future. */
  notYetValid?: boolean;
  /** Extended key usages; both by default. */
  client?: boolean;
  server?: boolean;
}

export interface CaOptions {
  cn: string;
  keyType?: KeyType;
  days?: number;
}

const DAY_MS = 24 * 60 * 60 * 1000;

/** Runs openssl and returns stdout; the error names the command and carries stderr. */
export async function openssl(args: string[], options: { cwd?: string; input?: string } = {}): Promise<string> {
  if (options.input !== undefined) {
    return opensslWithInput(args, options.input, options.cwd);
  }
  try {
    const { stdout } = await execFileAsync('openssl', args, { cwd: options.cwd, maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (error) {
    const failure = error as { stderr?: string; message: string };
    throw new Error(`openssl ${args.join(' ')} failed: ${failure.stderr ?? failure.message}`);
  }
}

function opensslWithInput(args: string[], input: string, cwd?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile('openssl', args, { cwd, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`openssl ${args.join(' ')} failed: ${stderr || error.message}`));
      else resolve(stdout);
    });
    child.stdin?.end(input);
  });
}

let scratchRoot: Promise<string> | undefined;
/** One scratch directory per test process, removed on exit. */
export function scratchDir(): Promise<string> {
  scratchRoot ??= mkdtemp(join(tmpdir(), 'sidecar-test-')).then((dir) => {
    // Exit handlers must be synchronous.
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    return dir;
  });
  return scratchRoot;
}

let counter = 0;
/** A new, empty directory under the scratch root. */
export async function freshDir(label: string): Promise<string> {
  const root = await scratchDir();
  counter += 1;
  const dir = join(root, `${label.replace(/[^A-Za-z0-9_.-]/g, '_')}-${counter}`);
  await mkdir(dir, { recursive: true });
  return dir;
}

async function generateKey(path: string, keyType: KeyType): Promise<void> {
  switch (keyType) {
    case 'rsa':
      await openssl(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', path]);
      return;
    case 'ec':
      await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', path]);
      return;
    case 'ed25519':
      await openssl(['genpkey', '-algorithm', 'ED25519', '-out', path]);
      return;
  }
}

/** Rewrites a PKCS#8 key file into the requested encoding. */
async function encodeKey(path: string, keyType: KeyType, keyFormat: KeyFormat): Promise<void> {
  if (keyFormat === 'pkcs8') return;
  if (keyFormat === 'pkcs1' && keyType !== 'rsa') throw new Error('PKCS#1 is an RSA key format');
  if (keyFormat === 'sec1' && keyType !== 'ec') throw new Error('SEC1 is an EC key format');
  const traditional = await openssl(['pkey', '-in', path, '-traditional']);
  await writeFile(path, traditional, { mode: 0o600 });
}

function asn1Time(date: Date): string {
  // GeneralizedTime YYYYMMDDHHMMSSZ; accepted by `openssl ca -startdate/-enddate` in 3.0.
  return date.toISOString().replace(/[-:T]/g, '').replace(/\.\d+Z$/, 'Z');
}

interface SignRequest {
  dir: string;
  subject: string;
  keyPath: string;
  extensions: string;
  notBefore: Date;
  notAfter: Date;
  /** Absent for a self-signed root. */
  issuer?: Issued;
}

async function signWithOpensslCa(request: SignRequest): Promise<string> {
  const workDir = join(request.dir, 'openssl-ca');
  await mkdir(join(workDir, 'new'), { recursive: true });
  await writeFile(join(workDir, 'index.txt'), '');
  // Ed25519 signatures take no separate digest.
  const signingKeyType = request.issuer?.keyType ?? (await keyTypeOf(request.keyPath));
  const config = [
    '[ ca ]',
    'default_ca = test_ca',
    '[ test_ca ]',
    `dir = ${workDir}`,
    'database = $dir/index.txt',
    'new_certs_dir = $dir/new',
    'rand_serial = yes',
    `default_md = ${signingKeyType === 'ed25519' ? 'default' : 'sha256'}`,
    'policy = policy_any',
    'unique_subject = no',
    'email_in_dn = no',
    'copy_extensions = none',
    '[ policy_any ]',
    'commonName = supplied',
    'organizationName = optional',
    'organizationalUnitName = optional',
    '[ req ]',
    'distinguished_name = req_dn',
    'prompt = no',
    '[ req_dn ]',
    'CN = placeholder',
    '[ cert_ext ]',
    request.extensions,
    '',
  ].join('\n');
  const configPath = join(workDir, 'openssl.cnf');
  await writeFile(configPath, config);
  const csrPath = join(workDir, 'request.csr');
  await openssl(['req', '-new', '-config', configPath, '-key', request.keyPath, '-subj', request.subject, '-out', csrPath]);
  const certPath = join(workDir, 'issued.pem');
  const args = [
    'ca', '-batch', '-notext', '-config', configPath, '-in', csrPath, '-out', certPath,
    '-extensions', 'cert_ext', '-preserveDN',
    '-startdate', asn1Time(request.notBefore), '-enddate', asn1Time(request.notAfter),
  ];
  if (request.issuer) args.push('-cert', request.issuer.certPath, '-keyfile', request.issuer.keyPath);
  else args.push('-selfsign', '-keyfile', request.keyPath);
  await openssl(args);
  return readFile(certPath, 'utf8');
}

async function keyTypeOf(keyPath: string): Promise<KeyType> {
  const text = await openssl(['pkey', '-in', keyPath, '-noout', '-text']);
  if (/ED25519/i.test(text)) return 'ed25519';
  if (/RSA/i.test(text.split('\n')[0] ?? '')) return 'rsa';
  return 'ec';
}

/** Serial, sha256 and subject of a PEM certificate, as the openssl CLI reports them. */
export async function describeCertificate(certPem: string): Promise<{ serial: string; sha256: string; subject: string; der: Buffer }> {
  const serialLine = await openssl(['x509', '-noout', '-serial'], { input: certPem });
  const subjectLine = await openssl(['x509', '-noout', '-subject', '-nameopt', 'RFC2253'], { input: certPem });
  const der = await derOf(certPem);
  return {
    serial: serialLine.trim().replace(/^serial=/, ''),
    subject: subjectLine.trim().replace(/^subject=/, ''),
    sha256: createHash('sha256').update(der).digest('hex'),
    der,
  };
}

/** DER bytes of the first certificate of a PEM, converted by `openssl x509 -outform DER`. */
export function derOf(certPem: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = execFile('openssl', ['x509', '-outform', 'DER'], { encoding: 'buffer', maxBuffer: 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`openssl x509 -outform DER failed: ${stderr.toString()}`));
      else resolve(stdout);
    });
    child.stdin?.end(certPem);
  });
}

async function finish(dir: string, keyPath: string, certPem: string, keyType: KeyType): Promise<Issued> {
  const certPath = join(dir, 'cert.pem');
  await writeFile(certPath, certPem);
  const keyPem = await readFile(keyPath, 'utf8');
  const { serial, sha256, subject } = await describeCertificate(certPem);
  return { dir, certPath, keyPath, certPem, keyPem, serial, sha256, subject, keyType };
}

function validity(days: number, expired = false, notYetValid = false): { notBefore: Date; notAfter: Date } {
  const now = Date.now();
  if (expired) return { notBefore: new Date(now - 10 * DAY_MS), notAfter: new Date(now - DAY_MS) };
  if (notYetValid) return { notBefore: new Date(now + DAY_MS), notAfter: new Date(now + (days + 1) * DAY_MS) };
  // An hour of back-dating tolerates clock skew between the openssl run and the verifier.
  return { notBefore: new Date(now - 60 * 60 * 1000), notAfter: new Date(now + days * DAY_MS) };
}

const CA_EXTENSIONS = [
  'basicConstraints = critical, CA:TRUE',
  'keyUsage = critical, keyCertSign, cRLSign, digitalSignature',
  'subjectKeyIdentifier = hash',
  'authorityKeyIdentifier = keyid:always',
].join('\n');

/** A self-signed root CA, valid from 30 days ago (so back-dated leaves still nest inside it). */
export function makeRootCA(options: CaOptions): Promise<CertificateAuthority> {
  return makeCA(options, { dirPrefix: 'ca', backdateDays: 30, defaultDays: 3650 });
}

/** An intermediate CA signed by `parent`. */
export function makeIntermediate(parent: CertificateAuthority, options: CaOptions): Promise<CertificateAuthority> {
  return makeCA(options, { dirPrefix: 'int', backdateDays: 29, defaultDays: 1825, parent });
}

/** A CA certificate signed by `parent`, or self-signed without one. */
async function makeCA(options: CaOptions, kind: { dirPrefix: string; backdateDays: number; defaultDays: number; parent?: CertificateAuthority }): Promise<CertificateAuthority> {
  const keyType = options.keyType ?? 'ec';
  const dir = await freshDir(`${kind.dirPrefix}-${options.cn}`);
  const keyPath = join(dir, 'key.pem');
  await generateKey(keyPath, keyType);
  const certPem = await signWithOpensslCa({
    dir,
    subject: `/O=mtls-sidecar tests/CN=${options.cn}`,
    keyPath,
    extensions: CA_EXTENSIONS,
    notBefore: new Date(Date.now() - kind.backdateDays * DAY_MS),
    notAfter: new Date(Date.now() + (options.days ?? kind.defaultDays) * DAY_MS),
    issuer: kind.parent,
  });
  const issued = await finish(dir, keyPath, certPem, keyType);
  return kind.parent
    ? { ...issued, chainPem: certPem + kind.parent.chainPem, rootPem: kind.parent.rootPem }
    : { ...issued, chainPem: certPem, rootPem: certPem };
}

export interface Leaf extends Issued {
  /** Leaf followed by the issuer's intermediates (never the root): what a chain file holds. */
  readonly chainPem: string;
  /** The trust bundle to verify this leaf: its root. */
  readonly rootPem: string;
}

/** A leaf certificate issued by `issuer` with the given SANs, key type and key encoding. */
export async function issueLeaf(issuer: CertificateAuthority, options: LeafOptions): Promise<Leaf> {
  const keyType = options.keyType ?? 'ec';
  const keyFormat = options.keyFormat ?? 'pkcs8';
  const dir = await freshDir(`leaf-${options.cn}`);
  const keyPath = join(dir, 'key.pem');
  await generateKey(keyPath, keyType);
  await encodeKey(keyPath, keyType, keyFormat);
  const sans = [
    ...(options.dns ?? []).map((name) => `DNS:${name}`),
    ...(options.uris ?? []).map((uri) => `URI:${uri}`),
    ...(options.ips ?? []).map((ip) => `IP:${ip}`),
  ];
  const usages = [];
  if (options.server ?? true) usages.push('serverAuth');
  if (options.client ?? true) usages.push('clientAuth');
  const keyUsage = keyType === 'rsa' ? 'digitalSignature, keyEncipherment' : 'digitalSignature';
  const extensions = [
    'basicConstraints = critical, CA:FALSE',
    `keyUsage = critical, ${keyUsage}`,
    ...(usages.length > 0 ? [`extendedKeyUsage = ${usages.join(', ')}`] : []),
    ...(sans.length > 0 ? [`subjectAltName = ${sans.join(', ')}`] : []),
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid:always',
  ].join('\n');
  const { notBefore, notAfter } = validity(options.days ?? 30, options.expired, options.notYetValid);
  const certPem = await signWithOpensslCa({ dir, subject: `/CN=${options.cn}`, keyPath, extensions, notBefore, notAfter, issuer });
  const issued = await finish(dir, keyPath, certPem, keyType);
  // Intermediates only: the root belongs in the peer's bundle, not the chain.
  const intermediates = issuer.chainPem === issuer.rootPem ? '' : issuer.chainPem.slice(0, issuer.chainPem.length - issuer.rootPem.length);
  return { ...issued, chainPem: certPem + intermediates, rootPem: issuer.rootPem };
}

const rootCache = new Map<string, Promise<CertificateAuthority>>();
/** A root CA shared by every caller in this test process (RSA key generation is slow). */
export function sharedRootCA(cn = 'mtls-sidecar test root', keyType: KeyType = 'ec'): Promise<CertificateAuthority> {
  const key = `${cn}|${keyType}`;
  let root = rootCache.get(key);
  if (!root) {
    root = makeRootCA({ cn, keyType });
    rootCache.set(key, root);
  }
  return root;
}

// ---- cert directory layouts (SPEC §3) ----

export type Layout = 'kubernetes' | 'generic' | 'spiffe' | 'istio';

export const LAYOUT_FILES: Readonly<Record<Layout, { chain: string; key: string; bundle: string }>> = {
  kubernetes: { chain: 'tls.crt', key: 'tls.key', bundle: 'ca.crt' },
  generic: { chain: 'cert.pem', key: 'key.pem', bundle: 'ca.pem' },
  spiffe: { chain: 'svid.pem', key: 'svid_key.pem', bundle: 'svid_bundle.pem' },
  istio: { chain: 'cert-chain.pem', key: 'key.pem', bundle: 'root-cert.pem' },
};

export interface CertDirContent {
  chainPem: string;
  keyPem: string;
  bundlePem: string;
}

/** The files a layout holds, by file name. */
export function layoutFiles(layout: Layout, content: CertDirContent): Record<string, string> {
  const names = LAYOUT_FILES[layout];
  return { [names.chain]: content.chainPem, [names.key]: content.keyPem, [names.bundle]: content.bundlePem };
}

/** Writes plain files with the names of `layout` into `dir` (created if missing). */
export async function writeLayout(dir: string, layout: Layout, content: CertDirContent): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const [name, text] of Object.entries(layoutFiles(layout, content))) {
    await writeFile(join(dir, name), text, { mode: name === LAYOUT_FILES[layout].key ? 0o600 : 0o644 });
  }
}

/** A leaf's cert-dir content: its chain, key and its root as the bundle (plus extra roots). */
export function certDirContent(leaf: Leaf, ...extraRoots: string[]): CertDirContent {
  return { chainPem: leaf.chainPem, keyPem: leaf.keyPem, bundlePem: [leaf.rootPem, ...extraRoots].join('') };
}

/**
 * Updates `dir` the way the kubelet updates a secret volume (AtomicWriter): the files go into a new
 * `..<timestamp>` directory, a `..data_tmp` symlink to it is renamed over `..data` (the one atomic
 * step), each visible name is a symlink `name -> ..data/name`, and the previous timestamped
 * directory is removed. Watchers see symlink churn, never a half-written file.
 */
export async function kubernetesAtomicWrite(dir: string, files: Record<string, string>): Promise<void> {
  await mkdir(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[-:]/g, '_').replace('T', '_').replace('Z', '');
  const versionName = `..${stamp}.${process.hrtime.bigint().toString().slice(-9)}`;
  const versionDir = join(dir, versionName);
  await mkdir(versionDir);
  for (const [name, text] of Object.entries(files)) {
    await writeFile(join(versionDir, name), text, { mode: 0o644 });
  }
  const previous = (await readdir(dir)).filter((entry) => entry.startsWith('..') && entry !== '..data' && entry !== versionName && entry !== '..data_tmp');
  const dataTmp = join(dir, '..data_tmp');
  await rm(dataTmp, { force: true });
  await symlink(versionName, dataTmp);
  await rename(dataTmp, join(dir, '..data'));
  for (const name of Object.keys(files)) {
    const visible = join(dir, name);
    const existing = await lstat(visible).catch(() => undefined);
    if (existing && !existing.isSymbolicLink()) await unlink(visible);
    if (!existing || !existing.isSymbolicLink()) await symlink(join('..data', name), visible);
  }
  // Names that are no longer part of the secret disappear, as with the kubelet.
  for (const entry of await readdir(dir)) {
    if (entry.startsWith('..')) continue;
    if (!(entry in files)) await rm(join(dir, entry), { force: true });
  }
  for (const old of previous) await rm(join(dir, old), { recursive: true, force: true });
}

/** Serial of every certificate in a PEM bundle, in order. */
export async function serialsOf(pem: string): Promise<string[]> {
  const blocks = splitPem(pem);
  const serials = [];
  for (const block of blocks) serials.push((await describeCertificate(block)).serial);
  return serials;
}

/** The `-----BEGIN CERTIFICATE-----` blocks of a text, in order. */
export function splitPem(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g)?.map((block) => (block.endsWith('\n') ? block : `${block}\n`)) ?? [];
}

/** Normalises a hex serial from any source (openssl, node, the product) for comparison. */
export function normalizeSerial(serial: string): string {
  return serial.replace(/[:\s]/g, '').toUpperCase().replace(/^0+(?=.)/, '');
}

export const TRUST_DOMAIN = 'test.local';

/** The SPIFFE ID tests give to service `name`. */
export function spiffeIdOf(name: string): string {
  return `spiffe://${TRUST_DOMAIN}/ns/default/sa/${name}`;
}

export interface ServiceIdentity {
  leaf: Leaf;
  /** A cert directory holding the leaf's chain, key and `bundle` (its root by default). */
  certDir: string;
  spiffeId: string;
}

/**
 * A service certificate as a mesh would issue it (DNS localhost, IP 127.0.0.1, URI SAN
 * spiffe://test.local/ns/default/sa/<name>), written to a fresh cert directory in `layout`.
 */
export async function makeService(
  issuer: CertificateAuthority,
  name: string,
  options: { layout?: Layout; bundlePem?: string } & Partial<LeafOptions> = {},
): Promise<ServiceIdentity> {
  const { layout = 'kubernetes', bundlePem, ...leafOptions } = options;
  const spiffeId = spiffeIdOf(name);
  const leaf = await issueLeaf(issuer, { cn: name, dns: ['localhost'], ips: ['127.0.0.1'], uris: [spiffeId], ...leafOptions });
  const certDir = await freshDir(`certdir-${name}`);
  await writeLayout(certDir, layout, { chainPem: leaf.chainPem, keyPem: leaf.keyPem, bundlePem: bundlePem ?? leaf.rootPem });
  return { leaf, certDir, spiffeId };
}
