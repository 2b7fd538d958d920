// Outbound data path (SPEC §5, §6): the app sends plaintext HTTP to its sidecar (as HTTP_PROXY or
// to a fixed upstream port); the sidecar originates verified mTLS. The pair test runs
// app -> sidecar A (outbound) -> sidecar B (inbound) -> app.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { assertSidecarError } from './helpers/assertions.js';
import { deterministicBytes, sha256Hex, startEchoApp, startTlsServer, type EchoApp, type EchoReply, type TlsServerReply, type TlsTestServer } from './helpers/apps.js';
import { curl, plainRequest, proxyRequest, type HttpResult } from './helpers/clients.js';
import { derOf, issueLeaf, makeRootCA, makeService, normalizeSerial, sharedRootCA, type CertificateAuthority, type ServiceIdentity } from './helpers/pki.js';
import { freePort, startSidecar, stopAllSidecars, type Sidecar } from './helpers/sidecar.js';
import { metricValue } from './helpers/hardening.js';
import { holdsWholeResponse, rawTcpExchange, wholeResponse } from './helpers/raw.js';

function xfccOf(reply: EchoReply): string {
  const value = reply.headers['x-forwarded-client-cert'];
  assert.equal(typeof value, 'string', `the app should receive one XFCC header: ${JSON.stringify(reply.headers)}`);
  return value as string;
}

