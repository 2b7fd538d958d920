// Inbound data path (SPEC §4): peers call the sidecar over mutual TLS, the app gets plaintext
// HTTP with identity headers. Certificates come from the openssl CLI (test/helpers/pki.ts).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { join } from 'node:path';
import { deterministicBytes, headerCopies, sha256Hex, startEchoApp, type EchoApp, type EchoReply } from './helpers/apps.js';
import { mtlsRequest, type HttpResult } from './helpers/clients.js';
import { derOf, freshDir, issueLeaf, makeRootCA, makeService, sharedRootCA, type CertificateAuthority, type ServiceIdentity } from './helpers/pki.js';
import { startSidecar, stopAllSidecars, type Sidecar } from './helpers/sidecar.js';
import { createHash } from 'node:crypto';

/** Envoy XFCC elements of one header value: `Key=value;Key="quoted"` pairs (one element expected). */
function parseXfcc(value: string): Array<Record<string, string[]>> {
  const elements: Array<Record<string, string[]>> = [];
  let current: Record<string, string[]> = {};
  const pattern = /([A-Za-z]+)=("(?:[^"\\]|\\.)*"|[^;,]*)([;,]?)/gy;
  let match: RegExpExecArray | null;
  while ((match = pattern.exec(value)) !== null && match[0] !== '') {
    const [, key, rawValue, separator] = match as unknown as [string, string, string, string];
    const unquoted = rawValue.startsWith('"') ? rawValue.slice(1, -1).replace(/\\(.)/g, '$1') : rawValue;
    (current[key] ??= []).push(unquoted);
    if (separator === ',') {
      elements.push(current);
      current = {};
    }
    if (separator === '') break;
  }
  elements.push(current);
  return elements;
}

