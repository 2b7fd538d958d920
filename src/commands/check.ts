/**
 * `mtls-sidecar check`: loads the cert dir exactly as `run` does, then reports what it found and,
 * for each problem, its code and the fix. Unlike `run`, it keeps going after the first problem so
 * the operator sees all of them at once. It also reports what `run` accepts but peers refuse: a
 * leaf not allowed for TLS server and client use, or with no SAN.
 */
import type { X509Certificate } from 'node:crypto';
import type { CertDirConfig } from '../config.js';
import { describeCertificate, expiresIn, leafUsageProblems, sanList, usageList, type CertSummary } from '../certs/describe.js';
import { keyMismatch, parseCertificates, parsePrivateKey, readCertFile, readCertFiles, resolveCertFiles, validateCertFiles, validityOf, verifyChain, type CertFiles } from '../certs/load.js';
import { CertError, diagnosticProblems, type CertProblemCode, type DiagnosticCode } from '../errors.js';

export interface Problem {
  code: CertProblemCode | DiagnosticCode;
  file: string | undefined;
  message: string;
  fix: string;
}

export interface CheckReport {
  dir: string;
  layout: string | undefined;
  files: Omit<CertFiles, 'passphrase' | 'layout'> | undefined;
  leaf: CertSummary | undefined;
  chain: CertSummary[];
  bundle: CertSummary[];
  keyType: string | undefined;
  keyMatchesLeaf: boolean | undefined;
  chainVerifies: boolean | undefined;
  expires: string | undefined;
  problems: Problem[];
  warnings: Problem[];
  healthy: boolean;
}

function problemFrom(error: unknown): Problem {
  if (error instanceof CertError) {
    return { code: error.code, file: error.file, message: error.problem, fix: error.fix };
  }
  return { code: 'unexpected', file: undefined, message: (error as Error).message, fix: diagnosticProblems.unexpected };
}

/** Runs each check independently so one broken file does not hide problems in the others. */
export async function checkCertDir(config: CertDirConfig, now = new Date()): Promise<CheckReport> {
  const report: CheckReport = {
    dir: config.dir,
    layout: undefined,
    files: undefined,
    leaf: undefined,
    chain: [],
    bundle: [],
    keyType: undefined,
    keyMatchesLeaf: undefined,
    chainVerifies: undefined,
    expires: undefined,
    problems: [],
    warnings: [],
    healthy: false,
  };
  let files: CertFiles;
  try {
    files = await resolveCertFiles(config);
  } catch (error) {
    report.problems.push(problemFrom(error));
    return report;
  }
  report.layout = files.layout;
  report.files = { cert: files.cert, key: files.key, ca: files.ca };

  const attempt = <T>(step: () => T): T | undefined => {
    try {
      return step();
    } catch (error) {
      report.problems.push(problemFrom(error));
      return undefined;
    }
  };
  // Read each file on its own so that every missing file is reported.
  const read = async (file: string) => {
    try {
      return await readCertFile(file);
    } catch (error) {
      report.problems.push(problemFrom(error));
      return undefined;
    }
  };
  const [certText, keyText, caText] = [await read(files.cert), await read(files.key), await read(files.ca)];
  const chain = certText ? attempt(() => parseCertificates(certText.toString('utf8'), files.cert)) : undefined;
  const bundle = caText ? attempt(() => parseCertificates(caText.toString('utf8'), files.ca)) : undefined;
  const key = keyText ? attempt(() => parsePrivateKey(keyText, files.key, files.passphrase)) : undefined;
  report.chain = (chain ?? []).map(describeCertificate);
  report.leaf = report.chain[0];
  report.bundle = (bundle ?? []).map(describeCertificate);
  if (key) report.keyType = key.asymmetricKeyType === 'ec' ? `EC ${key.asymmetricKeyDetails?.namedCurve ?? ''}`.trim() : key.asymmetricKeyType === 'rsa' ? `RSA ${key.asymmetricKeyDetails?.modulusLength ?? ''}`.trim() : key.asymmetricKeyType;

  const leaf: X509Certificate | undefined = chain?.[0];
  if (leaf && key) {
    report.keyMatchesLeaf = leaf.checkPrivateKey(key);
    if (!report.keyMatchesLeaf) report.problems.push(problemFrom(keyMismatch(files, leaf, chain, key)));
  }
  if (chain && bundle) {
    report.chainVerifies = attempt(() => verifyChain(chain, bundle, now, files)) !== undefined;
  }
  if (leaf) {
    const { notBefore, notAfter } = validityOf(leaf);
    report.expires = expiresIn(notAfter, now);
    const lifetime = notAfter.getTime() - notBefore.getTime();
    const remaining = notAfter.getTime() - now.getTime();
    if (remaining > 0 && remaining < lifetime / 3) {
      report.warnings.push({ code: 'cert_expiring', file: files.cert, message: `less than a third of its lifetime remains (${report.expires})`, fix: diagnosticProblems.cert_expiring });
    }
  }
  if (report.problems.length === 0) {
    // The same validation `run` applies, as the final word.
    try {
      validateCertFiles(await readCertFiles(config), now);
    } catch (error) {
      report.problems.push(problemFrom(error));
    }
  }
  // In a chain file that starts with an intermediate, the first certificate's usage says nothing.
  const leafFirst = !report.problems.some((problem) => problem.code === 'chain_out_of_order');
  if (leaf && leafFirst) report.problems.push(...leafUsageProblems(leaf, files.cert).map(problemFrom));
  report.healthy = report.problems.length === 0;
  return report;
}

