// Operability (SPEC §6, §7, §8): every catalog code produced by a real failing peer and checked
// everywhere it shows (the app's status, x-sidecar-error and JSON body, the log line, the metric
// read by a Prometheus text parser, and `probe`), the admin endpoints, readiness during a drain,
// graceful and cut drains, `wait`, and a listen port already in use.
import assert from 'node:assert/strict';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { assertSidecarError, type SidecarErrorBody } from './helpers/assertions.js';
import { startEchoApp, startTlsServer, type EchoApp } from './helpers/apps.js';
import { mtlsRequest, plainRequest, proxyRequest, type HttpResult } from './helpers/clients.js';
import {
  exitWithin, family, forwardingFailedLine, handshakeFailedLine, opensslNotAfterSeconds, opensslSanEntries, opensslTls11Attempt, opensslValidity,
  plaintextAttempt, sampleValue, scrape, scrapeValue, startClientCertCheckingServer, startHangingApp, startHangingTlsServer, startOpensslServer, tlsAttempt,
  type HangingServer, type PrometheusFamily,
} from './helpers/operability.js';
import { issueLeaf, makeRootCA, makeService, normalizeSerial, sharedRootCA, spiffeIdOf, type CertificateAuthority, type Leaf, type ServiceIdentity } from './helpers/pki.js';
import { sleep } from './helpers/rotation.js';
import { freePort, runCli, startSidecar, stopAllSidecars, type LogLine, type Sidecar } from './helpers/sidecar.js';

const EXPECTED_UPSTREAM_ID = spiffeIdOf('expected-upstream');