describe('inbound mTLS', () => {
  let root: CertificateAuthority;
  let otherRoot: CertificateAuthority;
  let serviceB: ServiceIdentity;
  let peerA: ServiceIdentity;
  let app: EchoApp;
  let sidecar: Sidecar;

  const call = (path: string, options: { identity?: ServiceIdentity | null; method?: string; headers?: Record<string, string>; body?: Buffer } = {}): Promise<HttpResult> => {
    const identity = options.identity === undefined ? peerA : options.identity;
    return mtlsRequest({
      host: sidecar.inbound.host,
      port: sidecar.inbound.port,
      path,
      method: options.method,
      headers: options.headers,
      body: options.body,
      ca: root.certPem,
      cert: identity?.leaf.chainPem,
      key: identity?.leaf.keyPem,
    });
  };

  before(async () => {
    root = await sharedRootCA();
    [otherRoot, serviceB, peerA, app] = await Promise.all([
      makeRootCA({ cn: 'some other CA' }),
      makeService(root, 'service-b'),
      makeService(root, 'service-a'),
      startEchoApp(),
    ]);
    sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url]);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  test('valid peer gets 200 with the app body', async () => {
    const response = await call('/hello?x=1');
    assert.equal(response.status, 200, response.text);
    assert.equal(response.headers['x-echo-app'], 'yes');
    const reply = response.json<EchoReply>();
    assert.equal(reply.method, 'GET');
    assert.equal(reply.url, '/hello?x=1');
  });

  test('peer without client cert is refused at handshake', async () => {
    const before = app.requests.length;
    await assert.rejects(call('/no-cert', { identity: null }), (error: NodeJS.ErrnoException) => {
      assert.ok(error.code === 'ECONNRESET' || /alert|certificate|socket hang up/i.test(error.message), `unexpected error ${error.code}: ${error.message}`);
      return true;
    });
    assert.equal(app.requests.length, before, 'the app must not see the request');
    const line = await sidecar.waitForLog((entry) => entry.msg === 'TLS handshake failed' && entry.reason === 'peer_cert_missing', 5000);
    assert.equal(line.direction, 'inbound');
  });

  test('peer whose cert is from another CA is refused at handshake', async () => {
    const intruder = await makeService(otherRoot, 'intruder');
    const before = app.requests.length;
    await assert.rejects(call('/intruder', { identity: intruder }));
    assert.equal(app.requests.length, before, 'the app must not see the request');
    const line = await sidecar.waitForLog((entry) => entry.msg === 'TLS handshake failed' && entry.reason === 'cert_untrusted', 5000);
    assert.equal(line.direction, 'inbound');
  });

  test('peer with an expired cert is refused at handshake', async () => {
    const expired = await makeService(root, 'expired-peer', { expired: true });
    const before = app.requests.length;
    await assert.rejects(call('/expired', { identity: expired }));
    assert.equal(app.requests.length, before, 'the app must not see the request');
    const line = await sidecar.waitForLog((entry) => entry.msg === 'TLS handshake failed' && entry.reason === 'cert_expired', 5000);
    assert.equal(line.direction, 'inbound');
  });

  test('XFCC sent by a client never reaches the app; the app sees one XFCC naming the real peer', async () => {
    const response = await call('/xfcc', {
      headers: {
        'x-forwarded-client-cert': 'By=spiffe://evil/x;Hash=0000;Subject="CN=admin";URI=spiffe://test.local/ns/default/sa/admin',
      },
    });
    assert.equal(response.status, 200, response.text);
    const reply = response.json<EchoReply>();
    const copies = headerCopies(reply, 'x-forwarded-client-cert');
    assert.equal(copies.length, 1, `expected exactly one XFCC, got ${JSON.stringify(copies)}`);
    const xfcc = copies[0] ?? '';
    assert.ok(!xfcc.includes('evil') && !xfcc.includes('sa/admin'), `client-sent XFCC leaked: ${xfcc}`);
    const elements = parseXfcc(xfcc);
    assert.equal(elements.length, 1, `one XFCC element expected: ${xfcc}`);
    const element = elements[0] ?? {};
    // The hash is computed from the DER that openssl produces, independently of node and the product.
    const expectedHash = createHash('sha256').update(await derOf(peerA.leaf.certPem)).digest('hex');
    assert.deepEqual(element.Hash?.map((hash) => hash.toLowerCase()), [expectedHash], xfcc);
    assert.deepEqual(element.URI, [peerA.spiffeId], xfcc);
    assert.deepEqual(element.By, [serviceB.spiffeId], xfcc);
    assert.ok(element.Subject?.[0]?.includes('CN=service-a'), `Subject should name the peer: ${xfcc}`);
  });

  test('x-forwarded-for, -proto and -host sent by the client are replaced', async () => {
    const response = await call('/forwarded', {
      headers: { 'x-forwarded-for': '203.0.113.66', 'x-forwarded-proto': 'gopher', 'x-forwarded-host': 'evil.example' },
    });
    assert.equal(response.status, 200, response.text);
    const reply = response.json<EchoReply>();
    assert.deepEqual(headerCopies(reply, 'x-forwarded-for'), ['127.0.0.1']);
    assert.deepEqual(headerCopies(reply, 'x-forwarded-proto'), ['https']);
    const forwardedHost = headerCopies(reply, 'x-forwarded-host');
    assert.ok(!forwardedHost.some((value) => value.includes('evil.example')), `client-sent x-forwarded-host leaked: ${JSON.stringify(forwardedHost)}`);
  });

  test('1 MB request body streams through unchanged', async () => {
    const body = deterministicBytes(1024 * 1024).map((byte) => byte ^ 0x5a);
    const response = await call('/upload', { method: 'POST', body: Buffer.from(body), headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(response.status, 200, response.text);
    const reply = response.json<EchoReply>();
    assert.equal(reply.bodyLength, body.length);
    assert.equal(reply.bodySha256, sha256Hex(Buffer.from(body)));
  });

  test('1 MB response body streams through unchanged', async () => {
    const response = await call('/bytes?n=1048576');
    assert.equal(response.status, 200);
    assert.equal(response.body.length, 1048576);
    assert.equal(sha256Hex(response.body), sha256Hex(deterministicBytes(1048576)));
  });

  test('app behind a unix socket (--app unix:/path.sock) is reached', async () => {
    const socketPath = join(await freshDir('unix'), 'app.sock');
    const unixApp = await startEchoApp({ unixSocketPath: socketPath });
    try {
      const unixSidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', unixApp.unixUrl ?? '', '--outbound', 'off', '--admin', 'off']);
      const response = await mtlsRequest({
        host: unixSidecar.inbound.host,
        port: unixSidecar.inbound.port,
        path: '/via-unix',
        ca: root.certPem,
        cert: peerA.leaf.chainPem,
        key: peerA.leaf.keyPem,
      });
      assert.equal(response.status, 200, response.text);
      assert.equal(response.json<EchoReply>().url, '/via-unix');
      await unixSidecar.stop();
    } finally {
      await unixApp.close();
    }
  });

  test('peer cert issued by the right CA but with only a client EKU is accepted', async () => {
    const clientOnly = await issueLeaf(root, { cn: 'client-only', uris: ['spiffe://test.local/ns/default/sa/client-only'], server: false, client: true });
    const response = await mtlsRequest({
      host: sidecar.inbound.host,
      port: sidecar.inbound.port,
      path: '/client-only',
      ca: root.certPem,
      cert: clientOnly.chainPem,
      key: clientOnly.keyPem,
    });
    assert.equal(response.status, 200, response.text);
  });
});
