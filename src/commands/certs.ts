/**
 * `mtls-sidecar certs init` and `certs issue`: a development CA and service certificates in the
 * Kubernetes layout of SPEC §3. Each handler prints what it wrote and returns the exit code:
 * 0 done, 1 I/O or CA problem, 2 invalid input.
 */
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import {
  createDevCA,
  DEFAULT_LEAF_DAYS,
  uniqueDevCaName,
  InvalidCertOptionError,
  issueDevCert,
  readCaDir,
  SERVICE_DIR_FILES,
  writeCaDir,
  writeServiceDir,
} from '../certs/issue.js';
import { pathExists } from '../certs/load.js';

export interface CertsInitArgs {
  out: string;
  /** Keep an existing CA and succeed (for compose/init steps that run on every start). */
  ifMissing?: boolean;
  days?: number;
  name?: string;
}

export interface CertsIssueArgs {
  ca: string;
  name: string;
  dns?: string[];
  spiffe?: string[];
  ip?: string[];
  days?: number;
  out: string;
  /** Replace an existing certificate, key or different trust bundle in --out (refused otherwise). */
  force?: boolean;
}

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;

export async function certsInit(args: CertsInitArgs): Promise<number> {
  const out = resolve(args.out);
  // Replacing a CA silently would orphan every certificate it issued.
  if (await pathExists(join(out, 'ca.key'))) {
    if (args.ifMissing) {
      process.stdout.write(`certs init: ${join(out, 'ca.key')} already exists; keeping it (--if-missing)\n`);
      return EXIT_OK;
    }
    process.stderr.write(`certs init: ${join(out, 'ca.key')} already exists; remove it, choose another --out, or pass --if-missing to keep it\n`);
    return EXIT_FAILED;
  }
  return runStep('certs init', async () => {
    const ca = createDevCA({ commonName: args.name ?? uniqueDevCaName(), days: args.days });
    await writeCaDir(out, ca);
    const cert = new X509Certificate(ca.certPem);
    printSummary([
      `wrote ${join(out, 'ca.crt')} and ${join(out, 'ca.key')} (0600)`,
      `subject  ${oneLineDn(cert.subject)}`,
      `serial   ${cert.serialNumber}`,
      `expires  ${isoDate(cert.validTo)}`,
      `next: mtls-sidecar certs issue --ca ${args.out} --name NAME --spiffe spiffe://TRUST-DOMAIN/PATH --out DIR`,
    ]);
  });
}

export async function certsIssue(args: CertsIssueArgs): Promise<number> {
  const out = resolve(args.out);
  return runStep('certs issue', async () => {
    const ca = await readCaDir(resolve(args.ca));
    // A sidecar may be serving the directory: replacing its key silently changes its identity.
    const replaced = await filesIssueWouldReplace(out, ca.certPem);
    if (replaced.length > 0 && !args.force) {
      const [verb, them] = replaced.length === 1 ? ['exists', 'it'] : ['exist', 'them'];
      throw new Error(`${listFiles(replaced)} already ${verb} (a sidecar may be serving ${them}); choose another --out, remove ${them}, or pass --force to replace ${them}`);
    }
    const leaf = issueDevCert(ca, {
      name: args.name,
      dns: splitList(args.dns),
      spiffe: splitList(args.spiffe),
      ips: splitList(args.ip),
      days: args.days,
    });
    await writeServiceDir(out, leaf, ca.certPem);
    if (leaf.cappedAtCaExpiry) {
      const days = args.days ?? DEFAULT_LEAF_DAYS;
      process.stderr.write(`certs issue: warning: ${days} days would outlive the CA, which expires ${leaf.cappedAtCaExpiry.toISOString()}; the certificate expires with it\n`);
    }
    const cert = new X509Certificate(leaf.certPem);
    printSummary([
      `wrote ${join(out, 'tls.crt')}, ${join(out, 'tls.key')} (0600) and ${join(out, 'ca.crt')}${replaced.length > 0 ? ` (replacing the previous ${listFiles(replaced.map((file) => basename(file)))}: --force)` : ''}`,
      `subject  ${oneLineDn(cert.subject)}`,
      `issuer   ${oneLineDn(cert.issuer)}`,
      `SANs     ${cert.subjectAltName ?? '(none)'}`,
      `serial   ${cert.serialNumber}`,
      `expires  ${isoDate(cert.validTo)}`,
    ]);
  });
}

/**
 * The files of `dir` that issuing would replace: an existing certificate or key, and a trust bundle
 * other than this CA's certificate (issuing into the CA's own directory rewrites the same ca.crt).
 */
async function filesIssueWouldReplace(dir: string, caCertPem: string): Promise<string[]> {
  const replaced: string[] = [];
  for (const path of [join(dir, SERVICE_DIR_FILES.cert), join(dir, SERVICE_DIR_FILES.key)]) {
    if (await pathExists(path)) replaced.push(path);
  }
  const bundle = join(dir, SERVICE_DIR_FILES.ca);
  if ((await pathExists(bundle)) && (await readFile(bundle, 'utf8').catch(() => undefined)) !== caCertPem) replaced.push(bundle);
  return replaced;
}

/** "a", "a and b", "a, b and c". */
function listFiles(files: string[]): string {
  return files.length > 1 ? `${files.slice(0, -1).join(', ')} and ${files.at(-1)}` : (files[0] ?? '');
}

async function runStep(command: string, step: () => Promise<void>): Promise<number> {
  try {
    await step();
    return EXIT_OK;
  } catch (error) {
    if (error instanceof InvalidCertOptionError) {
      process.stderr.write(`${command}: ${error.message}\n`);
      return EXIT_USAGE;
    }
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`${command}: ${message}\n`);
    return EXIT_FAILED;
  }
}

/** Accepts both repeated flags and comma-separated values (`--dns a,b`, `SIDECAR_DNS=a,b`). */
function splitList(values: string[] | undefined): string[] {
  return (values ?? []).flatMap((value) => String(value).split(',')).map((value) => value.trim()).filter((value) => value !== '');
}

function printSummary(lines: string[]): void {
  process.stdout.write(lines.map((line) => `${line}\n`).join(''));
}

function oneLineDn(dn: string): string {
  return dn.split('\n').join(', ');
}

function isoDate(validTo: string): string {
  return new Date(validTo).toISOString();
}
