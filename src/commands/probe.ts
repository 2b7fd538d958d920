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
import { loadCertDir, type CertSet } from '../certs/load.js';
import type { CertDirConfig } from '../config.js';
import { CertError, tlsFailures, type TlsFailureReason } from '../errors.js';
import { upstreamIdentityCheck } from '../outbound/agents.js';
import { classifyPeerVerifyError, classifyTlsError, tlsOptionsFor, type MinTls } from '../tls.js';

interface Step {
  name: string;
  ok: boolean;
  detail: string;
  code?: string;
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
      resolve({ name: 'TCP', ok: false, detail: `no answer from ${host}:${port} within ${timeoutMs} ms`, code: 'upstream_timeout', fix: 'check the address, firewalls and NetworkPolicies' });
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      const address = socket.remoteAddress;
      socket.destroy();
      resolve({ name: 'TCP', ok: true, detail: `connected to ${address}:${port} in ${Date.now() - started} ms` });
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const refused = error.code === 'ECONNREFUSED';
      resolve({
        name: 'TCP',
        ok: false,
        detail: `${host}:${port}: ${error.message}`,
        code: refused ? 'upstream_refused' : error.code === 'ENOTFOUND' ? 'upstream_unresolvable' : 'upstream_unreachable',
        fix: refused ? 'nothing listens there: check the port and that the upstream (or its sidecar) runs' : 'check the host name and the network path',
      });
    });
  });
}

/** TLS handshake with verification done here (not by OpenSSL) so every problem can be reported. */
function tlsCheck(host: string, port: number, set: CertSet, options: ProbeOptions, path: string): Promise<Step[]> {
  const steps: Step[] = [];
  return new Promise((resolve) => {
    const socket = tlsConnect({
      ...tlsOptionsFor(set, options.minTls),
      host,
      port,
      servername: isIP(host) ? undefined : host,
      rejectUnauthorized: false,
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
      steps.push(handshakeDone ? { name: 'HTTP', ok: false, detail: `no response within ${options.timeoutMs} ms`, code: 'upstream_timeout' } : failure('TLS', 'handshake_timeout', `no handshake within ${options.timeoutMs} ms`));
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
        const reason = classifyPeerVerifyError(verifyError);
        const issuer = summaries.at(-1)?.issuer ?? 'unknown';
        const fix = reason === 'cert_untrusted' ? `add the CA "${issuer}" to our trust bundle ${set.files.ca}, or have the upstream use a certificate from our mesh CA (our bundle holds: ${set.bundle.map((root) => describeCertificate(root).subject).join('; ')})` : undefined;
        steps.push(failure('Trust', reason, `${verifyError ?? 'not verified'}`, fix));
      }
      const peer = socket.getPeerCertificate();
      const identityError = peer && Object.keys(peer).length ? upstreamIdentityCheck(options.expectSpiffe, options.trustDomain)(host, peer) : new Error('no certificate');
      if (!identityError) {
        steps.push({ name: 'Name/identity', ok: true, detail: `${host} is in the SANs${options.expectSpiffe ? `, SPIFFE ID ${options.expectSpiffe} matches` : ''}` });
      } else {
        const reason = classifyTlsError(identityError) ?? 'name_mismatch';
        const sans = summaries[0] ? sanList(summaries[0]) : '(none)';
        steps.push(failure('Name/identity', reason, identityError.message, reason === 'name_mismatch' ? `the certificate names ${sans}; dial one of those, or re-issue it with ${host}` : undefined));
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
      if (handshakeDone || reason === 'our_cert_rejected' || reason === 'connection_reset') {
        steps.push(failure('Client certificate', reason === 'connection_reset' ? 'our_cert_rejected' : reason, error.message.split('\n')[0] ?? error.message, `the upstream refused our certificate (${set.identity.uris.join(', ') || set.identity.subject}): is our CA in the upstream's trust bundle, and is our certificate valid (mtls-sidecar check)?`));
      } else {
        steps.push(failure('TLS', reason, error.message.split('\n')[0] ?? error.message));
      }
      finish();
    });
    socket.once('close', () => {
      if (!settled && handshakeDone && !response) {
        steps.push(failure('Client certificate', 'our_cert_rejected', 'the upstream closed the connection without answering', `the upstream most likely refused our certificate: is our CA in the upstream's trust bundle?`));
      }
      finish();
    });
  });
}

export async function probeCommand(options: ProbeOptions, json: boolean): Promise<number> {
  let url: URL;
  try {
    url = new URL(options.url.includes('://') ? options.url : `https://${options.url}`);
  } catch {
    process.stderr.write(`mtls-sidecar: probe: ${JSON.stringify(options.url)} is not a URL such as https://payments.svc:8443/health\n`);
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
    steps.push({ name: 'Our certificate', ok: false, detail: (error as Error).message, code: error instanceof CertError ? error.code : 'unexpected', fix: 'run `mtls-sidecar check` on the cert dir' });
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
