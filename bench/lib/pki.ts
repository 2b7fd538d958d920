import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runCommand } from './processes.js';

export type KeyType = 'rsa' | 'ec';

/** A cert dir in the Kubernetes TLS-secret layout, usable by the sidecar and by nginx alike. */
export interface ServiceCertDir {
  dir: string;
  cert: string;
  key: string;
  ca: string;
  spiffeId: string;
}

export interface BenchPki {
  keyType: KeyType;
  /** Identity of the calling side: outbound nginx and sidecar A present it. */
  a: ServiceCertDir;
  /** Identity of the called side: inbound nginx and sidecar B present it. */
  b: ServiceCertDir;
}

const TRUST_DOMAIN = 'bench.local';

async function openssl(args: string[], cwd: string): Promise<void> {
  const result = await runCommand('openssl', args, { cwd });
  if (result.code !== 0) throw new Error(`openssl ${args.join(' ')} failed (exit ${result.code}):\n${result.stderr}`);
}

function newKeyArgs(keyType: KeyType): string[] {
  return keyType === 'rsa' ? ['-newkey', 'rsa:2048'] : ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'];
}

/**
 * A CA and two leaf certificates minted by the openssl CLI (not by the product), so nginx and the
 * sidecar are measured on byte-identical key material. Leaves carry serverAuth+clientAuth and the
 * SANs DNS:localhost, IP:127.0.0.1 and a SPIFFE URI.
 */
export async function mintBenchPki(root: string, keyType: KeyType): Promise<BenchPki> {
  const caDir = path.join(root, 'ca');
  await mkdir(caDir, { recursive: true });
  await writeFile(
    path.join(caDir, 'ca.cnf'),
    [
      '[req]',
      'distinguished_name = dn',
      'prompt = no',
      '[dn]',
      'CN = mtls-sidecar bench CA',
      '[v3_ca]',
      'basicConstraints = critical,CA:TRUE',
      'keyUsage = critical,keyCertSign,cRLSign',
      'subjectKeyIdentifier = hash',
      '',
    ].join('\n'),
  );
  await openssl(
    ['req', '-x509', '-config', 'ca.cnf', '-extensions', 'v3_ca', ...newKeyArgs(keyType), '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2'],
    caDir,
  );
  const a = await issueLeaf(root, 'a', keyType, caDir);
  const b = await issueLeaf(root, 'b', keyType, caDir);
  return { keyType, a, b };
}

async function issueLeaf(root: string, name: string, keyType: KeyType, caDir: string): Promise<ServiceCertDir> {
  // The cert dir holds only tls.crt, tls.key and ca.crt; the CSR and extension file live beside it.
  const dir = path.join(root, name);
  const workDir = path.join(root, `${name}.work`);
  await mkdir(dir, { recursive: true });
  await mkdir(workDir, { recursive: true });
  const spiffeId = `spiffe://${TRUST_DOMAIN}/${name}`;
  await writeFile(
    path.join(workDir, 'leaf.ext'),
    [
      'basicConstraints = critical,CA:FALSE',
      'keyUsage = critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage = serverAuth,clientAuth',
      'subjectKeyIdentifier = hash',
      'authorityKeyIdentifier = keyid',
      `subjectAltName = DNS:localhost,IP:127.0.0.1,URI:${spiffeId}`,
      '',
    ].join('\n'),
  );
  const serial = `0x${Date.now().toString(16)}${name === 'a' ? '0a' : '0b'}`;
  await openssl(['req', ...newKeyArgs(keyType), '-nodes', '-keyout', path.join(dir, 'tls.key'), '-out', 'leaf.csr', '-subj', `/O=mtls-sidecar bench/CN=${name}`], workDir);
  await openssl(
    ['x509', '-req', '-in', 'leaf.csr', '-CA', path.join(caDir, 'ca.crt'), '-CAkey', path.join(caDir, 'ca.key'), '-set_serial', serial, '-days', '2', '-extfile', 'leaf.ext', '-out', path.join(dir, 'tls.crt')],
    workDir,
  );
  await openssl(['x509', '-in', path.join(caDir, 'ca.crt'), '-out', path.join(dir, 'ca.crt')], workDir);
  return { dir, cert: path.join(dir, 'tls.crt'), key: path.join(dir, 'tls.key'), ca: path.join(dir, 'ca.crt'), spiffeId };
}
