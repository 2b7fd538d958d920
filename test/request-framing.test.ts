// Request framing and targets across the inbound hop: a chunked body is forwarded framed, whatever
// the method, so its content can never be parsed by the app as a second request (request
// smuggling); and the Host rules of RFC 9112 §3.2: exactly one Host on HTTP/1.1, an absolute-form
// target (what a proxy gets) rewritten to origin-form with its authority as Host, so the app never
// sees a request whose target and Host name different servers. Raw bytes over mTLS to the real
// sidecar; the echo app records what reached it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startEchoApp, type EchoApp, type RecordedRequest } from './helpers/apps.js';
import { makeService, sharedRootCA, type CertificateAuthority, type ServiceIdentity } from './helpers/pki.js';
import { holdsWholeResponse, rawTlsExchange, wholeResponse, type RawResponse } from './helpers/raw.js';
import { startSidecar, stopAllSidecars, type LogLine, type Sidecar } from './helpers/sidecar.js';

describe('request framing and target', () => {
  let root: CertificateAuthority;
  let peer: ServiceIdentity;
  let app: EchoApp;
  let sidecar: Sidecar;

  before(async () => {
    root = await sharedRootCA();
    const server = await makeService(root, 'framing-server');
    peer = await makeService(root, 'framing-client');
    app = await startEchoApp();
    sidecar = await startSidecar(['--cert-dir', server.certDir, '--app', app.url]);
  });
  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  for (const method of ['GET', 'POST', 'DELETE', 'OPTIONS']) {
    test(`a chunked ${method} body holding a request reaches the app as one request with that body`, async () => {
      const inner = 'GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Forwarded-Client-Cert: By=forged\r\n\r\n';
      const before = app.requests.length;
      const exchange = await rawTlsExchange({
        address: sidecar.inbound,
        leaf: peer.leaf,
        ca: root.certPem,
        bytes: `${method} /outer HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${inner.length.toString(16)}\r\n${inner}\r\n0\r\n\r\n`,
        until: holdsWholeResponse,
        timeoutMs: 10000,
      });
      const response = wholeResponse(exchange);
      assert.equal(response.status, 200, exchange.text);
      await new Promise((resolve) => setTimeout(resolve, 300));
      const seen = app.requests.slice(before).map((request) => request.url);
      assert.deepEqual(seen, ['/outer'], 'the app must see exactly the outer request');
      assert.equal((JSON.parse(response.body) as { bodyLength: number }).bodyLength, inner.length, 'the body arrives whole, as a body');
    });
  }

  /** Sends one request head (Connection: close added) and returns the response and what the app saw. */
  async function send(head: string): Promise<{ response: RawResponse; reached: RecordedRequest[] }> {
    const before = app.requests.length;
    const exchange = await rawTlsExchange({ address: sidecar.inbound, leaf: peer.leaf, ca: root.certPem, bytes: `${head}Connection: close\r\n\r\n`, until: holdsWholeResponse, timeoutMs: 10000 });
    await new Promise((resolve) => setTimeout(resolve, 200));
    return { response: wholeResponse(exchange), reached: app.requests.slice(before) };
  }

  function assertBadRequest(response: RawResponse, detail: RegExp): void {
    assert.equal(response.status, 400, response.body);
    assert.equal(response.headers['x-sidecar-error'], 'bad_request');
    const body = JSON.parse(response.body) as { error: string; message: string; hint: string };
    assert.equal(body.error, 'bad_request');
    assert.match(body.message, detail);
    assert.ok(body.hint.length > 0);
  }

  test('two Host headers -> 400 bad_request, nothing reaches the app, the refusal is logged', async () => {
    const { response, reached } = await send('GET /two-hosts HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\n');
    assertBadRequest(response, /2 Host headers/);
    assert.equal(reached.length, 0);
    const line = await sidecar.waitForLog((logged: LogLine) => logged.msg === 'request' && logged.path === '/two-hosts', 5000);
    assert.equal(line.status, 400);
    assert.equal(line.peer, peer.spiffeId);
  });

  test('an HTTP/1.1 request without Host -> the catalog 400 (x-sidecar-error and JSON), not a bare one', async () => {
    const { response, reached } = await send('GET /no-host HTTP/1.1\r\n');
    assertBadRequest(response, /without a Host header/);
    assert.equal(reached.length, 0);
  });

  test('an HTTP/1.0 request without Host is served (Host is optional in HTTP/1.0)', async () => {
    const { response, reached } = await send('GET /http10 HTTP/1.0\r\n');
    assert.equal(response.status, 200, response.body);
    assert.deepEqual(reached.map((request) => request.url), ['/http10']);
  });

  test('an absolute-form target reaches the app in origin-form with its authority as the only Host', async () => {
    const { response, reached } = await send('GET http://good.example:8080/abs/../x?q=/../y HTTP/1.1\r\nHost: evil.example\r\n');
    assert.equal(response.status, 200, response.body);
    assert.equal(reached.length, 1);
    assert.equal(reached[0]!.url, '/abs/../x?q=/../y', 'path and query unchanged');
    const hosts = reached[0]!.rawHeaders.filter((_value, index) => index % 2 === 0 && reached[0]!.rawHeaders[index]!.toLowerCase() === 'host').length;
    assert.equal(hosts, 1);
    assert.equal(reached[0]!.headers.host, 'good.example:8080');
  });

  test('an absolute-form target with an empty path or only a query becomes "/" and "/?…"', async () => {
    const bare = await send('GET http://good.example HTTP/1.1\r\nHost: good.example\r\n');
    assert.equal(bare.reached[0]?.url, '/');
    const query = await send('GET http://good.example?x=1 HTTP/1.1\r\nHost: good.example\r\n');
    assert.equal(query.reached[0]?.url, '/?x=1');
  });

  test('the HTTP/2 connection preface -> 400 malformed_request saying HTTP/2 is not served here (not a smuggling hint)', async () => {
    const before = app.requests.length;
    const exchange = await rawTlsExchange({ address: sidecar.inbound, leaf: peer.leaf, ca: root.certPem, bytes: 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', until: holdsWholeResponse, timeoutMs: 10000 });
    const response = wholeResponse(exchange);
    assert.equal(response.status, 400, exchange.text);
    assert.equal(response.headers['x-sidecar-error'], 'malformed_request');
    const body = JSON.parse(response.body) as { message: string; hint: string };
    assert.match(body.message, /HTTP\/2 without TLS \(h2c prior knowledge\) is not served here/);
    assert.match(body.hint, /--protocol tcp/);
    const line = await sidecar.waitForLog((logged: LogLine) => logged.msg === 'request refused' && /h2c/.test(String(logged.reason)), 5000);
    assert.doesNotMatch(String(line.hint), /smuggling/);
    assert.equal(app.requests.length, before);
  });

  test('a target with user info or another scheme -> 400 bad_request', async () => {
    for (const target of ['http://user@good.example/', 'ftp://good.example/']) {
      const { response, reached } = await send(`GET ${target} HTTP/1.1\r\nHost: good.example\r\n`);
      assertBadRequest(response, /neither a path nor an http\(s\) URL/);
      assert.equal(reached.length, 0, target);
    }
  });
});