describe('operability', () => {
  let root: CertificateAuthority;
  let otherRoot: CertificateAuthority;
  /** The sidecar under test (cert, outbound and inbound). */
  let serviceA: ServiceIdentity;
  /** A well-behaved peer of the mesh (client certificate for inbound calls, upstream certificate). */
  let serviceB: ServiceIdentity;
  let hangingApp: HangingServer;
  let echoApp: EchoApp;
  /**
   * The shared sidecar: its app accepts and never answers, --request-timeout 1s, and calls to
   * 127.0.0.1 must present EXPECTED_UPSTREAM_ID.
   */
  let mesh: Sidecar;
  const closers: Array<() => Promise<void>> = [];
  /** Paths this file sends, none of which may appear as a metric label. */
  const requestPaths = new Set<string>();

  before(async () => {
    root = await sharedRootCA();
    [otherRoot, serviceA, serviceB, hangingApp, echoApp] = await Promise.all([
      makeRootCA({ cn: 'operability foreign CA' }),
      makeService(root, 'service-a'),
      makeService(root, 'service-b'),
      startHangingApp(),
      startEchoApp(),
    ]);
    closers.push(() => hangingApp.close(), () => echoApp.close());
    mesh = await startSidecar([
      '--cert-dir', serviceA.certDir,
      '--app', `http://127.0.0.1:${hangingApp.port}`,
      '--request-timeout', '1s',
      '--expect-spiffe', `127.0.0.1=${EXPECTED_UPSTREAM_ID}`,
    ]);
  });

  after(async () => {
    await stopAllSidecars();
    await Promise.all(closers.map((close) => close()));
  });

  const viaProxy = (target: string, via: Sidecar = mesh): Promise<HttpResult> => {
    requestPaths.add(new URL(target).pathname);
    return proxyRequest({ proxy: via.outbound, target });
  };

  /** `probe URL` as the sidecar would dial it (service A's cert dir); exit 1 naming `code` and, when given, a fix line. */
  const assertProbeNames = async (url: string, code: string, fix: RegExp | undefined, extra: string[] = [], certDir = serviceA.certDir): Promise<void> => {
    const result = await runCli(['probe', url, '--cert-dir', certDir, ...extra]);
    assert.equal(result.code, 1, `probe exit code; stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
    assert.ok(result.stdout.includes(`[${code}]`), `probe output should name [${code}]:\n${result.stdout}`);
    if (fix) {
      const fixLines = result.stdout.split('\n').filter((line) => line.trim().startsWith('fix:'));
      assert.ok(fixLines.some((line) => fix.test(line)), `probe should give a fix matching ${fix}:\n${result.stdout}`);
    }
  };

  interface OutboundCase {
    target: string;
    upstreamPort: number;
    status: number;
    code: string;
    /** The handshake reason counted in sidecar_tls_handshake_errors_total{direction="outbound"}; none for non-TLS failures. */
    reason?: string;
  }

  /** Status/header/body, the "forwarding failed" line, the handshake-error and request counters, all agreeing. */
  const assertOutboundFailure = async (failure: OutboundCase, via: Sidecar = mesh): Promise<SidecarErrorBody> => {
    const before = (await scrape(via.admin)).families;
    const body = assertSidecarError(await viaProxy(failure.target, via), failure.status, failure.code);
    const line = await via.waitForLog(forwardingFailedLine(failure.code, 'outbound', failure.upstreamPort), 3000);
    assert.ok(String(line.reason ?? '').length > 0, `the log line should carry the underlying reason: ${JSON.stringify(line)}`);
    const afterScrape = (await scrape(via.admin)).families;
    const delta = (name: string, labels: Record<string, string>) => sampleValue(afterScrape, name, labels) - sampleValue(before, name, labels);
    assert.equal(delta('sidecar_requests_total', { direction: 'outbound', code: String(failure.status) }), 1, `sidecar_requests_total{direction="outbound",code="${failure.status}"} should count this request once`);
    if (failure.reason) {
      assert.equal(delta('sidecar_tls_handshake_errors_total', { direction: 'outbound', reason: failure.reason }), 1, `sidecar_tls_handshake_errors_total{direction="outbound",reason="${failure.reason}"}`);
    } else {
      assert.equal(delta('sidecar_tls_handshake_errors_total', { direction: 'outbound' }), 0, 'a failure without a TLS handshake must not count as a handshake error');
    }
    return body;
  };

  const tlsUpstream = async (leaf: Leaf) => {
    const server = await startTlsServer({ certPem: leaf.chainPem, keyPem: leaf.keyPem, ca: root.certPem });
    closers.push(() => server.close());
    return server;
  };

  describe('outbound failures: app response, log, metric and probe agree', () => {
    test('upstream signed by a CA not in the bundle -> 502 upstream_cert_untrusted, reason cert_untrusted, probe says add the CA', async () => {
      const stranger = await issueLeaf(otherRoot, { cn: 'stranger', dns: ['localhost'] });
      const server = await tlsUpstream(stranger);
      const body = await assertOutboundFailure({ target: `http://localhost:${server.port}/untrusted`, upstreamPort: server.port, status: 502, code: 'upstream_cert_untrusted', reason: 'cert_untrusted' });
      assert.match(body.hint, /add the CA/i);
      assert.equal(server.requests.length, 0, 'no request may reach an untrusted upstream');
      await assertProbeNames(`https://localhost:${server.port}/`, 'cert_untrusted', /add the CA/i);
    });

    test('upstream with an expired certificate -> 502 upstream_cert_expired, reason cert_expired, probe says renew', async () => {
      const expired = await issueLeaf(root, { cn: 'expired-upstream', dns: ['localhost'], expired: true });
      const server = await tlsUpstream(expired);
      const body = await assertOutboundFailure({ target: `http://localhost:${server.port}/expired`, upstreamPort: server.port, status: 502, code: 'upstream_cert_expired', reason: 'cert_expired' });
      assert.match(body.hint, /renew/i);
      assert.equal(server.requests.length, 0);
      await assertProbeNames(`https://localhost:${server.port}/`, 'cert_expired', /renew/i);
    });

    test('upstream certificate without the dialled name -> 502 upstream_name_mismatch, reason name_mismatch, probe names the SANs', async () => {
      const misnamed = await issueLeaf(root, { cn: 'elsewhere', dns: ['elsewhere.example'] });
      const server = await tlsUpstream(misnamed);
      const body = await assertOutboundFailure({ target: `http://localhost:${server.port}/misnamed`, upstreamPort: server.port, status: 502, code: 'upstream_name_mismatch', reason: 'name_mismatch' });
      assert.match(body.hint, /SAN/);
      assert.equal(server.requests.length, 0);
      await assertProbeNames(`https://localhost:${server.port}/`, 'name_mismatch', /elsewhere\.example/);
    });

    test('upstream with another SPIFFE ID than --expect-spiffe -> 502 upstream_identity_mismatch, reason identity_mismatch, probe --expect-spiffe agrees', async () => {
      // serviceB's certificate is trusted and names 127.0.0.1, but its URI SAN is not the expected one.
      const server = await tlsUpstream(serviceB.leaf);
      const body = await assertOutboundFailure({ target: `http://127.0.0.1:${server.port}/identity`, upstreamPort: server.port, status: 502, code: 'upstream_identity_mismatch', reason: 'identity_mismatch' });
      assert.match(body.message, new RegExp(EXPECTED_UPSTREAM_ID.replace(/[/.]/g, '\\$&')), 'the message should name the expected identity');
      assert.equal(server.requests.length, 0);
      await assertProbeNames(`https://127.0.0.1:${server.port}/`, 'identity_mismatch', /SPIFFE|URI SAN/, ['--expect-spiffe', EXPECTED_UPSTREAM_ID]);
    });

    for (const version of ['tls1_2', 'tls1_3'] as const) {
      test(`upstream (openssl s_server -${version}) that only trusts clients of another CA -> 502 upstream_rejected_our_cert, reason our_cert_rejected`, async () => {
        // Its own certificate is from the mesh CA (trusted); it refuses ours with an unknown_ca alert.
        // With TLS 1.3 that alert arrives after our side of the handshake has completed.
        const upstreamLeaf = await issueLeaf(root, { cn: `picky-${version}`, dns: ['localhost'] });
        const server = await startOpensslServer({ certPath: upstreamLeaf.certPath, keyPath: upstreamLeaf.keyPath, caPath: otherRoot.certPath, version });
        closers.push(() => server.close());
        const body = await assertOutboundFailure({ target: `http://localhost:${server.port}/picky`, upstreamPort: server.port, status: 502, code: 'upstream_rejected_our_cert', reason: 'our_cert_rejected' });
        assert.match(body.hint, /trust bundle/);
        await assertProbeNames(`https://localhost:${server.port}/`, 'our_cert_rejected', /trust bundle/);
      });
    }

    test('node upstream (TLS 1.2, requestCert + rejectUnauthorized, closes without an alert) refusing our certificate -> 502 upstream_rejected_our_cert', async () => {
      const upstreamLeaf = await issueLeaf(root, { cn: 'picky-node', dns: ['localhost'] });
      const server = await startClientCertCheckingServer({ certPem: upstreamLeaf.chainPem, keyPem: upstreamLeaf.keyPem, ca: otherRoot.certPem, maxVersion: 'TLSv1.2' });
      closers.push(() => server.close());
      await assertOutboundFailure({ target: `http://localhost:${server.port}/picky-node`, upstreamPort: server.port, status: 502, code: 'upstream_rejected_our_cert', reason: 'our_cert_rejected' });
      assert.deepEqual(server.received, [], 'the upstream must not have served the request');
      await assertProbeNames(`https://localhost:${server.port}/`, 'our_cert_rejected', /trust bundle/);
    });

    test('a peer sidecar (TLS 1.3) whose bundle lacks our CA refuses our certificate -> 502 upstream_rejected_our_cert', async () => {
      // The caller's certificate comes from the foreign CA; it trusts both CAs, so the peer's
      // certificate (mesh CA) verifies, but the peer (bundle: mesh CA only) refuses the caller's.
      const caller = await makeService(otherRoot, 'foreign-caller', { bundlePem: otherRoot.certPem + root.certPem });
      const [callerSidecar, peerSidecar] = await Promise.all([
        startSidecar(['--cert-dir', caller.certDir, '--app', echoApp.url, '--inbound', 'off']),
        startSidecar(['--cert-dir', serviceB.certDir, '--app', echoApp.url, '--outbound', 'off']),
      ]);
      await assertOutboundFailure({ target: `http://localhost:${peerSidecar.inbound.port}/foreign-caller`, upstreamPort: peerSidecar.inbound.port, status: 502, code: 'upstream_rejected_our_cert', reason: 'our_cert_rejected' }, callerSidecar);
      await peerSidecar.waitForLog(handshakeFailedLine('cert_untrusted'), 3000);
      await assertProbeNames(`https://localhost:${peerSidecar.inbound.port}/`, 'our_cert_rejected', /trust bundle/, [], caller.certDir);
      await Promise.all([callerSidecar.stop(), peerSidecar.stop()]);
    });

    test('nothing listening on the upstream port -> 502 upstream_refused (no handshake counted), probe exits 1 with upstream_refused', async () => {
      const closedPort = await freePort();
      await assertOutboundFailure({ target: `http://localhost:${closedPort}/refused`, upstreamPort: closedPort, status: 502, code: 'upstream_refused' });
      await assertProbeNames(`https://localhost:${closedPort}/`, 'upstream_refused', /nothing listens/);
    });

    test('upstream that accepts and never answers, --request-timeout 1s -> 504 upstream_timeout after about 1 s', async () => {
      const upstreamLeaf = await issueLeaf(root, { cn: 'silent-upstream', dns: ['localhost'] });
      const server = await startHangingTlsServer({ certPem: upstreamLeaf.chainPem, keyPem: upstreamLeaf.keyPem });
      closers.push(() => server.close());
      const started = Date.now();
      await assertOutboundFailure({ target: `http://localhost:${server.port}/hang`, upstreamPort: server.port, status: 504, code: 'upstream_timeout' });
      const elapsed = Date.now() - started;
      assert.ok(elapsed >= 900 && elapsed < 5000, `the 504 should come after --request-timeout (1 s), took ${elapsed} ms`);
      assert.deepEqual(server.received, ['/hang'], 'the request reached the upstream before the timeout');
      await assertProbeNames(`https://localhost:${server.port}/`, 'upstream_timeout', undefined, ['--timeout', '1s']);
    });
  });

  describe('inbound handshake failures: log line (reason, peer address, hint) and metric', () => {
    const assertHandshakeRefused = async (reason: string, peerPort: number | undefined, hint: RegExp, before: PrometheusFamily[]): Promise<LogLine> => {
      const line = await mesh.waitForLog(handshakeFailedLine(reason, peerPort), 5000);
      assert.equal(line.direction, 'inbound');
      if (peerPort !== undefined) assert.equal(line.peer, `127.0.0.1:${peerPort}`, 'the peer field is the caller address');
      else assert.match(String(line.peer), /^127\.0\.0\.1:\d+$/);
      assert.match(String(line.hint ?? ''), hint, `hint of ${JSON.stringify(line)}`);
      const afterValue = await scrapeValue(mesh.admin, 'sidecar_tls_handshake_errors_total', { direction: 'inbound', reason });
      assert.equal(afterValue - sampleValue(before, 'sidecar_tls_handshake_errors_total', { direction: 'inbound', reason }), 1, `sidecar_tls_handshake_errors_total{direction="inbound",reason="${reason}"}`);
      return line;
    };
    const beforeScrape = async () => (await scrape(mesh.admin)).families;

    test('peer without a client certificate -> peer_cert_missing, never reaches the app', async () => {
      const before = await beforeScrape();
      const attempt = await tlsAttempt({ ...mesh.inbound, ca: root.certPem });
      assert.ok(attempt.localPort, 'connected');
      assert.doesNotMatch(attempt.response, /^HTTP\//, 'no HTTP response without a client certificate');
      await assertHandshakeRefused('peer_cert_missing', attempt.localPort, /client certificate/, before);
      assert.equal(hangingApp.received.length, 0);
    });

    test('peer with a certificate from a foreign CA -> cert_untrusted', async () => {
      const before = await beforeScrape();
      const foreign = await issueLeaf(otherRoot, { cn: 'foreign-client' });
      const attempt = await tlsAttempt({ ...mesh.inbound, ca: root.certPem, cert: foreign.chainPem, key: foreign.keyPem });
      assert.doesNotMatch(attempt.response, /^HTTP\//);
      await assertHandshakeRefused('cert_untrusted', attempt.localPort, /trust bundle|CA/, before);
    });

    test('peer with an expired client certificate -> cert_expired', async () => {
      const before = await beforeScrape();
      const expired = await issueLeaf(root, { cn: 'expired-client', expired: true });
      const attempt = await tlsAttempt({ ...mesh.inbound, ca: root.certPem, cert: expired.chainPem, key: expired.keyPem });
      assert.doesNotMatch(attempt.response, /^HTTP\//);
      await assertHandshakeRefused('cert_expired', attempt.localPort, /renew/, before);
    });

    test('plain HTTP sent to the mTLS port -> plaintext_on_tls_port', async () => {
      const before = await beforeScrape();
      const attempt = await plaintextAttempt(mesh.inbound);
      requestPaths.add('/plaintext-attempt');
      assert.doesNotMatch(attempt.response, /^HTTP\/1\.1 2/, 'plaintext must not reach the app');
      await assertHandshakeRefused('plaintext_on_tls_port', attempt.localPort, /https/, before);
    });

    test('a TLS 1.1-only client (openssl s_client -tls1_1) -> protocol_version', async (t) => {
      const before = await beforeScrape();
      const attempt = await opensslTls11Attempt(mesh.inbound);
      if (attempt.refusedLocally) {
        t.skip(attempt.refusedLocally);
        return;
      }
      assert.match(attempt.output, /alert protocol version|unsupported protocol|no protocols/i, `s_client should be refused:\n${attempt.output}`);
      await assertHandshakeRefused('protocol_version', undefined, /TLS 1\.2/, before);
    });
  });

  describe('inbound app failures: status, x-sidecar-error, log and metric agree', () => {
    const peerB = () => ({ cert: serviceB.leaf.chainPem, key: serviceB.leaf.keyPem, ca: root.certPem });

    test('app accepts and never answers, --request-timeout 1s -> 504 app_timeout', async () => {
      const before = await scrapeValue(mesh.admin, 'sidecar_requests_total', { direction: 'inbound', code: '504' });
      requestPaths.add('/app-hangs');
      const started = Date.now();
      const response = await mtlsRequest({ ...mesh.inbound, path: '/app-hangs', ...peerB() });
      const elapsed = Date.now() - started;
      assertSidecarError(response, 504, 'app_timeout');
      assert.ok(elapsed >= 900 && elapsed < 5000, `504 after --request-timeout (1 s), took ${elapsed} ms`);
      assert.ok(hangingApp.received.includes('/app-hangs'), 'the request reached the app');
      await mesh.waitForLog(forwardingFailedLine('app_timeout', 'inbound'), 3000);
      const access = await mesh.waitForLog((line) => line.msg === 'request' && line.direction === 'inbound' && line.path === '/app-hangs', 3000);
      assert.equal(access.status, 504);
      assert.equal(access.error, 'app_timeout');
      assert.equal(await scrapeValue(mesh.admin, 'sidecar_requests_total', { direction: 'inbound', code: '504' }), before + 1, 'sidecar_requests_total{direction="inbound",code="504"}');
    });

    test('app not listening -> 502 app_refused', async () => {
      const closedPort = await freePort();
      const sidecar = await startSidecar(['--cert-dir', serviceA.certDir, '--app', `http://127.0.0.1:${closedPort}`, '--outbound', 'off']);
      requestPaths.add('/app-down');
      const response = await mtlsRequest({ ...sidecar.inbound, path: '/app-down', ...peerB() });
      assertSidecarError(response, 502, 'app_refused');
      await sidecar.waitForLog(forwardingFailedLine('app_refused', 'inbound'), 3000);
      const access = await sidecar.waitForLog((line) => line.msg === 'request' && line.direction === 'inbound' && line.path === '/app-down', 3000);
      assert.equal(access.status, 502);
      assert.equal(await scrapeValue(sidecar.admin, 'sidecar_requests_total', { direction: 'inbound', code: '502' }), 1);
      assert.equal(await sidecar.stop(), 0);
    });
  });

  describe('admin endpoints', () => {
    test('/healthz and /readyz answer 200 when the sidecar is ready', async () => {
      const health = await plainRequest({ ...mesh.admin, path: '/healthz' });
      assert.equal(health.status, 200);
      const ready = await plainRequest({ ...mesh.admin, path: '/readyz' });
      assert.equal(ready.status, 200, ready.text);
      assert.deepEqual(ready.json<{ ready: boolean; reasons: string[] }>(), { ready: true, reasons: [] });
    });

    test('/metrics parses as Prometheus text with the SPEC §7 metrics, process metrics and bounded labels', async () => {
      // One successful inbound request so the request counters and the histogram have samples.
      const okSidecar = await startSidecar(['--cert-dir', serviceA.certDir, '--app', echoApp.url, '--outbound', 'off']);
      requestPaths.add('/metrics-probe/42');
      const ok = await mtlsRequest({ ...okSidecar.inbound, path: '/metrics-probe/42', cert: serviceB.leaf.chainPem, key: serviceB.leaf.keyPem, ca: root.certPem });
      assert.equal(ok.status, 200);
      const { families } = await scrape(okSidecar.admin);
      const { families: meshFamilies } = await scrape(mesh.admin);

      const expectType = (name: string, type: PrometheusFamily['type']) => {
        const found = family(families, name);
        assert.ok(found, `metric ${name} should exist; names: ${families.map((entry) => entry.name).join(', ')}`);
        assert.equal(found.type, type, `${name} type`);
        return found;
      };
      expectType('sidecar_requests_total', 'COUNTER');
      assert.equal(sampleValue(families, 'sidecar_requests_total', { direction: 'inbound', code: '200' }), 1);
      const histogram = expectType('sidecar_request_duration_seconds', 'HISTOGRAM');
      // parse-prometheus-text-format keeps only the bucket bounds of a labelled histogram (its
      // per-label-set count/sum are dropped), which is enough for the bucket layout.
      const bounds = Object.keys(histogram.metrics[0]?.buckets ?? {});
      assert.ok(bounds.includes('+Inf'), `buckets: ${bounds.join(', ')}`);
      assert.ok(bounds.length - 1 >= 8 && bounds.length - 1 <= 14, `about 10 finite buckets, got ${bounds.length - 1}: ${bounds.join(', ')}`);
      expectType('sidecar_tls_handshake_errors_total', 'COUNTER');
      assert.ok(sampleValue(meshFamilies, 'sidecar_tls_handshake_errors_total', { direction: 'inbound', reason: 'peer_cert_missing' }) >= 1, 'the shared sidecar counted the inbound handshake failures');
      expectType('sidecar_authz_denied_total', 'COUNTER');
      expectType('sidecar_cert_not_after_timestamp_seconds', 'GAUGE');
      assert.equal(sampleValue(families, 'sidecar_cert_not_after_timestamp_seconds', { cert: 'leaf' }), await opensslNotAfterSeconds(serviceA.leaf.certPem), 'leaf notAfter as openssl reads it');
      expectType('sidecar_cert_reloads_total', 'COUNTER');
      assert.ok(sampleValue(families, 'sidecar_cert_reloads_total', { result: 'success' }) >= 1, 'the initial load counts as a successful load');
      expectType('sidecar_connections_active', 'GAUGE');
      expectType('sidecar_inbound_requests_total', 'COUNTER');
      assert.equal(sampleValue(families, 'sidecar_inbound_requests_total', { tls: 'mtls' }), 1);
      for (const processMetric of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'process_start_time_seconds']) {
        assert.ok(family(families, processMetric), `process metric ${processMetric}`);
      }
      assert.ok(families.some((entry) => entry.name.startsWith('nodejs_')), 'Node.js runtime metrics');

      // No label may carry a request path or a peer identity (unbounded cardinality, and a leak).
      for (const [owner, scraped] of [['metrics sidecar', families], ['shared sidecar', meshFamilies]] as const) {
        for (const entry of scraped) {
          for (const sample of entry.metrics) {
            for (const [label, value] of Object.entries(sample.labels ?? {})) {
              assert.ok(!value.includes('spiffe://'), `${owner}: ${entry.name}{${label}="${value}"} carries a peer identity`);
              assert.ok(![...requestPaths].some((path) => value.includes(path)) && !value.startsWith('/'), `${owner}: ${entry.name}{${label}="${value}"} carries a path`);
            }
          }
        }
      }
      assert.equal(await okSidecar.stop(), 0);
    });

    test('/certs reports leaf (subject, SANs, serial, validity, sha256 as openssl sees them), bundle and the last reload', async () => {
      const response = await plainRequest({ ...mesh.admin, path: '/certs' });
      assert.equal(response.status, 200);
      interface Summary { subject: string; sans: { dns: string[]; uri: string[]; ip: string[] }; serial: string; notBefore: string; notAfter: string; sha256: string }
      const report = response.json<{ leaf: Summary; bundle: Summary[]; lastReload: { at: string; result: string } }>();
      const leaf = serviceA.leaf;
      const fingerprint = (value: string) => value.replace(/:/g, '').toLowerCase();
      assert.equal(report.leaf.subject, leaf.subject);
      assert.equal(normalizeSerial(report.leaf.serial), normalizeSerial(leaf.serial));
      assert.equal(fingerprint(report.leaf.sha256), leaf.sha256);
      assert.deepEqual(await opensslValidity(leaf.certPem), { notBefore: new Date(report.leaf.notBefore).toISOString(), notAfter: new Date(report.leaf.notAfter).toISOString() });
      const sans = await opensslSanEntries(leaf.certPem);
      assert.deepEqual(sans.filter((san) => san.startsWith('DNS:')).map((san) => san.slice(4)), report.leaf.sans.dns);
      assert.deepEqual(sans.filter((san) => san.startsWith('IP Address:')).map((san) => san.slice(11)), report.leaf.sans.ip);
      assert.deepEqual(sans.filter((san) => san.startsWith('URI:')).map((san) => san.slice(4)), report.leaf.sans.uri);
      assert.equal(report.bundle.length, 1);
      assert.equal(normalizeSerial(report.bundle[0]!.serial), normalizeSerial(root.serial));
      assert.equal(fingerprint(report.bundle[0]!.sha256), root.sha256);
      assert.equal(report.bundle[0]!.subject, root.subject);
      // The initial load, or a later poll that found the same content.
      assert.ok(['success', 'unchanged'].includes(report.lastReload.result), `lastReload: ${JSON.stringify(report.lastReload)}`);
      assert.ok(Math.abs(Date.now() - Date.parse(report.lastReload.at)) < 5 * 60_000, `lastReload.at ${report.lastReload.at}`);
    });
  });

  describe('signals and lifecycle', () => {
    const peer = () => ({ cert: serviceB.leaf.chainPem, key: serviceB.leaf.keyPem, ca: root.certPem });
    const drainLine = (line: LogLine) => line.msg?.startsWith('draining') === true;

    /** A slow request through the inbound listener; resolves with its status (or the error). */
    const slowRequest = (sidecar: Sidecar, ms: number): Promise<{ status: number } | { error: string }> =>
      mtlsRequest({ ...sidecar.inbound, path: `/slow?ms=${ms}`, ...peer(), timeoutMs: ms + 10_000 }).then(
        (response) => ({ status: response.status }),
        (error: NodeJS.ErrnoException) => ({ error: error.code ?? error.message }),
      );
    const appReceived = async (path: string, timeoutMs = 3000) => {
      const started = Date.now();
      while (!echoApp.requests.some((request) => request.url === path)) {
        if (Date.now() - started > timeoutMs) throw new Error(`the app never received ${path}`);
        await sleep(10);
      }
    };

    test('SIGTERM: /readyz answers 503 with a draining reason at once, while an in-flight request holds the drain; /healthz stays 200', async () => {
      const sidecar = await startSidecar(['--cert-dir', serviceA.certDir, '--app', echoApp.url, '--drain-timeout', '10s']);
      assert.equal((await plainRequest({ ...sidecar.admin, path: '/readyz' })).status, 200);
      const inFlight = slowRequest(sidecar, 1500);
      await appReceived('/slow?ms=1500');
      sidecar.signal('SIGTERM');
      await sidecar.waitForLog(drainLine, 2000);
      const readyz = await plainRequest({ ...sidecar.admin, path: '/readyz' });
      assert.equal(readyz.status, 503, readyz.text);
      const body = readyz.json<{ ready: boolean; reasons: string[] }>();
      assert.equal(body.ready, false);
      assert.ok(body.reasons.some((reason) => /drain/i.test(reason)), `reasons: ${JSON.stringify(body.reasons)}`);
      assert.equal((await plainRequest({ ...sidecar.admin, path: '/healthz' })).status, 200, '/healthz stays 200 while draining');
      assert.equal(sidecar.child.exitCode, null, 'the in-flight request keeps the process alive');
      assert.deepEqual(await inFlight, { status: 200 });
      assert.equal(await exitWithin(sidecar, 5000), 0);
    });

    test('SIGTERM drain: a 2 s request started before completes with 200, new connections are refused, idle keep-alive connections close, exit 0 within --drain-timeout', async () => {
      const drainTimeoutMs = 6000;
      const sidecar = await startSidecar(['--cert-dir', serviceA.certDir, '--app', echoApp.url, '--drain-timeout', `${drainTimeoutMs / 1000}s`]);
      // An idle keep-alive connection: one request, then the socket stays open in the agent.
      const agent = new HttpsAgent({ keepAlive: true, maxSockets: 1, ...peer(), servername: 'localhost' });
      // Wrapped: resolving with the bare promise would wait for the close itself.
      const { idleClosed } = await new Promise<{ idleClosed: Promise<number> }>((resolve, reject) => {
        const request = httpsRequest({ ...sidecar.inbound, path: '/keep-alive', agent }, (response) => {
          const socket = response.socket;
          const closed = new Promise<number>((onClose) => socket.once('close', () => onClose(Date.now())));
          response.resume();
          response.on('end', () => resolve({ idleClosed: closed }));
        });
        request.on('error', reject);
        request.end();
      });
      requestPaths.add('/keep-alive');
      const inFlight = slowRequest(sidecar, 2000);
      await appReceived('/slow?ms=2000');
      const signalled = Date.now();
      sidecar.signal('SIGTERM');
      await sidecar.waitForLog(drainLine, 2000);

      const fresh = await tlsAttempt({ ...sidecar.inbound, ...peer(), timeoutMs: 2000 });
      assert.equal(fresh.error, 'ECONNREFUSED', `a new connection after SIGTERM should be refused: ${JSON.stringify(fresh)}`);
      const idleClosedAt = await Promise.race([idleClosed, sleep(1500).then(() => undefined)]);
      assert.ok(idleClosedAt !== undefined, 'the idle keep-alive connection should be closed during the drain (within 1.5 s)');
      assert.equal(sidecar.child.exitCode, null, 'still draining while the slow request runs');

      assert.deepEqual(await inFlight, { status: 200 }, 'the request started before SIGTERM completes');
      const code = await exitWithin(sidecar, drainTimeoutMs);
      const exitedAfter = Date.now() - signalled;
      assert.equal(code, 0);
      assert.ok(exitedAfter < drainTimeoutMs, `exit within --drain-timeout: ${exitedAfter} ms`);
      agent.destroy();
    });

    test('drain timeout: --drain-timeout 1s with a 5 s request in flight -> exit 1, cutConnections logged', async () => {
      const sidecar = await startSidecar(['--cert-dir', serviceA.certDir, '--app', echoApp.url, '--drain-timeout', '1s']);
      const inFlight = slowRequest(sidecar, 5000);
      await appReceived('/slow?ms=5000');
      const signalled = Date.now();
      sidecar.signal('SIGTERM');
      const code = await exitWithin(sidecar, 4000);
      const exitedAfter = Date.now() - signalled;
      assert.equal(code, 1, 'a drain cut short exits 1');
      assert.ok(exitedAfter >= 900 && exitedAfter < 3000, `exit right after the 1 s drain timeout, took ${exitedAfter} ms`);
      const cut = await sidecar.waitForLog((line) => typeof line.cutConnections === 'number', 1000);
      assert.ok((cut.cutConnections as number) >= 1, `cutConnections: ${JSON.stringify(cut)}`);
      const outcome = await inFlight;
      assert.ok('error' in outcome, `the cut request must fail, not succeed: ${JSON.stringify(outcome)}`);
    });

    test('`wait` started before the sidecar exits 0 once the sidecar on that admin port is ready', async () => {
      const adminPort = await freePort();
      let settled = false;
      const waiting = runCli(['wait', '--admin', `127.0.0.1:${adminPort}`, '--timeout', '15s'], { timeoutMs: 20_000 }).finally(() => {
        settled = true;
      });
      await sleep(700);
      assert.equal(settled, false, '`wait` must keep waiting while nothing answers');
      const sidecar = await startSidecar(['--cert-dir', serviceA.certDir, '--app', echoApp.url, '--admin', `127.0.0.1:${adminPort}`]);
      const result = await waiting;
      assert.equal(result.code, 0, `wait: ${result.stdout}${result.stderr}`);
      assert.match(result.stdout, /ready/);
      assert.equal(await sidecar.stop(), 0);
    });

    test('`wait --timeout 1s` with nothing answering exits 1 with a message after the timeout', async () => {
      const adminPort = await freePort();
      const started = Date.now();
      const result = await runCli(['wait', '--admin', `127.0.0.1:${adminPort}`, '--timeout', '1s']);
      const elapsed = Date.now() - started;
      assert.equal(result.code, 1, `wait: ${result.stdout}${result.stderr}`);
      assert.ok(elapsed >= 1000 && elapsed < 6000, `exit after the 1 s timeout, took ${elapsed} ms`);
      assert.match(result.stderr, /not ready/);
      assert.ok(result.stderr.includes(`127.0.0.1:${adminPort}`), `the message names the admin address: ${result.stderr}`);
    });

    test('--inbound on a port already in use -> exit 1 naming --inbound and the address', async () => {
      const occupier: NetServer = createNetServer();
      await new Promise<void>((resolve) => occupier.listen(0, '127.0.0.1', resolve));
      const port = (occupier.address() as AddressInfo).port;
      try {
        const result = await runCli(['run', '--cert-dir', serviceA.certDir, '--app', echoApp.url, '--inbound', `127.0.0.1:${port}`, '--outbound', '127.0.0.1:0', '--admin', '127.0.0.1:0']);
        assert.equal(result.code, 1, `exit code; stderr: ${result.stderr}`);
        assert.match(result.stderr, /--inbound/);
        assert.ok(result.stderr.includes(`127.0.0.1:${port}`), `the message names the address: ${result.stderr}`);
        assert.match(result.stderr, /in use/);
      } finally {
        await new Promise((resolve) => occupier.close(resolve));
      }
    });
  });
});
