// Peer identity (SPEC §2 allow-list and trust-domain flags, §4, §5, §7): who a peer is comes from
// its verified leaf (URI SANs, DNS SANs, subject CN and OU); the allow-list decides on it, XFCC
// tells the app about it, and outbound calls pin the upstream's SPIFFE ID. Certificates come from
// the openssl CLI, and what the product reports is compared with what openssl says.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { assertSidecarError } from './helpers/assertions.js';
import { headerCopies, startEchoApp, startTlsServer, type EchoApp, type EchoReply, type TlsServerReply, type TlsTestServer } from './helpers/apps.js';
import { mtlsRequest, plainRequest, proxyRequest, type HttpResult } from './helpers/clients.js';
import { fetchMetrics, issueLeafWithSubject, metricValue, opensslSans } from './helpers/identity.js';
import { derOf, issueLeaf, makeRootCA, makeService, openssl, sharedRootCA, type CertificateAuthority, type Leaf, type ServiceIdentity } from './helpers/pki.js';
import { holdsWholeResponse, rawTlsExchange, wholeResponse } from './helpers/raw.js';
import { collect, connectPlain } from './helpers/tcp.js';
import { freePort, runCli, startSidecar, stopAllSidecars, type LogLine, type Sidecar } from './helpers/sidecar.js';

const UPSTREAM_ID = 'spiffe://test.local/ns/default/sa/upstream';

/**
 * An independent reader of Envoy's XFCC grammar: elements separated by `,`, key/value pairs by
 * `;`, `key=value`, a value optionally double-quoted with backslash escapes inside the quotes.
 * Returns each element as its pairs in order.
 */
function parseEnvoyXfcc(header: string): Array<Array<[string, string]>> {
  const elements: Array<Array<[string, string]>> = [];
  let pairs: Array<[string, string]> = [];
  let index = 0;
  for (;;) {
    const equals = header.indexOf('=', index);
    if (equals < 0) throw new Error(`XFCC: no '=' after offset ${index}: ${header}`);
    const key = header.slice(index, equals);
    if (!/^[A-Za-z]+$/.test(key)) throw new Error(`XFCC: bad key ${JSON.stringify(key)} at offset ${index}: ${header}`);
    index = equals + 1;
    let value = '';
    if (header[index] === '"') {
      index += 1;
      while (index < header.length && header[index] !== '"') {
        if (header[index] === '\\') index += 1;
        if (index >= header.length) throw new Error(`XFCC: dangling backslash: ${header}`);
        value += header[index];
        index += 1;
      }
      if (header[index] !== '"') throw new Error(`XFCC: unterminated quoted value for ${key}: ${header}`);
      index += 1;
    } else {
      while (index < header.length && header[index] !== ';' && header[index] !== ',') {
        if (header[index] === '"') throw new Error(`XFCC: '"' inside an unquoted value of ${key}: ${header}`);
        value += header[index];
        index += 1;
      }
    }
    pairs.push([key, value]);
    if (index >= header.length) {
      elements.push(pairs);
      return elements;
    }
    if (header[index] === ',') {
      elements.push(pairs);
      pairs = [];
    } else if (header[index] !== ';') {
      throw new Error(`XFCC: expected ';' or ',' at offset ${index}, got ${JSON.stringify(header[index])}: ${header}`);
    }
    index += 1;
  }
}

function valuesOf(pairs: Array<[string, string]>, key: string): string[] {
  return pairs.filter(([name]) => name === key).map(([, value]) => value);
}

