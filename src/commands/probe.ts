/**
 * `mtls-sidecar probe URL`: dials an upstream the way the outbound path does (our certificate,
 * our bundle, SNI, name and identity checks) and explains each step: TCP, TLS version and cipher,
 * the server's chain, trust, name/identity, whether our client certificate was accepted, and the
 * status of one HTTP request.
 */
import { X509Certificate } from 'node:crypto';
import { connect as netConnect, isIP } from 'node:net';
import { connect as tlsConnect, type DetailedPeerCertificate, type TLSSocket } from 'node:tls';
import { describeCertificate, expiresIn, sanList, type CertSummary } from '../certs/describe.js';
import { rfc2253 } from '../certs/identity.js';
import { isSelfSigned, issuedBy, loadCertDir, type CertSet } from '../certs/load.js';
import type { CertDirConfig } from '../config.js';
import { appErrors, CertError, diagnosticProblems, probeFixes, tlsFailures, type ReportCode, type TlsFailureReason } from '../errors.js';
import { upstreamIdentityCheck } from '../outbound/agents.js';
import { classifyPeerVerifyError, classifyTlsError, tlsOptionsFor, type MinTls } from '../tls.js';

interface Step {
  name: string;
  ok: boolean;
  detail: string;
  code?: ReportCode;
  fix?: string;
}

export interface ProbeOptions {
  url: string;
  certs: CertDirConfig;
  expectSpiffe: string | undefined;
  trustDomain: string | undefined;
  minTls: MinTls;
  timeoutMs: number;
}

function failure(name: string, reason: TlsFailureReason, detail: string, fix?: string): Step {
  return { name, ok: false, detail, code: reason, fix: fix ?? tlsFailures[reason] };
}

function peerChain(socket: TLSSocket): X509Certificate[] {
  const chain: X509Certificate[] = [];
  let cert = socket.getPeerCertificate(true) as DetailedPeerCertificate | undefined;
  const seen = new Set<string>();
  while (cert?.raw && !seen.has(cert.fingerprint256)) {
    seen.add(cert.fingerprint256);
    chain.push(new X509Certificate(cert.raw));
    cert = cert.issuerCertificate;
  }
  return chain;
}

function tcpCheck(host: string, port: number, timeoutMs: number): Promise<Step> {
  const started = Date.now();
  return new Promise((resolve) => {
    const socket = netConnect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ name: 'TCP', ok: false, detail: `no answer from ${host}:${port} within ${timeoutMs} ms`, code: 'upstream_timeout', fix: probeFixes.upstream_timeout });
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      const address = socket.remoteAddress;
      socket.destroy();
      resolve({ name: 'TCP', ok: true, detail: `connected to ${address}:${port} in ${Date.now() - started} ms` });
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const detail = `${host}:${port}: ${error.message}`;
      if (error.code === 'ECONNREFUSED' || error.code === 'ENOTFOUND' || error.code === 'EAI_AGAIN') {
        const code = error.code === 'ECONNREFUSED' ? 'upstream_refused' : 'upstream_unresolvable';
        resolve({ name: 'TCP', ok: false, detail, code, fix: appErrors[code].hint });
      } else {
        resolve({ name: 'TCP', ok: false, detail, code: 'upstream_unreachable', fix: diagnosticProblems.upstream_unreachable });
      }
    });
  });
}

/** OpenSSL's verify results for "no certificate we trust issued this one". */
const missingIssuerErrors = new Set(['UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE']);

/**
 * The Trust step when the chain did not verify. An upstream that sent only its leaf, issued by an
 * intermediate we hold ourselves (our chain file), forgot its intermediate: `chain_incomplete`.
 * When we do not hold the issuer we cannot tell a missing intermediate from a foreign root, so it
 * stays `cert_untrusted`, with a fix that names both.
 */
