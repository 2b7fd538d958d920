// Request framing across the inbound hop: a chunked body is forwarded framed, whatever the method,
// so its content can never be parsed by the app as a second request (request smuggling).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startEchoApp, type EchoApp } from './helpers/apps.js';
import { makeService, sharedRootCA, type CertificateAuthority, type ServiceIdentity } from './helpers/pki.js';
import { holdsWholeResponse, rawTlsExchange, wholeResponse } from './helpers/raw.js';
import { startSidecar, stopAllSidecars, type Sidecar } from './helpers/sidecar.js';

describe('request framing', () => {
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
});
