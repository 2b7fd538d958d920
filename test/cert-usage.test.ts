// Certificates and bytes a TLS handshake cannot use, diagnosed where the operator looks: `check`
// (a leaf that loads and verifies but peers refuse: extendedKeyUsage without clientAuth or
// serverAuth, keyUsage without digitalSignature, no SAN), `run`'s warning at start and reload, the
// inbound "TLS handshake failed" line and metric (a caller certificate of the wrong purpose, bytes
// that are not TLS), and the outbound answer to the app (an upstream certificate of the wrong
// purpose, an upstream refusing ours for its purpose, our TLS reaching a plaintext port).
// Certificates are minted by the openssl CLI; what they allow is read back with openssl too.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer as createHttpServer } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { assertSidecarError } from './helpers/assertions.js';
import { closeServer, listenLoopback, startEchoApp, startTlsServer, type EchoApp } from './helpers/apps.js';
import { issueLeafWithExtensions, opensslUsage, sendRawBytes } from './helpers/cert-usage.js';
import { proxyRequest, servedCertificates } from './helpers/clients.js';
import { handshakeFailedLine, sampleValue, scrape, startOpensslServer, tlsAttempt, type PrometheusFamily } from './helpers/operability.js';
import {
  freshDir, issueLeaf, makeIntermediate, makeService, normalizeSerial, sharedRootCA, spiffeIdOf, splitPem, writeLayout,
  type CertificateAuthority, type Leaf, type ServiceIdentity,
} from './helpers/pki.js';
import { runCli, startSidecar, stopAllSidecars, type Sidecar } from './helpers/sidecar.js';

interface CheckJson {
  healthy: boolean;
  problems: Array<{ code: string; file?: string; message: string; fix: string }>;
  leaf?: { keyUsage: string[] | null; extendedKeyUsage: string[] | null };
}

/** The openssl extension line that fixes every usage problem, as the fixes and hints quote it. */
const bothUsagesLine = /extendedKeyUsage = serverAuth, clientAuth/;

/** A kubernetes-layout cert dir holding `leaf`, with its root as the bundle. */
async function certDirOf(leaf: Leaf, label: string): Promise<string> {
  const dir = await freshDir(label);
  await writeLayout(dir, 'kubernetes', { chainPem: leaf.chainPem, keyPem: leaf.keyPem, bundlePem: leaf.rootPem });
  return dir;
}

/**
 * `check` in text and JSON form: exit 1, `[code] FILE: MESSAGE` lines in report order, each
 * followed by its fix line. Returns the problem lines with their fixes and the JSON report.
 */
async function checkProblems(dir: string): Promise<{ stdout: string; json: CheckJson; problems: Array<{ line: string; fix: string }> }> {
  const text = await runCli(['check', '--cert-dir', dir]);
  assert.equal(text.code, 1, `check exit code; stdout:\n${text.stdout}\nstderr:\n${text.stderr}`);
  assert.doesNotMatch(text.stdout, /healthy: `mtls-sidecar run` will accept/);
  const lines = text.stdout.split('\n');
  const problems = lines.flatMap((line, index) => (/^ {2}\[\w+\] /.test(line) ? [{ line, fix: lines[index + 1] ?? '' }] : []));
  for (const problem of problems) assert.match(problem.fix, /^ {4}fix: \S/, `a fix line follows each problem:\n${text.stdout}`);
  const json = JSON.parse((await runCli(['check', '--cert-dir', dir, '--json'])).stdout) as CheckJson;
  assert.equal(json.healthy, false);
  return { stdout: text.stdout, json, problems };
}

/** `sidecar_tls_handshake_errors_total{direction,reason}` after minus before. */
async function handshakeErrorsDelta(sidecar: Sidecar, before: PrometheusFamily[], direction: 'inbound' | 'outbound', reason: string): Promise<number> {
  const labels = { direction, reason };
  return sampleValue((await scrape(sidecar.admin)).families, 'sidecar_tls_handshake_errors_total', labels) - sampleValue(before, 'sidecar_tls_handshake_errors_total', labels);
}