function trustFailure(chain: X509Certificate[], verifyError: string | undefined, set: CertSet): Step {
  const reason = classifyPeerVerifyError(verifyError);
  const detail = verifyError ?? 'not verified';
  if (reason !== 'cert_untrusted') return failure('Trust', reason, detail);
  const leaf = chain[0];
  const onlyLeafSent = chain.length === 1 && missingIssuerErrors.has(verifyError ?? '');
  const heldIssuer = onlyLeafSent && leaf ? set.chain.slice(1).find((candidate) => issuedBy(leaf, candidate)) : undefined;
  if (heldIssuer && !isSelfSigned(heldIssuer)) {
    const issuer = rfc2253(heldIssuer.subject);
    return failure('Trust', 'chain_incomplete', `${detail}: the upstream sent only its leaf, issued by the intermediate "${issuer}"`, probeFixes.chain_incomplete(issuer));
  }
  const issuer = chain.at(-1) ? rfc2253(chain.at(-1)!.issuer) : 'unknown';
  return failure('Trust', reason, detail, probeFixes.cert_untrusted(issuer, set.files.ca, set.bundle.map((root) => rfc2253(root.subject)), onlyLeafSent));
}

/** TLS handshake with verification done here (not by OpenSSL) so every problem can be reported. */
function tlsCheck(host: string, port: number, set: CertSet, options: ProbeOptions, path: string): Promise<Step[]> {
  const steps: Step[] = [];
  const ourName = set.identity.uris.join(', ') || set.identity.subject;
  return new Promise((resolve) => {
    const socket = tlsConnect({
      ...tlsOptionsFor(set, options.minTls),
      host,
      port,
      servername: isIP(host) ? undefined : host,
      rejectUnauthorized: false,
      // Node would fold a name mismatch into authorizationError, so into the Trust step: here
      // `authorized` is about the chain only, and the Name/identity step checks the name.
      checkServerIdentity: () => undefined,
    });
    let handshakeDone = false;
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(steps);
    };
    const timer = setTimeout(() => {
      steps.push(
        handshakeDone
          ? { name: 'HTTP', ok: false, detail: `no response within ${options.timeoutMs} ms`, code: 'upstream_timeout', fix: probeFixes.upstream_timeout }
          : failure('TLS', 'handshake_timeout', `no handshake within ${options.timeoutMs} ms`, probeFixes.handshake_timeout),
      );
      finish();
    }, options.timeoutMs);
    socket.once('secureConnect', () => {
      handshakeDone = true;
      const cipher = socket.getCipher();
      steps.push({ name: 'TLS', ok: true, detail: `${socket.getProtocol()} ${cipher.standardName ?? cipher.name}` });
      const chain = peerChain(socket);
      const summaries: CertSummary[] = chain.map(describeCertificate);
      steps.push({
        name: 'Server chain (as verified)',
        ok: chain.length > 0,
        detail: summaries.map((cert, index) => `${index + 1}. ${cert.subject} [${sanList(cert)}] issued by ${cert.issuer}, ${expiresIn(new Date(cert.notAfter))}`).join('\n      ') || 'no certificate',
      });
      const verifyError = socket.authorizationError as unknown as string | undefined;
      if (socket.authorized) {
        steps.push({ name: 'Trust', ok: true, detail: `the chain verifies to our bundle (${set.files.ca})` });
      } else {
        steps.push(trustFailure(chain, verifyError, set));
      }
      const peer = socket.getPeerCertificate();
      const identityError = peer && Object.keys(peer).length ? upstreamIdentityCheck(options.expectSpiffe, options.trustDomain)(host, peer) : new Error('no certificate');
      if (!identityError) {
        steps.push({ name: 'Name/identity', ok: true, detail: `${host} is in the SANs${options.expectSpiffe ? `, SPIFFE ID ${options.expectSpiffe} matches` : ''}` });
      } else {
        const reason = classifyTlsError(identityError) ?? 'name_mismatch';
        const sans = summaries[0] ? sanList(summaries[0]) : '(none)';
        steps.push(failure('Name/identity', reason, identityError.message, reason === 'name_mismatch' ? probeFixes.name_mismatch(sans, host) : undefined));
      }
      // TLS 1.3 servers refuse a client certificate after the handshake: only a request tells.
      socket.write(`GET ${path} HTTP/1.1\r\nHost: ${isIP(host) === 6 ? `[${host}]` : host}:${port}\r\nUser-Agent: mtls-sidecar-probe\r\nConnection: close\r\n\r\n`);
    });
    let response = '';
    socket.on('data', (chunk: Buffer) => {
      response += chunk.toString('latin1');
      const statusLine = /^HTTP\/1\.[01] (\d{3})[^\r\n]*/.exec(response);
      if (statusLine) {
        steps.push({ name: 'Client certificate', ok: true, detail: 'the upstream accepted our certificate' });
        steps.push({ name: 'HTTP', ok: true, detail: `GET ${path} -> ${statusLine[0]}` });
        finish();
      }
    });
    socket.once('error', (error) => {
      const reason = classifyTlsError(error) ?? 'tls_error';
      // A peer that refuses our certificate often just closes (no alert): during the handshake
      // (TLS 1.2) or right after it (TLS 1.3), as the outbound path also infers.
      if (handshakeDone || reason === 'our_cert_rejected' || reason === 'our_cert_wrong_purpose' || reason === 'connection_reset') {
        // An "unsupported certificate" alert is about our certificate's purpose, not our CA.
        const fix = reason === 'our_cert_wrong_purpose' ? undefined : probeFixes.our_cert_rejected(ourName);
        steps.push(failure('Client certificate', reason === 'connection_reset' ? 'our_cert_rejected' : reason, error.message.split('\n')[0] ?? error.message, fix));
      } else {
        steps.push(failure('TLS', reason, error.message.split('\n')[0] ?? error.message));
      }
      finish();
    });
    socket.once('close', () => {
      if (!settled && handshakeDone && !response) {
        steps.push(failure('Client certificate', 'our_cert_rejected', 'the upstream closed the connection without answering (most likely refusing our certificate)', probeFixes.our_cert_rejected(ourName)));
      }
      finish();
    });
  });
}