export function formatCheckReport(report: CheckReport): string {
  const lines: string[] = [];
  lines.push(`Certificate directory ${report.dir}${report.layout ? ` (layout: ${report.layout})` : ''}`);
  if (report.files) {
    lines.push(`  chain   ${report.files.cert}`, `  key     ${report.files.key}`, `  bundle  ${report.files.ca}`);
  }
  if (report.leaf) {
    const leaf = report.leaf;
    lines.push('', 'Leaf certificate', `  subject   ${leaf.subject}`, `  SANs      ${sanList(leaf)}`, `  usage     ${usageList(leaf)}`, `  issuer    ${leaf.issuer}`, `  serial    ${leaf.serial}`, `  validity  ${leaf.notBefore} .. ${leaf.notAfter} (${report.expires})`);
  }
  if (report.chain.length) {
    lines.push('', `Chain as sent to peers: ${report.chain.length} certificate(s)`);
    report.chain.forEach((cert, index) => lines.push(`  ${index + 1}. ${cert.subject}${index === 0 ? ' (leaf)' : ` (issued by ${cert.issuer})`}`));
  }
  if (report.bundle.length) {
    lines.push('', `Trust bundle: ${report.bundle.length} certificate(s)`);
    report.bundle.forEach((cert, index) => lines.push(`  ${index + 1}. ${cert.subject} (${expiresIn(new Date(cert.notAfter))})`));
  }
  if (report.keyType !== undefined) lines.push('', `Private key: ${report.keyType}${report.keyMatchesLeaf === undefined ? '' : report.keyMatchesLeaf ? ', matches the leaf' : ', does NOT match the leaf'}`);
  if (report.chainVerifies !== undefined) lines.push(`Chain verification: ${report.chainVerifies ? 'verifies to a CA in the trust bundle' : 'FAILS'}`);
  lines.push('');
  for (const warning of report.warnings) lines.push(`! [${warning.code}] ${warning.file ?? ''}: ${warning.message}`, `    fix: ${warning.fix}`);
  if (report.healthy) {
    lines.push('✔ healthy: `mtls-sidecar run` will accept this directory');
  } else {
    lines.push(`✘ ${report.problems.length} problem(s):`);
    for (const problem of report.problems) {
      lines.push(`  [${problem.code}] ${problem.file ? `${problem.file}: ` : ''}${problem.message}`, `    fix: ${problem.fix}`);
    }
  }
  return lines.join('\n') + '\n';
}

export async function checkCommand(config: CertDirConfig, json: boolean): Promise<number> {
  const report = await checkCertDir(config);
  process.stdout.write(json ? `${JSON.stringify(report, null, 2)}\n` : formatCheckReport(report));
  return report.healthy ? 0 : 1;
}