describe('check: a leaf that loads and verifies but peers refuse -> a problem with a fix, exit 1', () => {
  let root: CertificateAuthority;

  before(async () => {
    root = await sharedRootCA();
  });

  test('extendedKeyUsage serverAuth only (openssl `extendedKeyUsage = serverAuth`) -> cert_usage_missing: lacks clientAuth, refused outbound; fix quotes the openssl line and `certs issue`', async () => {
    const leaf = await issueLeaf(root, { cn: 'server-only', dns: ['localhost'], uris: [spiffeIdOf('server-only')], client: false });
    const dir = await certDirOf(leaf, 'check-server-only');
    const { stdout, json, problems } = await checkProblems(dir);
    assert.deepEqual(json.problems.map((problem) => problem.code), ['cert_usage_missing']);
    assert.equal(problems[0]!.line, `  [cert_usage_missing] ${join(dir, 'tls.crt')}: its extendedKeyUsage (serverAuth) lacks clientAuth: peers refuse it when this sidecar calls them (outbound mTLS); OpenSSL's reason: INVALID_PURPOSE`);
    assert.match(problems[0]!.fix, bothUsagesLine);
    assert.match(problems[0]!.fix, /mtls-sidecar certs issue --dns NAME --spiffe spiffe:\/\//);
    // What the report says the leaf allows is what openssl reads in it.
    const openssl = await opensslUsage(leaf.certPem);
    assert.deepEqual(openssl.extendedKeyUsage, ['serverAuth']);
    assert.deepEqual({ keyUsage: json.leaf?.keyUsage, extendedKeyUsage: json.leaf?.extendedKeyUsage }, openssl);
    assert.match(stdout, /usage {5}serverAuth; keyUsage digitalSignature\n/);
  });

  test('extendedKeyUsage clientAuth only -> cert_usage_missing: lacks serverAuth, refused by callers inbound', async () => {
    const leaf = await issueLeaf(root, { cn: 'client-only', dns: ['localhost'], server: false });
    const dir = await certDirOf(leaf, 'check-client-only');
    const { json, problems } = await checkProblems(dir);
    assert.deepEqual(json.problems.map((problem) => problem.code), ['cert_usage_missing']);
    assert.match(problems[0]!.line, /its extendedKeyUsage \(clientAuth\) lacks serverAuth: callers refuse it when they connect to this sidecar \(inbound\)/);
    assert.doesNotMatch(problems[0]!.line, /lacks .*clientAuth/);
    assert.match(problems[0]!.fix, bothUsagesLine);
  });

  test('no extendedKeyUsage extension at all -> healthy: any purpose is allowed', async () => {
    const leaf = await issueLeaf(root, { cn: 'any-purpose', dns: ['localhost'], client: false, server: false });
    assert.equal((await opensslUsage(leaf.certPem)).extendedKeyUsage, null, 'openssl sees no extendedKeyUsage');
    const dir = await certDirOf(leaf, 'check-any-purpose');
    const result = await runCli(['check', '--cert-dir', dir]);
    assert.equal(result.code, 0, result.stdout);
    assert.match(result.stdout, /usage {5}any purpose \(no extendedKeyUsage\); keyUsage digitalSignature\n/);
    const json = JSON.parse((await runCli(['check', '--cert-dir', dir, '--json'])).stdout) as CheckJson;
    assert.equal(json.leaf?.extendedKeyUsage, null);
  });

  test('keyUsage without digitalSignature (RSA, `keyUsage = critical, keyEncipherment`) -> cert_usage_missing naming digitalSignature', async () => {
    const leaf = await issueLeafWithExtensions(root, {
      cn: 'encipher-only',
      extensions: ['keyUsage = critical, keyEncipherment', 'extendedKeyUsage = serverAuth, clientAuth', 'subjectAltName = DNS:localhost'],
    });
    const dir = await certDirOf(leaf, 'check-encipher-only');
    const { json, problems } = await checkProblems(dir);
    assert.deepEqual(json.problems.map((problem) => problem.code), ['cert_usage_missing']);
    assert.match(problems[0]!.line, /its keyUsage \(keyEncipherment\) lacks digitalSignature, which every handshake the sidecar allows \(ECDHE\) needs/);
    assert.match(problems[0]!.fix, /keyUsage = critical, digitalSignature/);
    assert.deepEqual(json.leaf?.keyUsage, (await opensslUsage(leaf.certPem)).keyUsage);
  });

  test('RSA leaf whose keyUsage is digitalSignature only (no keyEncipherment) -> healthy, and it serves a TLS 1.2 mTLS request', async () => {
    const leaf = await issueLeafWithExtensions(root, {
      cn: 'sign-only',
      extensions: ['keyUsage = critical, digitalSignature', 'extendedKeyUsage = serverAuth, clientAuth', 'subjectAltName = DNS:localhost, IP:127.0.0.1'],
    });
    const dir = await certDirOf(leaf, 'check-sign-only');
    const result = await runCli(['check', '--cert-dir', dir]);
    assert.equal(result.code, 0, result.stdout);
    // keyEncipherment is for RSA key exchange, which the sidecar never offers (ECDHE only).
    const [app, caller] = await Promise.all([startEchoApp(), makeService(root, 'sign-only-caller')]);
    try {
      const sidecar = await startSidecar(['--cert-dir', dir, '--app', app.url, '--outbound', 'off']);
      const outcome = await new Promise<{ status: number; protocol: string | null; cipher: string }>((resolve, reject) => {
        const request = httpsRequest(
          { ...sidecar.inbound, path: '/tls12', cert: caller.leaf.chainPem, key: caller.leaf.keyPem, ca: root.certPem, servername: 'localhost', maxVersion: 'TLSv1.2', agent: false },
          (response) => {
            const socket = response.socket as TLSSocket;
            response.resume();
            response.on('end', () => resolve({ status: response.statusCode ?? 0, protocol: socket.getProtocol(), cipher: socket.getCipher().name }));
          },
        );
        request.on('error', reject);
        request.end();
      });
      assert.equal(outcome.status, 200);
      assert.equal(outcome.protocol, 'TLSv1.2');
      assert.match(outcome.cipher, /^ECDHE-RSA-/);
      await sidecar.stop();
    } finally {
      await app.close();
    }
  });

  test('no subjectAltName at all -> cert_no_san; fix quotes the openssl subjectAltName line and `certs issue --dns … --spiffe …`', async () => {
    const leaf = await issueLeaf(root, { cn: 'nameless' });
    const dir = await certDirOf(leaf, 'check-no-san');
    const { stdout, json, problems } = await checkProblems(dir);
    assert.match(stdout, /SANs {6}\(none\)\n/);
    assert.deepEqual(json.problems.map((problem) => problem.code), ['cert_no_san']);
    assert.equal(problems[0]!.line, `  [cert_no_san] ${join(dir, 'tls.crt')}: "CN=nameless" has no subjectAltName (no DNS, IP or URI SAN): callers cannot verify its name (upstream_name_mismatch) and it carries no SPIFFE identity`);
    assert.match(problems[0]!.fix, /subjectAltName = DNS:NAME, URI:spiffe:\/\//);
    assert.match(problems[0]!.fix, /mtls-sidecar certs issue --dns NAME --spiffe spiffe:\/\//);
  });

  test('a leaf with only a SPIFFE URI SAN (as SPIRE issues them) -> no cert_no_san', async () => {
    const leaf = await issueLeaf(root, { cn: 'svid', uris: [spiffeIdOf('svid')] });
    const result = await runCli(['check', '--cert-dir', await certDirOf(leaf, 'check-svid')]);
    assert.equal(result.code, 0, result.stdout);
  });

  test('a chain file that starts with the intermediate -> chain_out_of_order, as `run` says, and no usage problem about the intermediate', async () => {
    const intermediate = await makeIntermediate(root, { cn: 'usage order intermediate' });
    const service = await makeService(intermediate, 'usage-reversed');
    const [leafPem, intermediatePem] = splitPem(service.leaf.chainPem);
    const dir = await freshDir('check-reversed');
    await writeLayout(dir, 'kubernetes', { chainPem: intermediatePem! + leafPem!, keyPem: service.leaf.keyPem, bundlePem: root.certPem });
    const { json } = await checkProblems(dir);
    assert.deepEqual(json.problems.map((problem) => problem.code), ['chain_out_of_order']);
  });

  test('everything wrong at once (codeSigning, keyEncipherment, no SAN) -> every problem is listed, each with its fix', async () => {
    const leaf = await issueLeafWithExtensions(root, { cn: 'hopeless', extensions: ['keyUsage = critical, keyEncipherment', 'extendedKeyUsage = codeSigning'] });
    const { json, problems } = await checkProblems(await certDirOf(leaf, 'check-hopeless'));
    assert.deepEqual(json.problems.map((problem) => problem.code), ['cert_usage_missing', 'cert_usage_missing', 'cert_no_san']);
    assert.match(problems[0]!.line, /its extendedKeyUsage \(codeSigning\) lacks serverAuth and clientAuth: callers refuse it when they connect to this sidecar \(inbound\), and peers refuse it when this sidecar calls them \(outbound mTLS\)/);
    assert.match(problems[1]!.line, /lacks digitalSignature/);
    for (const problem of json.problems) assert.ok(problem.fix.length > 0, `a fix for ${problem.code}`);
  });
});

describe('run: loads such a leaf (peers decide), and warns at start and at every reload', () => {
  let root: CertificateAuthority;
  let app: EchoApp;

  before(async () => {
    root = await sharedRootCA();
    app = await startEchoApp();
  });

  after(async () => {
    await stopAllSidecars();
    await app.close();
  });

  const usageWarnings = (sidecar: Sidecar) => sidecar.logs().filter((line) => line.level === 'warn' && (line.code === 'cert_usage_missing' || line.code === 'cert_no_san'));

  test('a leaf without clientAuth at start -> served, and one warn line naming the code, the file and the fix', async () => {
    const leaf = await issueLeaf(root, { cn: 'run-server-only', dns: ['localhost'], client: false });
    const dir = await certDirOf(leaf, 'run-server-only');
    const sidecar = await startSidecar(['--cert-dir', dir, '--app', app.url, '--outbound', 'off']);
    const warning = await sidecar.waitForLog((line) => line.code === 'cert_usage_missing', 3000);
    assert.equal(warning.level, 'warn');
    assert.equal(warning.file, join(dir, 'tls.crt'));
    assert.match(String(warning.reason), /lacks clientAuth/);
    assert.match(String(warning.fix), bothUsagesLine);
    const served = await servedCertificates(sidecar.inbound);
    assert.equal(normalizeSerial(served.serials[0]!), normalizeSerial(leaf.serial), 'the leaf is served all the same');
    assert.equal(usageWarnings(sidecar).length, 1);
    await sidecar.stop();
  });

  test('a healthy leaf -> no warning; reloads to a leaf without SAN and then without serverAuth -> one warning each, the new leaf served', async () => {
    const healthy = await makeService(root, 'run-reload');
    const sidecar = await startSidecar(['--cert-dir', healthy.certDir, '--app', app.url, '--outbound', 'off']);
    // "sidecar ready" comes after the set is loaded (and any warning about it written).
    assert.deepEqual(usageWarnings(sidecar), []);

    const nameless = await issueLeaf(root, { cn: 'run-nameless' });
    await writeLayout(healthy.certDir, 'kubernetes', { chainPem: nameless.chainPem, keyPem: nameless.keyPem, bundlePem: root.certPem });
    sidecar.signal('SIGHUP');
    const noSan = await sidecar.waitForLog((line) => line.code === 'cert_no_san', 5000);
    assert.equal(noSan.level, 'warn');
    assert.match(String(noSan.fix), /--dns NAME --spiffe/);

    const clientOnly = await issueLeaf(root, { cn: 'run-client-only', dns: ['localhost'], server: false });
    await writeLayout(healthy.certDir, 'kubernetes', { chainPem: clientOnly.chainPem, keyPem: clientOnly.keyPem, bundlePem: root.certPem });
    sidecar.signal('SIGHUP');
    const usage = await sidecar.waitForLog((line) => line.code === 'cert_usage_missing', 5000);
    assert.match(String(usage.reason), /lacks serverAuth/);
    const served = await servedCertificates(sidecar.inbound);
    assert.equal(normalizeSerial(served.serials[0]!), normalizeSerial(clientOnly.serial));
    assert.equal(usageWarnings(sidecar).length, 2, 'one warning per problem per generation');
    await sidecar.stop();
  });
});

describe('handshakes refused for the purpose of a certificate: the reason, its hint, and the app\'s answer', () => {
  let root: CertificateAuthority;
  let serviceA: ServiceIdentity;
  let serviceB: ServiceIdentity;
  let app: EchoApp;
  /** A strict sidecar with a healthy certificate. */
  let mesh: Sidecar;
  const closers: Array<() => Promise<void>> = [];

  before(async () => {
    root = await sharedRootCA();
    [serviceA, serviceB, app] = await Promise.all([makeService(root, 'purpose-a'), makeService(root, 'purpose-b'), startEchoApp()]);
    mesh = await startSidecar(['--cert-dir', serviceA.certDir, '--app', app.url]);
  });

  after(async () => {
    await stopAllSidecars();
    await Promise.all([...closers.map((close) => close()), app.close()]);
  });

  test('inbound: a caller whose certificate lacks clientAuth -> refused; "TLS handshake failed" with reason cert_wrong_purpose, a hint naming clientAuth and the fix; counted', async () => {
    const before = (await scrape(mesh.admin)).families;
    const caller = await issueLeaf(root, { cn: 'caller-server-only', dns: ['localhost'], client: false });
    const requestsBefore = app.requests.length;
    const attempt = await tlsAttempt({ ...mesh.inbound, ca: root.certPem, cert: caller.chainPem, key: caller.keyPem });
    assert.doesNotMatch(attempt.response, /^HTTP\//, 'no HTTP answer to a refused caller');
    const line = await mesh.waitForLog(handshakeFailedLine('cert_wrong_purpose', attempt.localPort), 5000);
    assert.equal(line.direction, 'inbound');
    assert.equal(line.detail, 'INVALID_PURPOSE', 'the OpenSSL reason is kept as the detail');
    assert.match(String(line.hint), /needs extendedKeyUsage clientAuth/);
    assert.match(String(line.hint), bothUsagesLine);
    assert.equal(await handshakeErrorsDelta(mesh, before, 'inbound', 'cert_wrong_purpose'), 1);
    assert.equal(app.requests.length, requestsBefore, 'nothing reached the app');
  });

  test('outbound: an upstream whose certificate lacks serverAuth -> 502 upstream_cert_wrong_purpose (reason cert_wrong_purpose), never reached; probe names cert_wrong_purpose', async () => {
    const upstreamLeaf = await issueLeaf(root, { cn: 'upstream-client-only', dns: ['localhost'], server: false });
    const server = await startTlsServer({ certPem: upstreamLeaf.chainPem, keyPem: upstreamLeaf.keyPem });
    closers.push(() => server.close());
    const before = (await scrape(mesh.admin)).families;
    const response = await proxyRequest({ proxy: mesh.outbound, target: `http://localhost:${server.port}/wrong-purpose` });
    const body = assertSidecarError(response, 502, 'upstream_cert_wrong_purpose');
    assert.match(body.hint, bothUsagesLine);
    assert.match(body.message, /serverAuth/);
    assert.equal(await handshakeErrorsDelta(mesh, before, 'outbound', 'cert_wrong_purpose'), 1);
    assert.equal(server.requests.length, 0, 'no request may reach an upstream whose certificate is refused');
    const probe = await runCli(['probe', `https://localhost:${server.port}/`, '--cert-dir', serviceA.certDir]);
    assert.equal(probe.code, 1, probe.stdout);
    assert.ok(probe.stdout.includes('[cert_wrong_purpose]'), probe.stdout);
  });

  // TLS 1.2: the alert ends our handshake and names the reason. TLS 1.3: it arrives after our side
  // of the handshake, and the forwarder only sees the connection closed before any answer.
  const alertCases = [
    { version: 'tls1_2', reason: 'our_cert_wrong_purpose', message: /alert unsupported certificate/ },
    { version: 'tls1_3', reason: 'our_cert_rejected', message: /closed/ },
  ] as const;
  for (const { version, reason, message } of alertCases) {
    test(`outbound: an OpenSSL upstream (s_server -${version}) refusing our certificate, which lacks clientAuth -> 502 upstream_rejected_our_cert, reason ${reason}`, async () => {
      const ours = await issueLeaf(root, { cn: `caller-no-client-auth-${version}`, dns: ['localhost'], client: false });
      const caller = await startSidecar(['--cert-dir', await certDirOf(ours, 'caller-no-client-auth'), '--app', app.url, '--inbound', 'off']);
      const upstreamLeaf = await issueLeaf(root, { cn: `strict-openssl-${version}`, dns: ['localhost'] });
      const server = await startOpensslServer({ certPath: upstreamLeaf.certPath, keyPath: upstreamLeaf.keyPath, caPath: root.certPath, version });
      closers.push(() => server.close());
      const before = (await scrape(caller.admin)).families;
      const response = await proxyRequest({ proxy: caller.outbound, target: `http://localhost:${server.port}/refuses-our-purpose` });
      const body = assertSidecarError(response, 502, 'upstream_rejected_our_cert');
      assert.match(body.message, message);
      assert.equal(await handshakeErrorsDelta(caller, before, 'outbound', reason), 1, server.output());
      assert.match(server.output(), /unsuitable certificate purpose|unsupported certificate purpose/, 'the upstream refused it for its purpose');
      await caller.stop();
      // probe reads the alert in both versions, and says what to fix: our certificate's purpose.
      const probe = await runCli(['probe', `https://localhost:${server.port}/`, '--cert-dir', await certDirOf(ours, 'probe-no-client-auth')]);
      assert.equal(probe.code, 1, probe.stdout);
      const lines = probe.stdout.split('\n');
      const index = lines.findIndex((line) => line.includes('[our_cert_wrong_purpose]'));
      assert.ok(index >= 0, probe.stdout);
      assert.match(lines.slice(index + 1).find((line) => line.trim().startsWith('fix:')) ?? '', bothUsagesLine, probe.stdout);
    });
  }

  test('outbound: a peer sidecar refusing our certificate, which lacks clientAuth (it closes, no alert) -> 502 upstream_rejected_our_cert here, cert_wrong_purpose in its log', async () => {
    const ours = await issueLeaf(root, { cn: 'caller-to-sidecar', dns: ['localhost'], uris: [spiffeIdOf('caller-to-sidecar')], client: false });
    const caller = await startSidecar(['--cert-dir', await certDirOf(ours, 'caller-to-sidecar'), '--app', app.url, '--inbound', 'off']);
    const peer = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off']);
    const response = await proxyRequest({ proxy: caller.outbound, target: `http://localhost:${peer.inbound.port}/purpose` });
    assertSidecarError(response, 502, 'upstream_rejected_our_cert');
    const line = await peer.waitForLog(handshakeFailedLine('cert_wrong_purpose'), 5000);
    assert.match(String(line.hint), /clientAuth/);
    await Promise.all([caller.stop(), peer.stop()]);
  });
});

describe('bytes that are not TLS: which side sent them decides the diagnosis', () => {
  let root: CertificateAuthority;
  let app: EchoApp;
  let mesh: Sidecar;

  before(async () => {
    root = await sharedRootCA();
    const [service, echo] = await Promise.all([makeService(root, 'not-tls'), startEchoApp()]);
    app = echo;
    mesh = await startSidecar(['--cert-dir', service.certDir, '--app', app.url]);
  });

  after(async () => {
    await stopAllSidecars();
    await app.close();
  });

  /** Sends `bytes` to the strict inbound port and returns its "TLS handshake failed" line, checking the metric counted not_tls. */
  const assertNotTls = async (bytes: Buffer | string, localAddress: string) => {
    const before = (await scrape(mesh.admin)).families;
    const sent = await sendRawBytes(mesh.inbound, bytes, { localAddress });
    assert.ok(sent.closedByServer, 'the sidecar closes the connection');
    const line = await mesh.waitForLog((candidate) => handshakeFailedLine('not_tls', sent.localPort)(candidate) && String(candidate.peer).startsWith(`${localAddress}:`), 5000);
    assert.equal(line.direction, 'inbound');
    assert.match(String(line.hint), /the client sent bytes that are not TLS/);
    assert.doesNotMatch(String(line.hint), /TLS was sent to a plaintext port/);
    assert.equal(await handshakeErrorsDelta(mesh, before, 'inbound', 'not_tls'), 1);
    assert.equal(await handshakeErrorsDelta(mesh, before, 'inbound', 'tls_on_plaintext_port'), 0);
    return line;
  };

  test('an SSH client\'s banner sent to the strict inbound port -> not_tls ("the client sent bytes that are not TLS"), not tls_on_plaintext_port', async () => {
    const line = await assertNotTls('SSH-2.0-OpenSSH_9.2p1\r\n', '127.0.0.1');
    assert.equal(line.detail, 'wrong version number', 'OpenSSL\'s words stay in the detail');
  });

  test('random bytes sent to the strict inbound port -> not_tls', async () => {
    // Fixed "random" bytes, so the run is repeatable: not a TLS record header (second byte is not 0x03).
    const bytes = Buffer.concat(Array.from({ length: 4 }, (_unused, index) => createHash('sha256').update(`not TLS ${index}`).digest()));
    assert.notEqual(bytes[1], 0x03);
    // A second caller address: the handshake log is limited per address and reason.
    await assertNotTls(bytes, '127.0.0.2');
  });

  test('outbound: our TLS reaching a plaintext HTTP upstream -> 502 upstream_tls_error, reason tls_on_plaintext_port', async () => {
    const plain = createHttpServer((_request, response) => response.end('plaintext\n'));
    const port = await listenLoopback(plain);
    try {
      const before = (await scrape(mesh.admin)).families;
      const response = await proxyRequest({ proxy: mesh.outbound, target: `http://localhost:${port}/plain` });
      const body = assertSidecarError(response, 502, 'upstream_tls_error');
      assert.match(body.message, /wrong version number/);
      assert.equal(await handshakeErrorsDelta(mesh, before, 'outbound', 'tls_on_plaintext_port'), 1);
      assert.equal(await handshakeErrorsDelta(mesh, before, 'outbound', 'not_tls'), 0);
    } finally {
      await closeServer(plain);
    }
  });
});