/**
 * The URL to dial, or undefined when it is none probe can dial: https, or http as an app sends it
 * to the forward proxy (which originates TLS all the same); no scheme means https.
 */
function probeUrl(text: string): URL | undefined {
  try {
    const url = new URL(text.includes('://') ? text : `https://${text}`);
    return url.protocol === 'https:' || url.protocol === 'http:' ? url : undefined;
  } catch {
    return undefined;
  }
}

export async function probeCommand(options: ProbeOptions, json: boolean): Promise<number> {
  const url = probeUrl(options.url);
  if (!url) {
    process.stderr.write(`mtls-sidecar: probe: ${JSON.stringify(options.url)} is not a URL such as https://payments.svc:8443/health (https, or http as an app sends it through the forward proxy)\n`);
    return 2;
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = Number(url.port || (url.protocol === 'http:' ? 80 : 443));
  const steps: Step[] = [];
  let set: CertSet | undefined;
  try {
    set = await loadCertDir(options.certs);
    steps.push({ name: 'Our certificate', ok: true, detail: `${set.identity.uris.join(', ') || set.identity.subject} (serial ${set.leaf.serialNumber}, ${expiresIn(set.notAfter)}) from ${set.files.cert}` });
  } catch (error) {
    steps.push(
      error instanceof CertError
        ? { name: 'Our certificate', ok: false, detail: `${error.file ? `${error.file}: ` : ''}${error.problem}`, code: error.code, fix: probeFixes.our_cert_invalid(error.fix) }
        : { name: 'Our certificate', ok: false, detail: (error as Error).message, code: 'unexpected', fix: diagnosticProblems.unexpected },
    );
  }
  if (set) {
    const tcp = await tcpCheck(host, port, options.timeoutMs);
    steps.push(tcp);
    if (tcp.ok) steps.push(...(await tlsCheck(host, port, set, options, `${url.pathname}${url.search}`)));
  }
  const ok = steps.every((step) => step.ok);
  if (json) {
    process.stdout.write(`${JSON.stringify({ url: url.href, ok, steps }, null, 2)}\n`);
  } else {
    const lines = [`Probing ${host}:${port} as the outbound path would (SNI ${isIP(host) ? 'none (IP address)' : host})`];
    for (const step of steps) {
      lines.push(`${step.ok ? '✔' : '✘'} ${step.name}: ${step.detail}${step.code && !step.ok ? ` [${step.code}]` : ''}`);
      if (!step.ok && step.fix) lines.push(`    fix: ${step.fix}`);
    }
    lines.push(ok ? 'all checks passed' : 'problems found (see fix lines above)');
    process.stdout.write(`${lines.join('\n')}\n`);
  }
  return ok ? 0 : 1;
}