describe('peer identity, allow-list, XFCC and upstream identity', () => {
  let root: CertificateAuthority;
  let otherRoot: CertificateAuthority;
  let serviceB: ServiceIdentity;
  let serviceA: ServiceIdentity;
  let app: EchoApp;
  /** allow-spiffe matrix inbound; pinned upstreams outbound. */
  let spiffeSidecar: Sidecar;
  /** allow-dns by flag + allow-spiffe by env (SIDECAR_ALLOW_SPIFFE, comma-separated). */
  let dnsSidecar: Sidecar;
  /** allow-cn OR allow-ou; the XFCC tests run here (the awkward client is in OU Payments). */
  let cnOuSidecar: Sidecar;
  /** --trust-domain test.local, both directions. */
  let trustSidecar: Sidecar;
  let insecureSidecar: Sidecar;
  let pinnedOkPort: number;
  let pinnedBadPort: number;
  const servers: TlsTestServer[] = [];
  const peers: Record<string, Leaf> = {};
  let awkward: Leaf;
  let upGood: TlsTestServer;
  let upImpostor: TlsTestServer;
  let upForeignDomain: TlsTestServer;
  let upUntrusted: TlsTestServer;
  let requestCounter = 0;

  const peerSpecs: Record<string, { uris?: string[]; dns?: string[] }> = {
    exact: { uris: ['spiffe://test.local/ns/default/sa/exact'] },
    exactLonger: { uris: ['spiffe://test.local/ns/default/sa/exactly'] },
    exactDeeper: { uris: ['spiffe://test.local/ns/default/sa/exact/more'] },
    web: { uris: ['spiffe://test.local/ns/frontend/sa/web'] },
    webTwoSegments: { uris: ['spiffe://test.local/ns/front/end/sa/web'] },
    webhook: { uris: ['spiffe://test.local/ns/frontend/sa/webhook'] },
    payments: { uris: ['spiffe://test.local/ns/payments/sa/api'] },
    paymentsDeep: { uris: ['spiffe://test.local/ns/payments/sa/api/v2/canary'] },
    paymentsLookalike: { uris: ['spiffe://test.local/ns/payments-eu/sa/api'] },
    paymentsOtherDomain: { uris: ['spiffe://other.local/ns/payments/sa/api'] },
    lookalikeDomain: { uris: ['spiffe://test.local.evil/ns/payments/sa/api'] },
    paymentsDotDot: { uris: ['spiffe://test.local/ns/payments/../admin'] },
    paymentsTrailingSlash: { uris: ['spiffe://test.local/ns/payments/sa/api/'] },
    twoUris: { uris: ['spiffe://test.local/ns/nowhere/sa/nobody', 'spiffe://test.local/ns/payments/sa/second-uri'] },
    rateLimited: { uris: ['spiffe://test.local/ns/default/sa/rate-limited'] },
    dnsExact: { dns: ['exact.example.com'] },
    dnsWildcard: { dns: ['api.svc.example.com'] },
    dnsTwoLabels: { dns: ['a.api.svc.example.com'] },
    dnsApex: { dns: ['svc.example.com'] },
    dnsSuffixOnly: { dns: ['xsvc.example.com'] },
    envOne: { uris: ['spiffe://test.local/ns/env/sa/one'] },
    envTwo: { uris: ['spiffe://test.local/ns/env/sa/two'] },
    envThree: { uris: ['spiffe://test.local/ns/env/sa/three'] },
    'billing-client': {},
    'billing-client-2': {},
  };

  before(async () => {
    root = await sharedRootCA();
    [otherRoot, serviceB, serviceA, app, pinnedOkPort, pinnedBadPort] = await Promise.all([
      makeRootCA({ cn: 'foreign CA' }),
      makeService(root, 'service-b'),
      makeService(root, 'service-a'),
      startEchoApp(),
      freePort(),
      freePort(),
    ]);
    const issued = await Promise.all(
      Object.entries(peerSpecs).map(async ([name, spec]) => [name, await issueLeaf(root, { cn: name, ...spec })] as const),
    );
    for (const [name, leaf] of issued) peers[name] = leaf;
    [awkward, peers.ouMember, peers.ouNear] = await Promise.all([
      issueLeafWithSubject(root, {
        subject: '/O=Acme, Inc/OU=Payments/CN=awkward-client',
        dns: ['awkward.example.com', 'client.acme.example'],
        uris: ['spiffe://test.local/ns/default/sa/awkward', 'urn:acme:client;tier=gold'],
      }),
      issueLeafWithSubject(root, { subject: '/O=Acme/OU=Payments/CN=ou-member' }),
      issueLeafWithSubject(root, { subject: '/O=Acme/OU=Payment/CN=ou-near' }),
    ]);
    const upstreamLeaf = (issuer: CertificateAuthority, cn: string, uris: string[]) => issueLeaf(issuer, { cn, dns: ['localhost'], ips: ['127.0.0.1'], uris });
    const [goodLeaf, impostorLeaf, foreignDomainLeaf, untrustedLeaf] = await Promise.all([
      upstreamLeaf(root, 'upstream', [UPSTREAM_ID]),
      upstreamLeaf(root, 'impostor', ['spiffe://test.local/ns/default/sa/impostor']),
      upstreamLeaf(root, 'foreign-domain', ['spiffe://other.local/ns/default/sa/upstream']),
      upstreamLeaf(otherRoot, 'untrusted', [UPSTREAM_ID]),
    ]);
    [upGood, upImpostor, upForeignDomain, upUntrusted] = await Promise.all(
      [goodLeaf, impostorLeaf, foreignDomainLeaf, untrustedLeaf].map((leaf) => startTlsServer({ certPem: leaf.chainPem, keyPem: leaf.keyPem, ca: root.certPem })),
    );
    servers.push(upGood, upImpostor, upForeignDomain, upUntrusted);

    const common = ['--cert-dir', serviceB.certDir, '--app', app.url];
    [spiffeSidecar, dnsSidecar, cnOuSidecar, trustSidecar, insecureSidecar] = await Promise.all([
      startSidecar([
        ...common,
        '--allow-spiffe', 'spiffe://test.local/ns/default/sa/exact',
        '--allow-spiffe', 'spiffe://test.local/ns/*/sa/web',
        '--allow-spiffe', 'spiffe://test.local/ns/payments/**',
        '--upstream', `${pinnedOkPort}=localhost:${upGood.port}@${UPSTREAM_ID}`,
        '--upstream', `${pinnedBadPort}=localhost:${upImpostor.port}@${UPSTREAM_ID}`,
        '--expect-spiffe', `localhost=${UPSTREAM_ID}`,
      ]),
      startSidecar([...common, '--outbound', 'off', '--allow-dns', 'exact.example.com', '--allow-dns', '*.svc.example.com'], {
        env: { SIDECAR_ALLOW_SPIFFE: 'spiffe://test.local/ns/env/sa/one,spiffe://test.local/ns/env/sa/two' },
      }),
      startSidecar([...common, '--outbound', 'off', '--allow-cn', 'billing-client', '--allow-ou', 'Payments']),
      startSidecar([...common, '--trust-domain', 'test.local']),
      startSidecar(['--cert-dir', serviceA.certDir, '--app', 'http://127.0.0.1:9', '--inbound', 'off', '--insecure-skip-verify']),
    ]);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
    await Promise.all(servers.map((server) => server.close()));
  });

  const call = (sidecar: Sidecar, leaf: Leaf, path = `/identity/${++requestCounter}`, headers?: Record<string, string>): Promise<HttpResult> =>
    mtlsRequest({ host: sidecar.inbound.host, port: sidecar.inbound.port, path, headers, ca: root.certPem, cert: leaf.chainPem, key: leaf.keyPem });

  const appSaw = (path: string) => app.requests.some((request) => request.url === path);

  async function assertAllowed(sidecar: Sidecar, leaf: Leaf): Promise<void> {
    const path = `/allowed/${++requestCounter}`;
    const response = await call(sidecar, leaf, path);
    assert.equal(response.status, 200, `${leaf.subject} should be allowed: ${response.status} ${response.text}`);
    assert.equal(response.json<EchoReply>().url, path);
  }

  /** 403 peer_not_allowed naming `identity`, and the app never saw the request. */
  async function assertDenied(sidecar: Sidecar, leaf: Leaf, identity: string): Promise<void> {
    const path = `/denied/${++requestCounter}`;
    const response = await call(sidecar, leaf, path);
    assertSidecarError(response, 403, 'peer_not_allowed');
    assert.ok(response.text.includes(identity), `the 403 body should name the peer identity ${identity}: ${response.text}`);
    assert.equal(appSaw(path), false, 'a denied request must not reach the app');
  }

  describe('--allow-spiffe', () => {
    test('an exact SPIFFE ID is allowed; a longer ID or one more segment is not', async () => {
      await assertAllowed(spiffeSidecar, peers.exact!);
      await assertDenied(spiffeSidecar, peers.exactLonger!, 'spiffe://test.local/ns/default/sa/exactly');
      await assertDenied(spiffeSidecar, peers.exactDeeper!, 'spiffe://test.local/ns/default/sa/exact/more');
    });

    test('* matches exactly one path segment and never crosses a /', async () => {
      await assertAllowed(spiffeSidecar, peers.web!);
      await assertDenied(spiffeSidecar, peers.webTwoSegments!, 'spiffe://test.local/ns/front/end/sa/web');
      await assertDenied(spiffeSidecar, peers.webhook!, 'spiffe://test.local/ns/frontend/sa/webhook');
    });

    test('a trailing ** matches any remaining segments, but only below that exact prefix and trust domain', async () => {
      await assertAllowed(spiffeSidecar, peers.payments!);
      await assertAllowed(spiffeSidecar, peers.paymentsDeep!);
      await assertDenied(spiffeSidecar, peers.paymentsLookalike!, 'spiffe://test.local/ns/payments-eu/sa/api');
      await assertDenied(spiffeSidecar, peers.paymentsOtherDomain!, 'spiffe://other.local/ns/payments/sa/api');
      await assertDenied(spiffeSidecar, peers.lookalikeDomain!, 'spiffe://test.local.evil/ns/payments/sa/api');
    });

    test('a URI SAN that is not a valid SPIFFE ID matches no pattern: a ".." segment, a trailing slash', async () => {
      await assertDenied(spiffeSidecar, peers.paymentsDotDot!, 'spiffe://test.local/ns/payments/../admin');
      await assertDenied(spiffeSidecar, peers.paymentsTrailingSlash!, 'spiffe://test.local/ns/payments/sa/api/');
    });

    test('any of the peer’s URI SANs may match (the second of two here)', async () => {
      await assertAllowed(spiffeSidecar, peers.twoUris!);
    });

    test('a peer with no URI SAN is denied by a SPIFFE-only allow-list', async () => {
      await assertDenied(spiffeSidecar, peers.dnsExact!, 'exact.example.com');
    });

    test('the 403 body names the identity read from the leaf: every URI SAN, every DNS SAN, the subject', async () => {
      const response = await call(spiffeSidecar, awkward);
      assert.equal(response.status, 403, response.text);
      for (const part of ['spiffe://test.local/ns/default/sa/awkward', 'urn:acme:client;tier=gold', 'awkward.example.com', 'client.acme.example', 'awkward-client', 'Payments']) {
        assert.ok(response.text.includes(part), `403 body should mention ${part}: ${response.text}`);
      }
    });

    test('5 denied requests: 5 more sidecar_authz_denied_total, one "peer not allowed" log line for that identity', async () => {
      const id = 'spiffe://test.local/ns/default/sa/rate-limited';
      const before = metricValue(await fetchMetrics(spiffeSidecar), 'sidecar_authz_denied_total');
      for (let attempt = 0; attempt < 5; attempt += 1) {
        const response = await call(spiffeSidecar, peers.rateLimited!);
        assert.equal(response.status, 403, response.text);
        assert.equal(response.headers['x-sidecar-error'], 'peer_not_allowed');
      }
      const afterCount = metricValue(await fetchMetrics(spiffeSidecar), 'sidecar_authz_denied_total');
      assert.equal(afterCount - before, 5, `sidecar_authz_denied_total went from ${before} to ${afterCount}`);
      await spiffeSidecar.waitForLog((line) => line.msg === 'peer not allowed' && JSON.stringify(line).includes(id), 5000);
      await new Promise((resolve) => setTimeout(resolve, 300));
      const lines = spiffeSidecar.logs().filter((line) => line.msg === 'peer not allowed' && JSON.stringify(line).includes(id));
      assert.equal(lines.length, 1, `expected one rate-limited log line, got ${lines.length}:\n${lines.map((line) => JSON.stringify(line)).join('\n')}`);
    });
  });

  describe('--allow-dns, --allow-cn, --allow-ou and env', () => {
    test('an exact DNS name is allowed', async () => {
      await assertAllowed(dnsSidecar, peers.dnsExact!);
    });

    test('*.svc.example.com matches one label only: not two labels, not the apex, not a suffix without the dot', async () => {
      await assertAllowed(dnsSidecar, peers.dnsWildcard!);
      await assertDenied(dnsSidecar, peers.dnsTwoLabels!, 'a.api.svc.example.com');
      await assertDenied(dnsSidecar, peers.dnsApex!, 'svc.example.com');
      await assertDenied(dnsSidecar, peers.dnsSuffixOnly!, 'xsvc.example.com');
    });

    test('SIDECAR_ALLOW_SPIFFE takes a comma-separated list, OR-ed with --allow-dns', async () => {
      await assertAllowed(dnsSidecar, peers.envOne!);
      await assertAllowed(dnsSidecar, peers.envTwo!);
      await assertDenied(dnsSidecar, peers.envThree!, 'spiffe://test.local/ns/env/sa/three');
    });

    test('--allow-cn matches the subject CN exactly', async () => {
      await assertAllowed(cnOuSidecar, peers['billing-client']!);
      await assertDenied(cnOuSidecar, peers['billing-client-2']!, 'billing-client-2');
    });

    test('--allow-ou matches a subject OU exactly, OR-ed with --allow-cn', async () => {
      await assertAllowed(cnOuSidecar, peers.ouMember!);
      await assertDenied(cnOuSidecar, peers.ouNear!, 'ou-near');
    });

    const invalidPatterns: Array<[flag: string, value: string]> = [
      ['--allow-spiffe', 'spiffe://test.local/ns/**/sa/web'],
      ['--allow-spiffe', 'https://test.local/ns/default'],
      ['--allow-dns', 'api.*.example.com'],
      ['--allow-dns', '*example.com'],
    ];
    for (const [flag, value] of invalidPatterns) {
      test(`invalid pattern ${flag} ${value} is a start-up error naming the flag (exit 2)`, async () => {
        const result = await runCli(['run', '--cert-dir', serviceB.certDir, '--app', app.url, '--inbound', '127.0.0.1:0', '--outbound', 'off', '--admin', 'off', flag, value], { timeoutMs: 8000 });
        assert.equal(result.code, 2, `exit code; stderr: ${result.stderr}\nstdout: ${result.stdout.slice(0, 2000)}`);
        assert.ok(result.stderr.includes(flag), `stderr should name ${flag}: ${result.stderr}`);
        assert.ok(result.stderr.includes(value), `stderr should quote the value ${value}: ${result.stderr}`);
      });
    }

    test('an invalid pattern in SIDECAR_ALLOW_SPIFFE is a start-up error naming --allow-spiffe (exit 2)', async () => {
      const result = await runCli(['run', '--cert-dir', serviceB.certDir, '--app', app.url, '--inbound', '127.0.0.1:0', '--outbound', 'off', '--admin', 'off'], {
        env: { SIDECAR_ALLOW_SPIFFE: 'spiffe://test.local/ns/ok,not-a-spiffe-id' },
        timeoutMs: 8000,
      });
      assert.equal(result.code, 2, `exit code; stderr: ${result.stderr}`);
      assert.match(result.stderr, /allow-spiffe/);
      assert.ok(result.stderr.includes('not-a-spiffe-id'), result.stderr);
    });
  });

  describe('--trust-domain', () => {
    test('inbound: a peer with a URI SAN in the trust domain is allowed', async () => {
      await assertAllowed(trustSidecar, peers.exact!);
    });

    test('inbound: peers without a URI SAN in test.local get 403 (other domain, look-alike domain, DNS only)', async () => {
      await assertDenied(trustSidecar, peers.paymentsOtherDomain!, 'spiffe://other.local/ns/payments/sa/api');
      await assertDenied(trustSidecar, peers.lookalikeDomain!, 'spiffe://test.local.evil/ns/payments/sa/api');
      await assertDenied(trustSidecar, peers.dnsExact!, 'exact.example.com');
    });

    test('inbound: a URI SAN in the trust domain that is not a valid SPIFFE ID ("..") gets 403', async () => {
      await assertDenied(trustSidecar, peers.paymentsDotDot!, 'spiffe://test.local/ns/payments/../admin');
    });

    test('outbound: an upstream outside the trust domain gets 502 upstream_identity_mismatch; one inside gets 200', async () => {
      const denied = await proxyRequest({ proxy: trustSidecar.outbound, target: `http://localhost:${upForeignDomain.port}/foreign` });
      const body = assertSidecarError(denied, 502, 'upstream_identity_mismatch');
      assert.ok(body.message.includes('spiffe://other.local/ns/default/sa/upstream'), `message should name the presented ID: ${body.message}`);
      assert.ok(body.message.includes('test.local'), `message should name the trust domain: ${body.message}`);
      assert.equal(upForeignDomain.requests.some((request) => request.url === '/foreign'), false, 'the request must not reach the wrong upstream');
      const allowed = await proxyRequest({ proxy: trustSidecar.outbound, target: `http://localhost:${upGood.port}/in-domain` });
      assert.equal(allowed.status, 200, allowed.text);
      assert.equal(allowed.json<TlsServerReply>().url, '/in-domain');
    });
  });

  describe('outbound identity pinning', () => {
    test('--upstream PORT=HOST:PORT@spiffe://… reaches an upstream presenting that ID (200)', async () => {
      const response = await plainRequest({ ...spiffeSidecar.upstream(pinnedOkPort), path: '/pinned-ok' });
      assert.equal(response.status, 200, response.text);
      assert.equal(response.json<TlsServerReply>().url, '/pinned-ok');
    });

    test('--upstream …@spiffe://… against another ID: 502 upstream_identity_mismatch naming expected and presented IDs', async () => {
      const response = await plainRequest({ ...spiffeSidecar.upstream(pinnedBadPort), path: '/pinned-bad' });
      const body = assertSidecarError(response, 502, 'upstream_identity_mismatch');
      assert.ok(body.message.includes(UPSTREAM_ID), `message should name the expected ID: ${body.message}`);
      assert.ok(body.message.includes('spiffe://test.local/ns/default/sa/impostor'), `message should name the presented ID: ${body.message}`);
      assert.equal(upImpostor.requests.some((request) => request.url === '/pinned-bad'), false, 'the request must not reach the impostor');
    });

    test('--expect-spiffe localhost=…: forward-proxy call to the matching upstream gets 200', async () => {
      const response = await proxyRequest({ proxy: spiffeSidecar.outbound, target: `http://localhost:${upGood.port}/expect-ok` });
      assert.equal(response.status, 200, response.text);
      assert.equal(response.json<TlsServerReply>().url, '/expect-ok');
    });

    test('--expect-spiffe localhost=…: forward-proxy call to an upstream with another ID gets 502 naming both IDs', async () => {
      const response = await proxyRequest({ proxy: spiffeSidecar.outbound, target: `http://localhost:${upImpostor.port}/expect-bad` });
      const body = assertSidecarError(response, 502, 'upstream_identity_mismatch');
      assert.ok(body.message.includes(UPSTREAM_ID), `message should name the expected ID: ${body.message}`);
      assert.ok(body.message.includes('spiffe://test.local/ns/default/sa/impostor'), `message should name the presented ID: ${body.message}`);
      assert.equal(upImpostor.requests.some((request) => request.url === '/expect-bad'), false);
    });
  });

  describe('--insecure-skip-verify', () => {
    test('warns at start; a sidecar without the flag does not', () => {
      const warning = insecureSidecar.logs().find((line) => /insecure-skip-verify/.test(String(line.msg)));
      assert.ok(warning, `expected a start-up warning naming --insecure-skip-verify:\n${insecureSidecar.output()}`);
      assert.ok(warning.level === 'warn' || warning.level === 40, `warning level: ${JSON.stringify(warning)}`);
      assert.equal(spiffeSidecar.logs().some((line) => /insecure/i.test(String(line.msg))), false);
    });

    test('an upstream with an untrusted cert: 200 through the forward proxy with the flag, access log says insecureSkipVerify', async () => {
      const response = await proxyRequest({ proxy: insecureSidecar.outbound, target: `http://127.0.0.1:${upUntrusted.port}/insecure` });
      assert.equal(response.status, 200, response.text);
      assert.equal(response.json<TlsServerReply>().url, '/insecure');
      const line = await insecureSidecar.waitForLog((entry: LogLine) => entry.msg === 'request' && entry.direction === 'outbound' && entry.path === '/insecure', 5000);
      assert.equal(line.insecureSkipVerify, true, JSON.stringify(line));
    });

    test('the same upstream without the flag: 502 upstream_cert_untrusted', async () => {
      const response = await proxyRequest({ proxy: spiffeSidecar.outbound, target: `http://127.0.0.1:${upUntrusted.port}/verified` });
      assertSidecarError(response, 502, 'upstream_cert_untrusted');
      const line = await spiffeSidecar.waitForLog((entry) => entry.msg === 'request' && entry.direction === 'outbound' && entry.path === '/verified', 5000);
      assert.notEqual(line.insecureSkipVerify, true, JSON.stringify(line));
    });

    test('explicit SPIFFE pins still apply: --upstream …@ID and --expect-spiffe against another ID get 502 upstream_identity_mismatch; the right ID behind an untrusted chain gets 200', async () => {
      const [impostorPort, untrustedPort] = await Promise.all([freePort(), freePort()]);
      const pinned = await startSidecar([
        '--cert-dir', serviceA.certDir, '--app', 'http://127.0.0.1:9', '--inbound', 'off', '--insecure-skip-verify',
        '--upstream', `${impostorPort}=localhost:${upImpostor.port}@${UPSTREAM_ID}`,
        '--upstream', `${untrustedPort}=localhost:${upUntrusted.port}@${UPSTREAM_ID}`,
        '--expect-spiffe', `localhost=${UPSTREAM_ID}`,
      ]);
      const viaUpstream = await plainRequest({ ...pinned.upstream(impostorPort), path: '/insecure-pinned-bad' });
      const body = assertSidecarError(viaUpstream, 502, 'upstream_identity_mismatch');
      assert.ok(body.message.includes('spiffe://test.local/ns/default/sa/impostor'), `message should name the presented ID: ${body.message}`);
      const viaProxy = await proxyRequest({ proxy: pinned.outbound, target: `http://localhost:${upImpostor.port}/insecure-expect-bad` });
      assertSidecarError(viaProxy, 502, 'upstream_identity_mismatch');
      assert.equal(upImpostor.requests.some((request) => request.url.startsWith('/insecure-')), false, 'the request must not reach the impostor');
      // The chain is not verified (the flag's job), the pinned identity is.
      const untrusted = await plainRequest({ ...pinned.upstream(untrustedPort), path: '/insecure-pinned-ok' });
      assert.equal(untrusted.status, 200, untrusted.text);
      await pinned.stop();
    });

    test('--trust-domain still applies: an upstream outside it gets 502 upstream_identity_mismatch', async () => {
      const sidecar = await startSidecar(['--cert-dir', serviceA.certDir, '--app', 'http://127.0.0.1:9', '--inbound', 'off', '--insecure-skip-verify', '--trust-domain', 'test.local']);
      const denied = await proxyRequest({ proxy: sidecar.outbound, target: `http://127.0.0.1:${upForeignDomain.port}/insecure-foreign` });
      assertSidecarError(denied, 502, 'upstream_identity_mismatch');
      assert.equal(upForeignDomain.requests.some((request) => request.url === '/insecure-foreign'), false);
      const allowed = await proxyRequest({ proxy: sidecar.outbound, target: `http://127.0.0.1:${upUntrusted.port}/insecure-in-domain` });
      assert.equal(allowed.status, 200, allowed.text);
      await sidecar.stop();
    });

    test('--protocol tcp: a pinned --upstream against another ID is closed before any byte, logged upstream_identity_mismatch', async () => {
      const port = await freePort();
      const sidecar = await startSidecar([
        '--cert-dir', serviceA.certDir, '--protocol', 'tcp', '--app', 'tcp://127.0.0.1:9', '--inbound', 'off', '--outbound', 'off', '--insecure-skip-verify',
        '--upstream', `${port}=localhost:${upImpostor.port}@${UPSTREAM_ID}`,
      ]);
      const socket = await connectPlain(sidecar.upstream(port));
      const reading = collect(socket, 5000);
      socket.write('GET /insecure-tcp HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
      const result = await reading;
      assert.equal(result.closed, true, 'the sidecar closes the connection');
      assert.equal(result.data.length, 0, `nothing from the impostor reaches the app: ${result.data.toString()}`);
      const line = await sidecar.waitForLog((entry) => entry.msg === 'forwarding failed', 5000);
      assert.equal(line.error, 'upstream_identity_mismatch', JSON.stringify(line));
      assert.equal(line.insecureSkipVerify, true, JSON.stringify(line));
      assert.equal(upImpostor.requests.some((request) => request.url === '/insecure-tcp'), false);
      await sidecar.stop();
    });

    for (const nearMiss of ['--insecure', '--skip-verify', '--insecure-skip']) {
      test(`only the exact flag turns verification off: ${nearMiss} is an unknown flag (exit 2)`, async () => {
        const result = await runCli(['run', '--cert-dir', serviceA.certDir, '--app', 'http://127.0.0.1:9', '--inbound', 'off', '--outbound', '127.0.0.1:0', '--admin', 'off', nearMiss], { timeoutMs: 8000 });
        assert.equal(result.code, 2, `exit code; stderr: ${result.stderr}\nstdout: ${result.stdout.slice(0, 2000)}`);
        assert.ok(result.stderr.includes(nearMiss.replace(/^--/, '')), `stderr should name ${nearMiss}: ${result.stderr}`);
      });
    }
  });

  describe('x-forwarded-client-cert', () => {
    /** What openssl says about the awkward client: RFC 2253 subject, SANs in order, DER sha256. */
    const opensslView = async () => {
      const subject = (await openssl(['x509', '-noout', '-subject', '-nameopt', 'RFC2253'], { input: awkward.certPem })).trim().replace(/^subject=/, '');
      const sans = await opensslSans(awkward.certPem);
      const hash = createHash('sha256').update(await derOf(awkward.certPem)).digest('hex');
      return {
        subject,
        uris: sans.filter((san) => san.type === 'URI').map((san) => san.value),
        dns: sans.filter((san) => san.type === 'DNS').map((san) => san.value),
        hash,
      };
    };

    const xfccFor = async (headers?: Record<string, string>): Promise<string> => {
      const response = await call(cnOuSidecar, awkward, `/xfcc/${++requestCounter}`, headers);
      assert.equal(response.status, 200, response.text);
      const copies = headerCopies(response.json<EchoReply>(), 'x-forwarded-client-cert');
      assert.equal(copies.length, 1, `exactly one XFCC expected: ${JSON.stringify(copies)}`);
      return copies[0]!;
    };

    test('the awkward client cert is what the test says it is (openssl view)', async () => {
      const view = await opensslView();
      assert.equal(view.subject, 'CN=awkward-client,OU=Payments,O=Acme\\, Inc');
      assert.deepEqual(view.uris, ['spiffe://test.local/ns/default/sa/awkward', 'urn:acme:client;tier=gold']);
      assert.deepEqual(view.dns, ['awkward.example.com', 'client.acme.example']);
    });

    test('XFCC is exactly Envoy’s element: By, Hash, quoted Subject, one URI= per URI SAN, one DNS= per DNS SAN', async () => {
      const view = await opensslView();
      const quoted = (value: string) => `"${value.replace(/[\\"]/g, (char) => `\\${char}`)}"`;
      const plainOrQuoted = (value: string) => (/[,;="]/.test(value) ? quoted(value) : value);
      const expected = [
        `By=${serviceB.spiffeId}`,
        `Hash=${view.hash}`,
        `Subject=${quoted(view.subject)}`,
        ...view.uris.map((uri) => `URI=${plainOrQuoted(uri)}`),
        ...view.dns.map((name) => `DNS=${plainOrQuoted(name)}`),
      ].join(';');
      const xfcc = await xfccFor();
      assert.equal(xfcc, expected);
      assert.match(xfcc, /;Hash=[0-9a-f]{64};/, 'Hash is lowercase hex SHA-256');
      assert.ok(xfcc.includes(';URI="urn:acme:client;tier=gold"'), `a URI holding ; and = is quoted: ${xfcc}`);
      assert.ok(xfcc.includes(';URI=spiffe://test.local/ns/default/sa/awkward;'), `a plain URI is not quoted: ${xfcc}`);
    });

    test('parse-back: an independent Envoy-grammar parser reads back what openssl says about the client cert', async () => {
      const view = await opensslView();
      const xfcc = await xfccFor();
      const elements = parseEnvoyXfcc(xfcc);
      assert.equal(elements.length, 1, `one element: ${xfcc}`);
      const pairs = elements[0]!;
      assert.deepEqual(pairs.map(([key]) => key), ['By', 'Hash', 'Subject', 'URI', 'URI', 'DNS', 'DNS'], xfcc);
      assert.deepEqual(valuesOf(pairs, 'By'), [serviceB.spiffeId]);
      assert.deepEqual(valuesOf(pairs, 'Hash'), [view.hash]);
      assert.deepEqual(valuesOf(pairs, 'Subject'), [view.subject]);
      assert.deepEqual(valuesOf(pairs, 'URI'), view.uris);
      assert.deepEqual(valuesOf(pairs, 'DNS'), view.dns);
      assert.ok(/;Subject="/.test(xfcc), `Subject is always quoted: ${xfcc}`);
    });

    test('spoofing: XFCC / X-Forwarded-* / Forwarded sent twice in odd case, and a header named in Connection, never reach the app', async () => {
      const request = [
        'GET /spoof HTTP/1.1',
        'Host: localhost',
        'X-Forwarded-Client-Cert: By=spiffe://evil/x;Hash=0000;Subject="CN=admin";URI=spiffe://test.local/ns/default/sa/admin',
        'x-fORWARDED-cLIENT-cERT: URI=spiffe://test.local/ns/default/sa/root',
        'X-Forwarded-For: 203.0.113.7',
        'x-FORWARDED-for: 198.51.100.7',
        'X-Forwarded-Host: evil.example',
        'x-forwarded-HOST: evil2.example',
        'X-FORWARDED-PROTO: gopher',
        'x-Forwarded-Proto: ftp',
        'Forwarded: for=203.0.113.8;proto=https;by=evil',
        'fORWARDED: for=198.51.100.8',
        'Connection: X-Secret',
        'X-Secret: 1',
        '',
        '',
      ].join('\r\n');
      const exchange = await rawTlsExchange({ address: cnOuSidecar.inbound, leaf: awkward, ca: root.certPem, bytes: request, until: holdsWholeResponse, timeoutMs: 10000 });
      const response = wholeResponse(exchange);
      assert.equal(response.status, 200, exchange.text);
      const reply = JSON.parse(response.body) as EchoReply;
      const xfcc = headerCopies(reply, 'x-forwarded-client-cert');
      assert.equal(xfcc.length, 1, `exactly one XFCC: ${JSON.stringify(xfcc)}`);
      assert.equal(xfcc[0], await xfccFor(), 'the XFCC is ours, identical to a clean request');
      assert.deepEqual(headerCopies(reply, 'x-forwarded-for'), ['127.0.0.1']);
      assert.deepEqual(headerCopies(reply, 'x-forwarded-proto'), ['https']);
      const leaked = JSON.stringify(reply.rawHeaders);
      for (const needle of ['evil', '203.0.113', '198.51.100', 'gopher', 'ftp', 'sa/admin', 'sa/root']) {
        assert.ok(!leaked.includes(needle), `client-sent value ${needle} reached the app: ${leaked}`);
      }
      assert.deepEqual(headerCopies(reply, 'x-secret'), [], 'a header named in Connection is hop-by-hop');
      assert.deepEqual(headerCopies(reply, 'forwarded'), [], 'client-sent Forwarded must not reach the app');
      assert.deepEqual(headerCopies(reply, 'x-forwarded-host'), [], 'client-sent X-Forwarded-Host must not reach the app');
    });

    test('a client\'s "Connection: close" is honoured: the sidecar answers with close and closes the connection', async () => {
      const request = ['GET /close-me HTTP/1.1', 'Host: localhost', 'Connection: close', '', ''].join('\r\n');
      // Read until the server closes: within 2 s of the request, the whole response and the close.
      const exchange = await rawTlsExchange({ address: cnOuSidecar.inbound, leaf: awkward, ca: root.certPem, bytes: request, timeoutMs: 2000 });
      const response = wholeResponse(exchange);
      assert.equal(response.status, 200, exchange.text);
      assert.doesNotMatch(response.headers.connection ?? '', /keep-alive/i, `response: ${exchange.text}`);
      assert.equal(exchange.closedByServer, true, `the connection should be closed after the response; received:\n${exchange.text}`);
    });
  });
});