describe('outbound', () => {
  let root: CertificateAuthority;
  let otherRoot: CertificateAuthority;
  let serviceA: ServiceIdentity;
  let serviceB: ServiceIdentity;
  let appB: EchoApp;
  let sidecarA: Sidecar;
  let sidecarB: Sidecar;
  let upstreamLocalPort: number;
  let peerHashA: string;
  const servers: TlsTestServer[] = [];

  before(async () => {
    root = await sharedRootCA();
    [otherRoot, serviceA, serviceB, appB, upstreamLocalPort] = await Promise.all([
      makeRootCA({ cn: 'untrusted CA' }),
      makeService(root, 'service-a'),
      makeService(root, 'service-b'),
      startEchoApp(),
      freePort(),
    ]);
    peerHashA = createHash('sha256').update(await derOf(serviceA.leaf.certPem)).digest('hex');
    sidecarB = await startSidecar(['--cert-dir', serviceB.certDir, '--app', appB.url, '--outbound', 'off']);
    // Sidecar A's own app is not used here: the tests play the app and talk to A's outbound side.
    sidecarA = await startSidecar([
      '--cert-dir', serviceA.certDir,
      '--app', 'http://127.0.0.1:9',
      '--upstream', `${upstreamLocalPort}=localhost:${sidecarB.inbound.port}`,
    ]);
  });

  after(async () => {
    await stopAllSidecars();
    await appB?.close();
    await Promise.all(servers.map((server) => server.close()));
  });

  const viaProxy = (target: string, options: { method?: string; body?: Buffer } = {}): Promise<HttpResult> =>
    proxyRequest({ proxy: sidecarA.outbound, target, ...options });

  /** A TLS upstream that asks for (but does not require) a client certificate from the mesh CA. */
  const upstream = async (certPem: string, keyPem: string): Promise<TlsTestServer> => {
    const server = await startTlsServer({ certPem, keyPem, ca: root.certPem });
    servers.push(server);
    return server;
  };

  test('app -> outbound forward proxy -> inbound -> app round trip; the app behind B sees A in XFCC', async () => {
    const response = await viaProxy(`http://localhost:${sidecarB.inbound.port}/orders/42?q=1`);
    assert.equal(response.status, 200, response.text);
    const reply = response.json<EchoReply>();
    assert.equal(reply.method, 'GET');
    assert.equal(reply.url, '/orders/42?q=1');
    const xfcc = xfccOf(reply);
    assert.ok(xfcc.includes(`URI=${serviceA.spiffeId}`), `XFCC should name A's SPIFFE ID: ${xfcc}`);
    assert.ok(xfcc.toLowerCase().includes(`hash=${peerHashA}`), `XFCC should carry the hash of A's certificate: ${xfcc}`);
    assert.ok(xfcc.includes(`By=${serviceB.spiffeId}`), `XFCC should name B as By: ${xfcc}`);
  });

  test('app -> --upstream LOCAL=localhost:<inbound> -> inbound -> app round trip', async () => {
    const response = await plainRequest({ ...sidecarA.upstream(upstreamLocalPort), path: '/fixed/route', method: 'POST', body: 'hello' });
    assert.equal(response.status, 200, response.text);
    const reply = response.json<EchoReply>();
    assert.equal(reply.method, 'POST');
    assert.equal(reply.url, '/fixed/route');
    assert.equal(reply.bodySha256, sha256Hex('hello'));
    const xfcc = xfccOf(reply);
    assert.ok(xfcc.includes(`URI=${serviceA.spiffeId}`), `XFCC should name A's SPIFFE ID: ${xfcc}`);
    assert.ok(xfcc.toLowerCase().includes(`hash=${peerHashA}`), xfcc);
  });

  test('outbound presents the sidecar certificate to the upstream', async () => {
    const server = await upstream(serviceB.leaf.chainPem, serviceB.leaf.keyPem);
    const response = await viaProxy(`http://localhost:${server.port}/who`);
    assert.equal(response.status, 200, response.text);
    const reply = response.json<TlsServerReply>();
    assert.equal(normalizeSerial(reply.clientSerial ?? ''), normalizeSerial(serviceA.leaf.serial));
    assert.equal(reply.clientAuthorized, true);
    assert.equal(reply.servername, 'localhost', 'SNI should be the dialled host name');
  });

  test('1 MB request body streams through the outbound pair unchanged', async () => {
    const body = Buffer.from(deterministicBytes(1024 * 1024).map((byte) => byte ^ 0xa5));
    const response = await viaProxy(`http://localhost:${sidecarB.inbound.port}/upload`, { method: 'POST', body });
    assert.equal(response.status, 200, response.text);
    const reply = response.json<EchoReply>();
    assert.equal(reply.bodyLength, body.length);
    assert.equal(reply.bodySha256, sha256Hex(body));
  });

  test('1 MB response body streams through the outbound pair unchanged', async () => {
    const response = await viaProxy(`http://localhost:${sidecarB.inbound.port}/bytes?n=1048576`);
    assert.equal(response.status, 200);
    assert.equal(response.body.length, 1048576);
    assert.equal(sha256Hex(response.body), sha256Hex(deterministicBytes(1048576)));
  });

  test('upstream with an untrusted cert -> 502 upstream_cert_untrusted', async () => {
    const stranger = await issueLeaf(otherRoot, { cn: 'stranger', dns: ['localhost'] });
    const server = await upstream(stranger.chainPem, stranger.keyPem);
    assertSidecarError(await viaProxy(`http://localhost:${server.port}/x`), 502, 'upstream_cert_untrusted');
    assert.equal(server.requests.length, 0, 'no request may reach an untrusted upstream');
  });

  test('upstream cert without the dialled name -> 502 upstream_name_mismatch', async () => {
    const misnamed = await issueLeaf(root, { cn: 'elsewhere', dns: ['elsewhere.example'] });
    const server = await upstream(misnamed.chainPem, misnamed.keyPem);
    assertSidecarError(await viaProxy(`http://localhost:${server.port}/x`), 502, 'upstream_name_mismatch');
    assert.equal(server.requests.length, 0);
  });

  test('upstream with an expired cert -> 502 upstream_cert_expired', async () => {
    const expired = await issueLeaf(root, { cn: 'expired-upstream', dns: ['localhost'], expired: true });
    const server = await upstream(expired.chainPem, expired.keyPem);
    assertSidecarError(await viaProxy(`http://localhost:${server.port}/x`), 502, 'upstream_cert_expired');
    assert.equal(server.requests.length, 0);
  });

  test('upstream on a closed port -> 502 upstream_refused', async () => {
    const closedPort = await freePort();
    assertSidecarError(await viaProxy(`http://localhost:${closedPort}/x`), 502, 'upstream_refused');
  });

  test('upstream that accepts TCP but never answers the TLS handshake -> 504 upstream_timeout after --handshake-timeout', async () => {
    const silent = createNetServer((socket) => socket.on('error', () => undefined));
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const port = (silent.address() as AddressInfo).port;
    const sidecar = await startSidecar(['--cert-dir', serviceA.certDir, '--inbound', 'off', '--connect-timeout', '1s', '--handshake-timeout', '1s']);
    try {
      const started = Date.now();
      const result = await proxyRequest({ proxy: sidecar.outbound, target: `http://localhost:${port}/x` });
      const elapsed = Date.now() - started;
      assert.match(assertSidecarError(result, 504, 'upstream_timeout').message, /TLS handshake took longer than/);
      assert.ok(elapsed >= 900 && elapsed < 5000, `answered after ${elapsed} ms, expected about 2 s (connect + handshake budget)`);
    } finally {
      silent.close();
      await sidecar.stop();
    }
  });

  test('CONNECT through the forward proxy is tunnelled unchanged (the app does its own TLS)', async () => {
    // The upstream's CA is one the sidecar does not trust, and it requires a client certificate from
    // that CA: only an untouched tunnel carrying the app's own TLS can succeed.
    const tunnelServerCert = await issueLeaf(otherRoot, { cn: 'tunnel-target', dns: ['localhost'] });
    const appClientCert = await issueLeaf(otherRoot, { cn: 'app-own-client' });
    const server = await startTlsServer({ certPem: tunnelServerCert.chainPem, keyPem: tunnelServerCert.keyPem, ca: otherRoot.certPem, requireClientCert: true });
    servers.push(server);
    const result = await curl([
      '--proxy', `http://${sidecarA.outbound.host}:${sidecarA.outbound.port}`,
      '--proxytunnel',
      '--cacert', otherRoot.certPath,
      '--cert', appClientCert.certPath,
      '--key', appClientCert.keyPath,
      `https://localhost:${server.port}/through-tunnel`,
    ]);
    assert.equal(result.code, 0, `curl failed: ${result.stderr}`);
    const reply = JSON.parse(result.stdout) as TlsServerReply;
    assert.equal(reply.url, '/through-tunnel');
    assert.equal(normalizeSerial(reply.clientSerial ?? ''), normalizeSerial(appClientCert.serial), 'the upstream must see the app certificate, not the sidecar one');
    assert.equal(reply.clientAuthorized, true);
  });

  for (const { name, request, upgrade } of [
    { name: 'an origin-form request (the app called the proxy like a server)', request: 'GET /not-absolute HTTP/1.1\r\nHost: x\r\n\r\n', upgrade: false },
    { name: 'an origin-form WebSocket upgrade', request: 'GET /not-absolute-ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n', upgrade: true },
  ]) {
    test(`${name} on the forward proxy -> 400 bad_request, logged with the code and counted`, async () => {
      const [requestsBefore, errorsBefore] = await Promise.all([
        metricValue(sidecarA, 'sidecar_requests_total', { direction: 'outbound', code: '400' }),
        metricValue(sidecarA, 'sidecar_errors_total', { direction: 'outbound', error: 'bad_request' }),
      ]);
      const exchange = await rawTcpExchange({ address: sidecarA.outbound, bytes: request, until: holdsWholeResponse });
      const response = wholeResponse(exchange);
      assert.equal(response.status, 400, exchange.text);
      assert.equal(response.headers['x-sidecar-error'], 'bad_request');
      assert.match(response.body, /HTTP_PROXY/, 'the message says how to call the proxy');
      const path = upgrade ? '/not-absolute-ws' : '/not-absolute';
      const line = await sidecarA.waitForLog((entry) => entry.error === 'bad_request' && (entry.path === path || entry.target === path), 5000);
      assert.equal(line.direction, 'outbound', JSON.stringify(line));
      assert.equal(await metricValue(sidecarA, 'sidecar_requests_total', { direction: 'outbound', code: '400' }), requestsBefore + 1);
      assert.equal(await metricValue(sidecarA, 'sidecar_errors_total', { direction: 'outbound', error: 'bad_request' }), errorsBefore + 1);
    });
  }
});
